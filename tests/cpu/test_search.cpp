// Search strategies (tuner/search.h) on synthetic cost functions: which candidates are measured, at which level,
// in which batches, within which budgets, and whether the finalists are the truly fastest. The noise of every
// measurement is a deterministic function of (landscape seed, candidate, level, repetition), so a search sees the
// same numbers whatever order it measures in.
#include <doctest/doctest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "base/error.h"
#include "tuner/search.h"
#include "tests/cpu/test_util.h"

using nsajit::Budget;
using nsajit::Measured;
using nsajit::SearchOptions;
using nsajit::SearchResult;
using nsajit::Strategy;

namespace {

std::string usage_error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const nsajit::UsageError& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("<not a UsageError: ") + e.what() + ">";
  }
  return "<no exception thrown>";
}

uint64_t splitmix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// A standard normal draw, a pure function of the key.
double gaussian(uint64_t key) {
  const uint64_t a = splitmix(key), b = splitmix(a);
  const double u1 = (static_cast<double>(a >> 11) + 0.5) / 9007199254740992.0;
  const double u2 = static_cast<double>(b >> 11) / 9007199254740992.0;
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
}

struct Call {
  std::vector<size_t> indices;
  int level;
  double clock_at_start;
};

// n candidates on a 20-wide grid: a smooth bowl (minimum near x=13, y=6, ~1.0 ms, rising to ~1.5 ms) plus, at
// `best`, a candidate 10% faster than anything else. Level-0 measurements carry 4% noise, level-1 ones 0.3%.
// Candidates with i % 7 == 3 fail at every level (reporting a tempting 0.01 ms); those with i % 23 == 11 pass
// level 0 and fail level 1. The fake clock advances by `seconds[level]` per measurement.
struct Synthetic {
  size_t n = 200;
  size_t best = 137;
  uint64_t seed = 7;
  double noise[2] = {0.04, 0.003};
  bool failures = true;
  double seconds[2] = {0.1, 1.0};
  double clock = 0;

  std::vector<Call> calls;
  std::vector<int> count[2];  // measurements per candidate and level
  std::vector<std::vector<double>> ms[2];  // every ok measurement, per candidate and level, in order
  std::vector<bool> failed_at[2];

  explicit Synthetic(size_t n_ = 200) : n(n_) {
    for (int l = 0; l < 2; ++l) {
      count[l].assign(n, 0);
      ms[l].assign(n, {});
      failed_at[l].assign(n, false);
    }
  }

  double true_ms(size_t i) const {
    if (i == best) return 0.9;
    const double x = static_cast<double>(i % 20), y = static_cast<double>(i / 20);
    return 1.0 + 0.002 * ((x - 13) * (x - 13) + 2 * (y - 6) * (y - 6)) + 0.02 + 0.01 * static_cast<double>(i % 3);
  }
  bool fails(size_t i, int level) const {
    if (!failures) return false;
    return i % 7 == 3 || (level == 1 && i % 23 == 11);
  }
  // The true best among candidates that pass both levels.
  size_t true_best() const {
    size_t b = n;
    for (size_t i = 0; i < n; ++i) {
      if (!fails(i, 0) && !fails(i, 1) && (b == n || true_ms(i) < true_ms(b))) b = i;
    }
    return b;
  }

  nsajit::MeasureBatch measure() {
    return [this](const std::vector<size_t>& indices, int level) {
      REQUIRE((level == 0 || level == 1));
      calls.push_back({indices, level, clock});
      std::vector<Measured> out;
      for (size_t i : indices) {
        REQUIRE(i < n);
        const int rep = count[level][i]++;
        clock += seconds[level];
        if (fails(i, level)) {
          failed_at[level][i] = true;
          out.push_back({false, 0.01});
          continue;
        }
        const uint64_t key = splitmix(seed) ^ splitmix(i * 4 + static_cast<uint64_t>(level)) ^
                             splitmix(static_cast<uint64_t>(rep) * 0x10001ull + 12345);
        const double v = true_ms(i) * (1 + noise[level] * gaussian(key));
        ms[level][i].push_back(v);
        out.push_back({true, v});
      }
      return out;
    };
  }
  std::function<double()> fake_clock() {
    return [this] { return clock; };
  }

  int64_t measurements(int level) const {
    int64_t s = 0;
    for (int c : count[level]) s += c;
    return s;
  }
  size_t largest_batch() const {
    size_t m = 0;
    for (const Call& c : calls) m = std::max(m, c.indices.size());
    return m;
  }
  // Every measured index, in the order measured.
  std::vector<size_t> order() const {
    std::vector<size_t> o;
    for (const Call& c : calls) o.insert(o.end(), c.indices.begin(), c.indices.end());
    return o;
  }
};

