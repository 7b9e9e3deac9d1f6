"""Our orbax checkpoint directory -> HF directory (config.json + model.safetensors).

    python -m checkpoints_convert.flax_to_hf --model-type qwen2 --checkpoint DIR --out HF_DIR \
        [--dtype float32|bfloat16]

The output loads with `transformers` (`Qwen2ForCausalLM.from_pretrained`). Tensors are
converted and written one at a time.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax
import ml_dtypes
import numpy as np
from jax.sharding import SingleDeviceSharding

from checkpoints_convert.families import get_family
from checkpoints_convert.mapping import export_params, flatten
from checkpoints_convert.safetensors_io import SINGLE_FILE, write_safetensors
from jax_tinyr1.model.checkpoint import abstract_model, restore_params
from jax_tinyr1.model.config_io import load_model_config

NP_DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16),
             "float16": np.dtype(np.float16)}


def read_checkpoint(checkpoint: Path, model_type: str):
    """(config, extra, flat params on the host CPU) of one of our checkpoints."""
    found_type, config, extra = load_model_config(checkpoint)
    if found_type != model_type:
        raise ValueError(f"{checkpoint}: holds a {found_type!r} model, not --model-type {model_type!r}")
    from flax import nnx

    state = nnx.to_pure_dict(nnx.state(abstract_model(model_type, config), nnx.Param))
    cpu = SingleDeviceSharding(jax.devices("cpu")[0])
    abstract = jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=cpu), state)
    return config, extra, flatten(restore_params(checkpoint, abstract))


def write_hf_dir(out: Path, rules, params: dict, hf_config: dict, dtype: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_safetensors(out / SINGLE_FILE, export_params(params, rules, NP_DTYPES[dtype]))
    (out / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")


def convert(model_type: str, checkpoint: Path, out: Path, *, dtype: str | None = None) -> None:
    family = get_family(model_type)
    config, extra, params = read_checkpoint(Path(checkpoint), model_type)
    dtype = dtype or extra.get("hf_dtype", "float32")
    hf_config = family.config_to_hf(config, dtype, extra.get("hf_passthrough", {}))
    write_hf_dir(Path(out), family.rules(config), params, hf_config, dtype)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-type", required=True)
    parser.add_argument("--checkpoint", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--dtype", choices=sorted(NP_DTYPES), default=None,
                        help="tensor dtype in the file (default: the dtype the checkpoint was imported from)")
    args = parser.parse_args(argv)
    convert(args.model_type, args.checkpoint, args.out, dtype=args.dtype)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
