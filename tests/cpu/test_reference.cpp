// Tests of the float64 CPU reference (reference/reference.h) against independent brute-force computations:
// explicit per-query key sets as token masks over all T keys, dense masked softmax in long double,
// mean pooling from explicit token lists, selection scores from explicit per-token weights and a
// sort-based top-n. None of these reuse the reference's index formulas.
#include <doctest/doctest.h>

#include "reference/reference.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

using nsajit::ref::Config;
using std::int64_t;
using Vec = std::vector<double>;
using IVec = std::vector<int32_t>;

constexpr double kInf = std::numeric_limits<double>::infinity();

Vec randn(size_t n, uint64_t seed) {
  std::mt19937_64 gen(seed);
  std::normal_distribution<double> dist(0.0, 1.0);
  Vec x(n);
  for (double& e : x) e = dist(gen);
  return x;
}

Vec rand01(size_t n, uint64_t seed) {
  std::mt19937_64 gen(seed);
  std::uniform_real_distribution<double> dist(0.01, 0.99);
  Vec x(n);
  for (double& e : x) e = dist(gen);
  return x;
}

// Largest |a-b| / max(1,|b|); -inf must match -inf exactly, NaN anywhere is an infinite error.
double max_err(const Vec& a, const Vec& b) {
  if (a.size() != b.size()) return kInf;
  double worst = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::isnan(a[i]) || std::isnan(b[i])) return kInf;
    if (std::isinf(a[i]) || std::isinf(b[i])) {
      if (a[i] != b[i]) return kInf;
      continue;
    }
    worst = std::max(worst, std::abs(a[i] - b[i]) / std::max(1.0, std::abs(b[i])));
  }
  return worst;
}

constexpr double kTol = 1e-12;

// ---------------------------------------------------------------------------------------------------------
// Brute force. A "sequence" of rows: row(r) = base + (r * heads + head) * dim.
struct Rows {
  const double* base;
  int heads, head, dim;
  const double* row(int64_t r) const { return base + (r * heads + head) * dim; }
};

// Dense masked softmax over all `count` rows of K (mask[r] says whether row r is a key), in long double.
void dense_attention(const double* q, const Rows& K, const Rows& V, int64_t count, const std::vector<bool>& mask,
                     double scale, double* o, double* lse) {
  const long double ninf = -std::numeric_limits<long double>::infinity();
  std::vector<long double> logit(size_t(count), ninf);
  for (int64_t r = 0; r < count; ++r)
    if (mask[size_t(r)]) {
      long double s = 0;
      for (int c = 0; c < K.dim; ++c) s += (long double)q[c] * K.row(r)[c];
      logit[size_t(r)] = s * scale;
    }
  const long double m = count ? *std::max_element(logit.begin(), logit.end()) : ninf;
  if (m == ninf) {
    for (int c = 0; c < V.dim; ++c) o[c] = 0.0;
    *lse = -kInf;
    return;
  }
  long double z = 0;
  std::vector<long double> acc(size_t(V.dim), 0);
  for (int64_t r = 0; r < count; ++r) {
    if (!mask[size_t(r)]) continue;  // masked keys have weight exp(-inf) = 0
    const long double p = std::exp(logit[size_t(r)] - m);
    z += p;
    for (int c = 0; c < V.dim; ++c) acc[size_t(c)] += p * V.row(r)[c];
  }
  for (int c = 0; c < V.dim; ++c) o[c] = double(acc[size_t(c)] / z);
  *lse = double(m + std::log(z));
}

// Token lists of the compressed blocks: block i holds the tokens s with i*d <= s < i*d + l, for as long as
// the whole block fits in T.
std::vector<std::vector<int64_t>> brute_cmp_blocks(const Config& c) {
  std::vector<std::vector<int64_t>> blocks;
  for (int64_t i = 0;; ++i) {
    std::vector<int64_t> toks;
    for (int64_t s = 0; s < c.T; ++s)
      if (s >= i * c.d && s < i * c.d + c.l) toks.push_back(s);
    if (int64_t(toks.size()) != c.l) break;
    blocks.push_back(toks);
  }
  return blocks;
}

Vec brute_mean_pool(const Config& c, const Vec& x, int dim) {
  const auto blocks = brute_cmp_blocks(c);
  Vec out(blocks.size() * size_t(c.H) * size_t(dim), 0.0);
  for (size_t i = 0; i < blocks.size(); ++i)
    for (int kh = 0; kh < c.H; ++kh)
      for (int ch = 0; ch < dim; ++ch) {
        long double s = 0;
        for (int64_t tok : blocks[i]) s += x[size_t((tok * c.H + kh) * dim + ch)];
        out[(i * size_t(c.H) + size_t(kh)) * size_t(dim) + size_t(ch)] = double(s / (long double)blocks[i].size());
      }
  return out;
}

struct Branch {
  Vec o, lse;
};

Branch brute_window(const Config& c, const Vec& q, const Vec& k, const Vec& v) {
  Branch b{Vec(size_t(c.T * c.HQ * c.dv)), Vec(size_t(c.T * c.HQ))};
  for (int64_t t = 0; t < c.T; ++t)
    for (int h = 0; h < c.HQ; ++h) {
      std::vector<bool> mask(size_t(c.T));
      for (int64_t s = 0; s < c.T; ++s) mask[size_t(s)] = s <= t && t - s < c.w;  // the w most recent keys
      const int kh = h * c.H / c.HQ;
      dense_attention(&q[size_t((t * c.HQ + h) * c.dk)], Rows{k.data(), c.H, kh, c.dk}, Rows{v.data(), c.H, kh, c.dv},
                      c.T, mask, c.scale, &b.o[size_t((t * c.HQ + h) * c.dv)], &b.lse[size_t(t * c.HQ + h)]);
    }
  return b;
}

Branch brute_compressed(const Config& c, const Vec& q, const Vec& kc, const Vec& vc) {
  const auto blocks = brute_cmp_blocks(c);
  const int64_t nc = int64_t(blocks.size());
  Branch b{Vec(size_t(c.T * c.HQ * c.dv)), Vec(size_t(c.T * c.HQ))};
  for (int64_t t = 0; t < c.T; ++t)
    for (int h = 0; h < c.HQ; ++h) {
      std::vector<bool> mask(static_cast<size_t>(nc));
      for (int64_t i = 0; i < nc; ++i) mask[size_t(i)] = blocks[size_t(i)].back() <= t;  // whole block in the past
      const int kh = h * c.H / c.HQ;
      dense_attention(&q[size_t((t * c.HQ + h) * c.dk)], Rows{kc.data(), c.H, kh, c.dk}, Rows{vc.data(), c.H, kh, c.dv},
                      nc, mask, c.scale, &b.o[size_t((t * c.HQ + h) * c.dv)], &b.lse[size_t(t * c.HQ + h)]);
    }
  return b;
}

