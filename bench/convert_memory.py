"""Peak resident memory and wall time of checkpoint conversion, both ways, and of loading.

    python bench/convert_memory.py [--preset qwen2.5-0.5b] [--shards 2]

Writes a random checkpoint of the preset's shape as HF float32 safetensors (sharded, with an
index, as the hub ships them), then runs each step in a fresh process and reads its peak
resident set (VmHWM, which counts mapped file pages too):
    hf_to_flax       HF directory -> our checkpoint
    flax_to_hf       our checkpoint -> HF directory (bit-exact round trip checked)
    load_pretrained  our checkpoint -> a model in memory
Each peak is also given as a multiple of the checkpoint's size on disk. A process that only
imports the converter is measured too (the interpreter, JAX and numpy themselves).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
GB = 1e9

STEPS = {
    "baseline (imports only)": "import checkpoints_convert.hf_to_flax, checkpoints_convert.flax_to_hf",
    "hf_to_flax": "from checkpoints_convert import hf_to_flax; hf_to_flax.main(['--model-type', 'qwen2', "
    "'--hf-dir', '{hf}', '--out', '{flax}'])",
    "flax_to_hf": "from checkpoints_convert import flax_to_hf; flax_to_hf.main(['--model-type', 'qwen2', "
    "'--checkpoint', '{flax}', '--out', '{back}'])",
    "load_pretrained": "from jax_tinyr1.model import load_pretrained; load_pretrained('{flax}')",
}
# VmHWM: this process's own peak resident set (ru_maxrss would also count the parent's
# memory at fork time, which Linux carries across exec).
MEASURE = """
import time
start = time.perf_counter()
{code}
seconds = time.perf_counter() - start
peak_kib = next(int(line.split()[1]) for line in open('/proc/self/status') if line.startswith('VmHWM:'))
print('RESULT', seconds, peak_kib * 1024)
"""


def write_random_hf(preset: str, out: Path, shards: int) -> int:
    """A random float32 HF checkpoint of the preset's shape; returns its tensor bytes."""
    from flax import nnx

    from checkpoints_convert.families import get_family
    from checkpoints_convert.mapping import export_params, flatten
    from checkpoints_convert.safetensors_io import INDEX_FILE, write_safetensors
    from jax_tinyr1.model import abstract_model, get_preset

    config = get_preset(preset)
    family = get_family("qwen2")
    shapes = {
        path: tuple(v.shape)
        for path, v in flatten(nnx.to_pure_dict(nnx.state(abstract_model(config), nnx.Param))).items()
    }
    rng = np.random.default_rng(0)

    class Random(dict):
        def __missing__(self, path):
            self.clear()  # one parameter at a time
            self[path] = (rng.standard_normal(shapes[path], np.float32) * 0.02).astype(np.float32)
            return self[path]

    tensors = export_params(Random(), family.rules_with_prefix(config, ""), np.float32, shapes)
    out.mkdir(parents=True)
    per_shard = -(-len(tensors) // shards)
    weight_map, total = {}, 0
    for s in range(shards):
        name = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = tensors[s * per_shard : (s + 1) * per_shard]
        write_safetensors(out / name, part)
        for t in part:
            weight_map[t.key] = name
            total += int(np.prod(t.shape)) * 4
    (out / INDEX_FILE).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    (out / "config.json").write_text(json.dumps(family.config_to_hf(config, "float32", {})))
    return total


def measure(code: str) -> tuple[float, float]:
    out = subprocess.run(
        [sys.executable, "-c", MEASURE.format(code=code)], capture_output=True, text=True, cwd=ROOT, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    _, seconds, rss = next(line for line in out.stdout.splitlines() if line.startswith("RESULT")).split()
    return float(seconds), float(rss)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="qwen2.5-0.5b")
    parser.add_argument("--shards", type=int, default=2)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=ROOT) as tmp:
        tmp = Path(tmp)
        paths = {"hf": tmp / "hf", "flax": tmp / "flax", "back": tmp / "back"}
        size = write_random_hf(args.preset, paths["hf"], args.shards)
        print(f"{args.preset}: {size / GB:.2f} GB of float32 safetensors in {args.shards} shards")
        print(f"{'step':<26}{'seconds':>9}{'peak RSS GB':>13}{'x checkpoint':>14}")
        peaks = {}
        for name, code in STEPS.items():
            seconds, rss = measure(code.format(**{k: str(v) for k, v in paths.items()}))
            peaks[name] = rss
            print(f"{name:<26}{seconds:>9.1f}{rss / GB:>13.2f}{rss / size:>14.2f}", flush=True)
        from checkpoints_convert.safetensors_io import SafetensorsReader

        a, b = SafetensorsReader(paths["hf"]), SafetensorsReader(paths["back"])
        exact = sorted(a.keys()) == sorted(b.keys()) and all(np.array_equal(a.get(k), b.get(k)) for k in a)
        print(f"round trip bit-exact: {exact}")
    worst = max(peaks["hf_to_flax"], peaks["flax_to_hf"])
    print(f"convert_peak_ratio={worst / size:.3f}")
    return 0 if exact else 1


if __name__ == "__main__":
    sys.exit(main())
