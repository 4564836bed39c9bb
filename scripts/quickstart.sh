#!/usr/bin/env bash
# Quickstart: on a fresh Debian machine (as root it installs what is missing), build engram, fetch
# real text, train the tokenizer and write shards, train configs/tiny.pbtxt on the CPU, and
# evaluate it on held-out text against a unigram baseline. A second run reuses what exists: the
# build, the data, a finished run (an interrupted one resumes from its last checkpoint).
#   scripts/quickstart.sh [CONFIG]          (default configs/tiny.pbtxt)
set -euo pipefail
cd "$(dirname "$0")/.."
config=${1:-configs/tiny.pbtxt}
build_dir=${ENGRAM_BUILD_DIR:-build}
start=$(date +%s)
stamp() { echo "[quickstart $(($(date +%s) - start))s] $*"; }

source scripts/deps.sh
engram_install_deps

stamp "building the tools in $build_dir/"
cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null  # as scripts/test.sh
cmake --build "$build_dir" -j "$(nproc)" --target engram-data engram-train engram-eval engram-plan
bin=$build_dir/launch

stamp "fetching text into data/ (cached after the first run)"
scripts/fetch_data.sh data

stamp "tokenizer, compression table and token shards"
"$bin/engram-data" --config "$config"

stamp "the model"
"$bin/engram-plan" --config "$config"

run_dir=$(sed -n 's/^ *run_dir: *"\(.*\)".*/\1/p' "$config")
if [ -f "$run_dir/checkpoints/latest" ]; then
  stamp "resuming (or confirming) the run in $run_dir"
  "$bin/engram-train" --config "$config" --resume "$run_dir"
else
  stamp "training in $run_dir"
  "$bin/engram-train" --config "$config"
fi

# Held-out text: the first 100k tokens of each evaluation shard engram-data wrote beside the
# training shard (the Brown Corpus; WikiText-2 when present), against the unigram baseline.
stamp "evaluating on held-out text"
train_shard=$(sed -n 's/^ *train_shards: *"\(.*\)".*/\1/p' "$config")
for eval_shard in "$(dirname "$train_shard")"/eval_*.bin; do
  [ -f "$eval_shard" ] || continue
  name=$(basename "$eval_shard" .bin)
  "$bin/engram-eval" --checkpoint "$run_dir" --shards "$eval_shard" --max-tokens 100000 \
    --unigram-baseline "$train_shard" > "$run_dir/$name.json"
  python3 - "$name" "$run_dir/$name.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[2]))
print(f"  {sys.argv[1][5:]:>16}: {r['bits_per_byte']:.3f} bits/byte (unigram baseline {r['unigram_bits_per_byte']:.3f}), "
      f"loss {r['loss']:.3f} nats/token (unigram {r['unigram_loss']:.3f}), {r['tokens']} tokens")
PY
done

stamp "done"
echo "  run directory : $run_dir"
echo "  checkpoint    : $run_dir/checkpoints/$(cat "$run_dir/checkpoints/latest")"
echo "  metrics       : $run_dir/metrics.jsonl"
echo "  evaluations   : $run_dir/eval_*.json"
