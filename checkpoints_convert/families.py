"""A model type's conversion: its registry entry (jax_tinyr1.model.registry) and the rule
module the entry names, which holds `rules`, `ignored_hf_keys`, `config_from_hf` and
`config_to_hf`."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

from checkpoints_convert.mapping import Rule, prefixed
from checkpoints_convert.safetensors_io import CheckpointError, SafetensorsReader
from jax_tinyr1.model.registry import ModelType, model_type


@dataclass(frozen=True)
class Family:
    entry: ModelType
    module: ModuleType

    def rules(self, config) -> list[Rule]:
        """HF names without any file-level prefix."""
        return self.module.rules(config)

    def ignored_hf_keys(self, config) -> list[str]:
        return self.module.ignored_hf_keys(config)

    def skipped_hf_prefixes(self, hf: dict) -> tuple[str, ...]:
        """Tensors of the HF file that belong to another model than ours (SigLIP's text tower)."""
        skipped = getattr(self.module, "skipped_hf_prefixes", None)
        return tuple(skipped(hf)) if skipped else ()

    def config_from_hf(self, hf: dict, **overrides):
        return self.module.config_from_hf(hf, **overrides)

    def config_to_hf(self, config, dtype: str, passthrough: dict) -> dict:
        return self.module.config_to_hf(config, dtype, passthrough)

    def rules_with_prefix(self, config, hf_prefix: str) -> list[Rule]:
        return prefixed(self.rules(config), hf_prefix, "")

    def detect_prefix(self, config, reader: SafetensorsReader, where) -> str:
        """The prefix under which the file's keys are named (e.g. SigLIP's `vision_model.`)."""
        for prefix in self.entry.hf_prefixes:
            if all(rule.hf.format(i=0) in reader for rule in self.rules_with_prefix(config, prefix)[:1]):
                return prefix
        first = self.rules(config)[0].hf
        raise CheckpointError(f"{where}: no tensor {first!r} under any of the prefixes {list(self.entry.hf_prefixes)}")


def get_family(name: str) -> Family:
    entry = model_type(name)
    return Family(entry, importlib.import_module(entry.conversion))
