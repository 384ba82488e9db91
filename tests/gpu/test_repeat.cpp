// One small case of every kernel family, run twice and compared bit for bit (NSA.md: an error that moves between
// runs is a race), and the tuner's correctness gate on planted inputs. scripts/gpu_check.sh also runs the cases
// named "small case of every family" under compute-sanitizer memcheck and racecheck.
#include <doctest/doctest.h>
#include <fmt/format.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "runtime/attn_fwd_api.h"
#include "runtime/device.h"
#include "runtime/forward.h"
#include "tuner/cases.h"
#include "tuner/inputs.h"

using namespace nsajit;

namespace {

Context& repeat_gpu() {
  static Context ctx(0);
  return ctx;
}

struct Buffers {
  DeviceBuffer o, o_cmp, o_slc, o_win, lse_cmp, lse_slc, lse_win, idx, cnt, o_ref_win, lse_ref_win, o_ref_cmp,
      lse_ref_cmp;
};

// The bytes of every output of one run: the whole forward (pool, cmp_fwd, select, slc_fwd, win_fwd) with every
// optional output, then the two reference kernels (win_fwd_ref, cmp_fwd_ref) on the same inputs.
std::vector<std::vector<unsigned char>> run_every_family(const Problem& p, uint64_t seed) {
  repeat_gpu();
  const size_t tok = static_cast<size_t>(p.B * p.T);
  DeviceBuffer q = random_device_tensor(tok * p.HQ * p.dk, p.dtype, seed);
  DeviceBuffer k = random_device_tensor(tok * p.H * p.dk, p.dtype, seed + 1);
  DeviceBuffer v = random_device_tensor(tok * p.H * p.dv, p.dtype, seed + 2);
  DeviceBuffer g = random_device_tensor(tok * p.HQ * 3, p.dtype, seed + 3);  // three gates interleaved (stride 3)
  Buffers b;
  const size_t on = tok * p.HQ * p.dv * 2, ln = tok * p.HQ * 4;
  for (DeviceBuffer* d : {&b.o, &b.o_cmp, &b.o_slc, &b.o_win, &b.o_ref_win, &b.o_ref_cmp}) *d = DeviceBuffer(on);
  for (DeviceBuffer* d : {&b.lse_cmp, &b.lse_slc, &b.lse_win, &b.lse_ref_win, &b.lse_ref_cmp}) *d = DeviceBuffer(ln);
  b.idx = DeviceBuffer(tok * p.H * p.n * 4), b.cnt = DeviceBuffer(tok * p.H * 4);
  for (DeviceBuffer* d : {&b.o, &b.o_cmp, &b.o_slc, &b.o_win, &b.o_ref_win, &b.o_ref_cmp, &b.lse_cmp, &b.lse_slc,
                          &b.lse_win, &b.lse_ref_win, &b.lse_ref_cmp, &b.idx, &b.cnt})
    d->fill_bytes(0xff);

  ForwardTensors f;
  f.q = contiguous(q.get(), p.T, p.HQ, p.dk), f.k = contiguous(k.get(), p.T, p.H, p.dk);
  f.v = contiguous(v.get(), p.T, p.H, p.dv), f.o = contiguous(b.o.get(), p.T, p.HQ, p.dv);
  // The three gates: thirds of one buffer.
  f.g_cmp = g.get();
  f.g_slc = static_cast<const char*>(g.get()) + tok * p.HQ * 2;
  f.g_win = static_cast<const char*>(g.get()) + tok * p.HQ * 4;
  f.gate_stride_b = p.T * p.HQ, f.gate_stride_t = p.HQ;
  f.o_cmp = contiguous(b.o_cmp.get(), p.T, p.HQ, p.dv), f.o_slc = contiguous(b.o_slc.get(), p.T, p.HQ, p.dv);
  f.o_win = contiguous(b.o_win.get(), p.T, p.HQ, p.dv);
  f.lse_cmp = static_cast<float*>(b.lse_cmp.get()), f.lse_slc = static_cast<float*>(b.lse_slc.get());
  f.lse_win = static_cast<float*>(b.lse_win.get()), f.lse_stride_b = p.T * p.HQ, f.lse_stride_t = p.HQ;
  f.idx = static_cast<int32_t*>(b.idx.get()), f.cnt = static_cast<int32_t*>(b.cnt.get());
  forward(p, f, nullptr);

  AttnFwdArgs a;
  a.q = f.q, a.k = f.k, a.v = f.v, a.o = contiguous(b.o_ref_win.get(), p.T, p.HQ, p.dv);
  a.lse = static_cast<float*>(b.lse_ref_win.get()), a.lse_stride_b = p.T * p.HQ, a.lse_stride_t = p.HQ;
  win_fwd_reference(p, a, nullptr);
  // The compressed reference on the first keys of k, v as compressed keys (random values serve).
  const int64_t nc = p.T >= p.l ? (p.T - p.l) / p.d + 1 : 0;
  a.k = {k.get(), nc * p.H * p.dk, static_cast<int64_t>(p.H) * p.dk, p.dk};
  a.v = {v.get(), nc * p.H * p.dv, static_cast<int64_t>(p.H) * p.dv, p.dv};
  a.o = contiguous(b.o_ref_cmp.get(), p.T, p.HQ, p.dv), a.lse = static_cast<float*>(b.lse_ref_cmp.get());
  cmp_fwd_reference(p, a, nullptr);
  repeat_gpu().synchronize();

  std::vector<std::vector<unsigned char>> out;
  for (const DeviceBuffer* d : {&b.o, &b.o_cmp, &b.o_slc, &b.o_win, &b.lse_cmp, &b.lse_slc, &b.lse_win, &b.idx,
                                &b.cnt, &b.o_ref_win, &b.lse_ref_win, &b.o_ref_cmp, &b.lse_ref_cmp}) {
    out.emplace_back(d->bytes());
    d->download(out.back().data(), d->bytes());
  }
  return out;
}

const char* const kOutputNames[] = {"o",   "o_cmp", "o_slc",     "o_win",       "lse_cmp",   "lse_slc",    "lse_win",
                                    "idx", "cnt",   "win_ref o", "win_ref lse", "cmp_ref o", "cmp_ref lse"};

}  // namespace

