"""The prepared GPU check (bench/gpu_check.sh) runs its every step at tiny shapes on the CPU
(`--dry-run`), as it will on a lent H100/H200, and ends with its figures; and the HLO reader
under the plans' projection counts kernels, bytes and loops as stated (train/hlo_stats.py)."""

import os
import re
import subprocess
import sys
from pathlib import Path

from jax_tinyr1.train.hlo_stats import Program

ROOT = Path(__file__).resolve().parents[1]


def test_the_gpu_check_dry_run_passes_every_step(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path)}
    run = subprocess.run(
        ["bash", "bench/gpu_check.sh", "--dry-run"], capture_output=True, text=True, cwd=ROOT, env=env, timeout=600
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    summary = (tmp_path / "summary.txt").read_text()
    for step in ("device", "tests", "gpu_3b", "plan_device", "plan_target"):
        assert re.search(rf"^{step}: exit 0 in \d+ s$", summary, re.M), summary
    for figure in ("decode_tokens_per_s", "update_tflops", "device_plan_peak_gib", "projected_step_seconds"):
        assert re.search(rf"^{figure}=[\d.e+-]+$", summary, re.M), (figure, summary)


TRIPS = 'backend_config={"known_trip_count":{"n":"4"}}'
HLO = (
    """
HloModule m

%fused_slice (param_0: bf16[4,8,8], param_1: s32[]) -> bf16[1,8,8] {
  %param_0 = bf16[4,8,8]{2,1,0} parameter(0)
  %param_1 = s32[] parameter(1)
  %zero = s32[] constant(0)
  ROOT %ds = bf16[1,8,8]{2,1,0} dynamic-slice(%param_0, %param_1, %zero, %zero), dynamic_slice_sizes={1,8,8}
}

%fused_update (param_0: bf16[4,8,8], param_1: bf16[1,8,8], param_2: s32[]) -> bf16[4,8,8] {
  %param_0 = bf16[4,8,8]{2,1,0} parameter(0)
  %param_1 = bf16[1,8,8]{2,1,0} parameter(1)
  %param_2 = s32[] parameter(2)
  %zero = s32[] constant(0)
  ROOT %dus = bf16[4,8,8]{2,1,0} dynamic-update-slice(%param_0, %param_1, %param_2, %zero, %zero)
}

%inner_body (p: (s32[], bf16[4,8,8])) -> (s32[], bf16[4,8,8]) {
  %p = (s32[], bf16[4,8,8]{2,1,0}) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %w = bf16[4,8,8]{2,1,0} get-tuple-element(%p), index=1
  %slice = bf16[1,8,8]{2,1,0} fusion(%w, %i), kind=kLoop, calls=%fused_slice
  %gemm = (bf16[8,8]{1,0}, s8[4194304]{0}) custom-call(%slice, %slice), custom_call_target="__cublas$lt$matmul"
  %new = bf16[4,8,8]{2,1,0} fusion(%w, %slice, %i), kind=kLoop, calls=%fused_update
  ROOT %t = (s32[], bf16[4,8,8]{2,1,0}) tuple(%i, %new)
}

%inner_cond (p: (s32[], bf16[4,8,8])) -> pred[] {
  %p = (s32[], bf16[4,8,8]{2,1,0}) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %n = s32[] constant(4)
  ROOT %lt = pred[] compare(%i, %n), direction=LT
}

%token_body (p: (s32[], bf16[4,8,8], bf16[2,8])) -> (s32[], bf16[4,8,8], bf16[2,8]) {
  %p = (s32[], bf16[4,8,8]{2,1,0}, bf16[2,8]{1,0}) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %w = bf16[4,8,8]{2,1,0} get-tuple-element(%p), index=1
  %x = bf16[2,8]{1,0} get-tuple-element(%p), index=2
  %start = ((bf16[2,8]{1,0}), bf16[16,8]{1,0}) all-gather-start(%x), dimensions={0}
  %done = bf16[16,8]{1,0} all-gather-done(%start)
  %loop = (s32[], bf16[4,8,8]{2,1,0}) while(%p), condition=%inner_cond, body=%inner_body, """
    + TRIPS
    + """
  ROOT %t = (s32[], bf16[4,8,8]{2,1,0}, bf16[2,8]{1,0}) tuple(%i, %w, %x)
}

%token_cond (p: (s32[], bf16[4,8,8], bf16[2,8])) -> pred[] {
  %p = (s32[], bf16[4,8,8]{2,1,0}, bf16[2,8]{1,0}) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %n = s32[] constant(100)
  ROOT %lt = pred[] compare(%i, %n), direction=LT
}

ENTRY %main (a: bf16[4,8,8], b: bf16[2,8]) -> bf16[4,8,8] {
  %a = bf16[4,8,8]{2,1,0} parameter(0)
  %b = bf16[2,8]{1,0} parameter(1)
  %c = s32[] constant(0)
  %init = (s32[], bf16[4,8,8]{2,1,0}, bf16[2,8]{1,0}) tuple(%c, %a, %b)
  %tok = (s32[], bf16[4,8,8]{2,1,0}, bf16[2,8]{1,0}) while(%init), condition=%token_cond, body=%token_body
  ROOT %r = bf16[4,8,8]{2,1,0} get-tuple-element(%tok), index=1
}
"""
)


def test_the_hlo_reader_counts_kernels_bytes_and_trips_as_stated():
    program = Program(HLO, unknown_trips=10)
    (token_loop,) = program.loops()
    assert not program.knows_trips(token_loop) and program.trips(token_loop) == 10
    per_token = program.iteration(token_loop)
    # Inner loop, 4 trips of: a slice fusion (reads one 128-byte layer of the 512 and its 4-byte
    # index, writes the layer), a matmul (two 128-byte operands, a 128-byte result, its
    # workspace not counted), an in-place update (the 128-byte update read and written, the
    # index read; not the 512-byte buffer) and the condition's compare (4 + 4 + 1 bytes).
    inner = (128 + 4 + 128) + (128 * 2 + 128) + (128 + 4 + 128) + 9
    # The token body: one all-gather (reads 32, writes 256 bytes), the token condition's compare.
    assert per_token.kernels == 1 + 4 * 4 + 1
    assert per_token.hbm_bytes == 32 + 256 + 4 * inner + 9
    assert per_token.collective_bytes == {"all-gather": 256}
    whole = program.stats()
    assert whole.kernels == 10 * per_token.kernels and whole.collective_bytes == {"all-gather": 2560}
