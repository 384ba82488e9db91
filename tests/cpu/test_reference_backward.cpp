// Tests of the float64 CPU reference of the NSA backward (reference/backward.cpp) against central finite
// differences of L = sum(do * o) through ref::forward, with the selection held fixed (Inputs.idx/cnt), for
// every input tensor, element by element; plus dg_b against its definition, disabled branches, the
// building blocks (every element written), the mean-pool backward against explicit token lists, varlen, and
// the fixed-selection hook of the forward.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "reference/reference.h"

namespace {

namespace r = nsajit::ref;
using r::Config;
using std::int64_t;
using Vec = std::vector<double>;
using IVec = std::vector<int32_t>;

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

Config make_cfg(int64_t T, int HQ, int H, int dk, int dv, int l, int d, int lsel, int n, int w) {
  return Config{T, HQ, H, dk, dv, l, d, lsel, n, w, 1.0 / std::sqrt(double(dk))};
}

std::string describe(const Config& c) {
  std::ostringstream s;
  s << "T=" << c.T << " HQ=" << c.HQ << " H=" << c.H << " dk=" << c.dk << " dv=" << c.dv << " l=" << c.l << " d=" << c.d
    << " lsel=" << c.lsel << " n=" << c.n << " w=" << c.w;
  return s.str();
}

const double* ptr(const Vec& x) { return x.empty() ? nullptr : x.data(); }
const int32_t* ptr(const IVec& x) { return x.empty() ? nullptr : x.data(); }

// Which optional inputs a case gives.
struct Given {
  bool k_slc = false, v_slc = false, k_win = false, v_win = false, k_cmp = false, v_cmp = false;
  bool g_cmp = true, g_slc = true, g_win = true;
};

// One problem: every tensor owned here; an empty Vec is an input not given (null). cu empty: one sequence.
struct Case {
  Config cfg;
  IVec cu;
  Vec q, k, v, k_slc, v_slc, k_win, v_win, k_cmp, v_cmp, g_cmp, g_slc, g_win, dO;
  IVec idx, cnt;  // the fixed selection once set

