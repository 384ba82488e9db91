// nsajit::forward's argument checks: every check of every branch runs before the first driver call, so a refused
// call has launched nothing and written nothing. No GPU is needed: the pointers are fake and never dereferenced;
// a call that got past its checks reaches the driver, which here reports "<not a UsageError: ...>" instead.
// Also the edge shapes of a call (NSA.md, audit C8): empty sequences, the sequence limit, T < l, T = 0.
#include <doctest/doctest.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "base/error.h"
#include "runtime/attn_fwd_api.h"
#include "runtime/driver.h"
#include "runtime/forward.h"
#include "runtime/pool_api.h"
#include "runtime/select_api.h"
#include "runtime/slc_fwd_api.h"
#include "test_util.h"

using namespace nsajit;

namespace {

std::string refusal_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const UsageError& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("<not a UsageError: ") + e.what() + ">";
  }
  return "<no exception thrown>";
}

void* fake(uintptr_t address) { return reinterpret_cast<void*>(address); }
const int32_t kDeviceStub = 0;  // a non-null device cu_seqlens (never read)

Problem small_problem() {
  Problem p = preset("fla");
  p.B = 2, p.T = 256, p.HQ = 16, p.H = 4;
  return p;
}

// Every branch on (all three gates), inputs and the one required output; fake, well-formed.
ForwardTensors valid_tensors(const Problem& p) {
  ForwardTensors f;
  f.q = contiguous(fake(0x100000), p.T, p.HQ, p.dk);
  f.k = contiguous(fake(0x200000), p.T, p.H, p.dk);
  f.v = contiguous(fake(0x300000), p.T, p.H, p.dv);
  f.o = contiguous(fake(0x400000), p.T, p.HQ, p.dv);
  f.g_cmp = fake(0x500000), f.g_slc = fake(0x510000), f.g_win = fake(0x520000);
  f.gate_stride_b = p.T * p.HQ, f.gate_stride_t = p.HQ;
  return f;
}

// The same with every optional input and output given as well.
ForwardTensors full_tensors(const Problem& p) {
  ForwardTensors f = valid_tensors(p);
  f.k_slc = contiguous(fake(0x600000), p.T, p.H, p.dk), f.v_slc = contiguous(fake(0x610000), p.T, p.H, p.dv);
  f.k_win = contiguous(fake(0x620000), p.T, p.H, p.dk), f.v_win = contiguous(fake(0x630000), p.T, p.H, p.dv);
  const int64_t nc = (p.T - p.l) / p.d + 1;
  f.k_cmp = contiguous(fake(0x640000), nc, p.H, p.dk), f.v_cmp = contiguous(fake(0x650000), nc, p.H, p.dv);
  f.o_cmp = contiguous(fake(0x700000), p.T, p.HQ, p.dv);
  f.o_slc = contiguous(fake(0x710000), p.T, p.HQ, p.dv);
  f.o_win = contiguous(fake(0x720000), p.T, p.HQ, p.dv);
  f.lse_cmp = static_cast<float*>(fake(0x800000));
  f.lse_slc = static_cast<float*>(fake(0x810000));
  f.lse_win = static_cast<float*>(fake(0x820000));
  f.lse_stride_b = p.T * p.HQ, f.lse_stride_t = p.HQ;
  f.idx = static_cast<int32_t*>(fake(0x900000));
  f.cnt = static_cast<int32_t*>(fake(0x910000));
  return f;
}

// A caller workspace (fake, 256-byte aligned) of the size the problem needs.
void give_workspace(ForwardTensors& f, const Problem& p) {
  f.workspace = fake(0x10000000);
  f.workspace_bytes = forward_workspace_bytes(p);
}

struct ForwardCase {
  const char* what;
  std::function<void(Problem&, ForwardTensors&)> edit;
  const char* expected;
};

