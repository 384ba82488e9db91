#include "runtime/nsajit_c.h"

#include <fmt/format.h>

#include <cstddef>
#include <cstring>
#include <exception>
#include <span>
#include <string>

#include "base/error.h"
#include "runtime/attn_fwd_api.h"
#include "runtime/backward.h"
#include "runtime/decode_api.h"
#include "runtime/forward.h"
#include "runtime/nvrtc_compiler.h"
#include "runtime/pool_api.h"
#include "runtime/select_api.h"
#include "runtime/slc_fwd_api.h"
#include "runtime/validate.h"

namespace nsajit {
namespace {

thread_local std::string last_error;

// Runs `body`, turning exceptions into the C ABI's codes and message.
template <class F>
int guarded(F&& body) {
  try {
    last_error.clear();
    body();
    return NSAJIT_OK;
  } catch (const UsageError& e) {
    last_error = e.what();
    return NSAJIT_USAGE;
  } catch (const std::exception& e) {
    last_error = e.what();
    return NSAJIT_ERROR;
  } catch (...) {
    last_error = "unknown error";
    return NSAJIT_ERROR;
  }
}

Problem to_problem(const char* who, const nsajit_problem* c) {
  if (c == nullptr) throw UsageError(fmt::format("{}: problem is a null pointer", who));
  if (c->dtype != NSAJIT_BF16 && c->dtype != NSAJIT_FP16)
    throw UsageError(fmt::format("{}: bad dtype {}: use NSAJIT_BF16 (0) or NSAJIT_FP16 (1)", who, c->dtype));
  Problem p;
  p.dtype = c->dtype == NSAJIT_BF16 ? Dtype::bf16 : Dtype::fp16;
  p.B = c->B, p.T = c->T, p.HQ = c->HQ, p.H = c->H, p.dk = c->dk, p.dv = c->dv;
  p.l = c->l, p.d = c->d, p.lsel = c->lsel, p.n = c->n, p.w = c->w, p.scale = c->scale;
  p.validate();
  return p;
}

TensorView view(const nsajit_tensor& t) { return {t.data, t.stride_b, t.stride_t, t.stride_h}; }

// The varlen layout in the C++ API's terms: the host offsets as a span of num_seqs + 1 (then the C++ num_seqs and
// max_seqlen are 0), or num_seqs and max_seqlen with no host offsets; after checking what can be checked before
// reading any offset (the caller's array must hold num_seqs + 1 values: that cannot be checked).
struct CBatch {
  std::span<const int32_t> host;
  int64_t num_seqs = 0, max_seqlen = 0;
};

CBatch c_batch(const char* who, const int32_t* device, const int32_t* host, int64_t num_seqs, int64_t max_seqlen) {
  if (device == nullptr) {
    if (host != nullptr || num_seqs != 0)
      throw UsageError(fmt::format("{}: cu_seqlens_host or num_seqs = {} is given but cu_seqlens is null (varlen "
                                   "needs the device offsets too; without varlen leave both 0)",
                                   who, num_seqs));
    if (max_seqlen != 0)
      throw UsageError(fmt::format("{}: max_seqlen = {} is given but cu_seqlens is null (without varlen leave it 0)",
                                   who, max_seqlen));
    return {};
  }
  if (host == nullptr && max_seqlen == 0)
    throw UsageError(fmt::format("{}: varlen: cu_seqlens_host is a null pointer and max_seqlen is 0 (give the host "
                                 "offsets, or max_seqlen and num_seqs)",
                                 who));
  if (host != nullptr && max_seqlen != 0)
    throw UsageError(fmt::format("{}: varlen: give either cu_seqlens_host or max_seqlen = {}, not both", who,
                                 max_seqlen));
  if (num_seqs < 1) throw UsageError(fmt::format("{}: varlen: num_seqs = {} must be >= 1", who, num_seqs));
  if (num_seqs > kMaxGridYZ)
    throw UsageError(fmt::format("{}: varlen: num_seqs = {} sequences: at most {} (the grid's z dimension)", who,
                                 num_seqs, kMaxGridYZ));
  if (host == nullptr) return {{}, num_seqs, max_seqlen};
  return {{host, static_cast<size_t>(num_seqs + 1)}, 0, 0};
}

template <class T>
const T& require(const char* who, const T* p, const char* what) {
  if (p == nullptr) throw UsageError(fmt::format("{}: {} is a null pointer", who, what));
  return *p;
}

BackwardTensors backward_tensors(const char* who, const nsajit_backward_tensors& c) {
  BackwardTensors t;
  t.q = view(c.q), t.k = view(c.k), t.v = view(c.v);
  t.k_slc = view(c.k_slc), t.v_slc = view(c.v_slc), t.k_win = view(c.k_win), t.v_win = view(c.v_win);
  t.k_cmp = view(c.k_cmp), t.v_cmp = view(c.v_cmp);
  t.g_cmp = c.g_cmp, t.g_slc = c.g_slc, t.g_win = c.g_win;
  t.gate_stride_b = c.gate_stride_b, t.gate_stride_t = c.gate_stride_t, t.gate_stride_h = c.gate_stride_h;
  t.o_cmp = view(c.o_cmp), t.o_slc = view(c.o_slc), t.o_win = view(c.o_win);
  t.lse_cmp = c.lse_cmp, t.lse_slc = c.lse_slc, t.lse_win = c.lse_win;
  t.lse_stride_b = c.lse_stride_b, t.lse_stride_t = c.lse_stride_t;
  t.idx = c.idx, t.cnt = c.cnt;
  t.dout = view(c.dout);
  t.dq = view(c.dq), t.dk = view(c.dk), t.dv = view(c.dv);
  t.dk_slc = view(c.dk_slc), t.dv_slc = view(c.dv_slc), t.dk_win = view(c.dk_win), t.dv_win = view(c.dv_win);
  t.dk_cmp = view(c.dk_cmp), t.dv_cmp = view(c.dv_cmp);
  t.dg_cmp = c.dg_cmp, t.dg_slc = c.dg_slc, t.dg_win = c.dg_win;
  t.dg_stride_b = c.dg_stride_b, t.dg_stride_t = c.dg_stride_t;
  const CBatch b = c_batch(who, c.cu_seqlens, c.cu_seqlens_host, c.num_seqs, c.max_seqlen);
  t.cu_seqlens = c.cu_seqlens, t.cu_seqlens_host = b.host, t.num_seqs = b.num_seqs, t.max_seqlen = b.max_seqlen;
  t.workspace = c.workspace, t.workspace_bytes = c.workspace_bytes;
  return t;
}

AttnFwdArgs attn_args(const char* who, const nsajit_attn_args& a) {
  AttnFwdArgs r;
  r.q = view(a.q), r.k = view(a.k), r.v = view(a.v), r.o = view(a.o);
  r.lse = a.lse, r.lse_stride_b = a.lse_stride_b, r.lse_stride_t = a.lse_stride_t;
  r.gate = a.gate, r.gate_stride_b = a.gate_stride_b, r.gate_stride_t = a.gate_stride_t;
  r.gate_stride_h = a.gate_stride_h;
  r.out = view(a.out), r.accumulate = a.accumulate != 0;
  const CBatch b = c_batch(who, a.cu_seqlens, a.cu_seqlens_host, a.num_seqs, a.max_seqlen);
  r.cu_seqlens = a.cu_seqlens, r.cu_seqlens_host = b.host, r.num_seqs = b.num_seqs, r.max_seqlen = b.max_seqlen;
  return r;
}

// The struct layouts bindings mirror (nsajit_struct_layout).
struct FieldLayout {
  const char* type;
  const char* field;  // null: the struct's size
  size_t value;
};
#define NSAJIT_FIELD(S, F) FieldLayout{#S, #F, offsetof(S, F)}
#define NSAJIT_SIZE(S) FieldLayout{#S, nullptr, sizeof(S)}
const FieldLayout kLayouts[] = {
    NSAJIT_SIZE(nsajit_problem), NSAJIT_SIZE(nsajit_tensor), NSAJIT_SIZE(nsajit_forward_tensors),
    NSAJIT_SIZE(nsajit_backward_tensors), NSAJIT_SIZE(nsajit_attn_args), NSAJIT_SIZE(nsajit_select_args),
    NSAJIT_SIZE(nsajit_slc_args), NSAJIT_SIZE(nsajit_decode_tensors), NSAJIT_SIZE(nsajit_decode_append_tensors),
    // nsajit_problem
    NSAJIT_FIELD(nsajit_problem, dtype), NSAJIT_FIELD(nsajit_problem, B), NSAJIT_FIELD(nsajit_problem, T),
    NSAJIT_FIELD(nsajit_problem, HQ), NSAJIT_FIELD(nsajit_problem, H), NSAJIT_FIELD(nsajit_problem, dk),
    NSAJIT_FIELD(nsajit_problem, dv), NSAJIT_FIELD(nsajit_problem, l), NSAJIT_FIELD(nsajit_problem, d),
    NSAJIT_FIELD(nsajit_problem, lsel), NSAJIT_FIELD(nsajit_problem, n), NSAJIT_FIELD(nsajit_problem, w),
    NSAJIT_FIELD(nsajit_problem, scale),
    // nsajit_tensor
    NSAJIT_FIELD(nsajit_tensor, data), NSAJIT_FIELD(nsajit_tensor, stride_b), NSAJIT_FIELD(nsajit_tensor, stride_t),
    NSAJIT_FIELD(nsajit_tensor, stride_h),
    // nsajit_forward_tensors
    NSAJIT_FIELD(nsajit_forward_tensors, q), NSAJIT_FIELD(nsajit_forward_tensors, k),
    NSAJIT_FIELD(nsajit_forward_tensors, v), NSAJIT_FIELD(nsajit_forward_tensors, k_slc),
    NSAJIT_FIELD(nsajit_forward_tensors, v_slc), NSAJIT_FIELD(nsajit_forward_tensors, k_win),
    NSAJIT_FIELD(nsajit_forward_tensors, v_win), NSAJIT_FIELD(nsajit_forward_tensors, k_cmp),
    NSAJIT_FIELD(nsajit_forward_tensors, v_cmp), NSAJIT_FIELD(nsajit_forward_tensors, g_cmp),
    NSAJIT_FIELD(nsajit_forward_tensors, g_slc), NSAJIT_FIELD(nsajit_forward_tensors, g_win),
    NSAJIT_FIELD(nsajit_forward_tensors, gate_stride_b), NSAJIT_FIELD(nsajit_forward_tensors, gate_stride_t),
    NSAJIT_FIELD(nsajit_forward_tensors, o), NSAJIT_FIELD(nsajit_forward_tensors, o_cmp),
    NSAJIT_FIELD(nsajit_forward_tensors, o_slc), NSAJIT_FIELD(nsajit_forward_tensors, o_win),
    NSAJIT_FIELD(nsajit_forward_tensors, lse_cmp), NSAJIT_FIELD(nsajit_forward_tensors, lse_slc),
    NSAJIT_FIELD(nsajit_forward_tensors, lse_win), NSAJIT_FIELD(nsajit_forward_tensors, lse_stride_b),
    NSAJIT_FIELD(nsajit_forward_tensors, lse_stride_t), NSAJIT_FIELD(nsajit_forward_tensors, idx),
    NSAJIT_FIELD(nsajit_forward_tensors, cnt), NSAJIT_FIELD(nsajit_forward_tensors, cu_seqlens),
    NSAJIT_FIELD(nsajit_forward_tensors, cu_seqlens_host), NSAJIT_FIELD(nsajit_forward_tensors, num_seqs),
    NSAJIT_FIELD(nsajit_forward_tensors, workspace), NSAJIT_FIELD(nsajit_forward_tensors, workspace_bytes),
    NSAJIT_FIELD(nsajit_forward_tensors, gate_stride_h), NSAJIT_FIELD(nsajit_forward_tensors, max_seqlen),
    // nsajit_backward_tensors
    NSAJIT_FIELD(nsajit_backward_tensors, q), NSAJIT_FIELD(nsajit_backward_tensors, k),
    NSAJIT_FIELD(nsajit_backward_tensors, v), NSAJIT_FIELD(nsajit_backward_tensors, k_slc),
    NSAJIT_FIELD(nsajit_backward_tensors, v_slc), NSAJIT_FIELD(nsajit_backward_tensors, k_win),
    NSAJIT_FIELD(nsajit_backward_tensors, v_win), NSAJIT_FIELD(nsajit_backward_tensors, k_cmp),
    NSAJIT_FIELD(nsajit_backward_tensors, v_cmp), NSAJIT_FIELD(nsajit_backward_tensors, g_cmp),
    NSAJIT_FIELD(nsajit_backward_tensors, g_slc), NSAJIT_FIELD(nsajit_backward_tensors, g_win),
    NSAJIT_FIELD(nsajit_backward_tensors, gate_stride_b), NSAJIT_FIELD(nsajit_backward_tensors, gate_stride_t),
    NSAJIT_FIELD(nsajit_backward_tensors, gate_stride_h), NSAJIT_FIELD(nsajit_backward_tensors, o_cmp),
    NSAJIT_FIELD(nsajit_backward_tensors, o_slc), NSAJIT_FIELD(nsajit_backward_tensors, o_win),
    NSAJIT_FIELD(nsajit_backward_tensors, lse_cmp), NSAJIT_FIELD(nsajit_backward_tensors, lse_slc),
    NSAJIT_FIELD(nsajit_backward_tensors, lse_win), NSAJIT_FIELD(nsajit_backward_tensors, lse_stride_b),
    NSAJIT_FIELD(nsajit_backward_tensors, lse_stride_t), NSAJIT_FIELD(nsajit_backward_tensors, idx),
    NSAJIT_FIELD(nsajit_backward_tensors, cnt), NSAJIT_FIELD(nsajit_backward_tensors, dout),
    NSAJIT_FIELD(nsajit_backward_tensors, dq), NSAJIT_FIELD(nsajit_backward_tensors, dk),
    NSAJIT_FIELD(nsajit_backward_tensors, dv), NSAJIT_FIELD(nsajit_backward_tensors, dk_slc),
    NSAJIT_FIELD(nsajit_backward_tensors, dv_slc), NSAJIT_FIELD(nsajit_backward_tensors, dk_win),
    NSAJIT_FIELD(nsajit_backward_tensors, dv_win), NSAJIT_FIELD(nsajit_backward_tensors, dk_cmp),
    NSAJIT_FIELD(nsajit_backward_tensors, dv_cmp), NSAJIT_FIELD(nsajit_backward_tensors, dg_cmp),
    NSAJIT_FIELD(nsajit_backward_tensors, dg_slc), NSAJIT_FIELD(nsajit_backward_tensors, dg_win),
    NSAJIT_FIELD(nsajit_backward_tensors, dg_stride_b), NSAJIT_FIELD(nsajit_backward_tensors, dg_stride_t),
    NSAJIT_FIELD(nsajit_backward_tensors, cu_seqlens), NSAJIT_FIELD(nsajit_backward_tensors, cu_seqlens_host),
    NSAJIT_FIELD(nsajit_backward_tensors, num_seqs), NSAJIT_FIELD(nsajit_backward_tensors, max_seqlen),
    NSAJIT_FIELD(nsajit_backward_tensors, workspace), NSAJIT_FIELD(nsajit_backward_tensors, workspace_bytes),
    NSAJIT_FIELD(nsajit_decode_tensors, q),
    NSAJIT_FIELD(nsajit_decode_tensors, g_cmp),
    NSAJIT_FIELD(nsajit_decode_tensors, g_slc),
    NSAJIT_FIELD(nsajit_decode_tensors, g_win),
    NSAJIT_FIELD(nsajit_decode_tensors, gate_stride_b),
    NSAJIT_FIELD(nsajit_decode_tensors, gate_stride_t),
    NSAJIT_FIELD(nsajit_decode_tensors, gate_stride_h),
    NSAJIT_FIELD(nsajit_decode_tensors, o),
    NSAJIT_FIELD(nsajit_decode_tensors, k_pool),
    NSAJIT_FIELD(nsajit_decode_tensors, v_pool),
    NSAJIT_FIELD(nsajit_decode_tensors, num_pages),
    NSAJIT_FIELD(nsajit_decode_tensors, k_pool_slc),
    NSAJIT_FIELD(nsajit_decode_tensors, v_pool_slc),
    NSAJIT_FIELD(nsajit_decode_tensors, num_pages_slc),
    NSAJIT_FIELD(nsajit_decode_tensors, k_pool_win),
    NSAJIT_FIELD(nsajit_decode_tensors, v_pool_win),
    NSAJIT_FIELD(nsajit_decode_tensors, num_pages_win),
    NSAJIT_FIELD(nsajit_decode_tensors, page_table),
    NSAJIT_FIELD(nsajit_decode_tensors, page_table_stride),
    NSAJIT_FIELD(nsajit_decode_tensors, page_size),
    NSAJIT_FIELD(nsajit_decode_tensors, page_table_host),
    NSAJIT_FIELD(nsajit_decode_tensors, seqlens),
    NSAJIT_FIELD(nsajit_decode_tensors, seqlens_host),
    NSAJIT_FIELD(nsajit_decode_tensors, k_cmp),
    NSAJIT_FIELD(nsajit_decode_tensors, v_cmp),
    NSAJIT_FIELD(nsajit_decode_tensors, max_cmp),
    NSAJIT_FIELD(nsajit_decode_tensors, idx),
    NSAJIT_FIELD(nsajit_decode_tensors, cnt), NSAJIT_FIELD(nsajit_decode_tensors, workspace),
    NSAJIT_FIELD(nsajit_decode_tensors, workspace_bytes),
    NSAJIT_FIELD(nsajit_decode_append_tensors, k_new),
    NSAJIT_FIELD(nsajit_decode_append_tensors, v_new),
    NSAJIT_FIELD(nsajit_decode_append_tensors, k_pool),
    NSAJIT_FIELD(nsajit_decode_append_tensors, v_pool),
    NSAJIT_FIELD(nsajit_decode_append_tensors, num_pages),
    NSAJIT_FIELD(nsajit_decode_append_tensors, page_table),
    NSAJIT_FIELD(nsajit_decode_append_tensors, page_table_stride),
    NSAJIT_FIELD(nsajit_decode_append_tensors, page_size),
    NSAJIT_FIELD(nsajit_decode_append_tensors, page_table_host),
    NSAJIT_FIELD(nsajit_decode_append_tensors, seqlens),
    NSAJIT_FIELD(nsajit_decode_append_tensors, seqlens_host),
    NSAJIT_FIELD(nsajit_decode_append_tensors, k_cmp),
    NSAJIT_FIELD(nsajit_decode_append_tensors, v_cmp),
    NSAJIT_FIELD(nsajit_decode_append_tensors, max_cmp),
};
#undef NSAJIT_FIELD
#undef NSAJIT_SIZE

}  // namespace
}  // namespace nsajit

