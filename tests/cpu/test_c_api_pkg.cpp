// What the C ABI grew for the Python package: the backward, the version and struct-layout queries, gates with a
// head stride, varlen given by num_seqs and max_seqlen (no host offsets) with its scratch bounds, and libnsajit.so
// itself (what it exports and needs). Device pointers are fake, as in test_c_api.cpp: every call is refused before
// the driver or, where no driver is present, stops at it.
#include <dlfcn.h>
#include <doctest/doctest.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "codegen/problem.h"
#include "runtime/backward.h"
#include "runtime/driver.h"
#include "runtime/forward.h"
#include "runtime/nsajit_c.h"
#include "runtime/validate.h"
#include "tests/cpu/test_util.h"

namespace {

std::string last() { return nsajit_last_error(); }

const void* at(uintptr_t address) { return reinterpret_cast<const void*>(address); }
template <class T>
T* ptr(uintptr_t address) {
  return static_cast<T*>(const_cast<void*>(at(address)));
}

nsajit_tensor tensor(uintptr_t address, int64_t T, int heads, int dim) {
  return {at(address), T * heads * dim, static_cast<int64_t>(heads) * dim, dim};
}

const int32_t kDeviceOffsets = 0;  // a non-null device cu_seqlens (never read)

enum class Batch { fixed, host, bounded };

// One valid backward call (fla, HQ = 16, H = 4, T = 256; B = 2, or varlen with the host offsets, or with num_seqs
// = 4 and max_seqlen = 100), every branch on, gradients of the gates asked for. Not copyable: points at `offsets`.
struct BwdArgs {
  nsajit_problem p{};
  nsajit_backward_tensors t{};
  std::vector<int32_t> offsets = {0, 100, 200, 256, 256};
  BwdArgs() = default;
  BwdArgs(const BwdArgs&) = delete;
  BwdArgs& operator=(const BwdArgs&) = delete;
};

std::unique_ptr<BwdArgs> make_bwd(Batch batch) {
  auto a = std::make_unique<BwdArgs>();
  REQUIRE(nsajit_preset("fla", &a->p) == NSAJIT_OK);
  nsajit_problem& p = a->p;
  p.B = batch == Batch::fixed ? 2 : 1, p.T = 256, p.HQ = 16, p.H = 4;
  const int64_t T = p.T;
  nsajit_backward_tensors& t = a->t;
  t.q = tensor(0x100000, T, p.HQ, p.dk), t.k = tensor(0x200000, T, p.H, p.dk), t.v = tensor(0x300000, T, p.H, p.dv);
  t.g_cmp = at(0x800000), t.g_slc = at(0x810000), t.g_win = at(0x820000);
  t.gate_stride_b = T * p.HQ, t.gate_stride_t = p.HQ;
  t.o_cmp = tensor(0x410000, T, p.HQ, p.dv), t.o_slc = tensor(0x420000, T, p.HQ, p.dv);
  t.o_win = tensor(0x430000, T, p.HQ, p.dv);
  t.lse_cmp = ptr<float>(0x600000), t.lse_slc = ptr<float>(0x610000), t.lse_win = ptr<float>(0x620000);
  t.lse_stride_b = T * p.HQ, t.lse_stride_t = p.HQ;
  t.idx = ptr<int32_t>(0x700000), t.cnt = ptr<int32_t>(0x710000);
  t.dout = tensor(0x440000, T, p.HQ, p.dv);
  t.dq = tensor(0x900000, T, p.HQ, p.dk), t.dk = tensor(0x910000, T, p.H, p.dk);
  t.dv = tensor(0x920000, T, p.H, p.dv);
  t.dg_cmp = ptr<void>(0xa00000), t.dg_slc = ptr<void>(0xa10000), t.dg_win = ptr<void>(0xa20000);
  t.dg_stride_b = T * p.HQ, t.dg_stride_t = p.HQ;
  if (batch != Batch::fixed) {
    t.cu_seqlens = &kDeviceOffsets;
    t.num_seqs = 4;
    if (batch == Batch::host) t.cu_seqlens_host = a->offsets.data();
    if (batch == Batch::bounded) t.max_seqlen = 100;
  }
  return a;
}

// The forward of test_c_api.cpp's make_args, with the same batch choices.
struct FwdArgs {
  nsajit_problem p{};
  nsajit_forward_tensors f{};
  std::vector<int32_t> offsets = {0, 100, 200, 256, 256};
  FwdArgs() = default;
  FwdArgs(const FwdArgs&) = delete;
  FwdArgs& operator=(const FwdArgs&) = delete;
};

std::unique_ptr<FwdArgs> make_fwd(Batch batch) {
  auto a = std::make_unique<FwdArgs>();
  REQUIRE(nsajit_preset("fla", &a->p) == NSAJIT_OK);
  nsajit_problem& p = a->p;
  p.B = batch == Batch::fixed ? 2 : 1, p.T = 256, p.HQ = 16, p.H = 4;
  const int64_t T = p.T;
  nsajit_forward_tensors& f = a->f;
  f.q = tensor(0x100000, T, p.HQ, p.dk), f.k = tensor(0x200000, T, p.H, p.dk), f.v = tensor(0x300000, T, p.H, p.dv);
  f.o = tensor(0x400000, T, p.HQ, p.dv);
  f.g_cmp = at(0x800000), f.g_slc = at(0x810000), f.g_win = at(0x820000);
  f.gate_stride_b = T * p.HQ, f.gate_stride_t = p.HQ;
  f.o_cmp = tensor(0x410000, T, p.HQ, p.dv), f.o_slc = tensor(0x420000, T, p.HQ, p.dv);
  f.o_win = tensor(0x430000, T, p.HQ, p.dv);
  f.lse_cmp = ptr<float>(0x600000), f.lse_slc = ptr<float>(0x610000), f.lse_win = ptr<float>(0x620000);
  f.lse_stride_b = T * p.HQ, f.lse_stride_t = p.HQ;
  f.idx = ptr<int32_t>(0x700000), f.cnt = ptr<int32_t>(0x710000);
  if (batch != Batch::fixed) {
    f.cu_seqlens = &kDeviceOffsets;
    f.num_seqs = 4;
    if (batch == Batch::host) f.cu_seqlens_host = a->offsets.data();
    if (batch == Batch::bounded) f.max_seqlen = 100;
  }
  return a;
}

// The three gates of a layer that projects them together: [B, T, HQ, 3] viewed as three [B, T, HQ] gates.
void fused_gates(const nsajit_problem& p, const void** g, int64_t* sb, int64_t* st, int64_t* sh) {
  for (int i = 0; i < 3; ++i) g[i] = at(0x800000 + 2 * static_cast<uintptr_t>(i));
  *sb = p.T * p.HQ * 3, *st = p.HQ * 3, *sh = 3;
}

}  // namespace