// Each refusal comes from a branch that runs after pool, cmp and select (or from the caller's own arguments of
// such a branch), so on code that checks branch by branch the earlier branches would already have run.
const std::vector<ForwardCase>& late_refusals() {
  static const std::vector<ForwardCase> cases = {
      {"k_win stride", [](Problem&, ForwardTensors& f) { f.k_win = f.k, f.k_win.stride_t = 12; },
       "forward: k_win's sequence stride 12 must be a non-negative multiple of 8"},
      {"v_win misaligned", [](Problem&, ForwardTensors& f) { f.v_win = f.v, f.v_win.data = fake(0x300008); },
       "forward: v_win is not 16-byte aligned"},
      {"k_slc negative stride", [](Problem&, ForwardTensors& f) { f.k_slc = f.k, f.k_slc.stride_h = -8; },
       "forward: k_slc's head stride -8"},
      {"v (the window's default) stride", [](Problem&, ForwardTensors& f) { f.v_win = {}, f.v.stride_b = 4; },
       "forward: v's batch stride 4"},
      {"o_win stride",
       [](Problem& p, ForwardTensors& f) { f.o_win = contiguous(fake(0x720000), p.T, p.HQ, p.dv), f.o_win.stride_t = 12; },
       "forward: o_win's sequence stride 12"},
      {"o misaligned", [](Problem&, ForwardTensors& f) { f.o.data = fake(0x400002); },
       "forward: o is not 16-byte aligned"},
      {"lse_win misaligned",
       [](Problem& p, ForwardTensors& f) {
         f.lse_win = static_cast<float*>(fake(0x820002)), f.lse_stride_b = p.T * p.HQ, f.lse_stride_t = p.HQ;
       },
       "forward: lse_win is not 4-byte aligned"},
      {"negative lse stride",
       [](Problem& p, ForwardTensors& f) {
         f.lse_win = static_cast<float*>(fake(0x820000)), f.lse_stride_b = p.T * p.HQ, f.lse_stride_t = -1;
       },
       "forward: lse_stride_b = 4096 and lse_stride_t = -1 must be non-negative"},
      {"negative gate stride", [](Problem&, ForwardTensors& f) { f.gate_stride_b = -4096; },
       "forward: gate_stride_b = -4096, gate_stride_t = 16 and gate_stride_h = 1 must be non-negative"},
      {"g_win misaligned", [](Problem&, ForwardTensors& f) { f.g_win = fake(0x520001); },
       "forward: g_win is not 2-byte aligned"},
      {"idx misaligned",
       [](Problem&, ForwardTensors& f) {
         f.idx = static_cast<int32_t*>(fake(0x900002)), f.cnt = static_cast<int32_t*>(fake(0x910000));
       },
       "forward: idx is not 4-byte aligned"},
      {"a shape only select refuses", [](Problem& p, ForwardTensors&) { p.n = 12; },
       "forward: select does not support n = 12"},
      {"a shape only slc_fwd refuses", [](Problem& p, ForwardTensors&) { p.HQ = 4 * 256; },
       "forward: slc_fwd does not support G = HQ / H = 256"},
      {"H past the grid", [](Problem& p, ForwardTensors&) { p.H = p.HQ = 65536; },
       "forward: H = 65536 KV heads exceed 65535"},
      {"B past the grid", [](Problem& p, ForwardTensors&) { p.B = 65536; }, "forward: B = 65536 exceeds 65535"},
      {"k_cmp without v_cmp", [](Problem&, ForwardTensors& f) { f.k_cmp = f.k, f.v_cmp = {}; },
       "give both k_cmp and v_cmp"},
      {"given k_cmp misaligned",
       [](Problem&, ForwardTensors& f) { f.k_cmp = f.k, f.v_cmp = f.v, f.k_cmp.data = fake(0x200004); },
       "forward: k_cmp is not 16-byte aligned"},
      {"idx without cnt",
       [](Problem&, ForwardTensors& f) { f.idx = static_cast<int32_t*>(fake(0x900000)), f.cnt = nullptr; },
       "give both idx and cnt"},
      {"workspace misaligned",
       [](Problem& p, ForwardTensors& f) { give_workspace(f, p), f.workspace = fake(0x10000080); },
       "forward: workspace is not 256-byte aligned"},
      {"workspace too small", [](Problem& p, ForwardTensors& f) { give_workspace(f, p), f.workspace_bytes -= 1; },
       "too small"},
      {"T = 0", [](Problem& p, ForwardTensors&) { p.T = 0; }, "bad T = 0"},
      // An unsupported head dim is named as such, not reported as an overflowing scratch size: the shapes each
      // branch supports are checked before any size is computed from them.
      {"a huge head dim with huge T and H",
       [](Problem& p, ForwardTensors&) { p.T = (int64_t{1} << 31) - 1, p.H = p.HQ = 65535, p.dk = 1 << 30; },
       "1073741824"},
  };
  return cases;
}

}  // namespace

TEST_CASE("forward: the valid calls of these tests pass every check") {
  const Problem p = small_problem();
  CHECK_NOTHROW(check_forward(p, valid_tensors(p)));
  CHECK_NOTHROW(check_forward(p, full_tensors(p)));
  ForwardTensors w = valid_tensors(p);
  give_workspace(w, p);
  CHECK_NOTHROW(check_forward(p, w));
  // One gate alone is a valid call too.
  ForwardTensors one = valid_tensors(p);
  one.g_cmp = one.g_slc = nullptr;
  CHECK_NOTHROW(check_forward(p, one));
  // forward itself gets past its checks and stops at the driver (not where a GPU is: it would launch on fakes).
  if (!driver_available()) CHECK_CONTAINS(refusal_of([&] { forward(p, valid_tensors(p), nullptr); }), "<not a");
}

