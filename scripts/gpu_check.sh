#!/usr/bin/env bash
# Whole checks on the GPU machine, logs under $OUT (or ./gpu-logs).
#   scripts/gpu_check.sh BUILD tests   devices, GPU tests (TESTS="doctest filter flags" runs a part of them), the
#                                      checks watched failing on planted faults, compute-sanitizer memcheck and
#                                      racecheck on a small case of every family, every family's emitted
#                                      standalone program (three problems each: fla, paper fp16 G = 4, dk 80 dv 48 l' 16 G 3) built with nvcc and run, PASS
#                                      required (PARTS="gpu plant sanitize emit" picks steps)
#   scripts/gpu_check.sh BUILD bench   tile sweeps of the dense kernels, the forward benchmark, torch baselines
#   scripts/gpu_check.sh BUILD tuner   the autotuner: a planted faulting family, the fla sweep at 65536 timed,
#                                      default vs tuned forward, kill -9 halfway then resume
#   scripts/gpu_check.sh BUILD backward  the backward's GPU tests, its checks watched failing on planted faults
#                                      (a zeroed gradient row, a flipped element) and compute-sanitizer memcheck and
#                                      racecheck on small backward cases
#   scripts/gpu_check.sh BUILD bwdbench  the backward families tuned at T = 16384 (presets fla, paper, and G = 4),
#                                      then fwd+bwd and bwd per kernel at 16384 and 65536, and fla's Triton NSA +
#                                      flex_attention's window beside them (needs fla's wheels in .whl)
#   scripts/gpu_check.sh BUILD overlap slc_fwd's overlap dispatch (issue 12): its GPU tests and their planted faults,
#                                      every forward family tuned at T = 65536 (fla) on coherent queries, slc_fwd
#                                      again on random ones, into one database, then the forward on both kinds
#                                      with that database and with none, and fla's Triton selected branch on
#                                      nsajit's own selection (bench/fla_selected.py; fla's wheels in .whl)
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
        -tc="small case of every family*,pkg: varlen given by num_seqs*,decode: small case*" > "$out/sanitize_$tool.log" 2>&1
      rc=$?
      grep -E "ERROR SUMMARY|RACECHECK SUMMARY|^\[doctest\] (test cases|Status)" "$out/sanitize_$tool.log"
      [ "$rc" = 0 ] || { echo "compute-sanitizer $tool: exit $rc"; status=1; }
    done
  fi

  if [[ " $parts " == *" emit "* ]]; then
  step "emit, nvcc, run: every family of nsajit families on three problems; each program must print PASS"
  emit_dir=$(mktemp -d)
  : > "$out/emit_run.log"
  # One line per program: NAME then the problem flags.
  "$build/nsajit" families | grep -v '^ ' | while read -r fam; do
    echo "${fam}_fla --family $fam --preset fla --seq 4096"
    echo "${fam}_paper_fp16_g4 --family $fam --preset paper --dtype fp16 --group 4 --seq 3000"
    echo "${fam}_dk80_dv48_l16_g3 --family $fam --preset paper --dk 80 --dv 48 --lsel 16 --heads 6 --kv-heads 2 --seq 1000"
  done > "$emit_dir/jobs"
  while read -r name flags; do
    # shellcheck disable=SC2086
    "$build/nsajit" emit $flags -o "$emit_dir/$name.cu" 2> "$emit_dir/$name.emit.log" || echo "emit failed: $name $flags"
  done < "$emit_dir/jobs"
  cut -d' ' -f1 "$emit_dir/jobs" | xargs -P "$(nproc)" -I NAME sh -c \
    "nvcc -std=c++17 -O2 -gencode=arch=compute_90a,code=sm_90a '$emit_dir/NAME.cu' -o '$emit_dir/NAME' > '$emit_dir/NAME.nvcc.log' 2>&1"
  while read -r name flags; do
    if [ ! -x "$emit_dir/$name" ]; then
      echo "FAIL $name ($flags): emit or nvcc failed:"; cat "$emit_dir/$name.emit.log" "$emit_dir/$name.nvcc.log" 2>/dev/null | tail -20
      status=1; continue
    fi
    timeout 300 "$emit_dir/$name" > "$emit_dir/$name.log" 2>&1
    rc=$?
    { echo "--- $name ($flags): exit $rc"; cat "$emit_dir/$name.log"; } >> "$out/emit_run.log"
    if [ "$rc" = 0 ] && [ "$(tail -1 "$emit_dir/$name.log")" = PASS ]; then
      echo "PASS $name: $(grep -E '^(checked|relative|MODE)' "$emit_dir/$name.log" | head -1 | cut -c1-150)"
    else
      echo "FAIL $name ($flags): exit $rc"; tail -5 "$emit_dir/$name.log"; status=1
    fi
  done < "$emit_dir/jobs"
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
if [ "$what" = backward ]; then
  step backward GPU tests
  "$build/nsajit_gpu_tests" --duration=true -tc='backward*' 2>&1 | tee "$out/bwd_tests.log" |
    grep -E "^\[doctest\] (test cases|assertions|Status)|ERROR|[0-9.]+ s: " || true
  grep -q "Status: SUCCESS" "$out/bwd_tests.log" || status=1
  for kind in row elem; do
    step "planted fault: $kind"
    NSAJIT_TEST_PLANT=$kind "$build/nsajit_gpu_tests" -tc='backward: B > 1*,backward: each branch*,backward: varlen*' \
      > "$out/bwd_plant_$kind.log" 2>&1
    summary=$(grep -E "^\[doctest\] test cases:" "$out/bwd_plant_$kind.log")
    echo "$summary"
    total=$(sed -E 's/.*test cases: *([0-9]+).*/\1/' <<<"$summary")
    failed=$(sed -E 's/.*\| *([0-9]+) failed.*/\1/' <<<"$summary")
    if [ -z "$total" ] || [ "$total" = 0 ] || [ "$failed" != "$total" ]; then
      echo "planted $kind: $failed of $total test cases failed; every one should"; status=1
    fi
  done
  sanitizer=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
  for tool in memcheck racecheck; do
    step "compute-sanitizer $tool: the backward's small cases (every family, each branch off in turn, varlen)"
    "$sanitizer" --tool "$tool" --error-exitcode 9 "$build/nsajit_gpu_tests" \
      -tc='backward: each branch*,backward: varlen*,backward: a hot block*' > "$out/bwd_sanitize_$tool.log" 2>&1
    rc=$?
    grep -E "ERROR SUMMARY|RACECHECK SUMMARY|^\[doctest\] (test cases|Status)" "$out/bwd_sanitize_$tool.log"
    [ "$rc" = 0 ] || { echo "compute-sanitizer $tool: exit $rc"; status=1; }
  done