struct BruteSel {
  IVec idx, cnt;
  Vec score;  // [T,H,NS]
  int64_t NS;
};

// Scores from explicit per-token weights: compressed block i spreads p_cmp[i]/d onto each of its l tokens;
// a selection block's score is the sum over its tokens (and over the group's heads). Top-n by sorting.
BruteSel brute_select(const Config& c, const Vec& q, const Vec& kc) {
  const auto blocks = brute_cmp_blocks(c);
  int64_t NS = 0;
  while (NS * c.lsel < c.T) ++NS;
  BruteSel r{IVec(size_t(c.T * c.H * c.n), -1), IVec(size_t(c.T * c.H)), Vec(size_t(c.T * c.H * NS)), NS};
  for (int64_t t = 0; t < c.T; ++t)
    for (int kh = 0; kh < c.H; ++kh) {
      std::vector<long double> tokw(size_t(c.T), 0);
      for (int h = 0; h < c.HQ; ++h) {
        if (h * c.H / c.HQ != kh) continue;
        std::vector<size_t> vis;
        for (size_t i = 0; i < blocks.size(); ++i)
          if (blocks[i].back() <= t) vis.push_back(i);
        std::vector<long double> lg;
        for (size_t i : vis) {
          long double s = 0;
          for (int ch = 0; ch < c.dk; ++ch)
            s += (long double)q[size_t((t * c.HQ + h) * c.dk + ch)] * kc[(i * size_t(c.H) + size_t(kh)) * size_t(c.dk) + size_t(ch)];
          lg.push_back(s * c.scale);
        }
        if (vis.empty()) continue;
        const long double m = *std::max_element(lg.begin(), lg.end());
        long double z = 0;
        for (long double x : lg) z += std::exp(x - m);
        for (size_t a = 0; a < vis.size(); ++a)
          for (int64_t tok : blocks[vis[a]]) tokw[size_t(tok)] += std::exp(lg[a] - m) / z / c.d;
      }
      std::vector<double> score(static_cast<size_t>(NS), 0.0);
      for (int64_t s = 0; s < c.T; ++s) score[size_t(s / c.lsel)] += double(tokw[size_t(s)]);
      for (int64_t j = 0; j < NS; ++j) r.score[size_t((t * c.H + kh) * NS + j)] = score[size_t(j)];
      // Candidates: blocks that start at or before t.
      std::vector<int64_t> cand;
      for (int64_t j = 0; j < NS; ++j)
        if (j * c.lsel <= t) cand.push_back(j);
      const int64_t cur = cand.back();
      auto forced = [&](int64_t j) { return j == 0 || j == cur || j == cur - 1; };
      std::sort(cand.begin(), cand.end(), [&](int64_t a, int64_t b) {
        if (forced(a) != forced(b)) return forced(a);
        if (score[size_t(a)] != score[size_t(b)]) return score[size_t(a)] > score[size_t(b)];
        return a < b;
      });
      if (int64_t(cand.size()) > c.n) cand.resize(size_t(c.n));
      std::sort(cand.begin(), cand.end());
      r.cnt[size_t(t * c.H + kh)] = int32_t(cand.size());
      for (size_t m = 0; m < cand.size(); ++m) r.idx[size_t((t * c.H + kh) * c.n) + m] = int32_t(cand[m]);
    }
  return r;
}

Branch brute_selected(const Config& c, const Vec& q, const Vec& k, const Vec& v, const IVec& idx, const IVec& cnt) {
  Branch b{Vec(size_t(c.T * c.HQ * c.dv)), Vec(size_t(c.T * c.HQ))};
  for (int64_t t = 0; t < c.T; ++t)
    for (int h = 0; h < c.HQ; ++h) {
      const int kh = h * c.H / c.HQ;
      std::set<int64_t> chosen;
      for (int m = 0; m < cnt[size_t(t * c.H + kh)]; ++m) chosen.insert(idx[size_t((t * c.H + kh) * c.n + m)]);
      std::vector<bool> mask(size_t(c.T));
      for (int64_t s = 0; s < c.T; ++s) mask[size_t(s)] = s <= t && chosen.count(s / c.lsel) > 0;
      dense_attention(&q[size_t((t * c.HQ + h) * c.dk)], Rows{k.data(), c.H, kh, c.dk}, Rows{v.data(), c.H, kh, c.dv},
                      c.T, mask, c.scale, &b.o[size_t((t * c.HQ + h) * c.dv)], &b.lse[size_t(t * c.HQ + h)]);
    }
  return b;
}

struct Data {
  Vec q, k, v;
};

Data make_data(const Config& c, uint64_t seed) {
  return {randn(size_t(c.T * c.HQ * c.dk), seed), randn(size_t(c.T * c.H * c.dk), seed + 1),
          randn(size_t(c.T * c.H * c.dv), seed + 2)};
}

Config make_cfg(int64_t T, int HQ, int H, int dk, int dv, int l, int d, int lsel, int n, int w) {
  return Config{T, HQ, H, dk, dv, l, d, lsel, n, w, 1.0 / std::sqrt(double(dk))};
}

std::string describe(const Config& c) {
  return "T=" + std::to_string(c.T) + " HQ=" + std::to_string(c.HQ) + " H=" + std::to_string(c.H) +
         " dk=" + std::to_string(c.dk) + " dv=" + std::to_string(c.dv) + " l=" + std::to_string(c.l) +
         " d=" + std::to_string(c.d) + " lsel=" + std::to_string(c.lsel) + " n=" + std::to_string(c.n) +
         " w=" + std::to_string(c.w);
}

