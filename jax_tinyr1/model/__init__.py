"""Models: the Qwen2 language model, the SigLIP vision tower, the group-resampler connector,
and TinyLLaVA-Video composed of the three."""

from jax_tinyr1.model.checkpoint import abstract_model, build_model, load_pretrained, save_pretrained
from jax_tinyr1.model.connector import ConnectorConfig, GroupResampler
from jax_tinyr1.model.presets import get_preset
from jax_tinyr1.model.qwen2 import KVCache, Qwen2Config, Qwen2ForCausalLM
from jax_tinyr1.model.siglip import SiglipConfig, SiglipVisionModel
from jax_tinyr1.model.tinyllava import TinyLlavaConfig, TinyLlavaVideo

__all__ = [
    "ConnectorConfig",
    "GroupResampler",
    "KVCache",
    "Qwen2Config",
    "Qwen2ForCausalLM",
    "SiglipConfig",
    "SiglipVisionModel",
    "TinyLlavaConfig",
    "TinyLlavaVideo",
    "abstract_model",
    "build_model",
    "get_preset",
    "load_pretrained",
    "save_pretrained",
]
