// The tuner's gate for select (tuner/select_gate.h, templates/selection_rule.h) on synthetic selections and scores:
// a near-tie swap is accepted and counted, a wrong block that is not a near tie and every structural fault are
// rejected with the row and the reason; the float64 block scores match the CPU reference's.
#include <doctest/doctest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "codegen/problem.h"
#include "reference/reference.h"
#include "templates/selection_rule.h"
#include "tests/cpu/test_util.h"
#include "tuner/select_gate.h"

namespace {

// Position t = 600 (l' = 64: blocks 0 .. 9), n = 5: forced 0, 8, 9, then the two best of 1 .. 7, blocks 3 and 5.
// Block 6 scores 0.0004 below block 5 (within 1e-3 of the top score 1.0); block 4 is 0.2 below.
constexpr int64_t kT = 600;
constexpr int kLSel = 64, kN = 5;
const std::vector<double> kScores = {1.0, 0.1, 0.2, 0.6, 0.3, 0.5, 0.4996, 0.05, 0.7, 0.9};
const std::vector<int32_t> kTrusted = {0, 3, 5, 8, 9};

nsa_rule::RowVerdict judge(const std::vector<int32_t>& row, int32_t cnt = kN, bool with_ref = true) {
  return nsa_rule::judge_row(kT, row.data(), cnt, with_ref ? kTrusted.data() : nullptr, kN, kScores.data(), kLSel, kN);
}

}  // namespace

TEST_CASE("select gate: a near-tie swap is accepted and counted, the trusted row itself needs no scores") {
  const nsa_rule::RowVerdict same = nsa_rule::judge_row(kT, kTrusted.data(), kN, kTrusted.data(), kN, nullptr, kLSel, kN);
  CHECK(same.error.empty());
  CHECK(same.swaps == 0);
  const nsa_rule::RowVerdict v = judge({0, 3, 6, 8, 9});
  CHECK_MESSAGE(v.error.empty(), v.error);
  CHECK(v.swaps == 1);
  // Against the reference set taken from the scores themselves (as the emitted select program judges).
  CHECK(judge({0, 3, 5, 8, 9}, kN, false).swaps == 0);
  CHECK(judge({0, 3, 6, 8, 9}, kN, false).swaps == 1);
}

TEST_CASE("select gate: a wrong block that is not a near tie is rejected, naming both blocks") {
  const nsa_rule::RowVerdict v = judge({0, 3, 4, 8, 9});
  CHECK_CONTAINS(v.error, "chose block 4 (score 0.3) over block 5 (score 0.5): not a near tie");
  // Just past the tolerance: a difference of 0.0011 of the top score.
  std::vector<double> s = kScores;
  s[6] = 0.4989;
  const std::vector<int32_t> row = {0, 3, 6, 8, 9};
  CHECK_CONTAINS(nsa_rule::judge_row(kT, row.data(), kN, kTrusted.data(), kN, s.data(), kLSel, kN).error,
                 "not a near tie");
}

TEST_CASE("select gate: structural faults are rejected with the reason") {
  CHECK_CONTAINS(judge({0, 3, 5, 8, -1}, 4).error, "cnt 4, expected min(n, t / l' + 1) = 5");
  CHECK_CONTAINS(judge({0, 5, 3, 8, 9}).error, "not strictly ascending at entry 2");
  CHECK_CONTAINS(judge({0, 3, 5, 6, 9}).error, "forced block 8 is missing");
  CHECK_CONTAINS(judge({0, 3, 5, 8, 10}).error, "idx[4] = 10 is not a causal block (0 .. 9)");
  // Padding past cnt: position 100 (blocks 0, 1) holds 2 blocks and -1s.
  const std::vector<int32_t> pad = {0, 1, 7, -1, -1}, ref_pad = {0, 1, -1, -1, -1};
  CHECK_CONTAINS(nsa_rule::judge_row(100, pad.data(), 2, ref_pad.data(), 2, kScores.data(), kLSel, kN).error,
                 "idx[2] = 7 past cnt = 2, expected -1");
  // cnt must also equal the trusted one.
  CHECK_CONTAINS(nsa_rule::judge_row(100, ref_pad.data(), 2, ref_pad.data(), 3, kScores.data(), kLSel, kN).error,
                 "cnt 2 differs from the reference's 3");
}

