// GPU tests of nsajit::backward against the float64 reference backward (reference/backward.cpp, itself checked
// against finite differences): the forward runs on the GPU and saves o_b, lse_b, idx and cnt; the reference
// re-runs the forward on the same rounded inputs holding the GPU's selection fixed, and differentiates it. Every
// gradient buffer is poisoned (NaN) first, so an element the backward does not write fails.
#include <doctest/doctest.h>
#include <fmt/format.h>

#include <cmath>
#include <cstring>
#include <string>
#include <tuple>
#include <vector>

#include "reference/reference.h"
#include "runtime/backward.h"
#include "runtime/device.h"
#include "base/error.h"
#include "runtime/forward.h"
#include "runtime/pool_api.h"
#include "tuner/inputs.h"
#include "tests/gpu/check.h"

using namespace nsajit;

namespace {

Context& bwd_gpu() {
  static Context ctx(0);
  return ctx;
}

using test::ErrorMeter;

struct Options {
  bool separate_kv = false;
  bool given_cmp = false;  // k_cmp/v_cmp given (pooled on the GPU first), so dk_cmp/dv_cmp are checked
  bool g_cmp = true, g_slc = true, g_win = true;
  bool strided = false;    // q, k, v, do, o_b and the gradients as views with padded heads and tokens
  std::vector<int32_t> cu;  // varlen offsets (then p.B == 1)
  const BackwardConfigs* configs = nullptr;
};

// A [rows, heads, dim] device tensor of 16-bit values with a host copy; strided: each head padded by 8 elements
// and each token by one extra head's worth, so that no kernel may assume contiguity.
struct Tensor {
  std::vector<uint16_t> bits;  // logical, contiguous [rows, heads, dim]
  DeviceBuffer dev;
  TensorView view;
  int64_t rows = 0;
  int heads = 0, dim = 0;
  int64_t sh = 0, st = 0;
};

Tensor alloc(int64_t batch, int64_t T, int heads, int dim, bool strided) {
  Tensor t;
  t.rows = batch * T, t.heads = heads, t.dim = dim;
  t.sh = strided ? dim + 8 : dim;
  t.st = strided ? t.sh * (heads + 1) : t.sh * heads;
  const size_t n = static_cast<size_t>(std::max<int64_t>(t.rows, 1) * t.st);
  t.dev = DeviceBuffer(n * 2);
  t.dev.fill_u16(0xffff);
  t.view = {t.dev.get(), T * t.st, t.st, t.sh};
  return t;
}

void upload(Tensor& t) {
  std::vector<uint16_t> raw(static_cast<size_t>(std::max<int64_t>(t.rows, 1) * t.st), 0xffff);
  for (int64_t r = 0; r < t.rows; ++r)
    for (int h = 0; h < t.heads; ++h)
      std::memcpy(&raw[static_cast<size_t>(r * t.st + h * t.sh)], &t.bits[static_cast<size_t>((r * t.heads + h) * t.dim)],
                  static_cast<size_t>(t.dim) * 2);
  t.dev.upload(raw.data(), raw.size() * 2);
}

Tensor make(int64_t batch, int64_t T, int heads, int dim, Dtype dt, uint64_t seed, bool strided) {
  Tensor t = alloc(batch, T, heads, dim, strided);
  t.bits = random_normal_bits(static_cast<size_t>(t.rows * heads * dim), dt, seed);
  upload(t);
  return t;
}

std::vector<double> download(const Tensor& t, Dtype dt) {
  std::vector<uint16_t> raw(static_cast<size_t>(std::max<int64_t>(t.rows, 1) * t.st));
  t.dev.download(raw.data(), raw.size() * 2);
  std::vector<double> out(static_cast<size_t>(t.rows * t.heads * t.dim));
  for (int64_t r = 0; r < t.rows; ++r)
    for (int h = 0; h < t.heads; ++h)
      for (int c = 0; c < t.dim; ++c)
        out[static_cast<size_t>((r * t.heads + h) * t.dim + c)] =
            bits_to_float(raw[static_cast<size_t>(r * t.st + h * t.sh + c)], dt);
  return out;
}

std::vector<double> to_double(const std::vector<uint16_t>& bits, Dtype dt) {
  std::vector<double> out(bits.size());
  for (size_t i = 0; i < bits.size(); ++i) out[i] = bits_to_float(bits[i], dt);
  return out;
}

int64_t ncmp(int64_t len, const Problem& p) { return len >= p.l ? (len - p.l) / p.d + 1 : 0; }

// Compares a gradient [rows, heads, dim]: whole-tensor relative L2 within NSA.md's tolerance, nothing non-finite,
// and every row's error within test::row_tolerance(tol) of the largest row norm of the tensor (a gradient row may
// sum a handful of contributions, so its own relative error is not bounded; a missing or wrong row gives ~1).
std::string compare(const char* name, std::vector<double> out, const std::vector<double>& ref, int64_t rows,
                    int heads, int dim, double tol) {
  REQUIRE(out.size() == ref.size());
  // Planted faults (NSAJIT_TEST_PLANT): =row zeroes the last row, =elem flips the sign of the largest element.
  if (!out.empty() && test::planted() == "row")
    for (size_t i = out.size() - static_cast<size_t>(dim); i < out.size(); ++i) out[i] = 0;
  if (!out.empty() && test::planted() == "elem") {
    size_t at = 0;
    for (size_t i = 0; i < ref.size(); ++i)
      if (std::fabs(ref[i]) > std::fabs(ref[at])) at = i;
    out[at] = -out[at];
  }
  ErrorMeter m;
  double max_row = 0;
  for (int64_t r = 0; r < rows * heads; ++r) {
    double n2 = 0;
    for (int c = 0; c < dim; ++c) n2 += ref[static_cast<size_t>(r * dim + c)] * ref[static_cast<size_t>(r * dim + c)];
    max_row = std::max(max_row, std::sqrt(n2));
  }
  double worst_row = 0;
  int64_t worst_at = -1;
  for (int64_t r = 0; r < rows * heads; ++r) {
    double d2 = 0;
    for (int c = 0; c < dim; ++c) {
      const size_t i = static_cast<size_t>(r * dim + c);
      m.add(out[i], ref[i]);
      d2 += (out[i] - ref[i]) * (out[i] - ref[i]);
    }
    m.end_row(r / heads, static_cast<int>(r % heads));
    const double e = max_row > 0 ? std::sqrt(d2) / max_row : std::sqrt(d2);
    if (!(e <= worst_row)) worst_row = e, worst_at = r;
  }
  const std::string msg = fmt::format("{}: rel {:.3e}, worst row (vs largest row) {:.3e} at row {} head {}, non-finite {}",
                                      name, m.rel(), worst_row, worst_at / std::max(heads, 1), worst_at % std::max(heads, 1),
                                      m.non_finite);
  INFO(msg);
  CHECK(m.non_finite == 0);
  CHECK(m.rel() <= tol);
  CHECK(worst_row <= test::row_tolerance(tol));
  if (max_row > 0) CHECK(m.ref2 > 0);
  return msg;
}

std::string check_backward(const Problem& p, uint64_t seed, const Options& opt) {
  bwd_gpu();
  const Dtype dt = p.dtype;
  const bool varlen = !opt.cu.empty();
  const int64_t Bt = varlen ? 1 : p.B;
  const int64_t tokens = Bt * p.T;
  std::vector<std::pair<int64_t, int64_t>> seqs;
  if (!varlen)
    for (int64_t b = 0; b < p.B; ++b) seqs.push_back({b * p.T, p.T});
  else
    for (size_t i = 0; i + 1 < opt.cu.size(); ++i) seqs.push_back({opt.cu[i], opt.cu[i + 1] - opt.cu[i]});
  int64_t total_cmp = 0;
  for (auto [f, len] : seqs) total_cmp += ncmp(len, p);
  const bool S = opt.strided;

  Tensor q = make(Bt, p.T, p.HQ, p.dk, dt, seed, S), k = make(Bt, p.T, p.H, p.dk, dt, seed + 1, S),
         v = make(Bt, p.T, p.H, p.dv, dt, seed + 2, S);
  Tensor ks, vs, kw, vw;
  if (opt.separate_kv) {
    ks = make(Bt, p.T, p.H, p.dk, dt, seed + 3, S), vs = make(Bt, p.T, p.H, p.dv, dt, seed + 4, S);
    kw = make(Bt, p.T, p.H, p.dk, dt, seed + 5, S), vw = make(Bt, p.T, p.H, p.dv, dt, seed + 6, S);
  }
  auto gate = [&](uint64_t s) {
    std::vector<uint16_t> g = random_normal_bits(static_cast<size_t>(tokens * p.HQ), dt, s);
    for (auto& b : g) b = float_to_bits(1.f / (1.f + std::exp(-bits_to_float(b, dt))), dt);
    return g;
  };
  std::vector<uint16_t> gcb = gate(seed + 7), gsb = gate(seed + 8), gwb = gate(seed + 9);
  DeviceBuffer gc(gcb.size() * 2 + 2), gs(gsb.size() * 2 + 2), gw(gwb.size() * 2 + 2);
  gc.upload(gcb.data(), gcb.size() * 2), gs.upload(gsb.data(), gsb.size() * 2), gw.upload(gwb.data(), gwb.size() * 2);
  Tensor dout = make(Bt, p.T, p.HQ, p.dv, dt, seed + 10, S);

  Tensor o = alloc(Bt, p.T, p.HQ, p.dv, S), oc = alloc(Bt, p.T, p.HQ, p.dv, S), os = alloc(Bt, p.T, p.HQ, p.dv, S),
         ow = alloc(Bt, p.T, p.HQ, p.dv, S);
  const size_t ln = static_cast<size_t>(tokens * p.HQ) * 4 + 4;
  DeviceBuffer lc(ln), ls(ln), lw(ln), idx(static_cast<size_t>(tokens * p.H * p.n) * 4 + 4),
      cnt(static_cast<size_t>(tokens * p.H) * 4 + 4);
  DeviceBuffer dcu(std::max<size_t>(opt.cu.size(), 1) * 4);
  if (varlen) dcu.upload(opt.cu.data(), opt.cu.size() * 4);

  ForwardTensors f;
  f.q = q.view, f.k = k.view, f.v = v.view, f.o = o.view;
  if (opt.separate_kv) f.k_slc = ks.view, f.v_slc = vs.view, f.k_win = kw.view, f.v_win = vw.view;
  f.g_cmp = opt.g_cmp ? gc.get() : nullptr;
  f.g_slc = opt.g_slc ? gs.get() : nullptr;
  f.g_win = opt.g_win ? gw.get() : nullptr;
  f.gate_stride_b = p.T * p.HQ, f.gate_stride_t = p.HQ;
  f.o_cmp = oc.view, f.o_slc = os.view, f.o_win = ow.view;
  f.lse_cmp = static_cast<float*>(lc.get()), f.lse_slc = static_cast<float*>(ls.get());
  f.lse_win = static_cast<float*>(lw.get());
  f.lse_stride_b = p.T * p.HQ, f.lse_stride_t = p.HQ;
  f.idx = static_cast<int32_t*>(idx.get()), f.cnt = static_cast<int32_t*>(cnt.get());
  if (varlen) f.cu_seqlens = static_cast<const int32_t*>(dcu.get()), f.cu_seqlens_host = opt.cu;

  // Given compressed keys: the GPU's mean pool, so that the reference sees the same rounded values.
  const int64_t per_batch_cmp = varlen ? 0 : ncmp(p.T, p);
  Tensor kc = alloc(varlen ? 1 : p.B, varlen ? std::max<int64_t>(total_cmp, 1) : std::max<int64_t>(per_batch_cmp, 1),
                    p.H, p.dk, false);
  Tensor vc = alloc(varlen ? 1 : p.B, varlen ? std::max<int64_t>(total_cmp, 1) : std::max<int64_t>(per_batch_cmp, 1),
                    p.H, p.dv, false);
  kc.view.stride_b = per_batch_cmp * p.H * p.dk, vc.view.stride_b = per_batch_cmp * p.H * p.dv;
  std::vector<uint16_t> kc_bits(static_cast<size_t>(total_cmp * p.H * p.dk)), vc_bits(static_cast<size_t>(total_cmp * p.H * p.dv));
  if (opt.given_cmp) {
    if (total_cmp > 0) {
      for (auto [src, dst, dim] : {std::tuple{f.k, kc.view, p.dk}, std::tuple{f.v, vc.view, p.dv}}) {
        PoolArgs a;
        a.x = src, a.y = dst, a.dim = dim, a.cu_seqlens = f.cu_seqlens, a.cu_seqlens_host = f.cu_seqlens_host;
        mean_pool(p, a, nullptr);
      }
      bwd_gpu().synchronize();
      kc.dev.download(kc_bits.data(), kc_bits.size() * 2);
      vc.dev.download(vc_bits.data(), vc_bits.size() * 2);
    }
    f.k_cmp = kc.view, f.v_cmp = vc.view;
  }
  forward(p, f, nullptr);
  bwd_gpu().synchronize();

  // The backward, into poisoned gradients.
  Tensor dq = alloc(Bt, p.T, p.HQ, p.dk, S), dk = alloc(Bt, p.T, p.H, p.dk, S), dv = alloc(Bt, p.T, p.H, p.dv, S);
  Tensor dks, dvs, dkw, dvw;
  if (opt.separate_kv) {
    dks = alloc(Bt, p.T, p.H, p.dk, S), dvs = alloc(Bt, p.T, p.H, p.dv, S);
    dkw = alloc(Bt, p.T, p.H, p.dk, S), dvw = alloc(Bt, p.T, p.H, p.dv, S);
  }
  Tensor dkc = alloc(varlen ? 1 : p.B, std::max<int64_t>(varlen ? total_cmp : per_batch_cmp, 1), p.H, p.dk, false);
  Tensor dvc = alloc(varlen ? 1 : p.B, std::max<int64_t>(varlen ? total_cmp : per_batch_cmp, 1), p.H, p.dv, false);
  dkc.view.stride_b = per_batch_cmp * p.H * p.dk, dvc.view.stride_b = per_batch_cmp * p.H * p.dv;
  DeviceBuffer dgc(ln), dgs(ln), dgw(ln);
  for (DeviceBuffer* b : {&dgc, &dgs, &dgw}) b->fill_u16(0xffff);

  BackwardTensors t;
  t.q = q.view, t.k = k.view, t.v = v.view;
  if (opt.separate_kv) t.k_slc = ks.view, t.v_slc = vs.view, t.k_win = kw.view, t.v_win = vw.view;
  if (opt.given_cmp) t.k_cmp = kc.view, t.v_cmp = vc.view;
  t.g_cmp = f.g_cmp, t.g_slc = f.g_slc, t.g_win = f.g_win;
  t.gate_stride_b = f.gate_stride_b, t.gate_stride_t = f.gate_stride_t;
  t.o_cmp = oc.view, t.o_slc = os.view, t.o_win = ow.view;
  t.lse_cmp = f.lse_cmp, t.lse_slc = f.lse_slc, t.lse_win = f.lse_win;
  t.lse_stride_b = f.lse_stride_b, t.lse_stride_t = f.lse_stride_t;
  t.idx = f.idx, t.cnt = f.cnt;
  t.dout = dout.view;
  t.dq = dq.view, t.dk = dk.view, t.dv = dv.view;
  if (opt.separate_kv) t.dk_slc = dks.view, t.dv_slc = dvs.view, t.dk_win = dkw.view, t.dv_win = dvw.view;
  if (opt.given_cmp) t.dk_cmp = dkc.view, t.dv_cmp = dvc.view;
  t.dg_cmp = opt.g_cmp ? dgc.get() : nullptr;
  t.dg_slc = opt.g_slc ? dgs.get() : nullptr;
  t.dg_win = opt.g_win ? dgw.get() : nullptr;
  t.dg_stride_b = p.T * p.HQ, t.dg_stride_t = p.HQ;
  t.cu_seqlens = f.cu_seqlens, t.cu_seqlens_host = f.cu_seqlens_host;
  backward(p, t, nullptr, opt.configs ? *opt.configs : BackwardConfigs{});
  bwd_gpu().synchronize();

  // The reference, on the same rounded inputs and the GPU's selection.
  std::vector<int32_t> ib(static_cast<size_t>(tokens * p.H * p.n)), cb(static_cast<size_t>(tokens * p.H));
  idx.download(ib.data(), ib.size() * 4), cnt.download(cb.data(), cb.size() * 4);
  ref::Config cfg;
  cfg.T = tokens, cfg.HQ = p.HQ, cfg.H = p.H, cfg.dk = p.dk, cfg.dv = p.dv;
  cfg.l = p.l, cfg.d = p.d, cfg.lsel = p.lsel, cfg.n = p.n, cfg.w = p.w, cfg.scale = p.softmax_scale();
  const std::vector<double> qd = to_double(q.bits, dt), kd = to_double(k.bits, dt), vd = to_double(v.bits, dt);
  std::vector<double> ksd, vsd, kwd, vwd, kcd, vcd;
  const std::vector<double> gcd = to_double(gcb, dt), gsd = to_double(gsb, dt), gwd = to_double(gwb, dt),
                            dod = to_double(dout.bits, dt);
  ref::Inputs in;
  in.q = qd.data(), in.k = kd.data(), in.v = vd.data();
  if (opt.separate_kv) {
    ksd = to_double(ks.bits, dt), vsd = to_double(vs.bits, dt), kwd = to_double(kw.bits, dt), vwd = to_double(vw.bits, dt);
    in.k_slc = ksd.data(), in.v_slc = vsd.data(), in.k_win = kwd.data(), in.v_win = vwd.data();
  }
  if (opt.given_cmp) {
    kcd = to_double(kc_bits, dt), vcd = to_double(vc_bits, dt);
    in.k_cmp = kcd.data(), in.v_cmp = vcd.data();
  }
  in.g_cmp = opt.g_cmp ? gcd.data() : nullptr;
  in.g_slc = opt.g_slc ? gsd.data() : nullptr;
  in.g_win = opt.g_win ? gwd.data() : nullptr;
  in.idx = ib.data(), in.cnt = cb.data();
  ref::Grads g;
  if (varlen) {
    const auto fw = ref::forward_varlen(cfg, opt.cu, in);
    g = ref::concat_grads(ref::backward_varlen(cfg, opt.cu, in, fw, dod.data()));
  } else {
    // Batch entries one at a time.
    std::vector<ref::Grads> parts;
    ref::Config one = cfg;
    one.T = p.T;
    const int64_t nc = ncmp(p.T, p);
    for (int64_t b = 0; b < p.B; ++b) {
      ref::Inputs ib1 = in;
      auto off = [&](const double* x, int64_t row) { return x ? x + b * row : nullptr; };
      ib1.q = off(in.q, p.T * p.HQ * p.dk), ib1.k = off(in.k, p.T * p.H * p.dk), ib1.v = off(in.v, p.T * p.H * p.dv);
      ib1.k_slc = off(in.k_slc, p.T * p.H * p.dk), ib1.v_slc = off(in.v_slc, p.T * p.H * p.dv);
      ib1.k_win = off(in.k_win, p.T * p.H * p.dk), ib1.v_win = off(in.v_win, p.T * p.H * p.dv);
      ib1.k_cmp = off(in.k_cmp, nc * p.H * p.dk), ib1.v_cmp = off(in.v_cmp, nc * p.H * p.dv);
      ib1.g_cmp = off(in.g_cmp, p.T * p.HQ), ib1.g_slc = off(in.g_slc, p.T * p.HQ), ib1.g_win = off(in.g_win, p.T * p.HQ);
      ib1.idx = in.idx + b * p.T * p.H * p.n, ib1.cnt = in.cnt + b * p.T * p.H;
      const ref::Outputs fw = ref::forward(one, ib1);
      parts.push_back(ref::backward(one, ib1, fw, dod.data() + b * p.T * p.HQ * p.dv));
    }
    g = ref::concat_grads(parts);
  }

  const double tol = dt == Dtype::bf16 ? 1e-2 : 2e-3;
  std::string log;
  log += compare("dq", download(dq, dt), g.dq, tokens, p.HQ, p.dk, tol) + "\n";
  const bool uses_kv = (opt.g_cmp && !opt.given_cmp) || (opt.g_slc && !opt.separate_kv) ||
                       (opt.g_win && p.w > 0 && !opt.separate_kv);
  if (uses_kv) {
    log += compare("dk", download(dk, dt), g.dk, tokens, p.H, p.dk, tol) + "\n";
    log += compare("dv", download(dv, dt), g.dv, tokens, p.H, p.dv, tol) + "\n";
  } else {
    // Written anyway (zeros where nothing flows): no NaN left.
    for (const Tensor* x : {&dk, &dv}) {
      const auto d = download(*x, dt);
      for (double e : d) REQUIRE(std::isfinite(e));
    }
  }
  if (opt.separate_kv) {
    if (opt.g_slc) {
      log += compare("dk_slc", download(dks, dt), g.dk_slc, tokens, p.H, p.dk, tol) + "\n";
      log += compare("dv_slc", download(dvs, dt), g.dv_slc, tokens, p.H, p.dv, tol) + "\n";
    }
    if (opt.g_win && p.w > 0) {
      log += compare("dk_win", download(dkw, dt), g.dk_win, tokens, p.H, p.dk, tol) + "\n";
      log += compare("dv_win", download(dvw, dt), g.dv_win, tokens, p.H, p.dv, tol) + "\n";
    }
  }
  if (opt.given_cmp && opt.g_cmp && total_cmp > 0) {
    dkc.rows = total_cmp, dvc.rows = total_cmp;
    log += compare("dk_cmp", download(dkc, dt), g.dk_cmp, total_cmp, p.H, p.dk, tol) + "\n";
    log += compare("dv_cmp", download(dvc, dt), g.dv_cmp, total_cmp, p.H, p.dv, tol) + "\n";
  }
  auto check_dg = [&](const char* name, bool on, DeviceBuffer& buf, const std::vector<double>& ref) {
    if (!on) return;
    std::vector<uint16_t> bits(static_cast<size_t>(tokens * p.HQ));
    buf.download(bits.data(), bits.size() * 2);
    log += compare(name, to_double(bits, dt), ref, tokens, p.HQ, 1, tol) + "\n";
  };
  check_dg("dg_cmp", opt.g_cmp, dgc, g.dg_cmp);
  check_dg("dg_slc", opt.g_slc, dgs, g.dg_slc);
  check_dg("dg_win", opt.g_win, dgw, g.dg_win);
  return log;
}

Problem small(Dtype dt, int64_t T, int HQ, int H, int dk, int dv, int l, int d, int lsel, int n, int w) {
  Problem p;
  p.dtype = dt, p.B = 1, p.T = T, p.HQ = HQ, p.H = H, p.dk = dk, p.dv = dv;
  p.l = l, p.d = d, p.lsel = lsel, p.n = n, p.w = w;
  return p;
}

}  // namespace