  r::Inputs inputs() const {
    r::Inputs in;
    in.q = ptr(q), in.k = ptr(k), in.v = ptr(v);
    in.k_slc = ptr(k_slc), in.v_slc = ptr(v_slc), in.k_win = ptr(k_win), in.v_win = ptr(v_win);
    in.k_cmp = ptr(k_cmp), in.v_cmp = ptr(v_cmp);
    in.g_cmp = ptr(g_cmp), in.g_slc = ptr(g_slc), in.g_win = ptr(g_win);
    in.idx = ptr(idx), in.cnt = ptr(cnt);
    return in;
  }
  int64_t total_cmp() const { return cu.empty() ? cfg.num_cmp() : r::cmp_cu_seqlens(cu, cfg.l, cfg.d).back(); }
};

Case make_case(const Config& cfg, const IVec& cu, const Given& gv, uint64_t seed) {
  Case c;
  c.cfg = cfg;
  c.cu = cu;
  const size_t T = size_t(cfg.T), nk = T * size_t(cfg.H * cfg.dk), nv = T * size_t(cfg.H * cfg.dv);
  const size_t nl = T * size_t(cfg.HQ);
  const size_t nc = size_t(c.total_cmp());
  c.q = randn(nl * size_t(cfg.dk), seed);
  c.k = randn(nk, seed + 1);
  c.v = randn(nv, seed + 2);
  if (gv.k_slc) c.k_slc = randn(nk, seed + 3);
  if (gv.v_slc) c.v_slc = randn(nv, seed + 4);
  if (gv.k_win) c.k_win = randn(nk, seed + 5);
  if (gv.v_win) c.v_win = randn(nv, seed + 6);
  if (gv.k_cmp) c.k_cmp = randn(nc * size_t(cfg.H * cfg.dk), seed + 7);
  if (gv.v_cmp) c.v_cmp = randn(nc * size_t(cfg.H * cfg.dv), seed + 8);
  if (gv.g_cmp) c.g_cmp = rand01(nl, seed + 9);
  if (gv.g_slc) c.g_slc = rand01(nl, seed + 10);
  if (gv.g_win) c.g_win = rand01(nl, seed + 11);
  c.dO = randn(nl * size_t(cfg.dv), seed + 12);
  return c;
}

r::Outputs run_forward(const Case& c) {
  return c.cu.empty() ? r::forward(c.cfg, c.inputs()) : r::concat_outputs(r::forward_varlen(c.cfg, c.cu, c.inputs()));
}

r::Grads run_backward(const Case& c) {
  if (c.cu.empty()) return r::backward(c.cfg, c.inputs(), r::forward(c.cfg, c.inputs()), c.dO.data());
  return r::concat_grads(
      r::backward_varlen(c.cfg, c.cu, c.inputs(), r::forward_varlen(c.cfg, c.cu, c.inputs()), c.dO.data()));
}

double loss(const Case& c) {
  const Vec o = run_forward(c).o;
  double s = 0.0;
  for (size_t i = 0; i < o.size(); ++i) s += c.dO[i] * o[i];
  return s;
}

constexpr double kStep = 1e-6;   // central-difference step
constexpr double kFdTol = 1e-6;  // per element, relative to the largest |gradient| of the tensor

// Central differences of loss() w.r.t. every element of x (a tensor of c), against the analytic gradient:
// every element must satisfy |fd - an| <= kFdTol * max(max|an|, max|fd|) over the tensor. Returns that worst
// ratio (0 when both are exactly zero everywhere).
double fd_check(Case& c, Vec& x, const Vec& analytic, const std::string& name) {
  INFO("tensor " << name);
  REQUIRE(analytic.size() == x.size());
  Vec fd(x.size());
  for (size_t e = 0; e < x.size(); ++e) {
    const double x0 = x[e], xp = x0 + kStep, xm = x0 - kStep;
    x[e] = xp;
    const double lp = loss(c);
    x[e] = xm;
    const double lm = loss(c);
    x[e] = x0;
    fd[e] = (lp - lm) / (xp - xm);
  }
  double scale = 0.0;
  for (size_t e = 0; e < x.size(); ++e) scale = std::max({scale, std::abs(fd[e]), std::abs(analytic[e])});
  double worst = 0.0;
  size_t at = 0;
  for (size_t e = 0; e < x.size(); ++e) {
    const double err = std::abs(fd[e] - analytic[e]);
    if (!(err <= kFdTol * scale)) {  // NaN fails too
      FAIL_CHECK(name << "[" << e << "]: finite difference " << fd[e] << " vs analytic " << analytic[e] << " (error "
                      << err << " > " << kFdTol << " * " << scale << ")");
      return std::numeric_limits<double>::infinity();
    }
    if (scale > 0 && err / scale > worst) worst = err / scale, at = e;
  }
  if (std::getenv("NSAJIT_TEST_VERBOSE"))
    MESSAGE(name << ": " << x.size() << " elements, worst |fd - an| / max|grad| = " << worst << " at " << at
                 << ", max|grad| = " << scale);
  return worst;
}

// The whole check of one case: fix the selection (the forward's own unless the case has one), check that
// the fixed-selection forward reproduces the free forward, check dg_b against its definition, then finite
// differences for every input tensor the case gives.
void check_case(Case& c) {
  INFO(describe(c.cfg) << (c.cu.empty() ? "" : " varlen"));
  const bool own_selection = c.idx.empty();
  const r::Outputs free_fwd = run_forward(c);
  if (own_selection) {
    c.idx = free_fwd.sel.idx;
    c.cnt = free_fwd.sel.cnt;
  }
  const r::Outputs f = run_forward(c);
  if (own_selection) {  // the hook changes nothing when it is given the forward's own choice
    CHECK(f.o == free_fwd.o);
    CHECK(f.o_slc == free_fwd.o_slc);
    CHECK(f.lse_slc == free_fwd.lse_slc);
    CHECK(f.sel.score == free_fwd.sel.score);
  }
  CHECK(f.sel.idx == c.idx);
  CHECK(f.sel.cnt == c.cnt);
  r::Grads g = run_backward(c);

  // dg_b = <do, o_b>, straight from the definition (zero for a window disabled by w = 0); empty when no gate.
  const int dv = c.cfg.dv;
  const size_t nl = size_t(c.cfg.T * c.cfg.HQ);
  auto check_dg = [&](const Vec& gate, const Vec& dg, const Vec& ob, bool enabled, const std::string& name) {
    INFO("dg_" << name);
    if (gate.empty()) {
      CHECK(dg.empty());
      return;
    }
    REQUIRE(dg.size() == nl);
    double worst = 0.0;
    for (size_t th = 0; th < nl; ++th) {
      double s = 0.0;
      for (int ch = 0; ch < dv; ++ch) s += c.dO[th * size_t(dv) + size_t(ch)] * ob[th * size_t(dv) + size_t(ch)];
      if (!enabled) s = 0.0;
      worst = std::max(worst, std::abs(dg[th] - s) / std::max(1.0, std::abs(s)));
    }
    CHECK(worst <= 1e-14);
  };
  check_dg(c.g_cmp, g.dg_cmp, f.o_cmp, true, "cmp");
  check_dg(c.g_slc, g.dg_slc, f.o_slc, true, "slc");
  check_dg(c.g_win, g.dg_win, f.o_win, c.cfg.w > 0, "win");

  // Shapes: separate per-branch gradients exist exactly for the inputs given.
  CHECK(g.dk_slc.size() == c.k_slc.size());
  CHECK(g.dv_slc.size() == c.v_slc.size());
  CHECK(g.dk_win.size() == c.k_win.size());
  CHECK(g.dv_win.size() == c.v_win.size());
  CHECK(g.dk_cmp.size() == size_t(c.total_cmp() * c.cfg.H * c.cfg.dk));
  CHECK(g.dv_cmp.size() == size_t(c.total_cmp() * c.cfg.H * c.cfg.dv));

  struct Tensor {
    Vec* x;
    const Vec* an;
    std::string name;
  };
  const std::vector<Tensor> tensors = {{&c.q, &g.dq, "q"},
                                       {&c.k, &g.dk, "k"},
                                       {&c.v, &g.dv, "v"},
                                       {&c.k_slc, &g.dk_slc, "k_slc"},
                                       {&c.v_slc, &g.dv_slc, "v_slc"},
                                       {&c.k_win, &g.dk_win, "k_win"},
                                       {&c.v_win, &g.dv_win, "v_win"},
                                       {&c.k_cmp, &g.dk_cmp, "k_cmp"},
                                       {&c.v_cmp, &g.dv_cmp, "v_cmp"},
                                       {&c.g_cmp, &g.dg_cmp, "g_cmp"},
                                       {&c.g_slc, &g.dg_slc, "g_slc"},
                                       {&c.g_win, &g.dg_win, "g_win"}};
  for (const Tensor& t : tensors)
    if (!t.x->empty()) fd_check(c, *t.x, *t.an, t.name);

  // The gradient w.r.t. the mean pool's output is the one of the same tensor given as k_cmp/v_cmp.
  if (c.k_cmp.empty() || c.v_cmp.empty()) {
    Case given = c;
    given.k_cmp = f.k_cmp;
    given.v_cmp = f.v_cmp;
    const r::Grads gg = run_backward(given);
    CHECK(gg.dk_cmp == g.dk_cmp);
    CHECK(gg.dv_cmp == g.dv_cmp);
    CHECK(gg.dq == g.dq);
  }
}

// A valid selection that differs from the reference's (the lowest-scoring candidates after the forced
// blocks), as a GPU's near-tie choice might: any valid selection must work.
void set_other_selection(Case& c) {
  const r::Outputs f = run_forward(c);
  const Config& cfg = c.cfg;
  const int64_t NS = cfg.num_sel();
  c.idx.assign(size_t(cfg.T * cfg.H * cfg.n), -1);
  c.cnt.assign(size_t(cfg.T * cfg.H), 0);
  for (int64_t t = 0; t < cfg.T; ++t)
    for (int kh = 0; kh < cfg.H; ++kh) {
      const int64_t jt = t / cfg.lsel;
      const double* score = f.sel.score.data() + (t * cfg.H + kh) * NS;
      std::vector<int64_t> free;
      for (int64_t j = 1; j < jt - 1; ++j) free.push_back(j);
      std::stable_sort(free.begin(), free.end(), [&](int64_t a, int64_t b) { return score[a] < score[b]; });
      std::vector<int64_t> chosen = {0};
      if (jt >= 1) chosen.push_back(jt);
      if (jt >= 2) chosen.push_back(jt - 1);
      for (size_t m = 0; int64_t(chosen.size()) < std::min<int64_t>(cfg.n, jt + 1); ++m) chosen.push_back(free[m]);
      std::sort(chosen.begin(), chosen.end());
      c.cnt[size_t(t * cfg.H + kh)] = int32_t(chosen.size());
      for (size_t m = 0; m < chosen.size(); ++m) c.idx[size_t((t * cfg.H + kh) * cfg.n) + m] = int32_t(chosen[m]);
    }
  const r::Outputs other = run_forward(c);
  CHECK(other.sel.idx == c.idx);
  CHECK(other.sel.idx != f.sel.idx);  // the case must really differ
  CHECK(other.o_slc != f.o_slc);
  CHECK(other.o_cmp == f.o_cmp);  // nothing but branch 2 changes
  CHECK(other.o_win == f.o_win);
  CHECK(other.sel.score == f.sel.score);
}

}  // namespace

