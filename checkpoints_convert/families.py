"""What the converter needs to know about each model type."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from checkpoints_convert import qwen2
from checkpoints_convert.mapping import Rule


@dataclass(frozen=True)
class Family:
    rules: Callable[[Any], list[Rule]]
    ignored_hf_keys: Callable[[Any], list[str]]
    config_from_hf: Callable[..., tuple[Any, dict[str, Any]]]
    config_to_hf: Callable[[Any, str, dict[str, Any]], dict[str, Any]]


FAMILIES: dict[str, Family] = {
    "qwen2": Family(qwen2.qwen2_rules, qwen2.qwen2_ignored_keys, qwen2.qwen2_config_from_hf,
                    qwen2.qwen2_config_to_hf),
}


def get_family(model_type: str) -> Family:
    if model_type not in FAMILIES:
        raise ValueError(f"unknown --model-type {model_type!r}; choose from {sorted(FAMILIES)}")
    return FAMILIES[model_type]