SearchOptions options_for(Strategy s) {
  SearchOptions o;
  o.strategy = s;
  return o;
}

// Finalists: no more than asked, distinct, never a candidate that failed a measurement, sorted by their latest
// measurement at the highest level they reached.
void check_finalists(const Synthetic& syn, const SearchResult& r, const SearchOptions& o) {
  CHECK(r.finalists.size() <= static_cast<size_t>(o.finalists));
  CHECK(std::set<size_t>(r.finalists.begin(), r.finalists.end()).size() == r.finalists.size());
  auto score = [&](size_t i) {
    const int l = syn.ms[1][i].empty() ? 0 : 1;
    return std::make_pair(-l, syn.ms[l][i].back());
  };
  for (size_t k = 0; k < r.finalists.size(); ++k) {
    const size_t i = r.finalists[k];
    CHECK(!syn.failed_at[0][i]);
    CHECK(!syn.failed_at[1][i]);
    REQUIRE((!syn.ms[0][i].empty() || !syn.ms[1][i].empty()));
    if (k > 0) CHECK(score(r.finalists[k - 1]) <= score(i));
  }
  CHECK(r.trials == syn.measurements(0) + syn.measurements(1));
}

}  // namespace

TEST_CASE("search: strategy names round-trip; anything else is a usage error listing them") {
  for (Strategy s : {Strategy::exhaustive, Strategy::random, Strategy::halving}) {
    CHECK(nsajit::parse_strategy(nsajit::strategy_name(s)) == s);
  }
  CHECK(std::string(nsajit::strategy_name(Strategy::halving)) == "halving");
  CHECK(nsajit::parse_strategy("random") == Strategy::random);
  for (const char* bad : {"", "Halving", "grid", "exhaustive ", "rand"}) {
    const std::string msg = usage_error_of([&] { nsajit::parse_strategy(bad); });
    CHECK_CONTAINS(msg, "exhaustive");
    CHECK_CONTAINS(msg, "random");
    CHECK_CONTAINS(msg, "halving");
  }
}

TEST_CASE("search: parse_budget takes trials, minutes or seconds, and nothing else") {
  Budget b = nsajit::parse_budget("40");
  CHECK(b.trials == 40);
  CHECK(!b.minutes);
  b = nsajit::parse_budget("1");
  CHECK(b.trials == 1);
  b = nsajit::parse_budget("5m");
  CHECK(!b.trials);
  REQUIRE(b.minutes);
  CHECK(*b.minutes == doctest::Approx(5.0));
  b = nsajit::parse_budget("2.5m");
  REQUIRE(b.minutes);
  CHECK(*b.minutes == doctest::Approx(2.5));
  b = nsajit::parse_budget("90s");
  CHECK(!b.trials);
  REQUIRE(b.minutes);
  CHECK(*b.minutes == doctest::Approx(1.5));
  b = nsajit::parse_budget("0.5m");
  REQUIRE(b.minutes);
  CHECK(*b.minutes == doctest::Approx(0.5));
  b = nsajit::parse_budget("30.0s");
  REQUIRE(b.minutes);
  CHECK(*b.minutes == doctest::Approx(0.5));

  for (const char* bad : {"", "0", "00", "0m", "0s", "0.0m", "-3", "-1m", "-5s", "m", "s", ".m", "abc", "5x", "5M",
                          "5 m", " 5", "5 ", "40.5", "1e3", "1e3m", "infm", "nanm", "+5", "5mm", "m5",
                          "99999999999999999999999"}) {
    CAPTURE(bad);
    const std::string msg = usage_error_of([&] { nsajit::parse_budget(bad); });
    CHECK_CONTAINS(msg, "\"40\"");
    CHECK_CONTAINS(msg, "\"5m\"");
    CHECK_CONTAINS(msg, "\"90s\"");
  }
}

