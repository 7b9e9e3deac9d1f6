"""SigLIP vision tower (HF `SiglipVisionModel`) in Flax NNX.

Patch embedding (a stride-P convolution, done as a matmul over flattened patches) plus
learned positions -> N x pre-LayerNorm encoder layers (attention, tanh-GELU MLP). The
video model reads the hidden state after layer N-1 (HF `hidden_states[-2]`), so only the
layers up to the selected one run. The post-layernorm and the attention-pooling head are
kept as parameters (checkpoints carry them, and an export must be complete) but unused.
"""

from __future__ import annotations

import dataclasses

import jax
from flax import nnx

from jax_tinyr1.model.layers import DTYPES, dense, layer_norm, stacked_param
from jax_tinyr1.model.sharding import constrain_batch
from jax_tinyr1.model.validation import require_dtypes, require_positive_ints


@dataclasses.dataclass(frozen=True)
class SiglipConfig:
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    image_size: int
    patch_size: int
    num_channels: int = 3
    layer_norm_eps: float = 1e-6
    use_head: bool = True  # the attention-pooling head's parameters exist (unused here)
    select_layer: int = -2  # HF hidden_states index: -2 = output of the second-to-last layer
    drop_first_patch: bool = True  # the original's 'patch' strategy drops index 0
    param_dtype: str = "float32"
    dtype: str = "float32"

    def __post_init__(self):
        require_positive_ints(
            self, ("hidden_size", "intermediate_size", "num_layers", "num_heads", "image_size", "patch_size")
        )
        if self.hidden_size % self.num_heads:
            raise ValueError(f"SiglipConfig.hidden_size {self.hidden_size} not divisible by num_heads {self.num_heads}")
        if self.image_size < self.patch_size:
            raise ValueError(f"SiglipConfig.image_size {self.image_size} is smaller than patch_size {self.patch_size}")
        if not -(self.num_layers + 1) <= self.select_layer <= self.num_layers:
            raise ValueError(f"SiglipConfig.select_layer {self.select_layer} out of range for {self.num_layers} layers")
        require_dtypes(self)

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def layers_to_run(self) -> int:
        """hidden_states[k] is the output of layer k (index 0: the embeddings)."""
        return self.select_layer % (self.num_layers + 1)

    @property
    def tokens_per_frame(self) -> int:
        return self.num_patches - int(self.drop_first_patch)