TEST_CASE("backward: every gradient against the float64 reference, both dtypes, the four (dk, dv)") {
  for (Dtype dt : {Dtype::bf16, Dtype::fp16})
    for (auto [dk, dv] : {std::pair{64, 64}, std::pair{128, 128}, std::pair{192, 128}, std::pair{256, 256}}) {
      const Problem p = small(dt, 300, 8, 2, dk, dv, 32, 16, 64, 8, 128);
      CAPTURE(p.describe());
      MESSAGE(check_backward(p, 100 + dk, {}));
    }
}

TEST_CASE("backward: group sizes 1, 2, 3, 4, 8, 16, 32") {
  for (int G : {1, 2, 3, 4, 8, 16, 32}) {
    const Problem p = small(Dtype::bf16, 260, G * 2, 2, 64, 64, 64, 64, 64, 8, 96);
    CAPTURE(p.describe());
    MESSAGE(check_backward(p, 200 + G, {}));
  }
}

TEST_CASE("backward: the four (l, d, l') combinations, n in {8, 16, 32}, w in {0, 512}") {
  // The selection supports l' = 64 with these (l, d) (select's check_problem).
  const std::tuple<int, int, int, int> combos[] = {{32, 16, 64, 16}, {64, 64, 64, 8}, {32, 32, 64, 32}, {64, 32, 64, 8}};
  for (auto [l, d, lsel, n] : combos)
    for (int w : {0, 512}) {
      const Problem p = small(Dtype::bf16, 1100, 8, 2, 128, 128, l, d, lsel, n, w);
      CAPTURE(p.describe());
      MESSAGE(check_backward(p, 300 + l + d + lsel + w, {}));
    }
}

