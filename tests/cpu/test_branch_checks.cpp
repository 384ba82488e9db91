// Argument checks of the branch APIs (win_fwd, cmp_fwd, mean_pool, select_blocks, slc_fwd). Every check runs before
// any driver call, so these run without a GPU: the pointers are fake and never dereferenced. A call that got past
// its checks would reach the driver and report "<not a UsageError: ...>" here (no GPU) instead of the refusal.
#include <doctest/doctest.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "base/error.h"
#include "codegen/family.h"
#include "reference/reference.h"
#include "runtime/attn_fwd_api.h"
#include "runtime/driver.h"
#include "runtime/pool_api.h"
#include "runtime/select_api.h"
#include "runtime/slc_fwd_api.h"
#include "test_util.h"

using namespace nsajit;

namespace {

// The message of the UsageError `f` throws, or a marker saying what happened instead (never matches a check).
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

// ---- one table of the shared checks (B6) over every branch API ---------------------------------------------

// The arguments every branch API takes some of; each API reads the ones it has.
struct Common {
  Problem p;
  TensorView q, k, v, o;  // o: win/cmp o, slc o_slc, pool y (k is pool's x)
  float* lse = static_cast<float*>(fake(0x50000));
  int64_t lse_sb = 0, lse_st = 0;
  const void* gate = nullptr;
  int64_t gate_sb = 0, gate_st = 0;
  TensorView out;
  bool accumulate = false;
  int32_t* idx = static_cast<int32_t*>(fake(0x60000));
  int32_t* cnt = static_cast<int32_t*>(fake(0x70000));
  const int32_t* cu = nullptr;
  std::vector<int32_t> cu_host;
};

Common valid_common() {
  Common c;
  c.p = preset("fla");
  c.p.B = 2, c.p.T = 256, c.p.HQ = 16, c.p.H = 4;
  const Problem& p = c.p;
  c.q = contiguous(fake(0x10000), p.T, p.HQ, p.dk);
  c.k = contiguous(fake(0x20000), p.T, p.H, p.dk);
  c.v = contiguous(fake(0x30000), p.T, p.H, p.dv);
  c.o = contiguous(fake(0x40000), p.T, p.HQ, p.dv);
  c.lse_sb = p.T * p.HQ, c.lse_st = p.HQ;
  return c;
}

AttnFwdArgs attn_args(const Common& c) {
  AttnFwdArgs a;
  a.q = c.q, a.k = c.k, a.v = c.v, a.o = c.o;
  a.lse = c.lse, a.lse_stride_b = c.lse_sb, a.lse_stride_t = c.lse_st;
  a.gate = c.gate, a.gate_stride_b = c.gate_sb, a.gate_stride_t = c.gate_st, a.out = c.out;
  a.accumulate = c.accumulate;
  a.cu_seqlens = c.cu, a.cu_seqlens_host = c.cu_host;
  return a;
}
PoolArgs pool_args(const Common& c) {
  PoolArgs a;
  a.x = c.k, a.y = c.o, a.dim = c.p.dk;
  a.cu_seqlens = c.cu, a.cu_seqlens_host = c.cu_host;
  return a;
}
SelectArgs select_args(const Common& c) {
  SelectArgs a;
  a.q = c.q, a.k_cmp = c.k;
  a.lse_cmp = c.lse, a.lse_stride_b = c.lse_sb, a.lse_stride_t = c.lse_st;
  a.idx = c.idx, a.cnt = c.cnt;
  a.cu_seqlens = c.cu, a.cu_seqlens_host = c.cu_host;
  return a;
}
SlcFwdArgs slc_args(const Common& c) {
  SlcFwdArgs a;
  a.q = c.q, a.k = c.k, a.v = c.v, a.o_slc = c.o;
  a.lse = c.lse, a.lse_stride_b = c.lse_sb, a.lse_stride_t = c.lse_st;
  a.idx = c.idx, a.cnt = c.cnt;
  a.gate = c.gate, a.gate_stride_b = c.gate_sb, a.gate_stride_t = c.gate_st, a.out = c.out;
  a.accumulate = c.accumulate;
  a.cu_seqlens = c.cu, a.cu_seqlens_host = c.cu_host;
  return a;
}

struct Api {
  const char* name;
  std::function<void(const Common&)> call;   // the launching entry point (refuses before the driver)
  std::function<void(const Common&)> check;  // its checks alone
};

const std::vector<Api>& apis() {
  static const std::vector<Api> all = {
      {"win_fwd", [](const Common& c) { win_fwd(c.p, attn_args(c), nullptr); },
       [](const Common& c) { check_win_fwd(c.p, attn_args(c)); }},
      {"cmp_fwd", [](const Common& c) { cmp_fwd(c.p, attn_args(c), nullptr); },
       [](const Common& c) { check_cmp_fwd(c.p, attn_args(c)); }},
      {"pool", [](const Common& c) { mean_pool(c.p, pool_args(c), nullptr); },
       [](const Common& c) { check_mean_pool(c.p, pool_args(c)); }},
      {"select", [](const Common& c) { select_blocks(c.p, select_args(c), nullptr); },
       [](const Common& c) { check_select_blocks(c.p, select_args(c)); }},
      {"slc_fwd", [](const Common& c) { slc_fwd(c.p, slc_args(c), nullptr); },
       [](const Common& c) { check_slc_fwd(c.p, slc_args(c)); }},
  };
  return all;
}

const int32_t kDeviceStub = 0;  // a non-null device cu_seqlens (never read)

// n sequences of one token each: T = n.
void many_sequences(Common& c, int64_t n) {
  c.p.B = 1, c.p.T = n;
  c.cu = &kDeviceStub;
  c.cu_host.resize(static_cast<size_t>(n) + 1);
  for (size_t i = 0; i < c.cu_host.size(); ++i) c.cu_host[i] = static_cast<int32_t>(i);
}

struct SharedCase {
  const char* what;
  std::function<void(Common&)> edit;
  // The expected message part per API name (pool, select have no gate; pool no lse); null: the API accepts it.
  std::function<const char*(const std::string& api)> expect;
};

}  // namespace