TEST_CASE("ref backward: finite differences, l=32 d=16 (overlapping), G=3, separate per-branch k/v, given k_cmp") {
  // NS = 4 and n = 3: t >= 48 attends blocks {0, 2, 3} (not 1); T = 52 ends inside a selection block; rows
  // t < 31 have no compressed key. v_cmp is the mean pool of v; k_win and v_slc default to k / v. (Real
  // top-n choices are in the l=d and varlen cases: with l=32 they need T > 64, too slow under sanitizers.)
  Given gv;
  gv.k_slc = gv.v_win = gv.k_cmp = true;
  Case c = make_case(make_cfg(52, 3, 1, 3, 2, 32, 16, 16, 3, 5), {}, gv, 100);
  check_case(c);
}

TEST_CASE("ref backward: finite differences, l=32 d=16 built-in mean pool, G=2, shared k/v") {
  // Nc = 2 (tokens 0..31 and 16..47); T = 52 ends inside the fourth selection block.
  Case c = make_case(make_cfg(52, 2, 1, 3, 4, 32, 16, 16, 4, 3), {}, Given{}, 200);
  check_case(c);
}

TEST_CASE("ref backward: finite differences, l=d=8, G=1, w=0, a selection other than the reference's") {
  // w = 0 with a window gate: the forward ignores g_win, so dg_win = 0 and the finite differences agree.
  // The selection is a valid one different from select_blocks' (as a GPU's may be); top-n over NS = 6.
  Given gv;
  gv.k_win = gv.v_slc = gv.v_cmp = true;
  Case c = make_case(make_cfg(45, 2, 2, 3, 5, 8, 8, 8, 4, 0), {}, gv, 300);
  set_other_selection(c);
  check_case(c);
}