def _encoder_layer(config: SiglipConfig, p: dict[str, jax.Array], x_bpe: jax.Array) -> jax.Array:
    x_bpe = constrain_batch(x_bpe)
    b, n, d = x_bpe.shape
    heads, eps = config.num_heads, config.layer_norm_eps
    y = layer_norm(x_bpe, p["ln1_scale"], p["ln1_bias"], eps)
    q, k, v = (
        dense(y, p[f"{name}_kernel"], p[f"{name}_bias"]).reshape(b, n, heads, d // heads) for name in ("q", "k", "v")
    )
    attn = jax.nn.dot_product_attention(q, k, v, scale=(d // heads) ** -0.5).reshape(b, n, d)
    x_bpe = x_bpe + dense(attn, p["o_kernel"], p["o_bias"])
    y = layer_norm(x_bpe, p["ln2_scale"], p["ln2_bias"], eps)
    y = jax.nn.gelu(dense(y, p["fc1_kernel"], p["fc1_bias"]), approximate=True)
    return constrain_batch(x_bpe + dense(y, p["fc2_kernel"], p["fc2_bias"]))


class SiglipVisionModel(nnx.Module):
    def __init__(self, config: SiglipConfig, *, rngs: nnx.Rngs):
        self.config = c = config
        pd = DTYPES[c.param_dtype]
        d, i, L, P = c.hidden_size, c.intermediate_size, c.num_layers, c.patch_size
        init, ones, zeros = nnx.initializers.normal(0.02), nnx.initializers.ones, nnx.initializers.zeros

        def param(shape, axes, fn=init):
            return nnx.Param(fn(rngs.params(), shape, pd), axes=axes)

        self.patch_kernel = param((P, P, c.num_channels, d), ("patch", "patch", "channels", "vision_embed"))
        self.patch_bias = param((d,), ("norm",), zeros)
        self.position_embedding = param((c.num_patches, d), ("positions", "vision_embed"))
        spec = {
            "ln1_scale": ((d,), ("norm",), ones),
            "ln1_bias": ((d,), ("norm",), zeros),
            "q_kernel": ((d, d), ("vision_embed", "vision_heads"), init),
            "q_bias": ((d,), ("vision_heads",), zeros),
            "k_kernel": ((d, d), ("vision_embed", "vision_heads"), init),
            "k_bias": ((d,), ("vision_heads",), zeros),
            "v_kernel": ((d, d), ("vision_embed", "vision_heads"), init),
            "v_bias": ((d,), ("vision_heads",), zeros),
            "o_kernel": ((d, d), ("vision_heads", "vision_embed"), init),
            "o_bias": ((d,), ("norm",), zeros),
            "ln2_scale": ((d,), ("norm",), ones),
            "ln2_bias": ((d,), ("norm",), zeros),
            "fc1_kernel": ((d, i), ("vision_embed", "vision_mlp"), init),
            "fc1_bias": ((i,), ("vision_mlp",), zeros),
            "fc2_kernel": ((i, d), ("vision_mlp", "vision_embed"), init),
            "fc2_bias": ((d,), ("norm",), zeros),
        }
        self.layers = nnx.Dict({k: stacked_param(rngs, L, s, a, f, pd) for k, (s, a, f) in spec.items()})
        self.post_norm_scale = param((d,), ("norm",), ones)
        self.post_norm_bias = param((d,), ("norm",), zeros)
        if c.use_head:
            self.head = nnx.Dict(
                {
                    "probe": param((1, 1, d), (None, None, "vision_embed")),
                    "in_kernel": param((d, 3 * d), ("vision_embed", "vision_heads")),
                    "in_bias": param((3 * d,), ("vision_heads",), zeros),
                    "out_kernel": param((d, d), ("vision_heads", "vision_embed")),
                    "out_bias": param((d,), ("norm",), zeros),
                    "ln_scale": param((d,), ("norm",), ones),
                    "ln_bias": param((d,), ("norm",), zeros),
                    "fc1_kernel": param((d, i), ("vision_embed", "vision_mlp")),
                    "fc1_bias": param((i,), ("vision_mlp",), zeros),
                    "fc2_kernel": param((i, d), ("vision_mlp", "vision_embed")),
                    "fc2_bias": param((d,), ("norm",), zeros),
                }
            )

    def embed_patches(self, pixels_byx3: jax.Array) -> jax.Array:
        c = self.config
        n, h, w, ch = pixels_byx3.shape
        if (h, w, ch) != (c.image_size, c.image_size, c.num_channels):
            raise ValueError(
                f"pixels must be [B, {c.image_size}, {c.image_size}, {c.num_channels}], got {pixels_byx3.shape}"
            )
        P, g = c.patch_size, c.image_size // c.patch_size
        # A stride-P "valid" convolution: pixels past the last whole patch are never seen
        # (384 px with 14 px patches: 27 x 27 patches, the last 6 rows/columns unused).
        x = pixels_byx3[:, : g * P, : g * P].astype(DTYPES[c.dtype]).reshape(n, g, P, g, P, ch)
        patches = x.transpose(0, 1, 3, 2, 4, 5).reshape(n, g * g, P * P * ch)
        kernel = self.patch_kernel[...].reshape(P * P * ch, c.hidden_size)  # HWIO rows match (P, P, C)
        return dense(patches, kernel, self.patch_bias[...]) + self.position_embedding[...].astype(patches.dtype)

    def hidden_state(self, pixels_byx3: jax.Array, layer: int | None = None) -> jax.Array:
        """HF `hidden_states[layer]` ([B, P, E]); runs only the layers it needs."""
        c = self.config
        n_run = c.layers_to_run if layer is None else layer % (c.num_layers + 1)
        x = self.embed_patches(pixels_byx3)
        params = {name: var[...][:n_run] for name, var in self.layers.items()}
        x, _ = jax.lax.scan(lambda x, p: (_encoder_layer(c, p, x), None), x, params)
        return x

    def __call__(self, pixels_byx3: jax.Array) -> jax.Array:
        """Video features: the selected hidden state, index 0 dropped when configured."""
        x = self.hidden_state(pixels_byx3)
        return x[:, 1:] if self.config.drop_first_patch else x
