// GPU tests of what the runtime grew for the Python package, each an equivalence that must hold bit for bit (the
// kernels are deterministic): varlen given by num_seqs and max_seqlen (no host offsets, scratch sized by bounds)
// against the host offsets; gates with head stride 3 (views of one [T, HQ, 3] projection) against contiguous gates;
// forward and backward called from a thread with no CUDA context against the main thread; a forward + backward
// captured into a CUDA graph against eager. And the refusal of a call without a workspace on a capturing stream.
// Numerics against the float64 reference are test_forward.cpp's and test_backward.cpp's (and python/tests).
#include <doctest/doctest.h>
#include <fmt/format.h>

#include <cmath>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "base/error.h"
#include "runtime/backward.h"
#include "runtime/device.h"
#include "runtime/driver.h"
#include "runtime/forward.h"
#include "runtime/validate.h"
#include "tuner/inputs.h"

using namespace nsajit;

namespace {

Context& pkg_gpu() {
  static Context ctx(0);
  return ctx;
}

int64_t ncmp(int64_t len, const Problem& p) { return len >= p.l ? (len - p.l) / p.d + 1 : 0; }

DeviceBuffer upload_bits(const std::vector<uint16_t>& bits) {
  DeviceBuffer b(bits.size() * 2 + 16);
  b.upload(bits.data(), bits.size() * 2);
  return b;
}

// Every buffer of one forward + backward: inputs (random, gates through a sigmoid, each gate also inside one
// [tokens, HQ, 3] buffer), outputs and gradients. B = 1 for varlen.
struct Case {
  Problem p;
  std::vector<int32_t> cu;  // varlen offsets, or empty
  int64_t tokens = 0, rows_exact = 0, rows_bound = 0;
  bool given_cmp = false;
  DeviceBuffer q, k, v, g3, gc, gs, gw, dout, kc, vc, dcu;
  DeviceBuffer o, oc, os, ow, lc, ls, lw, idx, cnt, dq, dk, dv, dgc, dgs, dgw, dkc, dvc;

  Case(Problem problem, std::vector<int32_t> offsets, int64_t max_seqlen, bool cmp_given, uint64_t seed)
      : p(problem), cu(std::move(offsets)), given_cmp(cmp_given) {
    const Dtype dt = p.dtype;
    tokens = p.B * p.T;
    if (cu.empty()) {
      rows_exact = rows_bound = p.B * ncmp(p.T, p);
    } else if (max_seqlen == 0) {  // only ever given the host offsets
      for (size_t i = 0; i + 1 < cu.size(); ++i) rows_exact += ncmp(cu[i + 1] - cu[i], p);
      rows_bound = rows_exact;
    } else {
      for (size_t i = 0; i + 1 < cu.size(); ++i) rows_exact += ncmp(cu[i + 1] - cu[i], p);
      BatchLayout b;
      const int32_t any = 0;
      b.cu_seqlens = &any, b.num_seqs = static_cast<int64_t>(cu.size()) - 1, b.max_seqlen = max_seqlen;
      rows_bound = batch_sums(p, b).cmp_blocks;
    }
    auto n = [&](int64_t rows, int heads, int dim) { return static_cast<size_t>(rows * heads * dim); };
    q = upload_bits(random_normal_bits(n(tokens, p.HQ, p.dk), dt, seed));
    k = upload_bits(random_normal_bits(n(tokens, p.H, p.dk), dt, seed + 1));
    v = upload_bits(random_normal_bits(n(tokens, p.H, p.dv), dt, seed + 2));
    std::vector<uint16_t> g[3], g3b(n(tokens, p.HQ, 3));
    for (int j = 0; j < 3; ++j) {
      g[j] = random_normal_bits(n(tokens, p.HQ, 1), dt, seed + 3 + j);
      for (size_t i = 0; i < g[j].size(); ++i) {
        g[j][i] = float_to_bits(1.f / (1.f + std::exp(-bits_to_float(g[j][i], dt))), dt);
        g3b[i * 3 + j] = g[j][i];
      }
    }
    gc = upload_bits(g[0]), gs = upload_bits(g[1]), gw = upload_bits(g[2]), g3 = upload_bits(g3b);
    dout = upload_bits(random_normal_bits(n(tokens, p.HQ, p.dv), dt, seed + 6));
    const int64_t rows = std::max<int64_t>(rows_bound, 1);
    kc = upload_bits(random_normal_bits(n(rows, p.H, p.dk), dt, seed + 7));
    vc = upload_bits(random_normal_bits(n(rows, p.H, p.dv), dt, seed + 8));
    dcu = DeviceBuffer(std::max<size_t>(cu.size(), 1) * 4);
    if (!cu.empty()) dcu.upload(cu.data(), cu.size() * 4);
    auto out = [&](size_t bytes) { return DeviceBuffer(bytes + 16); };
    o = out(n(tokens, p.HQ, p.dv) * 2), oc = out(n(tokens, p.HQ, p.dv) * 2), os = out(n(tokens, p.HQ, p.dv) * 2);
    ow = out(n(tokens, p.HQ, p.dv) * 2);
    lc = out(n(tokens, p.HQ, 1) * 4), ls = out(n(tokens, p.HQ, 1) * 4), lw = out(n(tokens, p.HQ, 1) * 4);
    idx = out(n(tokens, p.H, p.n) * 4), cnt = out(n(tokens, p.H, 1) * 4);
    dq = out(n(tokens, p.HQ, p.dk) * 2), dk = out(n(tokens, p.H, p.dk) * 2), dv = out(n(tokens, p.H, p.dv) * 2);
    dgc = out(n(tokens, p.HQ, 1) * 2), dgs = out(n(tokens, p.HQ, 1) * 2), dgw = out(n(tokens, p.HQ, 1) * 2);
    dkc = out(n(rows, p.H, p.dk) * 2), dvc = out(n(rows, p.H, p.dv) * 2);
  }

