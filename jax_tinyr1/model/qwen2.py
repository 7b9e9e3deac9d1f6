"""Qwen2 / Qwen2.5 decoder-only language model in Flax NNX.

Token embedding -> N x [RMSNorm -> GQA attention (RoPE, q/k/v bias) -> residual,
RMSNorm -> SwiGLU MLP -> residual] -> RMSNorm -> LM head (tied to the embedding or not).

The N layers are stored stacked (leading `layers` axis) and run with one `lax.scan`, so
compile time does not grow with depth and HF layer i is index i of every stacked array.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from jax_tinyr1.model.layers import (
    DTYPES,
    causal_attention_mask,
    dense,
    from_bit_patterns,
    rms_norm,
    stacked_param,
)
from jax_tinyr1.model.lora import ADAPTERS, LLM_TARGETS, adapted, adapter_params, row_dropout, scale
from jax_tinyr1.model.sharding import constrain_batch
from jax_tinyr1.model.validation import require_dtype, require_dtypes, require_positive_ints


@dataclasses.dataclass(frozen=True)
class Qwen2Config:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = True
    max_position_embeddings: int = 32768
    param_dtype: str = "float32"  # master weights
    dtype: str = "float32"  # compute
    remat: bool = False  # rematerialize the layer body in the backward pass
    remat_policy: str = "nothing_saveable"  # what the backward pass keeps of each layer (REMAT_POLICIES)
    scan_unroll: int = 1  # layers per scan iteration (1: one compiled body; num_layers: fully unrolled)
    # Low-rank adapters (model/lora.py) on these projections of every layer; rank 0: none.
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0  # applied when the forward pass is given dropout keys (the update)
    lora_targets: tuple[str, ...] = ()
    lora_param_dtype: str = "float32"  # the adapters' own (trained) dtype

    def __post_init__(self):
        require_positive_ints(
            self,
            (
                "vocab_size",
                "hidden_size",
                "intermediate_size",
                "num_layers",
                "num_heads",
                "num_kv_heads",
                "head_dim",
            ),
        )
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"Qwen2Config.num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})"
            )
        if self.head_dim % 2:
            raise ValueError(f"Qwen2Config.head_dim must be even for RoPE, got {self.head_dim}")
        require_dtypes(self)
        object.__setattr__(self, "lora_targets", tuple(self.lora_targets))  # a JSON list comes back a tuple
        if self.lora_rank < 0 or (self.lora_rank > 0) != bool(self.lora_targets):
            raise ValueError("Qwen2Config: lora_rank > 0 and lora_targets go together")
        unknown = sorted(set(self.lora_targets) - set(LLM_TARGETS))
        if unknown:
            raise ValueError(f"Qwen2Config.lora_targets: unknown {unknown}; known {list(LLM_TARGETS)}")
        require_dtype("Qwen2Config.lora_param_dtype", self.lora_param_dtype)
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(f"remat_policy must be one of {sorted(REMAT_POLICIES)}, got {self.remat_policy!r}")

    @property
    def lora_scale(self) -> float:
        """What the adapters' output is multiplied by (alpha / rank; 0 without adapters)."""
        return scale(self.lora_alpha, self.lora_rank) if self.lora_rank else 0.0


# What the backward pass of a rematerialised layer keeps from its forward pass (the rest it
# recomputes), as `jax.checkpoint` policies. Fewer saved values: less memory, more FLOPs.
REMAT_POLICIES: dict[str, Callable] = {
    "nothing_saveable": jax.checkpoint_policies.nothing_saveable,  # only the layer's input: a second forward
    "save_qkv_proj": jax.checkpoint_policies.save_only_these_names("q_proj", "k_proj", "v_proj"),
    # the projections and the attention output: the attention itself is not recomputed
    "save_attention": jax.checkpoint_policies.save_only_these_names("q_proj", "k_proj", "v_proj", "attention"),
    # every matmul with the weights (projections, MLP); the attention and element-wise ops are recomputed
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,  # the attention's matmuls as well
}