// B5: a bad argument of a late branch (the window's k_win) used to be found only after pool, cmp, select and slc
// had launched and written o, idx, cnt and lse_cmp. Now it is refused before the first driver call: without a GPU
// the error is the usage error, not the driver's "no NVIDIA driver found".
TEST_CASE("forward: a bad k_win is refused before anything is allocated or launched") {
  const Problem p = small_problem();
  ForwardTensors f = valid_tensors(p);
  f.k_win = f.k, f.k_win.stride_t = 12;
  SUBCASE("owned workspace") {
    CHECK_CONTAINS(refusal_of([&] { forward(p, f, nullptr); }), "forward: k_win's sequence stride 12");
  }
  SUBCASE("caller workspace, every optional output asked for") {
    ForwardTensors g = full_tensors(p);
    g.k_win.stride_t = 12;
    give_workspace(g, p);
    CHECK_CONTAINS(refusal_of([&] { forward(p, g, nullptr); }), "forward: k_win's sequence stride 12");
  }
  CHECK_CONTAINS(refusal_of([&] { check_forward(p, f); }), "forward: k_win's sequence stride 12");
}

TEST_CASE("forward: every late-branch refusal comes before the first driver call") {
  int n = 0;
  for (const ForwardCase& c : late_refusals()) {
    for (bool full : {false, true}) {
      CAPTURE(std::string(c.what));
      CAPTURE(full);
      Problem p = small_problem();
      ForwardTensors f = full ? full_tensors(p) : valid_tensors(p);
      c.edit(p, f);
      CHECK_CONTAINS(refusal_of([&] { forward(p, f, nullptr); }), std::string(c.expected));
      CHECK_CONTAINS(refusal_of([&] { check_forward(p, f); }), std::string(c.expected));
      ++n;
    }
  }
  MESSAGE(n << " refusals checked");
  CHECK(n == 2 * static_cast<int>(late_refusals().size()));
}

TEST_CASE("forward: scratch sizes past 64 bits are refused, never wrapped") {
  Problem p = small_problem();
  const size_t small = forward_workspace_bytes(p);
  CHECK(small >= static_cast<size_t>(p.B * p.T * p.HQ * 4));
  // B T HQ 4 = 65535 (2^31 - 1)^2 4 > 2^64: a wrapped size would let a far too small caller workspace through.
  p.B = 65535, p.T = (int64_t{1} << 31) - 1, p.HQ = 2147483647, p.H = 1;
  CHECK_CONTAINS(refusal_of([&] { (void)forward_workspace_bytes(p); }), "overflows 64 bits");
  ForwardTensors f = valid_tensors(small_problem());
  f.g_cmp = f.g_slc = nullptr;  // the window branch alone takes any G
  f.workspace = fake(0x10000000), f.workspace_bytes = small;
  CHECK_CONTAINS(refusal_of([&] { forward(p, f, nullptr); }), "overflows 64 bits");
  f.workspace = nullptr;
  CHECK_CONTAINS(refusal_of([&] { forward(p, f, nullptr); }), "overflows 64 bits");
}

// Moved from tests/gpu/test_forward.cpp: it needs no GPU.
TEST_CASE("forward: bad calls are refused with a clear error") {
  Problem p = preset("fla");
  p.HQ = 4, p.H = 1, p.T = 128;
  ForwardTensors f;
  f.q = contiguous(fake(0x100000), p.T, p.HQ, p.dk), f.k = f.q, f.v = f.q, f.o = f.q;
  CHECK_THROWS_WITH_AS(forward(p, f, nullptr), doctest::Contains("all three gates are null"), UsageError);
  f.g_win = fake(0x200000), f.gate_stride_t = p.HQ;
  ForwardTensors g = f;
  g.idx = static_cast<int32_t*>(fake(0x300000));
  CHECK_THROWS_WITH_AS(forward(p, g, nullptr), doctest::Contains("both idx and cnt"), UsageError);
  g = f;
  g.workspace = fake(0x400000), g.workspace_bytes = 16;
  CHECK_THROWS_WITH_AS(forward(p, g, nullptr), doctest::Contains("too small"), UsageError);
  g = f;
  const std::vector<int32_t> cu = {0, 100, 50, 128};
  g.cu_seqlens = &kDeviceStub, g.cu_seqlens_host = cu;
  CHECK_THROWS_WITH_AS(forward(p, g, nullptr), doctest::Contains("non-decreasing"), UsageError);
}

// ---- C8: edge shapes -----------------------------------------------------------------------------------------