// Every branch, the selection and the gated forward of one config against brute force.
void check_all(const Config& c, uint64_t seed) {
  namespace r = nsajit::ref;
  INFO(describe(c));
  const Data x = make_data(c, seed);
  const size_t no = size_t(c.T * c.HQ * c.dv), nl = size_t(c.T * c.HQ);

  // Window.
  Vec o(no, NAN), lse(nl, NAN);
  r::window_attention(c, x.q.data(), x.k.data(), x.v.data(), o.data(), lse.data());
  const Branch bw = brute_window(c, x.q, x.k, x.v);
  CHECK(max_err(o, bw.o) <= kTol);
  CHECK(max_err(lse, bw.lse) <= kTol);

  // Mean pool + compressed.
  const Vec kc = brute_mean_pool(c, x.k, c.dk), vc = brute_mean_pool(c, x.v, c.dv);
  REQUIRE(int64_t(kc.size()) == r::num_cmp_blocks(c.T, c.l, c.d) * c.H * c.dk);
  Vec kc_ref(kc.size(), NAN), vc_ref(vc.size(), NAN);
  r::mean_pool(c, x.k.data(), c.dk, kc_ref.data());
  r::mean_pool(c, x.v.data(), c.dv, vc_ref.data());
  CHECK(max_err(kc_ref, kc) <= kTol);
  CHECK(max_err(vc_ref, vc) <= kTol);
  std::fill(o.begin(), o.end(), NAN);
  std::fill(lse.begin(), lse.end(), NAN);
  r::compressed_attention(c, x.q.data(), kc.data(), vc.data(), o.data(), lse.data());
  const Branch bc = brute_compressed(c, x.q, kc, vc);
  CHECK(max_err(o, bc.o) <= kTol);
  CHECK(max_err(lse, bc.lse) <= kTol);

  // Selection, with and without the branch-1 lse.
  const BruteSel bs = brute_select(c, x.q, kc);
  for (const double* lse_cmp : {static_cast<const double*>(nullptr), static_cast<const double*>(lse.data())}) {
    CAPTURE(lse_cmp != nullptr);
    const r::Selection sel = r::select_blocks(c, x.q.data(), kc.data(), lse_cmp);
    CHECK(sel.num_sel == bs.NS);
    CHECK(max_err(sel.score, bs.score) <= kTol);
    CHECK(sel.cnt == bs.cnt);
    CHECK(sel.idx == bs.idx);
    CHECK(r::selection_matches(sel, bs.idx.data(), bs.cnt.data(), c, 0.0));
  }

  // Selected attention on the (brute) selection.
  std::fill(o.begin(), o.end(), NAN);
  std::fill(lse.begin(), lse.end(), NAN);
  r::selected_attention(c, x.q.data(), x.k.data(), x.v.data(), bs.idx.data(), bs.cnt.data(), o.data(), lse.data());
  const Branch bsl = brute_selected(c, x.q, x.k, x.v, bs.idx, bs.cnt);
  CHECK(max_err(o, bsl.o) <= kTol);
  CHECK(max_err(lse, bsl.lse) <= kTol);

  // Gated forward.
  const Vec g1 = rand01(nl, seed + 10), g2 = rand01(nl, seed + 11), g3 = rand01(nl, seed + 12);
  r::Inputs in;
  in.q = x.q.data();
  in.k = x.k.data();
  in.v = x.v.data();
  in.g_cmp = g1.data();
  in.g_slc = g2.data();
  in.g_win = g3.data();
  const r::Outputs out = r::forward(c, in);
  Vec expect(no, 0.0);
  for (size_t th = 0; th < nl; ++th)
    for (int ch = 0; ch < c.dv; ++ch) {
      const size_t e = th * size_t(c.dv) + size_t(ch);
      expect[e] = g1[th] * bc.o[e] + g2[th] * bsl.o[e] + (c.w > 0 ? g3[th] * bw.o[e] : 0.0);
    }
  CHECK(max_err(out.o, expect) <= kTol);
  CHECK(max_err(out.o_cmp, bc.o) <= kTol);
  CHECK(max_err(out.o_slc, bsl.o) <= kTol);
  CHECK(max_err(out.o_win, bw.o) <= kTol);
  CHECK(max_err(out.lse_cmp, bc.lse) <= kTol);
  CHECK(max_err(out.lse_slc, bsl.lse) <= kTol);
  CHECK(max_err(out.lse_win, bw.lse) <= kTol);
  CHECK(max_err(out.k_cmp, kc) <= kTol);
  CHECK(out.sel.idx == bs.idx);
  CHECK(out.sel.cnt == bs.cnt);
}

const std::vector<Config> kSweep = {
    // G = 1, dk != dv, paper compression (32,16,64), small window, top-n chooses for T > 256.
    make_cfg(0, 2, 2, 8, 12, 32, 16, 64, 4, 5),
    // G = 3, fla blocks (64,64,64), no window.
    make_cfg(0, 6, 2, 12, 8, 64, 64, 64, 4, 0),
    // G = 16, (32,32,64), window larger than T.
    make_cfg(0, 16, 1, 8, 8, 32, 32, 64, 5, 1000),
    // G = 3, small selection blocks so that top-n chooses within T <= 200.
    make_cfg(0, 3, 1, 16, 8, 16, 8, 16, 4, 64),
    // l > lsel: a compressed block straddles several selection blocks.
    make_cfg(0, 4, 2, 8, 10, 32, 8, 16, 6, 17),
};

}  // namespace

TEST_CASE("ref: block counts") {
  using namespace nsajit::ref;
  CHECK(floor_div(-1, 16) == -1);
  CHECK(floor_div(-16, 16) == -1);
  CHECK(floor_div(-17, 16) == -2);
  CHECK(floor_div(15, 16) == 0);
  for (const auto& ld : {std::pair{32, 16}, {64, 64}, {32, 32}, {16, 8}, {32, 8}}) {
    const int l = ld.first, d = ld.second;
    CAPTURE(l);
    CAPTURE(d);
    for (int64_t T = 0; T <= 300; ++T) {
      int64_t expect = 0;  // count block starts i*d whose block [i*d, i*d+l) fits in T
      for (int64_t s = 0; s + l <= T; s += d) ++expect;
      CHECK(num_cmp_blocks(T, l, d) == expect);
      if (T > 0) CHECK(visible_cmp_blocks(T - 1, l, d) == expect);
    }
  }
  CHECK(num_cmp_blocks(31, 32, 16) == 0);
  CHECK(num_cmp_blocks(32, 32, 16) == 1);
  CHECK(num_cmp_blocks(47, 32, 16) == 1);
  CHECK(num_cmp_blocks(48, 32, 16) == 2);
  CHECK(num_sel_blocks(0, 64) == 0);
  CHECK(num_sel_blocks(1, 64) == 1);
  CHECK(num_sel_blocks(64, 64) == 1);
  CHECK(num_sel_blocks(65, 64) == 2);
}

