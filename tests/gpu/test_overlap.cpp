// GPU tests of the selected branch's overlap dispatch (codegen/overlap.h, runtime/slc_fwd_api.h): the plan kernel
// against the host's plan on synthetic selections at the bucket boundary and on the selections of coherent and
// random queries, and a whole forward captured into a CUDA graph that replays right while the selection (and so the
// plan) changes between replays. The dispatch's results against the float64 reference are in test_slc_fwd.cpp.
#include <doctest/doctest.h>
#include <fmt/format.h>

#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "codegen/family.h"
#include "codegen/overlap.h"
#include "runtime/device.h"
#include "runtime/driver.h"
#include "base/error.h"
#include "runtime/forward.h"
#include "runtime/slc_fwd_api.h"
#include "runtime/tuned.h"
#include "tuner/inputs.h"
#include "tests/gpu/check.h"

using namespace nsajit;

namespace {

Context& overlap_gpu() {
  static Context ctx(0);
  return ctx;
}

DeviceBuffer upload_i32(const std::vector<int32_t>& v) {
  DeviceBuffer d(std::max<size_t>(v.size(), 1) * 4);
  if (!v.empty()) d.upload(v.data(), v.size() * 4);
  return d;
}

// The GPU's plan of idx/cnt, with a planted fault (NSAJIT_TEST_PLANT=row) on its first entry.
std::vector<uint8_t> gpu_plan(const Problem& p, const DeviceBuffer& idx, const DeviceBuffer& cnt) {
  DeviceBuffer plan(slc_plan_bytes(p));
  plan.fill_bytes(0xee);  // neither bucket: an unwritten entry is caught
  slc_overlap_plan(p, static_cast<const int32_t*>(idx.get()), static_cast<const int32_t*>(cnt.get()),
                   static_cast<uint8_t*>(plan.get()), plan.bytes(), nullptr);
  overlap_gpu().synchronize();
  std::vector<uint8_t> out(plan.bytes());
  plan.download(out.data(), out.size());
  test::plant_byte(out, 0);
  return out;
}

int64_t mismatches(const std::vector<uint8_t>& got, const std::vector<OverlapBucket>& want) {
  int64_t bad = static_cast<int64_t>(got.size() != want.size());
  for (size_t i = 0; i < std::min(got.size(), want.size()); ++i) bad += got[i] != static_cast<uint8_t>(want[i]);
  return bad;
}

// A whole forward's buffers: q of an input kind, random k, v and gates; o, o_slc, lse_slc, idx and cnt written.
struct Forward {
  Problem p;
  DeviceBuffer q, k, v, gate, o, o_slc, lse_slc, idx, cnt, ws;
  ForwardTensors t;

  explicit Forward(const Problem& problem) : p(problem) {
    overlap_gpu();
    const size_t tokens = static_cast<size_t>(p.B * p.T);
    q = DeviceBuffer(tokens * p.HQ * p.dk * 2);
    k = random_device_tensor(tokens * p.H * p.dk, p.dtype, 9101);
    v = random_device_tensor(tokens * p.H * p.dv, p.dtype, 9102);
    std::vector<uint16_t> g = random_normal_bits(tokens * p.HQ * 3, p.dtype, 9103);
    for (auto& x : g) x = float_to_bits(1.f / (1.f + std::exp(-bits_to_float(x, p.dtype))), p.dtype);
    gate = DeviceBuffer(g.size() * 2);
    gate.upload(g.data(), g.size() * 2);
    o = DeviceBuffer(tokens * p.HQ * p.dv * 2), o_slc = DeviceBuffer(o.bytes());
    lse_slc = DeviceBuffer(tokens * p.HQ * 4);
    idx = DeviceBuffer(tokens * p.H * p.n * 4), cnt = DeviceBuffer(tokens * p.H * 4);
    ws = DeviceBuffer(forward_workspace_bytes(p));
    t.q = contiguous(q.get(), p.T, p.HQ, p.dk), t.k = contiguous(k.get(), p.T, p.H, p.dk);
    t.v = contiguous(v.get(), p.T, p.H, p.dv), t.o = contiguous(o.get(), p.T, p.HQ, p.dv);
    const char* g0 = static_cast<const char*>(gate.get());
    t.g_cmp = g0, t.g_slc = g0 + tokens * p.HQ * 2, t.g_win = g0 + 2 * tokens * p.HQ * 2;
    t.gate_stride_b = p.T * p.HQ, t.gate_stride_t = p.HQ;
    t.o_slc = contiguous(o_slc.get(), p.T, p.HQ, p.dv);
    t.lse_slc = static_cast<float*>(lse_slc.get()), t.lse_stride_b = p.T * p.HQ, t.lse_stride_t = p.HQ;
    t.idx = static_cast<int32_t*>(idx.get()), t.cnt = static_cast<int32_t*>(cnt.get());
    t.workspace = ws.get(), t.workspace_bytes = ws.bytes();
  }
  void set_queries(InputKind kind, uint64_t seed) {
    const std::vector<uint16_t> bits = query_bits(p, kind, seed);
    q.upload(bits.data(), bits.size() * 2);
    overlap_gpu().synchronize();
  }
  // The memsets and copies run on the legacy stream, which a non-blocking stream does not wait for: both end with
  // a context synchronization.
  void poison() {
    o.fill_u16(0xffff), o_slc.fill_u16(0xffff), lse_slc.fill_bytes(0xff);
    idx.fill_bytes(0xff), cnt.fill_bytes(0xff);
    overlap_gpu().synchronize();
  }
  struct Snapshot {
    std::vector<uint16_t> o, o_slc;
    std::vector<float> lse_slc;
    std::vector<int32_t> idx, cnt;
  };
  Snapshot snapshot() const {
    Snapshot s;
    s.o.resize(o.bytes() / 2), s.o_slc.resize(o_slc.bytes() / 2), s.lse_slc.resize(lse_slc.bytes() / 4);
    s.idx.resize(idx.bytes() / 4), s.cnt.resize(cnt.bytes() / 4);
    o.download(s.o.data(), o.bytes()), o_slc.download(s.o_slc.data(), o_slc.bytes());
    lse_slc.download(s.lse_slc.data(), lse_slc.bytes());
    idx.download(s.idx.data(), idx.bytes()), cnt.download(s.cnt.data(), cnt.bytes());
    return s;
  }
};

// Elements that differ bit for bit.
template <class T>
int64_t differing(const std::vector<T>& a, const std::vector<T>& b) {
  int64_t n = static_cast<int64_t>(a.size() != b.size());
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) n += std::memcmp(&a[i], &b[i], sizeof(T)) != 0;
  return n;
}

}  // namespace

