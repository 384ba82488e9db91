// The C ABI: codes, messages and validation of every entry point, all before any GPU is needed. The device
// pointers are fake (never dereferenced: every case is refused before the driver, or, where no driver is present,
// stops at it). A randomized loop (fixed seed) mutates one field of a valid call at a time.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <functional>
#include <iterator>
#include <limits>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "runtime/driver.h"
#include "runtime/nsajit_c.h"
#include "test_util.h"

namespace {

std::string last() { return nsajit_last_error(); }

const void* at(uintptr_t address) { return reinterpret_cast<const void*>(address); }

nsajit_tensor tensor(uintptr_t address, int64_t T, int heads, int dim) {
  return {at(address), T * heads * dim, static_cast<int64_t>(heads) * dim, dim};
}

const int32_t kDeviceOffsets = 0;  // a non-null device cu_seqlens (never read)

// One valid call of every entry point (fla, HQ = 16, H = 4, T = 256; B = 2, or varlen with a trailing empty
// sequence). Not copyable: the varlen arguments point at `offsets`.
struct CArgs {
  nsajit_problem p{};
  nsajit_forward_tensors f{};
  nsajit_attn_args win{}, cmp{};
  nsajit_select_args sel{};
  nsajit_slc_args slc{};
  nsajit_backward_tensors bwd{};
  nsajit_tensor pool_x{}, pool_y{};
  int pool_dim = 0;
  const int32_t* pool_cu = nullptr;
  const int32_t* pool_cu_host = nullptr;
  int64_t pool_num_seqs = 0;
  std::vector<int32_t> offsets = {0, 100, 200, 256, 256};  // its own allocation: a read past it is an ASan error
  CArgs() = default;
  CArgs(const CArgs&) = delete;
  CArgs& operator=(const CArgs&) = delete;
};

std::unique_ptr<CArgs> make_args(bool varlen) {
  auto a = std::make_unique<CArgs>();
  REQUIRE(nsajit_preset("fla", &a->p) == NSAJIT_OK);
  nsajit_problem& p = a->p;
  p.B = varlen ? 1 : 2, p.T = 256, p.HQ = 16, p.H = 4;
  const int64_t T = p.T, nc = (T - p.l) / p.d + 1;
  const nsajit_tensor q = tensor(0x100000, T, p.HQ, p.dk), k = tensor(0x200000, T, p.H, p.dk),
                      v = tensor(0x300000, T, p.H, p.dv), o = tensor(0x400000, T, p.HQ, p.dv),
                      k_cmp = tensor(0x500000, nc, p.H, p.dk), v_cmp = tensor(0x510000, nc, p.H, p.dv);
  float* lse = static_cast<float*>(const_cast<void*>(at(0x600000)));
  int32_t* idx = static_cast<int32_t*>(const_cast<void*>(at(0x700000)));
  int32_t* cnt = static_cast<int32_t*>(const_cast<void*>(at(0x710000)));
  const void* gate = at(0x800000);
  const int64_t row_b = T * p.HQ, row_t = p.HQ;
  const int32_t* cu = varlen ? &kDeviceOffsets : nullptr;
  const int32_t* cu_host = varlen ? a->offsets.data() : nullptr;
  const int64_t num_seqs = varlen ? 4 : 0;

  nsajit_forward_tensors& f = a->f;
  f.q = q, f.k = k, f.v = v, f.o = o;
  f.g_cmp = gate, f.g_slc = at(0x810000), f.g_win = at(0x820000);
  f.gate_stride_b = row_b, f.gate_stride_t = row_t;
  f.o_cmp = tensor(0x410000, T, p.HQ, p.dv), f.o_slc = tensor(0x420000, T, p.HQ, p.dv);
  f.o_win = tensor(0x430000, T, p.HQ, p.dv);
  f.lse_cmp = lse, f.lse_slc = static_cast<float*>(const_cast<void*>(at(0x610000)));
  f.lse_win = static_cast<float*>(const_cast<void*>(at(0x620000)));
  f.lse_stride_b = row_b, f.lse_stride_t = row_t;
  f.idx = idx, f.cnt = cnt;
  f.cu_seqlens = cu, f.cu_seqlens_host = cu_host, f.num_seqs = num_seqs;

  nsajit_attn_args& w = a->win;  // no gate: o and lse
  w.q = q, w.k = k, w.v = v, w.o = o, w.lse = lse, w.lse_stride_b = row_b, w.lse_stride_t = row_t;
  w.cu_seqlens = cu, w.cu_seqlens_host = cu_host, w.num_seqs = num_seqs;
  nsajit_attn_args& c = a->cmp;  // gated, no o
  c.q = q, c.k = k_cmp, c.v = v_cmp, c.lse = lse, c.lse_stride_b = row_b, c.lse_stride_t = row_t;
  c.gate = gate, c.gate_stride_b = row_b, c.gate_stride_t = row_t, c.out = o;
  c.cu_seqlens = cu, c.cu_seqlens_host = cu_host, c.num_seqs = num_seqs;
  nsajit_select_args& s = a->sel;
  s.q = q, s.k_cmp = k_cmp, s.lse_cmp = lse, s.lse_stride_b = row_b, s.lse_stride_t = row_t, s.idx = idx, s.cnt = cnt;
  s.cu_seqlens = cu, s.cu_seqlens_host = cu_host, s.num_seqs = num_seqs;
  nsajit_slc_args& l = a->slc;  // everything: o_slc, lse, accumulated gated out
  l.q = q, l.k = k, l.v = v, l.o_slc = o, l.lse = lse, l.lse_stride_b = row_b, l.lse_stride_t = row_t;
  l.idx = idx, l.cnt = cnt, l.gate = gate, l.gate_stride_b = row_b, l.gate_stride_t = row_t;
  l.out = tensor(0x440000, T, p.HQ, p.dv), l.accumulate = 1;
  l.cu_seqlens = cu, l.cu_seqlens_host = cu_host, l.num_seqs = num_seqs;
  a->pool_x = k, a->pool_y = k_cmp, a->pool_dim = p.dk;
  a->pool_cu = cu, a->pool_cu_host = cu_host, a->pool_num_seqs = num_seqs;
  nsajit_backward_tensors& b = a->bwd;  // every branch, the mean pool, gate gradients
  b.q = q, b.k = k, b.v = v;
  b.g_cmp = f.g_cmp, b.g_slc = f.g_slc, b.g_win = f.g_win;
  b.gate_stride_b = row_b, b.gate_stride_t = row_t;
  b.o_cmp = f.o_cmp, b.o_slc = f.o_slc, b.o_win = f.o_win;
  b.lse_cmp = f.lse_cmp, b.lse_slc = f.lse_slc, b.lse_win = f.lse_win;
  b.lse_stride_b = row_b, b.lse_stride_t = row_t;
  b.idx = idx, b.cnt = cnt;
  b.dout = tensor(0x450000, T, p.HQ, p.dv);
  b.dq = tensor(0x900000, T, p.HQ, p.dk), b.dk = tensor(0x910000, T, p.H, p.dk), b.dv = tensor(0x920000, T, p.H, p.dv);
  b.dg_cmp = const_cast<void*>(at(0xa00000)), b.dg_slc = const_cast<void*>(at(0xa10000));
  b.dg_win = const_cast<void*>(at(0xa20000));
  b.dg_stride_b = row_b, b.dg_stride_t = row_t;
  b.cu_seqlens = cu, b.cu_seqlens_host = cu_host, b.num_seqs = num_seqs;
  return a;
}

// The fields of one entry point that a test may reach, by kind.
struct Varlen {
  const int32_t** cu;
  const int32_t** host;
  int64_t* num_seqs;
  int64_t* max_seqlen = nullptr;  // null: the entry point takes none (mean_pool)
};

struct Entry {
  std::string name;
  std::function<int(CArgs&)> call;
  std::function<int(CArgs&)> call_null_args;  // the args struct null (empty for mean_pool: it has none)
  const char* args_name;
  std::function<std::vector<nsajit_tensor*>(CArgs&)> tensors;
  std::function<std::vector<std::function<void(uintptr_t)>>(CArgs&)> pointers;  // device pointers
  std::function<std::vector<int64_t*>(CArgs&)> int64s;                          // row strides
  std::function<std::vector<int*>(CArgs&)> ints;                                // accumulate, dim
  std::function<Varlen(CArgs&)> varlen;
};

template <class T>
std::function<void(uintptr_t)> setter(T*& field) {
  return [&field](uintptr_t v) { field = reinterpret_cast<T*>(v); };
}

std::vector<int64_t*> attn_int64s(nsajit_attn_args& x) {
  return {&x.lse_stride_b, &x.lse_stride_t, &x.gate_stride_b, &x.gate_stride_t, &x.gate_stride_h};
}

const std::vector<Entry>& entries() {
  static const std::vector<Entry> all = {
      {"nsajit_forward", [](CArgs& a) { return nsajit_forward(&a.p, &a.f, nullptr); },
       [](CArgs& a) { return nsajit_forward(&a.p, nullptr, nullptr); }, "tensors",
       [](CArgs& a) -> std::vector<nsajit_tensor*> {
         auto& f = a.f;
         return {&f.q, &f.k, &f.v, &f.o, &f.o_cmp, &f.o_slc, &f.o_win, &f.k_slc, &f.v_slc, &f.k_win, &f.v_win,
                 &f.k_cmp, &f.v_cmp};
       },
       [](CArgs& a) -> std::vector<std::function<void(uintptr_t)>> {
         auto& f = a.f;
         return {setter(f.g_cmp), setter(f.g_slc), setter(f.g_win), setter(f.lse_cmp), setter(f.lse_slc),
                 setter(f.lse_win), setter(f.idx), setter(f.cnt), setter(f.workspace)};
       },
       [](CArgs& a) -> std::vector<int64_t*> {
         auto& f = a.f;
         return {&f.gate_stride_b, &f.gate_stride_t, &f.gate_stride_h, &f.lse_stride_b, &f.lse_stride_t};
       },
       [](CArgs&) -> std::vector<int*> { return {}; },
       [](CArgs& a) { return Varlen{&a.f.cu_seqlens, &a.f.cu_seqlens_host, &a.f.num_seqs, &a.f.max_seqlen}; }},
      {"nsajit_win_fwd", [](CArgs& a) { return nsajit_win_fwd(&a.p, &a.win, nullptr); },
       [](CArgs& a) { return nsajit_win_fwd(&a.p, nullptr, nullptr); }, "args",
       [](CArgs& a) -> std::vector<nsajit_tensor*> { return {&a.win.q, &a.win.k, &a.win.v, &a.win.o, &a.win.out}; },
       [](CArgs& a) -> std::vector<std::function<void(uintptr_t)>> {
         return {setter(a.win.lse), setter(a.win.gate)};
       },
       [](CArgs& a) { return attn_int64s(a.win); }, [](CArgs& a) -> std::vector<int*> { return {&a.win.accumulate}; },
       [](CArgs& a) { return Varlen{&a.win.cu_seqlens, &a.win.cu_seqlens_host, &a.win.num_seqs, &a.win.max_seqlen}; }},
      {"nsajit_cmp_fwd", [](CArgs& a) { return nsajit_cmp_fwd(&a.p, &a.cmp, nullptr); },
       [](CArgs& a) { return nsajit_cmp_fwd(&a.p, nullptr, nullptr); }, "args",
       [](CArgs& a) -> std::vector<nsajit_tensor*> { return {&a.cmp.q, &a.cmp.k, &a.cmp.v, &a.cmp.o, &a.cmp.out}; },
       [](CArgs& a) -> std::vector<std::function<void(uintptr_t)>> {
         return {setter(a.cmp.lse), setter(a.cmp.gate)};
       },
       [](CArgs& a) { return attn_int64s(a.cmp); }, [](CArgs& a) -> std::vector<int*> { return {&a.cmp.accumulate}; },
       [](CArgs& a) { return Varlen{&a.cmp.cu_seqlens, &a.cmp.cu_seqlens_host, &a.cmp.num_seqs, &a.cmp.max_seqlen}; }},
      {"nsajit_select", [](CArgs& a) { return nsajit_select(&a.p, &a.sel, nullptr); },
       [](CArgs& a) { return nsajit_select(&a.p, nullptr, nullptr); }, "args",
       [](CArgs& a) -> std::vector<nsajit_tensor*> { return {&a.sel.q, &a.sel.k_cmp}; },
       [](CArgs& a) -> std::vector<std::function<void(uintptr_t)>> {
         return {setter(a.sel.lse_cmp), setter(a.sel.idx), setter(a.sel.cnt)};
       },
       [](CArgs& a) -> std::vector<int64_t*> { return {&a.sel.lse_stride_b, &a.sel.lse_stride_t}; },
       [](CArgs&) -> std::vector<int*> { return {}; },
       [](CArgs& a) { return Varlen{&a.sel.cu_seqlens, &a.sel.cu_seqlens_host, &a.sel.num_seqs, &a.sel.max_seqlen}; }},
      {"nsajit_slc_fwd", [](CArgs& a) { return nsajit_slc_fwd(&a.p, &a.slc, nullptr); },
       [](CArgs& a) { return nsajit_slc_fwd(&a.p, nullptr, nullptr); }, "args",
       [](CArgs& a) -> std::vector<nsajit_tensor*> {
         return {&a.slc.q, &a.slc.k, &a.slc.v, &a.slc.o_slc, &a.slc.out};
       },
       [](CArgs& a) -> std::vector<std::function<void(uintptr_t)>> {
         return {setter(a.slc.lse), setter(a.slc.idx), setter(a.slc.cnt), setter(a.slc.gate)};
       },
       [](CArgs& a) -> std::vector<int64_t*> {
         return {&a.slc.lse_stride_b, &a.slc.lse_stride_t, &a.slc.gate_stride_b, &a.slc.gate_stride_t,
                 &a.slc.gate_stride_h};
       },
       [](CArgs& a) -> std::vector<int*> { return {&a.slc.accumulate}; },
       [](CArgs& a) { return Varlen{&a.slc.cu_seqlens, &a.slc.cu_seqlens_host, &a.slc.num_seqs, &a.slc.max_seqlen}; }},
      {"nsajit_mean_pool",
       [](CArgs& a) {
         return nsajit_mean_pool(&a.p, a.pool_x, a.pool_y, a.pool_dim, a.pool_cu, a.pool_cu_host, a.pool_num_seqs,
                                 nullptr);
       },
       nullptr, nullptr, [](CArgs& a) -> std::vector<nsajit_tensor*> { return {&a.pool_x, &a.pool_y}; },
       [](CArgs&) -> std::vector<std::function<void(uintptr_t)>> { return {}; },
       [](CArgs&) -> std::vector<int64_t*> { return {}; },
       [](CArgs& a) -> std::vector<int*> { return {&a.pool_dim}; },
       [](CArgs& a) { return Varlen{&a.pool_cu, &a.pool_cu_host, &a.pool_num_seqs}; }},
      {"nsajit_backward", [](CArgs& a) { return nsajit_backward(&a.p, &a.bwd, nullptr); },
       [](CArgs& a) { return nsajit_backward(&a.p, nullptr, nullptr); }, "tensors",
       [](CArgs& a) -> std::vector<nsajit_tensor*> {
         auto& b = a.bwd;
         return {&b.q,     &b.k,     &b.v,      &b.k_slc,  &b.v_slc,  &b.k_win, &b.v_win, &b.k_cmp, &b.v_cmp,
                 &b.o_cmp, &b.o_slc, &b.o_win,  &b.dout,   &b.dq,     &b.dk,    &b.dv,    &b.dk_slc, &b.dv_slc,
                 &b.dk_win, &b.dv_win, &b.dk_cmp, &b.dv_cmp};
       },
       [](CArgs& a) -> std::vector<std::function<void(uintptr_t)>> {
         auto& b = a.bwd;
         return {setter(b.g_cmp),   setter(b.g_slc),  setter(b.g_win),  setter(b.lse_cmp), setter(b.lse_slc),
                 setter(b.lse_win), setter(b.idx),    setter(b.cnt),    setter(b.dg_cmp),  setter(b.dg_slc),
                 setter(b.dg_win),  setter(b.workspace)};
       },
       [](CArgs& a) -> std::vector<int64_t*> {
         auto& b = a.bwd;
         return {&b.gate_stride_b, &b.gate_stride_t, &b.gate_stride_h, &b.lse_stride_b,
                 &b.lse_stride_t,  &b.dg_stride_b,   &b.dg_stride_t};
       },
       [](CArgs&) -> std::vector<int*> { return {}; },
       [](CArgs& a) { return Varlen{&a.bwd.cu_seqlens, &a.bwd.cu_seqlens_host, &a.bwd.num_seqs, &a.bwd.max_seqlen}; }},
  };
  return all;
}

// Calls `e` on `a` with the problem pointer null.
int call_null_problem(const Entry& e, CArgs& a) {
  if (e.name == "nsajit_forward") return nsajit_forward(nullptr, &a.f, nullptr);
  if (e.name == "nsajit_win_fwd") return nsajit_win_fwd(nullptr, &a.win, nullptr);
  if (e.name == "nsajit_cmp_fwd") return nsajit_cmp_fwd(nullptr, &a.cmp, nullptr);
  if (e.name == "nsajit_select") return nsajit_select(nullptr, &a.sel, nullptr);
  if (e.name == "nsajit_slc_fwd") return nsajit_slc_fwd(nullptr, &a.slc, nullptr);
  if (e.name == "nsajit_backward") return nsajit_backward(nullptr, &a.bwd, nullptr);
  return nsajit_mean_pool(nullptr, a.pool_x, a.pool_y, a.pool_dim, a.pool_cu, a.pool_cu_host, a.pool_num_seqs,
                          nullptr);
}

}  // namespace