TEST_CASE("branch APIs: the valid arguments of the shared-check table pass every check") {
  for (const Api& api : apis()) {
    CAPTURE(std::string(api.name));
    const Common c = valid_common();
    CHECK_NOTHROW(api.check(c));
    // The launching entry point gets past its checks too and stops at the driver (never run where a GPU is: it
    // would launch on the fake pointers).
    if (!driver_available()) CHECK_CONTAINS(refusal_of([&] { api.call(c); }), "<not a UsageError: ");
  }
}

// B6: row strides, gate/out/accumulate and grid limits are checked alike by every branch API.
TEST_CASE("branch APIs: one check for row strides, the gated epilogue and the grid limits") {
  auto gated = [](const std::string& api) { return api == "win_fwd" || api == "cmp_fwd" || api == "slc_fwd"; };
  auto has_lse = [](const std::string& api) { return api != "pool"; };
  const std::vector<SharedCase> cases = {
      {"negative lse sequence stride", [](Common& c) { c.lse_st = -16; },
       [&](const std::string& a) -> const char* {
         if (!has_lse(a)) return nullptr;
         return a == "select" ? "lse_cmp's batch and sequence strides (4096, -16) must be non-negative"
                              : "lse's batch and sequence strides (4096, -16) must be non-negative";
       }},
      {"negative lse batch stride", [](Common& c) { c.lse_sb = -4096; },
       [&](const std::string& a) -> const char* {
         if (!has_lse(a)) return nullptr;
         return a == "select" ? "lse_cmp's batch and sequence strides (-4096, 16)" : "lse's batch and sequence strides";
       }},
      {"negative gate stride",
       [](Common& c) {
         c.gate = fake(0x80000), c.gate_sb = -4096, c.gate_st = 16, c.out = c.o;
       },
       [&](const std::string& a) -> const char* {
         return gated(a) ? "gate's batch and sequence strides (-4096, 16) must be non-negative" : nullptr;
       }},
      {"out without gate", [](Common& c) { c.out = c.o; },
       [&](const std::string& a) -> const char* { return gated(a) ? "out is given without gate" : nullptr; }},
      {"accumulate without gate", [](Common& c) { c.accumulate = true; },
       [&](const std::string& a) -> const char* {
         return gated(a) ? "accumulate is set but no gate and out are given" : nullptr;
       }},
      {"gate without out", [](Common& c) { c.gate = fake(0x80000), c.gate_st = 16; },
       [&](const std::string& a) -> const char* { return gated(a) ? "gate is given without out" : nullptr; }},
      {"misaligned gate", [](Common& c) { c.gate = fake(0x80001), c.gate_st = 16, c.out = c.o; },
       [&](const std::string& a) -> const char* { return gated(a) ? "gate is not 2-byte aligned" : nullptr; }},
      {"B past the grid", [](Common& c) { c.p.B = 65536; },
       [](const std::string&) -> const char* { return "B = 65536 exceeds 65535 (the grid's z dimension)"; }},
      {"B at the grid limit", [](Common& c) { c.p.B = 65535; },
       [](const std::string&) -> const char* { return nullptr; }},
      {"H past the grid", [](Common& c) { c.p.HQ = c.p.H = 65536; },
       [](const std::string& a) -> const char* {
         return a == "pool" ? nullptr : "H = 65536 KV heads exceed 65535 (the grid's y dimension)";
       }},
      {"sequences past the grid", [](Common& c) { many_sequences(c, 65536); },
       [](const std::string&) -> const char* { return "cu_seqlens holds 65536 sequences: at most 65535"; }},
      {"sequences at the grid limit", [](Common& c) { many_sequences(c, 65535); },
       [](const std::string&) -> const char* { return nullptr; }},
      {"host offsets without the device ones",
       [](Common& c) {
         c.p.B = 1;
         c.cu_host = {0, 100, 256};
       },
       [](const std::string&) -> const char* { return "cu_seqlens_host given without the device cu_seqlens"; }},
  };
  int refusals = 0, acceptances = 0;
  for (const SharedCase& sc : cases) {
    for (const Api& api : apis()) {
      CAPTURE(std::string(sc.what));
      CAPTURE(std::string(api.name));
      Common c = valid_common();
      sc.edit(c);
      const char* expected = sc.expect(api.name);
      if (expected == nullptr) {
        CHECK_NOTHROW(api.check(c));
        ++acceptances;
        continue;
      }
      const std::string e = refusal_of([&] { api.call(c); });
      CHECK_CONTAINS(e, std::string(api.name) + ": ");
      CHECK_CONTAINS(e, std::string(expected));
      CHECK_CONTAINS(refusal_of([&] { api.check(c); }), std::string(expected));
      ++refusals;
    }
  }
  MESSAGE(refusals << " refusals and " << acceptances << " acceptances checked");
  CHECK(refusals == 42);
}

