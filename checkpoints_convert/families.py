"""What the converter needs to know about each model type."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from checkpoints_convert import qwen2, siglip, tinyllava
from checkpoints_convert.mapping import Rule, prefixed
from checkpoints_convert.safetensors_io import CheckpointError, SafetensorsReader


@dataclass(frozen=True)
class Family:
    rules: Callable[[Any], list[Rule]]  # HF names without any file-level prefix
    ignored_hf_keys: Callable[[Any], list[str]]
    config_from_hf: Callable[..., tuple[Any, dict[str, Any]]]
    config_to_hf: Callable[[Any, str, dict[str, Any]], dict[str, Any]]
    hf_prefixes: tuple[str, ...] = ("",)  # accepted on import; the first is written on export

    def rules_with_prefix(self, config, hf_prefix: str) -> list[Rule]:
        return prefixed(self.rules(config), hf_prefix, "")

    def detect_prefix(self, config, reader: SafetensorsReader, where) -> str:
        """The prefix under which the file's keys are named (e.g. SigLIP's `vision_model.`)."""
        for prefix in self.hf_prefixes:
            if all(rule.hf.format(i=0) in reader for rule in self.rules_with_prefix(config, prefix)[:1]):
                return prefix
        first = self.rules(config)[0].hf
        raise CheckpointError(f"{where}: no tensor {first!r} under any of the prefixes {list(self.hf_prefixes)}")


FAMILIES: dict[str, Family] = {
    "qwen2": Family(qwen2.qwen2_rules, qwen2.qwen2_ignored_keys, qwen2.qwen2_config_from_hf, qwen2.qwen2_config_to_hf),
    "siglip": Family(
        lambda c: siglip.siglip_rules(c, hf_prefix=""),
        lambda c: [],
        siglip.siglip_config_from_hf,
        siglip.siglip_config_to_hf,
        hf_prefixes=siglip.HF_PREFIXES,
    ),
    "tinyllava": Family(
        tinyllava.tinyllava_rules,
        tinyllava.tinyllava_ignored_keys,
        tinyllava.tinyllava_config_from_hf,
        tinyllava.tinyllava_config_to_hf,
    ),
}


def get_family(model_type: str) -> Family:
    if model_type not in FAMILIES:
        raise ValueError(f"unknown --model-type {model_type!r}; choose from {sorted(FAMILIES)}")
    return FAMILIES[model_type]
