// End-to-end GPU tests of nsajit::forward against the float64 reference of the whole NSA forward (NSA.md):
// pooled or given compressed keys, selection compared with near-ties allowed, the selected branch re-derived from
// the GPU's own choice so a near-tie never hides a wrong attention result, and the gated sum.
#include <doctest/doctest.h>
#include <fmt/format.h>

#include <cmath>
#include <string>
#include <vector>

#include "reference/reference.h"
#include "runtime/device.h"
#include "base/error.h"
#include "runtime/forward.h"
#include "runtime/pool_api.h"
#include "tuner/inputs.h"
#include "tests/gpu/check.h"

using namespace nsajit;

namespace {

Context& fwd_gpu() {
  static Context ctx(0);
  return ctx;
}

using test::ErrorMeter;
using test::LseMeter;

struct Options {
  bool separate_kv = false;  // own k/v for the selected and window branches
  bool pool_on_gpu = true;   // k_cmp/v_cmp: pooled by the forward itself, else given (pooled by mean_pool first)
  bool g_cmp = true, g_slc = true, g_win = true;
  std::vector<int32_t> cu;   // varlen offsets (then p.B == 1)
};

struct Tensor {
  std::vector<uint16_t> bits;
  DeviceBuffer dev;
};

Tensor make(size_t n, Dtype dt, uint64_t seed, bool gate = false) {
  Tensor t;
  t.bits = random_normal_bits(n, dt, seed);
  if (gate)
    for (auto& b : t.bits) b = float_to_bits(1.f / (1.f + std::exp(-bits_to_float(b, dt))), dt);
  t.dev = DeviceBuffer(std::max<size_t>(n, 1) * 2);
  if (n) t.dev.upload(t.bits.data(), n * 2);
  return t;
}

std::vector<double> slice(const std::vector<uint16_t>& bits, Dtype dt, int64_t first_row, int64_t rows, int64_t row) {
  std::vector<double> out(static_cast<size_t>(rows * row));
  for (int64_t i = 0; i < rows * row; ++i) out[static_cast<size_t>(i)] = bits_to_float(bits[static_cast<size_t>(first_row * row + i)], dt);
  return out;
}

int64_t ncmp(int64_t len, const Problem& p) { return len >= p.l ? (len - p.l) / p.d + 1 : 0; }

// Runs the forward and checks it; returns a description of the worst error for the log.
void check_forward(const Problem& p, uint64_t seed, const Options& opt) {
  fwd_gpu();
  const Dtype dt = p.dtype;
  const size_t tokens = static_cast<size_t>(p.B * p.T);
  std::vector<std::pair<int64_t, int64_t>> seqs;
  if (opt.cu.empty())
    for (int64_t b = 0; b < p.B; ++b) seqs.push_back({b * p.T, p.T});
  else
    for (size_t i = 0; i + 1 < opt.cu.size(); ++i) seqs.push_back({opt.cu[i], opt.cu[i + 1] - opt.cu[i]});
  int64_t total_cmp = 0;
  for (auto [f, len] : seqs) total_cmp += ncmp(len, p);

  Tensor q = make(tokens * p.HQ * p.dk, dt, seed), k = make(tokens * p.H * p.dk, dt, seed + 1),
         v = make(tokens * p.H * p.dv, dt, seed + 2);
  Tensor ks, vs, kw, vw;
  if (opt.separate_kv) {
    ks = make(tokens * p.H * p.dk, dt, seed + 3), vs = make(tokens * p.H * p.dv, dt, seed + 4);
    kw = make(tokens * p.H * p.dk, dt, seed + 5), vw = make(tokens * p.H * p.dv, dt, seed + 6);
  }
  Tensor gc = make(tokens * p.HQ, dt, seed + 7, true), gs = make(tokens * p.HQ, dt, seed + 8, true),
         gw = make(tokens * p.HQ, dt, seed + 9, true);
  const size_t on = tokens * p.HQ * p.dv * 2, ln = tokens * p.HQ * 4;
  DeviceBuffer o(on), o_cmp(on), o_slc_dev(on), o_win_dev(on), lse_cmp(ln), lse_slc_dev(ln), lse_win_dev(ln),
      idx(tokens * p.H * p.n * 4), cnt(tokens * p.H * 4);
  for (DeviceBuffer* b : {&o, &o_cmp, &o_slc_dev, &o_win_dev}) b->fill_u16(0xffff);
  for (DeviceBuffer* b : {&lse_cmp, &lse_slc_dev, &lse_win_dev}) b->fill_bytes(0xff);
  idx.fill_bytes(0x7f), cnt.fill_bytes(0x7f);
  DeviceBuffer dcu(std::max<size_t>(opt.cu.size(), 1) * 4);
  if (!opt.cu.empty()) dcu.upload(opt.cu.data(), opt.cu.size() * 4);

  ForwardTensors f;
  f.q = contiguous(q.dev.get(), p.T, p.HQ, p.dk), f.k = contiguous(k.dev.get(), p.T, p.H, p.dk);
  f.v = contiguous(v.dev.get(), p.T, p.H, p.dv), f.o = contiguous(o.get(), p.T, p.HQ, p.dv);
  if (opt.separate_kv) {
    f.k_slc = contiguous(ks.dev.get(), p.T, p.H, p.dk), f.v_slc = contiguous(vs.dev.get(), p.T, p.H, p.dv);
    f.k_win = contiguous(kw.dev.get(), p.T, p.H, p.dk), f.v_win = contiguous(vw.dev.get(), p.T, p.H, p.dv);
  }
  f.g_cmp = opt.g_cmp ? gc.dev.get() : nullptr;
  f.g_slc = opt.g_slc ? gs.dev.get() : nullptr;
  f.g_win = opt.g_win ? gw.dev.get() : nullptr;
  f.gate_stride_b = p.T * p.HQ, f.gate_stride_t = p.HQ;
  f.o_cmp = contiguous(o_cmp.get(), p.T, p.HQ, p.dv);
  f.o_slc = contiguous(o_slc_dev.get(), p.T, p.HQ, p.dv), f.o_win = contiguous(o_win_dev.get(), p.T, p.HQ, p.dv);
  f.lse_cmp = static_cast<float*>(lse_cmp.get()), f.lse_stride_b = p.T * p.HQ, f.lse_stride_t = p.HQ;
  f.lse_slc = static_cast<float*>(lse_slc_dev.get()), f.lse_win = static_cast<float*>(lse_win_dev.get());
  f.idx = static_cast<int32_t*>(idx.get()), f.cnt = static_cast<int32_t*>(cnt.get());
  if (!opt.cu.empty()) f.cu_seqlens = static_cast<const int32_t*>(dcu.get()), f.cu_seqlens_host = opt.cu;

  // Given compressed keys: pooled on the GPU first, so the reference sees exactly the same (rounded) values.
  DeviceBuffer kc(std::max<int64_t>(total_cmp, 1) * p.H * p.dk * 2), vc(std::max<int64_t>(total_cmp, 1) * p.H * p.dv * 2);
  std::vector<uint16_t> kc_bits(static_cast<size_t>(total_cmp * p.H * p.dk)), vc_bits(static_cast<size_t>(total_cmp * p.H * p.dv));
  {
    const int64_t per_batch = opt.cu.empty() ? ncmp(p.T, p) : 0;
    const TensorView kcv{kc.get(), per_batch * p.H * p.dk, static_cast<int64_t>(p.H) * p.dk, p.dk};
    const TensorView vcv{vc.get(), per_batch * p.H * p.dv, static_cast<int64_t>(p.H) * p.dv, p.dv};
    if (total_cmp > 0) {
      for (auto [src, dst, dim] : {std::tuple{f.k, kcv, p.dk}, std::tuple{f.v, vcv, p.dv}}) {
        PoolArgs a;
        a.x = src, a.y = dst, a.dim = dim, a.cu_seqlens = f.cu_seqlens, a.cu_seqlens_host = f.cu_seqlens_host;
        mean_pool(p, a, nullptr);
      }
      fwd_gpu().synchronize();
      kc.download(kc_bits.data(), kc_bits.size() * 2);
      vc.download(vc_bits.data(), vc_bits.size() * 2);
    }
    if (!opt.pool_on_gpu) f.k_cmp = kcv, f.v_cmp = vcv;
  }

  forward(p, f, nullptr);
  fwd_gpu().synchronize();
  const size_t oe = tokens * p.HQ * p.dv, le = tokens * p.HQ;
  std::vector<uint16_t> ob(oe), ocb(oe), osb(oe), owb(oe);
  std::vector<float> lb(le), lsb(le), lwb(le);
  std::vector<int32_t> ib(tokens * p.H * p.n), cb(tokens * p.H);
  o.download(ob.data(), oe * 2), o_cmp.download(ocb.data(), oe * 2);
  o_slc_dev.download(osb.data(), oe * 2), o_win_dev.download(owb.data(), oe * 2);
  lse_cmp.download(lb.data(), le * 4), lse_slc_dev.download(lsb.data(), le * 4), lse_win_dev.download(lwb.data(), le * 4);
  idx.download(ib.data(), ib.size() * 4), cnt.download(cb.data(), cb.size() * 4);
  if (tokens > 0) {  // planted faults (NSAJIT_TEST_PLANT): the last token's last head
    test::plant_row(ob, oe - static_cast<size_t>(p.dv), static_cast<size_t>(p.dv));
    test::plant_lse(lb, le - static_cast<size_t>(p.HQ));
  }

  // The default path every C ABI and PyTorch caller takes: only o, the scratch allocated by the call (o_scratch)
  // or given by the caller (o_ws, a workspace of exactly forward_workspace_bytes, poisoned). Both are checked
  // against the same reference; the selection they make internally is the same deterministic select's.
  std::vector<uint16_t> o_scratch(oe), o_ws(oe);
  {
    ForwardTensors d;
    d.q = f.q, d.k = f.k, d.v = f.v, d.k_slc = f.k_slc, d.v_slc = f.v_slc, d.k_win = f.k_win, d.v_win = f.v_win;
    d.k_cmp = f.k_cmp, d.v_cmp = f.v_cmp, d.g_cmp = f.g_cmp, d.g_slc = f.g_slc, d.g_win = f.g_win;
    d.gate_stride_b = f.gate_stride_b, d.gate_stride_t = f.gate_stride_t;
    d.cu_seqlens = f.cu_seqlens, d.cu_seqlens_host = f.cu_seqlens_host;
    DeviceBuffer o2(on);
    o2.fill_u16(0xffff);
    d.o = contiguous(o2.get(), p.T, p.HQ, p.dv);
    forward(p, d, nullptr);
    o2.download(o_scratch.data(), oe * 2);
    const size_t ws_bytes = forward_workspace_bytes(p);
    DeviceBuffer ws(ws_bytes);
    ws.fill_bytes(0xff);
    o2.fill_u16(0xffff);
    d.workspace = ws.get(), d.workspace_bytes = ws_bytes;
    forward(p, d, nullptr);
    fwd_gpu().synchronize();
    o2.download(o_ws.data(), oe * 2);
  }

  ErrorMeter eo, eoc, eos, eow, eo_scratch, eo_ws, ekc;
  LseMeter el, els, elw;
  int64_t cmp_first = 0;
  int selection_mismatches = 0;
  std::string first_mismatch;
  for (auto [first, len] : seqs) {
    const int64_t nc = ncmp(len, p);
    if (len == 0) continue;
    ref::Config rc;
    rc.T = len, rc.HQ = p.HQ, rc.H = p.H, rc.dk = p.dk, rc.dv = p.dv, rc.l = p.l, rc.d = p.d, rc.lsel = p.lsel;
    rc.n = p.n, rc.w = p.w, rc.scale = p.softmax_scale();
    const auto qd = slice(q.bits, dt, first, len, p.HQ * p.dk), kd = slice(k.bits, dt, first, len, p.H * p.dk),
               vd = slice(v.bits, dt, first, len, p.H * p.dv);
    const auto kcd = slice(kc_bits, dt, cmp_first, nc, p.H * p.dk), vcd = slice(vc_bits, dt, cmp_first, nc, p.H * p.dv);
    std::vector<double> ksd, vsd, kwd, vwd;
    if (opt.separate_kv) {
      ksd = slice(ks.bits, dt, first, len, p.H * p.dk), vsd = slice(vs.bits, dt, first, len, p.H * p.dv);
      kwd = slice(kw.bits, dt, first, len, p.H * p.dk), vwd = slice(vw.bits, dt, first, len, p.H * p.dv);
    }
    const auto gcd = slice(gc.bits, dt, first, len, p.HQ), gsd = slice(gs.bits, dt, first, len, p.HQ),
               gwd = slice(gw.bits, dt, first, len, p.HQ);
    ref::Inputs in;
    in.q = qd.data(), in.k = kd.data(), in.v = vd.data();
    in.k_cmp = kcd.data(), in.v_cmp = vcd.data();
    if (opt.separate_kv) in.k_slc = ksd.data(), in.v_slc = vsd.data(), in.k_win = kwd.data(), in.v_win = vwd.data();
    in.g_cmp = gcd.data(), in.g_slc = gsd.data(), in.g_win = gwd.data();
    const ref::Outputs R = ref::forward(rc, in);

    // The pooled keys the GPU made (kc_bits, which the reference used) against the float64 mean pool of k.
    if (nc > 0) {
      std::vector<double> kc_ref(static_cast<size_t>(nc * p.H * p.dk));
      ref::mean_pool(rc, kd.data(), p.dk, kc_ref.data());
      for (int64_t r = 0; r < nc * p.H; ++r) {
        for (int i = 0; i < p.dk; ++i)
          ekc.add(kcd[static_cast<size_t>(r * p.dk + i)], kc_ref[static_cast<size_t>(r * p.dk + i)]);
        ekc.end_row(r / p.H, static_cast<int>(r % p.H));
      }
    }
    const int32_t* gi = ib.data() + first * p.H * p.n;
    const int32_t* gcn = cb.data() + first * p.H;
    std::string why;
    if (!ref::selection_matches(R.sel, gi, gcn, rc, 1e-3, &why)) {
      if (selection_mismatches++ == 0) first_mismatch = why;
      cmp_first += nc;  // the next sequence's compressed keys start after this one's
      continue;
    }
    // The selected branch on the GPU's own choice, then the gated sum of the enabled branches.
    std::vector<double> o_slc(static_cast<size_t>(len * p.HQ * p.dv)), lse_slc(static_cast<size_t>(len * p.HQ));
    ref::selected_attention(rc, qd.data(), opt.separate_kv ? ksd.data() : kd.data(),
                            opt.separate_kv ? vsd.data() : vd.data(), gi, gcn, o_slc.data(), lse_slc.data());
    for (int64_t t = 0; t < len; ++t)
      for (int h = 0; h < p.HQ; ++h) {
        const size_t r = static_cast<size_t>(t * p.HQ + h);
        for (int i = 0; i < p.dv; ++i) {
          const size_t e = r * p.dv + i;
          double want = 0;
          if (opt.g_cmp) want += gcd[r] * R.o_cmp[e];
          if (opt.g_slc) want += gsd[r] * o_slc[e];
          if (opt.g_win && p.w > 0) want += gwd[r] * R.o_win[e];
          const size_t at = static_cast<size_t>(first * p.HQ * p.dv) + e;
          eo.add(bits_to_float(ob[at], dt), want);
          eo_scratch.add(bits_to_float(o_scratch[at], dt), want);
          eo_ws.add(bits_to_float(o_ws[at], dt), want);
          eoc.add(bits_to_float(ocb[at], dt), R.o_cmp[e]);
          eos.add(bits_to_float(osb[at], dt), o_slc[e]);
          if (p.w > 0) eow.add(bits_to_float(owb[at], dt), R.o_win[e]);
        }
        const int64_t tok = first + t;
        for (ErrorMeter* m : {&eo, &eo_scratch, &eo_ws, &eoc, &eos, &eow}) m->end_row(tok, h);
        const size_t lat = static_cast<size_t>(first * p.HQ) + r;
        el.add(lb[lat], R.lse_cmp[r], tok, h);
        els.add(lsb[lat], lse_slc[r], tok, h);
        if (p.w > 0) elw.add(lwb[lat], R.lse_win[r], tok, h);
      }
    cmp_first += nc;
  }
  const double tol = dt == Dtype::bf16 ? 1e-2 : 2e-3;
  INFO(p.describe(), " | selection mismatches ", selection_mismatches, " ", first_mismatch);
  INFO("o: ", eo.describe(), " | o (scratch inside): ", eo_scratch.describe(), " | o (caller workspace): ",
       eo_ws.describe());
  INFO("o_cmp: ", eoc.describe(), " | o_slc: ", eos.describe(), " | o_win: ", eow.describe(),
       " | k_cmp against ref::mean_pool: ", ekc.describe());
  INFO("lse_cmp: ", el.describe(), " | lse_slc: ", els.describe(), " | lse_win: ", elw.describe());
  CHECK(selection_mismatches == 0);
  CHECK(eo.ok(tol));
  CHECK(eo_scratch.ok(tol));
  CHECK(eo_ws.ok(tol));
  CHECK(eoc.ok(tol));
  CHECK(eos.ok(tol));
  CHECK(eow.ok(tol));
  CHECK(ekc.ok(tol));
  CHECK(el.ok(tol));
  CHECK(els.ok(tol));
  CHECK(elw.ok(tol));
}

Problem small(const char* name, Dtype dt, int G, int H, int64_t T) {
  Problem p = preset(name);
  p.dtype = dt, p.HQ = G * H, p.H = H, p.T = T;
  return p;
}

}  // namespace

