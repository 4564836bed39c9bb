#!/usr/bin/env bash
# The Debian packages engram builds and tests with, and a function that installs the missing
# ones (as root) or names them (otherwise). Sourced by the other scripts.
ENGRAM_DEBIAN_PACKAGES=(
  build-essential cmake ninja-build ccache pkg-config
  libprotobuf-dev protobuf-compiler          # config schema
  libopenblas-dev                            # CPU GEMM
  zlib1g-dev                                 # CRC-32 of files we write
  libgtest-dev libbenchmark-dev              # tests, micro-benchmarks
  nlohmann-json3-dev libcli11-dev            # checkpoints/metrics, command lines
  libsentencepiece-dev sentencepiece         # tokenizer
  libicu-dev                                 # tokenizer compression table (optional feature)
  libopenmpi-dev openmpi-bin                 # multi-rank runs (optional feature)
)

engram_install_deps() {
  local missing=()
  for p in "${ENGRAM_DEBIAN_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  engram_apt_install "${missing[@]}"
}

# The data script needs commands rather than particular packages (npm may come from another
# Node.js distribution): install the Debian package only for a command that is missing.
engram_require_commands() {
  local missing=() pair
  for pair in "$@"; do  # command:package
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
  done
  engram_apt_install "${missing[@]}"
}

engram_apt_install() {
  local missing=("$@")
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -eq 0 ]; then
    echo "engram: installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "engram: missing Debian packages: ${missing[*]}" >&2
    echo "engram: install them with: sudo apt-get install ${missing[*]}" >&2
    return 1
  fi
}