TEST_CASE("backward: B > 1, strided views, separate per-branch k/v, given k_cmp") {
  {
    Problem p = small(Dtype::bf16, 200, 8, 2, 128, 128, 32, 16, 64, 8, 64);
    p.B = 3;
    CAPTURE(p.describe());
    MESSAGE(check_backward(p, 401, {}));
  }
  {
    const Problem p = small(Dtype::bf16, 230, 8, 2, 64, 64, 32, 16, 64, 8, 100);
    Options o;
    o.strided = true;
    CAPTURE(p.describe());
    MESSAGE(check_backward(p, 402, o));
  }
  {
    const Problem p = small(Dtype::bf16, 230, 8, 2, 128, 128, 64, 32, 64, 8, 100);
    Options o;
    o.separate_kv = true;
    CAPTURE(p.describe());
    MESSAGE(check_backward(p, 403, o));
  }
  {
    const Problem p = small(Dtype::fp16, 230, 8, 2, 128, 128, 32, 16, 64, 8, 100);
    Options o;
    o.given_cmp = true;
    CAPTURE(p.describe());
    MESSAGE(check_backward(p, 404, o));
  }
}

TEST_CASE("backward: each branch disabled in turn") {
  const Problem p = small(Dtype::bf16, 260, 8, 2, 128, 128, 32, 16, 64, 8, 100);
  for (int off = 0; off < 3; ++off) {
    Options o;
    o.g_cmp = off != 0, o.g_slc = off != 1, o.g_win = off != 2;
    CAPTURE(off);
    MESSAGE(check_backward(p, 500 + off, o));
  }
  Options only_win;
  only_win.g_cmp = only_win.g_slc = false;
  MESSAGE(check_backward(p, 510, only_win));
}

