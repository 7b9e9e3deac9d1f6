"""Named model configurations. Numbers for the real models are the HF configs' values."""

from __future__ import annotations

import dataclasses

from jax_tinyr1.model.connector import ConnectorConfig
from jax_tinyr1.model.qwen2 import Qwen2Config
from jax_tinyr1.model.siglip import SiglipConfig
from jax_tinyr1.model.tinyllava import TinyLlavaConfig

QWEN25_3B = Qwen2Config(  # Qwen/Qwen2.5-3B: 3,085,938,688 parameters (tied embeddings)
    vocab_size=151936,
    hidden_size=2048,
    intermediate_size=11008,
    num_layers=36,
    num_heads=16,
    num_kv_heads=2,
    head_dim=128,
    rope_theta=1_000_000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
    max_position_embeddings=32768,
)
QWEN25_05B = Qwen2Config(  # Qwen/Qwen2.5-0.5B: 494,032,768 parameters (tied embeddings)
    vocab_size=151936,
    hidden_size=896,
    intermediate_size=4864,
    num_layers=24,
    num_heads=14,
    num_kv_heads=2,
    head_dim=64,
    rope_theta=1_000_000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
    max_position_embeddings=32768,
)
QWEN2_TINY = Qwen2Config(
    vocab_size=512,
    hidden_size=64,
    intermediate_size=128,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=16,
    rope_theta=10_000.0,
    tie_word_embeddings=True,
    max_position_embeddings=4096,
)
SIGLIP_SO400M_384 = SiglipConfig(  # google/siglip-so400m-patch14-384 vision: 428,225,600 parameters
    hidden_size=1152,
    intermediate_size=4304,
    num_layers=27,
    num_heads=16,
    image_size=384,
    patch_size=14,
)
SIGLIP_TINY = SiglipConfig(hidden_size=32, intermediate_size=64, num_layers=3, num_heads=4, image_size=16, patch_size=4)
CONNECTOR_TINY = ConnectorConfig(
    vision_hidden_size=32, hidden_size=64, num_queries=16, groups=4, num_layers=2, heads=2, dim_head=8
)

# name -> config (its class is its model type)
PRESETS: dict[str, object] = {
    "qwen2.5-3b": QWEN25_3B,
    "qwen2.5-0.5b": QWEN25_05B,
    "qwen2-tiny": QWEN2_TINY,
    "qwen2-tiny-untied": dataclasses.replace(QWEN2_TINY, num_layers=3, num_kv_heads=1, tie_word_embeddings=False),
    "siglip-so400m-384": SIGLIP_SO400M_384,
    "siglip-tiny": SIGLIP_TINY,
    "tinyllava-video-3b": TinyLlavaConfig(
        llm=QWEN25_3B,
        vision=SIGLIP_SO400M_384,
        connector=ConnectorConfig(vision_hidden_size=1152, hidden_size=2048, num_queries=512, groups=16, num_layers=3),
        num_frames=16,
    ),
    "tinyllava-video-tiny": TinyLlavaConfig(llm=QWEN2_TINY, vision=SIGLIP_TINY, connector=CONNECTOR_TINY, num_frames=4),
}


def get_preset(name: str, **overrides):
    """A preset config by name, with dataclass field overrides (e.g. dtype="bfloat16")."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; known: {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides)