TEST_CASE("C ABI: presets, workspace size, usage errors with messages") {
  nsajit_problem p{};
  REQUIRE(nsajit_preset("paper", &p) == NSAJIT_OK);
  CHECK(p.dk == 192);
  CHECK(p.dv == 128);
  CHECK(p.l == 32);
  CHECK(p.d == 16);
  CHECK(p.HQ == 64);
  CHECK(p.H == 4);
  CHECK(nsajit_preset("nope", &p) == NSAJIT_USAGE);
  CHECK_CONTAINS(last(), "unknown preset 'nope'");
  REQUIRE(nsajit_preset("fla", &p) == NSAJIT_OK);
  CHECK(nsajit_forward_workspace_bytes(&p) > static_cast<size_t>(p.T) * p.HQ * 4);

  nsajit_problem bad = p;
  bad.H = 5;
  nsajit_forward_tensors t{};
  CHECK(nsajit_forward(&bad, &t, nullptr) == NSAJIT_USAGE);
  CHECK_CONTAINS(last(), "not a multiple of H = 5");
  bad = p;
  bad.dtype = 7;
  CHECK(nsajit_forward(&bad, &t, nullptr) == NSAJIT_USAGE);
  CHECK_CONTAINS(last(), "bad dtype 7");
  CHECK(nsajit_forward(&p, nullptr, nullptr) == NSAJIT_USAGE);
  CHECK_CONTAINS(last(), "tensors is a null pointer");
  CHECK(nsajit_forward(&p, &t, nullptr) == NSAJIT_USAGE);
  CHECK_CONTAINS(last(), "all three gates are null");
  int32_t offsets[] = {0, 10};
  t.g_win = offsets;
  t.o.data = offsets;
  t.cu_seqlens = offsets;
  CHECK(nsajit_forward(&p, &t, nullptr) == NSAJIT_USAGE);
  CHECK_CONTAINS(last(), "cu_seqlens_host");
  nsajit_attn_args a{};
  CHECK(nsajit_win_fwd(&p, &a, nullptr) == NSAJIT_USAGE);
  CHECK_CONTAINS(last(), "q is a null pointer");
}

