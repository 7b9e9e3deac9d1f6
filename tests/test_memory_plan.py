"""The recipe-plan benchmark runs end to end (tiny preset; the 3B figures are in the README)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_memory_plan_bench_runs_and_reports_a_peak():
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "memory_plan.py"), "--tiny", "--only", "coldstart"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    # The SFT stage plans its two programs only (no rollout, no reference), also compiled by
    # XLA:GPU for the 4 x A100-40GB the recipe is meant for (coldstart's GPU plan is tested here).
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    assert cells[:2] == ["coldstart_paper (SFT, 4 devices)", "a100-40gb"]
    assert cells[4:6] == ["-", "-"] and cells[-1] == "yes"
    assert 0 < float(cells[6]) < 0.1 and float(cells[8]) > 30  # the update's peak; the card's budget
    assert lines[-1].startswith("per_device_peak_gib=") and 0 < float(lines[-1].split("=")[1]) < 0.1
