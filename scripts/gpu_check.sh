#!/usr/bin/env bash
# Whole checks on the GPU machine, logs under $OUT (or ./gpu-logs).
#   scripts/gpu_check.sh BUILD tests   devices, GPU tests (TESTS="doctest filter flags" runs a part of them), the
#                                      checks watched failing on planted faults, compute-sanitizer memcheck and
#                                      racecheck on a small case of every family, emitted standalone programs
#                                      built with nvcc and run (PARTS="gpu plant sanitize emit" picks steps)
#   scripts/gpu_check.sh BUILD bench   tile sweeps of the dense kernels, the forward benchmark, torch baselines
#   scripts/gpu_check.sh BUILD tuner   the autotuner: a planted faulting family, the fla sweep at 65536 timed,
#                                      default vs tuned forward, kill -9 halfway then resume
#   scripts/gpu_check.sh BUILD all     tests and bench
set -uo pipefail
build=${1:-build}
what=${2:-all}
out=${OUT:-gpu-logs}
mkdir -p "$out"
export NSAJIT_CACHE_DIR=${NSAJIT_CACHE_DIR:-/tmp/nsajit-cache}
# Hermetic tests: no tuning database (the binary forces this too).
export NSAJIT_DB=off
status=0
step() { echo; echo "=== $*"; }