TEST_CASE("select gate: judge_selection over whole selections finds the differing rows and sums the swaps") {
  nsajit::Problem p;
  p.B = 1, p.T = kT + 1, p.HQ = 2, p.H = 2, p.dk = 64, p.dv = 64, p.l = 64, p.d = 64, p.lsel = kLSel, p.n = kN;
  // Two KV heads of the last position (t = 600); every other row is a copy of the trusted one.
  const int64_t rows = p.T * p.H;
  std::vector<int32_t> ref_idx(static_cast<size_t>(rows * kN), -1), ref_cnt(static_cast<size_t>(rows), 0);
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t t = r / p.H, jt = t / kLSel;
    ref_cnt[static_cast<size_t>(r)] = static_cast<int32_t>(std::min<int64_t>(kN, jt + 1));
    if (t == kT) {
      std::copy(kTrusted.begin(), kTrusted.end(), ref_idx.begin() + r * kN);
      continue;
    }
    for (int64_t j = 0; j < ref_cnt[static_cast<size_t>(r)]; ++j) ref_idx[static_cast<size_t>(r * kN + j)] = static_cast<int32_t>(j);
  }
  auto scores = [&](int64_t r) {
    CHECK_MESSAGE(r / p.H == kT, "scores asked for row " << r << ", which does not differ");
    return kScores;
  };
  const int64_t last0 = kT * p.H, last1 = kT * p.H + 1;
  std::vector<int32_t> idx = ref_idx, cnt = ref_cnt;
  SUBCASE("equal: nothing to judge") {
    CHECK(nsajit::differing_selection_rows(idx.data(), cnt.data(), ref_idx.data(), ref_cnt.data(), rows, kN).empty());
  }
  SUBCASE("two near-tie swaps are accepted and counted") {
    idx[static_cast<size_t>(last0 * kN + 2)] = 6;
    idx[static_cast<size_t>(last1 * kN + 2)] = 6;
    const auto diff = nsajit::differing_selection_rows(idx.data(), cnt.data(), ref_idx.data(), ref_cnt.data(), rows, kN);
    CHECK(diff == std::vector<int64_t>{last0, last1});
    const nsajit::SelectionVerdict v =
        nsajit::judge_selection(p, diff, idx.data(), cnt.data(), ref_idx.data(), ref_cnt.data(), scores);
    CHECK_FALSE(v.wrong);
    CHECK(v.differing_rows == 2);
    CHECK(v.near_tie_swaps == 2);
    CHECK(nsajit::describe_near_ties(v).rfind("2 near-tie swaps accepted in 2 rows", 0) == 0);
  }
  SUBCASE("a planted real error beside a near-tie swap is rejected, naming its row") {
    idx[static_cast<size_t>(last0 * kN + 2)] = 6;  // near tie
    idx[static_cast<size_t>(last1 * kN + 2)] = 4;  // not
    const auto diff = nsajit::differing_selection_rows(idx.data(), cnt.data(), ref_idx.data(), ref_cnt.data(), rows, kN);
    const nsajit::SelectionVerdict v =
        nsajit::judge_selection(p, diff, idx.data(), cnt.data(), ref_idx.data(), ref_cnt.data(), scores);
    REQUIRE(v.wrong);
    CHECK_CONTAINS(*v.wrong, "b=0 t=600 kv_head=1: chose block 4");
  }
  SUBCASE("more differing rows than the gate scores are a wrong result") {
    std::vector<int64_t> many(static_cast<size_t>(nsajit::kMaxScoredSelectionRows + 1), last0);
    const nsajit::SelectionVerdict v =
        nsajit::judge_selection(p, many, idx.data(), cnt.data(), ref_idx.data(), ref_cnt.data(), scores);
    REQUIRE(v.wrong);
    CHECK_CONTAINS(*v.wrong, "257 rows (position, KV head) differ from the trusted selection: more than the 256");
  }
}

TEST_CASE("select gate: the float64 block scores are the CPU reference's (overlapping compression, G = 3)") {
  namespace r = nsajit::ref;
  r::Config c;
  c.T = 700, c.HQ = 6, c.H = 2, c.dk = 64, c.dv = 64, c.l = 32, c.d = 16, c.lsel = 64, c.n = 8, c.w = 0;
  c.scale = 1.0 / 8.0;
  std::mt19937 rng(7);
  std::normal_distribution<float> normal;
  const int64_t nc = c.num_cmp();
  std::vector<float> q(static_cast<size_t>(c.T * c.HQ * c.dk)), kc(static_cast<size_t>(nc * c.H * c.dk));
  for (float& x : q) x = normal(rng);
  for (float& x : kc) x = normal(rng);
  std::vector<double> qd(q.begin(), q.end()), kd(kc.begin(), kc.end()), o(static_cast<size_t>(c.T * c.HQ * c.dv)),
      lse(static_cast<size_t>(c.T * c.HQ)), vd(static_cast<size_t>(nc * c.H * c.dv), 0.0);
  r::compressed_attention(c, qd.data(), kd.data(), vd.data(), o.data(), lse.data());
  std::vector<float> lse_f(lse.begin(), lse.end());
  const std::vector<double> lse_used(lse_f.begin(), lse_f.end());  // both sides see the same float lse
  const r::Selection sel = r::select_blocks(c, qd.data(), kd.data(), lse_used.data());
  nsajit::Problem p;
  p.B = 1, p.T = c.T, p.HQ = c.HQ, p.H = c.H, p.dk = c.dk, p.dv = c.dv, p.l = c.l, p.d = c.d, p.lsel = c.lsel,
  p.n = c.n, p.scale = c.scale;
  const int G = c.G();
  for (int64_t t : {int64_t{0}, int64_t{31}, int64_t{64}, int64_t{355}, int64_t{699}})
    for (int kvh = 0; kvh < c.H; ++kvh) {
      CAPTURE(t);
      CAPTURE(kvh);
      std::vector<float> k(static_cast<size_t>(nc * c.dk));
      for (int64_t i = 0; i < nc; ++i)
        std::copy_n(&kc[static_cast<size_t>((i * c.H + kvh) * c.dk)], c.dk, &k[static_cast<size_t>(i * c.dk)]);
      const std::vector<double> s = nsajit::selection_row_scores(
          p, t, &q[static_cast<size_t>((t * c.HQ + kvh * G) * c.dk)], k.data(), &lse_f[static_cast<size_t>(t * c.HQ + kvh * G)]);
      REQUIRE(s.size() == static_cast<size_t>(t / c.lsel + 1));
      for (size_t j = 0; j < s.size(); ++j)
        CHECK(s[j] == doctest::Approx(sel.score[static_cast<size_t>((t * c.H + kvh) * sel.num_sel) + j]).epsilon(1e-12));
      // The reference's own selection passes the rule exactly.
      const int64_t row = t * c.H + kvh;
      const nsa_rule::RowVerdict v = nsa_rule::judge_row(t, &sel.idx[static_cast<size_t>(row * c.n)],
                                                         sel.cnt[static_cast<size_t>(row)], nullptr, 0, s.data(), c.lsel, c.n);
      CHECK_MESSAGE(v.error.empty(), v.error);
      CHECK(v.swaps == 0);
    }
}
