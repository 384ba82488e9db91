// NSA decode's reference: one query token of one sequence, exactly as NSA.md defines row t of the operator.
#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <vector>

#include "reference/reference.h"

namespace nsajit::ref {
namespace {

// softmax(scale q . K) V over the keys `keys` (token indices into k/v [., H, d] at KV head kh); o [dv] and
// probabilities p (one per key), lse (natural). An empty key set gives o = 0, lse = -inf.
void attend(const Config& cfg, const double* q, const double* k, const double* v, int kh,
            const std::vector<int64_t>& keys, double* o, std::vector<double>* p, double* lse) {
  std::vector<double> s(keys.size());
  double mx = -std::numeric_limits<double>::infinity();
  for (size_t j = 0; j < keys.size(); ++j) {
    const double* kr = k + (keys[j] * cfg.H + kh) * cfg.dk;
    double dot = 0;
    for (int c = 0; c < cfg.dk; ++c) dot += q[c] * kr[c];
    s[j] = cfg.scale * dot;
    mx = std::max(mx, s[j]);
  }
  std::fill(o, o + cfg.dv, 0.0);
  if (keys.empty()) {
    if (lse) *lse = -std::numeric_limits<double>::infinity();
    if (p) p->clear();
    return;
  }
  double sum = 0;
  for (double& x : s) sum += (x = std::exp(x - mx));
  for (size_t j = 0; j < keys.size(); ++j) {
    const double* vr = v + (keys[j] * cfg.H + kh) * cfg.dv;
    for (int c = 0; c < cfg.dv; ++c) o[c] += s[j] / sum * vr[c];
  }
  if (lse) *lse = mx + std::log(sum);
  if (p) {
    p->resize(keys.size());
    for (size_t j = 0; j < keys.size(); ++j) (*p)[j] = s[j] / sum;
  }
}

}  // namespace

DecodeRow decode_row(const Config& cfg, int64_t t, const DecodeInputs& in) {
  if (t < 0) throw std::invalid_argument("decode_row: t < 0");
  if (in.q == nullptr || in.k == nullptr || in.v == nullptr || in.k_cmp == nullptr || in.v_cmp == nullptr)
    throw std::invalid_argument("decode_row: q, k, v, k_cmp and v_cmp are required");
  if ((in.idx == nullptr) != (in.cnt == nullptr))
    throw std::invalid_argument("decode_row: give both idx and cnt, or neither");
  const int G = cfg.G();
  const int64_t nc = visible_cmp_blocks(t, cfg.l, cfg.d), jt = t / cfg.lsel;
  const double* k_slc = in.k_slc ? in.k_slc : in.k;
  const double* v_slc = in.v_slc ? in.v_slc : in.v;
  const double* k_win = in.k_win ? in.k_win : in.k;
  const double* v_win = in.v_win ? in.v_win : in.v;
  DecodeRow r;
  const size_t rows = static_cast<size_t>(cfg.HQ) * cfg.dv;
  r.o.assign(rows, 0.0), r.o_cmp.assign(rows, 0.0), r.o_slc.assign(rows, 0.0), r.o_win.assign(rows, 0.0);
  r.idx.assign(static_cast<size_t>(cfg.H) * cfg.n, -1), r.cnt.assign(static_cast<size_t>(cfg.H), 0);
  r.score.assign(static_cast<size_t>(cfg.H) * (jt + 1), 0.0);
  std::vector<int64_t> cmp_keys(static_cast<size_t>(nc));
  for (int64_t i = 0; i < nc; ++i) cmp_keys[static_cast<size_t>(i)] = i;
  std::vector<int64_t> win_keys;
  if (cfg.w > 0)
    for (int64_t s = std::max<int64_t>(0, t - cfg.w + 1); s <= t; ++s) win_keys.push_back(s);
  const int want = static_cast<int>(std::min<int64_t>(cfg.n, jt + 1));
  for (int kh = 0; kh < cfg.H; ++kh) {
    double* score = r.score.data() + kh * (jt + 1);
    for (int g = 0; g < G; ++g) {
      const int hq = kh * G + g;
      std::vector<double> p;
      attend(cfg, in.q + static_cast<int64_t>(hq) * cfg.dk, in.k_cmp, in.v_cmp, kh, cmp_keys,
             r.o_cmp.data() + static_cast<size_t>(hq) * cfg.dv, &p, nullptr);
      for (int64_t j = 0; j <= jt; ++j)
        for (int64_t i = 0; i < nc; ++i) score[j] += overlap_weight(i, j, cfg.l, cfg.d, cfg.lsel) * p[static_cast<size_t>(i)];
    }
    // Forced blocks 0, jt - 1, jt; then the highest scores, equal scores to the lower index.
    std::vector<char> chosen(static_cast<size_t>(jt + 1), 0);
    int taken = 0;
    for (int64_t j : {int64_t{0}, jt - 1, jt})
      if (j >= 0 && !chosen[static_cast<size_t>(j)]) chosen[static_cast<size_t>(j)] = 1, ++taken;
    for (; taken < want; ++taken) {
      int64_t best = -1;
      for (int64_t j = 0; j <= jt; ++j)
        if (!chosen[static_cast<size_t>(j)] && (best < 0 || score[j] > score[best])) best = j;
      chosen[static_cast<size_t>(best)] = 1;
    }
    int m = 0;
    for (int64_t j = 0; j <= jt; ++j)
      if (chosen[static_cast<size_t>(j)]) r.idx[static_cast<size_t>(kh) * cfg.n + m++] = static_cast<int32_t>(j);
    r.cnt[static_cast<size_t>(kh)] = want;
    // The blocks attended over: the given selection, or this one.
    const int32_t* row = in.idx ? in.idx + static_cast<int64_t>(kh) * cfg.n : r.idx.data() + kh * cfg.n;
    const int32_t count = in.idx ? in.cnt[kh] : want;
    std::vector<int64_t> slc_keys;
    std::vector<int32_t> blocks;
    for (int32_t m = 0; m < count; ++m) blocks.push_back(row[m]);
    std::sort(blocks.begin(), blocks.end());
    for (int32_t j : blocks)
      for (int64_t s = static_cast<int64_t>(j) * cfg.lsel; s < static_cast<int64_t>(j + 1) * cfg.lsel && s <= t; ++s)
        slc_keys.push_back(s);
    for (int g = 0; g < G; ++g) {
      const int hq = kh * G + g;
      const double* q = in.q + static_cast<int64_t>(hq) * cfg.dk;
      attend(cfg, q, k_slc, v_slc, kh, slc_keys, r.o_slc.data() + static_cast<size_t>(hq) * cfg.dv, nullptr, nullptr);
      attend(cfg, q, k_win, v_win, kh, win_keys, r.o_win.data() + static_cast<size_t>(hq) * cfg.dv, nullptr, nullptr);
      for (int c = 0; c < cfg.dv; ++c) {
        const size_t e = static_cast<size_t>(hq) * cfg.dv + c;
        double o = 0;
        if (in.g_cmp) o += in.g_cmp[hq] * r.o_cmp[e];
        if (in.g_slc) o += in.g_slc[hq] * r.o_slc[e];
        if (in.g_win && cfg.w > 0) o += in.g_win[hq] * r.o_win[e];
        r.o[e] = o;
      }
    }
  }
  return r;
}

}  // namespace nsajit::ref