fi
if [ "$what" = bwdbench ]; then
  db="$out/bwd_tuned.db"
  step tune the backward families at T = 16384
  for args in "--preset fla" "--preset paper" "--preset fla --heads 16 --kv-heads 4"; do
    # shellcheck disable=SC2086
    "$build/nsajit" tune --families bwd $args --seq 16384 --db "$db" 2>&1 | grep -v "trials  " | tail -8 |
      tee -a "$out/bwd_tune.log" || status=1
  done
  step fwd+bwd and bwd per kernel, tuned
  for args in "--preset fla" "--preset paper" "--preset fla --heads 16 --kv-heads 4"; do
    # shellcheck disable=SC2086
    NSAJIT_DB="$db" "$build/nsajit" bench --pass fwd+bwd $args --seq 16384,65536 2>&1 | tee -a "$out/bwd_bench.log" || status=1
  done
  step "fla's Triton NSA + flex_attention window, same call"
  if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl &&
      PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 python3 bench/fla_baseline.py --seqs 16384,65536 2>&1 |
      tee "$out/fla_baseline.log" || status=1
  fi
fi
if [ "$what" = overlap ]; then
  overlap_tests='slc_plan*,slc_fwd: overlap dispatch*'
  step "overlap dispatch: GPU tests ($overlap_tests)"
  "$build/nsajit_gpu_tests" --duration=true -tc="$overlap_tests" 2>&1 | tee "$out/overlap_tests.log" |
    grep -E "^\[doctest\] (test cases|assertions|Status)|ERROR|high-overlap|[0-9.]+ s: " || true
  grep -q "Status: SUCCESS" "$out/overlap_tests.log" || status=1
  # Every one of these checks must fail on a planted fault (tests/gpu/check.h): row zeroes an output row and flips a
  # plan entry; lse shifts an lse value (the plan tests have no lse: not run for it).
  for kind in row lse; do
    cases=$overlap_tests
    [ "$kind" = lse ] && cases='slc_plan: a forward captured*,slc_fwd: overlap dispatch*'
    step "planted fault: $kind ($cases)"
    NSAJIT_TEST_PLANT=$kind "$build/nsajit_gpu_tests" -tc="$cases" > "$out/overlap_plant_$kind.log" 2>&1
    summary=$(grep -E "^\[doctest\] test cases:" "$out/overlap_plant_$kind.log")
    echo "$summary"
    total=$(sed -E 's/.*test cases: *([0-9]+).*/\1/' <<<"$summary")
    failed=$(sed -E 's/.*\| *([0-9]+) failed.*/\1/' <<<"$summary")
    if [ -z "$total" ] || [ "$total" = 0 ] || [ "$failed" != "$total" ]; then
      echo "planted $kind: $failed of $total test cases failed; every one should"; status=1
    fi
  done

  db="$out/overlap.db"
  rm -f "$db" "$db-wal" "$db-shm"
  # Every forward family on coherent inputs (the default kind), then slc_fwd again on random ones: slc_fwd gets a
  # config per overlap bucket, the data-independent families keep the coherent run's.
  for args in "--inputs coherent" "--families slc_fwd --inputs random"; do
    step "tune, fla, T = 65536: $args"
    # shellcheck disable=SC2086
    "$build/nsajit" tune $args --preset fla --seq 65536 --db "$db" 2>&1 |
      grep -v "trials  " | tee -a "$out/overlap_tune.log" || status=1
  done
  "$build/nsajit" db list --db "$db" 2>&1 | tee -a "$out/overlap_tune.log" || status=1
  for inputs in coherent random; do
    step "forward, fla, T = 65536, $inputs inputs: tuned (both buckets), then defaults"
    NSAJIT_DB="$db" "$build/nsajit" bench --preset fla --seq 65536 --inputs "$inputs" \
      --json "$out/overlap_bench_${inputs}_tuned.json" 2>&1 | tee -a "$out/overlap_bench.log" || status=1
    NSAJIT_DB=off "$build/nsajit" bench --preset fla --seq 65536 --inputs "$inputs" \
      --json "$out/overlap_bench_${inputs}_default.json" 2>&1 | tee -a "$out/overlap_bench.log" || status=1
  done
  if [ -d .whl ] && [ -f "$build/libnsajit.so" ]; then
    step "fla's Triton selected branch on nsajit's own selection (same q, k, v, idx, cnt), both input kinds"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl &&
      NSAJIT_DB="$db" NSAJIT_LIBRARY="$(cd "$build" && pwd)/libnsajit.so" PYTHONPATH="python:/tmp/site" \
      PYTHONUNBUFFERED=1 python3 bench/fla_selected.py --seq 65536 2>&1 | tee "$out/overlap_fla_selected.log" ||
      status=1
  fi
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