using namespace nsajit;

extern "C" {

int nsajit_preset(const char* name, nsajit_problem* out) {
  return guarded([&] {
    if (name == nullptr) throw UsageError("nsajit_preset: name is a null pointer");
    if (out == nullptr) throw UsageError("nsajit_preset: out is a null pointer");
    const Problem p = preset(name);
    *out = {p.dtype == Dtype::bf16 ? NSAJIT_BF16 : NSAJIT_FP16, p.B, p.T, p.HQ, p.H, p.dk, p.dv, p.l, p.d, p.lsel, p.n,
         p.w, p.scale};
  });
}

int nsajit_forward_workspace_size(const nsajit_problem* p, size_t* bytes) {
  return guarded([&] {
    if (bytes == nullptr) throw UsageError("nsajit_forward_workspace_size: bytes is a null pointer");
    *bytes = 0;
    *bytes = forward_workspace_bytes(to_problem("nsajit_forward_workspace_size", p));
  });
}

size_t nsajit_forward_workspace_bytes(const nsajit_problem* p) {
  size_t bytes = 0;
  guarded([&] { bytes = forward_workspace_bytes(to_problem("nsajit_forward_workspace_bytes", p)); });
  return bytes;
}

int nsajit_forward(const nsajit_problem* cp, const nsajit_forward_tensors* ct, void* stream) {
  return guarded([&] {
    const Problem p = to_problem("nsajit_forward", cp);
    const nsajit_forward_tensors& c = require("nsajit_forward", ct, "tensors");
    ForwardTensors t;
    t.q = view(c.q), t.k = view(c.k), t.v = view(c.v);
    t.k_slc = view(c.k_slc), t.v_slc = view(c.v_slc), t.k_win = view(c.k_win), t.v_win = view(c.v_win);
    t.k_cmp = view(c.k_cmp), t.v_cmp = view(c.v_cmp);
    t.g_cmp = c.g_cmp, t.g_slc = c.g_slc, t.g_win = c.g_win;
    t.gate_stride_b = c.gate_stride_b, t.gate_stride_t = c.gate_stride_t, t.gate_stride_h = c.gate_stride_h;
    t.o = view(c.o), t.o_cmp = view(c.o_cmp), t.o_slc = view(c.o_slc), t.o_win = view(c.o_win);
    t.lse_cmp = c.lse_cmp, t.lse_slc = c.lse_slc, t.lse_win = c.lse_win;
    t.lse_stride_b = c.lse_stride_b, t.lse_stride_t = c.lse_stride_t;
    t.idx = c.idx, t.cnt = c.cnt;
    const CBatch b = c_batch("nsajit_forward", c.cu_seqlens, c.cu_seqlens_host, c.num_seqs, c.max_seqlen);
    t.cu_seqlens = c.cu_seqlens, t.cu_seqlens_host = b.host, t.num_seqs = b.num_seqs, t.max_seqlen = b.max_seqlen;
    t.workspace = c.workspace, t.workspace_bytes = c.workspace_bytes;
    forward(p, t, static_cast<CUstream>(stream));
  });
}

int nsajit_win_fwd(const nsajit_problem* p, const nsajit_attn_args* a, void* stream) {
  return guarded([&] {
    const char* who = "nsajit_win_fwd";
    const Problem problem = to_problem(who, p);
    win_fwd(problem, attn_args(who, require(who, a, "args")), static_cast<CUstream>(stream));
  });
}

int nsajit_cmp_fwd(const nsajit_problem* p, const nsajit_attn_args* a, void* stream) {
  return guarded([&] {
    const char* who = "nsajit_cmp_fwd";
    const Problem problem = to_problem(who, p);
    cmp_fwd(problem, attn_args(who, require(who, a, "args")), static_cast<CUstream>(stream));
  });
}

int nsajit_select(const nsajit_problem* cp, const nsajit_select_args* ca, void* stream) {
  return guarded([&] {
    const char* who = "nsajit_select";
    const Problem p = to_problem(who, cp);
    const nsajit_select_args& c = require(who, ca, "args");
    SelectArgs a;
    a.q = view(c.q), a.k_cmp = view(c.k_cmp);
    a.lse_cmp = c.lse_cmp, a.lse_stride_b = c.lse_stride_b, a.lse_stride_t = c.lse_stride_t;
    a.idx = c.idx, a.cnt = c.cnt;
    const CBatch b = c_batch(who, c.cu_seqlens, c.cu_seqlens_host, c.num_seqs, c.max_seqlen);
    a.cu_seqlens = c.cu_seqlens, a.cu_seqlens_host = b.host, a.num_seqs = b.num_seqs, a.max_seqlen = b.max_seqlen;
    select_blocks(p, a, static_cast<CUstream>(stream));
  });
}

int nsajit_slc_fwd(const nsajit_problem* cp, const nsajit_slc_args* ca, void* stream) {
  return guarded([&] {
    const char* who = "nsajit_slc_fwd";
    const Problem p = to_problem(who, cp);
    const nsajit_slc_args& c = require(who, ca, "args");
    SlcFwdArgs a;
    a.q = view(c.q), a.k = view(c.k), a.v = view(c.v), a.o_slc = view(c.o_slc);
    a.lse = c.lse, a.lse_stride_b = c.lse_stride_b, a.lse_stride_t = c.lse_stride_t;
    a.idx = c.idx, a.cnt = c.cnt;
    a.gate = c.gate, a.gate_stride_b = c.gate_stride_b, a.gate_stride_t = c.gate_stride_t;
    a.gate_stride_h = c.gate_stride_h;
    a.out = view(c.out), a.accumulate = c.accumulate != 0;
    const CBatch b = c_batch(who, c.cu_seqlens, c.cu_seqlens_host, c.num_seqs, c.max_seqlen);
    a.cu_seqlens = c.cu_seqlens, a.cu_seqlens_host = b.host, a.num_seqs = b.num_seqs, a.max_seqlen = b.max_seqlen;
    slc_fwd(p, a, static_cast<CUstream>(stream));
  });
}

int nsajit_mean_pool(const nsajit_problem* cp, nsajit_tensor x, nsajit_tensor y, int dim, const int32_t* cu_seqlens,
                     const int32_t* cu_seqlens_host, int64_t num_seqs, void* stream) {
  return guarded([&] {
    const char* who = "nsajit_mean_pool";
    const Problem p = to_problem(who, cp);
    PoolArgs a;
    a.x = view(x), a.y = view(y), a.dim = dim;
    if (cu_seqlens != nullptr && cu_seqlens_host == nullptr)
      throw UsageError(fmt::format("{}: varlen: cu_seqlens_host is a null pointer (the pool needs the host offsets)",
                                   who));
    a.cu_seqlens = cu_seqlens, a.cu_seqlens_host = c_batch(who, cu_seqlens, cu_seqlens_host, num_seqs, 0).host;
    mean_pool(p, a, static_cast<CUstream>(stream));
  });
}

int nsajit_backward_workspace_size(const nsajit_problem* cp, const nsajit_backward_tensors* ct, size_t* bytes) {
  return guarded([&] {
    const char* who = "nsajit_backward_workspace_size";
    if (bytes == nullptr) throw UsageError(fmt::format("{}: bytes is a null pointer", who));
    *bytes = 0;
    const Problem p = to_problem(who, cp);
    *bytes = backward_workspace_bytes(p, backward_tensors(who, require(who, ct, "tensors")));
  });
}

int nsajit_backward(const nsajit_problem* cp, const nsajit_backward_tensors* ct, void* stream) {
  return guarded([&] {
    const char* who = "nsajit_backward";
    const Problem p = to_problem(who, cp);
    backward(p, backward_tensors(who, require(who, ct, "tensors")), static_cast<CUstream>(stream));
  });
}

int nsajit_varlen_cmp_rows(const nsajit_problem* cp, int64_t num_seqs, int64_t max_seqlen, int64_t* rows) {
  return guarded([&] {
    const char* who = "nsajit_varlen_cmp_rows";
    if (rows == nullptr) throw UsageError(fmt::format("{}: rows is a null pointer", who));
    *rows = 0;
    const Problem p = to_problem(who, cp);
    static const int32_t kAnyDevicePointer = 0;  // never read: only says "varlen"
    BatchLayout batch;
    batch.cu_seqlens = &kAnyDevicePointer;
    if (max_seqlen < 1)
      throw UsageError(fmt::format("{}: max_seqlen = {} must be >= 1", who, max_seqlen));
    batch.num_seqs = num_seqs, batch.max_seqlen = max_seqlen;
    check_batch(who, p, batch, true);
    *rows = batch_sums(p, batch).cmp_blocks;
  });
}

const char* nsajit_version(void) { return NSAJIT_VERSION; }

const char* nsajit_nvrtc_library(void) {
  const char* out = nullptr;
  guarded([&] {
    static const std::string path = nvrtc_library();  // a failed load throws, and is retried by the next call
    out = path.c_str();
  });
  return out;
}

int nsajit_abi_version(void) { return NSAJIT_ABI_VERSION; }

int nsajit_decode(const nsajit_problem* cp, int Tq, const nsajit_decode_tensors* ct, void* stream) {
  return guarded([&] {
    const char* who = "nsajit_decode";
    const Problem p = to_problem(who, cp);
    const nsajit_decode_tensors& c = require(who, ct, "tensors");
    if (c.page_size < 1 || c.page_size > (1 << 30))
      throw UsageError(fmt::format("{}: page_size = {} is out of range", who, c.page_size));
    DecodeTensors t;
    t.q = view(c.q), t.o = view(c.o);
    t.g_cmp = c.g_cmp, t.g_slc = c.g_slc, t.g_win = c.g_win;
    t.gate_stride_b = c.gate_stride_b, t.gate_stride_t = c.gate_stride_t, t.gate_stride_h = c.gate_stride_h;
    t.cache = {c.k_pool, c.v_pool, c.num_pages};
    t.cache_slc = {c.k_pool_slc, c.v_pool_slc, c.num_pages_slc};
    t.cache_win = {c.k_pool_win, c.v_pool_win, c.num_pages_win};
    t.table.pages = c.page_table, t.table.stride = c.page_table_stride;
    t.table.page_size = static_cast<int>(c.page_size), t.table.pages_host = c.page_table_host;
    t.seqlens = c.seqlens, t.seqlens_host = c.seqlens_host;
    t.k_cmp = view(c.k_cmp), t.v_cmp = view(c.v_cmp), t.max_cmp = c.max_cmp;
    t.idx = c.idx, t.cnt = c.cnt;
    t.workspace = c.workspace, t.workspace_bytes = c.workspace_bytes;
    decode(p, Tq, t, static_cast<CUstream>(stream));
  });
}

int nsajit_decode_workspace_size(const nsajit_problem* cp, int Tq, size_t* bytes) {
  return guarded([&] {
    if (bytes == nullptr) throw UsageError("nsajit_decode_workspace_size: bytes is a null pointer");
    *bytes = 0;
    *bytes = decode_workspace_bytes(to_problem("nsajit_decode_workspace_size", cp), Tq);
  });
}

int nsajit_decode_append(const nsajit_problem* cp, int Tn, const nsajit_decode_append_tensors* ct, void* stream) {
  return guarded([&] {
    const char* who = "nsajit_decode_append";
    const Problem p = to_problem(who, cp);
    const nsajit_decode_append_tensors& c = require(who, ct, "tensors");
    if (c.page_size < 1 || c.page_size > (1 << 30))
      throw UsageError(fmt::format("{}: page_size = {} is out of range", who, c.page_size));
    AppendTensors t;
    t.k_new = view(c.k_new), t.v_new = view(c.v_new);
    t.k_pool = c.k_pool, t.v_pool = c.v_pool, t.num_pages = c.num_pages;
    t.table.pages = c.page_table, t.table.stride = c.page_table_stride;
    t.table.page_size = static_cast<int>(c.page_size), t.table.pages_host = c.page_table_host;
    t.seqlens = c.seqlens, t.seqlens_host = c.seqlens_host;
    t.k_cmp = view(c.k_cmp), t.v_cmp = view(c.v_cmp), t.max_cmp = c.max_cmp;
    decode_append(p, Tn, t, static_cast<CUstream>(stream));
  });
}

int64_t nsajit_struct_layout(const char* type, const char* field) {
  if (type == nullptr) return -1;
  for (const FieldLayout& f : kLayouts) {
    if (std::strcmp(f.type, type) != 0) continue;
    if (field == nullptr ? f.field == nullptr : f.field != nullptr && std::strcmp(f.field, field) == 0)
      return static_cast<int64_t>(f.value);
  }
  return -1;
}

const char* nsajit_last_error(void) { return last_error.c_str(); }

}  // extern "C"
