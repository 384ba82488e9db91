// Random test inputs (tuner/inputs.h) and test seeds (tests/test_seed.h): a seed gives the same tensor whatever the
// number of threads and the machine, and NSAJIT_TEST_SEED moves every seed in a way that can be replayed.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "reference/reference.h"
#include "tests/test_seed.h"
#include "codegen/overlap.h"
#include "tuner/inputs.h"

using nsajit::Dtype;
using nsajit::random_normal_bits;

TEST_CASE("inputs: a seed gives the same tensor with 1 thread and with N") {
  for (Dtype dt : {Dtype::bf16, Dtype::fp16}) {
    for (size_t n : {size_t{0}, size_t{1}, size_t{2}, size_t{7}, size_t{33}, size_t{1000}, size_t{100001}}) {
      CAPTURE(n);
      const std::vector<uint16_t> one = random_normal_bits(n, dt, 42, 1);
      for (unsigned threads : {2u, 3u, 5u, 16u, 64u}) {
        CAPTURE(threads);
        CHECK(random_normal_bits(n, dt, 42, threads) == one);
      }
      CHECK(random_normal_bits(n, dt, 42) == one);  // the machine's own count
    }
  }
}

TEST_CASE("inputs: element i depends on the seed and i alone") {
  const std::vector<uint16_t> longer = random_normal_bits(5000, Dtype::bf16, 7, 3);
  const std::vector<uint16_t> shorter = random_normal_bits(1001, Dtype::bf16, 7, 4);
  CHECK(std::vector<uint16_t>(longer.begin(), longer.begin() + 1001) == shorter);
  CHECK(random_normal_bits(1000, Dtype::bf16, 8, 1) != random_normal_bits(1000, Dtype::bf16, 7, 1));
  // The values themselves are fixed: the same on every machine and in every version (a change here changes every
  // test's data, which then must be said).
  const std::vector<uint16_t> first = random_normal_bits(6, Dtype::bf16, 1, 1);
  CHECK(first == std::vector<uint16_t>{16305, 16021, 16020, 48697, 49167, 16270});
}

TEST_CASE("inputs: the values are N(0, 1), finite and not zero") {
  const size_t n = 200000;
  const std::vector<uint16_t> bits = random_normal_bits(n, Dtype::fp16, 3);
  double sum = 0, sum2 = 0;
  size_t within1 = 0, zeros = 0, not_finite = 0;
  for (uint16_t b : bits) {
    const double v = nsajit::bits_to_float(b, Dtype::fp16);
    if (!std::isfinite(v)) ++not_finite;
    if (v == 0) ++zeros;
    sum += v, sum2 += v * v;
    within1 += std::abs(v) < 1 ? 1 : 0;
  }
  const double mean = sum / n, var = sum2 / n - mean * mean;
  CHECK(std::abs(mean) < 0.01);
  CHECK(std::abs(var - 1) < 0.02);
  CHECK(std::abs(static_cast<double>(within1) / n - 0.6827) < 0.005);
  CHECK(not_finite == 0);
  CHECK(zeros < 10);
  // Odd and even elements (the two halves of each Box-Muller pair) are not correlated.
  double cross = 0;
  for (size_t i = 0; i + 1 < n; i += 2)
    cross += nsajit::bits_to_float(bits[i], Dtype::fp16) * nsajit::bits_to_float(bits[i + 1], Dtype::fp16);
  CHECK(std::abs(cross / (n / 2)) < 0.01);
}

TEST_CASE("test seeds: NSAJIT_TEST_SEED values, and how they move a seed") {
  using nsajit::test::parse_test_seed;
  CHECK(parse_test_seed("0") == uint64_t{0});
  CHECK(parse_test_seed("17") == uint64_t{17});
  CHECK(parse_test_seed("18446744073709551615") == UINT64_MAX);
  for (const char* bad : {"", "-1", "+1", " 1", "1 ", "0x10", "abc", "18446744073709551616", "1.5"}) {
    CAPTURE(bad);
    CHECK_FALSE(parse_test_seed(bad));
  }
  using nsajit::test::shifted_seed;
  CHECK(shifted_seed(100, 0) == 100);  // unset: the seeds written in the tests
  CHECK(shifted_seed(100, 1) != 100);
  CHECK(shifted_seed(100, 1) == shifted_seed(100, 1));
  CHECK(shifted_seed(100, 1) != shifted_seed(100, 2));
  // Neighbouring seeds (q, k, v of one case) stay distinct and keep their spacing; another offset lands elsewhere.
  CHECK(shifted_seed(101, 5) - shifted_seed(100, 5) == 1);
  bool far = true;
  for (uint64_t s = 0; s < 1000; ++s) far = far && shifted_seed(s, 1) >= 1000;
  CHECK(far);
}

