"""The GRPO objective (paper eq. 1) and the variants of its ablation, as one pure function."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jax_tinyr1.grpo.advantages import SCALES

AGGREGATIONS = ("grpo", "dr_grpo", "token_mean")
KL_CLAMP = 100.0  # the original clamps the per-token KL to [-100, 100]
_LOG_DIFF_MAX = 20.0  # exp(20) is finite in float32; the clamp above bites long before


_SERIES_BELOW = 0.1


def k3_kl(logps: jax.Array, ref_logps: jax.Array) -> jax.Array:
    """k3 estimator exp(d) - d - 1, d = ref - logp, without cancellation: its Taylor series
    d^2/2! + ... + d^7/7! for |d| < 0.1 (truncation < 1e-8 relative), expm1(d) - d above;
    d capped against overflow, and the result clamped as the original does (gradient 0
    where clamped)."""
    d = jnp.minimum(ref_logps - logps, _LOG_DIFF_MAX)
    small = jnp.abs(d) < _SERIES_BELOW
    ds = jnp.where(small, d, 0.0)  # keeps the unused branch finite for gradients
    series = ds * ds * (1 / 2 + ds * (1 / 6 + ds * (1 / 24 + ds * (1 / 120 + ds * (1 / 720 + ds / 5040)))))
    dl = jnp.where(small, _SERIES_BELOW, d)
    kl = jnp.where(small, series, jnp.expm1(dl) - dl)
    return jnp.clip(kl, -KL_CLAMP, KL_CLAMP)


def _masked_mean(x, mask):
    return jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def grpo_loss(
    logps: jax.Array,
    old_logps: jax.Array,
    ref_logps: jax.Array | None,
    advantages: jax.Array,
    completion_mask: jax.Array,
    *,
    beta: float,
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.2,
    aggregation: str = "grpo",
    max_completion_length: int | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Loss (to minimise) and metrics. Arrays are [B, T] except advantages [B].

    Per token: -(min(ratio A, clip(ratio, 1 - eps_low, 1 + eps_high) A) - beta k3), with
    ratio = exp(logp - old). `old_logps` are the sampling policy's (equal to stop_gradient
    of `logps` for the first of mu updates). Aggregations: `grpo` masked mean per completion,
    then mean (the paper's 1/|o_i|); `dr_grpo` masked sum / (B * max_completion_length);
    `token_mean` masked sum / number of unmasked tokens.
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
    if beta != 0.0 and ref_logps is None:
        raise ValueError("beta != 0 needs ref_logps")
    mask = completion_mask.astype(jnp.float32)
    a_b1 = advantages.astype(jnp.float32)[:, None]
    # Padding positions may hold anything (even huge log-ratios): zero them before exp so
    # that neither the loss nor its gradient can pick up inf * 0.
    on = mask > 0
    logps = jnp.where(on, logps, 0.0)
    old_logps = jnp.where(on, old_logps, 0.0)
    ref_logps = None if ref_logps is None else jnp.where(on, ref_logps, 0.0)
    ratio = jnp.exp(logps - old_logps)
    objective = jnp.minimum(ratio * a_b1, jnp.clip(ratio, 1 - epsilon_low, 1 + epsilon_high) * a_b1)
    per_token = -objective
    metrics: dict[str, jax.Array] = {}
    if beta != 0.0:
        kl = k3_kl(logps, ref_logps)
        per_token = per_token + beta * kl
        metrics["kl"] = _masked_mean(kl, mask)

    if aggregation == "grpo":
        per_sequence = jnp.sum(per_token * mask, axis=1) / jnp.maximum(jnp.sum(mask, axis=1), 1.0)
        loss = jnp.mean(per_sequence)
    elif aggregation == "dr_grpo":
        length = logps.shape[1] if max_completion_length is None else max_completion_length
        loss = jnp.sum(per_token * mask) / (logps.shape[0] * length)
    else:
        loss = _masked_mean(per_token, mask)

    low = (ratio < 1 - epsilon_low) & (a_b1 < 0)
    high = (ratio > 1 + epsilon_high) & (a_b1 > 0)
    big = jnp.finfo(jnp.float32).max
    metrics.update(
        {
            "clip_ratio/low_mean": _masked_mean(low.astype(jnp.float32), mask),
            "clip_ratio/high_mean": _masked_mean(high.astype(jnp.float32), mask),
            "clip_ratio/region_mean": _masked_mean((low | high).astype(jnp.float32), mask),
            "ratio/mean": _masked_mean(ratio, mask),
            "ratio/min": jnp.min(jnp.where(mask > 0, ratio, big)),
            "ratio/max": jnp.max(jnp.where(mask > 0, ratio, -big)),
        }
    )
    return loss, metrics


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
    beta: float = 0.01
    epsilon_low: float = 0.2
    epsilon_high: float = 0.2
    aggregation: str = "grpo"
    advantage_scale: str = "group"
    noise_std: float = 0.02

    def __post_init__(self):
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"objective.aggregation must be one of {AGGREGATIONS}, got {self.aggregation!r}")
        if self.advantage_scale not in SCALES:
            raise ValueError(f"objective.advantage_scale must be one of {SCALES}, got {self.advantage_scale!r}")
        for name in ("beta", "epsilon_low", "epsilon_high", "noise_std"):
            if getattr(self, name) < 0:
                raise ValueError(f"objective.{name} must be >= 0, got {getattr(self, name)}")
