#!/usr/bin/env bash
# Engram against the PyTorch reference of the same model (benchmarks/pytorch_reference.py), one run
# after another on the GPU machine: build-gpu/benchmarks/step_time, then the reference eager, then
# the reference under torch.compile, each on random tokens of CONFIG's train section and bounded by
# `timeout`. Prints a table last with each run's speed relative to torch.compile. Needs the CUDA build
# (scripts/gpu-check.sh makes it) and PyTorch with CUDA; logs go to ${OUT:-/tmp/compare-pytorch}.
#   benchmarks/compare_pytorch.sh CONFIG [STEPS]     (CONFIG relative to the repository root; 10 timed steps)
# ENGRAM_BUILD_DIR (default build-gpu) names the build, ENGRAM_COMPARE_TIMEOUT (default 300) the
# seconds each run may take. MFU of the PyTorch runs is engram's MFU scaled by tokens/s (same model
# FLOPs per token). Peak memory: engram's peak device bytes, PyTorch's max_memory_allocated.
set -euo pipefail
cd "$(dirname "$0")/.."

config=${1:?usage: benchmarks/compare_pytorch.sh CONFIG [STEPS]}
steps=${2:-10}
step_time=${ENGRAM_BUILD_DIR:-build-gpu}/benchmarks/step_time
limit=${ENGRAM_COMPARE_TIMEOUT:-300}
out=${OUT:-/tmp/compare-pytorch}
mkdir -p "$out"
export PYTHONUNBUFFERED=1

status=0
run() {  # run NAME COMMAND...: COMMAND's output in $out/NAME.log, its last JSON line in $out/NAME.json
  local name=$1 start=$SECONDS code=0
  shift
  echo "compare_pytorch: $name"
  timeout "$limit" "$@" > "$out/$name.log" 2>&1 || code=$?
  grep '^{' "$out/$name.log" | tail -n 1 > "$out/$name.json" || true
  if [ "$code" -ne 0 ]; then
    tail -n 30 "$out/$name.log"
    [ "$code" -eq 124 ] && echo "compare_pytorch: $name timed out after $limit s"
    echo "compare_pytorch: $name FAILED (exit $code); full log in $out/$name.log"
    status=1
  else
    echo "compare_pytorch: $name done in $((SECONDS - start)) s"
  fi
}

if [ -x "$step_time" ]; then
  run engram "$step_time" --config "$config" --steps "$steps"
else
  echo "compare_pytorch: $step_time is not built (scripts/gpu-check.sh builds it)"
  : > "$out/engram.json"
  status=1
fi
run torch-eager python3 benchmarks/pytorch_reference.py --config "$config" --steps "$steps"
run torch-compile python3 benchmarks/pytorch_reference.py --config "$config" --steps "$steps" --compile

echo
python3 - "$out" "$config" <<'PY'
import json, sys
out, config = sys.argv[1], sys.argv[2]
def load(name):
    try:
        text = open(f"{out}/{name}.json").read().strip()
        return json.loads(text) if text else None
    except (OSError, ValueError):
        return None
runs = {"engram": load("engram"), "torch eager": load("torch-eager"), "torch.compile": load("torch-compile")}
engram, compiled = runs["engram"], runs["torch.compile"]
print(f"config {config}" + (f"; engram matmul {engram['matmul_precision']}" if engram else ""))
print(f"{'run':<14} {'ms/step':>9} {'tokens/s':>11} {'MFU':>7} {'peak GiB':>9} {'vs compile':>11}")
for name, r in runs.items():
    if r is None:
        print(f"{name:<14} {'(no result)':>9}")
        continue
    tps = r["tokens_per_s"]
    mfu = r.get("mfu") if name == "engram" else (engram["mfu"] * tps / engram["tokens_per_s"] if engram else None)
    peak = r.get("peak_device_bytes", r.get("peak_memory_bytes", 0)) / 2**30
    ratio = f"{tps / compiled['tokens_per_s']:.3f}x" if compiled else "-"
    mfu_text = f"{100 * mfu:.1f}%" if mfu is not None else "-"
    print(f"{name:<14} {r['median_step_ms']:9.1f} {tps:11,.0f} {mfu_text:>7} {peak:9.2f} {ratio:>11}")
if engram and compiled:
    print(f"engram / torch.compile tokens/s: {engram['tokens_per_s'] / compiled['tokens_per_s']:.3f}")
PY
echo "logs: $out"
exit "$status"