TEST_CASE("inputs: the selection-overlap statistic on synthetic selections") {
  // Two KV heads, T = 128 positions, n = 4: head 0 always selects {0, 1, 2, 3}; head 1 alternates between
  // {0, 1, 2, 3} and {4, 5, 6, 7} (Jaccard 0 between neighbours, 8 distinct per span).
  const int64_t T = 128;
  const int H = 2, n = 4;
  std::vector<int32_t> idx(static_cast<size_t>(T * H * n)), cnt(static_cast<size_t>(T * H), n);
  for (int64_t t = 0; t < T; ++t)
    for (int i = 0; i < n; ++i) {
      idx[static_cast<size_t>((t * H + 0) * n + i)] = i;
      idx[static_cast<size_t>((t * H + 1) * n + i)] = (t % 2) * 4 + i;
    }
  nsajit::SelectionOverlap o = nsajit::selection_overlap(idx.data(), cnt.data(), 1, T, H, n, 64);
  CHECK(o.pairs == 2 * (T - 1));
  CHECK(o.spans == 4);
  CHECK(o.jaccard == doctest::Approx(0.5));    // (1 + 0) / 2
  CHECK(o.distinct == doctest::Approx(6.0));   // (4 + 8) / 2
  // cnt limits the set; two batch entries never pair across the boundary.
  for (int64_t t = 0; t < T; ++t) cnt[static_cast<size_t>(t * H + 1)] = 2;  // head 1: {0,1} / {4,5}
  o = nsajit::selection_overlap(idx.data(), cnt.data(), 2, T / 2, H, n, 64);
  CHECK(o.pairs == 2 * 2 * (T / 2 - 1));
  CHECK(o.jaccard == doctest::Approx(0.5));
  CHECK(o.distinct == doctest::Approx(4.0));   // head 0: {0..3}; head 1: {0, 1, 4, 5}
}

TEST_CASE("inputs: span-coherent queries make neighbours select alike; random ones do not") {
  nsajit::Problem p = nsajit::preset("fla");
  p.T = 8192, p.HQ = 16, p.H = 1, p.dk = p.dv = 64, p.n = 16;
  nsajit::ref::Config cfg;
  cfg.T = p.T, cfg.HQ = p.HQ, cfg.H = p.H, cfg.dk = p.dk, cfg.dv = p.dv;
  cfg.l = p.l, cfg.d = p.d, cfg.lsel = p.lsel, cfg.n = p.n, cfg.w = p.w, cfg.scale = p.softmax_scale();
  const std::vector<uint16_t> kbits = nsajit::random_normal_bits(static_cast<size_t>(p.T * p.H * p.dk), p.dtype, 2);
  std::vector<double> k(kbits.size());
  for (size_t i = 0; i < k.size(); ++i) k[i] = nsajit::bits_to_float(kbits[i], p.dtype);
  std::vector<double> kc(static_cast<size_t>(cfg.num_cmp() * p.H * p.dk));
  nsajit::ref::mean_pool(cfg, k.data(), p.dk, kc.data());
  double jac[2] = {0, 0}, dist[2] = {0, 0}, high[2] = {0, 0};
  for (nsajit::InputKind kind : {nsajit::InputKind::random, nsajit::InputKind::coherent}) {
    const std::vector<uint16_t> qbits = nsajit::query_bits(p, kind, 1);
    std::vector<double> q(qbits.size());
    for (size_t i = 0; i < q.size(); ++i) q[i] = nsajit::bits_to_float(qbits[i], p.dtype);
    const nsajit::ref::Selection sel = nsajit::ref::select_blocks(cfg, q.data(), kc.data());
    const nsajit::SelectionOverlap o = nsajit::selection_overlap(sel.idx.data(), sel.cnt.data(), 1, p.T, p.H, p.n);
    const int k_ = kind == nsajit::InputKind::coherent;
    jac[k_] = o.jaccard, dist[k_] = o.distinct;
    high[k_] = nsajit::plan_shares(nsajit::overlap_plan(sel.idx.data(), sel.cnt.data(), p.T, p.H, p.n)).high;
    MESSAGE(nsajit::input_kind_name(kind) << ": neighbour Jaccard " << o.jaccard << ", distinct blocks per 64 "
                                          << "positions " << o.distinct << ", high-overlap spans " << high[k_]);
  }
  CHECK(jac[0] < 0.4);
  CHECK(jac[1] > 0.7);
  CHECK(dist[1] < dist[0] / 2);
  // The overlap buckets (codegen/overlap.h) follow: coherent spans are high-overlap. At T = 8192 there are only 128
  // blocks, so random spans select about 4 n = 64 each and split between the buckets (at T = 65536: about 356).
  CHECK(high[1] > 0.9);
  CHECK(high[0] < high[1]);
}