TEST_CASE("C ABI (pkg): version, ABI version, NVRTC and struct layouts for bindings") {
  CHECK(std::string(nsajit_version()) == NSAJIT_VERSION);
  const char* nvrtc = nsajit_nvrtc_library();
  REQUIRE_MESSAGE(nvrtc != nullptr, last());
  CHECK_CONTAINS(std::string(nvrtc), "libnvrtc.so");
  CHECK(nsajit_abi_version() == NSAJIT_ABI_VERSION);
  CHECK(nsajit_struct_layout("nsajit_problem", nullptr) == static_cast<int64_t>(sizeof(nsajit_problem)));
  CHECK(nsajit_struct_layout("nsajit_tensor", nullptr) == static_cast<int64_t>(sizeof(nsajit_tensor)));
  CHECK(nsajit_struct_layout("nsajit_forward_tensors", nullptr) ==
        static_cast<int64_t>(sizeof(nsajit_forward_tensors)));
  CHECK(nsajit_struct_layout("nsajit_backward_tensors", nullptr) ==
        static_cast<int64_t>(sizeof(nsajit_backward_tensors)));
  CHECK(nsajit_struct_layout("nsajit_slc_args", nullptr) == static_cast<int64_t>(sizeof(nsajit_slc_args)));
  CHECK(nsajit_struct_layout("nsajit_problem", "scale") == static_cast<int64_t>(offsetof(nsajit_problem, scale)));
  CHECK(nsajit_struct_layout("nsajit_forward_tensors", "max_seqlen") ==
        static_cast<int64_t>(offsetof(nsajit_forward_tensors, max_seqlen)));
  CHECK(nsajit_struct_layout("nsajit_forward_tensors", "gate_stride_h") ==
        static_cast<int64_t>(offsetof(nsajit_forward_tensors, gate_stride_h)));
  CHECK(nsajit_struct_layout("nsajit_backward_tensors", "dv_cmp") ==
        static_cast<int64_t>(offsetof(nsajit_backward_tensors, dv_cmp)));
  CHECK(nsajit_struct_layout("nsajit_backward_tensors", "workspace_bytes") ==
        static_cast<int64_t>(offsetof(nsajit_backward_tensors, workspace_bytes)));
  CHECK(nsajit_struct_layout("nsajit_tensor", "stride_h") == static_cast<int64_t>(offsetof(nsajit_tensor, stride_h)));
  CHECK(nsajit_struct_layout("nsajit_problem", "no_such_field") == -1);
  CHECK(nsajit_struct_layout("no_such_struct", nullptr) == -1);
  CHECK(nsajit_struct_layout(nullptr, "scale") == -1);
  // The fields added for the package sit at the end of the forward's struct: older fields keep their offsets.
  CHECK(offsetof(nsajit_forward_tensors, gate_stride_h) > offsetof(nsajit_forward_tensors, workspace_bytes));
}