TEST_CASE("ref: window attention against dense masked softmax") {
  namespace r = nsajit::ref;
  for (Config c : {make_cfg(0, 2, 2, 8, 12, 32, 16, 64, 4, 5), make_cfg(0, 6, 2, 12, 8, 64, 64, 64, 4, 1),
                   make_cfg(0, 16, 1, 8, 8, 32, 32, 64, 4, 1000), make_cfg(0, 3, 1, 16, 8, 32, 16, 64, 4, 64)})
    for (int64_t T : {1, 2, 5, 6, 63, 64, 65, 200}) {
      c.T = T;
      INFO(describe(c));
      const Data x = make_data(c, 100 + uint64_t(T));
      Vec o(size_t(T * c.HQ * c.dv), NAN), lse(size_t(T * c.HQ), NAN);
      r::window_attention(c, x.q.data(), x.k.data(), x.v.data(), o.data(), lse.data());
      const Branch b = brute_window(c, x.q, x.k, x.v);
      CHECK(max_err(o, b.o) <= kTol);
      CHECK(max_err(lse, b.lse) <= kTol);
      // lse may be omitted.
      Vec o2(o.size(), NAN);
      r::window_attention(c, x.q.data(), x.k.data(), x.v.data(), o2.data(), nullptr);
      CHECK(o2 == o);
    }
}

TEST_CASE("ref: window w = 1 attends to the query's own token only") {
  namespace r = nsajit::ref;
  const Config c = make_cfg(50, 4, 2, 8, 6, 32, 16, 64, 4, 1);
  const Data x = make_data(c, 7);
  Vec o(size_t(c.T * c.HQ * c.dv)), lse(size_t(c.T * c.HQ));
  r::window_attention(c, x.q.data(), x.k.data(), x.v.data(), o.data(), lse.data());
  double worst = 0;
  for (int64_t t = 0; t < c.T; ++t)
    for (int h = 0; h < c.HQ; ++h) {
      const int kh = h / c.G();
      double s = 0;
      for (int ch = 0; ch < c.dk; ++ch) s += x.q[size_t((t * c.HQ + h) * c.dk + ch)] * x.k[size_t((t * c.H + kh) * c.dk + ch)];
      worst = std::max(worst, std::abs(lse[size_t(t * c.HQ + h)] - c.scale * s));
      for (int ch = 0; ch < c.dv; ++ch)
        worst = std::max(worst, std::abs(o[size_t((t * c.HQ + h) * c.dv + ch)] - x.v[size_t((t * c.H + kh) * c.dv + ch)]));
    }
  CHECK(worst <= 1e-14);
}

TEST_CASE("ref: empty key sets give o = 0 and lse = -inf") {
  namespace r = nsajit::ref;
  SUBCASE("window w = 0") {
    const Config c = make_cfg(40, 3, 1, 8, 8, 32, 16, 64, 4, 0);
    const Data x = make_data(c, 3);
    Vec o(size_t(c.T * c.HQ * c.dv), NAN), lse(size_t(c.T * c.HQ), NAN);
    r::window_attention(c, x.q.data(), x.k.data(), x.v.data(), o.data(), lse.data());
    CHECK(std::all_of(o.begin(), o.end(), [](double e) { return e == 0.0; }));
    CHECK(std::all_of(lse.begin(), lse.end(), [](double e) { return e == -kInf; }));
  }
  SUBCASE("compressed before the first complete block") {
    const Config c = make_cfg(40, 2, 2, 8, 4, 32, 16, 64, 4, 8);
    const Data x = make_data(c, 4);
    Vec kc(size_t(c.num_cmp() * c.H * c.dk)), vc(size_t(c.num_cmp() * c.H * c.dv));
    r::mean_pool(c, x.k.data(), c.dk, kc.data());
    r::mean_pool(c, x.v.data(), c.dv, vc.data());
    Vec o(size_t(c.T * c.HQ * c.dv), NAN), lse(size_t(c.T * c.HQ), NAN);
    r::compressed_attention(c, x.q.data(), kc.data(), vc.data(), o.data(), lse.data());
    for (int64_t t = 0; t < c.T; ++t)
      for (int h = 0; h < c.HQ; ++h) {
        CAPTURE(t);
        const double e = lse[size_t(t * c.HQ + h)];
        if (t < c.l - 1) {
          CHECK(e == -kInf);
          CHECK(o[size_t((t * c.HQ + h) * c.dv)] == 0.0);
        } else {
          CHECK(std::isfinite(e));
        }
      }
  }
  SUBCASE("compressed with T < l: no block at all") {
    const Config c = make_cfg(20, 2, 1, 8, 8, 32, 16, 64, 4, 8);
    CHECK(c.num_cmp() == 0);
    const Data x = make_data(c, 5);
    Vec o(size_t(c.T * c.HQ * c.dv), NAN), lse(size_t(c.T * c.HQ), NAN);
    r::compressed_attention(c, x.q.data(), nullptr, nullptr, o.data(), lse.data());
    CHECK(std::all_of(o.begin(), o.end(), [](double e) { return e == 0.0; }));
    CHECK(std::all_of(lse.begin(), lse.end(), [](double e) { return e == -kInf; }));
    const r::Outputs out = r::forward(c, r::Inputs{x.q.data(), x.k.data(), x.v.data()});
    CHECK(out.k_cmp.empty());
    CHECK(std::all_of(out.lse_cmp.begin(), out.lse_cmp.end(), [](double e) { return e == -kInf; }));
    CHECK(std::all_of(out.o.begin(), out.o.end(), [](double e) { return e == 0.0; }));  // no gates: o = 0
  }
  SUBCASE("selected with cnt = 0") {
    const Config c = make_cfg(70, 2, 1, 8, 8, 32, 16, 64, 4, 8);
    const Data x = make_data(c, 6);
    IVec idx(size_t(c.T * c.H * c.n), -1), cnt(size_t(c.T * c.H), 0);
    Vec o(size_t(c.T * c.HQ * c.dv), NAN), lse(size_t(c.T * c.HQ), NAN);
    r::selected_attention(c, x.q.data(), x.k.data(), x.v.data(), idx.data(), cnt.data(), o.data(), lse.data());
    CHECK(std::all_of(o.begin(), o.end(), [](double e) { return e == 0.0; }));
    CHECK(std::all_of(lse.begin(), lse.end(), [](double e) { return e == -kInf; }));
  }
  SUBCASE("T = 0") {
    const Config c = make_cfg(0, 2, 1, 8, 8, 32, 16, 64, 4, 8);
    const r::Outputs out = r::forward(c, r::Inputs{});
    CHECK(out.o.empty());
    CHECK(out.sel.idx.empty());
  }
}

