#include "runtime/nsajit_c.h"

#include <fmt/format.h>

#include <exception>
#include <span>
#include <string>

#include "runtime/attn_fwd_api.h"
#include "runtime/error.h"
#include "runtime/forward.h"
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

// The host offsets as a span of num_seqs + 1, after checking what can be checked before reading any of them (the
// caller's array must hold num_seqs + 1 values: that cannot be checked).
std::span<const int32_t> host_offsets(const char* who, const int32_t* device, const int32_t* host, int64_t num_seqs) {
  if (device == nullptr) {
    if (host != nullptr || num_seqs != 0)
      throw UsageError(fmt::format("{}: cu_seqlens_host or num_seqs = {} is given but cu_seqlens is null (varlen "
                                   "needs the device offsets too; without varlen leave both 0)",
                                   who, num_seqs));
    return {};
  }
  if (host == nullptr) throw UsageError(fmt::format("{}: varlen: cu_seqlens_host is a null pointer", who));
  if (num_seqs < 1) throw UsageError(fmt::format("{}: varlen: num_seqs = {} must be >= 1", who, num_seqs));
  if (num_seqs > kMaxGridYZ)
    throw UsageError(fmt::format("{}: varlen: num_seqs = {} sequences: at most {} (the grid's z dimension)", who,
                                 num_seqs, kMaxGridYZ));
  return {host, static_cast<size_t>(num_seqs + 1)};
}

template <class T>
const T& require(const char* who, const T* p, const char* what) {
  if (p == nullptr) throw UsageError(fmt::format("{}: {} is a null pointer", who, what));
  return *p;
}

AttnFwdArgs attn_args(const char* who, const nsajit_attn_args& a) {
  AttnFwdArgs r;
  r.q = view(a.q), r.k = view(a.k), r.v = view(a.v), r.o = view(a.o);
  r.lse = a.lse, r.lse_stride_b = a.lse_stride_b, r.lse_stride_t = a.lse_stride_t;
  r.gate = a.gate, r.gate_stride_b = a.gate_stride_b, r.gate_stride_t = a.gate_stride_t;
  r.out = view(a.out), r.accumulate = a.accumulate != 0;
  r.cu_seqlens = a.cu_seqlens, r.cu_seqlens_host = host_offsets(who, a.cu_seqlens, a.cu_seqlens_host, a.num_seqs);
  return r;
}

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
    t.gate_stride_b = c.gate_stride_b, t.gate_stride_t = c.gate_stride_t;
    t.o = view(c.o), t.o_cmp = view(c.o_cmp), t.o_slc = view(c.o_slc), t.o_win = view(c.o_win);
    t.lse_cmp = c.lse_cmp, t.lse_slc = c.lse_slc, t.lse_win = c.lse_win;
    t.lse_stride_b = c.lse_stride_b, t.lse_stride_t = c.lse_stride_t;
    t.idx = c.idx, t.cnt = c.cnt;
    t.cu_seqlens = c.cu_seqlens;
    t.cu_seqlens_host = host_offsets("nsajit_forward", c.cu_seqlens, c.cu_seqlens_host, c.num_seqs);
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
    a.cu_seqlens = c.cu_seqlens, a.cu_seqlens_host = host_offsets(who, c.cu_seqlens, c.cu_seqlens_host, c.num_seqs);
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
    a.out = view(c.out), a.accumulate = c.accumulate != 0;
    a.cu_seqlens = c.cu_seqlens, a.cu_seqlens_host = host_offsets(who, c.cu_seqlens, c.cu_seqlens_host, c.num_seqs);
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
    a.cu_seqlens = cu_seqlens, a.cu_seqlens_host = host_offsets(who, cu_seqlens, cu_seqlens_host, num_seqs);
    mean_pool(p, a, static_cast<CUstream>(stream));
  });
}

const char* nsajit_last_error(void) { return last_error.c_str(); }

}  // extern "C"
