"""What the original TinyLLaVA-Video code needs beside a combined export to load it as it is.

The original builds its parts by name: `TinyLlavaConfig` reads the text config from
`llm_model_name_or_path` and the vision config from `vision_model_name_or_path`
(`AutoConfig.from_pretrained`), the SigLIP image processor from the vision path
(`preprocessor_config.json`), and the tokenizer from `tokenizer_name_or_path`; its factories
pick the classes by the substrings "qwen2" and "siglip" of those names. Without the fields it
silently falls back to a Llama text config. An export of a checkpoint imported from the hub
keeps the imported names; any other gets sibling directories written inside the export
(`qwen2-llm/`, `siglip-vision/`, `tokenizer/`), named by absolute path.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

from checkpoints_convert import qwen2, siglip
from checkpoints_convert.hub import hub_id
from jax_tinyr1.data.preprocess import MEAN, STD
from jax_tinyr1.data.tokenizer import CHECKPOINT_TOKENIZER
from jax_tinyr1.model.tinyllava import TinyLlavaConfig

ORIGINAL_RESAMPLER_HEADS = (8, 64)  # PerceiverAttention(dim_head=64, heads=8) in the original
NAME_FIELDS = ("llm_model_name_or_path", "vision_model_name_or_path", "tokenizer_name_or_path")
LLM_DIR, VISION_DIR = "qwen2-llm", "siglip-vision"
GENERATION_CONFIG = "generation_config.json"
# tokenizer_config.json classes that only transformers 5 knows, and what 4.x reads instead
# (the same tokenizer.json, loaded whether or not the caller asks for a fast tokenizer).
_V5_ONLY_TOKENIZER_CLASSES = {"TokenizersBackend": "PreTrainedTokenizerFast"}


def siglip_preprocessor_config(image_size: int) -> dict[str, Any]:
    """`preprocessor_config.json` of SigLIP's image processor, for our preprocessing."""
    return {
        "image_processor_type": "SiglipImageProcessor",
        "processor_class": "SiglipProcessor",
        "do_resize": True,
        "size": {"height": image_size, "width": image_size},
        "resample": 3,  # PIL bicubic
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [MEAN] * 3,
        "image_std": [STD] * 3,
    }


def write_vision_extras(directory: Path, image_size: int) -> None:
    (Path(directory) / "preprocessor_config.json").write_text(
        json.dumps(siglip_preprocessor_config(image_size), indent=2) + "\n"
    )


# The files a Hugging Face tokenizer directory may hold (slow Qwen2 files, or tokenizer.json).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)


def write_tokenizer(source: Path, out: Path) -> list[str]:
    """Copy the tokenizer files of `source` (a tokenizer directory, or a model directory that
    holds them) so that transformers 4.x reads them as well as 5.x; returns the files copied."""
    copied = [name for name in TOKENIZER_FILES if (Path(source) / name).is_file()]
    if not copied:
        return copied
    out.mkdir(parents=True, exist_ok=True)
    for name in copied:
        shutil.copy2(Path(source) / name, out / name)
    config_path = out / "tokenizer_config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text())
        config["tokenizer_class"] = _V5_ONLY_TOKENIZER_CLASSES.get(
            config.get("tokenizer_class"), config.get("tokenizer_class")
        )
        config.pop("backend", None)  # a 5.x field; 4.x would pass it to the tokenizer's __init__
        config_path.write_text(json.dumps(config, indent=2) + "\n")
    return copied


def complete_combined_export(
    out: Path, config: TinyLlavaConfig, dtype: str, passthrough: dict[str, Any], tokenizer: Path | None
) -> dict[str, str]:
    """The three name fields for the combined config.json: the imported ones when present,
    else sibling directories written here. Returns them (absolute paths or hub names)."""
    out = Path(out).absolute()
    if (config.connector.heads, config.connector.dim_head) != ORIGINAL_RESAMPLER_HEADS:
        print(
            f"warning: this model's resampler has {config.connector.heads} heads of {config.connector.dim_head}; "
            f"the original code hard-codes {ORIGINAL_RESAMPLER_HEADS[0]} of {ORIGINAL_RESAMPLER_HEADS[1]} and cannot "
            "load this export (transformers and this project can)",
            file=sys.stderr,
        )
    # An imported name is kept when it still names something (a directory here, a hub id);
    # the authors' training paths (/mnt/data/...) are replaced by directories written here.
    names = {k: passthrough[k] for k in NAME_FIELDS if passthrough.get(k) and _loadable(passthrough[k])}
    replaced = sorted(k for k in NAME_FIELDS if passthrough.get(k) and k not in names)
    if "llm_model_name_or_path" not in names:
        llm = out / LLM_DIR
        llm.mkdir(parents=True, exist_ok=True)
        text = qwen2.config_to_hf(config.llm, dtype, passthrough.get("text_passthrough", {}))
        (llm / "config.json").write_text(json.dumps({**text, "torch_dtype": dtype}, indent=2) + "\n")
        names["llm_model_name_or_path"] = str(llm)
    if "vision_model_name_or_path" not in names:
        vision = out / VISION_DIR
        vision.mkdir(parents=True, exist_ok=True)
        hf_vision = siglip.config_to_hf(config.vision, dtype, {})
        (vision / "config.json").write_text(json.dumps({**hf_vision, "torch_dtype": dtype}, indent=2) + "\n")
        write_vision_extras(vision, config.vision.image_size)
        names["vision_model_name_or_path"] = str(vision)
    if "tokenizer_name_or_path" not in names:
        if tokenizer is not None:
            write_tokenizer(Path(tokenizer), out / CHECKPOINT_TOKENIZER)
            names["tokenizer_name_or_path"] = str(out / CHECKPOINT_TOKENIZER)
        else:
            raise FileNotFoundError(
                "the export needs a tokenizer for the original code (tokenizer_name_or_path): pass --tokenizer DIR "
                "or keep one in CHECKPOINT/tokenizer"
            )
    for key in replaced:
        print(f"{key}: {passthrough[key]!r} names nothing here; the export uses {names[key]}", file=sys.stderr)
    return names


def _loadable(name: str) -> bool:
    return Path(name).is_dir() or hub_id(name) is not None
