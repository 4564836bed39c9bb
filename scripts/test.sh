#!/usr/bin/env bash
# The test command: installs missing Debian packages (as root), configures, builds, runs ctest.
#   scripts/test.sh            all suites
#   scripts/test.sh -L unit    ctest arguments pass through (e.g. one label, -R a regex)
# ENGRAM_BUILD_DIR (default build/) and ENGRAM_JOBS (default: all cores) adjust the build.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
engram_install_deps

build_dir=${ENGRAM_BUILD_DIR:-build}
jobs=${ENGRAM_JOBS:-$(nproc)}
cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo
cmake --build "$build_dir" -j "$jobs"
# OpenBLAS may start one thread per core in every test process; one each keeps parallel ctest fast
# and results independent of the machine's core count.
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}
ctest --test-dir "$build_dir" --output-on-failure -j "$jobs" "$@"