TEST_CASE("win_fwd / cmp_fwd: a tile config outside the space is a usage error, not a crash") {
  Common c = valid_common();
  const TileConfig partial{{"BM", 64}};
  const TileConfig outside{{"BM", 48}, {"BN", 32}, {"QREGS", 0}};
  const TileConfig extra{{"BM", 64}, {"BN", 32}, {"QREGS", 0}, {"IMPL", 0}, {"STAGES", 2}, {"W", 4}};
  CHECK_CONTAINS(refusal_of([&] { win_fwd(c.p, attn_args(c), nullptr, &partial); }),
                 "win_fwd: tile config [BM=64] needs BN in {16, 32, 64, 128}");
  CHECK_CONTAINS(refusal_of([&] { cmp_fwd(c.p, attn_args(c), nullptr, &outside); }), "needs BM in {64, 128, 192}");
  CHECK_CONTAINS(refusal_of([&] { win_fwd(c.p, attn_args(c), nullptr, &extra); }),
                 "has parameters the family does not know");
  const TileConfig pool_bad{{"THREADS", 100}};
  CHECK_CONTAINS(refusal_of([&] { mean_pool(c.p, pool_args(c), nullptr, &pool_bad); }),
                 "pool: tile config [THREADS=100] needs THREADS in {128, 256, 512}");
}

// ---- moved from tests/gpu/test_select.cpp (they need no GPU) -------------------------------------------------

namespace {

struct BlockShape {
  int l, d, lsel;
};
const BlockShape kShapes[] = {{32, 16, 64}, {64, 64, 64}, {32, 32, 64}, {64, 32, 64}};
const int kDks[] = {64, 128, 192, 256};

Problem select_problem(Dtype dtype, int dk, int G, int H, int64_t T, BlockShape s, int n, int64_t B = 1) {
  Problem p = preset("fla");
  p.dtype = dtype, p.dk = dk, p.dv = 128, p.H = H, p.HQ = G * H, p.T = T, p.B = B;
  p.l = s.l, p.d = s.d, p.lsel = s.lsel, p.n = n;
  return p;
}

}  // namespace