TEST_CASE("forward: presets fla and paper, both dtypes, several group sizes") {
  uint64_t seed = 3000;
  for (const char* name : {"fla", "paper"})
    for (Dtype dt : {Dtype::bf16, Dtype::fp16})
      for (int G : {1, 4, 16}) {
        const Problem p = small(name, dt, G, G == 16 ? 1 : 2, 1100);
        Options opt;
        opt.pool_on_gpu = false;
        check_forward(p, seed += 11, opt);
      }
}

TEST_CASE("forward: the supported (l, d, l'), n, w, dims and G = 3") {
  const int blocking[][3] = {{32, 16, 64}, {64, 64, 64}, {32, 32, 64}, {64, 32, 64}};
  const int dims[][2] = {{64, 64}, {128, 128}, {192, 128}, {256, 256}};
  uint64_t seed = 3100;
  for (int i = 0; i < 4; ++i) {
    Problem p = small("fla", i % 2 ? Dtype::fp16 : Dtype::bf16, 3, 2, 700 + 300 * i);
    p.l = blocking[i][0], p.d = blocking[i][1], p.lsel = blocking[i][2];
    p.dk = dims[i][0], p.dv = dims[i][1];
    const int topn[] = {8, 16, 32, 16};
    p.n = topn[i];
    p.w = i == 3 ? 0 : 512;
    Options opt;
    opt.pool_on_gpu = false;
    check_forward(p, seed += 13, opt);
  }
}