TEST_CASE("ref: all branches, selection and forward against brute force, T = 1..200 sweep") {
  uint64_t seed = 1000;
  for (Config c : kSweep)
    for (int64_t T : {1, 2, 7, 15, 16, 17, 31, 32, 33, 47, 48, 63, 64, 65, 127, 128, 129, 200}) {
      c.T = T;
      check_all(c, seed++);
    }
}

TEST_CASE("ref: every T = 1..200 for a tiny config") {
  uint64_t seed = 5000;
  Config c = make_cfg(0, 2, 1, 4, 3, 32, 16, 64, 4, 9);
  for (int64_t T = 1; T <= 200; ++T) {
    c.T = T;
    check_all(c, seed++);
  }
}

TEST_CASE("ref: longer sequences where top-n chooses among many blocks") {
  uint64_t seed = 9000;
  // T = 600 with lsel = 64 gives 10 selection blocks: 4..7 free candidates for one or two free places.
  for (Config c : {make_cfg(600, 2, 2, 8, 12, 32, 16, 64, 4, 5), make_cfg(600, 3, 1, 8, 8, 64, 64, 64, 5, 0),
                   make_cfg(600, 16, 1, 8, 8, 32, 32, 64, 4, 100)})
    check_all(c, seed++);
}

TEST_CASE("ref: causality: query t does not depend on T") {
  namespace r = nsajit::ref;
  const Config full = make_cfg(300, 3, 1, 8, 8, 32, 16, 64, 4, 20);
  const Data x = make_data(full, 77);
  const Vec g = rand01(size_t(full.T * full.HQ), 78);
  const r::Outputs ref = r::forward(full, r::Inputs{x.q.data(), x.k.data(), x.v.data(), nullptr, nullptr, nullptr,
                                                    nullptr, nullptr, nullptr, g.data(), g.data(), g.data()});
  for (int64_t T : {1, 31, 32, 100, 191, 192, 193, 299}) {
    Config c = full;
    c.T = T;
    const r::Outputs part = r::forward(c, r::Inputs{x.q.data(), x.k.data(), x.v.data(), nullptr, nullptr, nullptr,
                                                    nullptr, nullptr, nullptr, g.data(), g.data(), g.data()});
    CAPTURE(T);
    const size_t no = size_t(T * c.HQ * c.dv);
    CHECK(part.o == Vec(ref.o.begin(), ref.o.begin() + long(no)));
    CHECK(part.sel.cnt == IVec(ref.sel.cnt.begin(), ref.sel.cnt.begin() + long(T * c.H)));
    CHECK(part.sel.idx == IVec(ref.sel.idx.begin(), ref.sel.idx.begin() + long(T * c.H * c.n)));
  }
}

TEST_CASE("ref: Eq. 9 overlap weights") {
  using nsajit::ref::overlap_weight;
  // l = 32, d = 16, l' = 64: selection block 1 = [64,128) gets compressed blocks 3..7 with weights 1,2,2,2,1.
  const double w1[] = {0, 0, 0, 1, 2, 2, 2, 1, 0, 0};
  for (int i = 0; i < 10; ++i) CHECK(overlap_weight(i, 1, 32, 16, 64) == w1[i]);
  // l = l' = d: identity.
  for (int i = 0; i < 6; ++i)
    for (int j = 0; j < 6; ++j) CHECK(overlap_weight(i, j, 64, 64, 64) == (i == j ? 1.0 : 0.0));
  // Each compressed block's weights sum to l/d.
  for (int i = 0; i < 20; ++i) {
    double s = 0;
    for (int j = 0; j < 20; ++j) s += overlap_weight(i, j, 32, 8, 16);
    CHECK(s == 4.0);
  }
}

TEST_CASE("ref: uniform p_cmp gives scores proportional to 7,8,8,7 (l=32, d=16, l'=64)") {
  namespace r = nsajit::ref;
  const Config c = make_cfg(256, 6, 2, 8, 8, 32, 16, 64, 4, 0);
  const Data x = make_data(c, 11);
  // All compressed keys of a KV head equal: every visible block gets the same probability.
  Vec kc(size_t(c.num_cmp() * c.H * c.dk));
  for (int64_t i = 0; i < c.num_cmp(); ++i)
    for (int kh = 0; kh < c.H; ++kh)
      for (int ch = 0; ch < c.dk; ++ch) kc[size_t((i * c.H + kh) * c.dk + ch)] = 0.3 * (kh + 1) + ch;
  const r::Selection sel = r::select_blocks(c, x.q.data(), kc.data());
  REQUIRE(sel.num_sel == 4);
  const int64_t t = 255;  // nc(255) = 15 blocks of tokens [16i, 16i+32), i = 0..14
  REQUIRE(r::visible_cmp_blocks(t, c.l, c.d) == 15);
  const double expect[] = {7, 8, 8, 7};
  for (int kh = 0; kh < c.H; ++kh)
    for (int j = 0; j < 4; ++j)
      CHECK(sel.score[size_t((t * c.H + kh) * 4 + j)] == doctest::Approx(expect[j] * c.G() / 15.0).epsilon(1e-13));
}

