#!/usr/bin/env bash
# The one prepared GPU check, for a lent machine (one H100 or H200; under 8 minutes; nothing can
# be fetched there, so it runs from this source tree on the machine's own JAX). Every step writes
# its output under $OUT (default bench/gpu_check_out), and the last lines of summary.txt are
# name=value figures:
#   1. the device and the stack (nvidia-smi, jax, the devices JAX sees)
#   2. the GPU-relevant tests: the decoding layout against the scan (float32, full and LoRA,
#      placements, top-k), at the highest matmul precision so that float32 parity means float32
#   3. bench/gpu_3b.py: the 3B model's rollout (tokens/s, per-token time, HBM bandwidth reached)
#      and update (TFLOP/s, MFU), beside the projection
#   4. the plan of single_80gb.yaml (3B) compiled for this card by JAX itself (its real
#      memory_analysis) beside the compile-only plan for the named target and its projection
#
#   [PYTHON=python3] bash bench/gpu_check.sh [--dry-run]   # --dry-run: the same steps at tiny shapes on the CPU
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/gpu_check_out}
mkdir -p "$OUT"
dry=0
[ "${1:-}" = "--dry-run" ] && dry=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export JAX_DEFAULT_MATMUL_PRECISION=highest
py=${PYTHON:-python3}
summary="$OUT/summary.txt"
: > "$summary"
failed=0

step() {  # step NAME TIMEOUT COMMAND...: run it, keep its output, note its exit code and seconds
  local name=$1 limit=$2
  shift 2
  local start=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
  local code=$?
  echo "$name: exit $code in $((SECONDS - start)) s" | tee -a "$summary"
  [ $code -ne 0 ] && failed=1 && tail -20 "$OUT/$name.txt"
  return 0
}

if [ $dry = 1 ]; then
  export JAX_PLATFORMS=cpu
  card=h100-80gb
  shapes=(model.preset=tinyllava-video-tiny data.prompt_tokens=48 sampling.max_new_tokens=8)
  tests=(tests/test_decode_layout.py -k "auto or top_k")
  bench=(--tiny)
else
  kind=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
  case "$kind" in *H200*) card=h200-141gb ;; *) card=h100-80gb ;; esac
  shapes=(model.preset=tinyllava-video-3b)
  tests=(tests/test_decode_layout.py)
  bench=()
fi

step device 60 "$py" -c "import subprocess, jax, flax; print(jax.__version__, flax.__version__, jax.devices()); subprocess.run('nvidia-smi', shell=True)"
step tests 240 "$py" -m pytest -q -p no:cacheprovider "${tests[@]}"
step gpu_3b 300 "$py" bench/gpu_3b.py "${bench[@]}"
# JAX's own compile for the device it has (a mesh of 1: single_80gb.yaml), then the
# compile-only plan for the named card, with its projection.
step plan_device 240 "$py" -m jax_tinyr1.train.grpo --config configs/single_80gb.yaml --plan "${shapes[@]}"
step plan_target 240 "$py" -m jax_tinyr1.train.grpo --config configs/single_80gb.yaml --plan --target "$card" "${shapes[@]}"

{
  grep -h "=" "$OUT/gpu_3b.txt" | grep -E "^[a-z_0-9]+=" || true
  echo "device_plan_peak_gib=$(grep -h '^per_device_peak_gib=' "$OUT/plan_device.txt" | cut -d= -f2)"
  echo "target_plan_peak_gib=$(grep -h '^per_device_peak_gib=' "$OUT/plan_target.txt" | cut -d= -f2)"
  echo "projected_step_seconds=$(grep -h '^projected_step_seconds=' "$OUT/plan_target.txt" | cut -d= -f2 | cut -d' ' -f1)"
} >> "$summary"
cat "$summary"
exit $failed
