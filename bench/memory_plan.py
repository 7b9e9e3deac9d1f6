"""Memory plans of the shipped recipes for the real 3B model: the CPU plan beside the plan
compiled by XLA:GPU for the card each recipe is meant for, each lever's effect, and each
remat policy's (peak memory against the FLOPs recomputed).

    python bench/memory_plan.py [--only NAME] [--tiny] [--no-gpu]

A thin caller of the entry points' `--plan` (jax_tinyr1/train/plan.py): it writes a
config.json-only checkpoint of the 3B TinyLLaVA-Video (no weights), then plans each recipe
in its own process (each sets its own devices): without `--target` (virtual CPU devices,
XLA:CPU's buffer assignment) and with the recipe's `--target` (compile-only GPUs; needs the
`gpu-plan` extra). Prints two markdown tables. Last line: per_device_peak_gib=<first plan,
GPU when planned>.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# name -> (entry point, config, overrides, the card it is meant for)
PLANS = {
    "paper": ("grpo", "paper_8xa100.yaml", [], "a100-40gb"),
    "paper, float32 compute, no remat": (
        "grpo",
        "paper_8xa100.yaml",
        ["model.dtype=float32", "model.remat=false"],
        "a100-40gb",
    ),
    "single_80gb, no levers": (
        "grpo",
        "single_80gb.yaml",
        ["grpo.micro_batches=1", "grpo.reference_dtype=float32"],
        "h100-80gb",
    ),
    "single_80gb, + micro-batches 8": ("grpo", "single_80gb.yaml", ["grpo.reference_dtype=float32"], "h100-80gb"),
    "single_80gb (+ bf16 reference)": ("grpo", "single_80gb.yaml", [], "h100-80gb"),
    "single_80gb, + bf16 AdamW moments": ("grpo", "single_80gb.yaml", ["optimizer.state_dtype=bfloat16"], "h100-80gb"),
    "four_24gb, no levers": (
        "grpo",
        "four_24gb.yaml",
        [
            "grpo.micro_batches=1",
            "grpo.logprob_chunk=128",
            "grpo.reference_dtype=float32",
            "optimizer.state_dtype=float32",
        ],
        "l4-24gb",
    ),
    "four_24gb, + bf16 moments and reference": (
        "grpo",
        "four_24gb.yaml",
        ["grpo.micro_batches=1", "grpo.logprob_chunk=128"],
        "l4-24gb",
    ),
    "four_24gb, + micro-batches 2": ("grpo", "four_24gb.yaml", ["grpo.logprob_chunk=128"], "l4-24gb"),
    "four_24gb (+ log-prob chunk 64)": ("grpo", "four_24gb.yaml", [], "l4-24gb"),
    "coldstart_paper (SFT, 4 devices)": ("sft", "coldstart_paper.yaml", [], "a100-40gb"),
    "single_24gb_lora (LoRA rank 64, connector full)": ("grpo", "single_24gb_lora.yaml", [], "l4-24gb"),
    "single_16gb_lora (LoRA rank 16, 4 prompts)": ("grpo", "single_16gb_lora.yaml", [], "ada-16gb"),
}
# The paper plan under each remat policy, on its card (GPU plans only).
REMAT_POLICIES = (
    "nothing_saveable",
    "save_qkv_proj",
    "save_attention",
    "dots_with_no_batch_dims_saveable",
    "dots_saveable",
)
TINY = ["model.preset=tinyllava-video-tiny", "data.prompt_tokens=48", "sampling.max_new_tokens=8"]
PROGRAMS = ("vision", "rollout", "reference", "update")  # name prefixes of the plan's rows


def parse_plan(stdout: str) -> dict:
    """The numbers of a `--plan` printout."""
    lines = stdout.strip().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("program"))
    programs = {}
    for line in lines[start + 1 :]:
        if line.startswith("step_"):
            break
        name, numbers = line[:46].strip(), line[46:].split()
        programs[name] = {
            "temp": float(numbers[2]),
            "peak": float(numbers[5]),
            "tflops": float(numbers[7]),
            "compile_s": float(numbers[8]),
        }
    values = dict(line.split("=", 1) for line in lines if line.startswith(("step_", "per_device")))
    budget = next((line.split()[1] for line in lines if line.startswith("budget:")), None)
    return {
        "programs": programs,
        "step_tflops": float(values["step_matmul_tflops_per_device"].split()[0]),
        "peak": float(values["per_device_peak_gib"]),
        "budget": None if budget is None else float(budget),
    }


def plan(stage: str, config: str, overrides: list[str], checkpoint: Path | None, target: str | None) -> dict:
    source = [f"model.checkpoint={checkpoint}"] if checkpoint else ["model.checkpoint=null", *TINY]
    if stage == "sft" and not checkpoint:
        source = [s for s in source if not s.startswith("sampling.")] + ["data.response_tokens=32"]
    env = dict(os.environ)
    if target:  # the tables in docs/planning.md: 0.95 for every recipe (four recipes set it as run.memory_fraction)
        env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", ".95")
    command = [sys.executable, "-m", f"jax_tinyr1.train.{stage}", "--config", str(ROOT / "configs" / config)]
    command += ["--plan", *(["--target", target] if target else []), *source, *overrides]
    out = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env)
    if out.returncode not in (0, 3):  # 3: planned, but over the card's budget (reported as such)
        raise RuntimeError(f"{config} {overrides} {target}: exit {out.returncode}\n{out.stderr[-3000:]}")
    return {**parse_plan(out.stdout), "fits": out.returncode == 0}


def _peak(result: dict | None, prefix: str) -> str:
    if result is None:
        return "-"
    hits = [v["peak"] for k, v in result["programs"].items() if k.startswith(prefix)]
    return f"{hits[0]:.2f}" if hits else "-"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=None, help="plan only the recipes whose name contains this")
    parser.add_argument("--tiny", action="store_true", help="the tiny preset (a quick check of this script)")
    parser.add_argument("--no-gpu", action="store_true", help="CPU plans only (no PJRT CUDA plugin installed)")
    args = parser.parse_args(argv)
    names = [n for n in PLANS if args.only is None or args.only in n]
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if not args.tiny:
            from jax_tinyr1.model import get_preset
            from jax_tinyr1.model.config_io import save_model_config

            checkpoint = Path(tmp)
            save_model_config(checkpoint, get_preset("tinyllava-video-3b"))
        cpu, gpu = {}, {}
        for name in names:
            stage, config, overrides, target = PLANS[name]
            cpu[name] = plan(stage, config, overrides, checkpoint, None)
            gpu[name] = None if args.no_gpu else plan(stage, config, overrides, checkpoint, target)
        policies = {}
        if not args.no_gpu and (args.only is None or args.only in "paper"):
            stage, config, overrides, target = PLANS["paper"]
            for policy in REMAT_POLICIES:
                policies[policy] = plan(stage, config, [f"model.remat_policy={policy}"], checkpoint, target)

    print("| plan | card | CPU plan peak | GPU: encode | rollout | reference | update | **peak** | budget | fits |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in names:
        g, card = gpu[name], PLANS[name][3]
        fits = "-" if g is None else ("yes" if g["fits"] else "**no** (exit 3)")
        budget = "-" if g is None or g["budget"] is None else f"{g['budget']:.2f}"
        gpu_peak = "-" if g is None else f"**{g['peak']:.2f}**"
        print(
            f"| {name} | {card} | {cpu[name]['peak']:.2f} | {_peak(g, 'vision')} | {_peak(g, 'rollout')} "
            f"| {_peak(g, 'reference')} | {_peak(g, 'update')} | {gpu_peak} | {budget} | {fits} |"
        )
    if policies:
        print()
        print("| remat policy (paper, a100-40gb) | update temp GiB | **peak** GiB | update TFLOP/device | fits |")
        print("|---|---|---|---|---|")
        for policy, r in policies.items():
            update = next(v for k, v in r["programs"].items() if k.startswith("update"))
            fits = "yes" if r["fits"] else "**no** (exit 3)"
            print(f"| {policy} | {update['temp']:.2f} | **{r['peak']:.2f}** | {update['tflops']:.2f} | {fits} |")
    first = gpu[names[0]] or cpu[names[0]]
    print(f"per_device_peak_gib={first['peak']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