  std::vector<DeviceBuffer*> outputs() {
    return {&o, &oc, &os, &ow, &lc, &ls, &lw, &idx, &cnt, &dq, &dk, &dv, &dgc, &dgs, &dgw, &dkc, &dvc};
  }
  void poison() {
    for (DeviceBuffer* b : outputs()) b->fill_bytes(0xff);
    pkg_gpu().synchronize();
  }
  // Every output's bytes; dk_cmp/dv_cmp: the rows of the batch's own blocks (the rest is checked apart).
  std::vector<std::vector<unsigned char>> snapshot() {
    pkg_gpu().synchronize();
    std::vector<std::vector<unsigned char>> s;
    for (DeviceBuffer* b : outputs()) {
      size_t bytes = b->bytes() - 16;
      if (b == &dkc) bytes = static_cast<size_t>(rows_exact * p.H * p.dk) * 2;
      if (b == &dvc) bytes = static_cast<size_t>(rows_exact * p.H * p.dv) * 2;
      s.emplace_back(bytes);
      if (bytes > 0) b->download(s.back().data(), bytes);
    }
    return s;
  }
};

struct Mode {
  bool bounded = false;      // varlen given by num_seqs and max_seqlen instead of the host offsets
  int64_t max_seqlen = 0;
  bool fused_gates = false;  // the gates as views of the [tokens, HQ, 3] buffer (head stride 3)
};

TensorView view(const DeviceBuffer& b, int64_t T, int heads, int dim) { return contiguous(b.get(), T, heads, dim); }

ForwardTensors forward_tensors(Case& c, const Mode& m) {
  const Problem& p = c.p;
  ForwardTensors f;
  f.q = view(c.q, p.T, p.HQ, p.dk), f.k = view(c.k, p.T, p.H, p.dk), f.v = view(c.v, p.T, p.H, p.dv);
  f.o = view(c.o, p.T, p.HQ, p.dv);
  if (m.fused_gates) {
    const char* g3 = static_cast<const char*>(c.g3.get());
    f.g_cmp = g3, f.g_slc = g3 + 2, f.g_win = g3 + 4;
    f.gate_stride_b = p.T * p.HQ * 3, f.gate_stride_t = p.HQ * 3, f.gate_stride_h = 3;
  } else {
    f.g_cmp = c.gc.get(), f.g_slc = c.gs.get(), f.g_win = c.gw.get();
    f.gate_stride_b = p.T * p.HQ, f.gate_stride_t = p.HQ;
  }
  f.o_cmp = view(c.oc, p.T, p.HQ, p.dv), f.o_slc = view(c.os, p.T, p.HQ, p.dv), f.o_win = view(c.ow, p.T, p.HQ, p.dv);
  f.lse_cmp = static_cast<float*>(c.lc.get()), f.lse_slc = static_cast<float*>(c.ls.get());
  f.lse_win = static_cast<float*>(c.lw.get());
  f.lse_stride_b = p.T * p.HQ, f.lse_stride_t = p.HQ;
  f.idx = static_cast<int32_t*>(c.idx.get()), f.cnt = static_cast<int32_t*>(c.cnt.get());
  const int64_t per_batch = c.cu.empty() ? ncmp(p.T, p) : 0;
  if (c.given_cmp) {
    f.k_cmp = {c.kc.get(), per_batch * p.H * p.dk, static_cast<int64_t>(p.H) * p.dk, p.dk};
    f.v_cmp = {c.vc.get(), per_batch * p.H * p.dv, static_cast<int64_t>(p.H) * p.dv, p.dv};
  }
  if (!c.cu.empty()) {
    f.cu_seqlens = static_cast<const int32_t*>(c.dcu.get());
    if (m.bounded) {
      f.num_seqs = static_cast<int64_t>(c.cu.size()) - 1, f.max_seqlen = m.max_seqlen;
    } else {
      f.cu_seqlens_host = c.cu;
    }
  }
  return f;
}

BackwardTensors backward_tensors(Case& c, const ForwardTensors& f) {
  const Problem& p = c.p;
  BackwardTensors t;
  t.q = f.q, t.k = f.k, t.v = f.v, t.k_cmp = f.k_cmp, t.v_cmp = f.v_cmp;
  t.g_cmp = f.g_cmp, t.g_slc = f.g_slc, t.g_win = f.g_win;
  t.gate_stride_b = f.gate_stride_b, t.gate_stride_t = f.gate_stride_t, t.gate_stride_h = f.gate_stride_h;
  t.o_cmp = f.o_cmp, t.o_slc = f.o_slc, t.o_win = f.o_win;
  t.lse_cmp = f.lse_cmp, t.lse_slc = f.lse_slc, t.lse_win = f.lse_win;
  t.lse_stride_b = f.lse_stride_b, t.lse_stride_t = f.lse_stride_t;
  t.idx = f.idx, t.cnt = f.cnt;
  t.dout = view(c.dout, p.T, p.HQ, p.dv);
  t.dq = view(c.dq, p.T, p.HQ, p.dk), t.dk = view(c.dk, p.T, p.H, p.dk), t.dv = view(c.dv, p.T, p.H, p.dv);
  if (c.given_cmp) {
    t.dk_cmp = {c.dkc.get(), f.k_cmp.stride_b, f.k_cmp.stride_t, f.k_cmp.stride_h};
    t.dv_cmp = {c.dvc.get(), f.v_cmp.stride_b, f.v_cmp.stride_t, f.v_cmp.stride_h};
  }
  t.dg_cmp = c.dgc.get(), t.dg_slc = c.dgs.get(), t.dg_win = c.dgw.get();
  t.dg_stride_b = p.T * p.HQ, t.dg_stride_t = p.HQ;
  t.cu_seqlens = f.cu_seqlens, t.cu_seqlens_host = f.cu_seqlens_host;
  t.num_seqs = f.num_seqs, t.max_seqlen = f.max_seqlen;
  return t;
}

// Forward then backward on `stream`, with workspaces when given.
void run(Case& c, const Mode& m, CUstream stream, DeviceBuffer* fws = nullptr, DeviceBuffer* bws = nullptr) {
  ForwardTensors f = forward_tensors(c, m);
  if (fws) f.workspace = fws->get(), f.workspace_bytes = fws->bytes();
  forward(c.p, f, stream);
  BackwardTensors t = backward_tensors(c, f);
  if (bws) t.workspace = bws->get(), t.workspace_bytes = bws->bytes();
  backward(c.p, t, stream);
}

const char* kOutputNames[] = {"o",  "o_cmp", "o_slc", "o_win", "lse_cmp", "lse_slc", "lse_win", "idx",    "cnt",
                              "dq", "dk",    "dv",    "dg_cmp", "dg_slc", "dg_win",  "dk_cmp",  "dv_cmp"};

void check_same(const std::vector<std::vector<unsigned char>>& a, const std::vector<std::vector<unsigned char>>& b,
                const char* what) {
  REQUIRE(a.size() == b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    CAPTURE(std::string(kOutputNames[i]));
    CHECK_MESSAGE(a[i] == b[i], what << ": " << kOutputNames[i] << " differs");
  }
}

Problem small(int64_t B, int64_t T) {
  Problem p = preset("paper");
  p.B = B, p.T = T, p.HQ = 8, p.H = 2, p.dk = 64, p.dv = 64, p.n = 8, p.w = 128;
  return p;
}

CUcontext current_context() {
  CUcontext ctx = nullptr;
  check_cu(driver().cuCtxGetCurrent_(&ctx), "cuCtxGetCurrent");
  return ctx;
}

}  // namespace