TEST_CASE("backward: varlen with empty and 1-token sequences") {
  Problem p = small(Dtype::bf16, 0, 8, 2, 128, 128, 32, 16, 64, 8, 64);
  Options o;
  o.cu = {0, 0, 1, 130, 130, 420, 421, 600};
  p.T = o.cu.back();
  CAPTURE(p.describe());
  MESSAGE(check_backward(p, 601, o));
  o.given_cmp = true;
  MESSAGE(check_backward(p, 602, o));
}

TEST_CASE("backward: a hot block split over work items (QCHUNK smaller than its selecting positions)") {
  // T = 2600 with QCHUNK = 1024: block 0 (selected by every position) takes three items and the reduce.
  const Problem p = small(Dtype::bf16, 2600, 4, 1, 64, 64, 64, 64, 64, 8, 64);
  const TileConfig dkv{{"BM", 32}, {"QCHUNK", 1024}};
  BackwardConfigs c;
  c.slc_dkv = &dkv;
  Options o;
  o.configs = &c;
  MESSAGE(check_backward(p, 701, o));
}

// Issue 14: every gradient at head dims off the 64 grid (dk != dv), l' = 16 .. 128, G in {1, 3, 8}, B = 2, strided
// views, separate per-branch k/v, given k_cmp, varlen.
TEST_CASE("backward: any head dim, l' = 16 .. 128") {
  struct Case {
    Dtype dt;
    int dk, dv, G, l, d, lsel, n, w;
  };
  const Case cases[] = {
      {Dtype::bf16, 32, 32, 1, 32, 16, 16, 16, 128},   {Dtype::fp16, 40, 72, 3, 32, 16, 64, 8, 0},
      {Dtype::bf16, 80, 80, 8, 32, 32, 32, 16, 100},   {Dtype::fp16, 96, 64, 3, 64, 32, 128, 8, 64},
      {Dtype::bf16, 96, 96, 1, 64, 64, 128, 8, 128},   {Dtype::bf16, 128, 64, 8, 32, 16, 16, 8, 64},
      {Dtype::fp16, 160, 160, 3, 32, 16, 32, 16, 100}, {Dtype::bf16, 200, 120, 1, 32, 16, 16, 32, 128},
      {Dtype::bf16, 256, 128, 3, 64, 32, 32, 8, 64},   {Dtype::fp16, 72, 40, 8, 32, 16, 128, 8, 100},
      {Dtype::bf16, 248, 248, 3, 32, 16, 64, 8, 64},
  };
  int i = 0;
  for (const Case& c : cases) {
    Problem p = small(c.dt, 300 + 97 * (i % 5), c.G * (c.G == 8 ? 1 : 2), c.G == 8 ? 1 : 2, c.dk, c.dv, c.l, c.d,
                      c.lsel, c.n, c.w);
    p.B = 2;
    Options o;
    o.strided = i % 2 == 1;
    o.separate_kv = i % 3 == 1;
    o.given_cmp = i % 4 == 2;
    CAPTURE(p.describe());
    MESSAGE(check_backward(p, 800 + 13 * i++, o));
  }
  Problem v = small(Dtype::bf16, 0, 6, 2, 80, 48, 32, 16, 16, 8, 64);
  Options ov;
  ov.cu = {0, 0, 1, 130, 130, 420, 421, 600};
  v.T = ov.cu.back();
  CAPTURE(v.describe());
  MESSAGE(check_backward(v, 900, ov));
}

