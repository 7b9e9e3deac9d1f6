"""HF directory (config.json + safetensors) -> our orbax checkpoint directory.

    python -m checkpoints_convert.hf_to_flax --hf-dir HF_DIR --out OUT_DIR [--model-type qwen2|siglip|tinyllava]
    python -m checkpoints_convert.hf_to_flax --adapter PEFT_DIR --base OUR_CKPT --out OUT_DIR

The model type is read from HF_DIR/config.json (`model_type`); `--model-type`, when given,
must agree with it. `--adapter`: a PEFT LoRA adapter (and the connector file our export
writes beside it) onto one of our checkpoints, as a checkpoint with adapters
(checkpoints_convert/adapters.py).

Needs no torch. The file is checked whole first (names, shapes); then each parameter of our
tree is assembled from its HF tensors (a stacked parameter from its layers' tensors) and
written (an orbax partial save) before the next one is made: peak memory is about twice the
largest parameter, whatever the size of the model.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from flax import nnx

from checkpoints_convert.adapters import import_peft_adapter
from checkpoints_convert.families import get_family
from checkpoints_convert.hub import resolve_hf_dir
from checkpoints_convert.mapping import flatten, import_leaves
from checkpoints_convert.original_layout import GENERATION_CONFIG, write_tokenizer
from checkpoints_convert.safetensors_io import SafetensorsReader
from jax_tinyr1 import platform
from jax_tinyr1.cli import CheckpointError, exits_on_bad_input
from jax_tinyr1.data.template import EOS_TOKEN, eos_id
from jax_tinyr1.data.tokenizer import checkpoint_tokenizer, load_tokenizer
from jax_tinyr1.model.checkpoint import abstract_model, save_params_leafwise
from jax_tinyr1.model.config_io import save_model_config
from jax_tinyr1.model.layers import STORAGE_DTYPES
from jax_tinyr1.model.registry import type_from_hf, type_of


def convert(
    model_type: str | None,
    hf_dir: Path | str,
    out: Path,
    *,
    overwrite: bool = False,
    param_dtype: str | None = None,
    **config_overrides,
):
    """Returns our config. `hf_dir` is a directory or a hub id (`owner/name[@revision]`).
    `model_type` None: the one config.json names; else a check. `param_dtype` None: the
    dtype of the file's tensors (float32 or bfloat16), also the stored compute dtype, so an
    import loses nothing and inference holds no wider copy. Raises CheckpointError naming the
    key on any tensor mismatch."""
    hf_dir, out = resolve_hf_dir(hf_dir), Path(out)
    config_path = hf_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path}: not found")
    try:
        hf_config = json.loads(config_path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{config_path}: not valid JSON ({e})") from None
    found = type_from_hf(hf_config, config_path).name
    if model_type is not None and model_type != found:
        raise CheckpointError(f"{config_path}: holds a {found!r} model, not --model-type {model_type!r}")
    family = get_family(found)
    reader = SafetensorsReader(hf_dir)
    # The dtype most tensors have: what an export writes by default, and what is stored.
    counts = Counter(np.dtype(t.dtype).name for t in reader.tensors.values())
    hf_dtype = counts.most_common(1)[0][0]
    hf_dtype = hf_dtype if hf_dtype in STORAGE_DTYPES else "float32"
    dtype = param_dtype or hf_dtype
    config, passthrough = family.config_from_hf(hf_config, param_dtype=dtype, dtype=dtype, **config_overrides)

    abstract = flatten(nnx.to_pure_dict(nnx.state(abstract_model(config), nnx.Param)))
    prefix = family.detect_prefix(config, reader, hf_dir)
    skipped = [k for k in reader if k.startswith(family.skipped_hf_prefixes(hf_config))]
    leaves = import_leaves(  # checks the whole file now; makes the leaves as they are saved
        reader,
        family.rules_with_prefix(config, prefix),
        abstract,
        ignored_hf_keys=[prefix + k for k in family.ignored_hf_keys(config)] + skipped,
    )
    if skipped:
        print(f"skipped {len(skipped)} tensors not of this model ({', '.join(family.skipped_hf_prefixes(hf_config))})")

    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out}: exists and is not empty (pass --overwrite)")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    save_params_leafwise(out, leaves)
    save_model_config(out, config, hf_dtype=hf_dtype, hf_passthrough=passthrough)
    keep_tokenizer_and_generation_config(found, hf_dir, out)
    return config


def keep_tokenizer_and_generation_config(model_type: str, hf_dir: Path, out: Path) -> None:
    """The source's tokenizer goes to OUT/tokenizer (every entry point's default) and its
    generation config beside config.json (an export writes it back). A vision tower's
    directory holds its text tower's tokenizer, not ours: none is kept for siglip."""
    if (hf_dir / GENERATION_CONFIG).is_file():
        shutil.copy2(hf_dir / GENERATION_CONFIG, out / GENERATION_CONFIG)
    if model_type == "siglip" or not write_tokenizer(hf_dir, checkpoint_tokenizer(out)):
        return
    tokenizer = load_tokenizer(checkpoint_tokenizer(out))  # it must load, and hold the end token
    print(f"tokenizer: {type(tokenizer).__name__}, {len(tokenizer)} tokens, {EOS_TOKEN} = {eos_id(tokenizer)}")


@exits_on_bad_input
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-type", default=None, help="a check: must be the type HF_DIR/config.json names")
    parser.add_argument(
        "--hf-dir", default=None, help="an HF directory, or a hub id owner/name[@revision] (downloaded to its cache)"
    )
    parser.add_argument("--adapter", type=Path, default=None, metavar="PEFT_DIR", help="a PEFT LoRA adapter directory")
    parser.add_argument("--base", type=Path, default=None, help="with --adapter: our checkpoint it was trained on")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument(
        "--param-dtype",
        default=None,
        choices=STORAGE_DTYPES,
        help="dtype of the stored parameters (default: the file's; a training run casts to its model.param_dtype)",
    )
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    platform.start_backend()
    if args.adapter is not None:
        if args.base is None or args.hf_dir is not None or args.param_dtype is not None:
            parser.error("--adapter takes --base (our checkpoint) and --out, not --hf-dir or --param-dtype")
        config = import_peft_adapter(args.adapter, args.base, args.out, overwrite=args.overwrite)
        print(f"wrote {args.out} ({type_of(config).name} with LoRA adapters of {args.adapter})")
        return 0
    if args.hf_dir is None or args.base is not None:
        parser.error("--hf-dir is required (--base goes with --adapter)")
    config = convert(args.model_type, args.hf_dir, args.out, overwrite=args.overwrite, param_dtype=args.param_dtype)
    print(f"wrote {args.out} ({type_of(config).name}, {type(config).__name__})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