TEST_CASE("select: bad arguments are refused with the argument named") {
  Problem p = select_problem(Dtype::bf16, 128, 16, 4, 64, kShapes[1], 16);
  SelectArgs a;
  a.q = contiguous(fake(0x10000), p.T, p.HQ, p.dk);
  a.k_cmp = contiguous(fake(0x20000), 1, p.H, p.dk);
  a.lse_cmp = static_cast<const float*>(fake(0x30000));
  a.lse_stride_t = p.HQ, a.lse_stride_b = p.T * p.HQ;
  a.idx = static_cast<int32_t*>(fake(0x40000));
  a.cnt = static_cast<int32_t*>(fake(0x50000));
  auto error = [&](const Problem& prob, const SelectArgs& args, const TileConfig* config = nullptr) {
    return refusal_of([&] { select_blocks(prob, args, nullptr, config); });
  };

  SUBCASE("pointers and strides") {
    SelectArgs b = a;
    b.q.data = nullptr;
    CHECK_CONTAINS(error(p, b), "q is a null pointer");
    b = a;
    b.k_cmp.data = fake(0x20008);
    CHECK_CONTAINS(error(p, b), "k_cmp is not 16-byte aligned");
    b = a;
    b.q.stride_h = 12;
    CHECK_CONTAINS(error(p, b), "q's head stride 12");
    b = a;
    b.k_cmp.stride_t = -8;
    CHECK_CONTAINS(error(p, b), "k_cmp's sequence stride -8");
    b = a;
    b.lse_cmp = nullptr;
    CHECK_CONTAINS(error(p, b), "lse_cmp is a null pointer");
    b = a;
    b.lse_cmp = static_cast<const float*>(fake(0x30002));
    CHECK_CONTAINS(error(p, b), "lse_cmp is not 4-byte aligned");
    b = a;
    b.lse_stride_t = -1;
    CHECK_CONTAINS(error(p, b), "lse_cmp's batch and sequence strides");
    b = a;
    b.idx = nullptr;
    CHECK_CONTAINS(error(p, b), "idx is a null pointer");
    b = a;
    b.cnt = static_cast<int32_t*>(fake(0x50001));
    CHECK_CONTAINS(error(p, b), "cnt is not 4-byte aligned");
  }
  SUBCASE("unsupported problems name the parameter and the supported values") {
    Problem q = p;
    q.dk = 100;
    CHECK_CONTAINS(error(q, a), "select does not support dk = 100: head dims must be multiples of 8 from 32 to 256");
    q = p;
    q.l = 128, q.d = 64, q.lsel = 128;
    CHECK_CONTAINS(error(q, a), "(l, d) = (128, 64): supported are (32, 16), (64, 64), (32, 32), (64, 32)");
    q = p;
    q.l = 32, q.d = 16, q.lsel = 256;
    CHECK_CONTAINS(error(q, a), "l' = 256: supported are 16, 32, 64, 128");
    q = p;
    q.n = 12;
    CHECK_CONTAINS(error(q, a), "n = 12: supported are 8, 16, 32");
    q = p;
    q.H = 5;
    CHECK_CONTAINS(error(q, a), "not a multiple of H");
  }
  SUBCASE("varlen") {
    SelectArgs b = a;
    b.cu_seqlens = &kDeviceStub;
    const std::vector<int32_t> good{0, 20, 64}, one{0}, nonzero{4, 20, 64}, decreasing{0, 30, 20, 64},
        short_total{0, 20, 60};
    Problem batched = p;
    batched.B = 2;
    b.cu_seqlens_host = good;
    CHECK_CONTAINS(error(batched, b), "varlen needs B = 1");
    b.cu_seqlens_host = one;
    CHECK_CONTAINS(error(p, b), "N + 1 >= 2");
    b.cu_seqlens_host = nonzero;
    CHECK_CONTAINS(error(p, b), "cu_seqlens[0] = 4 must be 0");
    b.cu_seqlens_host = decreasing;
    CHECK_CONTAINS(error(p, b), "cu_seqlens[2] = 20 < cu_seqlens[1] = 30");
    b.cu_seqlens_host = short_total;
    CHECK_CONTAINS(error(p, b), "ends at 60 but T = 64");
    SelectArgs c = a;
    c.cu_seqlens_host = good;
    CHECK_CONTAINS(error(p, c), "cu_seqlens_host given without the device cu_seqlens");
  }
  SUBCASE("tile configs") {
    const TileConfig too_big{{"W", 8}, {"KS", 1}, {"BN", 64}, {"QREGS", 0}, {"OCC", 1}};
    Problem g1 = select_problem(Dtype::bf16, 128, 1, 4, 131072, kShapes[1], 16);
    const std::string e = error(g1, a, &too_big);
    CHECK_CONTAINS(e, "tile config [BN=64 KS=1 OCC=1 QREGS=0 W=8] is not valid");
    CHECK_CONTAINS(e, "shared memory");
    const TileConfig spills{{"W", 8}, {"KS", 1}, {"BN", 64}, {"QREGS", 1}, {"OCC", 2}};
    CHECK_CONTAINS(error(p, a, &spills), "do not fit 128 registers");
    const TileConfig splits{{"W", 2}, {"KS", 4}, {"BN", 32}, {"QREGS", 1}, {"OCC", 2}};
    CHECK_CONTAINS(error(p, a, &splits), "KS = 4 key splits need W >= KS");
    const TileConfig partial{{"W", 8}, {"BN", 64}};
    CHECK_CONTAINS(error(p, a, &partial), "needs KS in {1, 2, 4}");
    const TileConfig outside{{"W", 3}, {"KS", 1}, {"BN", 64}, {"QREGS", 0}, {"OCC", 1}};
    CHECK_CONTAINS(error(p, a, &outside), "needs W in {2, 4, 8}");
    const TileConfig extra{{"W", 8}, {"KS", 1}, {"BN", 64}, {"QREGS", 0}, {"OCC", 1}, {"BM", 64}};
    CHECK_CONTAINS(error(p, a, &extra), "has parameters the family does not know");
  }
}

