#!/usr/bin/env bash
# Set-up on a fresh Debian 12 machine with the CUDA 13.0 toolkit: install the packages nsajit builds with, then
# build it in Release under ./build (the nsajit command, the tests and libnsajit.so), then install the Python package
# into ./.venv (NSAJIT_SETUP_PYTHON=0 skips that step: the tuning sweep needs none of it). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
packages=(cmake ninja-build g++ pkg-config libfmt-dev libcli11-dev libsqlite3-dev doctest-dev llvm-19-dev)
python=${NSAJIT_SETUP_PYTHON:-1}
[ "$python" = 0 ] || packages+=(python3 python3-venv)
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
pip_pid=""
if [ "$python" != 0 ]; then
  # The Python package's dependencies: PyPI's torch at the version the H200 has, numpy, pytest. The download (GBs)
  # runs beside the C++ build, which is bound by the CPU; its output goes to build/pip-install.log.
  mkdir -p build
  [ -x .venv/bin/python ] || /usr/bin/python3 -m venv .venv
  .venv/bin/python -m pip install -q --disable-pip-version-check torch==2.11.0 numpy pytest "scikit-build-core>=0.10" \
    > build/pip-install.log 2>&1 &
  pip_pid=$!
fi
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DNSAJIT_WERROR=ON >/dev/null
cmake --build build || { [ -z "$pip_pid" ] || kill "$pip_pid" 2>/dev/null; exit 1; }
if [ "$python" != 0 ]; then
  # nsajit installed with the libnsajit.so just built (no second compile). Activate with `. .venv/bin/activate`;
  # `import nsajit` then works.
  wait "$pip_pid" ||
    { cat build/pip-install.log >&2
      echo "setup: pip could not install torch 2.11.0 from PyPI into .venv (NSAJIT_SETUP_PYTHON=0 skips the" \
        "Python package; the nsajit command and its tests need none of it)" >&2; exit 1; }
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps ./python \
    --config-settings=cmake.define.NSAJIT_PREBUILT_LIBRARY="$PWD/build/libnsajit.so" \
    --config-settings=build-dir="$PWD/build/python-wheel"
  .venv/bin/python -c 'import nsajit; print(f"setup: nsajit {nsajit.__version__} in .venv: {nsajit.library_path()}")'
fi
