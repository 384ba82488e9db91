#include "tuner/search.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <chrono>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <system_error>
#include <utility>

#include "base/error.h"

namespace nsajit {

std::string_view strategy_name(Strategy s) {
  switch (s) {
    case Strategy::exhaustive:
      return "exhaustive";
    case Strategy::random:
      return "random";
    case Strategy::halving:
      return "halving";
  }
  return "?";
}

Strategy parse_strategy(std::string_view s) {
  for (Strategy st : {Strategy::exhaustive, Strategy::random, Strategy::halving}) {
    if (s == strategy_name(st)) return st;
  }
  throw UsageError("unknown search strategy '" + std::string(s) + "': use one of exhaustive, random, halving");
}

namespace {

[[noreturn]] void bad_budget(std::string_view s) {
  throw UsageError("invalid budget '" + std::string(s) +
                   "': give a number of trials (\"40\"), minutes (\"5m\", \"2.5m\") or seconds (\"90s\"), "
                   "greater than zero");
}

// A positive, finite decimal number that fills all of `s` (no exponent, no sign, no spaces).
std::optional<double> positive_number(std::string_view s) {
  if (s.empty() || !(std::isdigit(static_cast<unsigned char>(s.front())) || s.front() == '.')) return std::nullopt;
  double v = 0;
  auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v, std::chars_format::fixed);
  if (ec != std::errc() || ptr != s.data() + s.size() || !std::isfinite(v) || v <= 0) return std::nullopt;
  return v;
}

}  // namespace

Budget parse_budget(std::string_view s) {
  Budget b;
  if (s.empty()) bad_budget(s);
  const char unit = s.back();
  if (unit == 'm' || unit == 's') {
    std::optional<double> v = positive_number(s.substr(0, s.size() - 1));
    if (!v) bad_budget(s);
    b.minutes = unit == 'm' ? *v : *v / 60.0;
    return b;
  }
  if (!std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; })) bad_budget(s);
  int64_t trials = 0;
  auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), trials);
  if (ec != std::errc() || ptr != s.data() + s.size() || trials <= 0) bad_budget(s);
  b.trials = trials;
  return b;
}

namespace {

// What is known about one candidate: its latest measurement at the highest level it reached.
struct Record {
  int level = -1;  // -1: never measured
  double ms = 0;
  bool failed = false;  // failed at some measurement: never advances, never wins
};

class Search {
public:
  Search(size_t n, const MeasureBatch& measure, const SearchOptions& options)
      : measure_(measure), options_(options), records_(n) {
    if (options.elapsed_seconds) {
      elapsed_ = options.elapsed_seconds;
    } else {
      const auto start = std::chrono::steady_clock::now();
      elapsed_ = [start] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(); };
    }
  }

  // Measures `indices` at `level`, in batches of options.batch_size. Before each batch, a time budget that has run
  // out stops it; each batch is cut to the trials left. Returns false (and marks the budget exhausted) when a
  // budget stopped it before every index was measured.
  bool measure_all(const std::vector<size_t>& indices, int level) {
    for (size_t pos = 0; pos < indices.size();) {
      if (options_.budget.minutes && elapsed_() >= *options_.budget.minutes * 60.0) return stop();
      size_t count = std::min(options_.batch_size, indices.size() - pos);
      if (options_.budget.trials) {
        const int64_t left = *options_.budget.trials - trials_;
        if (left <= 0) return stop();
        count = std::min(count, static_cast<size_t>(left));
      }
      const std::vector<size_t> batch(indices.begin() + static_cast<std::ptrdiff_t>(pos),
                                      indices.begin() + static_cast<std::ptrdiff_t>(pos + count));
      const std::vector<Measured> results = measure_(batch, level);
      if (results.size() != batch.size()) {
        throw Error("search: the measure callback returned " + std::to_string(results.size()) + " results for " +
                    std::to_string(batch.size()) + " candidates");
      }
      trials_ += static_cast<int64_t>(count);
      for (size_t i = 0; i < count; ++i) record(batch[i], level, results[i]);
      pos += count;
    }
    return true;
  }

  // The ok, measured candidates of `pool`, best first: the highest level reached first, then the latest
  // measurement at that level, then the index (so ties are deterministic).
  std::vector<size_t> ranked(const std::vector<size_t>& pool) const {
    std::vector<size_t> out;
    for (size_t i : pool) {
      if (!records_[i].failed && records_[i].level >= 0) out.push_back(i);
    }
    std::sort(out.begin(), out.end(), [&](size_t a, size_t b) {
      const Record &ra = records_[a], &rb = records_[b];
      if (ra.level != rb.level) return ra.level > rb.level;
      if (ra.ms != rb.ms) return ra.ms < rb.ms;
      return a < b;
    });
    return out;
  }

  SearchResult result(const std::vector<size_t>& pool) const {
    SearchResult r;
    r.finalists = ranked(pool);
    if (r.finalists.size() > static_cast<size_t>(options_.finalists)) {
      r.finalists.resize(static_cast<size_t>(options_.finalists));
    }
    r.trials = trials_;
    r.budget_exhausted = exhausted_;
    return r;
  }

  void mark_exhausted() { exhausted_ = true; }

private:
  bool stop() {
    exhausted_ = true;
    return false;
  }

