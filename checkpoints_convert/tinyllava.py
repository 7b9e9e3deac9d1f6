"""TinyLLaVA-Video's combined checkpoint (the original PyTorch layout) <-> ours."""

from __future__ import annotations

from typing import Any

from checkpoints_convert import qwen2, siglip
from checkpoints_convert.mapping import LINEAR, Rule, prefixed
from jax_tinyr1.cli import CheckpointError
from jax_tinyr1.data.template import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from jax_tinyr1.model.connector import ConnectorConfig
from jax_tinyr1.model.tinyllava import TinyLlavaConfig

LLM_PREFIX = ("language_model.", "llm/")
VISION_PREFIX = ("vision_tower._vision_tower.vision_model.", "vision/")
CONNECTOR_PREFIX = ("connector._connector.", "connector/")

_L = "layers.{i}."
CONNECTOR_RULES = [
    Rule("latents", "latents"),
    Rule("linear.weight", "linear_kernel", LINEAR),
    Rule("linear.bias", "linear_bias"),
    Rule(_L + "0.norm_media.weight", "layers/norm_media_scale"),
    Rule(_L + "0.norm_media.bias", "layers/norm_media_bias"),
    Rule(_L + "0.norm_latents.weight", "layers/norm_latents_scale"),
    Rule(_L + "0.norm_latents.bias", "layers/norm_latents_bias"),
    Rule(_L + "0.to_q.weight", "layers/to_q", LINEAR),
    # One [2 * inner, D] matrix: its first `inner` outputs are the keys, the rest the values.
    Rule(_L + "0.to_kv.weight", "layers/to_kv", LINEAR),
    Rule(_L + "0.to_out.weight", "layers/to_out", LINEAR),
    Rule(_L + "1.0.weight", "layers/ff_norm_scale"),
    Rule(_L + "1.0.bias", "layers/ff_norm_bias"),
    Rule(_L + "1.1.weight", "layers/ff_in", LINEAR),
    Rule(_L + "1.3.weight", "layers/ff_out", LINEAR),
    Rule("norm.weight", "norm_scale"),
    Rule("norm.bias", "norm_bias"),
]


def rules(config: TinyLlavaConfig) -> list[Rule]:
    return (
        prefixed(qwen2.rules(config.llm), *LLM_PREFIX)
        + prefixed(siglip.rules(config.vision), *VISION_PREFIX)
        + prefixed(CONNECTOR_RULES, *CONNECTOR_PREFIX)
    )


def ignored_hf_keys(config: TinyLlavaConfig) -> list[str]:
    return [LLM_PREFIX[0] + k for k in qwen2.ignored_hf_keys(config.llm)]


# Fields that config_to_hf regenerates; everything else in an imported config.json is kept.
_GENERATED = (
    "architectures",
    "model_type",
    "connector_type",
    "group",
    "num_queries",
    "num_resampler_layers",
    "hidden_size",
    "image_token_index",
    "ignore_index",
    "text_config",
    "vision_config",
    "vision_feature_layer",
    "vision_feature_select_strategy",
    "vision_hidden_size",
    "num_frames",
    "dtype",
    "resampler_heads",
    "resampler_dim_head",
)


def config_from_hf(hf: dict[str, Any], **overrides) -> tuple[TinyLlavaConfig, dict[str, Any]]:
    if hf.get("connector_type", "groupresampler") != "groupresampler":
        raise CheckpointError(f"config.json: connector_type {hf['connector_type']!r} is not supported (groupresampler)")
    strategy = hf.get("vision_feature_select_strategy", "patch")
    if strategy not in ("patch", "cls_patch"):
        raise CheckpointError(f"config.json: vision_feature_select_strategy {strategy!r} is not supported")
    for key in ("text_config", "vision_config"):
        if not isinstance(hf.get(key), dict):
            raise CheckpointError(f"config.json: missing key {key!r} (a dict)")
    llm, text_passthrough = qwen2.config_from_hf(hf["text_config"], **overrides)
    vision, _ = siglip.config_from_hf(
        hf["vision_config"],
        select_layer=int(hf.get("vision_feature_layer", -2)),
        drop_first_patch=strategy == "patch",
        **overrides,
    )
    try:
        connector = ConnectorConfig(
            vision_hidden_size=hf.get("vision_hidden_size", vision.hidden_size),
            hidden_size=hf.get("hidden_size", llm.hidden_size),
            num_queries=hf["num_queries"],
            groups=hf["group"],
            num_layers=hf["num_resampler_layers"],
            # The original hard-codes 8 heads of 64; these two keys are ours, for other sizes.
            heads=hf.get("resampler_heads", 8),
            dim_head=hf.get("resampler_dim_head", 64),
            **overrides,
        )
    except KeyError as e:
        raise CheckpointError(f"config.json: missing key {e.args[0]!r}") from None
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"config.json: {e}") from None
    try:
        config = TinyLlavaConfig(
            llm=llm,
            vision=vision,
            connector=connector,
            num_frames=hf.get("num_frames", 16),  # the published configs have none: the paper's 16
            image_token_index=hf.get("image_token_index", IMAGE_TOKEN_INDEX),
        )
    except ValueError as e:
        raise CheckpointError(f"config.json: {e}") from None
    # `_name_or_path` is where the file was last loaded from (transformers sets it at load).
    passthrough = {k: v for k, v in hf.items() if k not in (*_GENERATED, "_name_or_path")}
    passthrough["text_passthrough"] = text_passthrough
    return config, passthrough


def config_to_hf(config: TinyLlavaConfig, dtype: str, passthrough: dict[str, Any]) -> dict[str, Any]:
    rest = {k: v for k, v in passthrough.items() if k != "text_passthrough"}
    return {
        "tokenizer_model_max_length": 3072,
        "tokenizer_padding_side": "right",
        **rest,
        "architectures": ["TinyLlavaForConditionalGeneration"],
        "model_type": "tinyllava",
        "connector_type": "groupresampler",
        "group": config.connector.groups,
        "num_queries": config.connector.num_queries,
        "num_resampler_layers": config.connector.num_layers,
        "hidden_size": config.llm.hidden_size,
        "image_token_index": config.image_token_index,
        "ignore_index": IGNORE_INDEX,
        "text_config": qwen2.config_to_hf(config.llm, dtype, passthrough.get("text_passthrough", {})),
        "vision_config": siglip.config_to_hf(config.vision, dtype, {}),
        "vision_feature_layer": config.vision.select_layer,
        "vision_feature_select_strategy": "patch" if config.vision.drop_first_patch else "cls_patch",
        "vision_hidden_size": config.vision.hidden_size,
        "num_frames": config.num_frames,
        "dtype": dtype,
        **(
            {}
            if (config.connector.heads, config.connector.dim_head) == (8, 64)
            else {"resampler_heads": config.connector.heads, "resampler_dim_head": config.connector.dim_head}
        ),
    }