// The family's bookkeeping, checked on the host.
TEST_CASE("select family: work counts, geometry and default configs") {
  const KernelFamily& f = find_family("select");
  for (BlockShape s : kShapes)
    for (int64_t T : {1, 31, 32, 33, 100, 4096, 4099}) {
      const Problem p = select_problem(Dtype::bf16, 192, 4, 2, T, s, 16, 3);
      double blocks = 0;
      for (int64_t t = 0; t < T; ++t) blocks += static_cast<double>(ref::visible_cmp_blocks(t, s.l, s.d));
      CAPTURE(p.describe());
      CHECK(f.flops(p) == doctest::Approx(3.0 * 8 * blocks * 2 * 192));
      const double nc = static_cast<double>(ref::num_cmp_blocks(T, s.l, s.d));
      CHECK(f.min_bytes(p) == doctest::Approx(3.0 * T * (8 * 192 * 2 + 8 * 4 + 2 * 17 * 4) + 3.0 * nc * 2 * 192 * 2));
    }
  // Defaults are valid for every supported problem shape up to T = 131072 (G = 1 included, the largest scores).
  for (int dk : kDks)
    for (int G : {1, 2, 3, 4, 8, 16, 32, 64})
      for (BlockShape s : kShapes)
        for (int64_t T : {1, 4096, 65536, 131072}) {
          const Problem p = select_problem(Dtype::fp16, dk, G, 1, T, s, 32);
          const TileConfig c = f.default_config(p);
          const auto why = f.reject(p, c, kHopperMaxSmemOptin);
          CAPTURE(p.describe());
          CHECK_MESSAGE(!why, describe(c) << ": " << *why);
          const LaunchGeometry g = f.geometry(p, c);
          const int64_t P = static_cast<int64_t>(c.at("W") / c.at("KS")) * (16 * ((G + 15) / 16) / G);
          CHECK(g.grid.x == static_cast<unsigned>((T + P - 1) / P));
          CHECK(g.block.x == static_cast<unsigned>(32 * c.at("W")));
          CHECK(g.smem_bytes >= P * select_score_row_floats(T, s.lsel) * 4);
        }
  CHECK(select_score_row_floats(1, 64) == 4);
  CHECK(select_score_row_floats(65536, 64) == 1024);
  CHECK(select_score_row_floats(65537, 64) == 1028);
}