TEST_CASE("ref: forced blocks, top-n choice, and ties to the lower index") {
  namespace r = nsajit::ref;
  SUBCASE("exact ties: all compressed keys equal, (64,64,64)") {
    for (int n : {4, 6}) {
      const Config c = make_cfg(640, 3, 1, 8, 8, 64, 64, 64, n, 0);
      const Data x = make_data(c, 12);
      Vec kc(size_t(c.num_cmp() * c.H * c.dk), 0.25);
      const r::Selection sel = r::select_blocks(c, x.q.data(), kc.data());
      for (int64_t t = 0; t < c.T; ++t) {
        CAPTURE(t);
        const int64_t J = t / 64;
        // forced 0, J-1, J; then the lowest-index free blocks 1, 2, ...
        std::set<int64_t> expect = {0, J};
        if (J >= 1) expect.insert(J - 1);
        for (int64_t j = 1; int64_t(expect.size()) < std::min<int64_t>(n, J + 1); ++j) expect.insert(j);
        IVec want(expect.begin(), expect.end());
        want.resize(size_t(n), -1);
        CHECK(IVec(sel.idx.begin() + t * n, sel.idx.begin() + (t + 1) * n) == want);
        CHECK(sel.cnt[size_t(t)] == int32_t(std::min<int64_t>(n, J + 1)));
      }
    }
  }
  SUBCASE("highest scores win over lower indices") {
    const Config c = make_cfg(640, 2, 1, 4, 4, 64, 64, 64, 5, 0);
    Vec q(size_t(c.T * c.HQ * c.dk), 1.0);
    Vec kc(size_t(c.num_cmp() * c.H * c.dk), 0.0);
    for (int ch = 0; ch < c.dk; ++ch) {
      kc[size_t(5 * c.dk + ch)] = 1.0;  // block 5 best
      kc[size_t(6 * c.dk + ch)] = 0.5;  // block 6 second
    }
    const r::Selection sel = r::select_blocks(c, q.data(), kc.data());
    const int64_t t = 639;  // J = 9: forced 0, 8, 9 + two free
    CHECK(IVec(sel.idx.begin() + t * 5, sel.idx.begin() + t * 5 + 5) == IVec{0, 5, 6, 8, 9});
    // Forced blocks stay even though block 0, 8, 9 score below 5 and 6; at J = 6 block 5 is forced (J-1).
    const int64_t t6 = 6 * 64 + 10;
    CHECK(IVec(sel.idx.begin() + t6 * 5, sel.idx.begin() + t6 * 5 + 5) == IVec{0, 1, 2, 5, 6});
  }
  SUBCASE("cnt = min(n, floor(t/l') + 1) and -1 padding") {
    const Config c = make_cfg(300, 2, 2, 8, 8, 32, 16, 64, 4, 0);
    const Data x = make_data(c, 13);
    Vec kc(size_t(c.num_cmp() * c.H * c.dk));
    r::mean_pool(c, x.k.data(), c.dk, kc.data());
    const r::Selection sel = r::select_blocks(c, x.q.data(), kc.data());
    for (int64_t t = 0; t < c.T; ++t)
      for (int kh = 0; kh < c.H; ++kh) {
        const int32_t cn = sel.cnt[size_t(t * c.H + kh)];
        CHECK(cn == std::min<int64_t>(4, t / 64 + 1));
        const int32_t* row = sel.idx.data() + (t * c.H + kh) * c.n;
        for (int m = 0; m < c.n; ++m) {
          if (m >= cn) CHECK(row[m] == -1);
          if (m > 0 && m < cn) CHECK(row[m] > row[m - 1]);
        }
        CHECK(row[0] == 0);
        CHECK(row[cn - 1] == t / 64);
        if (t >= 64) CHECK(row[cn - 2] == t / 64 - 1);
      }
  }
}

TEST_CASE("ref: the partial local block only contributes keys s <= t") {
  namespace r = nsajit::ref;
  const Config c = make_cfg(100, 2, 1, 8, 8, 64, 64, 64, 4, 0);
  Data x = make_data(c, 14);
  for (int64_t s = 65; s < c.T; ++s)
    for (int ch = 0; ch < c.dv; ++ch) x.v[size_t(s * c.dv + ch)] = 1e6;  // would show if leaked in
  IVec idx(size_t(c.T * c.n), -1), cnt(size_t(c.T), 0);
  for (int64_t t = 64; t < c.T; ++t) {
    idx[size_t(t * c.n)] = 1;
    cnt[size_t(t)] = 1;
  }
  Vec o(size_t(c.T * c.HQ * c.dv), NAN), lse(size_t(c.T * c.HQ), NAN);
  r::selected_attention(c, x.q.data(), x.k.data(), x.v.data(), idx.data(), cnt.data(), o.data(), lse.data());
  for (int h = 0; h < c.HQ; ++h) {
    const int64_t t = 64;  // block 1 cut at t: the only key is 64
    double s = 0;
    for (int ch = 0; ch < c.dk; ++ch) s += x.q[size_t((t * c.HQ + h) * c.dk + ch)] * x.k[size_t(t * c.dk + ch)];
    CHECK(lse[size_t(t * c.HQ + h)] == doctest::Approx(c.scale * s).epsilon(1e-14));
    for (int ch = 0; ch < c.dv; ++ch) CHECK(o[size_t((t * c.HQ + h) * c.dv + ch)] == doctest::Approx(x.v[size_t(t * c.dv + ch)]).epsilon(1e-14));
  }
  const Branch b = brute_selected(c, x.q, x.k, x.v, idx, cnt);
  CHECK(max_err(o, b.o) <= kTol);
  CHECK(max_err(lse, b.lse) <= kTol);
  // Bad indices are rejected.
  idx[size_t(80 * c.n)] = 2;  // NS = 2
  CHECK_THROWS_AS(r::selected_attention(c, x.q.data(), x.k.data(), x.v.data(), idx.data(), cnt.data(), o.data(), lse.data()),
                  std::invalid_argument);
  idx[size_t(80 * c.n)] = 1;
  idx[size_t(80 * c.n + 1)] = 1;
  cnt[80] = 2;
  CHECK_THROWS_AS(r::selected_attention(c, x.q.data(), x.k.data(), x.v.data(), idx.data(), cnt.data(), o.data(), lse.data()),
                  std::invalid_argument);
}

