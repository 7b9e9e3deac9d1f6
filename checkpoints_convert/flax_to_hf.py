"""Our orbax checkpoint directory -> HF directory (config.json + model.safetensors).

    python -m checkpoints_convert.flax_to_hf --checkpoint DIR --out HF_DIR [--model-type qwen2|siglip|tinyllava] \
        [--dtype float32|bfloat16] [--component llm|vision]

The model type is read from DIR/config.json; `--model-type`, when given, must agree with it.

qwen2 output loads in `transformers.Qwen2ForCausalLM`, siglip in `SiglipVisionModel`,
tinyllava is the original combined layout; `--component llm|vision` exports only the
language model (with its tokenizer) or the vision tower (with its preprocessor_config.json) of
a tinyllava checkpoint as a plain HF directory that transformers' Auto classes load. A
checkpoint with LoRA adapters: `--merge-lora` exports the merged model in any of these
layouts; `--adapter DIR` writes the adapters as a PEFT adapter (checkpoints_convert/adapters.py).
Parameters are read one at a time (an orbax partial load) and their tensors converted and
written before the next is read: peak memory is about twice the largest parameter.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

from checkpoints_convert.adapters import MergedParams, write_peft_adapter
from checkpoints_convert.families import get_family
from checkpoints_convert.mapping import export_params
from checkpoints_convert.original_layout import (
    GENERATION_CONFIG,
    complete_combined_export,
    write_tokenizer,
    write_vision_extras,
)
from checkpoints_convert.reading import read_checkpoint
from checkpoints_convert.safetensors_io import SINGLE_FILE, write_safetensors
from jax_tinyr1 import platform
from jax_tinyr1.cli import CheckpointError, exits_on_bad_input
from jax_tinyr1.data.tokenizer import checkpoint_tokenizer
from jax_tinyr1.model.config_io import load_model_config
from jax_tinyr1.model.layers import DTYPES
from jax_tinyr1.model.lora import has_adapters
from jax_tinyr1.model.registry import MODEL_TYPES, type_of

NP_DTYPES = {name: np.dtype(jax_type) for name, jax_type in DTYPES.items()}


def write_hf_dir(out: Path, rules, params, hf_config: dict, dtype: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_safetensors(out / SINGLE_FILE, export_params(params, rules, NP_DTYPES[dtype], params.shapes))
    (out / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")


def convert(
    model_type: str | None,
    checkpoint: Path,
    out: Path,
    *,
    dtype: str | None = None,
    component: str | None = None,
    tokenizer: Path | None = None,
    merge_lora: bool = False,
) -> None:
    """`tokenizer` (default CHECKPOINT/tokenizer when it exists) goes beside a combined
    tinyllava export, so that the original code loads it as it is. A checkpoint with LoRA
    adapters exports with `merge_lora` (the adapters folded into their kernels) or not at
    all (the adapters alone: `write_peft_adapter`)."""
    checkpoint, out = Path(checkpoint), Path(out)
    if tokenizer is not None and not Path(tokenizer).is_dir():
        raise FileNotFoundError(f"--tokenizer {tokenizer}: not a directory")
    source = type_of(load_model_config(checkpoint)[0])
    if model_type is not None and model_type != source.name:
        raise CheckpointError(f"{checkpoint}: holds a {source.name!r} model, not --model-type {model_type!r}")
    if component is not None and component not in source.components:
        raise CheckpointError(
            f"--component {component!r}: a {source.name} checkpoint has {sorted(source.components) or 'none'}"
        )
    model_type, attribute = source.components[component] if component else (source.name, None)
    prefix = f"{attribute}/" if attribute else ""
    full_config, extra, params = read_checkpoint(checkpoint, source.name, prefix)
    if merge_lora and not has_adapters(full_config):
        raise CheckpointError(f"--merge-lora: {checkpoint} holds no LoRA adapters")
    if has_adapters(full_config) and component != "vision":
        if not merge_lora:
            raise CheckpointError(
                f"{checkpoint}: holds LoRA adapters; --merge-lora writes the merged model, --adapter DIR the adapters "
                "as a PEFT adapter"
            )
        params = MergedParams(params, full_config)
    dtype = dtype or extra.get("hf_dtype", "float32")
    passthrough = extra.get("hf_passthrough", {})
    config = full_config
    if component is not None:
        config = getattr(full_config, attribute)
        passthrough = passthrough.get("text_passthrough", {}) if component == "llm" else {}
    family = get_family(model_type)
    rules = family.rules_with_prefix(config, family.entry.hf_prefixes[0])
    hf_config = family.config_to_hf(config, dtype, passthrough)
    if tokenizer is None and checkpoint_tokenizer(checkpoint).is_dir():
        tokenizer = checkpoint_tokenizer(checkpoint)
    if model_type == "tinyllava":
        hf_config.update(complete_combined_export(out, full_config, dtype, passthrough, tokenizer))
    write_hf_dir(out, rules, params, hf_config, dtype)
    # A language model's directory loads its tokenizer from itself (AutoTokenizer).
    if model_type == "qwen2" and (tokenizer is None or not write_tokenizer(Path(tokenizer), out)):
        where = checkpoint_tokenizer(checkpoint)
        print(f"warning: {out} has no tokenizer (none in {where}; --tokenizer DIR adds one)", file=sys.stderr)
    if model_type in ("tinyllava", "qwen2") and (checkpoint / GENERATION_CONFIG).is_file():
        shutil.copy2(checkpoint / GENERATION_CONFIG, out / GENERATION_CONFIG)  # as imported
    if model_type == "siglip":  # the image processor the original (and HF pipelines) build from the directory
        write_vision_extras(out, config.image_size)


@exits_on_bad_input
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-type", default=None, help="a check: must be the type DIR/config.json names")
    parser.add_argument("--checkpoint", required=True, type=Path)
    parser.add_argument("--out", type=Path, default=None, help="the HF directory (needed but with --adapter alone)")
    parser.add_argument(
        "--merge-lora",
        action="store_true",
        help="a LoRA checkpoint: fold every adapter into its kernel (W + A B alpha/rank) in the layout exported",
    )
    parser.add_argument(
        "--adapter",
        type=Path,
        default=None,
        metavar="DIR",
        help="a LoRA checkpoint: write its language model's adapters as a PEFT adapter in DIR (and a TinyLLaVA's "
        "connector, merged, in DIR/connector.safetensors)",
    )
    parser.add_argument(
        "--dtype",
        choices=sorted(NP_DTYPES),
        default=None,
        help="tensor dtype in the file (default: the dtype the checkpoint was imported from)",
    )
    parser.add_argument(
        "--component",
        choices=sorted({c for e in MODEL_TYPES.values() for c in e.components}),
        default=None,
        help="tinyllava only: export just the language model or the vision tower",
    )
    parser.add_argument(
        "--tokenizer",
        type=Path,
        default=None,
        help="the tokenizer written with the export: beside a tinyllava one, into a language model's directory "
        "(default: CHECKPOINT/tokenizer)",
    )
    args = parser.parse_args(argv)
    platform.start_backend()
    if args.out is None and args.adapter is None:
        parser.error("--out is required (or --adapter DIR alone)")
    if args.adapter is not None:
        dtype = args.dtype or load_model_config(args.checkpoint)[1].get("hf_dtype", "float32")
        write_peft_adapter(args.checkpoint, args.adapter, NP_DTYPES[dtype])
        print(f"wrote {args.adapter} (PEFT LoRA adapter)")
    if args.out is not None:
        convert(
            args.model_type,
            args.checkpoint,
            args.out,
            dtype=args.dtype,
            component=args.component,
            tokenizer=args.tokenizer,
            merge_lora=args.merge_lora,
        )
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
