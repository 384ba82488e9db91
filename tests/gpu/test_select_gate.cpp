// GPU test of the tuner's correctness gate for select (tuner/select_gate.h) on a real selection: the default
// config's selection on random q and k_cmp, with one (position, KV head) row's queries zero (its compressed blocks
// then score exactly alike: ties). A planted near-tie swap in that row is accepted and counted; a planted wrong block
// in a random row (the best non-forced choice replaced by the worst unchosen block) is rejected, naming the row;
// and the tuner's select case passes the default config with nothing to note.
#include <doctest/doctest.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "codegen/family.h"
#include "reference/reference.h"
#include "runtime/device.h"
#include "runtime/select_api.h"
#include "tuner/cases.h"
#include "tuner/inputs.h"
#include "tuner/select_gate.h"

using namespace nsajit;

namespace {

Context& gate_gpu() {
  static Context ctx(0);
  return ctx;
}

// Replaces block `out` by block `in` in a row of n entries (cnt valid), keeping it ascending.
void swap_block(int32_t* row, int cnt, int32_t out, int32_t in) {
  std::replace(row, row + cnt, out, in);
  std::sort(row, row + cnt);
}

}  // namespace

TEST_CASE("select gate on the GPU: a planted near-tie swap is accepted, a planted wrong block rejected") {
  gate_gpu();
  Problem p = preset("paper");  // l = 32, d = 16, l' = 64: overlapping compression
  p.dk = 64, p.dv = 64, p.H = 2, p.HQ = 8, p.T = 2048, p.n = 8;
  const int G = p.G();
  const int64_t nc = (p.T - p.l) / p.d + 1, t0 = 1500, t1 = 1900;
  std::vector<uint16_t> qb = random_normal_bits(static_cast<size_t>(p.T * p.HQ * p.dk), p.dtype, 91);
  std::fill_n(qb.begin() + (t0 * p.HQ) * p.dk, G * p.dk, uint16_t{0});  // position t0, KV head 0: all heads zero
  const std::vector<uint16_t> kb = random_normal_bits(static_cast<size_t>(nc * p.H * p.dk), p.dtype, 92);
  // Branch 1's lse from the CPU reference on the same values, stored as fp32 (what the kernel and the gate read).
  ref::Config c;
  c.T = p.T, c.HQ = p.HQ, c.H = p.H, c.dk = p.dk, c.dv = p.dv, c.l = p.l, c.d = p.d, c.lsel = p.lsel, c.n = p.n;
  c.scale = p.softmax_scale();
  std::vector<double> qd(qb.size()), kd(kb.size()), vd(static_cast<size_t>(nc * p.H * p.dv), 0.0);
  for (size_t i = 0; i < qb.size(); ++i) qd[i] = bits_to_float(qb[i], p.dtype);
  for (size_t i = 0; i < kb.size(); ++i) kd[i] = bits_to_float(kb[i], p.dtype);
  std::vector<double> o(static_cast<size_t>(p.T * p.HQ * p.dv)), lse_d(static_cast<size_t>(p.T * p.HQ));
  ref::compressed_attention(c, qd.data(), kd.data(), vd.data(), o.data(), lse_d.data());
  const std::vector<float> lse(lse_d.begin(), lse_d.end());

  DeviceBuffer q(qb.size() * 2), kc(kb.size() * 2), l(lse.size() * 4);
  q.upload(qb.data(), q.bytes()), kc.upload(kb.data(), kc.bytes()), l.upload(lse.data(), l.bytes());
  const size_t rows = static_cast<size_t>(p.T * p.H);
  DeviceBuffer ref_idx(rows * p.n * 4), ref_cnt(rows * 4), idx(rows * p.n * 4), cnt(rows * 4);
  SelectArgs a;
  a.q = contiguous(q.get(), p.T, p.HQ, p.dk), a.k_cmp = contiguous(kc.get(), nc, p.H, p.dk);
  a.lse_cmp = static_cast<const float*>(l.get()), a.lse_stride_t = p.HQ, a.lse_stride_b = p.T * p.HQ;
  a.idx = static_cast<int32_t*>(ref_idx.get()), a.cnt = static_cast<int32_t*>(ref_cnt.get());
  select_blocks(p, a, nullptr);
  gate_gpu().synchronize();
  std::vector<int32_t> hi(rows * p.n), hc(rows);
  ref_idx.download(hi.data(), hi.size() * 4), ref_cnt.download(hc.data(), hc.size() * 4);

  SelectGate gate(p, q.get(), kc.get(), static_cast<const float*>(l.get()),
                  static_cast<const int32_t*>(ref_idx.get()), static_cast<const int32_t*>(ref_cnt.get()));
  auto forced = [&](int64_t t, int32_t j) { return j == 0 || j == t / p.lsel || j == t / p.lsel - 1; };
  // The near tie: row (t0, KV head 0), a chosen non-forced block and an unchosen one of equal score.
  const int64_t r0 = t0 * p.H;
  const std::vector<double> s0 = gate.row_scores(r0);
  const double top0 = *std::max_element(s0.begin(), s0.end());
  int32_t in0 = -1, out0 = -1;
  for (int m = 0; m < hc[r0] && out0 < 0; ++m) {
    const int32_t j = hi[r0 * p.n + m];
    if (forced(t0, j)) continue;
    for (int32_t u = 0; u <= t0 / p.lsel && out0 < 0; ++u)
      if (std::find(&hi[r0 * p.n], &hi[r0 * p.n] + hc[r0], u) == &hi[r0 * p.n] + hc[r0] &&
          std::fabs(s0[u] - s0[j]) <= 1e-3 * top0)
        out0 = j, in0 = u;
  }
  REQUIRE_MESSAGE(out0 >= 0, "no equal-scoring unchosen block in the zero-query row");
  // The real error: row (t1, KV head 1), the best non-forced block replaced by the worst unchosen one.
  const int64_t r1 = t1 * p.H + 1;
  const std::vector<double> s1 = gate.row_scores(r1);
  const double top1 = *std::max_element(s1.begin(), s1.end());
  int32_t best = -1, worst = -1;
  for (int m = 0; m < hc[r1]; ++m) {
    const int32_t j = hi[r1 * p.n + m];
    if (!forced(t1, j) && (best < 0 || s1[j] > s1[best])) best = j;
  }
  for (int32_t u = 0; u <= t1 / p.lsel; ++u)
    if (std::find(&hi[r1 * p.n], &hi[r1 * p.n] + hc[r1], u) == &hi[r1 * p.n] + hc[r1] && (worst < 0 || s1[u] < s1[worst]))
      worst = u;
  REQUIRE(best >= 0);
  REQUIRE(worst >= 0);
  REQUIRE_MESSAGE(s1[best] - s1[worst] > 1e-3 * top1, "the planted error would be a near tie");

  auto judge = [&](const std::vector<int32_t>& cand) {
    idx.upload(cand.data(), cand.size() * 4);
    cnt.upload(hc.data(), hc.size() * 4);
    uint64_t differing = 0;
    for (size_t i = 0; i < cand.size(); ++i) differing += cand[i] != hi[i];
    return gate.judge(static_cast<const int32_t*>(idx.get()), static_cast<const int32_t*>(cnt.get()), differing);
  };
  std::vector<int32_t> cand = hi;
  CHECK_FALSE(judge(cand).wrong);
  swap_block(&cand[r0 * p.n], hc[r0], out0, in0);
  const SelectionVerdict tie = judge(cand);
  CHECK_MESSAGE(!tie.wrong, tie.wrong.value_or(""));
  CHECK(tie.differing_rows == 1);
  CHECK(tie.near_tie_swaps == 1);
  MESSAGE(describe_near_ties(tie));
  swap_block(&cand[r1 * p.n], hc[r1], best, worst);
  const SelectionVerdict bad = judge(cand);
  REQUIRE(bad.wrong);
  CHECK(bad.wrong->find(fmt::format("t={} kv_head=1: chose block {}", t1, worst)) != std::string::npos);
  CHECK(bad.wrong->find("not a near tie") != std::string::npos);
  MESSAGE(*bad.wrong);

  // The tuner's case: the default config passes its own gate, with nothing to note.
  const std::unique_ptr<TuneCase> tc = make_tune_case(find_family("select"), p, InputKind::random);
  CHECK_FALSE(tc->check(find_family("select").default_config(p)));
  CHECK(tc->note().empty());
}