TEST_CASE("ref backward: finite differences, varlen with an empty sequence and one shorter than l") {
  // cu = {0, 12, 12, 54}: sequence 0 is shorter than l (no compressed block at all), sequence 1 is empty;
  // k_cmp is the mean pool, v_cmp is given packed at cmp_cu_seqlens. Sequence 2 has real top-n (local
  // t >= 32), so a selection read at the wrong offset differs.
  Given gv;
  gv.v_cmp = true;
  Case c = make_case(make_cfg(54, 2, 1, 3, 2, 16, 8, 8, 4, 4), {0, 12, 12, 54}, gv, 400);
  REQUIRE(r::cmp_cu_seqlens(c.cu, c.cfg.l, c.cfg.d) == std::vector<int64_t>{0, 0, 0, 4});
  check_case(c);
}

TEST_CASE("ref backward: the mean-pool backward against explicit token lists") {
  for (const auto& ld : {std::pair{32, 16}, {8, 8}, {32, 8}, {16, 16}}) {
    const Config c = make_cfg(77, 2, 2, 3, 3, ld.first, ld.second, 32, 4, 0);
    CAPTURE(describe(c));
    const int dim = 5;
    const int64_t nc = c.num_cmp();
    const Vec gc = randn(size_t(nc * c.H * dim), 500);
    Vec dx(size_t(c.T * c.H * dim), NAN);
    r::mean_pool_backward(c, gc.data(), dim, dx.data());
    double worst = 0.0;
    for (int64_t s = 0; s < c.T; ++s)
      for (int kh = 0; kh < c.H; ++kh)
        for (int ch = 0; ch < dim; ++ch) {
          long double e = 0;  // every block i whose token range [i*d, i*d+l) holds s
          for (int64_t i = 0; i < nc; ++i)
            if (s >= i * c.d && s < i * c.d + c.l) e += (long double)gc[size_t((i * c.H + kh) * dim + ch)] / c.l;
          const double got = dx[size_t((s * c.H + kh) * dim + ch)];
          worst = std::max(worst, std::abs(got - double(e)));
          if (std::isnan(got)) worst = std::numeric_limits<double>::infinity();
        }
    CHECK(worst <= 1e-15);
    // Adjoint identity: <mean_pool(x), gc> = <x, mean_pool_backward(gc)>.
    const Vec x = randn(size_t(c.T * c.H * dim), 501);
    Vec xc(gc.size());
    r::mean_pool(c, x.data(), dim, xc.data());
    double a = 0, b = 0;
    for (size_t i = 0; i < xc.size(); ++i) a += xc[i] * gc[i];
    for (size_t i = 0; i < x.size(); ++i) b += x[i] * dx[i];
    CHECK(a == doctest::Approx(b).epsilon(1e-13));
  }
}