TEST_CASE("C ABI (pkg): a valid backward, forward and branch call with a gate head stride or max_seqlen gets past "
          "every check and stops only for want of a GPU") {
  std::string why;
  if (nsajit::driver_available(&why)) {
    MESSAGE("skipped: a GPU is present, and these calls would launch on fake pointers");
    return;
  }
  for (Batch batch : {Batch::fixed, Batch::host, Batch::bounded}) {
    CAPTURE(static_cast<int>(batch));
    auto b = make_bwd(batch);
    CHECK(nsajit_backward(&b->p, &b->t, nullptr) == NSAJIT_ERROR);
    CHECK_CONTAINS(last(), why);
    fused_gates(b->p, &b->t.g_cmp, &b->t.gate_stride_b, &b->t.gate_stride_t, &b->t.gate_stride_h);
    b->t.g_slc = at(0x800002), b->t.g_win = at(0x800004);
    CHECK(nsajit_backward(&b->p, &b->t, nullptr) == NSAJIT_ERROR);
    CHECK_CONTAINS(last(), why);
    auto f = make_fwd(batch);
    CHECK(nsajit_forward(&f->p, &f->f, nullptr) == NSAJIT_ERROR);
    CHECK_CONTAINS(last(), why);
    fused_gates(f->p, &f->f.g_cmp, &f->f.gate_stride_b, &f->f.gate_stride_t, &f->f.gate_stride_h);
    f->f.g_slc = at(0x800002), f->f.g_win = at(0x800004);
    CHECK(nsajit_forward(&f->p, &f->f, nullptr) == NSAJIT_ERROR);
    CHECK_CONTAINS(last(), why);
  }
  // The branch calls take the head stride and max_seqlen too.
  auto f = make_fwd(Batch::bounded);
  const nsajit_problem& p = f->p;
  nsajit_slc_args s{};
  s.q = f->f.q, s.k = f->f.k, s.v = f->f.v, s.idx = f->f.idx, s.cnt = f->f.cnt;
  s.gate = at(0x800002), s.gate_stride_b = p.T * p.HQ * 3, s.gate_stride_t = p.HQ * 3, s.gate_stride_h = 3;
  s.out = f->f.o;
  s.cu_seqlens = &kDeviceOffsets, s.num_seqs = 4, s.max_seqlen = 100;
  CHECK(nsajit_slc_fwd(&p, &s, nullptr) == NSAJIT_ERROR);
  CHECK_CONTAINS(last(), why);
  nsajit_attn_args w{};
  w.q = f->f.q, w.k = f->f.k, w.v = f->f.v;
  w.gate = at(0x800004), w.gate_stride_b = p.T * p.HQ * 3, w.gate_stride_t = p.HQ * 3, w.gate_stride_h = 3;
  w.out = f->f.o;
  w.cu_seqlens = &kDeviceOffsets, w.num_seqs = 4, w.max_seqlen = 100;
  CHECK(nsajit_win_fwd(&p, &w, nullptr) == NSAJIT_ERROR);
  CHECK_CONTAINS(last(), why);
}

