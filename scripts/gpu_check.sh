#!/usr/bin/env bash
# Whole checks on the GPU machine, logs under $OUT (or ./gpu-logs).
#   scripts/gpu_check.sh BUILD tests   devices, GPU tests, emitted standalone programs built with nvcc and run
#   scripts/gpu_check.sh BUILD bench   tile sweeps of the dense kernels, the forward benchmark, torch baselines
#   scripts/gpu_check.sh BUILD all     both
set -uo pipefail
build=${1:-build}
what=${2:-all}
out=${OUT:-gpu-logs}
mkdir -p "$out"
export NSAJIT_CACHE_DIR=${NSAJIT_CACHE_DIR:-/tmp/nsajit-cache}
status=0
step() { echo; echo "=== $*"; }

if [ "$what" = tests ] || [ "$what" = all ]; then
  step devices
  "$build/nsajit" devices 2>&1 | tee "$out/devices.log" || status=1

  step GPU tests
  "$build/nsajit_gpu_tests" --duration=true 2>&1 | tee "$out/gpu_tests.log" |
    grep -E "^\[doctest\] (test cases|assertions|Status)|ERROR|rel error|prewarmed|[0-9.]+ s: " || true
  grep -q "Status: SUCCESS" "$out/gpu_tests.log" || status=1

  step emit, nvcc, run
  for spec in "win_fwd --preset fla --seq 8192" "cmp_fwd --preset paper --dtype fp16 --group 4 --seq 3000"; do
    # shellcheck disable=SC2086
    if "$build/nsajit" emit --family $spec -o /tmp/emitted.cu && nvcc -std=c++17 -O2 -arch=sm_90a /tmp/emitted.cu -o /tmp/emitted; then
      /tmp/emitted 2>&1 | tee -a "$out/emit_run.log" || status=1
    else
      echo "emit or nvcc failed for: $spec"; status=1
    fi
  done
fi

if [ "$what" = bench ] || [ "$what" = all ]; then
  step tile sweeps at T = 65536
  for preset in fla paper; do
    "$build/nsajit" tune --preset "$preset" --seq 65536 --families win_fwd,cmp_fwd 2>&1 | grep -v "^  \[.*key" |
      tee -a "$out/tune.log" || status=1
  done
  step forward benchmark
  "$build/nsajit" bench --preset fla --seq 8192,16384,32768,65536 --json "$out/bench_fla.json" 2>&1 | tee "$out/bench.log" || status=1
  "$build/nsajit" bench --preset paper --seq 65536 --json "$out/bench_paper.json" 2>&1 | tee -a "$out/bench.log" || status=1
  "$build/nsajit" bench --preset fla --heads 16 --kv-heads 4 --seq 65536 --json "$out/bench_g4.json" 2>&1 | tee -a "$out/bench.log" || status=1
  step torch baselines
  python3 bench/baselines.py --seqs 8192,65536 --json "$out/baselines.json" 2>&1 | tail -8 | tee "$out/baselines.log" || status=1
fi
echo; echo "gpu_check status $status"
exit $status