TEST_CASE("backward: deterministic, bitwise identical gradients run to run") {
  const Problem p = small(Dtype::bf16, 2100, 16, 1, 128, 128, 32, 16, 64, 16, 512);
  // Run the whole check twice on the same seed and compare the gradient bits through the log's numbers; the
  // direct comparison below re-runs only the backward.
  bwd_gpu();
  const int64_t T = p.T;
  Tensor q = make(1, T, p.HQ, p.dk, p.dtype, 9, false), k = make(1, T, p.H, p.dk, p.dtype, 10, false),
         v = make(1, T, p.H, p.dv, p.dtype, 11, false), dout = make(1, T, p.HQ, p.dv, p.dtype, 12, false);
  Tensor o = alloc(1, T, p.HQ, p.dv, false), oc = alloc(1, T, p.HQ, p.dv, false), os = alloc(1, T, p.HQ, p.dv, false),
         ow = alloc(1, T, p.HQ, p.dv, false);
  std::vector<uint16_t> gb(static_cast<size_t>(T * p.HQ), float_to_bits(0.5f, p.dtype));
  DeviceBuffer g(gb.size() * 2);
  g.upload(gb.data(), gb.size() * 2);
  DeviceBuffer lc(T * p.HQ * 4), ls(T * p.HQ * 4), lw(T * p.HQ * 4), idx(T * p.H * p.n * 4), cnt(T * p.H * 4);
  ForwardTensors f;
  f.q = q.view, f.k = k.view, f.v = v.view, f.o = o.view;
  f.g_cmp = f.g_slc = f.g_win = g.get();
  f.gate_stride_b = T * p.HQ, f.gate_stride_t = p.HQ;
  f.o_cmp = oc.view, f.o_slc = os.view, f.o_win = ow.view;
  f.lse_cmp = static_cast<float*>(lc.get()), f.lse_slc = static_cast<float*>(ls.get()),
  f.lse_win = static_cast<float*>(lw.get());
  f.lse_stride_b = T * p.HQ, f.lse_stride_t = p.HQ;
  f.idx = static_cast<int32_t*>(idx.get()), f.cnt = static_cast<int32_t*>(cnt.get());
  forward(p, f, nullptr);
  Tensor dq = alloc(1, T, p.HQ, p.dk, false), dk = alloc(1, T, p.H, p.dk, false), dv = alloc(1, T, p.H, p.dv, false);
  BackwardTensors t;
  t.q = q.view, t.k = k.view, t.v = v.view, t.dout = dout.view;
  t.g_cmp = t.g_slc = t.g_win = g.get();
  t.gate_stride_b = T * p.HQ, t.gate_stride_t = p.HQ;
  t.o_cmp = oc.view, t.o_slc = os.view, t.o_win = ow.view;
  t.lse_cmp = f.lse_cmp, t.lse_slc = f.lse_slc, t.lse_win = f.lse_win;
  t.lse_stride_b = f.lse_stride_b, t.lse_stride_t = f.lse_stride_t;
  t.idx = f.idx, t.cnt = f.cnt;
  t.dq = dq.view, t.dk = dk.view, t.dv = dv.view;
  std::vector<std::vector<uint16_t>> runs;
  for (int r = 0; r < 3; ++r) {
    backward(p, t, nullptr);
    bwd_gpu().synchronize();
    std::vector<uint16_t> all;
    for (const Tensor* x : {&dq, &dk, &dv}) {
      std::vector<uint16_t> bits(static_cast<size_t>(x->rows * x->st));
      x->dev.download(bits.data(), bits.size() * 2);
      all.insert(all.end(), bits.begin(), bits.end());
    }
    runs.push_back(std::move(all));
  }
  CHECK(runs[0] == runs[1]);
  CHECK(runs[0] == runs[2]);
}