TEST_CASE("search: exhaustive measures every candidate once at level 1 and finds the true best") {
  Synthetic syn;
  SearchOptions o = options_for(Strategy::exhaustive);
  const SearchResult r = nsajit::run_search(syn.n, syn.measure(), o);
  CHECK(r.trials == 200);
  CHECK(!r.budget_exhausted);
  CHECK(syn.measurements(0) == 0);
  for (size_t i = 0; i < syn.n; ++i) CHECK(syn.count[1][i] == 1);
  std::vector<size_t> in_order(syn.n);
  for (size_t i = 0; i < syn.n; ++i) in_order[i] = i;
  CHECK(syn.order() == in_order);
  CHECK(syn.largest_batch() == 16);
  CHECK(syn.calls.size() == 13);  // 12 of 16 and one of 8
  REQUIRE(r.finalists.size() == 3);
  CHECK(r.finalists[0] == syn.true_best());
  CHECK(r.finalists[0] == syn.best);
  check_finalists(syn, r, o);

  SUBCASE("`first` is measured in the first batch, the rest in index order") {
    Synthetic s2;
    const SearchResult r2 = nsajit::run_search(s2.n, s2.measure(), o, size_t{150});
    CHECK(r2.trials == 200);
    const std::vector<size_t> got = s2.order();
    REQUIRE(got.size() == 200);
    CHECK(got[0] == 150);
    std::vector<size_t> rest(got.begin() + 1, got.end()), expected;
    for (size_t i = 0; i < 200; ++i) {
      if (i != 150) expected.push_back(i);
    }
    CHECK(rest == expected);
    CHECK(r2.finalists == r.finalists);
  }
  SUBCASE("more finalists") {
    Synthetic s2;
    o.finalists = 10;
    const SearchResult r2 = nsajit::run_search(s2.n, s2.measure(), o);
    CHECK(r2.finalists.size() == 10);
    check_finalists(s2, r2, o);
  }
}

TEST_CASE("search: random respects the trial budget, includes `first`, is deterministic per seed") {
  auto run = [](uint64_t seed, std::optional<int64_t> trials, std::optional<size_t> first, Synthetic& syn) {
    SearchOptions o = options_for(Strategy::random);
    o.seed = seed;
    o.budget.trials = trials;
    const SearchResult r = nsajit::run_search(syn.n, syn.measure(), o, first);
    check_finalists(syn, r, o);
    return r;
  };
  Synthetic a, b, c, d;
  const SearchResult ra = run(1, 40, std::nullopt, a);
  CHECK(ra.trials == 40);
  CHECK(ra.budget_exhausted);
  CHECK(a.measurements(0) == 0);
  CHECK(a.measurements(1) == 40);
  const std::vector<size_t> oa = a.order();
  CHECK(std::set<size_t>(oa.begin(), oa.end()).size() == 40);  // distinct
  CHECK(a.largest_batch() <= 16);
  CHECK(a.calls.size() == 3);  // 16, 16, 8
  // Not index order: a random sample over the whole range.
  CHECK(!std::is_sorted(oa.begin(), oa.end()));
  CHECK(*std::max_element(oa.begin(), oa.end()) >= 100);

  run(1, 40, std::nullopt, b);
  CHECK(b.order() == a.order());
  run(2, 40, std::nullopt, c);
  CHECK(c.order() != a.order());
  CHECK(c.order().size() == 40);

  // The finalists are the best measured.
  const std::vector<size_t> measured = a.order();
  for (size_t i : measured) {
    if (!a.failed_at[1][i] && !ra.finalists.empty()) CHECK(a.ms[1][ra.finalists[0]][0] <= a.ms[1][i][0]);
  }

  // `first` comes first, once.
  const SearchResult rd = run(1, 40, size_t{77}, d);
  const std::vector<size_t> od = d.order();
  REQUIRE(!od.empty());
  CHECK(od[0] == 77);
  CHECK(std::count(od.begin(), od.end(), size_t{77}) == 1);
  CHECK(rd.trials == 40);

  SUBCASE("without a budget: every candidate once, and the true best") {
    Synthetic e;
    const SearchResult re = run(3, std::nullopt, std::nullopt, e);
    CHECK(re.trials == 200);
    CHECK(!re.budget_exhausted);
    for (size_t i = 0; i < e.n; ++i) CHECK(e.count[1][i] == 1);
    REQUIRE(!re.finalists.empty());
    CHECK(re.finalists[0] == e.true_best());
  }
  SUBCASE("a budget above n measures everything once, not exhausted") {
    Synthetic e;
    const SearchResult re = run(3, 1000, std::nullopt, e);
    CHECK(re.trials == 200);
    CHECK(!re.budget_exhausted);
  }
}