TEST_CASE("C ABI: null name, out, problem, args and bytes pointers are usage errors naming the pointer") {
  nsajit_problem p{};
  CHECK(nsajit_preset(nullptr, &p) == NSAJIT_USAGE);
  CHECK_CONTAINS(last(), "nsajit_preset: name is a null pointer");
  CHECK(nsajit_preset("fla", nullptr) == NSAJIT_USAGE);
  CHECK_CONTAINS(last(), "nsajit_preset: out is a null pointer");
  size_t bytes = 12345;
  CHECK(nsajit_forward_workspace_size(nullptr, &bytes) == NSAJIT_USAGE);
  CHECK_CONTAINS(last(), "nsajit_forward_workspace_size: problem is a null pointer");
  CHECK(bytes == 0);
  REQUIRE(nsajit_preset("fla", &p) == NSAJIT_OK);
  CHECK(nsajit_forward_workspace_size(&p, nullptr) == NSAJIT_USAGE);
  CHECK_CONTAINS(last(), "nsajit_forward_workspace_size: bytes is a null pointer");
  CHECK(nsajit_forward_workspace_bytes(nullptr) == 0);
  CHECK_CONTAINS(last(), "nsajit_forward_workspace_bytes: problem is a null pointer");

  int cases = 0;
  for (const Entry& e : entries()) {
    CAPTURE(e.name);
    auto a = make_args(false);
    CHECK(call_null_problem(e, *a) == NSAJIT_USAGE);
    CHECK_CONTAINS(last(), e.name + ": problem is a null pointer");
    ++cases;
    if (e.call_null_args) {
      CHECK(e.call_null_args(*a) == NSAJIT_USAGE);
      CHECK_CONTAINS(last(), e.name + ": " + e.args_name + " is a null pointer");
      ++cases;
    }
  }
  CHECK(cases == 13);
}

