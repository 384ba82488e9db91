#pragma once
// The autotuner: for each problem and family, the space from the family's declaration, pruned before compiling
// (reject(): threads, shared memory, divisibility) and after (spills, no CTA fits an SM), compiled in parallel
// ahead of the GPU, searched by a strategy with measurements in worker processes (tuner/worker.h), gated for
// correctness, the finalists and the default re-timed interleaved, and everything recorded in the tuning database
// as it happens. A rerun after an interruption reuses every trial already recorded for the same device, toolkit,
// problem, config and source hash, except the failures that say nothing about the kernel (reusable_trial()).
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "codegen/family.h"
#include "codegen/problem.h"
#include "db/db.h"
#include "runtime/nvrtc_compiler.h"
#include "tuner/inputs.h"
#include "tuner/search.h"

namespace nsajit {

struct TuneOptions {
  std::vector<Problem> problems;       // one per sequence length
  std::vector<std::string> families;   // empty: every tunable family
  SearchOptions search;
  std::vector<int> devices = {0};      // GPU ordinals; trials are shared out across them
  std::filesystem::path db_path;
  std::string worker_exe;              // the nsajit binary (runs `tune-worker`)
  double timeout_s = 30;               // per measurement, before a worker is declared hung and killed
  int interleave_rounds = 12;
  bool live_progress = true;           // a \r progress line (else a line every 25%)
  // A job array's share: of each family's space (in enumerate_space order), the points whose index is
  // shard_index modulo shard_count, plus the default config (every shard measures it: the baseline). N shards'
  // databases merged with `nsajit db import` (the faster entry wins) hold the best entries one whole sweep finds.
  int shard_index = 0, shard_count = 1;
  // The queries the candidates are measured on (tuner/inputs.h); recorded with every trial and result. A
  // data-dependent family's result is stored under the overlap bucket most of the tuning selection's spans are in.
  InputKind inputs = InputKind::coherent;
};

// The family's default configs: its one default, or for a data-dependent family the default of each overlap bucket.
std::vector<TileConfig> default_configs(const KernelFamily& family, const Problem& problem);

// Parses "I/N" (0 <= I < N, N >= 1) for --shard; throws UsageError naming what is wrong.
std::pair<int, int> parse_shard(const std::string& s);

struct FamilyTuneResult {
  std::string family;
  std::string problem;
  size_t space = 0, pruned = 0, compile_errors = 0, failed = 0, measured = 0, reused = 0;
  std::string best_config, default_config;  // default_config: the default of the overlap bucket tuned for
  double best_ms = 0, default_ms = 0;  // interleaved medians; 0 when unknown
  std::string inputs;                  // the input kind measured on
  std::string overlap;                 // data-dependent families: the bucket the result is stored under, else ""
  double high_overlap_share = -1;      // data-dependent families: the share of high-overlap spans, else -1
  std::string note;                    // why there is no result, if there is none
};

struct TuneReport {
  std::vector<FamilyTuneResult> results;
  int64_t stale_trials = 0;  // trials of this device from another driver/NVRTC, ignored
  double seconds = 0;
};

// Why a compiled variant is not worth measuring (it spills, unless it is a default config of the family: the
// baseline; no CTA fits an SM's registers; its shared memory, dynamic plus static, exceeds the device's opt-in
// limit), or nullopt.
std::optional<std::string> prune_after_compile(const KernelFamily& family, const Problem& problem,
                                               const TileConfig& config, const ResourceUsage& usage, int max_smem);

// Whether a trial recorded by an earlier run stands for a measurement now, when a measurement may take up to
// `timeout_s`. The kernel's own results are reused: ok, wrong_result, pruned, compile errors, and launch errors
// and crashes of its measurement. Failures of the measuring process are not, because they say nothing about the
// kernel: preparing the inputs failed (for example the GPU memory still held by a worker killed a moment before),
// the worker could not be started, written to or could not create its context. A timeout is reused only when it
// was recorded under a timeout at least as long as `timeout_s` (the kernel then ran at least that long); a timeout
// whose limit cannot be read from its detail is not reused.
bool reusable_trial(const Trial& trial, double timeout_s);

// Of `recorded` (the trials of one candidate), the one a rerun reuses at precision `level`: reusable, at stage >=
// level, then the highest stage, the newest, the last added (TuningDb::find_trial's order); nullopt if none.
std::optional<Trial> pick_reusable(const std::vector<Trial>& recorded, int level, double timeout_s);

// Throws UsageError for bad options (unknown family, a family that cannot serve a problem, devices of different
// models) and DbError for a database it cannot use.
TuneReport run_tune(const TuneOptions& options);

}  // namespace nsajit
