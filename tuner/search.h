#pragma once
// Search strategies over a list of candidates, independent of GPUs: they decide which candidates are measured
// at which precision, through a callback. Tested on synthetic cost functions (tests/cpu/test_search.cpp).
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace nsajit {

enum class Strategy { exhaustive, random, halving };
std::string_view strategy_name(Strategy s);
Strategy parse_strategy(std::string_view s);  // throws UsageError listing the strategies

// "--budget": a number of trials ("40") or minutes ("5m", "2.5m"); throws UsageError on anything else.
struct Budget {
  std::optional<int64_t> trials;
  std::optional<double> minutes;
};
Budget parse_budget(std::string_view s);

// Precision levels: 0 is a brief measurement (few repetitions), 1 a full one. Exhaustive and random measure at
// level 1 only; halving measures everything at 0, then the best 1/eta again at 1.
struct Measured {
  bool ok = false;   // false: failed (compile, launch, wrong result, timeout): never advances, never wins
  double ms = 0;
};
// Measures the given candidates (indices into the candidate list) at a level; the batch lets the caller spread
// it over several GPUs. Returns one result per index, in order.
using MeasureBatch = std::function<std::vector<Measured>(const std::vector<size_t>& indices, int level)>;

struct SearchOptions {
  Strategy strategy = Strategy::halving;
  Budget budget;
  uint64_t seed = 1;
  int eta = 3;          // halving: keep the best ceil(n / eta) each round
  int finalists = 3;    // stop halving when this many (or fewer) remain
  size_t batch_size = 16;  // candidates per MeasureBatch call, so a time budget can stop between batches
  // Seconds elapsed since the search started (a clock the tests can replace).
  std::function<double()> elapsed_seconds;
};

struct SearchResult {
  std::vector<size_t> finalists;  // best first, at most options.finalists, only ok candidates
  int64_t trials = 0;             // measurements made (all levels)
  bool budget_exhausted = false;  // stopped early by the budget
};

// Runs the strategy over `n` candidates. `first` (if given) is measured in the first batch (the default config,
// so a speed-up can always be reported). Budget: trials counts measurements at every level; minutes is checked
// between batches (batches are cut to fit the trial budget; a time budget stops before the next batch).
//
// The rules in full:
// - exhaustive: every candidate at level 1, in index order (`first` moved to the front).
// - random: a permutation drawn from std::mt19937_64(seed) (the same on every standard library; `first` moved
//   to the front), measured at level 1 until the trial budget (default: every candidate) or the time budget.
// - halving: round 0 measures every candidate at level 0 (index order, `first` at the front); each next round
//   keeps the best ceil(k / eta) ok ones of the k in the round before (at least `finalists`, when that many are
//   ok) and measures them at level 1, best first, until no more than `finalists` ok ones are left. A candidate's
//   score is its latest measurement at the highest level it reached. Two exceptions measure at level 1 only,
//   like exhaustive (every candidate fits the trial budget) or random (it does not):
//   * n <= finalists (a level-0 round could not cut anyone);
//   * a trial budget smaller than round 0 over all n plus the first level-1 round: a level-0 trial costs as much
//     budget as a level-1 one, so a level-0 round over a subset would see fewer candidates, less precisely, than
//     random search with the same trials. Larger trial budgets run round 0 and round 1 whole, and cut the later
//     level-1 rounds where the budget runs out.
// - Failed measurements (ok false, or ms not finite or negative) mark the candidate failed for good: it is never
//   measured again and never a finalist.
// - When a budget stops the search, the finalists are the best of the candidates still in contention (everyone
//   for exhaustive and random; for halving, those of the round being measured): those measured at the higher
//   level first, then by their latest measurement. So halving stopped within a level-1 round prefers the round's
//   candidates measured at level 1, then the rest by their level-0 time.
// - budget_exhausted: a budget made the search skip measurements it would otherwise have made (a trial budget
//   below n for exhaustive and random, or below the level-1 rounds' needs for halving; a time budget that ran out
//   before the last batch).
// - Throws Error if `first` >= n or the callback returns the wrong number of results; UsageError for
//   batch_size 0, finalists < 1, eta < 2 (halving) or a budget that is not positive.
SearchResult run_search(size_t n, const MeasureBatch& measure, const SearchOptions& options,
                        std::optional<size_t> first = std::nullopt);

}  // namespace nsajit