// ---- moved from tests/gpu/test_slc_fwd.cpp -------------------------------------------------------------------

// Every refusal names the argument (no launch happens, so the pointers are never dereferenced).
TEST_CASE("slc_fwd: argument validation") {
  auto slc_problem = [](int G, int H, int64_t T) {
    Problem p = preset("fla");
    p.dk = 128, p.dv = 128, p.HQ = G * H, p.H = H, p.T = T, p.B = 1, p.n = 16;
    return p;
  };
  const Problem p = slc_problem(4, 2, 100);
  alignas(16) static char buffer[64];
  const int32_t* ids = reinterpret_cast<const int32_t*>(buffer);
  SlcFwdArgs a;
  a.q = contiguous(buffer, p.T, p.HQ, p.dk), a.k = contiguous(buffer, p.T, p.H, p.dk);
  a.v = contiguous(buffer, p.T, p.H, p.dv), a.o_slc = contiguous(buffer, p.T, p.HQ, p.dv);
  a.idx = ids, a.cnt = ids;
  auto err = [&](const Problem& pp, const SlcFwdArgs& aa, const TileConfig* c = nullptr) {
    return refusal_of([&] { slc_fwd(pp, aa, nullptr, c); });
  };
  auto with = [&](auto edit) {
    SlcFwdArgs b = a;
    edit(b);
    return err(p, b);
  };
  CHECK_CONTAINS(with([](SlcFwdArgs& b) { b.q.data = nullptr; }), "q is a null pointer");
  CHECK_CONTAINS(with([](SlcFwdArgs& b) { b.k.data = buffer + 2; }), "k is not 16-byte aligned");
  CHECK_CONTAINS(with([](SlcFwdArgs& b) { b.v.stride_t = 12; }), "v's sequence stride 12");
  CHECK_CONTAINS(with([](SlcFwdArgs& b) { b.idx = nullptr; }), "idx is a null pointer");
  CHECK_CONTAINS(with([](SlcFwdArgs& b) { b.cnt = nullptr; }), "cnt is a null pointer");
  CHECK_CONTAINS(with([](SlcFwdArgs& b) { b.gate = buffer; }), "gate is given without out");
  CHECK_CONTAINS(with([](SlcFwdArgs& b) { b.out = b.o_slc; }), "out is given without gate");
  CHECK_CONTAINS(with([](SlcFwdArgs& b) { b.accumulate = true; }), "accumulate");
  CHECK_CONTAINS(with([](SlcFwdArgs& b) { b.o_slc.data = nullptr; }), "o_slc and lse are null pointers");
  CHECK_CONTAINS(with([](SlcFwdArgs& b) { b.lse = reinterpret_cast<float*>(buffer + 2); }),
                 "lse is not 4-byte aligned");
  Problem bad = p;
  bad.n = 12;
  CHECK_CONTAINS(err(bad, a), "n = 12");
  bad = p, bad.lsel = 48, bad.l = bad.d = 16;
  CHECK_CONTAINS(err(bad, a), "l' = 48");
  bad = p, bad.dk = 20;
  CHECK_CONTAINS(err(bad, a), "slc_fwd does not support dk = 20: head dims must be multiples of 8 from 32 to 256");
  bad = p, bad.B = 2;
  SlcFwdArgs varlen = a;
  const std::vector<int32_t> cu = {0, 50, 100};
  varlen.cu_seqlens = ids, varlen.cu_seqlens_host = cu;
  CHECK_CONTAINS(err(bad, varlen), "varlen needs B = 1");
  const std::vector<int32_t> short_cu = {0, 50, 90};
  varlen.cu_seqlens_host = short_cu;
  CHECK_CONTAINS(err(p, varlen), "cu_seqlens ends at 90");
  const Problem g32 = slc_problem(32, 1, 100);
  TileConfig small = find_family("slc_fwd").default_config(g32);
  small["BM"] = 16;
  CHECK_CONTAINS(err(g32, a, &small), "BM = 16 cannot hold the 32 heads");
}
