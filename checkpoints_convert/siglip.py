"""SigLIP vision tower (HF `SiglipVisionModel`) <-> ours: the one table, and configs."""

from __future__ import annotations

from typing import Any

from checkpoints_convert.mapping import CONV2D, IDENTITY, LINEAR, Rule
from jax_tinyr1.cli import CheckpointError
from jax_tinyr1.model.siglip import SiglipConfig

_LAYER = "encoder.layers.{i}."
_ENCODER_RULES = [
    Rule("embeddings.patch_embedding.weight", "patch_kernel", CONV2D),
    Rule("embeddings.patch_embedding.bias", "patch_bias"),
    Rule("embeddings.position_embedding.weight", "position_embedding"),
    Rule(_LAYER + "layer_norm1.weight", "layers/ln1_scale"),
    Rule(_LAYER + "layer_norm1.bias", "layers/ln1_bias"),
    Rule(_LAYER + "self_attn.q_proj.weight", "layers/q_kernel", LINEAR),
    Rule(_LAYER + "self_attn.q_proj.bias", "layers/q_bias"),
    Rule(_LAYER + "self_attn.k_proj.weight", "layers/k_kernel", LINEAR),
    Rule(_LAYER + "self_attn.k_proj.bias", "layers/k_bias"),
    Rule(_LAYER + "self_attn.v_proj.weight", "layers/v_kernel", LINEAR),
    Rule(_LAYER + "self_attn.v_proj.bias", "layers/v_bias"),
    Rule(_LAYER + "self_attn.out_proj.weight", "layers/o_kernel", LINEAR),
    Rule(_LAYER + "self_attn.out_proj.bias", "layers/o_bias"),
    Rule(_LAYER + "layer_norm2.weight", "layers/ln2_scale"),
    Rule(_LAYER + "layer_norm2.bias", "layers/ln2_bias"),
    Rule(_LAYER + "mlp.fc1.weight", "layers/fc1_kernel", LINEAR),
    Rule(_LAYER + "mlp.fc1.bias", "layers/fc1_bias"),
    Rule(_LAYER + "mlp.fc2.weight", "layers/fc2_kernel", LINEAR),
    Rule(_LAYER + "mlp.fc2.bias", "layers/fc2_bias"),
    Rule("post_layernorm.weight", "post_norm_scale"),
    Rule("post_layernorm.bias", "post_norm_bias"),
]
_HEAD_RULES = [
    Rule("head.probe", "head/probe", IDENTITY),
    Rule("head.attention.in_proj_weight", "head/in_kernel", LINEAR),
    Rule("head.attention.in_proj_bias", "head/in_bias"),
    Rule("head.attention.out_proj.weight", "head/out_kernel", LINEAR),
    Rule("head.attention.out_proj.bias", "head/out_bias"),
    Rule("head.layernorm.weight", "head/ln_scale"),
    Rule("head.layernorm.bias", "head/ln_bias"),
    Rule("head.mlp.fc1.weight", "head/fc1_kernel", LINEAR),
    Rule("head.mlp.fc1.bias", "head/fc1_bias"),
    Rule("head.mlp.fc2.weight", "head/fc2_kernel", LINEAR),
    Rule("head.mlp.fc2.bias", "head/fc2_bias"),
]


def rules(config: SiglipConfig) -> list[Rule]:
    """Names below the file-level prefix (the registry's `hf_prefixes`: the hub's files name
    every key "vision_model.*", transformers 5 saves SiglipVisionModel without it)."""
    return _ENCODER_RULES + (_HEAD_RULES if config.use_head else [])


def ignored_hf_keys(config: SiglipConfig) -> list[str]:
    return []


def skipped_hf_prefixes(hf: dict[str, Any]) -> tuple[str, ...]:
    """A full SiglipModel (the hub's google/siglip-*) also holds its text tower and the
    contrastive scale and bias: none of them is the vision tower."""
    return ("text_model.", "logit_scale", "logit_bias") if "vision_config" in hf else ()


# transformers' SiglipVisionConfig defaults: what a config.json saved with only the keys that
# differ from them (the published TinyLLaVA checkpoints' vision_config) leaves out.
HF_DEFAULTS = dict(
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    num_channels=3,
    image_size=224,
    patch_size=16,
    hidden_act="gelu_pytorch_tanh",
    layer_norm_eps=1e-6,
    vision_use_head=True,
)


def config_from_hf(hf: dict[str, Any], **overrides) -> tuple[SiglipConfig, dict[str, Any]]:
    if "vision_config" in hf:  # a full SiglipModel config: take its vision part
        hf = hf["vision_config"]
    hf = {**HF_DEFAULTS, **hf}
    if hf["hidden_act"] != "gelu_pytorch_tanh":
        raise CheckpointError(f"config.json: hidden_act {hf['hidden_act']!r} is not supported (gelu_pytorch_tanh)")
    try:
        config = SiglipConfig(
            hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=hf["num_attention_heads"],
            image_size=hf["image_size"],
            patch_size=hf["patch_size"],
            num_channels=hf["num_channels"],
            layer_norm_eps=float(hf["layer_norm_eps"]),
            use_head=bool(hf["vision_use_head"]),
            **overrides,
        )
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"config.json: {e}") from None
    return config, {}


def config_to_hf(config: SiglipConfig, dtype: str, passthrough: dict[str, Any]) -> dict[str, Any]:
    return {
        "architectures": ["SiglipVisionModel"],
        "model_type": "siglip_vision_model",
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_channels": config.num_channels,
        "image_size": config.image_size,
        "patch_size": config.patch_size,
        "hidden_act": "gelu_pytorch_tanh",
        "layer_norm_eps": config.layer_norm_eps,
        "attention_dropout": 0.0,
        "vision_use_head": config.use_head,
        "dtype": dtype,
        **passthrough,
    }