TEST_CASE("C ABI (pkg): the backward refuses every bad argument with a message naming it") {
  struct Row {
    const char* what;
    Batch batch;
    std::function<void(BwdArgs&)> edit;
    const char* expected;
  };
  const std::vector<Row> rows = {
      {"all gates null", Batch::fixed,
       [](BwdArgs& a) { a.t.g_cmp = a.t.g_slc = a.t.g_win = nullptr; }, "backward: all three gates are null"},
      {"dq null", Batch::fixed, [](BwdArgs& a) { a.t.dq.data = nullptr; }, "backward: dq is required here (null)"},
      {"do null", Batch::fixed, [](BwdArgs& a) { a.t.dout.data = nullptr; }, "backward: do is required here (null)"},
      {"dk null with the mean pool", Batch::fixed, [](BwdArgs& a) { a.t.dk.data = nullptr; },
       "backward: dk is required here (null)"},
      {"o_slc not saved", Batch::fixed, [](BwdArgs& a) { a.t.o_slc.data = nullptr; },
       "backward: o_slc (the slc branch's output saved by the forward) is required"},
      {"lse_win not saved", Batch::fixed, [](BwdArgs& a) { a.t.lse_win = nullptr; },
       "backward: lse_win (saved by the forward) is required"},
      {"idx not saved", Batch::fixed, [](BwdArgs& a) { a.t.idx = nullptr; },
       "backward: idx and cnt (the forward's selection) are required when g_slc is given"},
      {"q misaligned", Batch::fixed, [](BwdArgs& a) { a.t.q.data = at(0x100002); },
       "backward: q is not 16-byte aligned"},
      {"negative gate head stride", Batch::fixed, [](BwdArgs& a) { a.t.gate_stride_h = -3; },
       "backward: gate's head stride -3 must be non-negative"},
      {"dk_cmp without k_cmp", Batch::fixed,
       [](BwdArgs& a) { a.t.dk_cmp = a.t.dk, a.t.dv_cmp = a.t.dv; },
       "dk_cmp/dv_cmp are given but k_cmp/v_cmp are not"},
      {"dg_slc without g_slc", Batch::fixed,
       [](BwdArgs& a) { a.t.g_slc = nullptr, a.t.o_slc.data = nullptr, a.t.lse_slc = nullptr; },
       "backward: dg_slc is given but g_slc is null"},
      {"workspace too small", Batch::fixed,
       [](BwdArgs& a) { a.t.workspace = ptr<void>(0x10000000), a.t.workspace_bytes = 4096; },
       "backward: workspace of 4096 bytes is too small"},
      {"workspace misaligned", Batch::fixed,
       [](BwdArgs& a) { a.t.workspace = ptr<void>(0x10000010), a.t.workspace_bytes = size_t{1} << 40; },
       "backward: workspace is not 256-byte aligned"},
      {"host offsets and max_seqlen", Batch::host, [](BwdArgs& a) { a.t.max_seqlen = 100; },
       "nsajit_backward: varlen: give either cu_seqlens_host or max_seqlen = 100, not both"},
      {"max_seqlen without varlen", Batch::fixed, [](BwdArgs& a) { a.t.max_seqlen = 100; },
       "nsajit_backward: max_seqlen = 100 is given but cu_seqlens is null"},
      {"neither host offsets nor max_seqlen", Batch::bounded, [](BwdArgs& a) { a.t.max_seqlen = 0; },
       "nsajit_backward: varlen: cu_seqlens_host is a null pointer and max_seqlen is 0"},
      {"negative max_seqlen", Batch::bounded, [](BwdArgs& a) { a.t.max_seqlen = -5; },
       "backward: varlen: max_seqlen = -5 must be in 1 .. 2^31 - 1"},
      {"num_seqs 0 with max_seqlen", Batch::bounded, [](BwdArgs& a) { a.t.num_seqs = 0; },
       "nsajit_backward: varlen: num_seqs = 0 must be >= 1"},
      {"num_seqs past the grid with max_seqlen", Batch::bounded, [](BwdArgs& a) { a.t.num_seqs = 65536; },
       "num_seqs = 65536 sequences: at most 65535"},
      {"T does not fit the sequences", Batch::bounded, [](BwdArgs& a) { a.t.max_seqlen = 63; },
       "backward: varlen: T = 256 tokens do not fit num_seqs = 4 sequences of at most max_seqlen = 63"},
      {"varlen with B = 2", Batch::bounded, [](BwdArgs& a) { a.p.B = 2; }, "varlen needs B = 1"},
      {"offsets decreasing", Batch::host, [](BwdArgs& a) { a.offsets[2] = 50; },
       "cu_seqlens[2] = 50 < cu_seqlens[1] = 100"},
      {"bad heads", Batch::fixed, [](BwdArgs& a) { a.p.H = 5; }, "not a multiple of H = 5"},
  };
  for (const Row& r : rows) {
    CAPTURE(std::string(r.what));
    auto a = make_bwd(r.batch);
    r.edit(*a);
    CHECK(nsajit_backward(&a->p, &a->t, nullptr) == NSAJIT_USAGE);
    CHECK_CONTAINS(last(), std::string(r.expected));
  }
  auto a = make_bwd(Batch::fixed);
  CHECK(nsajit_backward(nullptr, &a->t, nullptr) == NSAJIT_USAGE);
  CHECK_CONTAINS(last(), "nsajit_backward: problem is a null pointer");
  CHECK(nsajit_backward(&a->p, nullptr, nullptr) == NSAJIT_USAGE);
  CHECK_CONTAINS(last(), "nsajit_backward: tensors is a null pointer");
}

