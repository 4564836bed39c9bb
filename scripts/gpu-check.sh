#!/usr/bin/env bash
# One command for the GPU machine: configure with the CUDA backend, build with every core, run the
# gpu suite (CUDA kernels and the model against the CPU reference), the CPU suites (unit, gradcheck),
# the parallel suite (mpirun; its GPU tests run here), the step benchmark (benchmarks/step_time on the
# configs in ENGRAM_BENCH_CONFIGS) and the kernel benchmarks (benchmarks/bench_cuda_kernels), and
# print a table last. Full logs go to ${OUT:-/tmp/gpu-check}. Installs nothing (the GPU machine has no
# package registry): it needs cmake, ninja, nvcc and the Debian/Ubuntu -dev packages already there.
#   scripts/gpu-check.sh                      everything
#   scripts/gpu-check.sh -R CudaGemm          extra ctest arguments apply to the gpu suite only
# ENGRAM_SUITES (default "gpu cpu parallel"; "gpu" alone, or "" for benchmarks only: a second call on
# a warm machine reuses the build), ENGRAM_BUILD_DIR (default build-gpu), ENGRAM_CUDA_ARCHITECTURES
# (default 90a, the H100), ENGRAM_JOBS (default: all cores), ENGRAM_BENCH_CONFIGS (default
# configs/h100-bench.pbtxt and configs/4090-1b.pbtxt; empty skips the step benchmark),
# ENGRAM_BENCH_PRECISIONS (default BF16; e.g. "BF16 FLOAT32") and ENGRAM_KERNEL_BENCH (0 skips the
# kernel benchmarks) adjust it. A gpu suite that a visible GPU leaves entirely skipped fails the check.
set -euo pipefail
cd "$(dirname "$0")/.."

out=${OUT:-/tmp/gpu-check}
build_dir=${ENGRAM_BUILD_DIR:-build-gpu}
archs=${ENGRAM_CUDA_ARCHITECTURES:-90a}
jobs=${ENGRAM_JOBS:-$(nproc)}
suites=" ${ENGRAM_SUITES-gpu cpu parallel} "
mkdir -p "$out"
rm -f "$out"/ctest-*.log "$out/step_time.jsonl" "$out/bench_cuda_kernels.log"  # a reused OUT: this run's only

# The device as the driver sees it, for the record.
device="none found (no nvidia-smi)"
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || true
  device=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -n 1 || true)
fi

step() {  # step NAME LOG COMMAND...: runs COMMAND with its output in LOG; on failure shows the tail
  local name=$1 log=$2
  shift 2
  echo "gpu-check: $name (log: $log)"
  local start=$SECONDS
  if ! "$@" > "$log" 2>&1; then
    tail -n 60 "$log"
    echo "gpu-check: $name FAILED after $((SECONDS - start)) s; full log in $log"
    return 1
  fi
  echo "gpu-check: $name done in $((SECONDS - start)) s"
}

step configure "$out/configure.log" \
  cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DENGRAM_BUILD_BENCHMARKS=ON \
        -DENGRAM_CUDA_ARCHITECTURES="$archs"
if ! grep -q "CUDA toolkit=ON" "$out/configure.log"; then
  grep "engram features\|left out" "$out/configure.log" || true
  echo "gpu-check: the CUDA backend was not configured (is nvcc on PATH, or CUDACXX set?)"
  exit 1
fi
step build "$out/build.log" cmake --build "$build_dir" -j "$jobs"

export OPENBLAS_NUM_THREADS=1
status=0
if [[ $suites == *" gpu "* ]]; then
  step "ctest -L gpu" "$out/ctest-gpu.log" \
    ctest --test-dir "$build_dir" -L gpu -j 4 --output-on-failure --output-junit "$out/ctest-gpu.xml" "$@" || status=1
fi
if [[ $suites == *" cpu "* ]]; then
  step "ctest -L 'unit|gradcheck'" "$out/ctest-cpu.log" \
    ctest --test-dir "$build_dir" -L 'unit|gradcheck' -j "$jobs" --output-on-failure || status=1