TEST_CASE("forward edges: varlen with a trailing empty sequence (and empty ones anywhere) is accepted") {
  Problem p = small_problem();
  p.B = 1;
  for (const std::vector<int32_t>& cu :
       {std::vector<int32_t>{0, 100, 256, 256}, std::vector<int32_t>{0, 0, 256, 256, 256},
        std::vector<int32_t>{0, 256, 256}}) {
    CAPTURE(cu.size());
    ForwardTensors f = valid_tensors(p);
    f.cu_seqlens = &kDeviceStub, f.cu_seqlens_host = cu;
    CHECK_NOTHROW(check_forward(p, f));
    // forward_workspace_bytes (the B x T layout) is enough for every varlen split of the same tokens.
    give_workspace(f, p);
    CHECK_NOTHROW(check_forward(p, f));
    // And each branch on its own.
    AttnFwdArgs a;
    a.q = f.q, a.k = f.k, a.v = f.v, a.o = f.o, a.cu_seqlens = f.cu_seqlens, a.cu_seqlens_host = cu;
    CHECK_NOTHROW(check_win_fwd(p, a));
    CHECK_NOTHROW(check_cmp_fwd(p, a));
  }
}

TEST_CASE("forward edges: at most 65535 sequences, refused beyond with the limit named") {
  Problem p = small_problem();
  for (int64_t n : {65535, 65536, 100000}) {
    CAPTURE(n);
    p.B = 1, p.T = n;
    std::vector<int32_t> cu(static_cast<size_t>(n) + 1);
    for (size_t i = 0; i < cu.size(); ++i) cu[i] = static_cast<int32_t>(i);
    ForwardTensors f = valid_tensors(p);
    f.cu_seqlens = &kDeviceStub, f.cu_seqlens_host = cu;
    if (n <= 65535) {
      CHECK_NOTHROW(check_forward(p, f));
    } else {
      const std::string e = refusal_of([&] { forward(p, f, nullptr); });
      CHECK_CONTAINS(e, "forward: cu_seqlens holds " + std::to_string(n) + " sequences: at most 65535");
    }
  }
}

TEST_CASE("forward edges: without varlen, T < l (no compressed block) is accepted") {
  for (int64_t T : {1, 15, 63}) {
    Problem p = small_problem();  // fla: l = 64
    p.T = T;
    CAPTURE(T);
    ForwardTensors f = valid_tensors(p);
    CHECK_NOTHROW(check_forward(p, f));
    give_workspace(f, p);
    CHECK_NOTHROW(check_forward(p, f));
    ForwardTensors full = full_tensors(small_problem());  // the given k_cmp / v_cmp are never read: Nc = 0
    CHECK_NOTHROW(check_forward(p, full));
  }
}

TEST_CASE("forward edges: T = 0 is refused by every entry point, with the reason") {
  Problem p = small_problem();
  p.T = 0;
  const ForwardTensors f = valid_tensors(small_problem());
  const std::string expected = "bad T = 0: must be >= 1 (T = 0, an empty batch, has nothing to compute: skip the call)";
  CHECK_CONTAINS(refusal_of([&] { forward(p, f, nullptr); }), expected);
  CHECK_CONTAINS(refusal_of([&] { check_forward(p, f); }), expected);
  CHECK_CONTAINS(refusal_of([&] { (void)forward_workspace_bytes(p); }), expected);
  AttnFwdArgs a;
  a.q = f.q, a.k = f.k, a.v = f.v, a.o = f.o;
  CHECK_CONTAINS(refusal_of([&] { win_fwd(p, a, nullptr); }), expected);
  CHECK_CONTAINS(refusal_of([&] { cmp_fwd(p, a, nullptr); }), expected);
  PoolArgs pa;
  pa.x = f.k, pa.y = f.o, pa.dim = p.dk;
  CHECK_CONTAINS(refusal_of([&] { mean_pool(p, pa, nullptr); }), expected);
  SelectArgs s;
  s.q = f.q, s.k_cmp = f.k, s.lse_cmp = static_cast<const float*>(fake(0x800000));
  s.idx = static_cast<int32_t*>(fake(0x900000)), s.cnt = static_cast<int32_t*>(fake(0x910000));
  CHECK_CONTAINS(refusal_of([&] { select_blocks(p, s, nullptr); }), expected);
  SlcFwdArgs l;
  l.q = f.q, l.k = f.k, l.v = f.v, l.o_slc = f.o, l.idx = s.idx, l.cnt = s.cnt;
  CHECK_CONTAINS(refusal_of([&] { slc_fwd(p, l, nullptr); }), expected);
  // Varlen: every sequence empty is the same T = 0.
  Problem v = p;
  v.B = 1;
  ForwardTensors g = f;
  const std::vector<int32_t> empty = {0, 0, 0};
  g.cu_seqlens = &kDeviceStub, g.cu_seqlens_host = empty;
  CHECK_CONTAINS(refusal_of([&] { forward(v, g, nullptr); }), expected);
}