// One table over the seven launching entry points: each row edits a valid call and names the expected code and
// message part (per entry point where they differ).
TEST_CASE("C ABI: every launching entry point refuses bad varlen offsets, negative strides and bad shapes") {
  struct Row {
    const char* what;
    bool varlen;
    std::function<void(const Entry&, CArgs&)> edit;
    std::function<std::string(const std::string& entry)> expected;  // empty: the entry point has no such field
  };
  auto same = [](const char* s) { return [s](const std::string&) { return std::string(s); }; };
  const std::vector<Row> rows = {
      {"num_seqs short of the offsets", true, [](const Entry& e, CArgs& a) { *e.varlen(a).num_seqs = 2; },
       same("cu_seqlens ends at 200 but T = 256 tokens")},
      {"num_seqs 0 with cu_seqlens", true, [](const Entry& e, CArgs& a) { *e.varlen(a).num_seqs = 0; },
       same("varlen: num_seqs = 0 must be >= 1")},
      {"num_seqs negative", true, [](const Entry& e, CArgs& a) { *e.varlen(a).num_seqs = -3; },
       same("varlen: num_seqs = -3 must be >= 1")},
      // Far past the 5 offsets held: refused before any of them is read (ASan would see the read).
      {"num_seqs past the grid", true, [](const Entry& e, CArgs& a) { *e.varlen(a).num_seqs = int64_t{1} << 40; },
       same("num_seqs = 1099511627776 sequences: at most 65535")},
      {"num_seqs one past the grid", true, [](const Entry& e, CArgs& a) { *e.varlen(a).num_seqs = 65536; },
       same("num_seqs = 65536 sequences: at most 65535")},
      {"cu_seqlens_host null", true, [](const Entry& e, CArgs& a) { *e.varlen(a).host = nullptr; },
       same("varlen: cu_seqlens_host is a null pointer")},
      {"host offsets without cu_seqlens", true, [](const Entry& e, CArgs& a) { *e.varlen(a).cu = nullptr; },
       same("cu_seqlens_host or num_seqs = 4 is given but cu_seqlens is null")},
      {"num_seqs without cu_seqlens", false, [](const Entry& e, CArgs& a) { *e.varlen(a).num_seqs = 3; },
       same("cu_seqlens_host or num_seqs = 3 is given but cu_seqlens is null")},
      {"offsets decreasing", true, [](const Entry&, CArgs& a) { a.offsets[2] = 50; },
       same("cu_seqlens[2] = 50 < cu_seqlens[1] = 100")},
      {"varlen with B = 2", true, [](const Entry&, CArgs& a) { a.p.B = 2; }, same("varlen needs B = 1")},
      {"negative sequence stride of the first tensor", false,
       [](const Entry& e, CArgs& a) { e.tensors(a)[0]->stride_t = -8; },
       [](const std::string& n) {
         return n == "nsajit_mean_pool" ? std::string("x's sequence stride -8") : std::string("q's sequence stride -8");
       }},
      {"negative batch stride of the first tensor", false,
       [](const Entry& e, CArgs& a) { e.tensors(a)[0]->stride_b = -4096; },
       [](const std::string&) { return std::string("batch stride -4096 must be a non-negative multiple of 8"); }},
      {"negative lse stride", false,
       [](const Entry& e, CArgs& a) {
         for (int64_t* s : e.int64s(a)) {
           if (s == &a.f.lse_stride_t || s == &a.win.lse_stride_t || s == &a.cmp.lse_stride_t ||
               s == &a.sel.lse_stride_t || s == &a.slc.lse_stride_t || s == &a.bwd.lse_stride_t)
             *s = -16;
         }
       },
       [](const std::string& n) -> std::string {
         if (n == "nsajit_mean_pool") return "";
         if (n == "nsajit_forward") return "lse_stride_b = 4096 and lse_stride_t = -16 must be non-negative";
         if (n == "nsajit_select") return "lse_cmp's batch and sequence strides (4096, -16) must be non-negative";
         return "lse's batch and sequence strides (4096, -16) must be non-negative";
       }},
      {"T = 0", false, [](const Entry&, CArgs& a) { a.p.T = 0; }, same("bad T = 0: must be >= 1")},
      {"bad dtype", false, [](const Entry&, CArgs& a) { a.p.dtype = 9; }, same("bad dtype 9")},
      {"B past the grid", false, [](const Entry&, CArgs& a) { a.p.B = 70000; }, same("B = 70000 exceeds 65535")},
  };
  int cases = 0;
  for (const Row& r : rows)
    for (const Entry& e : entries()) {
      const std::string expected = r.expected(e.name);
      if (expected.empty()) continue;
      CAPTURE(std::string(r.what));
      CAPTURE(e.name);
      auto a = make_args(r.varlen);
      r.edit(e, *a);
      CHECK(e.call(*a) == NSAJIT_USAGE);
      CHECK_CONTAINS(last(), expected);
      ++cases;
    }
  MESSAGE(cases << " refusals checked");
  CHECK(cases == 7 * static_cast<int>(rows.size()) - 1);
}