TEST_CASE("C ABI (pkg): the forward refuses a bad gate head stride and bad varlen bounds") {
  struct Row {
    const char* what;
    Batch batch;
    std::function<void(FwdArgs&)> edit;
    const char* expected;
  };
  const std::vector<Row> rows = {
      {"negative gate head stride", Batch::fixed, [](FwdArgs& a) { a.f.gate_stride_h = -1; },
       "forward: gate_stride_b = 4096, gate_stride_t = 16 and gate_stride_h = -1 must be non-negative"},
      {"host offsets and max_seqlen", Batch::host, [](FwdArgs& a) { a.f.max_seqlen = 256; },
       "nsajit_forward: varlen: give either cu_seqlens_host or max_seqlen = 256, not both"},
      {"max_seqlen without varlen", Batch::fixed, [](FwdArgs& a) { a.f.max_seqlen = 7; },
       "nsajit_forward: max_seqlen = 7 is given but cu_seqlens is null"},
      {"T does not fit", Batch::bounded, [](FwdArgs& a) { a.f.num_seqs = 2; },
       "forward: varlen: T = 256 tokens do not fit num_seqs = 2 sequences of at most max_seqlen = 100"},
      {"max_seqlen past 2^31", Batch::bounded, [](FwdArgs& a) { a.f.max_seqlen = int64_t{1} << 31; },
       "forward: varlen: max_seqlen = 2147483648 must be in 1 .. 2^31 - 1"},
      {"workspace too small for the bound", Batch::bounded,
       [](FwdArgs& a) { a.f.workspace = ptr<void>(0x10000000), a.f.workspace_bytes = 1024; },
       "forward: workspace of 1024 bytes is too small"},
  };
  for (const Row& r : rows) {
    CAPTURE(std::string(r.what));
    auto a = make_fwd(r.batch);
    r.edit(*a);
    CHECK(nsajit_forward(&a->p, &a->f, nullptr) == NSAJIT_USAGE);
    CHECK_CONTAINS(last(), std::string(r.expected));
  }
  // The branch calls check the head stride themselves.
  auto f = make_fwd(Batch::fixed);
  nsajit_attn_args w{};
  w.q = f->f.q, w.k = f->f.k, w.v = f->f.v, w.out = f->f.o, w.gate = at(0x800000);
  w.gate_stride_b = f->p.T * f->p.HQ, w.gate_stride_t = f->p.HQ, w.gate_stride_h = -2;
  CHECK(nsajit_win_fwd(&f->p, &w, nullptr) == NSAJIT_USAGE);
  CHECK_CONTAINS(last(), "win_fwd: gate's head stride -2 must be non-negative");
  nsajit_slc_args s{};
  s.q = f->f.q, s.k = f->f.k, s.v = f->f.v, s.idx = f->f.idx, s.cnt = f->f.cnt, s.out = f->f.o;
  s.gate = at(0x800000), s.gate_stride_b = w.gate_stride_b, s.gate_stride_t = w.gate_stride_t, s.gate_stride_h = -2;
  CHECK(nsajit_slc_fwd(&f->p, &s, nullptr) == NSAJIT_USAGE);
  CHECK_CONTAINS(last(), "slc_fwd: gate's head stride -2 must be non-negative");
}

