"""Memory plans of the shipped recipes for the real 3B model, and the effect of each lever.

    python bench/memory_plan.py [--only NAME] [--tiny]

A thin caller of the entry points' `--plan` (jax_tinyr1/train/plan.py): it writes a
config.json-only checkpoint of the 3B TinyLLaVA-Video (no weights), then plans each recipe
in its own process (each sets its own virtual device count) and prints one row per plan:
the per-device peak of every program, step GFLOPs per device and the compile seconds.
Last line: per_device_peak_gib=<paper recipe>.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# name -> (entry point, config, overrides)
PLANS = {
    "paper": ("grpo", "paper_8xa100.yaml", []),
    "paper, float32 compute, no remat": ("grpo", "paper_8xa100.yaml", ["model.dtype=float32", "model.remat=false"]),
    "single_80gb, no levers": (
        "grpo",
        "single_80gb.yaml",
        ["grpo.micro_batches=1", "grpo.reference_dtype=float32"],
    ),
    "single_80gb, + micro-batches 8": ("grpo", "single_80gb.yaml", ["grpo.reference_dtype=float32"]),
    "single_80gb (+ bf16 reference)": ("grpo", "single_80gb.yaml", []),
    "single_80gb, + bf16 AdamW moments": ("grpo", "single_80gb.yaml", ["optimizer.state_dtype=bfloat16"]),
    "four_24gb, no levers": (
        "grpo",
        "four_24gb.yaml",
        [
            "grpo.micro_batches=1",
            "grpo.logprob_chunk=128",
            "grpo.reference_dtype=float32",
            "optimizer.state_dtype=float32",
        ],
    ),
    "four_24gb, + bf16 moments and reference": (
        "grpo",
        "four_24gb.yaml",
        ["grpo.micro_batches=1", "grpo.logprob_chunk=128"],
    ),
    "four_24gb, + micro-batches 2": ("grpo", "four_24gb.yaml", ["grpo.logprob_chunk=128"]),
    "four_24gb (+ log-prob chunk 64)": ("grpo", "four_24gb.yaml", []),
    "coldstart_paper (SFT, 4 devices)": ("sft", "coldstart_paper.yaml", []),
}
TINY = ["model.preset=tinyllava-video-tiny", "data.prompt_tokens=48", "sampling.max_new_tokens=8"]


def plan(stage: str, config: str, overrides: list[str], checkpoint: Path | None) -> dict:
    source = [f"model.checkpoint={checkpoint}"] if checkpoint else ["model.checkpoint=null", *TINY]
    if stage == "sft" and not checkpoint:
        source = [s for s in source if not s.startswith("sampling.")] + ["data.response_tokens=32"]
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            f"jax_tinyr1.train.{stage}",
            "--config",
            str(ROOT / "configs" / config),
            "--plan",
            *source,
            *overrides,
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{config} {overrides}: exit {out.returncode}\n{out.stderr[-3000:]}")
    lines = out.stdout.strip().splitlines()
    programs = {}
    for line in lines[2:-2]:
        name, numbers = line[:46].strip(), line[46:].split()
        programs[name] = {"peak": float(numbers[5]), "compile_s": float(numbers[7])}
    return {
        "header": lines[0],
        "programs": programs,
        "step_gflops": float(lines[-2].split("=")[1].split()[0]),
        "peak": float(lines[-1].split("=")[1]),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=None, help="plan only the recipes whose name contains this")
    parser.add_argument("--tiny", action="store_true", help="the tiny preset (a quick check of this script)")
    args = parser.parse_args(argv)
    names = [n for n in PLANS if args.only is None or args.only in n]
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if not args.tiny:
            from jax_tinyr1.model import get_preset
            from jax_tinyr1.model.config_io import save_model_config

            checkpoint = Path(tmp)
            save_model_config(checkpoint, get_preset("tinyllava-video-3b"))
        results = {name: plan(*PLANS[name], checkpoint) for name in names}
    print("| plan | encode | rollout | reference | update | peak GiB/device | step GFLOP/device | compile s |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        p = r["programs"]

        def peak(prefix, programs=p):
            hits = [v["peak"] for k, v in programs.items() if k.startswith(prefix)]
            return f"{hits[0]:.2f}" if hits else "-"

        compile_s = sum(v["compile_s"] for v in p.values())
        print(
            f"| {name} | {peak('vision')} | {peak('rollout')} | {peak('reference')} | {peak('update')} "
            f"| **{r['peak']:.2f}** | {r['step_gflops']:.0f} | {compile_s:.0f} |"
        )
    first = results[names[0]]["peak"]
    print(f"per_device_peak_gib={first:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