TEST_CASE("ref: selection_matches near-tie rule") {
  namespace r = nsajit::ref;
  const Config c = make_cfg(320, 1, 1, 8, 8, 32, 16, 64, 4, 0);
  const Data x = make_data(c, 15);
  Vec kc(size_t(c.num_cmp() * c.H * c.dk));
  r::mean_pool(c, x.k.data(), c.dk, kc.data());
  r::Selection ref = r::select_blocks(c, x.q.data(), kc.data());
  std::string why;
  CHECK(r::selection_matches(ref, ref.idx.data(), ref.cnt.data(), c, 0.0, &why));
  CHECK(why.empty());

  // Craft query t = 319 (J = 4): forced 0, 3, 4; one free place among blocks 1, 2.
  const int64_t t = 319, NS = ref.num_sel;
  REQUIRE(NS == 5);
  double* sc = ref.score.data() + t * NS;
  sc[0] = 5.0, sc[1] = 1.0, sc[2] = 0.9995, sc[3] = 3.0, sc[4] = 4.0;
  const IVec want{0, 1, 3, 4};
  std::copy(want.begin(), want.end(), ref.idx.begin() + t * 4);
  IVec idx = ref.idx, cnt = ref.cnt;
  auto set_row = [&](IVec row) { std::copy(row.begin(), row.end(), idx.begin() + t * 4); };

  SUBCASE("near-tie swap accepted") {
    set_row({0, 2, 3, 4});  // 1.0 - 0.9995 = 5e-4 <= 1e-3 * 5
    CHECK(r::selection_matches(ref, idx.data(), cnt.data(), c, 1e-3, &why));
    CHECK_FALSE(r::selection_matches(ref, idx.data(), cnt.data(), c, 1e-5, &why));  // but not with a tighter tol
    CHECK(why.find("t=319") != std::string::npos);
  }
  SUBCASE("the tolerance is relative to the largest score of the query") {
    set_row({0, 2, 3, 4});
    sc[0] = 50.0, sc[2] = 0.998;  // 2e-3 <= 1e-3 * 50
    CHECK(r::selection_matches(ref, idx.data(), cnt.data(), c, 1e-3, &why));
    // Scores 1000x smaller: a difference of 1e-5 exceeds 1e-3 * 5e-3 (an absolute 1e-3 would accept it).
    sc[0] = 5e-3, sc[1] = 1e-3, sc[2] = 0.99e-3, sc[3] = 3e-3, sc[4] = 4e-3;
    CHECK_FALSE(r::selection_matches(ref, idx.data(), cnt.data(), c, 1e-3, &why));
    sc[2] = 0.9995e-3;
    CHECK(r::selection_matches(ref, idx.data(), cnt.data(), c, 1e-3, &why));
  }
  SUBCASE("real mismatch rejected") {
    sc[2] = 0.99;  // 0.01 > 5e-3
    set_row({0, 2, 3, 4});
    CHECK_FALSE(r::selection_matches(ref, idx.data(), cnt.data(), c, 1e-3, &why));
    CHECK(why.find("t=319") != std::string::npos);
  }
  SUBCASE("missing forced block rejected even when its score is low") {
    set_row({0, 1, 2, 4});
    CHECK_FALSE(r::selection_matches(ref, idx.data(), cnt.data(), c, 1.0, &why));
    CHECK(why.find("forced block 3") != std::string::npos);
  }
  SUBCASE("cnt mismatch rejected") {
    cnt[size_t(t)] = 3;
    set_row({0, 3, 4, -1});
    CHECK_FALSE(r::selection_matches(ref, idx.data(), cnt.data(), c, 1.0, &why));
    CHECK(why.find("cnt") != std::string::npos);
  }
  SUBCASE("unsorted, duplicated, non-causal or unpadded rows rejected") {
    set_row({0, 3, 1, 4});
    CHECK_FALSE(r::selection_matches(ref, idx.data(), cnt.data(), c, 1.0, &why));
    set_row({0, 3, 3, 4});
    CHECK_FALSE(r::selection_matches(ref, idx.data(), cnt.data(), c, 1.0, &why));
    set_row({0, 1, 3, 4});
    idx[0] = 1;  // t = 0: only block 0 is causal
    CHECK_FALSE(r::selection_matches(ref, idx.data(), cnt.data(), c, 1.0, &why));
    idx[0] = 0;
    idx[1] = 0;  // t = 0: cnt = 1, entry 1 must be -1
    CHECK_FALSE(r::selection_matches(ref, idx.data(), cnt.data(), c, 1.0, &why));
    CHECK(why.find("t=0") != std::string::npos);
  }
}

TEST_CASE("ref: forward uses the per-branch k/v and gates") {
  namespace r = nsajit::ref;
  const Config c = make_cfg(150, 6, 2, 8, 12, 32, 16, 64, 4, 11);
  const Data x = make_data(c, 20), xs = make_data(c, 30), xw = make_data(c, 40);
  const int64_t nc = c.num_cmp();
  const Vec kc = randn(size_t(nc * c.H * c.dk), 50), vc = randn(size_t(nc * c.H * c.dv), 51);
  const size_t nl = size_t(c.T * c.HQ), no = nl * size_t(c.dv);
  const Vec g1 = rand01(nl, 52), g2 = rand01(nl, 53), g3 = rand01(nl, 54);
  r::Inputs in{x.q.data(), x.k.data(), x.v.data(), xs.k.data(), xs.v.data(), xw.k.data(), xw.v.data(),
               kc.data(), vc.data(), g1.data(), g2.data(), g3.data()};
  const Branch bc = brute_compressed(c, x.q, kc, vc);
  const BruteSel bs = brute_select(c, x.q, kc);
  const Branch bsl = brute_selected(c, x.q, xs.k, xs.v, bs.idx, bs.cnt);
  const Branch bw = brute_window(c, x.q, xw.k, xw.v);
  auto gated = [&](bool a, bool b, bool w) {
    Vec e(no, 0.0);
    for (size_t th = 0; th < nl; ++th)
      for (int ch = 0; ch < c.dv; ++ch) {
        const size_t i = th * size_t(c.dv) + size_t(ch);
        e[i] = (a ? g1[th] * bc.o[i] : 0.0) + (b ? g2[th] * bsl.o[i] : 0.0) + (w ? g3[th] * bw.o[i] : 0.0);
      }
    return e;
  };
  r::Outputs out = r::forward(c, in);
  CHECK(max_err(out.o, gated(true, true, true)) <= kTol);
  CHECK(max_err(out.o_win, bw.o) <= kTol);
  CHECK(max_err(out.o_slc, bsl.o) <= kTol);
  CHECK(max_err(out.o_cmp, bc.o) <= kTol);
  CHECK(out.k_cmp == kc);
  CHECK(out.sel.idx == bs.idx);

  in.g_cmp = nullptr;
  out = r::forward(c, in);
  CHECK(max_err(out.o, gated(false, true, true)) <= kTol);
  in.g_slc = nullptr;
  out = r::forward(c, in);
  CHECK(max_err(out.o, gated(false, false, true)) <= kTol);
  in.g_win = nullptr;
  in.g_cmp = g1.data();
  out = r::forward(c, in);
  CHECK(max_err(out.o, gated(true, false, false)) <= kTol);
  CHECK(max_err(out.o_win, bw.o) <= kTol);  // disabled branches are still reported

  // Defaults: k_slc/v_slc/k_win/v_win = k/v, k_cmp/v_cmp = mean pool.
  r::Inputs def{x.q.data(), x.k.data(), x.v.data()};
  def.g_win = g3.data();
  out = r::forward(c, def);
  CHECK(max_err(out.k_cmp, brute_mean_pool(c, x.k, c.dk)) <= kTol);
  CHECK(max_err(out.v_cmp, brute_mean_pool(c, x.v, c.dv)) <= kTol);
  const Branch bw0 = brute_window(c, x.q, x.k, x.v);
  Vec e(no);
  for (size_t i = 0; i < no; ++i) e[i] = g3[i / size_t(c.dv)] * bw0.o[i];
  CHECK(max_err(out.o, e) <= kTol);

  // w = 0 disables the window branch even with a gate.
  Config c0 = c;
  c0.w = 0;
  out = r::forward(c0, def);
  CHECK(std::all_of(out.o.begin(), out.o.end(), [](double v) { return v == 0.0; }));
}