TEST_CASE("C ABI: a valid call gets past every check and fails only for want of a GPU (NSAJIT_ERROR)") {
  std::string why;
  if (nsajit::driver_available(&why)) {
    MESSAGE("skipped: a GPU is present, and these calls would launch on fake pointers");
    return;
  }
  for (bool varlen : {false, true})
    for (const Entry& e : entries()) {
      CAPTURE(e.name);
      CAPTURE(varlen);
      auto a = make_args(varlen);
      CHECK(e.call(*a) == NSAJIT_ERROR);
      CHECK_CONTAINS(last(), why);
    }
}

TEST_CASE("C ABI: last_error is per thread, and a successful call clears it") {
  nsajit_problem p{};
  CHECK(nsajit_preset("main-thread", &p) == NSAJIT_USAGE);
  CHECK_CONTAINS(last(), "unknown preset 'main-thread'");
  std::string seen_first, seen_own, seen_after_ok;
  std::thread other([&] {
    seen_first = last();  // nothing has failed on this thread
    nsajit_problem q{};
    (void)nsajit_preset("other-thread", &q);
    seen_own = last();
    (void)nsajit_preset("fla", &q);
    seen_after_ok = last();
  });
  other.join();
  CHECK(seen_first.empty());
  CHECK_CONTAINS(seen_own, "unknown preset 'other-thread'");
  CHECK(seen_after_ok.empty());
  // The other thread's failure and success left this thread's message alone.
  CHECK_CONTAINS(last(), "unknown preset 'main-thread'");
  // Success clears it: preset, the workspace size, and the size that returns a status.
  CHECK(nsajit_preset("fla", &p) == NSAJIT_OK);
  CHECK(last().empty());
  (void)nsajit_preset("x", &p);
  CHECK(nsajit_forward_workspace_bytes(&p) > 0);
  CHECK(last().empty());
  (void)nsajit_preset("x", &p);
  size_t bytes = 0;
  CHECK(nsajit_forward_workspace_size(&p, &bytes) == NSAJIT_OK);
  CHECK(last().empty());

  // Many threads failing at once each read their own message.
  std::vector<std::thread> threads;
  std::vector<int> wrong(4, 0);
  for (int i = 0; i < 4; ++i)
    threads.emplace_back([i, &wrong] {
      const std::string name = "thread-" + std::to_string(i);
      for (int j = 0; j < 200; ++j) {
        nsajit_problem q{};
        (void)nsajit_preset(name.c_str(), &q);
        if (!contains(last(), "'" + name + "'")) ++wrong[static_cast<size_t>(i)];
      }
    });
  for (std::thread& t : threads) t.join();
  CHECK(wrong == std::vector<int>(4, 0));
}

