#include "reference/reference.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>
#include <stdexcept>

namespace nsajit::ref {

namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

[[noreturn]] void bad(const std::string& what) { throw std::invalid_argument("nsajit::ref: " + what); }

double dot(const double* a, const double* b, int n) {
  double s = 0.0;
  for (int i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

// softmax(scale * q K^T) V over the given key/value rows. Empty: o = 0, lse = -inf.
void attend(const double* q, const std::vector<const double*>& keys, const std::vector<const double*>& vals,
            int dk, int dv, double scale, double* o, double* lse) {
  std::fill(o, o + dv, 0.0);
  if (keys.empty()) {
    if (lse) *lse = kNegInf;
    return;
  }
  std::vector<double> logit(keys.size());
  double m = kNegInf;
  for (size_t i = 0; i < keys.size(); ++i) {
    logit[i] = scale * dot(q, keys[i], dk);
    m = std::max(m, logit[i]);
  }
  double sum = 0.0;
  for (size_t i = 0; i < keys.size(); ++i) {
    const double p = std::exp(logit[i] - m);
    sum += p;
    for (int c = 0; c < dv; ++c) o[c] += p * vals[i][c];
  }
  for (int c = 0; c < dv; ++c) o[c] /= sum;
  if (lse) *lse = m + std::log(sum);
}

void require(const void* p, const char* name) {
  if (!p) bad(std::string(name) + " is null");
}

}  // namespace

int64_t Config::num_cmp() const { return num_cmp_blocks(T, l, d); }
int64_t Config::num_sel() const { return num_sel_blocks(T, lsel); }

void Config::validate() const {
  auto positive = [](int64_t v, const char* name) {
    if (v <= 0) bad(std::string("Config.") + name + " must be > 0, got " + std::to_string(v));
  };
  if (T < 0) bad("Config.T must be >= 0, got " + std::to_string(T));
  positive(HQ, "HQ");
  positive(H, "H");
  positive(dk, "dk");
  positive(dv, "dv");
  positive(l, "l");
  positive(d, "d");
  positive(lsel, "lsel");
  if (HQ % H != 0)
    bad("Config.HQ (" + std::to_string(HQ) + ") must be a multiple of Config.H (" + std::to_string(H) + ")");
  if (l % d != 0) bad("Config.d (" + std::to_string(d) + ") must divide Config.l (" + std::to_string(l) + ")");
  if (lsel % d != 0)
    bad("Config.d (" + std::to_string(d) + ") must divide Config.lsel (" + std::to_string(lsel) + ")");
  if (n < 3) bad("Config.n must be >= 3 (the three forced blocks count towards n), got " + std::to_string(n));
  if (w < 0) bad("Config.w must be >= 0, got " + std::to_string(w));
  if (!std::isfinite(scale) || !(scale > 0.0)) {
    std::ostringstream s;
    s << "Config.scale must be finite and > 0, got " << scale;
    bad(s.str());
  }
}

int64_t floor_div(int64_t a, int64_t b) {
  int64_t q = a / b;
  if ((a % b != 0) && ((a < 0) != (b < 0))) --q;
  return q;
}

int64_t num_cmp_blocks(int64_t T, int l, int d) { return std::max<int64_t>(0, floor_div(T - l, d) + 1); }

int64_t visible_cmp_blocks(int64_t t, int l, int d) { return num_cmp_blocks(t + 1, l, d); }

int64_t num_sel_blocks(int64_t T, int lsel) { return T <= 0 ? 0 : (T + lsel - 1) / lsel; }

double overlap_weight(int64_t i, int64_t j, int l, int d, int lsel) {
  const int64_t lo = std::max<int64_t>(i * d, j * lsel);
  const int64_t hi = std::min<int64_t>(i * d + l, (j + 1) * lsel);
  return hi > lo ? double(hi - lo) / double(d) : 0.0;
}

void mean_pool(const Config& cfg, const double* x, int dim, double* x_cmp) {
  cfg.validate();
  if (dim <= 0) bad("mean_pool: dim must be > 0");
  const int64_t nc = cfg.num_cmp();
  if (nc == 0) return;
  require(x, "mean_pool: x");
  require(x_cmp, "mean_pool: x_cmp");
  for (int64_t i = 0; i < nc; ++i)
    for (int kh = 0; kh < cfg.H; ++kh) {
      double* out = x_cmp + (i * cfg.H + kh) * dim;
      std::fill(out, out + dim, 0.0);
      for (int64_t s = i * cfg.d; s < i * cfg.d + cfg.l; ++s) {
        const double* row = x + (s * cfg.H + kh) * dim;
        for (int c = 0; c < dim; ++c) out[c] += row[c];
      }
      for (int c = 0; c < dim; ++c) out[c] /= cfg.l;
    }
}

void window_attention(const Config& cfg, const double* q, const double* k, const double* v, double* o,
                      double* lse) {
  cfg.validate();
  if (cfg.T == 0) return;
  require(q, "window_attention: q");
  require(k, "window_attention: k");
  require(v, "window_attention: v");
  require(o, "window_attention: o");
  const int G = cfg.G();
  std::vector<const double*> keys, vals;
  for (int64_t t = 0; t < cfg.T; ++t)
    for (int h = 0; h < cfg.HQ; ++h) {
      const int kh = h / G;
      keys.clear();
      vals.clear();
      for (int64_t s = std::max<int64_t>(0, t - cfg.w + 1); s <= t && cfg.w > 0; ++s) {
        keys.push_back(k + (s * cfg.H + kh) * cfg.dk);
        vals.push_back(v + (s * cfg.H + kh) * cfg.dv);
      }
      attend(q + (t * cfg.HQ + h) * cfg.dk, keys, vals, cfg.dk, cfg.dv, cfg.scale,
             o + (t * cfg.HQ + h) * cfg.dv, lse ? lse + t * cfg.HQ + h : nullptr);
    }
}

void compressed_attention(const Config& cfg, const double* q, const double* k_cmp, const double* v_cmp,
                          double* o, double* lse) {
  cfg.validate();
  if (cfg.T == 0) return;
  require(q, "compressed_attention: q");
  require(o, "compressed_attention: o");
  if (cfg.num_cmp() > 0) {
    require(k_cmp, "compressed_attention: k_cmp");
    require(v_cmp, "compressed_attention: v_cmp");
  }
  const int G = cfg.G();
  std::vector<const double*> keys, vals;
  for (int64_t t = 0; t < cfg.T; ++t)
    for (int h = 0; h < cfg.HQ; ++h) {
      const int kh = h / G;
      keys.clear();
      vals.clear();
      const int64_t nc = visible_cmp_blocks(t, cfg.l, cfg.d);
      for (int64_t i = 0; i < nc; ++i) {
        keys.push_back(k_cmp + (i * cfg.H + kh) * cfg.dk);
        vals.push_back(v_cmp + (i * cfg.H + kh) * cfg.dv);
      }
      attend(q + (t * cfg.HQ + h) * cfg.dk, keys, vals, cfg.dk, cfg.dv, cfg.scale,
             o + (t * cfg.HQ + h) * cfg.dv, lse ? lse + t * cfg.HQ + h : nullptr);
    }
}

Selection select_blocks(const Config& cfg, const double* q, const double* k_cmp, const double* lse_cmp) {
  cfg.validate();
  const int64_t T = cfg.T, NS = cfg.num_sel();
  const int H = cfg.H, G = cfg.G(), n = cfg.n;
  Selection sel;
  sel.T = T;
  sel.H = H;
  sel.n = n;
  sel.num_sel = NS;
  sel.idx.assign(size_t(T * H * n), -1);
  sel.cnt.assign(size_t(T * H), 0);
  sel.score.assign(size_t(T * H * NS), 0.0);
  if (T == 0) return sel;
  require(q, "select_blocks: q");
  if (cfg.num_cmp() > 0) require(k_cmp, "select_blocks: k_cmp");

  std::vector<double> logit, p;
  std::vector<char> chosen(static_cast<size_t>(NS));
  for (int64_t t = 0; t < T; ++t) {
    const int64_t nc = visible_cmp_blocks(t, cfg.l, cfg.d);
    const int64_t jt = t / cfg.lsel;  // current (local) selection block
    for (int kh = 0; kh < H; ++kh) {
      double* score = sel.score.data() + (t * H + kh) * NS;
      // Eq. 10: sum over the group of p_slc, itself the overlap-weighted sum of p_cmp (Eq. 9).
      for (int h = kh * G; h < (kh + 1) * G; ++h) {
        const double* qr = q + (t * cfg.HQ + h) * cfg.dk;
        logit.assign(size_t(nc), 0.0);
        p.assign(size_t(nc), 0.0);
        double m = kNegInf;
        for (int64_t i = 0; i < nc; ++i) {
          logit[i] = cfg.scale * dot(qr, k_cmp + (i * H + kh) * cfg.dk, cfg.dk);
          m = std::max(m, logit[i]);
        }
        if (lse_cmp) {
          for (int64_t i = 0; i < nc; ++i) p[i] = std::exp(logit[i] - lse_cmp[t * cfg.HQ + h]);
        } else {
          double sum = 0.0;
          for (int64_t i = 0; i < nc; ++i) sum += (p[i] = std::exp(logit[i] - m));
          for (int64_t i = 0; i < nc; ++i) p[i] /= sum;
        }
        for (int64_t i = 0; i < nc; ++i) {
          const int64_t j0 = (i * cfg.d) / cfg.lsel, j1 = (i * cfg.d + cfg.l - 1) / cfg.lsel;
          for (int64_t j = j0; j <= j1 && j < NS; ++j) score[j] += overlap_weight(i, j, cfg.l, cfg.d, cfg.lsel) * p[i];
        }
      }
      // Forced blocks, then the highest scores (strict '>' in an ascending scan: ties go to the lower index).
      std::fill(chosen.begin(), chosen.end(), 0);
      const int64_t count = std::min<int64_t>(n, jt + 1);
      int64_t taken = 0;
      for (int64_t j : {int64_t(0), jt, jt - 1})
        if (j >= 0 && !chosen[j]) {
          chosen[j] = 1;
          ++taken;
        }
      for (; taken < count; ++taken) {
        int64_t best = -1;
        for (int64_t j = 0; j <= jt; ++j)
          if (!chosen[j] && (best < 0 || score[j] > score[best])) best = j;
        if (best < 0) break;  // unreachable: count <= jt + 1 candidates
        chosen[best] = 1;
      }
      int32_t* out = sel.idx.data() + (t * H + kh) * n;
      int m = 0;
      for (int64_t j = 0; j <= jt; ++j)
        if (chosen[j]) out[m++] = int32_t(j);
      sel.cnt[t * H + kh] = int32_t(count);
    }
  }
  return sel;
}

bool selection_matches(const Selection& ref, const int32_t* idx, const int32_t* cnt, const Config& cfg,
                       double rel_tol, std::string* why) {
  cfg.validate();
  const int64_t T = cfg.T, NS = cfg.num_sel();
  const int H = cfg.H, n = cfg.n;
  if (ref.idx.size() != size_t(T * H * n) || ref.cnt.size() != size_t(T * H) ||
      ref.score.size() != size_t(T * H * NS))
    bad("selection_matches: reference Selection does not match the Config's shape");
  if (T == 0) return true;
  require(idx, "selection_matches: idx");
  require(cnt, "selection_matches: cnt");
  auto fail = [&](int64_t t, int kh, const std::string& msg) {
    if (why) *why = "t=" + std::to_string(t) + " kv_head=" + std::to_string(kh) + ": " + msg;
    return false;
  };
  std::vector<char> in_got(static_cast<size_t>(NS)), in_ref(static_cast<size_t>(NS));
  for (int64_t t = 0; t < T; ++t) {
    const int64_t jt = t / cfg.lsel;
    for (int kh = 0; kh < H; ++kh) {
      const int32_t* g = idx + (t * H + kh) * n;
      const int32_t* r = ref.idx.data() + (t * H + kh) * n;
      const double* score = ref.score.data() + (t * H + kh) * NS;
      const int32_t c = cnt[t * H + kh], rc = ref.cnt[t * H + kh];
      if (c != rc) return fail(t, kh, "cnt " + std::to_string(c) + " != reference " + std::to_string(rc));
      std::fill(in_got.begin(), in_got.end(), 0);
      std::fill(in_ref.begin(), in_ref.end(), 0);
      for (int m = 0; m < n; ++m) {
        if (m >= c) {
          if (g[m] != -1) return fail(t, kh, "idx[" + std::to_string(m) + "] = " + std::to_string(g[m]) + " past cnt, expected -1");
          continue;
        }
        if (g[m] < 0 || g[m] > jt)
          return fail(t, kh, "idx[" + std::to_string(m) + "] = " + std::to_string(g[m]) + " is not a causal block (0.." + std::to_string(jt) + ")");
        if (m > 0 && g[m] <= g[m - 1]) return fail(t, kh, "idx is not strictly ascending at entry " + std::to_string(m));
        in_got[g[m]] = 1;
      }
      for (int m = 0; m < rc; ++m) {
        if (r[m] < 0 || r[m] >= NS) bad("selection_matches: reference idx out of range");
        in_ref[r[m]] = 1;
      }
      for (int64_t j : {int64_t(0), jt, jt - 1})
        if (j >= 0 && !in_got[j]) return fail(t, kh, "forced block " + std::to_string(j) + " missing");
      bool same = true;
      for (int64_t j = 0; j <= jt; ++j) same = same && in_got[j] == in_ref[j];
      if (same) continue;
      // Sets differ (forced blocks agree, so only top-n choices differ): accept only near ties.
      double top = 0.0, min_chosen = std::numeric_limits<double>::infinity(), max_unchosen = kNegInf;
      int64_t j_min = -1, j_max = -1;
      for (int64_t j = 0; j <= jt; ++j) {
        top = std::max(top, score[j]);
        const bool forced = j == 0 || j == jt || j == jt - 1;
        if (in_got[j] && !forced && score[j] < min_chosen) min_chosen = score[j], j_min = j;
        if (!in_got[j] && score[j] > max_unchosen) max_unchosen = score[j], j_max = j;
      }
      if (j_min >= 0 && j_max >= 0 && max_unchosen - min_chosen > rel_tol * top) {
        std::ostringstream s;
        s.precision(17);
        s << "chose block " << j_min << " (score " << min_chosen << ") over block " << j_max << " (score "
          << max_unchosen << "); difference exceeds " << rel_tol << " * " << top;
        return fail(t, kh, s.str());
      }
    }
  }
  return true;
}

void selected_attention(const Config& cfg, const double* q, const double* k, const double* v,
                        const int32_t* idx, const int32_t* cnt, double* o, double* lse) {
  cfg.validate();
  if (cfg.T == 0) return;
  require(q, "selected_attention: q");
  require(k, "selected_attention: k");
  require(v, "selected_attention: v");
  require(idx, "selected_attention: idx");
  require(cnt, "selected_attention: cnt");
  require(o, "selected_attention: o");
  const int G = cfg.G(), H = cfg.H, n = cfg.n;
  const int64_t NS = cfg.num_sel();
  std::vector<const double*> keys, vals;
  std::vector<char> seen(static_cast<size_t>(NS));
  for (int64_t t = 0; t < cfg.T; ++t)
    for (int h = 0; h < cfg.HQ; ++h) {
      const int kh = h / G;
      const int32_t c = cnt[t * H + kh];
      if (c < 0 || c > n)
        bad("selected_attention: cnt[" + std::to_string(t) + "," + std::to_string(kh) + "] = " + std::to_string(c) +
            " is outside [0, n]");
      keys.clear();
      vals.clear();
      std::fill(seen.begin(), seen.end(), 0);
      for (int m = 0; m < c; ++m) {
        const int64_t j = idx[(t * H + kh) * n + m];
        if (j < 0 || j >= NS || seen[j])
          bad("selected_attention: idx[" + std::to_string(t) + "," + std::to_string(kh) + "," + std::to_string(m) +
              "] = " + std::to_string(j) + " is out of range or repeated");
        seen[j] = 1;
        for (int64_t s = j * cfg.lsel; s < (j + 1) * cfg.lsel && s <= t; ++s) {
          keys.push_back(k + (s * H + kh) * cfg.dk);
          vals.push_back(v + (s * H + kh) * cfg.dv);
        }
      }
      attend(q + (t * cfg.HQ + h) * cfg.dk, keys, vals, cfg.dk, cfg.dv, cfg.scale,
             o + (t * cfg.HQ + h) * cfg.dv, lse ? lse + t * cfg.HQ + h : nullptr);
    }
}

Outputs forward(const Config& cfg, const Inputs& in) {
  cfg.validate();
  const int64_t T = cfg.T, Nc = cfg.num_cmp();
  const size_t n_o = size_t(T * cfg.HQ * cfg.dv), n_lse = size_t(T * cfg.HQ);
  Outputs out;
  out.o.assign(n_o, 0.0);
  out.o_cmp.assign(n_o, 0.0);
  out.o_slc.assign(n_o, 0.0);
  out.o_win.assign(n_o, 0.0);
  out.lse_cmp.assign(n_lse, kNegInf);
  out.lse_slc.assign(n_lse, kNegInf);
  out.lse_win.assign(n_lse, kNegInf);
  out.k_cmp.assign(size_t(Nc * cfg.H * cfg.dk), 0.0);
  out.v_cmp.assign(size_t(Nc * cfg.H * cfg.dv), 0.0);
  if (T == 0) {
    out.sel = select_blocks(cfg, nullptr, nullptr);
    return out;
  }
  require(in.q, "forward: Inputs.q");
  require(in.k, "forward: Inputs.k");
  require(in.v, "forward: Inputs.v");
  const double* k_slc = in.k_slc ? in.k_slc : in.k;
  const double* v_slc = in.v_slc ? in.v_slc : in.v;
  const double* k_win = in.k_win ? in.k_win : in.k;
  const double* v_win = in.v_win ? in.v_win : in.v;
  if (in.k_cmp)
    std::copy(in.k_cmp, in.k_cmp + out.k_cmp.size(), out.k_cmp.begin());
  else
    mean_pool(cfg, in.k, cfg.dk, out.k_cmp.data());
  if (in.v_cmp)
    std::copy(in.v_cmp, in.v_cmp + out.v_cmp.size(), out.v_cmp.begin());
  else
    mean_pool(cfg, in.v, cfg.dv, out.v_cmp.data());

  compressed_attention(cfg, in.q, out.k_cmp.data(), out.v_cmp.data(), out.o_cmp.data(), out.lse_cmp.data());
  out.sel = select_blocks(cfg, in.q, out.k_cmp.data(), out.lse_cmp.data());
  if (in.idx || in.cnt) {  // a fixed selection replaces the chosen one; selected_attention validates it
    require(in.idx, "forward: Inputs.idx (Inputs.cnt is given)");
    require(in.cnt, "forward: Inputs.cnt (Inputs.idx is given)");
    std::copy(in.idx, in.idx + out.sel.idx.size(), out.sel.idx.begin());
    std::copy(in.cnt, in.cnt + out.sel.cnt.size(), out.sel.cnt.begin());
  }
  selected_attention(cfg, in.q, k_slc, v_slc, out.sel.idx.data(), out.sel.cnt.data(), out.o_slc.data(),
                     out.lse_slc.data());
  window_attention(cfg, in.q, k_win, v_win, out.o_win.data(), out.lse_win.data());

  auto add = [&](const double* g, const std::vector<double>& ob) {
    if (!g) return;
    for (int64_t th = 0; th < T * cfg.HQ; ++th)
      for (int c = 0; c < cfg.dv; ++c) out.o[th * cfg.dv + c] += g[th] * ob[th * cfg.dv + c];
  };
  add(in.g_cmp, out.o_cmp);
  add(in.g_slc, out.o_slc);
  if (cfg.w > 0) add(in.g_win, out.o_win);
  return out;
}

void validate_cu_seqlens(const std::vector<int32_t>& cu, int64_t total_T) {
  if (cu.empty()) bad("cu_seqlens is empty (it has N+1 entries)");
  if (cu.front() != 0) bad("cu_seqlens[0] must be 0, got " + std::to_string(cu.front()));
  for (size_t i = 1; i < cu.size(); ++i)
    if (cu[i] < cu[i - 1]) bad("cu_seqlens must be non-decreasing (entry " + std::to_string(i) + ")");
  if (cu.back() != total_T)
    bad("cu_seqlens.back() (" + std::to_string(cu.back()) + ") must equal the packed length Config.T (" +
        std::to_string(total_T) + ")");
}

std::vector<int64_t> cmp_cu_seqlens(const std::vector<int32_t>& cu, int l, int d) {
  std::vector<int64_t> out(cu.size(), 0);
  for (size_t i = 1; i < cu.size(); ++i) out[i] = out[i - 1] + num_cmp_blocks(int64_t(cu[i]) - cu[i - 1], l, d);
  return out;
}

std::vector<Outputs> forward_varlen(const Config& cfg, const std::vector<int32_t>& cu, const Inputs& p) {
  cfg.validate();
  validate_cu_seqlens(cu, cfg.T);
  const std::vector<int64_t> ccu = cmp_cu_seqlens(cu, cfg.l, cfg.d);
  std::vector<Outputs> outs;
  auto off = [](const double* base, int64_t rows, int64_t width) { return base ? base + rows * width : nullptr; };
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
    outs.push_back(forward(c, in));
  }
  return outs;
}

Outputs concat_outputs(const std::vector<Outputs>& parts) {
  Outputs out;
  auto cat = [](std::vector<double>& dst, const std::vector<double>& src) { dst.insert(dst.end(), src.begin(), src.end()); };
  for (const Outputs& p : parts) {
    cat(out.o, p.o);
    cat(out.o_cmp, p.o_cmp);
    cat(out.o_slc, p.o_slc);
    cat(out.o_win, p.o_win);
    cat(out.lse_cmp, p.lse_cmp);
    cat(out.lse_slc, p.lse_slc);
    cat(out.lse_win, p.lse_win);
    cat(out.k_cmp, p.k_cmp);
    cat(out.v_cmp, p.v_cmp);
    cat(out.sel.score, p.sel.score);
    out.sel.idx.insert(out.sel.idx.end(), p.sel.idx.begin(), p.sel.idx.end());
    out.sel.cnt.insert(out.sel.cnt.end(), p.sel.cnt.begin(), p.sel.cnt.end());
    out.sel.T += p.sel.T;
    out.sel.H = p.sel.H;
    out.sel.n = p.sel.n;
  }
  out.sel.num_sel = 0;
  return out;
}

}  // namespace nsajit::ref