TEST_CASE("pkg: varlen given by num_seqs and max_seqlen equals varlen given by the host offsets, bit for bit") {
  pkg_gpu();
  const std::vector<int32_t> cu = {0, 100, 100, 613, 700, 1024};  // an empty sequence, the longest 513
  for (bool given_cmp : {false, true})
    for (int64_t max_seqlen : {int64_t{513}, int64_t{800}}) {
      CAPTURE(given_cmp);
      CAPTURE(max_seqlen);
      Case c(small(1, 1024), cu, max_seqlen, given_cmp, 101);
      c.poison();
      run(c, Mode{}, nullptr);
      const auto host = c.snapshot();
      c.poison();
      Mode bounded;
      bounded.bounded = true, bounded.max_seqlen = max_seqlen;
      run(c, bounded, nullptr);
      check_same(host, c.snapshot(), "max_seqlen");
      if (given_cmp) {
        // The rows past the batch's own compressed blocks get zero gradients.
        CHECK(c.rows_bound > c.rows_exact);
        std::vector<uint16_t> tail(static_cast<size_t>((c.rows_bound - c.rows_exact) * c.p.H * c.p.dk));
        c.dkc.download(tail.data(), tail.size() * 2, static_cast<size_t>(c.rows_exact * c.p.H * c.p.dk) * 2);
        CHECK(std::all_of(tail.begin(), tail.end(), [](uint16_t x) { return x == 0; }));
      }
    }
}