if [ "$what" = tests ] || [ "$what" = all ]; then
  step devices
  "$build/nsajit" devices 2>&1 | tee "$out/devices.log" || status=1

  parts=${PARTS:-gpu plant sanitize emit}
  if [[ " $parts " == *" gpu "* ]]; then
    step GPU tests ${TESTS:-}
    # shellcheck disable=SC2086
    "$build/nsajit_gpu_tests" --duration=true ${TESTS:-} 2>&1 | tee "$out/gpu_tests.log" |
      grep -E "^\[doctest\] (test cases|assertions|Status)|ERROR|rel error|rel [0-9]|prewarmed|[0-9.]+ s: " || true
    grep -q "Status: SUCCESS" "$out/gpu_tests.log" || status=1
  fi

  if [[ " $parts " == *" plant "* ]]; then
    # The checks must fail on planted faults (tests/gpu/check.h): one output row zeroed (or left unwritten), one
    # lse value shifted by 0.01. Every selected test case has to fail, else a check cannot see such a fault.
    plant_cases=${PLANT_CASES:-"pool: batches*,win_fwd: batches*,slc_fwd: batches*,forward: pooling inside*"}
    for kind in row lse; do
      cases=$plant_cases
      [ "$kind" = lse ] && cases=${cases/pool: batches\*,/}
      step "planted fault: $kind ($cases)"
      NSAJIT_TEST_PLANT=$kind "$build/nsajit_gpu_tests" -tc="$cases" > "$out/plant_$kind.log" 2>&1
      summary=$(grep -E "^\[doctest\] test cases:" "$out/plant_$kind.log")
      echo "$summary"
      grep -E "worst (row|abs)" "$out/plant_$kind.log" | head -3 | cut -c1-300
      total=$(sed -E 's/.*test cases: *([0-9]+).*/\1/' <<<"$summary")
      failed=$(sed -E 's/.*\| *([0-9]+) failed.*/\1/' <<<"$summary")
      if [ -z "$total" ] || [ "$total" = 0 ] || [ "$failed" != "$total" ]; then
        echo "planted $kind: $failed of $total test cases failed; every one should"; status=1
      fi
    done
  fi

  if [[ " $parts " == *" sanitize "* ]]; then
    sanitizer=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
    for tool in memcheck racecheck; do
      step "compute-sanitizer $tool: a small case of every family, run twice and compared bitwise; varlen by max_seqlen"
      "$sanitizer" --tool "$tool" --error-exitcode 9 "$build/nsajit_gpu_tests" \
        -tc="small case of every family*,pkg: varlen given by num_seqs*" > "$out/sanitize_$tool.log" 2>&1
      rc=$?
      grep -E "ERROR SUMMARY|RACECHECK SUMMARY|^\[doctest\] (test cases|Status)" "$out/sanitize_$tool.log"
      [ "$rc" = 0 ] || { echo "compute-sanitizer $tool: exit $rc"; status=1; }
    done
  fi

  if [[ " $parts " == *" emit "* ]]; then
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
if [ "$what" = tuner ]; then
  nsajit="$build/nsajit"
  dbs=${DB_DIR:-/tmp/nsajit-dbs}
  rm -rf "$dbs"; mkdir -p "$dbs"
  step planted faults: fault_test MODE 1 writes out of bounds, 2 hangs, 3 is wrong
  NSAJIT_TEST_FAMILIES=1 "$nsajit" tune --preset fla --seq 4096 --families fault_test --strategy exhaustive \
    --timeout 5 --db "$dbs/fault.db" > "$out/fault.log" 2>&1
  "$nsajit" db show --db "$dbs/fault.db" >> "$out/fault.log" 2>&1
  grep -v "trials  " "$out/fault.log"
  grep -q "launch_error" "$out/fault.log" || { echo "no launch_error recorded"; status=1; }

  step tune fla 65536, all forward families, cold CUBIN cache
  rm -rf "$NSAJIT_CACHE_DIR"
  t0=$(date +%s%N)
  "$nsajit" tune --preset fla --seq 65536 --db "$dbs/tune.db" 2>&1 | grep -v "trials  " || status=1
  echo "tune wall $(( ($(date +%s%N) - t0) / 1000000 )) ms"
  "$nsajit" db list --db "$dbs/tune.db" || status=1
  "$nsajit" db verify --db "$dbs/tune.db" || status=1
  "$nsajit" db export --db "$dbs/tune.db" -o "$out/tune_export.json" || status=1

  step forward: defaults, then tuned
  NSAJIT_DB=off "$nsajit" bench --preset fla --seq 65536 --json "$out/bench_default.json" || status=1
  NSAJIT_DB="$dbs/tune.db" NSAJIT_LOG=info "$nsajit" bench --preset fla --seq 65536 --json "$out/bench_tuned.json" || status=1

  step kill -9 halfway, then resume
  "$nsajit" tune --preset fla --seq 65536 --families select,slc_fwd --strategy exhaustive --db "$dbs/kill.db" > "$dbs/kill_first.log" 2>&1 &
  pid=$!
  sleep "${KILL_AFTER:-25}"
  kill -9 $pid; wait $pid 2>/dev/null
  echo "killed with -9 after ${KILL_AFTER:-25} s; its last lines:"; tail -4 "$dbs/kill_first.log"
  "$nsajit" db show --db "$dbs/kill.db" > "$dbs/before.txt" 2>&1
  "$nsajit" db verify --db "$dbs/kill.db" || status=1
  "$nsajit" tune --preset fla --seq 65536 --families select,slc_fwd --strategy exhaustive --db "$dbs/kill.db" 2>&1 | grep -v "trials  " || status=1
  "$nsajit" db show --db "$dbs/kill.db" > "$dbs/after.txt" 2>&1
  "$nsajit" db verify --db "$dbs/kill.db" || status=1
  # Every trial line recorded before the rerun is still there, unchanged.
  lost=$(grep '^#' "$dbs/before.txt" | while IFS= read -r line; do grep -qxF -- "$line" "$dbs/after.txt" || echo x; done | wc -l)
  echo "trials before the rerun: $(grep -c '^#' "$dbs/before.txt"); after: $(grep -c '^#' "$dbs/after.txt"); lost: $lost"
  [ "$lost" = 0 ] || status=1

  step stale results: another driver, a changed kernel source
  "$nsajit" tune --preset fla --seq 8192 --families pool,win_fwd --db "$dbs/stale.db" 2>&1 | grep -E "^(pool|win_fwd) "
  python3 -c "
import sqlite3
c = sqlite3.connect('$dbs/stale.db')
c.execute(\"UPDATE best SET driver_version = 12080 WHERE family = 'win_fwd'\")
c.execute(\"UPDATE best SET source_hash = 'x' || substr(source_hash, 2) WHERE family = 'pool'\")
c.commit()"
  NSAJIT_DB="$dbs/stale.db" "$nsajit" bench --preset fla --seq 8192 2>&1 | grep -E "warning" || { echo "stale entries not reported"; status=1; }
  "$nsajit" db list --db "$dbs/stale.db" | grep -c STALE
  "$nsajit" db prune --stale --yes --db "$dbs/stale.db"
fi
echo; echo "gpu_check status $status"
exit $status