// Small enough for compute-sanitizer's racecheck; crosses block edges (T not a multiple of 64) and has G = 4, and
// G = 16 (where slc_fwd's default is the Hopper implementation, as win_fwd's and cmp_fwd's are for both).
TEST_CASE("small case of every family: run twice, outputs identical bit for bit") {
  for (auto [name, G] : {std::pair<const char*, int>{"fla", 4}, {"paper", 4}, {"fla", 16}}) {
    Problem p = preset(name);
    p.T = 777, p.HQ = 2 * G, p.H = 2, p.B = 2;
    const auto first = run_every_family(p, 9100), second = run_every_family(p, 9100);
    REQUIRE(first.size() == second.size());
    for (size_t i = 0; i < first.size(); ++i) {
      INFO(p.describe(), " output ", kOutputNames[i]);
      size_t differing = 0, first_at = 0;
      for (size_t j = 0; j < first[i].size(); ++j)
        if (first[i][j] != second[i][j] && differing++ == 0) first_at = j;
      INFO("bytes differing ", differing, " (first at byte ", first_at, ")");
      CHECK(differing == 0);
    }
  }
}

// The tuner's gate (templates/compare.cuh): a trusted -inf (an lse over no keys) matched by a finite value, a
// trusted result that is NaN, all zeros or unwritten, are all refused; equal tensors pass.
TEST_CASE("tuner gate: finite where the trusted value is -inf, broken trusted results, near and far values") {
  repeat_gpu();
  const Problem p = preset("fla");
  const int64_t n = 5000;
  std::vector<float> ref(n), cand(n);
  for (int64_t i = 0; i < n; ++i) ref[i] = cand[i] = std::sin(static_cast<float>(i)) + 2.0f;
  DeviceBuffer dr(n * 4), dc(n * 4);
  auto run = [&](bool nonzero = true) {
    dr.upload(ref.data(), n * 4), dc.upload(cand.data(), n * 4);
    return gate_compare(p, dc.get(), dr.get(), n, 2, 1e-2, nonzero);
  };
  CHECK_FALSE(run().has_value());  // equal
  cand[17] += 1e-4f;
  CHECK_FALSE(run().has_value());  // within tolerance
  cand[17] = ref[17];
  // An lse over no keys: -inf trusted, finite candidate.
  ref[100] = cand[100] = -std::numeric_limits<float>::infinity();
  CHECK_FALSE(run().has_value());
  cand[100] = 3.0f;
  auto r = run();
  REQUIRE(r.has_value());
  CHECK(r->find("not -inf where the trusted result is -inf") != std::string::npos);
  cand[100] = -std::numeric_limits<float>::infinity();
  // A trusted result that is all NaN (unwritten, poisoned) refuses every candidate, whatever it holds.
  std::fill(ref.begin(), ref.end(), std::numeric_limits<float>::quiet_NaN());
  r = run();
  REQUIRE(r.has_value());
  CHECK(r->find("trusted result holds 5000 NaN") != std::string::npos);
  // All zeros (trusted and candidate): refused where the trusted result cannot be zero, accepted where it can.
  std::fill(ref.begin(), ref.end(), 0.0f), std::fill(cand.begin(), cand.end(), 0.0f);
  r = run();
  REQUIRE(r.has_value());
  CHECK(r->find("all zeros") != std::string::npos);
  CHECK_FALSE(run(false).has_value());
  // int32: an unwritten (poisoned) trusted entry is refused even when the candidate holds the same poison.
  std::vector<int32_t> ri(n, 3), ci(n, 3);
  ri[4999] = ci[4999] = 0x7f7f7f7f;
  DeviceBuffer di(n * 4), dj(n * 4);
  di.upload(ri.data(), n * 4), dj.upload(ci.data(), n * 4);
  r = gate_compare(p, dj.get(), di.get(), n, 3, 0);
  REQUIRE(r.has_value());
  CHECK(r->find("unwritten") != std::string::npos);
  ri[4999] = ci[4999] = 5;
  ci[0] = 4;
  di.upload(ri.data(), n * 4), dj.upload(ci.data(), n * 4);
  r = gate_compare(p, dj.get(), di.get(), n, 3, 0);
  REQUIRE(r.has_value());
  CHECK(r->find("1 of 5000 entries differ") != std::string::npos);
}
