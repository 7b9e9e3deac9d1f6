"""The benchmark scripts stay runnable: each runs on a tiny configuration and ends with its
name=value lines (the real figures come from running them at full size; see bench/RESULTS.md)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _last_lines(args, n):
    out = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, check=True)
    lines = out.stdout.strip().splitlines()[-n:]
    return {line.split("=")[0]: float(line.split("=")[1]) for line in lines}


@pytest.mark.bench
def test_gpu_3b_script_runs_on_cpu_with_the_tiny_config():
    figures = _last_lines(["bench/gpu_3b.py", "--tiny", "--repeats", "1", "--prompts", "2", "--group", "2"], 5)
    assert {
        "prefill_tokens_per_s",
        "decode_tokens_per_s",
        "decode_bandwidth_gb_per_s",
        "update_s",
        "update_tflops",
    } <= set(figures)
    assert all(v > 0 for v in figures.values())


@pytest.mark.bench
def test_rollout_and_update_benchmarks_run_tiny():
    rollout = _last_lines(
        [
            "bench/rollout_vs_hf.py",
            "--preset",
            "qwen2-tiny",
            "--prompts",
            "2",
            "--group",
            "2",
            "--new-tokens",
            "4",
            "--prompt-tokens",
            "4",
            "--repeats",
            "1",
            "--sequential-calls",
            "1",
            "--skip-video",
        ],
        2,
    )
    assert set(rollout) == {"speedup_vs_hf_sequential", "speedup_vs_hf_batched"}
    update = _last_lines(
        [
            "bench/update_step.py",
            "--preset",
            "qwen2-tiny",
            "--rows",
            "2",
            "--prompt-tokens",
            "4",
            "--new-tokens",
            "4",
            "--repeats",
            "1",
        ],
        1,
    )
    assert set(update) == {"speedup_vs_torch"} and update["speedup_vs_torch"] > 0


@pytest.mark.bench
def test_ablation_bench_runs_quick_and_reports_every_finding(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "bench/demo_ablations.py",
            "--quick",
            "--seeds",
            "0",
            "--out",
            str(tmp_path / "out"),
            "--docs",
            str(tmp_path / "docs"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    report = (tmp_path / "out" / "ablations.md").read_text()
    assert "| dr_grpo |" in report and "4.3.3 Dr. GRPO shortens the responses" in report, out.stdout[-2000:]
    assert (tmp_path / "docs" / "figure5_seed0" / "response_length.png").is_file()
