#!/usr/bin/env bash
# The CPU test suite: the Release build's tests, then the host code rebuilt and tested under AddressSanitizer and
# UndefinedBehaviorSanitizer. GPU tests (build/nsajit_gpu_tests) need the H200: see scripts/gpu_check.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
export NSAJIT_CACHE_DIR=${NSAJIT_CACHE_DIR:-$(mktemp -d)}
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  echo "== A GPU is present: the GPU tests are not part of this script; run bash scripts/gpu_check.sh build tests"
else
  echo "== GPU tests: not run (no GPU on this machine; they run on the H200 through scripts/gpu_check.sh)"
fi
echo "== Release tests"
build/nsajit_tests
if [ -x .venv/bin/python ]; then
  # The package as in this tree (PYTHONPATH) over this build's library; the GPU tests skip themselves here.
  echo "== Python package: CPU tests (the GPU ones run on the H200: scripts/python_gpu_check.sh)"
  NSAJIT_LIBRARY=$PWD/build/libnsajit.so PYTHONPATH=$PWD/python .venv/bin/python -m pytest python/tests -q \
    -p no:cacheprovider
else
  echo "== Python package: not tested (no .venv: scripts/setup.sh makes it unless NSAJIT_SETUP_PYTHON=0)"
fi
echo "== ASan + UBSan build and tests"
# -O0 -g1 (line tables for the reports' stacks): the build takes 4.4 min here against 12.6 at -O2 -g (7.0 at -O1),
# the instrumented tests 2.4 min against 1.4; CI's time goes to the build.
cmake -S . -B build-san -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O0 -g1 -DNDEBUG" \
  -DNSAJIT_SANITIZE=ON -DNSAJIT_WERROR=ON >/dev/null
cmake --build build-san --target nsajit_tests nsajit
# The NVRTC compile sweeps and the nvcc builds of the emitted programs run once, in the Release pass: NVRTC and
# nvcc are not instrumented, and they would double CI time without checking any more host code.
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 build-san/nsajit_tests \
  -tce="compile: every win_fwd config*,compile: the default config of every*,compile: any head dim: every family*,emit: nvcc builds*,hopper: the Hopper kernels compile*"
echo "== CPU tests passed (Release, the Python package, ASan + UBSan). GPU tests: not run by this script."
