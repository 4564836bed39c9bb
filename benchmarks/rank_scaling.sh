#!/usr/bin/env bash
# Step time, bytes moved and table dedup ratio of one config on 1, 2 and 4 ranks (EP = ranks),
# run one after another (docs/PERFORMANCE.md). Needs the config's data and an MPI build.
#   benchmarks/rank_scaling.sh CONFIG [STEPS]       (from the repository root; default 10 steps)
# ENGRAM_BUILD_DIR (default build) names the build; runs go to a temporary directory.
set -euo pipefail
config=${1:?usage: benchmarks/rank_scaling.sh CONFIG [STEPS]}
steps=${2:-10}
train=${ENGRAM_BUILD_DIR:-build}/launch/engram-train
[ -x "$train" ] || { echo "rank_scaling.sh: $train not built" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for n in 1 2 4; do
  run=$work/ranks_$n
  args=(--config "$config" --set train.max_steps="$steps" --set optim.warmup_steps=1 --set train.eval_every=0
        --set train.log_every=1 --set train.run_dir="$run" --set parallel.expert_parallel="$n")
  if [ "$n" = 1 ]; then "$train" "${args[@]}" > "$run.log" 2>&1
  else ENGRAM_TRAIN=$train launch/mpirun.sh "$n" "${args[@]}" > "$run.log" 2>&1; fi
  # Median over steps 4.. of the step time (tokens / tokens_per_s) and of the traffic counters.
  python3 - "$run/metrics.jsonl" "$n" <<'PY'
import json, statistics, sys
lines = [json.loads(l) for l in open(sys.argv[1]) if '"type":"train"' in l.replace(' ', '')][3:]
med = lambda key: statistics.median(l.get(key, 0) for l in lines)
step_s = statistics.median(l["tokens"] / l["tokens_per_s"] for l in lines)
print(f"ranks {sys.argv[2]}: {step_s * 1000:,.0f} ms/step, {lines[0]['tokens'] / step_s:,.0f} tokens/s, "
      f"dispatch {med('dispatch_bytes_sent') / 1e6:.1f} MB/step, table {med('table_bytes_sent') / 1e6:.1f} MB/step, "
      f"dedup {med('table_dedup_ratio'):.2f}")
PY
done