  void record(size_t i, int level, const Measured& m) {
    Record& r = records_.at(i);
    if (!m.ok || !std::isfinite(m.ms) || m.ms < 0) {
      r.failed = true;
      return;
    }
    if (level >= r.level) {
      r.level = level;
      r.ms = m.ms;
    }
  }

  const MeasureBatch& measure_;
  const SearchOptions& options_;
  std::function<double()> elapsed_;
  std::vector<Record> records_;
  int64_t trials_ = 0;
  bool exhausted_ = false;
};

// 0..n-1 with `first` moved to the front.
std::vector<size_t> index_order(size_t n, std::optional<size_t> first) {
  std::vector<size_t> v(n);
  std::iota(v.begin(), v.end(), size_t{0});
  if (first) {
    const auto it = v.begin() + static_cast<std::ptrdiff_t>(*first);
    std::rotate(v.begin(), it, it + 1);
  }
  return v;
}

// A permutation of 0..n-1 drawn from mt19937_64(seed), with `first` moved to the front. Fisher-Yates with a plain
// modulo draw rather than std::shuffle, whose draws differ between standard libraries: the same seed gives the
// same order everywhere (the modulo bias is below 2^-40 for any realistic n).
std::vector<size_t> random_order(size_t n, uint64_t seed, std::optional<size_t> first) {
  std::vector<size_t> v(n);
  std::iota(v.begin(), v.end(), size_t{0});
  std::mt19937_64 rng(seed);
  for (size_t i = n; i > 1; --i) std::swap(v[i - 1], v[static_cast<size_t>(rng() % i)]);
  if (first) {
    auto it = std::find(v.begin(), v.end(), *first);
    std::rotate(v.begin(), it, it + 1);
  }
  return v;
}

// Measures `order` (cut to the trial budget) at level 1; the finalists are the best of what was measured.
SearchResult level1_search(Search& s, std::vector<size_t> order, const SearchOptions& options) {
  if (options.budget.trials && static_cast<uint64_t>(*options.budget.trials) < order.size()) {
    order.resize(static_cast<size_t>(*options.budget.trials));
    s.mark_exhausted();
  }
  s.measure_all(order, 1);
  return s.result(order);
}

// How many of a halving round of k candidates go on to the next round.
size_t halving_keep(size_t k, const SearchOptions& options) {
  const size_t eta = static_cast<size_t>(options.eta);
  const size_t finalists = static_cast<size_t>(options.finalists);
  return std::min(k, std::max((k + eta - 1) / eta, finalists));
}

SearchResult halving_search(Search& s, size_t n, const SearchOptions& options, std::optional<size_t> first) {
  const size_t finalists = static_cast<size_t>(options.finalists);
  // Nothing to cut: a level-0 round would keep everyone, so measure at level 1 straight away. With a trial
  // budget too small for round 0 over all candidates plus the first level-1 round, trials are better spent at
  // level 1 (a level-0 trial costs as much budget as a level-1 one): measure what the budget allows at level 1,
  // in index order if that is every candidate, else in the seeded random order of the random strategy.
  const bool budget_too_small =
      options.budget.trials && static_cast<uint64_t>(*options.budget.trials) < n + halving_keep(n, options);
  if (n <= finalists || budget_too_small) {
    const bool all = !options.budget.trials || static_cast<uint64_t>(*options.budget.trials) >= n;
    return level1_search(s, all ? index_order(n, first) : random_order(n, options.seed, first), options);
  }
  // Round 0: everyone at level 0, `first` in the first batch.
  std::vector<size_t> pool = index_order(n, first);
  if (!s.measure_all(pool, 0)) return s.result(pool);
  // Then the best ceil(k / eta) (at least `finalists`) of each round of k, at level 1, best first so a budget that
  // runs out mid-round has measured the most promising ones; until no more than `finalists` are left.
  while (true) {
    std::vector<size_t> ranked = s.ranked(pool);
    ranked.resize(std::min(ranked.size(), halving_keep(pool.size(), options)));
    pool = std::move(ranked);
    if (!s.measure_all(pool, 1)) return s.result(pool);
    if (s.ranked(pool).size() <= finalists) return s.result(pool);
  }
}

}  // namespace

SearchResult run_search(size_t n, const MeasureBatch& measure, const SearchOptions& options,
                        std::optional<size_t> first) {
  if (first && *first >= n) {
    throw Error("search: the first candidate " + std::to_string(*first) + " is out of range (" + std::to_string(n) +
                " candidates)");
  }
  if (options.batch_size == 0) throw UsageError("search: the batch size must be at least 1");
  if (options.finalists < 1) throw UsageError("search: the number of finalists must be at least 1");
  if (options.strategy == Strategy::halving && options.eta < 2) {
    throw UsageError("search: halving needs eta >= 2 (got " + std::to_string(options.eta) + ")");
  }
  if (options.budget.trials && *options.budget.trials <= 0) throw UsageError("search: a trial budget must be > 0");
  if (options.budget.minutes && !(*options.budget.minutes > 0)) {
    throw UsageError("search: a time budget must be > 0 minutes");
  }
  Search s(n, measure, options);
  switch (options.strategy) {
    case Strategy::exhaustive:
      return level1_search(s, index_order(n, first), options);
    case Strategy::random:
      return level1_search(s, random_order(n, options.seed, first), options);
    case Strategy::halving:
      return halving_search(s, n, options, first);
  }
  throw Error("search: unknown strategy");
}

}  // namespace nsajit