// The threshold exactly: spans with 4n and 4n + 1 distinct blocks, padding and negative entries, cnt past n or
// negative, a repeated entry, a short last span; and two KV heads that disagree.
TEST_CASE("slc_plan: the bucket boundary on synthetic selections equals the host's plan") {
  Problem p = preset("fla");
  p.n = 8, p.H = 2, p.HQ = 32, p.T = 250;  // 4 spans, the last one of 58 positions
  const int n = p.n, H = p.H, limit = high_overlap_max_distinct(n);
  std::vector<int32_t> idx(static_cast<size_t>(p.T * H * n), -1), cnt(static_cast<size_t>(p.T * H), 0);
  // distinct[span][head]: how many distinct blocks the span's positions select together.
  const int distinct[4][2] = {{n, limit + 1}, {limit, limit}, {limit + 1, 1}, {3 * limit, limit}};
  for (int64_t t = 0; t < p.T; ++t)
    for (int h = 0; h < H; ++h) {
      const int64_t span = t / kOverlapSpan, in_span = t % kOverlapSpan;
      const int d = distinct[span][h];
      int32_t* row = idx.data() + (t * H + h) * n;
      // Position i of the span takes blocks (i * n + m) mod d, so that the span covers exactly d blocks (for
      // d <= 64 n), each list ascending after sorting.
      std::vector<int32_t> blocks;
      for (int m = 0; m < n; ++m) {
        const int32_t b = static_cast<int32_t>((in_span * n + m) % d);
        if (std::find(blocks.begin(), blocks.end(), b) == blocks.end()) blocks.push_back(b);
      }
      std::sort(blocks.begin(), blocks.end());
      for (size_t m = 0; m < blocks.size(); ++m) row[m] = blocks[m];
      cnt[static_cast<size_t>(t * H + h)] = static_cast<int32_t>(blocks.size());
    }
  // Oddities that must not change a count: a cnt past n, a negative cnt on a row whose blocks are counted elsewhere,
  // a -1 inside the valid entries, a repeated entry.
  cnt[0] = n + 5;
  cnt[static_cast<size_t>(1 * H)] = -3;
  idx[static_cast<size_t>((2 * H) * n + 1)] = -1;
  idx[static_cast<size_t>((3 * H) * n + 1)] = idx[static_cast<size_t>((3 * H) * n)];
  const std::vector<OverlapBucket> host = overlap_plan(idx.data(), cnt.data(), p.T, H, n);
  REQUIRE(host.size() == 8);
  const OverlapBucket hi = OverlapBucket::high, lo = OverlapBucket::low;
  CHECK(host == std::vector<OverlapBucket>{hi, lo, hi, hi, lo, hi, lo, hi});
  overlap_gpu();
  const DeviceBuffer didx = upload_i32(idx), dcnt = upload_i32(cnt);
  const std::vector<uint8_t> got = gpu_plan(p, didx, dcnt);
  INFO("GPU plan: ", fmt::format("{}", fmt::join(got, " ")));
  CHECK(mismatches(got, host) == 0);
}