TEST_CASE("C ABI: workspace size with a status, 0 and a message on error, no wrapped sizes") {
  nsajit_problem p{};
  REQUIRE(nsajit_preset("fla", &p) == NSAJIT_OK);
  size_t bytes = 0;
  REQUIRE(nsajit_forward_workspace_size(&p, &bytes) == NSAJIT_OK);
  CHECK(bytes == nsajit_forward_workspace_bytes(&p));
  CHECK(bytes >= static_cast<size_t>(p.T) * p.HQ * 4);
  CHECK(bytes % 256 == 0);

  struct Bad {
    const char* what;
    std::function<void(nsajit_problem&)> edit;
    const char* expected;
  };
  const std::vector<Bad> bad = {
      {"T = 0", [](nsajit_problem& q) { q.T = 0; }, "bad T = 0"},
      {"bad heads", [](nsajit_problem& q) { q.H = 5; }, "not a multiple of H = 5"},
      {"B past the grid", [](nsajit_problem& q) { q.B = 65536; }, "B = 65536 exceeds 65535"},
      {"H past the grid", [](nsajit_problem& q) { q.HQ = q.H = 70000; }, "H = 70000 KV heads exceed 65535"},
      // B T HQ 4 = 65535 (2^31 - 1)^2 4 > 2^64: a wrapped size would let a far too small workspace through.
      {"a size past 64 bits",
       [](nsajit_problem& q) { q.B = 65535, q.T = (int64_t{1} << 31) - 1, q.HQ = (1 << 30) - 1 + (1 << 30), q.H = 1; },
       "overflows 64 bits"},
  };
  for (const Bad& b : bad) {
    CAPTURE(std::string(b.what));
    nsajit_problem q = p;
    b.edit(q);
    bytes = 777;
    CHECK(nsajit_forward_workspace_size(&q, &bytes) == NSAJIT_USAGE);
    CHECK(bytes == 0);
    CHECK_CONTAINS(last(), std::string(b.expected));
    CHECK(nsajit_forward_workspace_bytes(&q) == 0);
    CHECK_CONTAINS(last(), std::string(b.expected));
  }
}

