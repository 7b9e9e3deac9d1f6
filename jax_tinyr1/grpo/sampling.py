"""Next-token sampling: temperature, then top-k, then top-p (HF's warper order), or greedy."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    max_new_tokens: int = 512
    temperature: float = 1.0  # 0 = greedy
    top_k: int = 50  # 0 = off
    top_p: float = 1.0  # 1 = off
    eos_id: int = 151643
    pad_id: int = 151643

    def __post_init__(self):
        if self.max_new_tokens <= 0:
            raise ValueError(f"sampling.max_new_tokens must be positive, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"sampling.temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"sampling.top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"sampling.top_p must be in (0, 1], got {self.top_p}")


def policy_log_probs(logits_bv: jax.Array, temperature: float) -> jax.Array:
    """log pi(token) of the policy being sampled: softmax of the temperature-scaled logits
    (the training side scales its logits the same way)."""
    scale = 1.0 if temperature == 0 else temperature
    return jax.nn.log_softmax(logits_bv.astype(jnp.float32) / scale, axis=-1)


def _order_keys(x: jax.Array) -> jax.Array:
    """float32 -> uint32 with the same order (negative floats: all bits flipped; others: the
    sign bit set), so order statistics can be searched on integers."""
    bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
    negative = (bits >> 31) == 1
    return jnp.where(negative, ~bits, bits | jnp.uint32(0x80000000))


def kth_largest_key(keys_bv: jax.Array, k: int) -> jax.Array:
    """The k-th largest of each row's order keys [B, 1], exactly: a bisection over the 2^32
    keys, 32 rounds of compare-and-count. On CPU this is far faster than lax.top_k over a
    151,936-token vocabulary (which sorts every row)."""
    lo = jnp.zeros((*keys_bv.shape[:-1], 1), jnp.uint32)  # invariant: count(keys >= lo) >= k
    hi = jnp.full_like(lo, 0xFFFFFFFF)

    def step(_, bounds):
        lo, hi = bounds
        span = hi - lo
        mid = lo + (span >> 1) + (span & 1)  # upper middle; never overflows
        ok = jnp.sum(keys_bv >= mid, axis=-1, keepdims=True) >= k
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid - 1)

    lo, _ = jax.lax.fori_loop(0, 32, step, (lo, hi))
    return lo


def filter_logits(logits_bv: jax.Array, top_k: int, top_p: float) -> jax.Array:
    """-inf outside the top-k and outside the smallest set whose probability exceeds top_p
    (the most likely token always survives)."""
    if top_k and top_k < logits_bv.shape[-1]:
        keys = _order_keys(logits_bv)
        logits_bv = jnp.where(keys < kth_largest_key(keys, top_k), -jnp.inf, logits_bv)
    if top_p < 1.0:
        sorted_desc = jnp.sort(logits_bv, axis=-1)[..., ::-1]
        probs = jax.nn.softmax(sorted_desc, axis=-1)
        # Keep a token while the mass strictly before it is below top_p.
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        keep_sorted = mass_before < top_p
        threshold = jnp.min(jnp.where(keep_sorted, sorted_desc, jnp.inf), axis=-1, keepdims=True)
        logits_bv = jnp.where(logits_bv < threshold, -jnp.inf, logits_bv)
    return logits_bv


def sample_tokens(key: jax.Array, logits_bv: jax.Array, config: SamplingConfig) -> tuple[jax.Array, jax.Array]:
    """(tokens [B], their log-probs under the temperature-scaled policy [B])."""
    logps = policy_log_probs(logits_bv, config.temperature)
    if config.temperature == 0:
        tokens = jnp.argmax(logits_bv, axis=-1)
    else:
        filtered = filter_logits(logits_bv.astype(jnp.float32) / config.temperature, config.top_k, config.top_p)
        # Inverse-CDF sampling: one uniform per row instead of Gumbel noise for every token of
        # the vocabulary (the noise dominated a CPU decode step).
        cdf = jnp.cumsum(jax.nn.softmax(filtered, axis=-1), axis=-1)
        u = jax.random.uniform(key, (logits_bv.shape[0], 1)) * cdf[:, -1:]
        tokens = jnp.minimum(jnp.sum(cdf <= u, axis=-1), logits_bv.shape[-1] - 1)
    return tokens.astype(jnp.int32), jnp.take_along_axis(logps, tokens[:, None], axis=-1)[:, 0]
