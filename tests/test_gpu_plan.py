"""`--plan --target`: every program of each shipped recipe compiled by XLA:GPU for the card it
is meant for, on this CPU-only machine (compile-only CUDA devices of the PJRT plugin), at tiny
shapes; the 8-GPU paper plan holds FSDP's collectives; over the card's budget, exit 3 naming
the program."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from jax_tinyr1.model import get_preset
from jax_tinyr1.model.config_io import save_model_config
from jax_tinyr1.platform import GPU_XLA_FLAGS
from jax_tinyr1.train import gpu_target
from jax_tinyr1.train.run import main

ROOT = Path(__file__).resolve().parents[1]
TINY = ["data.prompt_tokens=48"]
GRPO_TINY = [*TINY, "sampling.max_new_tokens=8"]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_config_only")
    save_model_config(path, get_preset("tinyllava-video-tiny"))
    return path


def _plan_lines(text: str) -> dict[str, list[float]]:
    """program name -> its numbers, from the plan's table."""
    lines = text.strip().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("program"))
    rows = {}
    for line in lines[start + 1 :]:
        if line.startswith("step_"):
            break
        rows[line[:46].strip()] = [float(x) for x in line[46:].split()]
    return rows


def test_paper_recipe_compiles_for_8_a100_40gb_with_fsdp_collectives(tiny_checkpoint):
    """The user's command, in its own process: every program of the paper's step compiled by
    XLA:GPU for sm_80 (no GPU here), the update's FSDP all-gathers and reduce-scatters in the
    compiled program, the budget and flags stated, the peak on the last line."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "jax_tinyr1.train.grpo",
            "--config",
            "configs/paper_8xa100.yaml",
            "--plan",
            "--target",
            "a100-40gb",
            f"model.checkpoint={tiny_checkpoint}",
            *GRPO_TINY,
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if k != "XLA_PYTHON_CLIENT_MEM_FRACTION"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    assert "on 8 x NVIDIA A100-SXM4-40GB (XLA:GPU, compile-only; 1 process(es) x 8 GPU(s))" in text
    assert f"xla_flags: {' '.join(GPU_XLA_FLAGS)}" in text.replace("--xla_force_host_platform_device_count=8 ", "")
    # JAX's default preallocation (75 %) of the card's 39.42 GiB, less than the card minus 1 GiB.
    assert "budget: 29.57 GiB per GPU = min(0.75 x 39.42 GiB" in text
    rows = _plan_lines(text)
    assert list(rows) == [
        "vision encode",
        "rollout (G=8, 8 new tokens)",
        "reference log-probs (float32 weights)",
        "update (micro-batches 1, log-prob chunk 128)",
    ]
    assert all(r[7] > 0 for r in rows.values())  # every program's matmul FLOPs
    collectives = re.search(r"^collectives of update .*: (.*)$", text, re.M).group(1)
    assert "all-gather" in collectives and "reduce-scatter" in collectives, collectives
    # The rollout's token loop reads the decoding copy made before it: no weight is gathered
    # inside it (at most activations: 8 rows x 64 wide in bf16), and it stays in its kernel
    # budget of 18 per layer and 30 for sampling (the stacked layout launched 26 per layer,
    # 83 per token here; the 3.6B model's 36 layers: 678 at most).
    loop = re.search(
        r"^token loop of rollout .*: (\d+) kernels, ([\d.]+) GB HBM, (\d+) bytes all-gathered, (\d+) bytes", text, re.M
    )
    kernels, gathered = int(loop.group(1)), int(loop.group(3))
    layers = get_preset("tinyllava-video-tiny").llm.num_layers
    assert kernels <= 18 * layers + 30 and gathered <= 8 * 64 * 2, loop.group(0)
    # ... and a projected time from the programs, with its constants.
    assert "projection constants: NVIDIA A100-SXM4-40GB: bf16 peak 312 TFLOP/s" in text
    step = float(re.search(r"^projected_step_seconds=([\d.]+)", text, re.M).group(1))
    assert step > 0
    last = text.strip().splitlines()[-1]
    assert last.startswith("per_device_peak_gib=") and 0 < float(last.split("=")[1]) < 0.1


@pytest.mark.parametrize(
    ("stage", "config", "target", "card", "devices"),
    [
        ("grpo", "single_80gb.yaml", "h100-80gb", "NVIDIA H100 80GB HBM3", 1),
        ("grpo", "four_24gb.yaml", "l4-24gb", "NVIDIA L4", 4),
        ("grpo", "single_24gb_lora.yaml", "l4-24gb", "NVIDIA L4", 1),
    ],
)
def test_each_recipe_compiles_for_its_card(tiny_checkpoint, capsys, monkeypatch, stage, config, target, card, devices):
    """Through the entry point's main, in this process (JAX is on its CPU platform here);
    coldstart_paper's GPU plan is in test_memory_plan (through the bench)."""
    monkeypatch.delenv("XLA_PYTHON_CLIENT_MEM_FRACTION", raising=False)  # the recipes' run.memory_fraction applies
    shapes = [*TINY, "data.response_tokens=32"] if stage == "sft" else GRPO_TINY
    code = main(
        ["--config", f"configs/{config}", "--plan", "--target", target, f"model.checkpoint={tiny_checkpoint}", *shapes],
        stage=stage,
        description="",
    )
    text = capsys.readouterr().out
    assert code == 0, text
    assert f"on {devices} x {card} (XLA:GPU, compile-only" in text
    assert "budget:" in text and "min(0.95 x" in text
    names = list(_plan_lines(text))
    assert names[0] == "vision encode" and names[-1].startswith("update")
    assert ("rollout" in names[1]) == (stage == "grpo")
    if "lora" in config:  # the reference is the base with the adapters off
        assert "reference log-probs (adapters off)" in names
        assert "; LoRA rank " in text and "connector full" in text