// One field of a valid call at a time, set to a value drawn from the field's kind (zero, negative, huge,
// misaligned, random, ...). Every call must come back with a non-OK code and a message, and never crash (the
// ASan + UBSan build runs this too). Host arrays are only ever null or valid: the ABI cannot check their length.
TEST_CASE("C ABI: randomized bad inputs (fixed seed) are refused with a message, never a crash") {
  if (nsajit::driver_available()) {
    MESSAGE("skipped: a GPU is present, and a mutation that stays valid would launch on fake pointers");
    return;
  }
  std::mt19937_64 rng(20261130);
  auto pick = [&](size_t n) { return static_cast<size_t>(rng() % n); };
  auto any_int64 = [&]() -> int64_t {
    switch (pick(8)) {
      case 0: return static_cast<int64_t>(rng());
      case 1: return -static_cast<int64_t>(rng() % 100000) - 1;
      case 2: return static_cast<int64_t>(rng() % 1000);
      case 3: return std::numeric_limits<int64_t>::min();
      case 4: return std::numeric_limits<int64_t>::max();
      case 5: return int64_t{1} << (16 + pick(40));
      case 6: return 0;
      default: return static_cast<int64_t>(pick(3)) * 65535 + static_cast<int64_t>(pick(3));
    }
  };
  auto any_int = [&]() -> int {
    switch (pick(6)) {
      case 0: return static_cast<int>(static_cast<uint32_t>(rng()));
      case 1: return -static_cast<int>(rng() % 1000) - 1;
      case 2: return static_cast<int>(rng() % 600);
      case 3: return std::numeric_limits<int>::min();
      case 4: return std::numeric_limits<int>::max();
      default: return 0;
    }
  };
  auto any_pointer = [&]() -> uintptr_t {
    switch (pick(4)) {
      case 0: return 0;
      case 1: return 0x100000 + 1 + pick(15);
      case 2: return static_cast<uintptr_t>(rng());
      default: return static_cast<uintptr_t>(rng()) & ~uintptr_t{255};
    }
  };
  struct Kind {
    const char* name;
    std::function<bool(const Entry&, CArgs&)> mutate;  // false: not applicable to this entry point
  };
  const std::vector<Kind> kinds = {
      {"problem int", [&](const Entry&, CArgs& a) {
         int* fields[] = {&a.p.dtype, &a.p.HQ, &a.p.H, &a.p.dk, &a.p.dv, &a.p.l, &a.p.d, &a.p.lsel, &a.p.n, &a.p.w};
         *fields[pick(std::size(fields))] = any_int();
         return true;
       }},
      {"problem B or T", [&](const Entry&, CArgs& a) {
         (pick(2) ? a.p.B : a.p.T) = any_int64();
         return true;
       }},
      {"problem scale", [&](const Entry&, CArgs& a) {
         const double values[] = {-1.0, std::nan(""), std::numeric_limits<double>::infinity(), -0.5, -1e300};
         a.p.scale = values[pick(std::size(values))];
         return true;
       }},
      {"tensor pointer", [&](const Entry& e, CArgs& a) {
         auto ts = e.tensors(a);
         ts[pick(ts.size())]->data = at(any_pointer());
         return true;
       }},
      {"tensor stride", [&](const Entry& e, CArgs& a) {
         auto ts = e.tensors(a);
         nsajit_tensor* t = ts[pick(ts.size())];
         int64_t* strides[] = {&t->stride_b, &t->stride_t, &t->stride_h};
         *strides[pick(3)] = any_int64();
         return true;
       }},
      {"device pointer", [&](const Entry& e, CArgs& a) {
         auto ps = e.pointers(a);
         if (ps.empty()) return false;
         ps[pick(ps.size())](any_pointer());
         return true;
       }},
      {"row stride", [&](const Entry& e, CArgs& a) {
         auto ss = e.int64s(a);
         if (ss.empty()) return false;
         *ss[pick(ss.size())] = any_int64();
         return true;
       }},
      {"int argument", [&](const Entry& e, CArgs& a) {
         auto is = e.ints(a);
         if (is.empty()) return false;
         *is[pick(is.size())] = any_int();
         return true;
       }},
      {"device cu_seqlens", [&](const Entry& e, CArgs& a) {
         *e.varlen(a).cu = static_cast<const int32_t*>(at(any_pointer()));
         return true;
       }},
      {"host cu_seqlens", [&](const Entry& e, CArgs& a) {
         *e.varlen(a).host = pick(2) ? nullptr : a.offsets.data();
         return true;
       }},
      {"num_seqs", [&](const Entry& e, CArgs& a) {
         // Never more than the 4 the offsets hold, unless past the grid limit (refused before any read).
         const int64_t values[] = {0, -1, 1, 2, std::numeric_limits<int64_t>::min(), 65536,
                                   std::numeric_limits<int64_t>::max(), int64_t{1} << (17 + pick(40))};
         *e.varlen(a).num_seqs = values[pick(std::size(values))];
         return true;
       }},
      {"offset value", [&](const Entry&, CArgs& a) {
         a.offsets[pick(5)] = any_int();
         return true;
       }},
      {"max_seqlen (host offsets kept or dropped)", [&](const Entry& e, CArgs& a) {
         const Varlen v = e.varlen(a);
         if (v.max_seqlen == nullptr) return false;
         *v.max_seqlen = any_int64();
         if (pick(2)) *v.host = nullptr;
         return true;
       }},
  };
  const int kCases = 4000;
  std::map<std::string, int> per_entry, per_kind;
  std::map<int, int> per_code;
  int done = 0, empty_messages = 0, ok = 0;
  for (int i = 0; done < kCases && i < 10 * kCases; ++i) {
    const Entry& e = entries()[pick(entries().size())];
    const Kind& k = kinds[pick(kinds.size())];
    auto a = make_args(pick(2) == 1);
    if (!k.mutate(e, *a)) continue;
    const int code = e.call(*a);
    const std::string message = last();
    if (code == NSAJIT_OK) {
      ++ok;
      MESSAGE("case " << i << ": " << e.name << " accepted a mutated " << k.name);
    }
    if (message.empty()) ++empty_messages;
    ++per_code[code], ++per_entry[e.name], ++per_kind[k.name], ++done;
  }
  CHECK(done == kCases);
  CHECK(ok == 0);
  CHECK(empty_messages == 0);
  CHECK(per_code[NSAJIT_OK] == 0);
  // Most mutations are caught by the checks; the rest stay valid and stop at the missing driver.
  CHECK(per_code[NSAJIT_USAGE] > kCases / 2);
  CHECK(per_code[NSAJIT_USAGE] + per_code[NSAJIT_ERROR] == kCases);
  CHECK(per_entry.size() == entries().size());
  CHECK(per_kind.size() == kinds.size());
  std::string summary;
  for (const auto& [name, n] : per_entry) summary += " " + name + "=" + std::to_string(n);
  MESSAGE(done << " cases: " << per_code[NSAJIT_USAGE] << " usage errors, " << per_code[NSAJIT_ERROR]
               << " driver errors (valid mutations);" << summary);
}
