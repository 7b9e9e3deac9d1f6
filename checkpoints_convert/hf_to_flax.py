"""HF directory (config.json + safetensors) -> our orbax checkpoint directory.

    python -m checkpoints_convert.hf_to_flax --hf-dir HF_DIR --out OUT_DIR [--model-type qwen2|siglip|tinyllava]

The model type is read from HF_DIR/config.json (`model_type`); `--model-type`, when given,
must agree with it.

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

from checkpoints_convert.families import get_family
from checkpoints_convert.mapping import flatten, import_leaves
from checkpoints_convert.safetensors_io import SafetensorsReader
from jax_tinyr1.cli import exits_on_bad_input
from jax_tinyr1.model.checkpoint import abstract_model, save_params_leafwise
from jax_tinyr1.model.config_io import save_model_config
from jax_tinyr1.model.layers import DTYPES, STORAGE_DTYPES
from jax_tinyr1.model.registry import type_from_hf, type_of


def convert(model_type: str | None, hf_dir: Path, out: Path, *, overwrite: bool = False, **config_overrides):
    """Returns our config. `model_type` None: the one config.json names; else a check.
    Raises CheckpointError naming the key on any tensor mismatch."""
    hf_dir, out = Path(hf_dir), Path(out)
    config_path = hf_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path}: not found")
    hf_config = json.loads(config_path.read_text())
    found = type_from_hf(hf_config, config_path).name
    if model_type is not None and model_type != found:
        raise ValueError(f"{config_path}: holds a {found!r} model, not --model-type {model_type!r}")
    family = get_family(found)
    config, passthrough = family.config_from_hf(hf_config, **config_overrides)

    abstract = flatten(nnx.to_pure_dict(nnx.state(abstract_model(config), nnx.Param)))
    reader = SafetensorsReader(hf_dir)
    prefix = family.detect_prefix(config, reader, hf_dir)
    leaves = import_leaves(  # checks the whole file now; makes the leaves as they are saved
        reader,
        family.rules_with_prefix(config, prefix),
        abstract,
        ignored_hf_keys=[prefix + k for k in family.ignored_hf_keys(config)],
    )
    # The dtype most tensors had, so that an export defaults to the file's own precision.
    counts = Counter(np.dtype(t.dtype).name for t in reader.tensors.values())
    hf_dtype = counts.most_common(1)[0][0]
    hf_dtype = hf_dtype if hf_dtype in DTYPES else "float32"

    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out}: exists and is not empty (pass --overwrite)")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    save_params_leafwise(out, leaves)
    save_model_config(out, config, hf_dtype=hf_dtype, hf_passthrough=passthrough)
    return config


@exits_on_bad_input
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-type", default=None, help="a check: must be the type HF_DIR/config.json names")
    parser.add_argument("--hf-dir", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument(
        "--param-dtype",
        default="float32",
        choices=STORAGE_DTYPES,
        help="dtype of the stored (master) parameters",
    )
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    config = convert(args.model_type, args.hf_dir, args.out, overwrite=args.overwrite, param_dtype=args.param_dtype)
    print(f"wrote {args.out} ({type_of(config).name}, {type(config).__name__})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
