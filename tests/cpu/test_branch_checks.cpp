// Argument checks of the branch APIs (win_fwd, cmp_fwd, mean_pool, select_blocks, slc_fwd). Every check runs before
// any driver call, so these run without a GPU: the pointers are fake and never dereferenced. A call that got past
// its checks would reach the driver and report "<not a UsageError: ...>" here (no GPU) instead of the refusal.
#include <doctest/doctest.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "codegen/family.h"
#include "runtime/attn_fwd_api.h"
#include "runtime/driver.h"
#include "runtime/error.h"
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
  const TileConfig extra{{"BM", 64}, {"BN", 32}, {"QREGS", 0}, {"W", 4}};
  CHECK_CONTAINS(refusal_of([&] { win_fwd(c.p, attn_args(c), nullptr, &partial); }),
                 "win_fwd: tile config [BM=64] needs BN in {16, 32, 64, 128}");
  CHECK_CONTAINS(refusal_of([&] { cmp_fwd(c.p, attn_args(c), nullptr, &outside); }), "needs BM in {64, 128}");
  CHECK_CONTAINS(refusal_of([&] { win_fwd(c.p, attn_args(c), nullptr, &extra); }),
                 "has parameters the family does not know");
  const TileConfig pool_bad{{"THREADS", 100}};
  CHECK_CONTAINS(refusal_of([&] { mean_pool(c.p, pool_args(c), nullptr, &pool_bad); }),
                 "pool: tile config [THREADS=100] needs THREADS in {128, 256, 512}");
}
