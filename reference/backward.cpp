// Float64 CPU reference of the NSA backward (NSA.md "Backward"); declarations in reference/reference.h.
#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include "reference/reference.h"

namespace nsajit::ref {

namespace {

[[noreturn]] void bad(const std::string& what) { throw std::invalid_argument("nsajit::ref: " + what); }

void require(const void* p, const char* name) {
  if (!p) bad(std::string(name) + " is null");
}

double dot(const double* a, const double* b, int n) {
  double s = 0.0;
  for (int i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

// Rows of one (t, h)'s key set: key/value rows to read and the dK/dV rows to accumulate into.
struct KeySet {
  std::vector<const double*> k, v;
  std::vector<double*> dk, dv;
  void clear() {
    k.clear();
    v.clear();
    dk.clear();
    dv.clear();
  }
  void add(const double* kr, const double* vr, double* dkr, double* dvr) {
    k.push_back(kr);
    v.push_back(vr);
    dk.push_back(dkr);
    dv.push_back(dvr);
  }
};

// The standard attention backward of one query row over its key set; dq is written, dK/dV accumulated.
void attend_backward(const double* q, const KeySet& ks, int dk, int dv, double scale, const double* o, double lse,
                     const double* do_b, double* dq, const char* who) {
  std::fill(dq, dq + dk, 0.0);
  if (ks.k.empty()) return;  // o = 0, lse = -inf: no gradient
  if (!std::isfinite(lse)) bad(std::string(who) + ": lse is not finite for a row with keys");
  const double delta = dot(do_b, o, dv);
  for (size_t i = 0; i < ks.k.size(); ++i) {
    const double p = std::exp(scale * dot(q, ks.k[i], dk) - lse);
    const double ds = p * (dot(do_b, ks.v[i], dv) - delta);
    for (int c = 0; c < dk; ++c) {
      dq[c] += scale * ds * ks.k[i][c];
      ks.dk[i][c] += scale * ds * q[c];
    }
    for (int c = 0; c < dv; ++c) ks.dv[i][c] += p * do_b[c];
  }
}

void require_common(const char* who, const double* q, const double* o, const double* lse, const double* do_b,
                    const double* dq) {
  const std::string w(who);
  require(q, (w + ": q").c_str());
  require(o, (w + ": o").c_str());
  require(lse, (w + ": lse").c_str());
  require(do_b, (w + ": do_b").c_str());
  require(dq, (w + ": dq").c_str());
}

void add_into(std::vector<double>& dst, const std::vector<double>& src) {
  for (size_t i = 0; i < dst.size(); ++i) dst[i] += src[i];
}

}  // namespace

void window_attention_backward(const Config& cfg, const double* q, const double* k, const double* v, const double* o,
                               const double* lse, const double* do_b, double* dq, double* dk, double* dv) {
  cfg.validate();
  if (cfg.T == 0) return;
  const char* who = "window_attention_backward";
  require_common(who, q, o, lse, do_b, dq);
  require(k, "window_attention_backward: k");
  require(v, "window_attention_backward: v");
  require(dk, "window_attention_backward: dk");
  require(dv, "window_attention_backward: dv");
  const int G = cfg.G(), H = cfg.H;
  std::fill(dk, dk + cfg.T * H * cfg.dk, 0.0);
  std::fill(dv, dv + cfg.T * H * cfg.dv, 0.0);
  KeySet ks;
  for (int64_t t = 0; t < cfg.T; ++t)
    for (int h = 0; h < cfg.HQ; ++h) {
      const int kh = h / G;
      ks.clear();
      for (int64_t s = std::max<int64_t>(0, t - cfg.w + 1); s <= t && cfg.w > 0; ++s)
        ks.add(k + (s * H + kh) * cfg.dk, v + (s * H + kh) * cfg.dv, dk + (s * H + kh) * cfg.dk,
               dv + (s * H + kh) * cfg.dv);
      const int64_t th = t * cfg.HQ + h;
      attend_backward(q + th * cfg.dk, ks, cfg.dk, cfg.dv, cfg.scale, o + th * cfg.dv, lse[th], do_b + th * cfg.dv,
                      dq + th * cfg.dk, who);
    }
}

void compressed_attention_backward(const Config& cfg, const double* q, const double* k_cmp, const double* v_cmp,
                                   const double* o, const double* lse, const double* do_b, double* dq, double* dk_cmp,
                                   double* dv_cmp) {
  cfg.validate();
  if (cfg.T == 0) return;
  const char* who = "compressed_attention_backward";
  require_common(who, q, o, lse, do_b, dq);
  const int64_t Nc = cfg.num_cmp();
  const int G = cfg.G(), H = cfg.H;
  if (Nc > 0) {
    require(k_cmp, "compressed_attention_backward: k_cmp");
    require(v_cmp, "compressed_attention_backward: v_cmp");
    require(dk_cmp, "compressed_attention_backward: dk_cmp");
    require(dv_cmp, "compressed_attention_backward: dv_cmp");
    std::fill(dk_cmp, dk_cmp + Nc * H * cfg.dk, 0.0);
    std::fill(dv_cmp, dv_cmp + Nc * H * cfg.dv, 0.0);
  }
  KeySet ks;
  for (int64_t t = 0; t < cfg.T; ++t)
    for (int h = 0; h < cfg.HQ; ++h) {
      const int kh = h / G;
      ks.clear();
      const int64_t nc = visible_cmp_blocks(t, cfg.l, cfg.d);
      for (int64_t i = 0; i < nc; ++i)
        ks.add(k_cmp + (i * H + kh) * cfg.dk, v_cmp + (i * H + kh) * cfg.dv, dk_cmp + (i * H + kh) * cfg.dk,
               dv_cmp + (i * H + kh) * cfg.dv);
      const int64_t th = t * cfg.HQ + h;
      attend_backward(q + th * cfg.dk, ks, cfg.dk, cfg.dv, cfg.scale, o + th * cfg.dv, lse[th], do_b + th * cfg.dv,
                      dq + th * cfg.dk, who);
    }
}

void selected_attention_backward(const Config& cfg, const double* q, const double* k, const double* v,
                                 const int32_t* idx, const int32_t* cnt, const double* o, const double* lse,
                                 const double* do_b, double* dq, double* dk, double* dv) {
  cfg.validate();
  if (cfg.T == 0) return;
  const char* who = "selected_attention_backward";
  require_common(who, q, o, lse, do_b, dq);
  require(k, "selected_attention_backward: k");
  require(v, "selected_attention_backward: v");
  require(idx, "selected_attention_backward: idx");
  require(cnt, "selected_attention_backward: cnt");
  require(dk, "selected_attention_backward: dk");
  require(dv, "selected_attention_backward: dv");
  const int G = cfg.G(), H = cfg.H, n = cfg.n;
  const int64_t NS = cfg.num_sel();
  std::fill(dk, dk + cfg.T * H * cfg.dk, 0.0);
  std::fill(dv, dv + cfg.T * H * cfg.dv, 0.0);
  KeySet ks;
  std::vector<char> seen(static_cast<size_t>(NS));
  for (int64_t t = 0; t < cfg.T; ++t)
    for (int h = 0; h < cfg.HQ; ++h) {
      const int kh = h / G;
      const int32_t c = cnt[t * H + kh];
      if (c < 0 || c > n)
        bad("selected_attention_backward: cnt[" + std::to_string(t) + "," + std::to_string(kh) +
            "] = " + std::to_string(c) + " is outside [0, n]");
      ks.clear();
      std::fill(seen.begin(), seen.end(), 0);
      for (int m = 0; m < c; ++m) {
        const int64_t j = idx[(t * H + kh) * n + m];
        if (j < 0 || j >= NS || seen[j])
          bad("selected_attention_backward: idx[" + std::to_string(t) + "," + std::to_string(kh) + "," +
              std::to_string(m) + "] = " + std::to_string(j) + " is out of range or repeated");
        seen[j] = 1;
        for (int64_t s = j * cfg.lsel; s < (j + 1) * cfg.lsel && s <= t; ++s)
          ks.add(k + (s * H + kh) * cfg.dk, v + (s * H + kh) * cfg.dv, dk + (s * H + kh) * cfg.dk,
                 dv + (s * H + kh) * cfg.dv);
      }
      const int64_t th = t * cfg.HQ + h;
      attend_backward(q + th * cfg.dk, ks, cfg.dk, cfg.dv, cfg.scale, o + th * cfg.dv, lse[th], do_b + th * cfg.dv,
                      dq + th * cfg.dk, who);
    }
}

void mean_pool_backward(const Config& cfg, const double* dx_cmp, int dim, double* dx) {
  cfg.validate();
  if (dim <= 0) bad("mean_pool_backward: dim must be > 0");
  if (cfg.T == 0) return;
  require(dx, "mean_pool_backward: dx");
  std::fill(dx, dx + cfg.T * cfg.H * dim, 0.0);
  const int64_t nc = cfg.num_cmp();
  if (nc == 0) return;
  require(dx_cmp, "mean_pool_backward: dx_cmp");
  for (int64_t i = 0; i < nc; ++i)
    for (int kh = 0; kh < cfg.H; ++kh) {
      const double* g = dx_cmp + (i * cfg.H + kh) * dim;
      for (int64_t s = i * cfg.d; s < i * cfg.d + cfg.l; ++s) {
        double* row = dx + (s * cfg.H + kh) * dim;
        for (int c = 0; c < dim; ++c) row[c] += g[c] / cfg.l;
      }
    }
}

void gate_backward(const Config& cfg, const double* do_, const double* g, const double* o_b, double* do_b, double* dg) {
  cfg.validate();
  if (cfg.T == 0) return;
  require(do_, "gate_backward: do");
  if (do_b) require(g, "gate_backward: g");
  if (dg) require(o_b, "gate_backward: o_b");
  for (int64_t th = 0; th < cfg.T * cfg.HQ; ++th) {
    const double* d = do_ + th * cfg.dv;
    if (do_b)
      for (int c = 0; c < cfg.dv; ++c) do_b[th * cfg.dv + c] = g[th] * d[c];
    if (dg) dg[th] = dot(d, o_b + th * cfg.dv, cfg.dv);
  }
}

Grads backward(const Config& cfg, const Inputs& in, const Outputs& fwd, const double* do_) {
  cfg.validate();
  const int64_t T = cfg.T, Nc = cfg.num_cmp();
  const size_t n_q = size_t(T * cfg.HQ * cfg.dk), n_o = size_t(T * cfg.HQ * cfg.dv), n_l = size_t(T * cfg.HQ);
  const size_t n_k = size_t(T * cfg.H * cfg.dk), n_v = size_t(T * cfg.H * cfg.dv);
  const size_t n_kc = size_t(Nc * cfg.H * cfg.dk), n_vc = size_t(Nc * cfg.H * cfg.dv);
  const size_t n_idx = size_t(T * cfg.H * cfg.n), n_cnt = size_t(T * cfg.H);
  for (const std::vector<double>* x : {&fwd.o_cmp, &fwd.o_slc, &fwd.o_win})
    if (x->size() != n_o) bad("backward: Outputs o_cmp/o_slc/o_win do not have the Config's shape [T,HQ,dv]");
  for (const std::vector<double>* x : {&fwd.lse_cmp, &fwd.lse_slc, &fwd.lse_win})
    if (x->size() != n_l) bad("backward: Outputs lse_cmp/lse_slc/lse_win do not have the Config's shape [T,HQ]");
  if (fwd.k_cmp.size() != n_kc || fwd.v_cmp.size() != n_vc)
    bad("backward: Outputs k_cmp/v_cmp do not have the Config's shape [Nc,H,dk|dv]");
  if (fwd.sel.idx.size() != n_idx || fwd.sel.cnt.size() != n_cnt)
    bad("backward: Outputs sel.idx/cnt do not have the Config's shape [T,H,n] / [T,H]");

  Grads g;
  g.dq.assign(n_q, 0.0);
  g.dk.assign(n_k, 0.0);
  g.dv.assign(n_v, 0.0);
  if (in.k_slc) g.dk_slc.assign(n_k, 0.0);
  if (in.v_slc) g.dv_slc.assign(n_v, 0.0);
  if (in.k_win) g.dk_win.assign(n_k, 0.0);
  if (in.v_win) g.dv_win.assign(n_v, 0.0);
  g.dk_cmp.assign(n_kc, 0.0);
  g.dv_cmp.assign(n_vc, 0.0);
  if (in.g_cmp) g.dg_cmp.assign(n_l, 0.0);
  if (in.g_slc) g.dg_slc.assign(n_l, 0.0);
  if (in.g_win) g.dg_win.assign(n_l, 0.0);
  if (T == 0) return g;

  require(do_, "backward: do");
  require(in.q, "backward: Inputs.q");
  require(in.k, "backward: Inputs.k");
  require(in.v, "backward: Inputs.v");
  if (in.idx || in.cnt) {
    require(in.idx, "backward: Inputs.idx (Inputs.cnt is given)");
    require(in.cnt, "backward: Inputs.cnt (Inputs.idx is given)");
    if (!std::equal(fwd.sel.idx.begin(), fwd.sel.idx.end(), in.idx) ||
        !std::equal(fwd.sel.cnt.begin(), fwd.sel.cnt.end(), in.cnt))
      bad("backward: Outputs.sel differs from Inputs.idx/cnt (fwd was not computed with these Inputs)");
  }
  const double* k_slc = in.k_slc ? in.k_slc : in.k;
  const double* v_slc = in.v_slc ? in.v_slc : in.v;
  const double* k_win = in.k_win ? in.k_win : in.k;
  const double* v_win = in.v_win ? in.v_win : in.v;

  std::vector<double> do_b(n_o), dq(n_q), dk(n_k), dv(n_v);
  // Branch 1, then back through the mean pool when it made k_cmp / v_cmp.
  if (in.g_cmp) {
    gate_backward(cfg, do_, in.g_cmp, fwd.o_cmp.data(), do_b.data(), g.dg_cmp.data());
    compressed_attention_backward(cfg, in.q, fwd.k_cmp.data(), fwd.v_cmp.data(), fwd.o_cmp.data(), fwd.lse_cmp.data(),
                                  do_b.data(), dq.data(), g.dk_cmp.data(), g.dv_cmp.data());
    add_into(g.dq, dq);
    if (!in.k_cmp) {
      mean_pool_backward(cfg, g.dk_cmp.data(), cfg.dk, dk.data());
      add_into(g.dk, dk);
    }
    if (!in.v_cmp) {
      mean_pool_backward(cfg, g.dv_cmp.data(), cfg.dv, dv.data());
      add_into(g.dv, dv);
    }
  }
  // Branch 2 over the forward's (fixed) selection.
  if (in.g_slc) {
    gate_backward(cfg, do_, in.g_slc, fwd.o_slc.data(), do_b.data(), g.dg_slc.data());
    selected_attention_backward(cfg, in.q, k_slc, v_slc, fwd.sel.idx.data(), fwd.sel.cnt.data(), fwd.o_slc.data(),
                                fwd.lse_slc.data(), do_b.data(), dq.data(), dk.data(), dv.data());
    add_into(g.dq, dq);
    add_into(in.k_slc ? g.dk_slc : g.dk, dk);
    add_into(in.v_slc ? g.dv_slc : g.dv, dv);
  }
  // Branch 3; w == 0 disables it even with a gate (the forward ignores g_win, so dg_win = 0).
  if (in.g_win && cfg.w > 0) {
    gate_backward(cfg, do_, in.g_win, fwd.o_win.data(), do_b.data(), g.dg_win.data());
    window_attention_backward(cfg, in.q, k_win, v_win, fwd.o_win.data(), fwd.lse_win.data(), do_b.data(), dq.data(),
                              dk.data(), dv.data());
    add_into(g.dq, dq);
    add_into(in.k_win ? g.dk_win : g.dk, dk);
    add_into(in.v_win ? g.dv_win : g.dv, dv);
  }
  return g;
}

std::vector<Grads> backward_varlen(const Config& cfg, const std::vector<int32_t>& cu, const Inputs& p,
                                   const std::vector<Outputs>& fwd, const double* do_) {
  cfg.validate();
  validate_cu_seqlens(cu, cfg.T);
  if (fwd.size() + 1 != cu.size())
    bad("backward_varlen: " + std::to_string(fwd.size()) + " Outputs for " + std::to_string(cu.size() - 1) +
        " sequences");
  const std::vector<int64_t> ccu = cmp_cu_seqlens(cu, cfg.l, cfg.d);
  auto off = [](const double* base, int64_t rows, int64_t width) { return base ? base + rows * width : nullptr; };
  std::vector<Grads> outs;
  for (size_t i = 0; i + 1 < cu.size(); ++i) {
    Config c = cfg;
    c.T = cu[i + 1] - cu[i];
    const int64_t s = cu[i], sc = ccu[i];
    const int64_t qw = int64_t(cfg.HQ) * cfg.dk, kw = int64_t(cfg.H) * cfg.dk, vw = int64_t(cfg.H) * cfg.dv;
    Inputs in;
    in.q = off(p.q, s, qw);
    in.k = off(p.k, s, kw);
    in.v = off(p.v, s, vw);
    in.k_slc = off(p.k_slc, s, kw);
    in.v_slc = off(p.v_slc, s, vw);
    in.k_win = off(p.k_win, s, kw);
    in.v_win = off(p.v_win, s, vw);
    in.k_cmp = off(p.k_cmp, sc, kw);
    in.v_cmp = off(p.v_cmp, sc, vw);
    in.g_cmp = off(p.g_cmp, s, cfg.HQ);
    in.g_slc = off(p.g_slc, s, cfg.HQ);
    in.g_win = off(p.g_win, s, cfg.HQ);
    in.idx = p.idx ? p.idx + s * cfg.H * cfg.n : nullptr;
    in.cnt = p.cnt ? p.cnt + s * cfg.H : nullptr;
    outs.push_back(backward(c, in, fwd[i], off(do_, s, int64_t(cfg.HQ) * cfg.dv)));
  }
  return outs;
}

Grads concat_grads(const std::vector<Grads>& parts) {
  Grads out;
  auto cat = [](std::vector<double>& dst, const std::vector<double>& src) {
    dst.insert(dst.end(), src.begin(), src.end());
  };
  for (const Grads& p : parts) {
    cat(out.dq, p.dq);
    cat(out.dk, p.dk);
    cat(out.dv, p.dv);
    cat(out.dk_slc, p.dk_slc);
    cat(out.dv_slc, p.dv_slc);
    cat(out.dk_win, p.dk_win);
    cat(out.dv_win, p.dv_win);
    cat(out.dk_cmp, p.dk_cmp);
    cat(out.dv_cmp, p.dv_cmp);
    cat(out.dg_cmp, p.dg_cmp);
    cat(out.dg_slc, p.dg_slc);
    cat(out.dg_win, p.dg_win);
  }
  return out;
}

}  // namespace nsajit::ref