TEST_CASE("ref: varlen equals per-sequence calls") {
  namespace r = nsajit::ref;
  const IVec cu{0, 5, 5, 77, 140, 200};
  Config c = make_cfg(200, 6, 2, 8, 10, 32, 16, 64, 4, 9);
  const Data x = make_data(c, 60);
  const size_t nl = size_t(c.T * c.HQ);
  const Vec g1 = rand01(nl, 61), g2 = rand01(nl, 62), g3 = rand01(nl, 63);
  const r::Inputs packed{x.q.data(), x.k.data(), x.v.data(), nullptr, nullptr, nullptr, nullptr, nullptr, nullptr,
                         g1.data(), g2.data(), g3.data()};
  const std::vector<r::Outputs> outs = r::forward_varlen(c, cu, packed);
  REQUIRE(outs.size() == cu.size() - 1);
  const std::vector<int64_t> ccu = r::cmp_cu_seqlens(cu, c.l, c.d);
  CHECK(ccu == std::vector<int64_t>{0, 0, 0, 3, 5, 7});
  for (size_t i = 0; i + 1 < cu.size(); ++i) {
    CAPTURE(i);
    Config ci = c;
    ci.T = cu[i + 1] - cu[i];
    // Copy the sequence out so that an offset bug cannot hide.
    const int64_t s = cu[i];
    auto slice = [&](const Vec& a, int64_t w) { return Vec(a.begin() + s * w, a.begin() + (s + ci.T) * w); };
    const Vec q = slice(x.q, c.HQ * c.dk), k = slice(x.k, c.H * c.dk), v = slice(x.v, c.H * c.dv);
    const Vec a = slice(g1, c.HQ), b = slice(g2, c.HQ), w = slice(g3, c.HQ);
    const r::Outputs one = r::forward(ci, r::Inputs{q.data(), k.data(), v.data(), nullptr, nullptr, nullptr, nullptr,
                                                    nullptr, nullptr, a.data(), b.data(), w.data()});
    CHECK(outs[i].o == one.o);
    CHECK(outs[i].lse_slc == one.lse_slc);
    CHECK(outs[i].sel.idx == one.sel.idx);
    CHECK(outs[i].k_cmp == one.k_cmp);
    CHECK(int64_t(outs[i].k_cmp.size()) == (ccu[i + 1] - ccu[i]) * c.H * c.dk);
  }
  // Packed k_cmp given explicitly at the cmp_cu_seqlens offsets reproduces the mean-pool result.
  const r::Outputs cat = r::concat_outputs(outs);
  CHECK(cat.o.size() == size_t(c.T * c.HQ * c.dv));
  CHECK(cat.sel.idx.size() == size_t(c.T * c.H * c.n));
  r::Inputs packed2 = packed;
  packed2.k_cmp = cat.k_cmp.data();
  packed2.v_cmp = cat.v_cmp.data();
  CHECK(r::concat_outputs(r::forward_varlen(c, cu, packed2)).o == cat.o);

  CHECK_THROWS_AS(r::forward_varlen(c, IVec{1, 200}, packed), std::invalid_argument);
  CHECK_THROWS_AS(r::forward_varlen(c, IVec{0, 50, 40, 200}, packed), std::invalid_argument);
  CHECK_THROWS_AS(r::forward_varlen(c, IVec{0, 50, 199}, packed), std::invalid_argument);
  CHECK_THROWS_AS(r::forward_varlen(c, IVec{}, packed), std::invalid_argument);
}

TEST_CASE("ref: Config validation names the bad field") {
  using nsajit::ref::Config;
  const Config good = make_cfg(100, 16, 4, 192, 128, 32, 16, 64, 16, 512);
  CHECK_NOTHROW(good.validate());
  auto expect = [](Config c, const char* field) {
    CAPTURE(field);
    CHECK_THROWS_WITH_AS(c.validate(), doctest::Contains(field), std::invalid_argument);
  };
  Config c = good;
  c.T = -1;
  expect(c, "Config.T");
  c = good, c.HQ = 0;
  expect(c, "Config.HQ");
  c = good, c.H = -2;
  expect(c, "Config.H");
  c = good, c.HQ = 10;  // 10 % 4 != 0
  expect(c, "Config.HQ");
  c = good, c.dk = 0;
  expect(c, "Config.dk");
  c = good, c.dv = 0;
  expect(c, "Config.dv");
  c = good, c.l = 0;
  expect(c, "Config.l");
  c = good, c.d = 0;
  expect(c, "Config.d");
  c = good, c.lsel = 0;
  expect(c, "Config.lsel");
  c = good, c.l = 40;  // 16 does not divide 40
  expect(c, "Config.l");
  c = good, c.lsel = 72;
  expect(c, "Config.lsel");
  c = good, c.n = 2;
  expect(c, "Config.n");
  c = good, c.w = -1;
  expect(c, "Config.w");
  c = good, c.scale = 0.0;
  expect(c, "Config.scale");
  c = good, c.scale = std::numeric_limits<double>::quiet_NaN();
  expect(c, "Config.scale");
  c = good, c.T = 0;
  CHECK_NOTHROW(c.validate());
}
