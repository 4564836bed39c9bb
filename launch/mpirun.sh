#!/usr/bin/env bash
# launch/mpirun.sh NRANKS [engram-train arguments...]
# Runs engram-train on NRANKS MPI ranks with the settings a CPU run wants:
# - OPENBLAS_NUM_THREADS = cores / NRANKS (at least 1) unless already set, passed to every rank, so
#   ranks do not oversubscribe the cores with BLAS threads (keep it fixed for bitwise resume);
# - no core binding (each rank's BLAS threads may use the cores its share allows);
# - --oversubscribe when NRANKS exceeds the cores, --allow-run-as-root when run as root;
# - the environment a GPU run needs passed to every rank: LD_LIBRARY_PATH, CUDA_VISIBLE_DEVICES and
#   every NCCL_* variable that is set;
# - ENGRAM_HOSTFILE: an Open MPI hostfile for several machines (every rank must see the same
#   data/ and run directory paths; set OPENBLAS_NUM_THREADS to a node's cores over its ranks, as
#   the default counts this machine's cores over all ranks); ENGRAM_TRAIN: the engram-train binary
#   (default build/launch/).
# Example: launch/mpirun.sh 4 --config configs/small.pbtxt --set parallel.expert_parallel=4
set -euo pipefail
ranks=${1:?usage: launch/mpirun.sh NRANKS [engram-train arguments...]}
shift
[[ "$ranks" =~ ^[1-9][0-9]*$ ]] || { echo "launch/mpirun.sh: NRANKS must be a positive integer, got '$ranks'" >&2; exit 1; }
train=${ENGRAM_TRAIN:-$(dirname "$0")/../build/launch/engram-train}
[ -x "$train" ] || { echo "launch/mpirun.sh: $train not found; build it with scripts/test.sh or cmake --build build --target engram-train" >&2; exit 1; }

cores=$(nproc)
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-$(( cores / ranks > 0 ? cores / ranks : 1 ))}
args=(-np "$ranks" --bind-to none -x OPENBLAS_NUM_THREADS)
for var in $(compgen -e); do
  [[ $var == NCCL_* || $var == CUDA_VISIBLE_DEVICES || $var == LD_LIBRARY_PATH ]] && args+=(-x "$var")
done
[ "$ranks" -gt "$cores" ] && args+=(--oversubscribe)
[ "$(id -u)" -eq 0 ] && args+=(--allow-run-as-root)
[ -n "${ENGRAM_HOSTFILE:-}" ] && args+=(--hostfile "$ENGRAM_HOSTFILE")
exec mpirun "${args[@]}" "$train" "$@"