TEST_CASE("C ABI (pkg): backward workspace size follows the call's branches and batch; errors give 0") {
  auto a = make_bwd(Batch::fixed);
  size_t all = 0;
  REQUIRE(nsajit_backward_workspace_size(&a->p, &a->t, &all) == NSAJIT_OK);
  CHECK(all % 256 == 0);
  {
    nsajit::Problem p = nsajit::preset("fla");
    p.B = 2, p.T = 256, p.HQ = 16, p.H = 4;
    CHECK(all == nsajit::backward_workspace_bytes(p));
  }
  a->t.g_slc = nullptr;  // no selected branch: no inverted index
  size_t no_slc = 0;
  REQUIRE(nsajit_backward_workspace_size(&a->p, &a->t, &no_slc) == NSAJIT_OK);
  CHECK(no_slc < all);
  a->t.g_win = nullptr;
  a->t.g_cmp = nullptr;
  size_t bytes = 99;
  CHECK(nsajit_backward_workspace_size(&a->p, &a->t, &bytes) == NSAJIT_USAGE);
  CHECK(bytes == 0);
  CHECK_CONTAINS(last(), "all three gates are null");
  CHECK(nsajit_backward_workspace_size(&a->p, &a->t, nullptr) == NSAJIT_USAGE);
  CHECK_CONTAINS(last(), "nsajit_backward_workspace_size: bytes is a null pointer");
  CHECK(nsajit_backward_workspace_size(&a->p, nullptr, &bytes) == NSAJIT_USAGE);
  CHECK_CONTAINS(last(), "nsajit_backward_workspace_size: tensors is a null pointer");

  // Varlen: the bounds from (T, num_seqs, max_seqlen) hold the exact layout's scratch.
  auto host = make_bwd(Batch::host);
  auto bounded = make_bwd(Batch::bounded);
  size_t exact = 0, bound = 0;
  REQUIRE(nsajit_backward_workspace_size(&host->p, &host->t, &exact) == NSAJIT_OK);
  REQUIRE(nsajit_backward_workspace_size(&bounded->p, &bounded->t, &bound) == NSAJIT_OK);
  CHECK(bound >= exact);
  CHECK(exact > 0);
}

