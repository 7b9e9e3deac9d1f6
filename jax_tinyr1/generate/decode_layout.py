"""The language model laid out for decoding, made once per rollout, and the token step that
reads it.

Training keeps float32 master weights sharded over the FSDP devices. Decoding them as they
are costs, at every generated token: an all-gather of every weight, a convert to the compute
dtype, and the q|k|v and gate|up concatenations of the matmuls (read from XLA:GPU's program of
the paper recipe: 6.2 GB gathered per token and GPU). So before the token loop the rollout
makes `DecodeParams` once: the weights in the compute dtype, LoRA adapters merged
(W + A B alpha / rank, in float32, then cast), and placed for decoding:

- `replicated`: q|k|v and gate|up concatenated, the whole copy on every device; each device
  decodes its own rows (the prompts x G completions are split over the data-parallel axes)
  with no collective at all inside the loop.
- `tensor`: the projections split by heads and MLP columns over every device (q, k, v and
  gate, up kept apart so that each device's columns are whole heads). Correct, but not yet
  fast: XLA:GPU's program of `four_24gb.yaml` still gathers 1.2 GB of weights per token and
  device this way (its plan shows it), so `auto` never takes it.
- `training`: no copy: the training weights as they are (today's scanned path). For one
  device whose memory cannot hold a second copy of the model.

`auto` takes `replicated` when the copy is at most `REPLICATE_MAX_FRACTION` of a device's
memory, else `training`.

Every layer's weights, and its KV cache, are arrays of their own, and the token step
(`decode_step`) runs the layers as straight-line code: a matmul reads its weight where it
lies, and a layer's new keys and values are written in place into its cache, which the
attention then reads as it is. Slicing one layer out of stacked arrays inside the loop made
XLA:GPU copy every weight and the layer's cache before each use (read from its program: 8 of
26 kernels per layer, and twice the bytes). The arithmetic is `qwen2.decoder_layer`'s. The
copy lives for the rollout only.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from jax_tinyr1.generate.sampling import DECODE_WEIGHTS
from jax_tinyr1.model.layers import DTYPES, from_bit_patterns, rms_norm
from jax_tinyr1.model.qwen2 import KVCache, Qwen2ForCausalLM, attend_layer_cache, decoder_layer, rope_cos_sin

# A replicated copy beside the training state: at most this share of one device's memory
# (the 3.6B model's language model, 6.2 GB in bf16: 15 % of an A100-40GB, 26 % of an L4's 22.5
# GiB, where the plans show it fits beside the rollout; 36 % of a 16 GB card, where it does not).
REPLICATE_MAX_FRACTION = 0.3
# Every device of the mesh, for the tensor-parallel split.
ALL_DEVICES = ("data", "fsdp", "tensor")


class DecodeParams(NamedTuple):
    layers: list[dict[str, jax.Array]]  # one dict per layer, in the compute dtype, adapters merged
    embed_vd: jax.Array  # the token embedding [vocab, D]
    head_dv: jax.Array | None  # the LM head [D, vocab]; None when tied to the embedding
    final_norm: jax.Array


def copy_bytes(llm: Qwen2ForCausalLM) -> int:
    """Bytes of one full decoding copy of the language model in its compute dtype."""
    c = llm.config
    itemsize = jnp.dtype(DTYPES[c.dtype]).itemsize
    variables = [*llm.layers.values(), llm.embed] + ([] if c.tie_word_embeddings else [llm.lm_head])
    return sum(math.prod(v.get_value().shape) for v in variables) * itemsize  # abstract models too


def choose_placement(setting: str, copy: int, devices: int, device_memory: int | None) -> str:
    """The placement `auto` stands for (any other setting is itself). `device_memory` None
    (not known, e.g. the CPU) counts as room enough."""
    if setting not in DECODE_WEIGHTS:
        raise ValueError(f"decode weights must be one of {DECODE_WEIGHTS}, got {setting!r}")
    if setting != "auto":
        return setting
    if device_memory is None or copy <= REPLICATE_MAX_FRACTION * device_memory:
        return "replicated"
    return "training"


def _merged_kernel(stacked: dict, target: str, lora_scale: float, dtype) -> jax.Array:
    kernel = stacked[f"{target}_kernel"]
    a = stacked.get(f"{target}_lora_a")
    if a is None:
        return kernel.astype(dtype)
    delta = jnp.einsum("lir,lro->lio", a.astype(jnp.float32), stacked[f"{target}_lora_b"].astype(jnp.float32))
    return (kernel.astype(jnp.float32) + delta * lora_scale).astype(dtype)


def _place(x: jax.Array, spec: P) -> jax.Array:
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(x, spec)


def _tensor_spec(shape: tuple[int, ...], axis: int) -> P:
    """Split `axis` over every device when they divide it, else replicate."""
    mesh = jax.sharding.get_abstract_mesh()
    count = 1 if mesh.empty else mesh.size
    spec = [None] * len(shape)
    if shape[axis] % count == 0:
        spec[axis] = ALL_DEVICES
    return P(*spec)


def decode_params(llm: Qwen2ForCausalLM, placement: str) -> DecodeParams:
    """The decoding copy (call inside the rollout's program, once, before the token loop)."""
    if placement not in ("replicated", "tensor"):
        raise ValueError(f"no decoding copy for placement {placement!r}")
    c = llm.config
    dtype = DTYPES[c.dtype]
    stacked = {
        name: from_bit_patterns(var[...], DTYPES[c.param_dtype])
        for name, var in {**dict(llm.layers.items()), **llm.adapters()}.items()
    }
    kernels = {t: _merged_kernel(stacked, t, c.lora_scale, dtype) for t in ("q", "k", "v", "o", "gate", "up", "down")}
    norms = {name: stacked[name].astype(dtype) for name in ("input_norm", "post_attention_norm")}
    biases = {f"{t}_bias": stacked[f"{t}_bias"].astype(dtype) for t in ("q", "k", "v")}
    if placement == "replicated":
        layers = {
            **norms,
            "qkv_kernel": jnp.concatenate([kernels["q"], kernels["k"], kernels["v"]], axis=-1),
            "qkv_bias": jnp.concatenate([biases["q_bias"], biases["k_bias"], biases["v_bias"]], axis=-1),
            "o_kernel": kernels["o"],
            "gate_up_kernel": jnp.concatenate([kernels["gate"], kernels["up"]], axis=-1),
            "down_kernel": kernels["down"],
        }
        layers = {name: _place(x, P()) for name, x in layers.items()}
        head_spec = embed_spec = P()
    else:  # columns of q/k/v/gate/up, rows of o/down: whole heads and MLP columns per device
        layers = {name: _place(x, P()) for name, x in norms.items()}
        for t in ("q", "k", "v", "gate", "up"):
            layers[f"{t}_kernel"] = _place(kernels[t], _tensor_spec(kernels[t].shape, 2))
        for t in ("o", "down"):
            layers[f"{t}_kernel"] = _place(kernels[t], _tensor_spec(kernels[t].shape, 1))
        for name, x in biases.items():
            layers[name] = _place(x, _tensor_spec(x.shape, 1))
        embed_spec = _tensor_spec(llm.embed[...].shape, 0)
        head_spec = _tensor_spec((c.hidden_size, c.vocab_size), 1)
    layers = [{name: x[i] for name, x in layers.items()} for i in range(c.num_layers)]
    embed = _place(llm.embed[...].astype(dtype), embed_spec)
    head = None if c.tie_word_embeddings else _place(llm.lm_head[...].astype(dtype), head_spec)
    params = DecodeParams(layers, embed, head, _place(llm.final_norm[...].astype(dtype), P()))
    # Made here, once: otherwise XLA may move the casts and gathers back into the loop.
    return jax.lax.optimization_barrier(params)


def layer_cache(cache: KVCache) -> KVCache:
    """The stacked cache [L, B, K, S, H] as one array per layer (what `decode_step` carries)."""
    layers = range(cache.k_lbksh.shape[0])
    return cache._replace(k_lbksh=[cache.k_lbksh[i] for i in layers], v_lbksh=[cache.v_lbksh[i] for i in layers])


def decode_step(
    llm: Qwen2ForCausalLM, params: DecodeParams, token_b: jax.Array, position_b: jax.Array, cache: KVCache
) -> tuple[jax.Array, KVCache]:
    """Logits [B, vocab] (float32) of one new token per row, written at slot `cache.index` of
    a per-layer cache (`layer_cache`)."""
    c = llm.config
    b = token_b.shape[0]
    index = cache.index
    x_b1d = jnp.take(params.embed_vd, token_b, axis=0)[:, None, :]
    cos, sin = rope_cos_sin(position_b[:, None], c.head_dim, c.rope_theta)
    valid_bs = jax.lax.dynamic_update_slice(cache.valid_bs, jnp.ones((b, 1), bool), (0, index))
    mask_b1ts = (valid_bs & (jnp.arange(valid_bs.shape[1]) <= index))[:, None, None, :]
    keys, values = list(cache.k_lbksh), list(cache.v_lbksh)
    for i, p in enumerate(params.layers):  # straight-line code: no per-step slicing of stacked arrays
        attend = functools.partial(attend_layer_cache, keys[i], values[i], index, mask_b1ts, c.head_dim**-0.5)
        x_b1d, (keys[i], values[i]) = decoder_layer(c, p, x_b1d, cos, sin, attend)
    h_bd = rms_norm(x_b1d[:, 0], params.final_norm, c.rms_norm_eps)
    if params.head_dv is None:  # tied: contract with the embedding's rows, no transposed copy
        logits = jax.lax.dot_general(h_bd, params.embed_vd, (((1,), (1,)), ((), ())))
    else:
        logits = h_bd @ params.head_dv
    return logits.astype(jnp.float32), KVCache(keys, values, valid_bs, index + 1)