// Real selections: a forward's idx/cnt on span-coherent and on random queries (T = 16384, fla).
TEST_CASE("slc_plan: the plan equals the host's on the selections of coherent and random queries") {
  Problem p = preset("fla");
  p.T = 16384;
  Forward f(p);
  for (InputKind kind : {InputKind::coherent, InputKind::random}) {
    f.set_queries(kind, 31);
    f.poison();
    forward(p, f.t, nullptr);
    overlap_gpu().synchronize();
    const Forward::Snapshot s = f.snapshot();
    const std::vector<OverlapBucket> host = overlap_plan(s.idx.data(), s.cnt.data(), p.T, p.H, p.n);
    const PlanShares shares = plan_shares(host);
    const std::vector<uint8_t> got = gpu_plan(p, f.idx, f.cnt);
    INFO(input_kind_name(kind), " queries: ", 100 * shares.high, "% of the (span, KV head) entries high-overlap");
    CHECK(mismatches(got, host) == 0);
    MESSAGE(fmt::format("{} queries at T = {}: {:.0f}% of the plan high-overlap", input_kind_name(kind), p.T,
                        100 * shares.high));
    // Span-coherent queries are what the high bucket is for (tests/cpu/test_inputs.cpp measures their overlap).
    if (kind == InputKind::coherent) CHECK(shares.high > 0.5);
  }
}

// The plan lives in the forward's workspace and is recomputed on the device by every replay: a graph captured once
// gives, replay after replay, the results of an eager forward on the inputs of the moment, while the selection goes
// from coherent to random queries and back. Both overlap variants run (the tests read no tuning database: the
// buckets' defaults differ).
TEST_CASE("slc_plan: a forward captured into a CUDA graph replays right while the selection changes") {
  Problem p = preset("fla");
  p.T = 16384;
  Forward f(p);
  const KernelFamily& slc = find_family("slc_fwd");
  REQUIRE(resolve_config(slc, p, p, OverlapBucket::low).config != resolve_config(slc, p, p, OverlapBucket::high).config);
  const DriverApi& d = driver();
  CUstream stream = nullptr;
  check_cu(d.cuStreamCreate_(&stream, CU_STREAM_NON_BLOCKING), "cuStreamCreate");

  // The eager results of each input set (which also compiles and loads every kernel before the capture).
  const std::pair<InputKind, uint64_t> inputs[] = {{InputKind::coherent, 41}, {InputKind::random, 42}};
  std::vector<Forward::Snapshot> want;
  std::vector<PlanShares> shares;
  for (const auto& [kind, seed] : inputs) {
    f.set_queries(kind, seed);
    f.poison();
    forward(p, f.t, stream);
    check_cu(d.cuStreamSynchronize_(stream), "cuStreamSynchronize");
    want.push_back(f.snapshot());
    shares.push_back(plan_shares(overlap_plan(want.back().idx.data(), want.back().cnt.data(), p.T, p.H, p.n)));
    MESSAGE(fmt::format("{} queries: {:.0f}% of the plan high-overlap", input_kind_name(kind), 100 * shares.back().high));
  }
  REQUIRE(differing(want[0].idx, want[1].idx) > 0);  // the selection changes between the input sets
  // Both variants have work in at least one input set, and the plans differ between the sets.
  CHECK(shares[0].high != shares[1].high);
  CHECK((shares[0].low > 0 || shares[1].low > 0));
  CHECK((shares[0].high > 0 || shares[1].high > 0));

  check_cu(d.cuStreamBeginCapture_(stream, CU_STREAM_CAPTURE_MODE_GLOBAL), "cuStreamBeginCapture");
  std::string error;
  try {
    forward(p, f.t, stream);
  } catch (const std::exception& e) {
    error = e.what();
  }
  CUgraph graph = nullptr;
  const CUresult ended = d.cuStreamEndCapture_(stream, &graph);
  REQUIRE_MESSAGE(error.empty(), error);
  REQUIRE_MESSAGE(ended == CUDA_SUCCESS, "the capture was invalidated: " << cu_error_name(ended));
  CUgraphExec exec = nullptr;
  check_cu(d.cuGraphInstantiate_(&exec, graph, 0), "cuGraphInstantiate");
  for (int replay : {0, 1, 0, 1}) {
    CAPTURE(replay);
    f.set_queries(inputs[replay].first, inputs[replay].second);
    f.poison();
    check_cu(d.cuGraphLaunch_(exec, stream), "cuGraphLaunch");
    check_cu(d.cuStreamSynchronize_(stream), "cuStreamSynchronize");
    Forward::Snapshot got = f.snapshot();
    test::plant_row(got.o, got.o.size() - static_cast<size_t>(p.dv), static_cast<size_t>(p.dv));
    test::plant_lse(got.lse_slc, got.lse_slc.size() - static_cast<size_t>(p.HQ));
    const Forward::Snapshot& w = want[static_cast<size_t>(replay)];
    INFO(input_kind_name(inputs[replay].first), " queries, replay of the graph against the eager forward");
    CHECK(differing(got.idx, w.idx) == 0);
    CHECK(differing(got.cnt, w.cnt) == 0);
    CHECK(differing(got.o_slc, w.o_slc) == 0);
    CHECK(differing(got.lse_slc, w.lse_slc) == 0);
    CHECK(differing(got.o, w.o) == 0);
  }
  check_cu(d.cuGraphExecDestroy_(exec), "cuGraphExecDestroy");
  check_cu(d.cuGraphDestroy_(graph), "cuGraphDestroy");
  check_cu(d.cuStreamDestroy_(stream), "cuStreamDestroy");
}
