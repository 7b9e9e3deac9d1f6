"""Qwen2 (HF `Qwen2ForCausalLM`) <-> our `Qwen2ForCausalLM`: the one table, and configs."""

from __future__ import annotations

from typing import Any

from checkpoints_convert.mapping import IDENTITY, LINEAR, Rule
from jax_tinyr1.cli import CheckpointError
from jax_tinyr1.model.qwen2 import Qwen2Config

_LAYER = "model.layers.{i}."

QWEN2_RULES: list[Rule] = [
    Rule("model.embed_tokens.weight", "embed", IDENTITY),
    Rule(_LAYER + "input_layernorm.weight", "layers/input_norm", IDENTITY),
    Rule(_LAYER + "self_attn.q_proj.weight", "layers/q_kernel", LINEAR),
    Rule(_LAYER + "self_attn.q_proj.bias", "layers/q_bias", IDENTITY),
    Rule(_LAYER + "self_attn.k_proj.weight", "layers/k_kernel", LINEAR),
    Rule(_LAYER + "self_attn.k_proj.bias", "layers/k_bias", IDENTITY),
    Rule(_LAYER + "self_attn.v_proj.weight", "layers/v_kernel", LINEAR),
    Rule(_LAYER + "self_attn.v_proj.bias", "layers/v_bias", IDENTITY),
    Rule(_LAYER + "self_attn.o_proj.weight", "layers/o_kernel", LINEAR),
    Rule(_LAYER + "post_attention_layernorm.weight", "layers/post_attention_norm", IDENTITY),
    Rule(_LAYER + "mlp.gate_proj.weight", "layers/gate_kernel", LINEAR),
    Rule(_LAYER + "mlp.up_proj.weight", "layers/up_kernel", LINEAR),
    Rule(_LAYER + "mlp.down_proj.weight", "layers/down_kernel", LINEAR),
    Rule("model.norm.weight", "final_norm", IDENTITY),
]
LM_HEAD_RULE = Rule("lm_head.weight", "lm_head", LINEAR)


# Where each adapted projection of model/lora.py sits in an HF layer (PEFT's target modules).
LORA_MODULES = {
    "q": "self_attn.q_proj",
    "k": "self_attn.k_proj",
    "v": "self_attn.v_proj",
    "o": "self_attn.o_proj",
    "gate": "mlp.gate_proj",
    "up": "mlp.up_proj",
    "down": "mlp.down_proj",
}


def peft_module(target: str) -> str:
    """The name PEFT's `target_modules` gives an adapted projection (q -> q_proj)."""
    return LORA_MODULES[target].split(".")[-1]


def lora_rules(config: Qwen2Config) -> list[Rule]:
    """A PEFT LoRA adapter's tensors (names under PEFT's `base_model.model.`): lora_A.weight
    [r, in] is our A [in, r] transposed, lora_B.weight [out, r] our B [r, out]."""
    out = []
    for target in config.lora_targets:
        module = _LAYER + LORA_MODULES[target]
        out.append(Rule(module + ".lora_A.weight", f"lora/{target}_lora_a", LINEAR))
        out.append(Rule(module + ".lora_B.weight", f"lora/{target}_lora_b", LINEAR))
    return out


def rules(config: Qwen2Config) -> list[Rule]:
    return QWEN2_RULES + ([] if config.tie_word_embeddings else [LM_HEAD_RULE])


def ignored_hf_keys(config: Qwen2Config) -> list[str]:
    """A tied model's file may still carry lm_head.weight; HF ignores it, so do we."""
    return [LM_HEAD_RULE.hf] if config.tie_word_embeddings else []


# HF config.json fields carried through unchanged (token ids and the like), so that an
# export restores what an import read.
PASSTHROUGH_HF_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id")


# transformers' Qwen2Config defaults: what a config.json saved with only the keys that differ
# from them (the published TinyLLaVA checkpoints' text_config) leaves out.
HF_DEFAULTS = dict(
    vocab_size=151936,
    hidden_size=4096,
    intermediate_size=22016,
    num_hidden_layers=32,
    num_attention_heads=32,
    hidden_act="silu",
    max_position_embeddings=32768,
    rms_norm_eps=1e-6,
    rope_theta=10000.0,
    tie_word_embeddings=False,
    use_sliding_window=False,
)


def config_from_hf(hf: dict[str, Any], **overrides) -> tuple[Qwen2Config, dict[str, Any]]:
    """(our config, pass-through HF fields) from an HF Qwen2 config.json dict."""
    given = hf
    hf = {**HF_DEFAULTS, **hf}
    if hf["use_sliding_window"]:
        raise CheckpointError("config.json: use_sliding_window=true is not supported")
    if hf["hidden_act"] != "silu":
        raise CheckpointError(f"config.json: hidden_act {hf['hidden_act']!r} is not supported (silu only)")
    rope = hf.get("rope_parameters") or {}
    if rope.get("rope_type", "default") != "default" or hf.get("rope_scaling"):
        raise CheckpointError("config.json: only the default RoPE (no scaling) is supported")
    try:
        heads = hf["num_attention_heads"]
        config = Qwen2Config(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=hf.get("num_key_value_heads") or heads,
            head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
            rope_theta=float(rope.get("rope_theta", hf["rope_theta"])),
            rms_norm_eps=float(hf["rms_norm_eps"]),
            tie_word_embeddings=bool(hf["tie_word_embeddings"]),
            max_position_embeddings=hf["max_position_embeddings"],
            **overrides,
        )
    except (TypeError, ValueError, ZeroDivisionError) as e:
        raise CheckpointError(f"config.json: {e}") from None
    passthrough = {k: given[k] for k in PASSTHROUGH_HF_FIELDS if given.get(k) is not None}
    return config, passthrough


def config_to_hf(config: Qwen2Config, dtype: str, passthrough: dict[str, Any]) -> dict[str, Any]:
    return {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": config.rms_norm_eps,
        "rope_theta": config.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "tie_word_embeddings": config.tie_word_embeddings,
        "max_position_embeddings": config.max_position_embeddings,
        "use_sliding_window": False,
        "sliding_window": None,
        "attention_dropout": 0.0,
        "dtype": dtype,
        **passthrough,
    }