TEST_CASE("ref backward: a disabled branch gives zero gradients and no dg") {
  Given gv;
  gv.k_slc = gv.v_slc = gv.k_win = gv.v_win = true;
  const Case base = make_case(make_cfg(70, 4, 2, 4, 3, 16, 8, 16, 4, 6), {}, gv, 600);
  const r::Grads all = run_backward(base);
  auto zero = [](const Vec& x) { return std::all_of(x.begin(), x.end(), [](double e) { return e == 0.0; }); };
  // Every gradient of the full case is non-trivial, so the zero checks below mean something.
  for (const Vec* x : {&all.dq, &all.dk, &all.dv, &all.dk_slc, &all.dv_slc, &all.dk_win, &all.dv_win, &all.dk_cmp,
                       &all.dv_cmp, &all.dg_cmp, &all.dg_slc, &all.dg_win})
    CHECK_FALSE(zero(*x));

  SUBCASE("selected") {
    Case c = base;
    c.g_slc.clear();
    const r::Grads g = run_backward(c);
    CHECK(zero(g.dk_slc));
    CHECK(zero(g.dv_slc));
    CHECK(g.dg_slc.empty());
    CHECK_FALSE(zero(g.dk_win));
    // The same as a gate of zeros, except that a zero gate has a dg.
    c.g_slc.assign(size_t(c.cfg.T * c.cfg.HQ), 0.0);
    const r::Grads z = run_backward(c);
    CHECK(z.dq == g.dq);
    CHECK(z.dk == g.dk);
    CHECK(z.dk_win == g.dk_win);
    CHECK(z.dk_slc == g.dk_slc);
    CHECK(z.dg_slc == all.dg_slc);
  }
  SUBCASE("window") {
    Case c = base;
    c.g_win.clear();
    const r::Grads g = run_backward(c);
    CHECK(zero(g.dk_win));
    CHECK(zero(g.dv_win));
    CHECK(g.dg_win.empty());
    CHECK_FALSE(zero(g.dk_slc));
    c.g_win.assign(size_t(c.cfg.T * c.cfg.HQ), 0.0);
    const r::Grads z = run_backward(c);
    CHECK(z.dq == g.dq);
    CHECK(z.dk_slc == g.dk_slc);
    CHECK(zero(z.dk_win));
  }
  SUBCASE("compressed: nothing reaches k_cmp/v_cmp or, through the mean pool, k/v") {
    Case c = base;
    c.g_cmp.clear();
    const r::Grads g = run_backward(c);
    CHECK(zero(g.dk_cmp));
    CHECK(zero(g.dv_cmp));
    CHECK(zero(g.dk));  // k/v feed branch 1 only here (k_slc/v_slc/k_win/v_win are separate)
    CHECK(zero(g.dv));
    CHECK(g.dg_cmp.empty());
    CHECK_FALSE(zero(g.dq));
  }
  SUBCASE("all three") {
    Case c = base;
    c.g_cmp.clear(), c.g_slc.clear(), c.g_win.clear();
    const r::Grads g = run_backward(c);
    for (const Vec* x : {&g.dq, &g.dk, &g.dv, &g.dk_slc, &g.dv_slc, &g.dk_win, &g.dv_win, &g.dk_cmp, &g.dv_cmp})
      CHECK(zero(*x));
    CHECK(g.dg_cmp.empty());
    CHECK(g.dg_slc.empty());
    CHECK(g.dg_win.empty());
  }
}