// The upper bounds against the exact sums, over random batches (fixed seed): every field, every block shape; and
// the forward and backward scratch sized by them holds what the exact layout needs.
TEST_CASE("C ABI (pkg): varlen scratch bounds from (T, num_seqs, max_seqlen) hold every batch") {
  using nsajit::BatchLayout;
  using nsajit::BatchSums;
  std::mt19937_64 rng(20261201);
  const int32_t device = 0;
  const int shapes[][3] = {{32, 16, 64}, {64, 64, 64}, {32, 32, 64}, {64, 32, 64}};
  int checked = 0, tight = 0;
  for (int trial = 0; trial < 600; ++trial) {
    nsajit::Problem p = nsajit::preset("fla");
    const auto& s = shapes[trial % 4];
    p.l = s[0], p.d = s[1], p.lsel = s[2];
    p.HQ = 16, p.H = 4;
    const int N = 1 + static_cast<int>(rng() % (trial % 3 == 0 ? 3 : 40));
    std::vector<int32_t> cu = {0};
    int64_t longest = 0;
    for (int i = 0; i < N; ++i) {
      const int64_t len = rng() % 5 == 0 ? 0 : static_cast<int64_t>(rng() % (trial % 2 ? 300 : 3000));
      longest = std::max(longest, len);
      cu.push_back(cu.back() + static_cast<int32_t>(len));
    }
    if (cu.back() == 0) continue;
    p.B = 1, p.T = cu.back();
    BatchLayout exact;
    exact.cu_seqlens = &device, exact.cu_seqlens_host = cu;
    BatchLayout bounded;
    bounded.cu_seqlens = &device, bounded.num_seqs = N;
    bounded.max_seqlen = longest + static_cast<int64_t>(rng() % 3) * static_cast<int64_t>(rng() % 50);
    CAPTURE(p.describe());
    CAPTURE(N);
    CAPTURE(bounded.max_seqlen);
    nsajit::check_batch("test", p, exact, true);
    nsajit::check_batch("test", p, bounded, true);
    const BatchSums e = nsajit::batch_sums(p, exact), b = nsajit::batch_sums(p, bounded);
    CHECK(b.tokens == e.tokens);
    CHECK(b.cmp_blocks >= e.cmp_blocks);
    CHECK(b.sel_blocks >= e.sel_blocks);
    CHECK(b.mask_words >= e.mask_words);
    if (b.cmp_blocks == e.cmp_blocks && b.sel_blocks == e.sel_blocks) ++tight;
    nsajit_problem cp{};
    REQUIRE(nsajit_preset("fla", &cp) == NSAJIT_OK);
    cp.B = 1, cp.T = p.T, cp.HQ = p.HQ, cp.H = p.H, cp.l = p.l, cp.d = p.d, cp.lsel = p.lsel;
    int64_t rows = -1;
    REQUIRE(nsajit_varlen_cmp_rows(&cp, N, bounded.max_seqlen, &rows) == NSAJIT_OK);
    CHECK(rows == b.cmp_blocks);

    // The backward's scratch, exact and bounded; the forward's fixed size holds the bounded layout.
    nsajit::BackwardTensors t;
    int dummy = 0;
    t.g_cmp = t.g_slc = t.g_win = &dummy;
    t.cu_seqlens = &device, t.cu_seqlens_host = cu;
    const size_t bwd_exact = nsajit::backward_workspace_bytes(p, t);
    t.cu_seqlens_host = {}, t.num_seqs = N, t.max_seqlen = bounded.max_seqlen;
    CHECK(nsajit::backward_workspace_bytes(p, t) >= bwd_exact);
    CHECK(nsajit::backward_cmp_rows(p, t) == b.cmp_blocks);
    ++checked;
  }
  MESSAGE(checked << " batches, " << tight << " with tight block bounds");
  CHECK(checked > 500);
  CHECK(tight > 0);

  // One sequence of T tokens: the bounds are the exact sums.
  nsajit::Problem p = nsajit::preset("paper");
  p.B = 1, p.T = 1000;
  BatchLayout one;
  one.cu_seqlens = &device, one.num_seqs = 1, one.max_seqlen = 1000;
  const BatchSums b = nsajit::batch_sums(p, one);
  CHECK(b.cmp_blocks == (1000 - 32) / 16 + 1);
  CHECK(b.sel_blocks == (1000 + 63) / 64);
  CHECK(b.mask_words == 16 * 32);
  int64_t rows = 0;
  nsajit_problem cp{};
  REQUIRE(nsajit_preset("paper", &cp) == NSAJIT_OK);
  cp.T = 1000;
  CHECK(nsajit_varlen_cmp_rows(&cp, 1, 0, &rows) == NSAJIT_USAGE);
  CHECK_CONTAINS(last(), "nsajit_varlen_cmp_rows: max_seqlen = 0 must be >= 1");
  CHECK(nsajit_varlen_cmp_rows(&cp, 0, 10, &rows) == NSAJIT_USAGE);
  CHECK_CONTAINS(last(), "num_seqs = 0 must be >= 1");
  CHECK(nsajit_varlen_cmp_rows(&cp, 2, 10, &rows) == NSAJIT_USAGE);
  CHECK_CONTAINS(last(), "T = 1000 tokens do not fit num_seqs = 2 sequences of at most max_seqlen = 10");
  CHECK(nsajit_varlen_cmp_rows(&cp, 2, 10, nullptr) == NSAJIT_USAGE);
  CHECK_CONTAINS(last(), "rows is a null pointer");
  // max_seqlen past T is taken as T.
  REQUIRE(nsajit_varlen_cmp_rows(&cp, 1, 5000, &rows) == NSAJIT_OK);
  CHECK(rows == (1000 - 32) / 16 + 1);
}