TEST_CASE("pkg: gates with head stride 3 (one [T, HQ, 3] projection) equal contiguous gates, bit for bit") {
  pkg_gpu();
  for (bool varlen : {false, true}) {
    CAPTURE(varlen);
    Case c = varlen ? Case(small(1, 900), {0, 333, 900}, 0, false, 202) : Case(small(2, 700), {}, 0, false, 202);
    c.poison();
    run(c, Mode{}, nullptr);
    const auto plain = c.snapshot();
    c.poison();
    Mode fused;
    fused.fused_gates = true;
    run(c, fused, nullptr);
    check_same(plain, c.snapshot(), "head stride 3");
  }
}

TEST_CASE("pkg: a thread with no CUDA context gets the device's primary context and the same results") {
  Context& gpu = pkg_gpu();
  const CUcontext main_ctx = current_context();
  REQUIRE(main_ctx != nullptr);
  Case c(small(2, 700), {}, 0, false, 303);
  c.poison();
  run(c, Mode{}, nullptr);
  const auto want = c.snapshot();
  c.poison();
  DeviceBuffer fws(forward_workspace_bytes(c.p));
  BackwardTensors probe = backward_tensors(c, forward_tensors(c, Mode{}));
  DeviceBuffer bws(backward_workspace_bytes(c.p, probe));
  CUcontext before = reinterpret_cast<CUcontext>(1), after = nullptr;
  std::string error;
  std::thread worker([&] {
    try {
      before = current_context();
      run(c, Mode{}, nullptr, &fws, &bws);
      after = current_context();
      check_cu(driver().cuCtxSynchronize_(), "cuCtxSynchronize");
    } catch (const std::exception& e) {
      error = e.what();
    }
  });
  worker.join();
  REQUIRE_MESSAGE(error.empty(), error);
  CHECK_MESSAGE(before == nullptr, "the new thread already had a context: the test proves nothing");
  CHECK_MESSAGE(after == main_ctx, "the thread should be left in the device's primary context");
  check_same(want, c.snapshot(), "fresh thread");
  (void)gpu;
}