class KVCache(NamedTuple):
    """Preallocated keys/values of every layer, [layers, batch, kv_heads, slots, head_dim].

    All rows write at the same slot `index`; `valid_bs` marks which slots hold real tokens
    (padding written by a right-padded prefill stays invalid), so rows of different prompt
    lengths share one static-shape cache. Positions are explicit per token, not the slot.
    Heads come before slots so that attention reads each head's keys as one contiguous
    [slots, head_dim] matrix (no per-step transpose of the cache).
    """

    k_lbksh: jax.Array
    v_lbksh: jax.Array
    valid_bs: jax.Array  # bool
    index: jax.Array  # int32 scalar: next slot to write

    @classmethod
    def init(cls, config: Qwen2Config, batch: int, max_len: int, dtype=None) -> KVCache:
        dtype = DTYPES[config.dtype] if dtype is None else dtype
        shape = (config.num_layers, batch, config.num_kv_heads, max_len, config.head_dim)
        return cls(
            jnp.zeros(shape, dtype),
            jnp.zeros(shape, dtype),
            jnp.zeros((batch, max_len), bool),
            jnp.zeros((), jnp.int32),
        )


def rope_cos_sin(positions_bt: jax.Array, head_dim: int, theta: float):
    """cos/sin tables [B, T, head_dim] in float32, HF's rotate-half layout."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    freqs_bth = positions_bt.astype(jnp.float32)[..., None] * inv_freq
    emb = jnp.concatenate([freqs_bth, freqs_bth], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x_btnh: jax.Array, cos_bth: jax.Array, sin_bth: jax.Array) -> jax.Array:
    half = x_btnh.shape[-1] // 2
    rotated = jnp.concatenate([-x_btnh[..., half:], x_btnh[..., :half]], axis=-1)
    cos, sin = cos_bth[:, :, None, :].astype(x_btnh.dtype), sin_bth[:, :, None, :].astype(x_btnh.dtype)
    return x_btnh * cos + rotated * sin


def cached_attention(q_btnh, k_bksh, v_bksh, mask_b1ts, scale: float) -> jax.Array:
    """Grouped-query attention of T queries over a [B, K, S, H] cache -> [B, T, N, H]; query
    head n reads kv head n // A (A = N / K query heads per kv head), as HF's repeat_kv does. Softmax in float32."""
    b, t, n, h = q_btnh.shape
    k = k_bksh.shape[1]
    q_bkath = q_btnh.reshape(b, t, k, n // k, h).transpose(0, 2, 3, 1, 4)
    scores = jnp.einsum("bkath,bksh->bkats", q_bkath, k_bksh, preferred_element_type=jnp.float32) * scale
    # A large finite negative, not -inf: a padding query sees no key at all and must give
    # finite (ignored) output, since its keys and values are cached and later multiplied by 0.
    scores = jnp.where(mask_b1ts[:, :, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v_bksh.dtype)
    out = jnp.einsum("bkats,bksh->bkath", probs, v_bksh)
    return out.transpose(0, 3, 1, 2, 4).reshape(b, t, n, h)


class Layout(NamedTuple):
    """Where the features sit in a layer's activations, and how kernels meet them.

    TOKEN_MAJOR: x [B, T, D], kernels [in, out] (the stored parameters; training, prefill).
    FEATURE_MAJOR: x [D, B] (one token per row), kernels [out, in], biases [out, 1] (the CPU
    decode path's transposed copies, see generate/cpu_decode.py)."""

    feature_axis: int
    project: Callable  # (x, kernel, bias | None) -> x @ kernel + bias in this layout
    split_heads: Callable  # (x, heads, head_dim) -> [B, T, heads, head_dim]
    merge_heads: Callable  # [B, T, heads, head_dim] -> x in this layout


def _feature_major_project(x_db, kernel_oi, bias_o1=None):
    y = kernel_oi.astype(x_db.dtype) @ x_db
    return y if bias_o1 is None else y + bias_o1.astype(x_db.dtype)


TOKEN_MAJOR = Layout(
    feature_axis=-1,
    project=dense,
    split_heads=lambda x, count, h: x.reshape(*x.shape[:-1], count, h),
    merge_heads=lambda a_btnh: a_btnh.reshape(*a_btnh.shape[:2], -1),
)
FEATURE_MAJOR = Layout(
    feature_axis=0,
    project=_feature_major_project,
    split_heads=lambda x_db, count, h: x_db.reshape(count, h, x_db.shape[1]).transpose(2, 0, 1)[:, None],
    merge_heads=lambda a_b1nh: a_b1nh.reshape(a_b1nh.shape[0], -1).T,
)


def decoder_layer(
    config: Qwen2Config, p: dict[str, jax.Array], x, cos, sin, attend, layout: Layout = TOKEN_MAJOR, dropout=None
):
    """One decoder layer, the only place its maths is written: RMSNorm -> q/k/v (+ bias) ->
    RoPE -> `attend` -> o -> residual; RMSNorm -> SwiGLU -> residual. A projection with an
    adapter in `p` (NAME_lora_a/b) adds its low-rank term (model/lora.py); `dropout(target)`,
    when given, is the dropout of that projection's adapter input.

    `attend(q_btnh, k_btkh, v_btkh) -> (out_btnh, extra)` runs the attention (and writes a
    cache when there is one); `extra` is returned beside the new activations."""
    n, k, h, eps = config.num_heads, config.num_kv_heads, config.head_dim, config.rms_norm_eps

    def project(target, y, bias=None):
        drop = None if dropout is None else dropout(target)
        return adapted(layout.project, y, p[f"{target}_kernel"], bias, p, target, config.lora_scale, drop)

    y = rms_norm(x, p["input_norm"], eps, axis=layout.feature_axis)
    if "qkv_kernel" in p:  # the decoding layout (generate/decode_layout.py): q|k|v in one matmul
        qkv = layout.project(y, p["qkv_kernel"], p["qkv_bias"])
        q_proj, k_proj, v_proj = jnp.split(qkv, (n * h, (n + k) * h), axis=layout.feature_axis)
    else:
        q_proj, k_proj, v_proj = (project(t, y, p[f"{t}_bias"]) for t in ("q", "k", "v"))
    # The names are what a remat policy may keep (REMAT_POLICIES); outside remat they do nothing.
    q = apply_rope(layout.split_heads(checkpoint_name(q_proj, "q_proj"), n, h), cos, sin)
    key = apply_rope(layout.split_heads(checkpoint_name(k_proj, "k_proj"), k, h), cos, sin)
    val = layout.split_heads(checkpoint_name(v_proj, "v_proj"), k, h)
    attn, extra = attend(q, key, val)
    attn = checkpoint_name(attn, "attention")
    x = x + project("o", layout.merge_heads(attn))
    y = rms_norm(x, p["post_attention_norm"], eps, axis=layout.feature_axis)
    if "gate_up_kernel" in p:  # the decoding layout: gate|up in one matmul
        gate, up = jnp.split(layout.project(y, p["gate_up_kernel"]), 2, axis=layout.feature_axis)
    else:
        gate, up = project("gate", y), project("up", y)
    return x + project("down", jax.nn.silu(gate) * up), extra


def attend_layer_cache(k_cache, v_cache, index, mask_b1ts, scale, q, key, val):
    """Write one layer's new keys/values into its cache [B, K, S, H] at slot `index` and attend
    over it."""
    write = (0, 0, index, 0)
    k_cache = jax.lax.dynamic_update_slice(k_cache, key.transpose(0, 2, 1, 3).astype(k_cache.dtype), write)
    v_cache = jax.lax.dynamic_update_slice(v_cache, val.transpose(0, 2, 1, 3).astype(v_cache.dtype), write)
    out = cached_attention(q, k_cache.astype(q.dtype), v_cache.astype(q.dtype), mask_b1ts, scale)
    return out, (k_cache, v_cache)


def attend_stacked_cache(i, k_all, v_all, mask_b1ts, index, scale, q, key, val):
    """Write layer i's new keys/values into the whole stacked cache [L, B, K, S, H] at slot
    `index` and attend over layer i's slots: the cache is updated in place where it is a loop's
    carry (the decode paths), never copied out and back per layer."""
    write = (i, 0, 0, index, 0)
    k_all = jax.lax.dynamic_update_slice(k_all, key.transpose(0, 2, 1, 3)[None].astype(k_all.dtype), write)
    v_all = jax.lax.dynamic_update_slice(v_all, val.transpose(0, 2, 1, 3)[None].astype(v_all.dtype), write)
    out = cached_attention(q, k_all[i].astype(q.dtype), v_all[i].astype(q.dtype), mask_b1ts, scale)
    return out, (k_all, v_all)


def _scanned_layer(config: Qwen2Config, p: dict[str, jax.Array], x_btd, cos, sin, mask_b1ts, kv, dropout=None):
    """One step of the layer scan. `kv` is None (no cache) or (k_bksh, v_bksh, write_index)."""
    scale = config.head_dim**-0.5

    def attend(q, key, val):
        if kv is None:
            return jax.nn.dot_product_attention(q, key, val, mask=mask_b1ts, scale=scale), None
        return attend_layer_cache(*kv, mask_b1ts, scale, q, key, val)

    x_btd, new_kv = decoder_layer(config, p, constrain_batch(x_btd), cos, sin, attend, dropout=dropout)
    return constrain_batch(x_btd), new_kv


class Qwen2ForCausalLM(nnx.Module):
    def __init__(self, config: Qwen2Config, *, rngs: nnx.Rngs):
        self.config = config
        c, pd = config, DTYPES[config.param_dtype]
        d, L = c.hidden_size, c.num_layers
        qd, kvd = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
        init = nnx.initializers.normal(0.02)
        ones = nnx.initializers.ones
        zeros = nnx.initializers.zeros

        self.embed = nnx.Param(init(rngs.params(), (c.vocab_size, d), pd), axes=("vocab", "embed"))
        # Kernels are [in, out] (HF Linear weights transposed), with a leading layer axis.
        spec = {
            "input_norm": ((d,), ("norm",), ones),
            "q_kernel": ((d, qd), ("embed", "q_heads"), init),
            "q_bias": ((qd,), ("q_heads",), zeros),
            "k_kernel": ((d, kvd), ("embed", "kv_heads"), init),
            "k_bias": ((kvd,), ("kv_heads",), zeros),
            "v_kernel": ((d, kvd), ("embed", "kv_heads"), init),
            "v_bias": ((kvd,), ("kv_heads",), zeros),
            "o_kernel": ((qd, d), ("q_heads", "embed"), init),
            "post_attention_norm": ((d,), ("norm",), ones),
            "gate_kernel": ((d, c.intermediate_size), ("embed", "mlp"), init),
            "up_kernel": ((d, c.intermediate_size), ("embed", "mlp"), init),
            "down_kernel": ((c.intermediate_size, d), ("mlp", "embed"), init),
        }
        self.layers = nnx.Dict(
            {name: stacked_param(rngs, L, shape, axes, fn, pd) for name, (shape, axes, fn) in spec.items()}
        )
        self.init_adapters(rngs)
        self.final_norm = nnx.Param(ones(rngs.params(), (d,), pd), axes=("norm",))
        if not c.tie_word_embeddings:
            self.lm_head = nnx.Param(init(rngs.params(), (d, c.vocab_size), pd), axes=("embed", "vocab"))

    def init_adapters(self, rngs: nnx.Rngs) -> None:
        """(Re)create the adapters of `lora_targets` as LoRA starts them (B = 0)."""
        c = self.config
        if c.lora_rank:
            kernels = {t: self.layers[f"{t}_kernel"] for t in c.lora_targets}
            kernels = {t: (k.get_value().shape, k.axes[1:]) for t, k in kernels.items()}
            lora = adapter_params(rngs, kernels, c.lora_rank, DTYPES[c.lora_param_dtype], stacked=True)
            setattr(self, ADAPTERS, nnx.Dict(lora))

    # -- pieces --------------------------------------------------------------------------
    def adapters(self) -> dict[str, nnx.Param]:
        """The stacked adapters (NAME_lora_a [L, in, r], NAME_lora_b [L, r, out]); none without LoRA."""
        return dict(getattr(self, ADAPTERS).items()) if self.config.lora_rank else {}

    def embed_tokens(self, input_ids_bt: jax.Array) -> jax.Array:
        return jnp.take(self.embed[...], input_ids_bt, axis=0).astype(DTYPES[self.config.dtype])

    def output_embedding(self) -> jax.Array:
        """The LM head as [D, vocab] (the transposed token embedding when tied)."""
        return self.embed[...].T if self.config.tie_word_embeddings else self.lm_head[...]

    def logits_from_hidden(self, h_btd: jax.Array) -> jax.Array:
        """Logits in float32. For log-probs of given tokens use update.logprobs (chunked)."""
        return dense(h_btd, self.output_embedding()).astype(jnp.float32)

    def hidden_states(
        self,
        input_ids: jax.Array | None = None,
        attention_mask: jax.Array | None = None,
        *,
        inputs_embeds: jax.Array | None = None,
        positions: jax.Array | None = None,
        cache: KVCache | None = None,
        dropout_keys: jax.Array | None = None,
    ) -> tuple[jax.Array, KVCache | None]:
        """Final-norm hidden states [B, T, D] (and the updated cache when one is given).

        `attention_mask` [B, T] is 1 for real tokens (right padding is 0). `positions`
        default to 0..T-1 (or cache.index.. when decoding). With a cache, the T new tokens
        are written at slots [index, index + T) and attend to every valid earlier slot.
        `dropout_keys` (key data [B, 2]), when given and `lora_dropout` > 0, drop the adapters'
        inputs (the update's forward pass).
        """
        c = self.config
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        x_btd = inputs_embeds.astype(DTYPES[c.dtype]) if inputs_embeds is not None else self.embed_tokens(input_ids)
        b, t, _ = x_btd.shape
        if attention_mask is None:
            attention_mask = jnp.ones((b, t), bool)
        attention_mask = attention_mask.astype(bool)
        start = jnp.zeros((), jnp.int32) if cache is None else cache.index
        if positions is None:
            positions = jnp.broadcast_to(start + jnp.arange(t, dtype=jnp.int32), (b, t))
        cos, sin = rope_cos_sin(positions, c.head_dim, c.rope_theta)

        if cache is None:
            mask = causal_attention_mask(attention_mask, attention_mask, 0)
        else:
            valid = jax.lax.dynamic_update_slice(cache.valid_bs, attention_mask, (0, start))
            mask = causal_attention_mask(attention_mask, valid, start)

        with_dropout = dropout_keys is not None and c.lora_rank > 0 and c.lora_dropout > 0

        def body(x, layer):
            p, kv, index = layer
            p = {name: from_bit_patterns(v, DTYPES[c.param_dtype]) for name, v in p.items()}  # one layer's
            kv = None if kv is None else (*kv, start)
            dropout = None
            if with_dropout:  # one mask stream per layer and projection

                def dropout(target):
                    stream = index * len(LLM_TARGETS) + LLM_TARGETS.index(target)
                    return row_dropout(dropout_keys, c.lora_dropout, stream)

            return _scanned_layer(c, p, x, cos, sin, mask, kv, dropout)

        if c.remat:
            body = jax.checkpoint(body, prevent_cse=False, policy=REMAT_POLICIES[c.remat_policy])
        params = {name: var[...] for name, var in self.layers.items()}
        params.update({name: var[...] for name, var in self.adapters().items()})
        kv_in = None if cache is None else (cache.k_lbksh, cache.v_lbksh)
        layer_index = jnp.arange(c.num_layers, dtype=jnp.int32)
        x_btd, kv_out = jax.lax.scan(body, x_btd, (params, kv_in, layer_index), unroll=c.scan_unroll)
        h_btd = rms_norm(x_btd, self.final_norm[...], c.rms_norm_eps)
        if cache is None:
            return h_btd, None
        return h_btd, KVCache(kv_out[0], kv_out[1], valid, start + t)

    def __call__(
        self, input_ids=None, attention_mask=None, *, inputs_embeds=None, positions=None, cache: KVCache | None = None
    ) -> Any:
        """Logits [B, T, vocab] (float32); with a cache, (logits, updated cache)."""
        h, new_cache = self.hidden_states(
            input_ids, attention_mask, inputs_embeds=inputs_embeds, positions=positions, cache=cache
        )
        logits = self.logits_from_hidden(h)
        return logits if cache is None else (logits, new_cache)