// ---- T = 65536: sampled rows against float64 ---------------------------------------------------------------------
// The whole backward at preset fla (and paper's overlapping compression), T = 65536: dq rows of sampled (t, h) and
// dk/dv rows of sampled (s, KV head), each recomputed in float64 on the CPU from the downloaded inputs and the
// forward's saved lse_b, o_b and selection (the forward tests check those): P = exp(scale q.k - lse_b),
// dP = do . v, delta_b = g_b <do, o_b>; a key row sums the window's queries, every query that selected its block
// (block 0: all of them) and, through the mean pool, every query that sees a compressed block covering it. Each
// sampled row's relative error must be within row_tolerance (NSA.md's bound x 3).
namespace {

struct LongData {
  Problem p;
  std::vector<uint16_t> q, k, v, dout, g[3], o[3];
  std::vector<float> lse[3];
  std::vector<int32_t> idx, cnt;
  std::vector<uint16_t> dq, dk, dv;
  double f(const std::vector<uint16_t>& x, size_t i) const { return bits_to_float(x[i], p.dtype); }
};

// Row dot products over `dim` elements.
double dot_rows(const LongData& d, const std::vector<uint16_t>& a, size_t ia, const std::vector<uint16_t>& b, size_t ib,
                int dim) {
  double s = 0;
  for (int c = 0; c < dim; ++c) s += d.f(a, ia + c) * d.f(b, ib + c);
  return s;
}

}  // namespace