TEST_CASE("pkg: forward + backward captured into a CUDA graph replay to the eager results; no workspace is refused "
          "while capturing") {
  pkg_gpu();
  const DriverApi& d = driver();
  CUstream stream = nullptr;
  check_cu(d.cuStreamCreate_(&stream, CU_STREAM_NON_BLOCKING), "cuStreamCreate");
  for (bool varlen : {false, true}) {
    CAPTURE(varlen);
    Case c = varlen ? Case(small(1, 1024), {0, 100, 100, 613, 700, 1024}, 513, true, 404)
                    : Case(small(2, 640), {}, 0, false, 404);
    Mode m;
    if (varlen) m.bounded = true, m.max_seqlen = 513;
    DeviceBuffer fws(forward_workspace_bytes(c.p));
    BackwardTensors probe = backward_tensors(c, forward_tensors(c, m));
    DeviceBuffer bws(backward_workspace_bytes(c.p, probe));
    c.poison();
    run(c, m, stream, &fws, &bws);  // eager, which also compiles and loads every kernel
    check_cu(d.cuStreamSynchronize_(stream), "cuStreamSynchronize");
    const auto want = c.snapshot();

    check_cu(d.cuStreamBeginCapture_(stream, CU_STREAM_CAPTURE_MODE_GLOBAL), "cuStreamBeginCapture");
    std::string refused;
    try {
      forward(c.p, forward_tensors(c, m), stream);  // no workspace: would allocate and synchronize
    } catch (const UsageError& e) {
      refused = e.what();
    }
    std::string error;
    try {
      run(c, m, stream, &fws, &bws);
    } catch (const std::exception& e) {
      error = e.what();
    }
    CUgraph graph = nullptr;
    const CUresult ended = d.cuStreamEndCapture_(stream, &graph);
    CHECK_MESSAGE(refused.find("captured into a CUDA graph") != std::string::npos, "refusal: '" << refused << "'");
    REQUIRE_MESSAGE(error.empty(), error);
    REQUIRE_MESSAGE(ended == CUDA_SUCCESS, "the capture was invalidated: " << cu_error_name(ended));
    CUgraphExec exec = nullptr;
    check_cu(d.cuGraphInstantiate_(&exec, graph, 0), "cuGraphInstantiate");
    c.poison();
    for (int replay = 0; replay < 2; ++replay) check_cu(d.cuGraphLaunch_(exec, stream), "cuGraphLaunch");
    check_cu(d.cuStreamSynchronize_(stream), "cuStreamSynchronize");
    check_same(want, c.snapshot(), "graph replay");
    check_cu(d.cuGraphExecDestroy_(exec), "cuGraphExecDestroy");
    check_cu(d.cuGraphDestroy_(graph), "cuGraphDestroy");
  }
  check_cu(d.cuStreamDestroy_(stream), "cuStreamDestroy");
}