TEST_CASE("ref backward: building blocks write every element and add up to backward()") {
  // One branch enabled at a time with a gate of ones, so do_b = do and backward() is that branch alone.
  Case c = make_case(make_cfg(52, 6, 2, 4, 5, 16, 8, 8, 4, 7), {}, Given{}, 700);
  const Config& cfg = c.cfg;
  const r::Outputs f = run_forward(c);
  const Vec ones(size_t(cfg.T * cfg.HQ), 1.0);
  const size_t nq = size_t(cfg.T * cfg.HQ * cfg.dk), nk = size_t(cfg.T * cfg.H * cfg.dk),
               nv = size_t(cfg.T * cfg.H * cfg.dv);
  const size_t nkc = size_t(cfg.num_cmp() * cfg.H * cfg.dk), nvc = size_t(cfg.num_cmp() * cfg.H * cfg.dv);
  auto only = [&](const Vec& g_cmp, const Vec& g_slc, const Vec& g_win) {
    Case one = c;
    one.g_cmp = g_cmp, one.g_slc = g_slc, one.g_win = g_win;
    return r::backward(cfg, one.inputs(), f, c.dO.data());
  };
  auto no_nan = [](const Vec& x) { return std::none_of(x.begin(), x.end(), [](double e) { return std::isnan(e); }); };

  Vec dq(nq, NAN), dk(nk, NAN), dv(nv, NAN);
  r::window_attention_backward(cfg, c.q.data(), c.k.data(), c.v.data(), f.o_win.data(), f.lse_win.data(), c.dO.data(),
                               dq.data(), dk.data(), dv.data());
  CHECK(no_nan(dq));
  CHECK(no_nan(dk));
  r::Grads g = only({}, {}, ones);
  CHECK(dq == g.dq);
  CHECK(dk == g.dk);
  CHECK(dv == g.dv);

  std::fill(dq.begin(), dq.end(), NAN);
  std::fill(dk.begin(), dk.end(), NAN);
  std::fill(dv.begin(), dv.end(), NAN);
  r::selected_attention_backward(cfg, c.q.data(), c.k.data(), c.v.data(), f.sel.idx.data(), f.sel.cnt.data(),
                                 f.o_slc.data(), f.lse_slc.data(), c.dO.data(), dq.data(), dk.data(), dv.data());
  CHECK(no_nan(dq));
  CHECK(no_nan(dv));
  g = only({}, ones, {});
  CHECK(dq == g.dq);
  CHECK(dk == g.dk);
  CHECK(dv == g.dv);

  Vec dkc(nkc, NAN), dvc(nvc, NAN);
  std::fill(dq.begin(), dq.end(), NAN);
  r::compressed_attention_backward(cfg, c.q.data(), f.k_cmp.data(), f.v_cmp.data(), f.o_cmp.data(), f.lse_cmp.data(),
                                   c.dO.data(), dq.data(), dkc.data(), dvc.data());
  CHECK(no_nan(dq));
  CHECK(no_nan(dkc));
  g = only(ones, {}, {});
  CHECK(dq == g.dq);
  CHECK(dkc == g.dk_cmp);
  CHECK(dvc == g.dv_cmp);
  std::fill(dk.begin(), dk.end(), NAN);
  std::fill(dv.begin(), dv.end(), NAN);
  r::mean_pool_backward(cfg, dkc.data(), cfg.dk, dk.data());
  r::mean_pool_backward(cfg, dvc.data(), cfg.dv, dv.data());
  CHECK(dk == g.dk);
  CHECK(dv == g.dv);

  // gate_backward: do_b = g * do, dg = <do, o_b>.
  Vec do_b(c.dO.size(), NAN), dg(ones.size(), NAN);
  r::gate_backward(cfg, c.dO.data(), c.g_slc.data(), f.o_slc.data(), do_b.data(), dg.data());
  for (size_t i = 0; i < do_b.size(); ++i) CHECK(do_b[i] == c.g_slc[i / size_t(cfg.dv)] * c.dO[i]);
  CHECK(dg == r::backward(cfg, c.inputs(), f, c.dO.data()).dg_slc);

  // Summed over the three branches: the full backward (to rounding: the sum is taken in another order).
  const r::Grads full = only(ones, ones, ones);
  const r::Grads a = only(ones, {}, {}), b = only({}, ones, {}), w = only({}, {}, ones);
  double worst = 0.0;
  for (size_t i = 0; i < nq; ++i)
    worst = std::max(worst, std::abs(full.dq[i] - (a.dq[i] + b.dq[i] + w.dq[i])) / std::max(1.0, std::abs(full.dq[i])));
  for (size_t i = 0; i < nk; ++i)
    worst = std::max(worst, std::abs(full.dk[i] - (a.dk[i] + b.dk[i] + w.dk[i])) / std::max(1.0, std::abs(full.dk[i])));
  CHECK(worst <= 1e-14);
}