TEST_CASE("backward at T = 65536 (fla, paper): sampled dq, dk, dv rows against float64") {
  for (const char* preset_name : {"fla", "paper"}) {
    CAPTURE(std::string(preset_name));
    bwd_gpu();
    LongData d;
    Problem& p = d.p;
    p = preset(preset_name);
    p.T = 65536;
    const int64_t T = p.T;
    const size_t tok = static_cast<size_t>(T);
    auto up = [](const std::vector<uint16_t>& bits) {
      DeviceBuffer b(bits.size() * 2);
      b.upload(bits.data(), bits.size() * 2);
      return b;
    };
    d.q = random_normal_bits(tok * p.HQ * p.dk, p.dtype, 901);
    d.k = random_normal_bits(tok * p.H * p.dk, p.dtype, 902);
    d.v = random_normal_bits(tok * p.H * p.dv, p.dtype, 903);
    d.dout = random_normal_bits(tok * p.HQ * p.dv, p.dtype, 904);
    for (int b = 0; b < 3; ++b) {
      d.g[b] = random_normal_bits(tok * p.HQ, p.dtype, 905 + b);
      for (auto& x : d.g[b]) x = float_to_bits(1.f / (1.f + std::exp(-bits_to_float(x, p.dtype))), p.dtype);
    }
    DeviceBuffer q = up(d.q), k = up(d.k), v = up(d.v), dout = up(d.dout), gc = up(d.g[0]), gs = up(d.g[1]),
                 gw = up(d.g[2]);
    const size_t on = tok * p.HQ * p.dv * 2, ln = tok * p.HQ * 4;
    DeviceBuffer o(on), ob[3] = {DeviceBuffer(on), DeviceBuffer(on), DeviceBuffer(on)},
                        lb[3] = {DeviceBuffer(ln), DeviceBuffer(ln), DeviceBuffer(ln)},
                        idx(tok * p.H * p.n * 4), cnt(tok * p.H * 4);
    ForwardTensors f;
    f.q = contiguous(q.get(), T, p.HQ, p.dk), f.k = contiguous(k.get(), T, p.H, p.dk);
    f.v = contiguous(v.get(), T, p.H, p.dv), f.o = contiguous(o.get(), T, p.HQ, p.dv);
    f.g_cmp = gc.get(), f.g_slc = gs.get(), f.g_win = gw.get();
    f.gate_stride_b = T * p.HQ, f.gate_stride_t = p.HQ;
    f.o_cmp = contiguous(ob[0].get(), T, p.HQ, p.dv), f.o_slc = contiguous(ob[1].get(), T, p.HQ, p.dv);
    f.o_win = contiguous(ob[2].get(), T, p.HQ, p.dv);
    f.lse_cmp = static_cast<float*>(lb[0].get()), f.lse_slc = static_cast<float*>(lb[1].get());
    f.lse_win = static_cast<float*>(lb[2].get()), f.lse_stride_b = T * p.HQ, f.lse_stride_t = p.HQ;
    f.idx = static_cast<int32_t*>(idx.get()), f.cnt = static_cast<int32_t*>(cnt.get());
    forward(p, f, nullptr);
    DeviceBuffer dq(tok * p.HQ * p.dk * 2), dk(tok * p.H * p.dk * 2), dv(tok * p.H * p.dv * 2);
    for (DeviceBuffer* b : {&dq, &dk, &dv}) b->fill_u16(0xffff);
    BackwardTensors t;
    t.q = f.q, t.k = f.k, t.v = f.v, t.g_cmp = f.g_cmp, t.g_slc = f.g_slc, t.g_win = f.g_win;
    t.gate_stride_b = f.gate_stride_b, t.gate_stride_t = f.gate_stride_t;
    t.o_cmp = f.o_cmp, t.o_slc = f.o_slc, t.o_win = f.o_win;
    t.lse_cmp = f.lse_cmp, t.lse_slc = f.lse_slc, t.lse_win = f.lse_win;
    t.lse_stride_b = f.lse_stride_b, t.lse_stride_t = f.lse_stride_t, t.idx = f.idx, t.cnt = f.cnt;
    t.dout = contiguous(dout.get(), T, p.HQ, p.dv);
    t.dq = contiguous(dq.get(), T, p.HQ, p.dk), t.dk = contiguous(dk.get(), T, p.H, p.dk);
    t.dv = contiguous(dv.get(), T, p.H, p.dv);
    backward(p, t, nullptr);
    bwd_gpu().synchronize();
    for (int b = 0; b < 3; ++b) {
      d.o[b].resize(tok * p.HQ * p.dv), d.lse[b].resize(tok * p.HQ);
      ob[b].download(d.o[b].data(), on), lb[b].download(d.lse[b].data(), ln);
    }
    d.idx.resize(tok * p.H * p.n), d.cnt.resize(tok * p.H);
    idx.download(d.idx.data(), d.idx.size() * 4), cnt.download(d.cnt.data(), d.cnt.size() * 4);
    d.dq.resize(tok * p.HQ * p.dk), d.dk.resize(tok * p.H * p.dk), d.dv.resize(tok * p.H * p.dv);
    dq.download(d.dq.data(), d.dq.size() * 2), dk.download(d.dk.data(), d.dk.size() * 2);
    dv.download(d.dv.data(), d.dv.size() * 2);

    const double scale = p.softmax_scale();
    const int G = p.G();
    const int64_t nc = (T - p.l) / p.d + 1;
    auto nc_of = [&](int64_t tt) { return tt + 1 >= p.l ? (tt + 1 - p.l) / p.d + 1 : 0; };
    // The compressed keys as the GPU pooled them: fp32 means rounded to the dtype.
    auto pooled = [&](const std::vector<uint16_t>& x, int dim, int64_t i, int kvh) {
      std::vector<uint16_t> out(static_cast<size_t>(dim));
      for (int c = 0; c < dim; ++c) {
        float s = 0;
        for (int r = 0; r < p.l; ++r) s += d.f(x, static_cast<size_t>(((i * p.d + r) * p.H + kvh) * dim + c));
        out[static_cast<size_t>(c)] = float_to_bits(s / static_cast<float>(p.l), p.dtype);
      }
      return out;
    };
    auto delta = [&](int br, int64_t tt, int h) {
      const size_t row = static_cast<size_t>((tt * p.HQ + h) * p.dv);
      return d.f(d.g[br], static_cast<size_t>(tt * p.HQ + h)) * dot_rows(d, d.dout, row, d.o[br], row, p.dv);
    };
    auto selected = [&](int64_t tt, int kvh, int64_t blk) {
      const size_t r = static_cast<size_t>(tt * p.H + kvh);
      for (int i = 0; i < d.cnt[r]; ++i)
        if (d.idx[r * p.n + i] == blk) return true;
      return false;
    };
    const double tol = 1e-2;
    ErrorMeter all_dq, all_dk, all_dv;

    // dq rows.
    for (int64_t tt : {int64_t{0}, int64_t{63}, int64_t{64}, int64_t{4095}, int64_t{32768}, T - 1})
      for (int h : {0, 17, p.HQ - 1}) {
        const int kvh = h / G;
        const size_t qrow = static_cast<size_t>((tt * p.HQ + h) * p.dk), drow = static_cast<size_t>((tt * p.HQ + h) * p.dv);
        std::vector<double> ref(static_cast<size_t>(p.dk), 0.0);
        auto add_key = [&](int br, const std::vector<uint16_t>& kx, size_t krow, const std::vector<uint16_t>& vx, size_t vrow) {
          const double pr = std::exp(scale * dot_rows(d, d.q, qrow, kx, krow, p.dk) - d.lse[br][static_cast<size_t>(tt * p.HQ + h)]);
          const double ds = pr * (d.f(d.g[br], static_cast<size_t>(tt * p.HQ + h)) * dot_rows(d, d.dout, drow, vx, vrow, p.dv) -
                                  delta(br, tt, h));
          for (int c = 0; c < p.dk; ++c) ref[static_cast<size_t>(c)] += scale * ds * d.f(kx, krow + c);
        };
        for (int64_t s = std::max<int64_t>(0, tt - p.w + 1); s <= tt; ++s)
          add_key(2, d.k, static_cast<size_t>((s * p.H + kvh) * p.dk), d.v, static_cast<size_t>((s * p.H + kvh) * p.dv));
        for (int i = 0; i < d.cnt[static_cast<size_t>(tt * p.H + kvh)]; ++i) {
          const int64_t blk = d.idx[static_cast<size_t>((tt * p.H + kvh) * p.n + i)];
          for (int64_t s = blk * p.lsel; s < std::min(tt + 1, (blk + 1) * p.lsel); ++s)
            add_key(1, d.k, static_cast<size_t>((s * p.H + kvh) * p.dk), d.v, static_cast<size_t>((s * p.H + kvh) * p.dv));
        }
        for (int64_t i = 0; i < nc_of(tt); ++i) {
          const auto kc = pooled(d.k, p.dk, i, kvh), vc = pooled(d.v, p.dv, i, kvh);
          add_key(0, kc, 0, vc, 0);
        }
        ErrorMeter m;
        for (int c = 0; c < p.dk; ++c) m.add(d.f(d.dq, qrow + c), ref[static_cast<size_t>(c)]);
        m.end_row(tt, h);
        INFO("dq row (t " << tt << ", h " << h << "): " << m.describe());
        CHECK(m.non_finite == 0);
        CHECK(m.rel() <= test::row_tolerance(tol));
        all_dq.merge(m);
      }

    // dk/dv rows: every query that sees the key, per branch.
    for (int64_t s : {int64_t{0}, int64_t{63}, int64_t{64}, int64_t{40000}, T - 1})
      for (int kvh : {0, p.H - 1}) {
        std::vector<double> rk(static_cast<size_t>(p.dk), 0.0), rv(static_cast<size_t>(p.dv), 0.0);
        const size_t krow = static_cast<size_t>((s * p.H + kvh) * p.dk), vrow = static_cast<size_t>((s * p.H + kvh) * p.dv);
        // One (query, head) contribution of a key (kx/vx rows) seen through branch br, times `mul`.
        auto add_query = [&](int br, int64_t tt, int h, const std::vector<uint16_t>& kx, size_t kr,
                             const std::vector<uint16_t>& vx, size_t vr, double mul) {
          const size_t qrow = static_cast<size_t>((tt * p.HQ + h) * p.dk), drow = static_cast<size_t>((tt * p.HQ + h) * p.dv);
          const double g = d.f(d.g[br], static_cast<size_t>(tt * p.HQ + h));
          const double pr = std::exp(scale * dot_rows(d, d.q, qrow, kx, kr, p.dk) - d.lse[br][static_cast<size_t>(tt * p.HQ + h)]);
          const double ds = pr * (g * dot_rows(d, d.dout, drow, vx, vr, p.dv) - delta(br, tt, h));
          for (int c = 0; c < p.dk; ++c) rk[static_cast<size_t>(c)] += mul * scale * ds * d.f(d.q, qrow + c);
          for (int c = 0; c < p.dv; ++c) rv[static_cast<size_t>(c)] += mul * g * pr * d.f(d.dout, drow + c);
        };
        for (int64_t tt = s; tt < std::min(T, s + p.w); ++tt)
          for (int g = 0; g < G; ++g) add_query(2, tt, kvh * G + g, d.k, krow, d.v, vrow, 1.0);
        const int64_t blk = s / p.lsel;
        for (int64_t tt = s; tt < T; ++tt)
          if (selected(tt, kvh, blk))
            for (int g = 0; g < G; ++g) add_query(1, tt, kvh * G + g, d.k, krow, d.v, vrow, 1.0);
        for (int64_t i = 0; i < nc; ++i) {
          if (!(i * p.d <= s && s < i * p.d + p.l)) continue;
          const auto kc = pooled(d.k, p.dk, i, kvh), vc = pooled(d.v, p.dv, i, kvh);
          for (int64_t tt = i * p.d + p.l - 1; tt < T; ++tt)
            for (int g = 0; g < G; ++g) add_query(0, tt, kvh * G + g, kc, 0, vc, 0, 1.0 / p.l);
        }
        ErrorMeter mk, mv;
        for (int c = 0; c < p.dk; ++c) mk.add(d.f(d.dk, krow + c), rk[static_cast<size_t>(c)]);
        for (int c = 0; c < p.dv; ++c) mv.add(d.f(d.dv, vrow + c), rv[static_cast<size_t>(c)]);
        mk.end_row(s, kvh), mv.end_row(s, kvh);
        INFO("dk row (s " << s << ", KV head " << kvh << "): " << mk.describe() << "; dv: " << mv.describe());
        CHECK(mk.non_finite + mv.non_finite == 0);
        CHECK(mk.rel() <= test::row_tolerance(tol));
        CHECK(mv.rel() <= test::row_tolerance(tol));
        all_dk.merge(mk), all_dv.merge(mv);
      }
    MESSAGE(std::string(preset_name) << " T = 65536 sampled rows: dq " << all_dq.describe() << "; dk "
                                     << all_dk.describe() << "; dv " << all_dv.describe());
    CHECK(all_dq.rel() <= tol);
    CHECK(all_dk.rel() <= tol);
    CHECK(all_dv.rel() <= tol);
  }
}
