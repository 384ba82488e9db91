#!/usr/bin/env bash
# One whole check on the GPU machine: devices, GPU tests, the emitted standalone program, then the benchmark.
# Logs go to $OUT (or ./gpu-logs). Usage: scripts/gpu_check.sh [build-dir]
set -uo pipefail
build=${1:-build}
out=${OUT:-gpu-logs}
mkdir -p "$out"
export NSAJIT_CACHE_DIR=${NSAJIT_CACHE_DIR:-/tmp/nsajit-cache}
status=0
step() { echo; echo "=== $*"; }

step devices
"$build/nsajit" devices 2>&1 | tee "$out/devices.log" || status=1

step GPU tests
"$build/nsajit_gpu_tests" --duration=true 2>&1 | tee "$out/gpu_tests.log" | grep -E "^\[doctest\]|FAIL|ERROR|rel error|[0-9.]+ s: " || true
grep -q "Status: SUCCESS" "$out/gpu_tests.log" || status=1

step emit, nvcc, run
if command -v nvcc >/dev/null; then
  "$build/nsajit" emit --family win_fwd --preset fla --seq 8192 -o /tmp/win_fwd.cu &&
    nvcc -std=c++17 -O2 -arch=sm_90a /tmp/win_fwd.cu -o /tmp/win_fwd &&
    /tmp/win_fwd 2>&1 | tee "$out/emit_run.log" || status=1
  "$build/nsajit" emit --family win_fwd --preset paper --dtype fp16 --group 4 --seq 3000 -o /tmp/win_fwd2.cu &&
    nvcc -std=c++17 -O2 -arch=sm_90a /tmp/win_fwd2.cu -o /tmp/win_fwd2 &&
    /tmp/win_fwd2 2>&1 | tee -a "$out/emit_run.log" || status=1
else
  echo "no nvcc on this machine"; status=1
fi

step bench
"$build/nsajit" bench --family win_fwd --preset fla --seqs 8192,16384,32768,65536 2>&1 | tee "$out/bench.log" || status=1
"$build/nsajit" bench --family win_fwd --preset paper --seqs 65536 2>&1 | tee -a "$out/bench.log" || status=1
echo; echo "gpu_check status $status"
exit $status
