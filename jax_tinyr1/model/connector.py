"""The "groupresampler" connector of TinyLLaVA-Video.

1. A linear map from the vision width to the LLM width on every visual token.
2. The token sequence is cut into `groups` contiguous chunks (the first `seq % groups`
   chunks one token longer); with 16 frames and 16 groups each chunk is one frame.
3. Each chunk is summarised by the same learned latents [num_queries / groups, D] through
   `num_layers` x [perceiver attention + residual, feed-forward + residual], then LayerNorm.
4. The chunks' latents are concatenated ([num_queries, D]) and a sinusoidal position table
   (built in float16, as the original does) is added.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jax_tinyr1.model.layers import DTYPES, dense, layer_norm, stacked_param
from jax_tinyr1.model.lora import ADAPTERS, CONNECTOR_TARGETS, adapted, adapter_params, scale
from jax_tinyr1.model.validation import require_dtype, require_dtypes, require_positive_ints

NORM_EPS = 1e-5  # torch.nn.LayerNorm default, used throughout the resampler


@dataclasses.dataclass(frozen=True)
class ConnectorConfig:
    vision_hidden_size: int
    hidden_size: int
    num_queries: int = 512
    groups: int = 16
    num_layers: int = 3
    heads: int = 8
    dim_head: int = 64
    ff_mult: int = 4
    param_dtype: str = "float32"
    dtype: str = "float32"
    # Low-rank adapters (model/lora.py) on every linear map; rank 0: none.
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_param_dtype: str = "float32"

    def __post_init__(self):
        require_positive_ints(
            self,
            (
                "vision_hidden_size",
                "hidden_size",
                "num_queries",
                "groups",
                "num_layers",
                "heads",
                "dim_head",
                "ff_mult",
            ),
        )
        require_dtypes(self)
        require_dtype("ConnectorConfig.lora_param_dtype", self.lora_param_dtype)
        if self.lora_rank < 0:
            raise ValueError(f"ConnectorConfig.lora_rank must be >= 0, got {self.lora_rank}")
        if self.num_queries % self.groups:
            raise ValueError(f"ConnectorConfig.num_queries {self.num_queries} not divisible by groups {self.groups}")
        if self.hidden_size % 2:
            raise ValueError("ConnectorConfig.hidden_size must be even (sinusoidal table)")

    @property
    def latents_per_group(self) -> int:
        return self.num_queries // self.groups

    @property
    def inner_dim(self) -> int:
        return self.heads * self.dim_head

    @property
    def lora_scale(self) -> float:
        return scale(self.lora_alpha, self.lora_rank) if self.lora_rank else 0.0


def sinusoidal_table(length: int, dim: int) -> np.ndarray:
    """pe[:, 0::2] = sin(pos * div), pe[:, 1::2] = cos(pos * div), div = exp(2i * -ln(1e4) / d),
    stored in float16 as the original does. Angles are formed in float32 like the original;
    sin/cos are evaluated in float64 and rounded, so the table is the same on every platform
    (the original's CUDA float32 sin can differ from it by one float16 ulp on rare entries)."""
    pos = np.arange(length, dtype=np.float32)[:, None]
    exponent = np.arange(0, dim, 2, dtype=np.float32) * np.float32(-(math.log(10000.0) / dim))
    div = np.exp(exponent.astype(np.float64)).astype(np.float32)
    angle = (pos * div).astype(np.float64)
    table = np.zeros((length, dim), np.float16)
    table[:, 0::2] = np.sin(angle).astype(np.float32)
    table[:, 1::2] = np.cos(angle).astype(np.float32)
    return table


def group_slices(seq_len: int, groups: int) -> list[tuple[int, int]]:
    """Contiguous [start, end) chunks; the first `seq_len % groups` one token longer."""
    if seq_len < groups:
        raise ValueError(f"{seq_len} visual tokens cannot form {groups} groups")
    base, extra = divmod(seq_len, groups)
    sizes = [base + 1] * extra + [base] * (groups - extra)
    starts = np.cumsum([0, *sizes[:-1]])
    return [(int(s), int(s + n)) for s, n in zip(starts, sizes, strict=True)]


def _perceiver_layer(config: ConnectorConfig, p, media_bupd, media_valid_up, latents_buqd):
    """One [attention + residual, feed-forward + residual] step on every group at once."""
    b, g, q_len, _ = latents_buqd.shape
    h, dh = config.heads, config.dim_head

    def project(name, x):  # with its adapter when there is one
        return adapted(dense, x, p[name], None, p, name, config.lora_scale)

    media = layer_norm(media_bupd, p["norm_media_scale"], p["norm_media_bias"], NORM_EPS)
    lat = layer_norm(latents_buqd, p["norm_latents_scale"], p["norm_latents_bias"], NORM_EPS)
    q = project("to_q", lat) * dh**-0.5
    kv = project("to_kv", jnp.concatenate([media, lat], axis=2))
    k, v = kv[..., : config.inner_dim], kv[..., config.inner_dim :]

    def heads(x):  # [B, U, J, (h d)] -> [B, U, h, J, d]
        return x.reshape(*x.shape[:3], h, dh).transpose(0, 1, 3, 2, 4)

    sim = jnp.einsum("bghid,bghjd->bghij", heads(q), heads(k))
    # Padded media slots (uneven groups) are masked; the latents themselves are always keys.
    key_valid = jnp.concatenate([media_valid_up, jnp.ones((g, q_len), bool)], axis=1)
    sim = jnp.where(key_valid[None, :, None, None, :], sim, -jnp.inf)
    attn = jax.nn.softmax(sim.astype(jnp.float32), axis=-1).astype(sim.dtype)
    out = jnp.einsum("bghij,bghjd->bghid", attn, heads(v)).transpose(0, 1, 3, 2, 4).reshape(b, g, q_len, -1)
    latents_buqd = latents_buqd + project("to_out", out)

    y = layer_norm(latents_buqd, p["ff_norm_scale"], p["ff_norm_bias"], NORM_EPS)
    y = project("ff_out", jax.nn.gelu(project("ff_in", y), approximate=False))
    return latents_buqd + y


class GroupResampler(nnx.Module):
    def __init__(self, config: ConnectorConfig, *, rngs: nnx.Rngs):
        self.config = c = config
        pd = DTYPES[c.param_dtype]
        d, L, inner = c.hidden_size, c.num_layers, c.inner_dim
        init, ones, zeros = nnx.initializers.normal(0.02), nnx.initializers.ones, nnx.initializers.zeros
        self.linear_kernel = nnx.Param(
            init(rngs.params(), (c.vision_hidden_size, d), pd), axes=("vision_embed", "embed")
        )
        self.linear_bias = nnx.Param(zeros(rngs.params(), (d,), pd), axes=("norm",))
        self.latents = nnx.Param(
            nnx.initializers.normal(1.0)(rngs.params(), (c.latents_per_group, d), pd), axes=("latents", "embed")
        )
        spec = {
            "norm_media_scale": ((d,), ("norm",), ones),
            "norm_media_bias": ((d,), ("norm",), zeros),
            "norm_latents_scale": ((d,), ("norm",), ones),
            "norm_latents_bias": ((d,), ("norm",), zeros),
            "to_q": ((d, inner), ("embed", "q_heads"), init),
            "to_kv": ((d, 2 * inner), ("embed", "kv_heads"), init),  # k = first half, v = second
            "to_out": ((inner, d), ("q_heads", "embed"), init),
            "ff_norm_scale": ((d,), ("norm",), ones),
            "ff_norm_bias": ((d,), ("norm",), zeros),
            "ff_in": ((d, c.ff_mult * d), ("embed", "mlp"), init),
            "ff_out": ((c.ff_mult * d, d), ("mlp", "embed"), init),
        }
        self.layers = nnx.Dict({k: stacked_param(rngs, L, s, a, f, pd) for k, (s, a, f) in spec.items()})
        self.norm_scale = nnx.Param(ones(rngs.params(), (d,), pd), axes=("norm",))
        self.norm_bias = nnx.Param(zeros(rngs.params(), (d,), pd), axes=("norm",))
        self.init_adapters(rngs)

    def init_adapters(self, rngs: nnx.Rngs) -> None:
        """(Re)create the adapters of every linear map as LoRA starts them (B = 0)."""
        c = self.config
        if not c.lora_rank:
            return
        dtype = DTYPES[c.lora_param_dtype]
        stacked = {name: self.layers[name] for name in CONNECTOR_TARGETS[1:]}
        stacked = {name: (k.get_value().shape, k.axes[1:]) for name, k in stacked.items()}
        lora = adapter_params(rngs, stacked, c.lora_rank, dtype, stacked=True)
        linear = {"linear": (self.linear_kernel.get_value().shape, self.linear_kernel.axes)}
        lora.update(adapter_params(rngs, linear, c.lora_rank, dtype, stacked=False))
        setattr(self, ADAPTERS, nnx.Dict(lora))

    def adapters(self) -> dict[str, nnx.Param]:
        return dict(getattr(self, ADAPTERS).items()) if self.config.lora_rank else {}

    def __call__(self, features_bpe: jax.Array) -> jax.Array:
        """Vision features [B, P, E] -> visual tokens [B, M, D] (M = num_queries)."""
        c = self.config
        dtype = DTYPES[c.dtype]
        adapters = {name: var[...] for name, var in self.adapters().items()}
        x_bpd = adapted(
            dense,
            features_bpe.astype(dtype),
            self.linear_kernel[...],
            self.linear_bias[...],
            adapters,
            "linear",
            c.lora_scale,
        )
        b, s, d = x_bpd.shape
        slices = group_slices(s, c.groups)
        longest = max(end - start for start, end in slices)
        # Gather the groups into a padded [B, U, longest, D] block (static indices).
        index_up = np.array([[min(start + j, end - 1) for j in range(longest)] for start, end in slices])
        valid_gm = np.array([[start + j < end for j in range(longest)] for start, end in slices])
        media = x_bpd[:, index_up]
        latents = jnp.broadcast_to(self.latents[...].astype(dtype), (b, c.groups, c.latents_per_group, d))
        params = {name: var[...] for name, var in self.layers.items()}
        params.update({name: v for name, v in adapters.items() if not name.startswith("linear_")})  # stacked ones
        latents, _ = jax.lax.scan(
            lambda lat, p: (_perceiver_layer(c, p, media, jnp.asarray(valid_gm), lat), None), latents, params
        )
        out = layer_norm(latents, self.norm_scale[...], self.norm_bias[...], NORM_EPS)
        out = out.reshape(b, c.num_queries, d)
        return out + jnp.asarray(sinusoidal_table(c.num_queries, d)).astype(dtype)