TEST_CASE("forward: pooling inside, separate k/v per branch, disabled branches, batches and varlen") {
  uint64_t seed = 3200;
  Options opt;
  check_forward(small("paper", Dtype::bf16, 8, 2, 900), seed += 7, opt);  // pooled by the forward itself
  Options sep;
  sep.separate_kv = true, sep.pool_on_gpu = false;
  check_forward(small("fla", Dtype::bf16, 16, 1, 1000), seed += 7, sep);
  for (int mask = 1; mask < 8; ++mask) {
    Options o;
    o.pool_on_gpu = false, o.g_cmp = mask & 1, o.g_slc = mask & 2, o.g_win = mask & 4;
    check_forward(small("paper", Dtype::fp16, 4, 2, 500), seed += 7, o);
  }
  Problem b = small("fla", Dtype::bf16, 2, 2, 400);
  b.B = 3;
  Options ob;
  ob.pool_on_gpu = false;
  check_forward(b, seed += 7, ob);
  Problem v = small("paper", Dtype::bf16, 4, 2, 1400);
  Options ov;
  ov.cu = {0, 1, 1, 70, 100, 1400};
  check_forward(v, seed += 7, ov);
  ov.pool_on_gpu = false;
  check_forward(v, seed += 7, ov);
}

// Issue 14: the whole forward at head dims off the 64 grid (dk != dv), l' = 16 .. 128, G in {1, 3, 8}, B = 2, the
// mean pool on the GPU or given, separate k/v, varlen.
TEST_CASE("forward: any head dim, l' = 16 .. 128") {
  struct Case {
    int dk, dv, G, l, d, lsel, n;
  };
  const Case cases[] = {{32, 32, 1, 32, 16, 16, 16},  {40, 72, 3, 32, 16, 64, 8},   {80, 80, 8, 32, 32, 32, 16},
                        {96, 64, 3, 64, 32, 128, 8},  {96, 96, 1, 64, 64, 128, 8},  {160, 160, 8, 32, 16, 32, 16},
                        {200, 120, 3, 32, 16, 16, 32}, {256, 128, 1, 64, 32, 32, 8}, {72, 40, 8, 32, 16, 128, 8}};
  uint64_t seed = 3400;
  int i = 0;
  for (const Case& c : cases) {
    Problem p = small("fla", i % 2 ? Dtype::fp16 : Dtype::bf16, c.G, c.G == 8 ? 1 : 2, 300 + 113 * (i % 6));
    p.B = 2, p.dk = c.dk, p.dv = c.dv, p.l = c.l, p.d = c.d, p.lsel = c.lsel, p.n = c.n, p.w = i % 3 ? 128 : 0;
    Options o;
    o.pool_on_gpu = i % 2 == 0;
    o.separate_kv = i % 3 == 1;
    ++i;
    CAPTURE(p.describe());
    check_forward(p, seed += 11, o);
  }
  Problem v = small("paper", Dtype::bf16, 3, 2, 1000);
  v.dk = 80, v.dv = 48;
  Options ov;
  ov.cu = {0, 1, 1, 70, 100, 1000};
  check_forward(v, seed += 11, ov);
}

