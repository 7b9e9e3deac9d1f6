"""The memory-plan benchmark runs end to end (on the tiny preset; the 3B figures are in the README)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_memory_plan_runs_and_reports_a_peak():
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "memory_plan.py"),
            "--preset",
            "tinyllava-video-tiny",
            "--frames",
            "4",
            "--new-tokens",
            "8",
            "--prompt-tokens",
            "30",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    last = out.stdout.strip().splitlines()[-1]
    assert last.startswith("per_device_peak_gib=")
    assert 0 < float(last.split("=")[1]) < 1  # a tiny model needs far less than a GiB
    assert "kv_cache_per_device_gib" in out.stdout and "update_compile_s" in out.stdout
