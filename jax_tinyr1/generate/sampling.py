"""Next-token sampling: temperature, then top-k, then top-p (HF's warper order), or greedy."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jax_tinyr1.derived import derived

# How a rollout lays out the language model for its token loop (generate/decode_layout.py).
DECODE_WEIGHTS = ("auto", "replicated", "tensor", "training")


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    max_new_tokens: int = 512
    temperature: float = 1.0  # 0 = greedy
    top_k: int = 50  # 0 = off
    top_p: float = 1.0  # 1 = off
    decode_weights: str = "auto"  # one of DECODE_WEIGHTS
    # From the tokenizer in a run (a YAML key for them is refused).
    eos_id: int = derived(151643, "the tokenizer")
    pad_id: int = derived(151643, "the tokenizer")

    def __post_init__(self):
        if self.max_new_tokens <= 0:
            raise ValueError(f"sampling.max_new_tokens must be positive, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"sampling.temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"sampling.top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"sampling.top_p must be in (0, 1], got {self.top_p}")
        if self.decode_weights not in DECODE_WEIGHTS:
            raise ValueError(f"sampling.decode_weights must be one of {DECODE_WEIGHTS}, got {self.decode_weights!r}")


# Rows are cut into blocks of this many tokens: block maxima bound the top-k threshold and
# block sums make a two-level CDF, so no per-step work touches a full row more than a few
# times (Qwen2's 151,936-token vocabulary is 1,187 blocks).
BLOCK = 128


def _order_keys(x: jax.Array) -> jax.Array:
    """float32 -> uint32 with the same order (negative floats: all bits flipped; others: the
    sign bit set), so order statistics can be searched on integers."""
    bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
    negative = (bits >> 31) == 1
    return jnp.where(negative, ~bits, bits | jnp.uint32(0x80000000))


def _from_order_keys(keys: jax.Array) -> jax.Array:
    """Inverse of `_order_keys`."""
    positive = (keys >> 31) == 1
    bits = jnp.where(positive, keys & jnp.uint32(0x7FFFFFFF), ~keys)
    return jax.lax.bitcast_convert_type(bits, jnp.float32)


def kth_largest_key(keys_bv: jax.Array, k: int) -> jax.Array:
    """The k-th largest of each row's order keys [B, 1], exactly: a bisection over the 2^32
    keys, 32 rounds of compare-and-count. Inside the decode loop XLA's CPU `lax.top_k` sorts
    every row and is two orders of magnitude slower."""
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


def _blocks(x_bv: jax.Array, fill: float) -> jax.Array:
    """[B, V] -> [B, C, J] (C = ceil(V / BLOCK) blocks of J = BLOCK), padded with `fill`."""
    pad = -x_bv.shape[-1] % BLOCK
    if pad:
        x_bv = jnp.pad(x_bv, ((0, 0), (0, pad)), constant_values=fill)
    return x_bv.reshape(x_bv.shape[0], -1, BLOCK)


def top_k_threshold(x_bv: jax.Array, k: int) -> jax.Array:
    """The k-th largest value of each row [B, 1], exactly.

    The k blocks with the largest maxima hold k values at least as large as the k-th largest
    block maximum, and every value above it lies in one of them; so the k-th largest of those
    k * BLOCK candidates is the k-th largest of the row. Ties among block maxima are harmless
    as long as the blocks strictly above the k-th maximum come first.
    """
    xb = _blocks(x_bv.astype(jnp.float32), -jnp.inf)
    num_blocks = xb.shape[1]
    if k >= num_blocks:  # short rows: search the whole row
        return _from_order_keys(kth_largest_key(_order_keys(x_bv), k))
    block_max = _order_keys(jnp.max(xb, axis=-1))  # [B, C] block maxima
    kth_max = kth_largest_key(block_max, k)
    above, tied = block_max > kth_max, block_max == kth_max
    rank = jnp.where(
        above,
        jnp.cumsum(above, axis=-1),
        jnp.where(tied, jnp.sum(above, axis=-1, keepdims=True) + jnp.cumsum(tied, axis=-1), 0),
    )
    chosen = rank[:, :, None] == jnp.arange(1, k + 1)  # [B, C, k]: block of rank j+1
    index = jnp.sum(jnp.where(chosen, jnp.arange(num_blocks)[None, :, None], 0), axis=1)
    candidates = jnp.take_along_axis(xb, index[:, :, None], axis=1).reshape(x_bv.shape[0], -1)
    return _from_order_keys(kth_largest_key(_order_keys(candidates), k))


# Rows per `lax.top_k`: XLA:GPU's top-k kernel takes up to 24 rows of Qwen2's vocabulary; more,
# and it sorts every row whole with CUB (which a compile-only device cannot compile either).
TOP_K_ROW_BLOCK = 16


def sorting_top_k_threshold(x_bv: jax.Array, k: int) -> jax.Array:
    """The k-th largest value of each row [B, 1] by `lax.top_k`: one kernel per 16 rows on a
    GPU, where the bisection's 64 rounds would be as many kernel launches per token; the same
    value."""
    b, v = x_bv.shape
    mesh = jax.sharding.get_abstract_mesh()
    across = 1 if mesh.empty else mesh.shape.get("data", 1) * mesh.shape.get("fsdp", 1)
    across = across if b % across == 0 else 1
    # Blocks of each device's own rows (the rows are split over the data-parallel devices).
    x_nrv = x_bv.astype(jnp.float32).reshape(across, b // across, v)
    blocks = [x_nrv[:, i : i + TOP_K_ROW_BLOCK] for i in range(0, b // across, TOP_K_ROW_BLOCK)]
    kth = jnp.concatenate([jax.lax.top_k(block, k)[0][..., -1:] for block in blocks], axis=1)
    return kth.reshape(b, 1)


def filter_logits(logits_bv: jax.Array, top_k: int, top_p: float, kth=top_k_threshold) -> jax.Array:
    """-inf outside the top-k (ties with the k-th value kept, as HF does) and outside the
    smallest set whose probability exceeds top_p (the most likely token always survives).
    `kth(x, k)` finds the k-th largest value (`top_k_threshold` or `sorting_top_k_threshold`)."""
    if top_k and top_k < logits_bv.shape[-1]:
        logits_bv = jnp.where(logits_bv < kth(logits_bv, top_k), -jnp.inf, logits_bv)
    if top_p < 1.0:
        sorted_desc = jnp.sort(logits_bv, axis=-1)[..., ::-1]
        probs = jax.nn.softmax(sorted_desc, axis=-1)
        # Keep a token while the mass strictly before it is below top_p.
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        keep_sorted = mass_before < top_p
        threshold = jnp.min(jnp.where(keep_sorted, sorted_desc, jnp.inf), axis=-1, keepdims=True)
        logits_bv = jnp.where(logits_bv < threshold, -jnp.inf, logits_bv)
    return logits_bv


def _last_positive(weights: jax.Array) -> jax.Array:
    return weights.shape[-1] - 1 - jnp.argmax(weights[:, ::-1] > 0, axis=-1)


def _inverse_cdf(key: jax.Array, weights: jax.Array) -> jax.Array:
    """An index drawn with probability proportional to the non-negative weights [B, entries]; never
    one of weight zero (rounding past the end falls back to the last positive weight)."""
    cdf = jnp.cumsum(weights, axis=-1)
    u = jax.random.uniform(key, (weights.shape[0], 1)) * cdf[:, -1:]
    return jnp.minimum(jnp.sum(cdf <= u, axis=-1), _last_positive(weights))


def sample_from_weights(key: jax.Array, weights_bv: jax.Array) -> jax.Array:
    """Exact sampling in proportion to `weights_bv` in two stages: a block by its total weight,
    then a token inside it by its weight (one uniform each), so the cumulative sums are over
    V / BLOCK blocks and BLOCK tokens instead of a whole row."""
    blocks = _blocks(weights_bv, 0.0)
    block_key, token_key = jax.random.split(key)
    block = _inverse_cdf(block_key, jnp.sum(blocks, axis=-1))
    inside = jnp.take_along_axis(blocks, block[:, None, None], axis=1)[:, 0]
    return block * BLOCK + _inverse_cdf(token_key, inside)


def sample_tokens(
    key: jax.Array, logits_bv: jax.Array, config: SamplingConfig, kth=top_k_threshold
) -> tuple[jax.Array, jax.Array]:
    """(tokens [B], their log-probs under the temperature-scaled policy [B])."""
    scaled = logits_bv.astype(jnp.float32) / (1.0 if config.temperature == 0 else config.temperature)
    top = jnp.max(scaled, axis=-1, keepdims=True)
    log_normalizer = top + jnp.log(jnp.sum(jnp.exp(scaled - top), axis=-1, keepdims=True))
    if config.temperature == 0:
        tokens = jnp.argmax(scaled, axis=-1)
    else:
        # Inverse-CDF sampling: one uniform per stage instead of Gumbel noise for every token
        # of the vocabulary (the noise dominated a CPU decode step).
        kept = filter_logits(scaled, config.top_k, config.top_p, kth)
        tokens = sample_from_weights(key, jnp.exp(kept - top))
    logps = jnp.take_along_axis(scaled, tokens[:, None], axis=-1)[:, 0] - log_normalizer[:, 0]
    return tokens.astype(jnp.int32), logps