TEST_CASE("search: halving keeps the best 1/eta of each round and finds the best with few level-1 runs") {
  Synthetic syn;
  syn.failures = false;
  SearchOptions o = options_for(Strategy::halving);
  const SearchResult r = nsajit::run_search(syn.n, syn.measure(), o, size_t{42});
  CHECK(!r.budget_exhausted);
  REQUIRE(!r.finalists.empty());
  CHECK(r.finalists[0] == syn.best);
  CHECK(r.finalists.size() == 3);
  check_finalists(syn, r, o);

  // Round 0: every candidate once at level 0, `first` in the first batch, before any level-1 measurement.
  for (size_t i = 0; i < syn.n; ++i) CHECK(syn.count[0][i] == 1);
  size_t level0_calls = 0;
  while (level0_calls < syn.calls.size() && syn.calls[level0_calls].level == 0) ++level0_calls;
  for (size_t k = level0_calls; k < syn.calls.size(); ++k) CHECK(syn.calls[k].level == 1);
  CHECK(syn.calls[0].indices[0] == 42);

  // Level-1 rounds of 67, 23, 8, 3 (ceil of a third each time, at least 3): 101 level-1 runs instead of 200.
  auto in_round = [&](int round) {  // the candidates measured at level 1 at least `round` times
    std::vector<size_t> v;
    for (size_t i = 0; i < syn.n; ++i) {
      if (syn.count[1][i] >= round) v.push_back(i);
    }
    return v;
  };
  CHECK(in_round(1).size() == 67);
  CHECK(in_round(2).size() == 23);
  CHECK(in_round(3).size() == 8);
  CHECK(in_round(4).size() == 3);
  CHECK(in_round(5).size() == 0);
  CHECK(syn.measurements(1) == 101);
  CHECK(r.trials == 301);
  // The finalists are the last round's.
  const std::vector<size_t> last = in_round(4);
  CHECK(std::set<size_t>(r.finalists.begin(), r.finalists.end()) == std::set<size_t>(last.begin(), last.end()));

  // Each round's survivors are exactly the best of the round before by its latest measurement.
  auto check_cut = [&](const std::vector<size_t>& from, const std::vector<size_t>& kept, auto score) {
    std::vector<size_t> sorted = from;
    std::sort(sorted.begin(), sorted.end(), [&](size_t a, size_t b) { return score(a) < score(b); });
    sorted.resize(kept.size());
    CHECK(std::set<size_t>(sorted.begin(), sorted.end()) == std::set<size_t>(kept.begin(), kept.end()));
  };
  std::vector<size_t> all(syn.n);
  for (size_t i = 0; i < syn.n; ++i) all[i] = i;
  check_cut(all, in_round(1), [&](size_t i) { return syn.ms[0][i][0]; });
  for (int round = 1; round <= 3; ++round) {
    check_cut(in_round(round), in_round(round + 1),
              [&](size_t i) { return syn.ms[1][i][static_cast<size_t>(round) - 1]; });
  }

  SUBCASE("eta 4 and 5 finalists") {
    Synthetic s2;
    s2.failures = false;
    o.eta = 4;
    o.finalists = 5;
    const SearchResult r2 = nsajit::run_search(s2.n, s2.measure(), o);
    REQUIRE(!r2.finalists.empty());
    CHECK(r2.finalists[0] == s2.best);
    CHECK(r2.finalists.size() == 5);
    CHECK(s2.measurements(0) == 200);
    CHECK(s2.measurements(1) == 50 + 13 + 5);  // ceil(200/4), ceil(50/4), max(ceil(13/4), 5)
    check_finalists(s2, r2, o);
  }
}

TEST_CASE("search: halving never advances a failed candidate") {
  Synthetic syn;  // with failures at both levels
  SearchOptions o = options_for(Strategy::halving);
  const SearchResult r = nsajit::run_search(syn.n, syn.measure(), o);
  CHECK(!r.budget_exhausted);
  REQUIRE(!r.finalists.empty());
  CHECK(r.finalists[0] == syn.true_best());
  check_finalists(syn, r, o);
  for (size_t i = 0; i < syn.n; ++i) {
    CAPTURE(i);
    CHECK(syn.count[0][i] == 1);
    if (syn.failed_at[0][i]) CHECK(syn.count[1][i] == 0);
    if (syn.failed_at[1][i]) CHECK(syn.count[1][i] == 1);  // never measured again
  }
  // Some did fail at level 1 (the test means something), and still 67 went through round 1.
  int failed1 = 0;
  for (size_t i = 0; i < syn.n; ++i) failed1 += syn.failed_at[1][i] ? 1 : 0;
  CHECK(failed1 > 0);
  int round1 = 0;
  for (size_t i = 0; i < syn.n; ++i) round1 += syn.count[1][i] >= 1 ? 1 : 0;
  CHECK(round1 == 67);
  CHECK(syn.measurements(1) <= 101);
}