fi
# The parallel suite (mpirun): its CUDA-tensor and GPU-run tests skip elsewhere.
if [[ $suites == *" parallel "* ]]; then
  step "ctest -L parallel" "$out/ctest-parallel.log" \
    ctest --test-dir "$build_dir" -L parallel -j "$jobs" --output-on-failure || status=1
fi
bench_configs=${ENGRAM_BENCH_CONFIGS-configs/h100-bench.pbtxt configs/4090-1b.pbtxt}
for config in $bench_configs; do
  for precision in ${ENGRAM_BENCH_PRECISIONS:-BF16}; do
    step "step_time $config $precision" "$out/step_time.log.tmp" \
      "$build_dir/benchmarks/step_time" --config "$config" --set runtime.matmul_precision=$precision || status=1
    cat "$out/step_time.log.tmp" >> "$out/step_time.jsonl"
  done
done
rm -f "$out/step_time.log.tmp"
# The CUDA kernels at the benchmark's shapes; the A/B pairs (/0 against /1, 32000 against 32772) run side by side.
if [ "${ENGRAM_KERNEL_BENCH:-1}" != 0 ]; then
  step bench_cuda_kernels "$out/bench_cuda_kernels.log" "$build_dir/benchmarks/bench_cuda_kernels" || status=1
fi

# "total passed failed skipped" of a ctest log, whose per-test lines read
# "N/M Test #K: name ....   Passed   0.1 sec" (or ***Failed, ***Skipped, ***Timeout, ***Exception, Not Run).
test_counts() {
  awk '
    / Test +#[0-9]+: / {
      total++
      if ($0 ~ /\*\*\*Skipped/) skipped++
      else if ($0 ~ / Passed /) passed++
      else failed++
    }
    END { print total + 0, passed + 0, failed + 0, skipped + 0 }' "$1"
}
echo
printf '%-22s %6s %6s %6s %8s\n' suite tests passed failed skipped
for pair in "gpu:$out/ctest-gpu.log" "unit|gradcheck:$out/ctest-cpu.log" "parallel:$out/ctest-parallel.log"; do
  [ -f "${pair#*:}" ] || continue
  read -r total passed failed skipped < <(test_counts "${pair#*:}")
  printf '%-22s %6d %6d %6d %8d\n' "${pair%%:*}" "$total" "$passed" "$failed" "$skipped"
  # Every GPU test skips without a device: with one visible, a wholly skipped gpu suite is a failure.
  if [ "${pair%%:*}" = gpu ] && [ "$device" != "none found (no nvidia-smi)" ] && [ "$total" -gt 0 ] &&
     [ "$skipped" -eq "$total" ]; then
    echo "gpu-check: nvidia-smi sees a GPU ($device) but every gpu test skipped: the tests found no CUDA device"
    status=1
  fi
done
if [ -s "$out/step_time.jsonl" ]; then
  echo
  printf '%-34s %-8s %10s %12s %7s %10s\n' config matmul ms/step tokens/s MFU 'peak GiB'
  python3 - "$out/step_time.jsonl" <<'PY' || true
import json, sys
for line in open(sys.argv[1]):
    if not line.startswith('{'):
        continue
    r = json.loads(line)
    print(f"{r['config']:<34} {r['matmul_precision']:<8} {r['median_step_ms']:10.1f} {r['tokens_per_s']:12,.0f} "
          f"{100 * r['mfu']:6.1f}% {r['peak_device_bytes'] / 2**30:10.2f}")
    print("  phases: " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in sorted(r['phase_share'].items(), key=lambda kv: -kv[1])))
    print(f"  device blocks handed back in the timed steps: {r.get('blocks_returned_in_timed_steps', '?')}")
PY
fi
if [ -s "$out/bench_cuda_kernels.log" ]; then
  echo
  grep '^BM_' "$out/bench_cuda_kernels.log" || true
fi
echo "device: $device; architectures: $archs; logs: $out"
if [ "$status" -ne 0 ]; then
  echo "gpu-check: FAILED (failing tests are listed at the end of the ctest logs)"
fi
exit "$status"