TEST_CASE("ref backward: empty inputs, shape and selection errors") {
  SUBCASE("T = 0") {
    const Config c = make_cfg(0, 2, 1, 4, 4, 16, 8, 16, 4, 3);
    const Vec g(1, 0.5);
    r::Inputs in;
    in.g_cmp = g.data();
    const r::Outputs f = r::forward(c, in);
    r::Grads gr;
    CHECK_NOTHROW(gr = r::backward(c, in, f, nullptr));
    CHECK(gr.dq.empty());
    CHECK(gr.dk_cmp.empty());
    CHECK(gr.dg_cmp.empty());
  }
  SUBCASE("varlen with only empty sequences") {
    Config c = make_cfg(0, 2, 1, 4, 4, 16, 8, 16, 4, 3);
    const IVec cu{0, 0, 0};
    r::Inputs in;
    const std::vector<r::Outputs> f = r::forward_varlen(c, cu, in);
    const std::vector<r::Grads> g = r::backward_varlen(c, cu, in, f, nullptr);
    CHECK(g.size() == 2);
    CHECK(r::concat_grads(g).dq.empty());
  }
  SUBCASE("errors") {
    Case c = make_case(make_cfg(40, 2, 1, 4, 4, 16, 8, 8, 3, 3), {}, Given{}, 800);
    r::Outputs f = run_forward(c);
    // A fixed selection that is not the one fwd was computed with.
    IVec idx = f.sel.idx, cnt = f.sel.cnt;
    idx[size_t(39 * c.cfg.n + 1)] = 2;  // t = 39 (J = 4): {0, 3, 4} -> {0, 2, 4}
    r::Inputs in = c.inputs();
    in.idx = idx.data();
    in.cnt = cnt.data();
    CHECK_THROWS_AS(r::backward(c.cfg, in, f, c.dO.data()), std::invalid_argument);
    CHECK_NOTHROW(r::backward(c.cfg, in, r::forward(c.cfg, in), c.dO.data()));
    in.cnt = nullptr;
    CHECK_THROWS_AS(r::forward(c.cfg, in), std::invalid_argument);
    // Outputs of another shape.
    Config other = c.cfg;
    other.T = 39;
    CHECK_THROWS_AS(r::backward(other, c.inputs(), f, c.dO.data()), std::invalid_argument);
    // A row with keys whose lse is -inf.
    f.lse_win[5] = -std::numeric_limits<double>::infinity();
    CHECK_THROWS_AS(r::backward(c.cfg, c.inputs(), f, c.dO.data()), std::invalid_argument);
    // varlen: one Outputs per sequence.
    const IVec cu{0, 40};
    CHECK_THROWS_AS(r::backward_varlen(c.cfg, cu, c.inputs(), {}, c.dO.data()), std::invalid_argument);
  }
}