TEST_CASE("search: halving drops candidates that fail a later level-1 measurement") {
  // 30 candidates, 1 + i ms at both levels; rounds: 30 at level 0, then 10 and 4 at level 1.
  std::map<std::pair<size_t, int>, int> seen;  // (candidate, level) -> measurements
  std::vector<std::pair<size_t, int>> failing;  // (candidate, which level-1 measurement fails, from 1)
  auto measure = [&](const std::vector<size_t>& idx, int level) {
    std::vector<Measured> out;
    for (size_t i : idx) {
      const int k = ++seen[{i, level}];
      const bool fail = level == 1 && std::find(failing.begin(), failing.end(), std::make_pair(i, k)) != failing.end();
      out.push_back({!fail, 1.0 + static_cast<double>(i)});
    }
    return out;
  };
  SearchOptions o = options_for(Strategy::halving);
  SUBCASE("the best fails its second level-1 measurement") {
    failing = {{0, 2}};
    const SearchResult r = nsajit::run_search(30, measure, o);
    CHECK(r.finalists == std::vector<size_t>{1, 2, 3});
    CHECK(seen[{0, 1}] == 2);  // not measured after it failed
    CHECK(r.trials == 30 + 10 + 4);  // round 2 leaves 3 ok: done
  }
  SUBCASE("so many fail in round 1 that fewer than `finalists` are left") {
    failing = {{0, 1}, {1, 1}, {2, 1}, {3, 1}, {4, 1}, {5, 1}, {6, 1}, {7, 1}};
    const SearchResult r = nsajit::run_search(30, measure, o);
    CHECK(r.finalists == std::vector<size_t>{8, 9});
    CHECK(r.trials == 30 + 10);
  }
}

TEST_CASE("search: halving finds a near-best config on random landscapes with far fewer level-1 runs") {
  int exact = 0;
  for (uint64_t land = 0; land < 30; ++land) {
    CAPTURE(land);
    // A random landscape: the bowl plus per-candidate jitter of up to 15%, no planted minimum.
    Synthetic syn;
    syn.failures = (land % 2) == 0;
    syn.seed = land + 100;
    syn.best = syn.n;  // none planted
    std::vector<double> jitter(syn.n);
    for (size_t i = 0; i < syn.n; ++i) jitter[i] = 0.15 * (0.5 + 0.5 * std::tanh(gaussian(land * 1000 + i)));
    Synthetic* s = &syn;
    auto measure = [s, &jitter](const std::vector<size_t>& idx, int level) {
      std::vector<Measured> out = s->measure()(idx, level);
      // Rescale the bowl's measurements by the landscape's jitter (noise stays relative).
      for (size_t k = 0; k < idx.size(); ++k) {
        if (out[k].ok) {
          out[k].ms *= 1 + jitter[idx[k]];
          s->ms[level][idx[k]].back() = out[k].ms;
        }
      }
      return out;
    };
    auto truth = [&](size_t i) { return syn.true_ms(i) * (1 + jitter[i]); };
    double best = 1e9;
    size_t best_i = syn.n;
    for (size_t i = 0; i < syn.n; ++i) {
      if (!syn.fails(i, 0) && !syn.fails(i, 1) && truth(i) < best) best = truth(i), best_i = i;
    }
    SearchOptions o = options_for(Strategy::halving);
    o.seed = land;
    const SearchResult r = nsajit::run_search(syn.n, measure, o);
    REQUIRE(!r.finalists.empty());
    CHECK(truth(r.finalists[0]) <= best * 1.01);
    exact += r.finalists[0] == best_i ? 1 : 0;
    CHECK(syn.measurements(1) <= 101);  // vs 200 for exhaustive
    check_finalists(syn, r, o);
  }
  CHECK(exact >= 24);
}

