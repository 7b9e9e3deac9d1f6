"""Small building blocks shared by the language model, the vision tower and the connector."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jax_tinyr1.cli import DTYPE_NAMES

# The one dtype table: the names configs, checkpoints and exports use, and their types.
DTYPES = {name: getattr(jnp, name) for name in DTYPE_NAMES}
# What a stored copy beside float32 master weights may be kept in (the GRPO reference
# weights, the Adam moments): full precision or bf16's half memory (float16's range is too
# small for moments).
STORAGE_DTYPES = ("float32", "bfloat16")


def from_bit_patterns(x: jax.Array, dtype) -> jax.Array:
    """A weight in `dtype`: itself, or reinterpreted when it is held as uint16 bit patterns
    (see generate.sampler.inference_split: how XLA:CPU answers with bf16 weights in bf16's
    memory)."""
    return jax.lax.bitcast_convert_type(x, dtype) if x.dtype == jnp.uint16 else x


def dense(x: jax.Array, kernel_io: jax.Array, bias_o: jax.Array | None = None) -> jax.Array:
    """x @ kernel (+ bias) in x's dtype (the compute dtype); parameters are cast, not x."""
    # As a 2-D matmul: XLA's CPU backend lowers the weight gradient of a batched einsum (two
    # contracting dimensions) far slower than that of a plain [tokens, in] @ [in, out].
    y = (x.reshape(-1, x.shape[-1]) @ kernel_io.astype(x.dtype)).reshape(*x.shape[:-1], kernel_io.shape[-1])
    return y if bias_o is None else y + bias_o.astype(x.dtype)


def rms_norm(x: jax.Array, scale: jax.Array, eps: float, axis: int = -1) -> jax.Array:
    """HF Qwen2RMSNorm over `axis`: statistics in float32, scale applied in the input dtype."""
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=axis, keepdims=True) + eps)
    shape = [1] * x.ndim
    shape[axis] = -1  # the scale runs along the normalized axis
    return scale.astype(x.dtype).reshape(shape) * normed.astype(x.dtype)


def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float) -> jax.Array:
    """torch.nn.LayerNorm (biased variance), statistics in float32."""
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    normed = ((x32 - mean) * jax.lax.rsqrt(var + eps)).astype(x.dtype)
    return normed * scale.astype(x.dtype) + bias.astype(x.dtype)


def causal_attention_mask(q_valid_bt: jax.Array, k_valid_bs: jax.Array, q_offset) -> jax.Array:
    """Boolean mask [B, 1, T, S]: key j is visible to query i when it holds a real token
    and j <= i + q_offset (queries occupy slots q_offset .. q_offset + T - 1)."""
    t, s = q_valid_bt.shape[1], k_valid_bs.shape[1]
    q_slot = q_offset + jnp.arange(t)[:, None]
    causal_ts = jnp.arange(s)[None, :] <= q_slot
    return (causal_ts[None, :, :] & k_valid_bs[:, None, :])[:, None, :, :]


def stacked_param(rngs: nnx.Rngs, num_layers: int, shape, axes, init, dtype) -> nnx.Param:
    """A parameter with a leading `layers` axis: one slice per scanned layer."""
    value = init(rngs.params(), (num_layers, *shape), dtype)
    return nnx.Param(value, axes=("layers", *axes))
