"""One KV-cached Qwen2 decode step laid out for XLA's CPU backend.

`Qwen2ForCausalLM.hidden_states` scans over the stacked layers with [rows, in] @ [in, out]
matmuls. Inside a decode loop on XLA:CPU that shape costs twice what it must (measured on a
2-core x86 machine, Qwen2.5-0.5B shape, 32 rows): every step copies each layer's weights out
of the stacked arrays, and a skinny [rows, in] @ [in, out] product runs at about half the
rate of [out, in] @ [in, rows]. So the rollout takes, once, `decode_weights`: every layer's
kernels as their own transposed [out, in] arrays in the compute dtype. `decode_step` keeps
the hidden state feature-major ([D, rows]) and runs the layers as straight-line code. The
arithmetic is `qwen2.decoder_layer`'s, in its FEATURE_MAJOR layout; the tests hold the two
paths equal. The accelerators take the scanned path (their matmul units do not care).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jax_tinyr1.model.layers import DTYPES, from_bit_patterns, rms_norm
from jax_tinyr1.model.qwen2 import (
    FEATURE_MAJOR,
    KVCache,
    Qwen2ForCausalLM,
    attend_stacked_cache,
    decoder_layer,
    rope_cos_sin,
)


class DecodeWeights(NamedTuple):
    layers: list[dict[str, jax.Array]]  # per layer; kernels [out, in] (adapters A^T [r, in], B^T [out, r])
    final_norm: jax.Array
    head_vd: jax.Array  # the LM head as [vocab, D]


def decode_weights(llm: Qwen2ForCausalLM) -> DecodeWeights:
    """Per-layer transposed copies of the weights (call once, outside the decode loop)."""
    c = llm.config
    dtype = DTYPES[c.dtype]
    stacked = {name: var[...] for name, var in {**dict(llm.layers.items()), **llm.adapters()}.items()}
    layers = []
    for i in range(c.num_layers):
        layer = {}
        for name, value in stacked.items():
            value = from_bit_patterns(value[i], DTYPES[c.param_dtype])
            if name.endswith(("_kernel", "_lora_a", "_lora_b")):  # adapters are matmuls like kernels
                layer[name] = value.T.astype(dtype)
            elif name.endswith("_bias"):
                layer[name] = value.astype(dtype)[:, None]
            else:
                layer[name] = value
        layers.append(layer)
    head_vd = llm.embed[...] if c.tie_word_embeddings else llm.lm_head[...].T
    weights = DecodeWeights(layers, llm.final_norm[...], head_vd.astype(dtype))
    # Materialize the copies here; otherwise XLA may fold the slices back into the loop.
    return jax.lax.optimization_barrier(weights)


def decode_step(
    llm: Qwen2ForCausalLM, weights: DecodeWeights, token_b: jax.Array, position_b: jax.Array, cache: KVCache
) -> tuple[jax.Array, KVCache]:
    """Logits [B, vocab] (float32) of one new token per row, written at slot `cache.index`."""
    c = llm.config
    b = token_b.shape[0]
    index = cache.index
    x_db = llm.embed_tokens(token_b).T
    cos, sin = rope_cos_sin(position_b[:, None], c.head_dim, c.rope_theta)
    valid_bs = jax.lax.dynamic_update_slice(cache.valid_bs, jnp.ones((b, 1), bool), (0, index))
    mask_b1ts = (valid_bs & (jnp.arange(valid_bs.shape[1]) <= index))[:, None, None, :]
    kv = (cache.k_lbksh, cache.v_lbksh)
    for i, p in enumerate(weights.layers):  # straight-line code: no per-step slicing of stacked weights
        attend = functools.partial(attend_stacked_cache, i, *kv, mask_b1ts, index, c.head_dim**-0.5)
        x_db, kv = decoder_layer(c, p, x_db, cos, sin, attend, FEATURE_MAJOR)
    h_db = rms_norm(x_db, weights.final_norm, c.rms_norm_eps, axis=0)
    logits_vb = weights.head_vd @ h_db
    # The sampler wants [B, vocab]. XLA:CPU transposes a [vocab, B] array slower than it
    # computes it, but multiplies by the identity (transposed operand) quickly, and exactly
    # for finite logits: each output is one product by 1 plus products by 0.
    identity = jnp.eye(b, dtype=logits_vb.dtype)
    logits_bv = jax.lax.dot_general(
        identity, logits_vb, (((1,), (1,)), ((), ())), precision="highest", preferred_element_type=jnp.float32
    )
    return logits_bv, KVCache(*kv, valid_bs, index + 1)