TEST_CASE("search: trial budgets stop every strategy and count every level") {
  SUBCASE("exhaustive: the first `trials` in index order") {
    Synthetic syn;
    SearchOptions o = options_for(Strategy::exhaustive);
    o.budget.trials = 37;
    const SearchResult r = nsajit::run_search(syn.n, syn.measure(), o);
    CHECK(r.trials == 37);
    CHECK(r.budget_exhausted);
    const std::vector<size_t> got = syn.order();
    REQUIRE(got.size() == 37);
    for (size_t i = 0; i < 37; ++i) CHECK(got[i] == i);
    CHECK(syn.calls.back().indices.size() == 37 - 32);  // the last batch cut to fit
    check_finalists(syn, r, o);
  }
  SUBCASE("exhaustive: exactly n is enough") {
    Synthetic syn;
    SearchOptions o = options_for(Strategy::exhaustive);
    o.budget.trials = 200;
    const SearchResult r = nsajit::run_search(syn.n, syn.measure(), o);
    CHECK(r.trials == 200);
    CHECK(!r.budget_exhausted);
  }
  SUBCASE("halving: enough for rounds 0 and 1, not the later ones: stops within level 1, counting level 0") {
    Synthetic syn;
    syn.failures = false;
    SearchOptions o = options_for(Strategy::halving);
    o.budget.trials = 280;  // 200 + 67 + 13 of the 23 of round 2
    const SearchResult r = nsajit::run_search(syn.n, syn.measure(), o);
    CHECK(r.trials == 280);
    CHECK(r.budget_exhausted);
    CHECK(syn.measurements(0) == 200);
    CHECK(syn.measurements(1) == 80);
    CHECK(syn.calls.back().indices.size() == 13);  // round 2's first batch, cut to the 13 trials left
    REQUIRE(!r.finalists.empty());
    CHECK(r.finalists[0] == syn.best);
    check_finalists(syn, r, o);
  }
  SUBCASE("halving: a budget below n + the first level-1 round measures at level 1 only") {
    Synthetic syn;
    SearchOptions o = options_for(Strategy::halving);
    o.budget.trials = 50;
    const SearchResult r = nsajit::run_search(syn.n, syn.measure(), o, size_t{5});
    CHECK(r.trials == 50);
    CHECK(r.budget_exhausted);
    CHECK(syn.measurements(0) == 0);
    CHECK(syn.measurements(1) == 50);
    const std::vector<size_t> got = syn.order();
    REQUIRE(got.size() == 50);
    CHECK(got[0] == 5);
    CHECK(std::set<size_t>(got.begin(), got.end()).size() == 50);
    check_finalists(syn, r, o);
    // The same subset as random search with that seed.
    Synthetic rnd;
    SearchOptions ro = options_for(Strategy::random);
    ro.budget.trials = 50;
    nsajit::run_search(rnd.n, rnd.measure(), ro, size_t{5});
    CHECK(rnd.order() == syn.order());
  }
  SUBCASE("halving: a budget of at least n but below n + 67: everyone once at level 1, not exhausted") {
    Synthetic syn;
    SearchOptions o = options_for(Strategy::halving);
    o.budget.trials = 250;
    const SearchResult r = nsajit::run_search(syn.n, syn.measure(), o);
    CHECK(r.trials == 200);
    CHECK(!r.budget_exhausted);
    for (size_t i = 0; i < syn.n; ++i) CHECK(syn.count[1][i] == 1);
    REQUIRE(!r.finalists.empty());
    CHECK(r.finalists[0] == syn.true_best());
  }
  SUBCASE("halving: exactly the full schedule is enough") {
    Synthetic syn;
    syn.failures = false;
    SearchOptions o = options_for(Strategy::halving);
    o.budget.trials = 301;
    const SearchResult r = nsajit::run_search(syn.n, syn.measure(), o);
    CHECK(r.trials == 301);
    CHECK(!r.budget_exhausted);
  }
}

