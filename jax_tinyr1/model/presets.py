"""Named model configurations. Numbers for the real models are the HF configs' values."""

from __future__ import annotations

import dataclasses

from jax_tinyr1.model.qwen2 import Qwen2Config

QWEN2_PRESETS: dict[str, Qwen2Config] = {
    # Qwen/Qwen2.5-3B: 3,085,938,688 parameters (tied embeddings).
    "qwen2.5-3b": Qwen2Config(
        vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_layers=36, num_heads=16,
        num_kv_heads=2, head_dim=128, rope_theta=1_000_000.0, rms_norm_eps=1e-6,
        tie_word_embeddings=True, max_position_embeddings=32768,
    ),
    # Qwen/Qwen2.5-0.5B: 494,032,768 parameters (tied embeddings).
    "qwen2.5-0.5b": Qwen2Config(
        vocab_size=151936, hidden_size=896, intermediate_size=4864, num_layers=24, num_heads=14,
        num_kv_heads=2, head_dim=64, rope_theta=1_000_000.0, rms_norm_eps=1e-6,
        tie_word_embeddings=True, max_position_embeddings=32768,
    ),
    # Tiny models for tests and the CPU demo.
    "qwen2-tiny": Qwen2Config(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
        num_kv_heads=2, head_dim=16, rope_theta=10_000.0, rms_norm_eps=1e-6,
        tie_word_embeddings=True, max_position_embeddings=4096,
    ),
    "qwen2-tiny-untied": Qwen2Config(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=3, num_heads=4,
        num_kv_heads=1, head_dim=16, rope_theta=10_000.0, rms_norm_eps=1e-6,
        tie_word_embeddings=False, max_position_embeddings=4096,
    ),
}


def get_preset(name: str, **overrides):
    """A preset config by name, with dataclass field overrides (e.g. dtype="bfloat16")."""
    for table in (QWEN2_PRESETS,):
        if name in table:
            return dataclasses.replace(table[name], **overrides)
    raise KeyError(f"unknown preset {name!r}; known: {sorted(QWEN2_PRESETS)}")
