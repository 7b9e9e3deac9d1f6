"""Group-relative advantages (paper eq. 2), with the paper's Gaussian noise."""

from __future__ import annotations

import jax
import jax.numpy as jnp

SCALES = ("group", "none")
STD_EPS = 1e-4  # the original's denominator guard


def group_advantages(
    rewards: jax.Array, group_size: int, *, scale: str = "group", noise_std: float = 0.02, key: jax.Array | None = None
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Advantages [R] for R = prompts x G rewards, each prompt's G consecutive.

    scale="group": (r - mean) / (std + 1e-4), std unbiased (the paper and the code).
    scale="none":  r - mean (Dr. GRPO).
    Then one N(0, noise_std^2) sample per completion from `key` (noise_std=0 disables it).
    """
    if scale not in SCALES:
        raise ValueError(f"advantage scale must be one of {SCALES}, got {scale!r}")
    if group_size < 2 or rewards.shape[0] % group_size:
        raise ValueError(f"{rewards.shape[0]} rewards do not form groups of size {group_size} (>= 2)")
    r_bg = rewards.astype(jnp.float32).reshape(-1, group_size)
    mean = r_bg.mean(axis=1, keepdims=True)
    std = r_bg.std(axis=1, ddof=1, keepdims=True)
    adv_bg = (r_bg - mean) / (std + STD_EPS) if scale == "group" else r_bg - mean
    if noise_std > 0:
        if key is None:
            raise ValueError("noise_std > 0 needs a JAX key")
        adv_bg = adv_bg + noise_std * jax.random.normal(key, adv_bg.shape, jnp.float32)
    metrics = {
        "frac_reward_zero_std": jnp.mean((std[:, 0] == 0).astype(jnp.float32)),
        "reward_std": jnp.mean(std),
    }
    return adv_bg.reshape(-1), metrics
