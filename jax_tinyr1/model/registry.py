"""One entry per model type: everything the code keys by it (our config.json's `model_type`).

Building, saving and loading models read the config and module classes; the converter
(`checkpoints_convert`, beside this package) reads the rest: the HF config.json `model_type`
values it imports from, the module holding the type's rule table, the prefixes its tensors
carry in HF files, and the parts exportable on their own. The model never imports the
converter; an entry names its rule module, the converter imports it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from jax_tinyr1.cli import CheckpointError
from jax_tinyr1.model.qwen2 import Qwen2Config, Qwen2ForCausalLM
from jax_tinyr1.model.siglip import SiglipConfig, SiglipVisionModel
from jax_tinyr1.model.tinyllava import TinyLlavaConfig, TinyLlavaVideo


@dataclasses.dataclass(frozen=True)
class ModelType:
    name: str
    config_class: type
    module_class: type
    hf_model_types: tuple[str, ...]  # `model_type` of the HF config.json files it converts from
    conversion: str  # the checkpoints_convert module with its rule table (both ways)
    hf_prefixes: tuple[str, ...] = ("",)  # prefixes of its HF tensor names: accepted on import, the first written
    # Parts exportable alone as plain HF directories: name -> (model type, attribute of the config
    # and of the parameter tree).
    components: dict[str, tuple[str, str]] = dataclasses.field(default_factory=dict)


MODEL_TYPES: dict[str, ModelType] = {
    entry.name: entry
    for entry in (
        ModelType("qwen2", Qwen2Config, Qwen2ForCausalLM, ("qwen2",), "checkpoints_convert.qwen2"),
        ModelType(
            "siglip",
            SiglipConfig,
            SiglipVisionModel,
            ("siglip_vision_model", "siglip"),
            "checkpoints_convert.siglip",
            hf_prefixes=("vision_model.", ""),
        ),
        ModelType(
            "tinyllava",
            TinyLlavaConfig,
            TinyLlavaVideo,
            ("tinyllava",),
            "checkpoints_convert.tinyllava",
            components={"llm": ("qwen2", "llm"), "vision": ("siglip", "vision")},
        ),
    )
}


def model_type(name: str) -> ModelType:
    if name not in MODEL_TYPES:
        raise CheckpointError(f"unknown model type {name!r}; known: {sorted(MODEL_TYPES)}")
    return MODEL_TYPES[name]


def type_of(config: Any) -> ModelType:
    """The entry whose config class `config` is."""
    for entry in MODEL_TYPES.values():
        if type(config) is entry.config_class:
            return entry
    raise CheckpointError(f"{type(config).__name__} is the config of no registered model type")


def type_from_hf(hf_config: dict[str, Any], where) -> ModelType:
    """The entry that converts an HF config.json with this `model_type`."""
    found = hf_config.get("model_type")
    for entry in MODEL_TYPES.values():
        if found in entry.hf_model_types:
            return entry
    known = sorted(t for e in MODEL_TYPES.values() for t in e.hf_model_types)
    raise CheckpointError(f"{where}: model_type {found!r} is not one of {known}")