TEST_CASE("search: a time budget stops before the next batch and returns the best so far") {
  SUBCASE("exhaustive") {
    Synthetic syn;  // 1 s per level-1 measurement
    SearchOptions o = options_for(Strategy::exhaustive);
    o.budget.minutes = 1.0;
    o.elapsed_seconds = syn.fake_clock();
    const SearchResult r = nsajit::run_search(syn.n, syn.measure(), o);
    CHECK(r.budget_exhausted);
    CHECK(r.trials == 64);  // 48 s, 64 s: stop
    for (const Call& c : syn.calls) CHECK(c.clock_at_start < 60.0);
    check_finalists(syn, r, o);
    // The best of the 64 measured.
    size_t b = syn.n;
    for (size_t i = 0; i < 64; ++i) {
      if (!syn.failed_at[1][i] && (b == syn.n || syn.ms[1][i][0] < syn.ms[1][b][0])) b = i;
    }
    REQUIRE(!r.finalists.empty());
    CHECK(r.finalists[0] == b);
  }
  SUBCASE("random") {
    Synthetic syn;
    SearchOptions o = options_for(Strategy::random);
    o.budget.minutes = 0.5;
    o.budget.trials = 100;
    o.elapsed_seconds = syn.fake_clock();
    const SearchResult r = nsajit::run_search(syn.n, syn.measure(), o);
    CHECK(r.budget_exhausted);
    CHECK(r.trials == 32);
    check_finalists(syn, r, o);
  }
  SUBCASE("halving, stopped within round 1: prefers the candidates measured at level 1") {
    Synthetic syn;  // round 0: 200 x 0.1 s = 20 s; then 16 s per level-1 batch: 36, 52, 68
    syn.failures = false;
    SearchOptions o = options_for(Strategy::halving);
    o.budget.minutes = 1.0;
    o.elapsed_seconds = syn.fake_clock();
    const SearchResult r = nsajit::run_search(syn.n, syn.measure(), o);
    CHECK(r.budget_exhausted);
    CHECK(syn.measurements(0) == 200);
    CHECK(syn.measurements(1) == 48);
    CHECK(r.trials == 248);
    for (const Call& c : syn.calls) CHECK(c.clock_at_start < 60.0);
    REQUIRE(r.finalists.size() == 3);
    for (size_t i : r.finalists) CHECK(syn.count[1][i] == 1);
    CHECK(r.finalists[0] == syn.best);
    check_finalists(syn, r, o);
    // Round 1 went best first: the 48 measured are the best 48 by level 0.
    std::vector<size_t> by0(syn.n);
    for (size_t i = 0; i < syn.n; ++i) by0[i] = i;
    std::sort(by0.begin(), by0.end(), [&](size_t a, size_t b) { return syn.ms[0][a][0] < syn.ms[0][b][0]; });
    for (size_t k = 0; k < syn.n; ++k) CHECK(syn.count[1][by0[k]] == (k < 48 ? 1 : 0));
  }
  SUBCASE("halving, stopped within round 1: level-1 times rank first even when level 0 reads lower") {
    // 30 candidates of 1 + i ms at level 1 and half that at level 0 (a biased brief measurement); 1 s per
    // measurement, batches of 4: round 0 ends at 30 s, the first level-1 batch (0..3) at 34 s, where the budget is.
    double clock = 0;
    auto measure = [&](const std::vector<size_t>& idx, int level) {
      std::vector<Measured> out;
      for (size_t i : idx) out.push_back({true, (1.0 + static_cast<double>(i)) * (level == 0 ? 0.5 : 1.0)});
      clock += static_cast<double>(idx.size());
      return out;
    };
    SearchOptions o = options_for(Strategy::halving);
    o.batch_size = 4;
    o.budget.minutes = 34.0 / 60.0;
    o.elapsed_seconds = [&] { return clock; };
    const SearchResult r = nsajit::run_search(30, measure, o);
    CHECK(r.budget_exhausted);
    CHECK(r.trials == 34);
    CHECK(r.finalists == std::vector<size_t>{0, 1, 2});  // not 0, 1, 4 (4 reads 2.5 ms at level 0)
  }
  SUBCASE("halving, stopped within round 0: the best at level 0 so far") {
    Synthetic syn;
    syn.seconds[0] = 1.0;
    SearchOptions o = options_for(Strategy::halving);
    o.budget.minutes = 0.5;
    o.elapsed_seconds = syn.fake_clock();
    const SearchResult r = nsajit::run_search(syn.n, syn.measure(), o);
    CHECK(r.budget_exhausted);
    CHECK(r.trials == 32);
    CHECK(syn.measurements(1) == 0);
    REQUIRE(r.finalists.size() == 3);
    check_finalists(syn, r, o);
  }
  SUBCASE("a generous budget changes nothing") {
    Synthetic syn;
    SearchOptions o = options_for(Strategy::halving);
    o.budget.minutes = 60.0;
    o.elapsed_seconds = syn.fake_clock();
    const SearchResult r = nsajit::run_search(syn.n, syn.measure(), o);
    CHECK(!r.budget_exhausted);
    CHECK(syn.measurements(0) == 200);
  }
  SUBCASE("the default clock is a real one") {
    Synthetic syn;
    auto inner = syn.measure();
    auto slow = [&](const std::vector<size_t>& idx, int level) {
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
      return inner(idx, level);
    };
    SearchOptions o = options_for(Strategy::exhaustive);
    o.budget.minutes = 1e-5;  // 0.6 ms
    const SearchResult r = nsajit::run_search(syn.n, slow, o);
    CHECK(r.budget_exhausted);
    CHECK(r.trials <= 16);
  }
}

