#!/usr/bin/env bash
# The Python package's tests on a GPU machine (the H200), from the repository root:
#
#   bash scripts/python_gpu_check.sh [DIR]      # DIR holds libnsajit.so (default: build)
#
# Needs torch (a CUDA build) and pytest; nothing is installed or downloaded. Three passes:
#   1. every test in python/tests (CPU and GPU) must pass;
#   2. with a fault planted in every forward (NSAJIT_TEST_PLANT=fwd: one output row zeroed) every test marked
#      fwd_numeric must fail;
#   3. with a fault planted in every backward (NSAJIT_TEST_PLANT=bwd: one dq and one dk row zeroed) every test
#      marked bwd_numeric must fail.
# PYTEST_ARGS adds pytest arguments to pass 1 (e.g. PYTEST_ARGS='-k varlen'); PASSES="1 2 3" picks passes.
# NSAJIT_TEST_DEVICE=cpu dry-runs the script on a machine without a GPU (the GPU tests' device-agnostic part on the
# CPU kernel, which is the reference: it checks the tests and this script, not the CUDA kernels).
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-build}
if [ ! -f "$dir/libnsajit.so" ]; then
  echo "python_gpu_check: $dir/libnsajit.so not found (build it: cmake --build $dir --target nsajit_shared)" >&2
  exit 2
fi
export NSAJIT_LIBRARY=$(cd "$dir" && pwd)/libnsajit.so
export NSAJIT_CACHE_DIR=${NSAJIT_CACHE_DIR:-$(mktemp -d)}
export PYTHONPATH=$PWD/python${PYTHONPATH:+:$PYTHONPATH}
python=${PYTHON:-python3}
passes=${PASSES:-1 2 3}
$python - <<'EOF'
import torch, nsajit
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), GPUs: {torch.cuda.device_count()}")
print(f"libnsajit.so {nsajit.library_version()}: {nsajit.library_path()}")
print(f"NVRTC: {nsajit.nvrtc_library()}")
import os
if not torch.cuda.is_available() and os.environ.get("NSAJIT_TEST_DEVICE") != "cpu":
    raise SystemExit("python_gpu_check: no CUDA GPU visible to torch")
EOF
status=0
log=$(mktemp)
if [[ " $passes " == *" 1 "* ]]; then
  echo "== 1. all tests (CUBIN cache: $NSAJIT_CACHE_DIR)"
  # shellcheck disable=SC2086
  if ! $python -m pytest python/tests -p no:cacheprovider -rfEs ${PYTEST_ARGS:-}; then status=1; fi
fi
planted() {  # planted KIND: every test marked KIND_numeric must fail
  local kind=$1
  echo "== planted fault in every $kind: each test marked ${kind}_numeric must fail"
  set +e
  NSAJIT_TEST_PLANT=$kind $python -m pytest python/tests -m "${kind}_numeric" -p no:cacheprovider -q --tb=no \
    -rA >"$log" 2>&1
  set -e
  local passed failed
  passed=$(grep -c '^PASSED ' "$log" || true)
  failed=$(grep -c '^FAILED ' "$log" || true)
  tail -n 3 "$log"
  if [ "$passed" -ne 0 ] || [ "$failed" -eq 0 ]; then
    echo "python_gpu_check: with the $kind fault planted, $passed test(s) still passed ($failed failed):" >&2
    grep '^PASSED ' "$log" >&2 || true
    status=1
  else
    echo "ok: all $failed ${kind}_numeric tests failed with the fault planted"
  fi
}
if [[ " $passes " == *" 2 "* ]]; then planted fwd; fi
if [[ " $passes " == *" 3 "* ]]; then planted bwd; fi
rm -f "$log"
if [ "$status" -eq 0 ]; then echo "== python_gpu_check: PASS"; else echo "== python_gpu_check: FAIL"; fi
exit $status
