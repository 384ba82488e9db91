#!/usr/bin/env bash
# Set-up on a fresh Debian 12 machine with the CUDA 13.0 toolkit: install the packages nsajit builds with, then
# build it in Release under ./build. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
packages=(cmake ninja-build g++ pkg-config libfmt-dev libcli11-dev libsqlite3-dev doctest-dev llvm-19-dev)
missing=()
for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi
if [ ! -e "${CUDA_HOME:-${CUDA_PATH:-/usr/local/cuda}}/include/nvrtc.h" ]; then
  echo "setup: the CUDA 13.0 toolkit (NVRTC) was not found under \$CUDA_HOME, \$CUDA_PATH or /usr/local/cuda" >&2
  exit 1
fi
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DNSAJIT_WERROR=ON >/dev/null
cmake --build build
