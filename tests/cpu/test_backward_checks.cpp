// nsajit::backward's argument checks, without a GPU: fake pointers that are never dereferenced. check_backward runs
// every check backward runs before its first driver call, so what it refuses, backward refuses with nothing written.
// Also the scratch sizes, and the backward families' problem support.
#include <doctest/doctest.h>

#include <cstdint>
#include <functional>
#include <string>

#include "base/error.h"
#include "codegen/family.h"
#include "runtime/backward.h"

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

Problem small_problem() {
  Problem p = preset("fla");
  p.B = 2, p.T = 256, p.HQ = 16, p.H = 4;
  return p;
}

// Every branch on, everything the forward saves, shared k/v, mean pool: a well-formed call.
BackwardTensors valid(const Problem& p) {
  BackwardTensors t;
  t.q = contiguous(fake(0x100000), p.T, p.HQ, p.dk);
  t.k = contiguous(fake(0x200000), p.T, p.H, p.dk);
  t.v = contiguous(fake(0x300000), p.T, p.H, p.dv);
  t.g_cmp = fake(0x500000), t.g_slc = fake(0x510000), t.g_win = fake(0x520000);
  t.gate_stride_b = p.T * p.HQ, t.gate_stride_t = p.HQ;
  t.o_cmp = contiguous(fake(0x700000), p.T, p.HQ, p.dv);
  t.o_slc = contiguous(fake(0x710000), p.T, p.HQ, p.dv);
  t.o_win = contiguous(fake(0x720000), p.T, p.HQ, p.dv);
  t.lse_cmp = static_cast<const float*>(fake(0x800000));
  t.lse_slc = static_cast<const float*>(fake(0x810000));
  t.lse_win = static_cast<const float*>(fake(0x820000));
  t.lse_stride_b = p.T * p.HQ, t.lse_stride_t = p.HQ;
  t.idx = static_cast<const int32_t*>(fake(0x900000));
  t.cnt = static_cast<const int32_t*>(fake(0x910000));
  t.dout = contiguous(fake(0xa00000), p.T, p.HQ, p.dv);
  t.dq = contiguous(fake(0xb00000), p.T, p.HQ, p.dk);
  t.dk = contiguous(fake(0xb10000), p.T, p.H, p.dk);
  t.dv = contiguous(fake(0xb20000), p.T, p.H, p.dv);
  return t;
}

}  // namespace

TEST_CASE("backward checks: a well-formed call passes every check (and names nothing)") {
  const Problem p = small_problem();
  CHECK(refusal_of([&] { check_backward(p, valid(p)); }) == "<no exception thrown>");
  BackwardTensors t = valid(p);
  t.dg_cmp = fake(0xc00000), t.dg_slc = fake(0xc10000), t.dg_win = fake(0xc20000);
  t.dg_stride_b = p.T * p.HQ, t.dg_stride_t = p.HQ;
  CHECK(refusal_of([&] { check_backward(p, t); }) == "<no exception thrown>");
}

TEST_CASE("backward checks: each missing or bad argument is named") {
  const Problem p = small_problem();
  struct Case {
    const char* expect;
    std::function<void(BackwardTensors&)> spoil;
  };
  const Case cases[] = {
      {"all three gates are null", [](BackwardTensors& t) { t.g_cmp = t.g_slc = t.g_win = nullptr; }},
      {"o_slc", [](BackwardTensors& t) { t.o_slc = {}; }},
      {"o_cmp", [](BackwardTensors& t) { t.o_cmp = {}; }},
      {"lse_win", [](BackwardTensors& t) { t.lse_win = nullptr; }},
      {"idx and cnt", [](BackwardTensors& t) { t.cnt = nullptr; }},
      {"dq is required", [](BackwardTensors& t) { t.dq = {}; }},
      {"do is required", [](BackwardTensors& t) { t.dout = {}; }},
      {"dk is required", [](BackwardTensors& t) { t.dk = {}; t.dv = {}; }},
      {"dq", [](BackwardTensors& t) { t.dq.data = fake(0xb00002); }},
      {"k_slc and v_slc", [](BackwardTensors& t) { t.k_slc = t.k; }},
      {"dk_cmp/dv_cmp are given but k_cmp/v_cmp are not", [](BackwardTensors& t) { t.dk_cmp = t.dk, t.dv_cmp = t.dv; }},
      {"dg_win is given but g_win is null", [](BackwardTensors& t) { t.g_win = nullptr, t.dg_win = fake(0xc00000); }},
      {"dk_slc is required", [](BackwardTensors& t) {
         t.k_slc = t.k, t.v_slc = t.v;  // separate selected-branch keys, but no gradient for them
       }},
      {"dk_slc/dk_win are given without k_slc/k_win", [](BackwardTensors& t) { t.dk_slc = t.dk, t.dv_slc = t.dv; }},
      {"workspace is not 256-byte aligned", [](BackwardTensors& t) { t.workspace = fake(0x10000010), t.workspace_bytes = 1ull << 40; }},
      {"lse's batch and sequence strides", [](BackwardTensors& t) { t.lse_stride_t = -1; }},
  };
  for (const Case& c : cases) {
    BackwardTensors t = valid(p);
    c.spoil(t);
    const std::string why = refusal_of([&] { check_backward(p, t); });
    INFO(why);
    CHECK(why.rfind("backward: ", 0) == 0);
    CHECK(why.find(c.expect) != std::string::npos);
  }
}