#ifdef NSAJIT_SHARED_PATH
// libnsajit.so: exports the C ABI and nothing else, needs no NVRTC, libstdc++ or SQLite of the system, and works
// when loaded alone (as ctypes loads it).
TEST_CASE("C ABI (pkg): libnsajit.so exports nsajit_* only and needs only libc, libm and the loader") {
  const std::string so = NSAJIT_SHARED_PATH;
  const Run exports = run_shell("nm -D --defined-only " + quoted(so) + " 2>&1");
  REQUIRE(exports.code == 0);
  std::vector<std::string> exported;
  std::string others;
  for (size_t at = 0; at < exports.output.size();) {
    const size_t end = exports.output.find('\n', at);
    const std::string line = exports.output.substr(at, end == std::string::npos ? std::string::npos : end - at);
    at = end == std::string::npos ? exports.output.size() : end + 1;
    const size_t space = line.rfind(' ');
    if (line.empty() || space == std::string::npos) continue;
    const std::string name = line.substr(space + 1);
    if (name.rfind("nsajit_", 0) == 0) {
      exported.push_back(name);
    } else {
      others += name + " ";
    }
  }
  CHECK_MESSAGE(others.empty(), "exported besides nsajit_*: " << others);
  std::sort(exported.begin(), exported.end());
  const std::vector<std::string> api = {
      "nsajit_abi_version", "nsajit_backward", "nsajit_backward_workspace_size", "nsajit_cmp_fwd", "nsajit_decode",
      "nsajit_decode_append", "nsajit_decode_workspace_size", "nsajit_forward",
      "nsajit_forward_workspace_bytes", "nsajit_forward_workspace_size", "nsajit_last_error", "nsajit_mean_pool",
      "nsajit_nvrtc_library", "nsajit_preset", "nsajit_select", "nsajit_slc_fwd", "nsajit_struct_layout",
      "nsajit_varlen_cmp_rows", "nsajit_version", "nsajit_win_fwd"};
  CHECK(exported == api);
  const Run dynamic = run_shell("readelf -d " + quoted(so) + " 2>&1");
  REQUIRE(dynamic.code == 0);
  CHECK_NOT_CONTAINS(dynamic.output, "libnvrtc");
  CHECK_NOT_CONTAINS(dynamic.output, "libstdc++");
  CHECK_NOT_CONTAINS(dynamic.output, "libsqlite3");
  CHECK_NOT_CONTAINS(dynamic.output, "libcuda");
  CHECK_NOT_CONTAINS(dynamic.output, "TEXTREL");
  CHECK_CONTAINS(dynamic.output, "$ORIGIN/../nvidia/cu13/lib");
  CHECK_NOT_CONTAINS(dynamic.output, ":]");  // an empty RUNPATH entry would search the working directory
  CHECK_NOT_CONTAINS(dynamic.output, "::");

  void* lib = dlopen(so.c_str(), RTLD_NOW | RTLD_LOCAL);
  REQUIRE_MESSAGE(lib != nullptr, dlerror());
  using VersionFn = const char* (*)();
  using PresetFn = int (*)(const char*, nsajit_problem*);
  using ErrorFn = const char* (*)();
  auto version = reinterpret_cast<VersionFn>(dlsym(lib, "nsajit_version"));
  auto preset = reinterpret_cast<PresetFn>(dlsym(lib, "nsajit_preset"));
  auto error = reinterpret_cast<ErrorFn>(dlsym(lib, "nsajit_last_error"));
  REQUIRE((version != nullptr && preset != nullptr && error != nullptr));
  CHECK(std::string(version()) == NSAJIT_VERSION);
  nsajit_problem p{};
  CHECK(preset("nope", &p) == NSAJIT_USAGE);
  CHECK_CONTAINS(std::string(error()), "unknown preset 'nope'");
  CHECK(dlsym(lib, "sqlite3_open") == nullptr);  // SQLite stays inside
  dlclose(lib);
}
#endif