TEST_CASE("search: batches never exceed batch_size") {
  for (Strategy s : {Strategy::exhaustive, Strategy::random, Strategy::halving}) {
    for (size_t bs : {size_t{1}, size_t{5}, size_t{16}, size_t{1000}}) {
      const std::string name(nsajit::strategy_name(s));
      CAPTURE(name);
      CAPTURE(bs);
      Synthetic syn;
      SearchOptions o = options_for(s);
      o.batch_size = bs;
      const SearchResult r = nsajit::run_search(syn.n, syn.measure(), o, size_t{9});
      CHECK(syn.largest_batch() == std::min<size_t>(bs, 200));
      for (const Call& c : syn.calls) CHECK(!c.indices.empty());
      CHECK(syn.calls[0].indices[0] == 9);
      REQUIRE(!r.finalists.empty());
      CHECK(r.finalists[0] == syn.true_best());
      check_finalists(syn, r, o);
    }
  }
}

TEST_CASE("search: degenerate inputs") {
  for (Strategy s : {Strategy::exhaustive, Strategy::random, Strategy::halving}) {
    const std::string name(nsajit::strategy_name(s));
    CAPTURE(name);
    SearchOptions o = options_for(s);
    SUBCASE("zero candidates") {
      Synthetic syn(0);
      const SearchResult r = nsajit::run_search(0, syn.measure(), o);
      CHECK(r.finalists.empty());
      CHECK(r.trials == 0);
      CHECK(!r.budget_exhausted);
      CHECK(syn.calls.empty());
    }
    SUBCASE("every candidate fails") {
      Synthetic syn(50);
      auto failing = [&](const std::vector<size_t>& idx, int level) {
        syn.calls.push_back({idx, level, 0});
        return std::vector<Measured>(idx.size(), Measured{false, 0.001});
      };
      const SearchResult r = nsajit::run_search(50, failing, o);
      CHECK(r.finalists.empty());
      CHECK(r.trials == 50);  // halving: round 0 only
    }
    SUBCASE("non-finite or negative times count as failures") {
      Synthetic syn(4);
      auto odd = [&](const std::vector<size_t>& idx, int) {
        std::vector<Measured> out;
        for (size_t i : idx) {
          out.push_back(i == 0   ? Measured{true, std::nan("")}
                        : i == 1 ? Measured{true, -1.0}
                        : i == 2 ? Measured{true, std::numeric_limits<double>::infinity()}
                                 : Measured{true, 2.0});
        }
        return out;
      };
      const SearchResult r = nsajit::run_search(4, odd, o);
      CHECK(r.finalists == std::vector<size_t>{3});
    }
    SUBCASE("one and two candidates (no more than the finalists): level 1 only") {
      for (size_t n : {size_t{1}, size_t{2}, size_t{3}}) {
        Synthetic syn(n);
        syn.failures = false;
        syn.best = n - 1;
        const SearchResult r = nsajit::run_search(n, syn.measure(), o, size_t{0});
        CHECK(r.trials == static_cast<int64_t>(n));
        CHECK(syn.measurements(0) == 0);
        CHECK(r.finalists.size() == n);
        CHECK(r.finalists[0] == n - 1);
      }
    }
    SUBCASE("a bad `first`, options or callback") {
      Synthetic syn(10);
      CHECK_THROWS_AS(nsajit::run_search(10, syn.measure(), o, size_t{10}), nsajit::Error);
      CHECK_THROWS_AS(nsajit::run_search(0, syn.measure(), o, size_t{0}), nsajit::Error);
      SearchOptions bad = o;
      bad.batch_size = 0;
      CHECK_THROWS_AS(nsajit::run_search(10, syn.measure(), bad), nsajit::UsageError);
      bad = o;
      bad.finalists = 0;
      CHECK_THROWS_AS(nsajit::run_search(10, syn.measure(), bad), nsajit::UsageError);
      bad = o;
      bad.budget.trials = 0;
      CHECK_THROWS_AS(nsajit::run_search(10, syn.measure(), bad), nsajit::UsageError);
      bad = o;
      bad.budget.minutes = -1.0;
      CHECK_THROWS_AS(nsajit::run_search(10, syn.measure(), bad), nsajit::UsageError);
      auto short_answer = [](const std::vector<size_t>& idx, int) {
        return std::vector<Measured>(idx.size() - 1, Measured{true, 1.0});
      };
      CHECK_THROWS_AS(nsajit::run_search(10, short_answer, o), nsajit::Error);
      CHECK(syn.calls.empty());
    }
  }
  SUBCASE("halving with eta < 2") {
    Synthetic syn(10);
    SearchOptions o = options_for(Strategy::halving);
    o.eta = 1;
    CHECK_THROWS_AS(nsajit::run_search(10, syn.measure(), o), nsajit::UsageError);
    o.strategy = Strategy::exhaustive;  // eta only matters to halving
    CHECK_NOTHROW(nsajit::run_search(10, syn.measure(), o));
  }
}