// A call refused for a bad argument of the last branch (the window's k) must not have launched anything: o, idx,
// cnt and lse_cmp keep the caller's values, and the caller's workspace is not written.
TEST_CASE("forward: a refused call leaves every output untouched") {
  fwd_gpu();
  const Problem p = small("fla", Dtype::bf16, 4, 2, 300);
  const size_t tokens = static_cast<size_t>(p.T);
  Tensor q = make(tokens * p.HQ * p.dk, p.dtype, 3900), k = make(tokens * p.H * p.dk, p.dtype, 3901),
         v = make(tokens * p.H * p.dv, p.dtype, 3902), g = make(tokens * p.HQ, p.dtype, 3903, true);
  DeviceBuffer o(tokens * p.HQ * p.dv * 2), lse(tokens * p.HQ * 4), idx(tokens * p.H * p.n * 4), cnt(tokens * p.H * 4);
  const size_t ws_bytes = forward_workspace_bytes(p);
  DeviceBuffer ws(ws_bytes);
  for (DeviceBuffer* b : {&o, &lse, &idx, &cnt, &ws}) b->fill_bytes(0x5a);
  ForwardTensors f;
  f.q = contiguous(q.dev.get(), p.T, p.HQ, p.dk), f.k = contiguous(k.dev.get(), p.T, p.H, p.dk);
  f.v = contiguous(v.dev.get(), p.T, p.H, p.dv), f.o = contiguous(o.get(), p.T, p.HQ, p.dv);
  f.g_cmp = f.g_slc = f.g_win = g.dev.get(), f.gate_stride_b = p.T * p.HQ, f.gate_stride_t = p.HQ;
  f.lse_cmp = static_cast<float*>(lse.get()), f.lse_stride_b = p.T * p.HQ, f.lse_stride_t = p.HQ;
  f.idx = static_cast<int32_t*>(idx.get()), f.cnt = static_cast<int32_t*>(cnt.get());
  f.workspace = ws.get(), f.workspace_bytes = ws_bytes;
  f.k_win = f.k;
  f.k_win.stride_h = 4;  // not a multiple of 8: only the window branch's check refuses it
  CHECK_THROWS_WITH_AS(forward(p, f, nullptr), doctest::Contains("k_win"), UsageError);
  fwd_gpu().synchronize();
  for (const DeviceBuffer* b : {&o, &lse, &idx, &cnt, &ws}) {
    std::vector<unsigned char> h(b->bytes());
    b->download(h.data(), h.size());
    size_t changed = 0;
    for (unsigned char c : h) changed += c != 0x5a;
    INFO("buffer of ", h.size(), " bytes");
    CHECK(changed == 0);
  }
  // The same call with the window's k fixed succeeds and writes o (so the check above could fail).
  f.k_win = {};
  forward(p, f, nullptr);
  fwd_gpu().synchronize();
  std::vector<uint16_t> h(tokens * p.HQ * p.dv);
  o.download(h.data(), h.size() * 2);
  size_t kept = 0;
  for (uint16_t x : h) kept += x == 0x5a5a;
  CHECK(kept < h.size() / 100);
}
