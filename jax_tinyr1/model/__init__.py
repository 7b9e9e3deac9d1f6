"""Models: Qwen2 language model (and, built on it, the video model)."""

from jax_tinyr1.model.checkpoint import abstract_model, build_model, load_pretrained, save_pretrained
from jax_tinyr1.model.presets import get_preset
from jax_tinyr1.model.qwen2 import KVCache, Qwen2Config, Qwen2ForCausalLM

__all__ = [
    "KVCache",
    "Qwen2Config",
    "Qwen2ForCausalLM",
    "abstract_model",
    "build_model",
    "get_preset",
    "load_pretrained",
    "save_pretrained",
]