TEST_CASE("backward checks: a too small workspace is refused with both sizes") {
  const Problem p = small_problem();
  BackwardTensors t = valid(p);
  const size_t need = backward_workspace_bytes(p, t);
  t.workspace = fake(0x10000000), t.workspace_bytes = need - 1;
  const std::string why = refusal_of([&] { check_backward(p, t); });
  CHECK(why.find("too small") != std::string::npos);
  CHECK(why.find(std::to_string(need)) != std::string::npos);
  t.workspace_bytes = need;
  CHECK(refusal_of([&] { check_backward(p, t); }) == "<no exception thrown>");
}

TEST_CASE("backward checks: branches off need nothing of theirs; w = 0 turns the window off") {
  Problem p = small_problem();
  BackwardTensors t = valid(p);
  t.g_slc = nullptr, t.o_slc = {}, t.lse_slc = nullptr, t.idx = nullptr, t.cnt = nullptr;
  CHECK(refusal_of([&] { check_backward(p, t); }) == "<no exception thrown>");
  p.w = 0;
  t = valid(p);
  t.o_win = {}, t.lse_win = nullptr;
  CHECK(refusal_of([&] { check_backward(p, t); }) == "<no exception thrown>");
  // Only the window, with its own k/v: dk/dv are not needed.
  p = small_problem();
  t = valid(p);
  t.g_cmp = t.g_slc = nullptr;
  t.k_win = t.k, t.v_win = t.v, t.dk_win = t.dk, t.dv_win = t.dv, t.dk = {}, t.dv = {};
  CHECK(refusal_of([&] { check_backward(p, t); }) == "<no exception thrown>");
}

TEST_CASE("backward checks: unsupported shapes name the parameter") {
  Problem p = small_problem();
  p.dk = 100, p.dv = 96;
  CHECK(refusal_of([&] { check_backward(p, valid(p)); }).find("dk = 100: head dims must be multiples of 8 from 32 to 256") !=
        std::string::npos);
  p = small_problem();
  p.dv = 264;
  CHECK(refusal_of([&] { check_backward(p, valid(p)); }).find("dv = 264") != std::string::npos);
  p = small_problem();
  p.n = 12;
  CHECK(refusal_of([&] { check_backward(p, valid(p)); }).find("n = 12") != std::string::npos);
  p = small_problem();
  p.T = 0;
  CHECK(refusal_of([&] { check_backward(p, valid(p)); }).find("bad T = 0") != std::string::npos);
}

TEST_CASE("backward: the scratch grows with the problem and covers what each option adds") {
  const Problem p = small_problem();
  const BackwardTensors t = valid(p);
  const size_t base = backward_workspace_bytes(p, t);
  // dq in fp32 alone is B T HQ dk 4 bytes.
  CHECK(base >= static_cast<size_t>(p.B * p.T * p.HQ * p.dk * 4));
  Problem longer = p;
  longer.T *= 4;
  CHECK(backward_workspace_bytes(longer, valid(longer)) > 3 * base);
  BackwardTensors sep = t;
  sep.k_slc = t.k, sep.v_slc = t.v, sep.dk_slc = t.dk, sep.dv_slc = t.dv;
  CHECK(backward_workspace_bytes(p, sep) >= base + static_cast<size_t>(p.B * p.T * p.H * (p.dk + p.dv) * 4));
  BackwardTensors no_slc = t;
  no_slc.g_slc = nullptr;
  CHECK(backward_workspace_bytes(p, no_slc) < base);
  CHECK(backward_workspace_bytes(p) == base);
}

TEST_CASE("backward families: declared, with their problems' limits") {
  for (const char* name : {"bwd_pre", "cmp_bwd_dq", "cmp_bwd_dkv", "cmp_bwd_reduce", "slc_bwd_index", "slc_bwd_dq",
                           "slc_bwd_dkv", "slc_bwd_reduce", "win_bwd_dq", "win_bwd_dkv", "pool_bwd", "bwd_cast"}) {
    const KernelFamily& f = find_family(name);
    const Problem p = preset("paper");
    CHECK_NOTHROW(f.check_problem(p));
    const TileConfig c = f.default_config(p);
    INFO(name << " " << describe(c));
    CHECK(!f.reject(p, c, kHopperMaxSmemOptin).has_value());
  }
  Problem p = preset("fla");
  p.lsel = 48;
  CHECK(refusal_of([&] { find_family("slc_bwd_dkv").check_problem(p); }).find("l' = 48") != std::string::npos);
}