def test_over_the_cards_memory_exits_3_naming_the_program(tiny_checkpoint, tmp_path, capsys):
    """A description file as the target (here a card of 1 MB): the largest program is named."""
    text = (gpu_target.TARGETS_DIR / "a100_sxm_40.txtpb").read_text()
    small = re.sub(r"device_memory_size: \d+", "device_memory_size: 1048576", text)
    card = tmp_path / "small_card.txtpb"
    card.write_text(small)
    args = ["--config", "configs/single_80gb.yaml", "--plan", f"model.checkpoint={tiny_checkpoint}", *GRPO_TINY]
    code = main([*args, "--target", str(card)], stage="grpo", description="")
    captured = capsys.readouterr()
    assert code == 3, captured.out + captured.err
    assert re.search(r"error: update \(micro-batches 8, log-prob chunk 128\) needs \d+\.\d+ GiB", captured.err)
    assert "more than what one NVIDIA A100-SXM4-40GB gives" in captured.err


def test_target_errors_name_what_is_wrong(tiny_checkpoint, capsys, monkeypatch):
    args = ["--config", "configs/paper_8xa100.yaml", "--plan", f"model.checkpoint={tiny_checkpoint}", *GRPO_TINY]

    def run(*extra):
        code = main([*args, *extra], stage="grpo", description="")
        return code, capsys.readouterr().err

    code, err = run("--target", "b300")
    assert code == 2 and "'b300'" in err and "a100-40gb" in err
    code, err = run("--target", "a100-40gb:2x2")  # 4 GPUs for a mesh of 8
    assert code == 2 and "2 x 2 devices, but the mesh has 8" in err
    code, err = run("--target", "a100-40gb", "--device-memory-gib", "40")
    assert code == 2 and "--device-memory-gib and --target" in err
    # Without the plugin: exit 2 with the one command that installs it.
    monkeypatch.setattr(gpu_target.platform, "CUDA_PLUGIN", "jax_plugins.not_installed")
    monkeypatch.setattr(gpu_target.platform, "CUDA13_PLUGIN", "jax_plugins.not_installed_either")
    code, err = run("--target", "a100-40gb")
    assert code == 2 and "pip install jax-cuda12-pjrt==0.10.2" in err


def test_two_processes_of_8_plan_the_global_batch_of_both():
    """`2x8`: the mesh spans 16 GPUs of two processes, each bringing its data.batch_size."""
    target = gpu_target.resolve_target("h100-80gb:2x8", 16)
    devices = gpu_target.compile_only_devices(target)
    assert (target.processes, target.devices_per_process, len(devices)) == (2, 8, 16)
    assert sorted({d.process_index for d in devices}) == [0, 1]


def test_the_16gb_target_is_the_l4_description_with_16_gib():
    """single_16gb_lora.yaml's card (its 3B plan is bench/memory_plan.py's): the L4 file but
    for its memory."""
    small, l4 = gpu_target.resolve_target("ada-16gb", 1), gpu_target.resolve_target("l4-24gb", 1)
    assert small.memory_gib == 16.0 and small.card == "NVIDIA L4 with 16 GiB (a 16 GB Ada card)"
    assert round(small.budget_gib(0.95)[0], 2) == 15.2

    def body(target):
        return [line for line in target.description.splitlines() if not line.startswith("#")]

    differ = [(a, b) for a, b in zip(body(small), body(l4), strict=True) if a != b]
    assert [a.split(":")[0].strip() for a, _ in differ] == ["device_memory_size", "device_description_str"], differ
