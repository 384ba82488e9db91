#pragma once
// The whole NSA forward (NSA.md) in one call: mean-pool compression (unless k_cmp/v_cmp are given), compressed
// attention, top-n selection, selected attention and sliding-window attention, with the gated sum fused into the
// branch kernels' epilogues (the first branch writes o, the others accumulate).
#include <cuda.h>

#include <cstdint>
#include <span>

#include "codegen/problem.h"
#include "runtime/tensor.h"

namespace nsajit {

struct ForwardTensors {
  TensorView q, k, v;                     // [B, T, HQ, dk], [B, T, H, dk], [B, T, H, dv]
  TensorView k_slc, v_slc, k_win, v_win;  // optional per-branch keys/values (null data: k, v)
  TensorView k_cmp, v_cmp;                // optional [B, Nc, H, dk|dv] (null data: mean pool of k, v)
  // Gates [B, T, HQ] in the input dtype (already through the sigmoid), all three with the same strides (the head
  // stride 0 means 1; a layer that projects the three gates together has head stride 3); a null gate disables its
  // branch. At least one must be given.
  const void* g_cmp = nullptr;
  const void* g_slc = nullptr;
  const void* g_win = nullptr;
  int64_t gate_stride_b = 0, gate_stride_t = 0, gate_stride_h = 1;
  TensorView o;  // [B, T, HQ, dv], written

  // Optional outputs, for the backward and for inspection.
  TensorView o_cmp, o_slc, o_win;
  float* lse_cmp = nullptr;  // [B, T, HQ] fp32, natural log, strides below
  float* lse_slc = nullptr;
  float* lse_win = nullptr;
  int64_t lse_stride_b = 0, lse_stride_t = 0;
  int32_t* idx = nullptr;  // [B, T, H, n] contiguous
  int32_t* cnt = nullptr;  // [B, T, H] contiguous

  // Varlen: problem.B == 1, T = total tokens; cu_seqlens [N + 1] on the device and the same values on the host,
  // or no host offsets and num_seqs = N and max_seqlen (runtime/validate.h BatchLayout: nothing is copied back,
  // the offsets are not checked on the host and the scratch is sized by upper bounds). Given k_cmp/v_cmp then hold
  // each sequence's Nc(len) blocks one after another.
  const int32_t* cu_seqlens = nullptr;
  std::span<const int32_t> cu_seqlens_host;
  int64_t num_seqs = 0, max_seqlen = 0;

  // Scratch for what the caller did not ask for (lse_cmp, idx/cnt, pooled k_cmp/v_cmp) and for slc_fwd's overlap
  // plan (runtime/slc_fwd_api.h: the variant of each overlap bucket runs on its own spans): at least
  // forward_workspace_bytes(problem) bytes, 256-byte aligned (enough for any varlen layout of T tokens too). With
  // it the call neither allocates nor synchronizes (so it can be captured in a CUDA graph, once its kernels are
  // loaded). Without it the call allocates and frees its own and synchronizes `stream` before returning, and is
  // refused while `stream` is capturing.
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
};

size_t forward_workspace_bytes(const Problem& problem);

// Checks every argument of every branch (UsageError naming the bad argument, in the caller's names: k_win, g_slc,
// lse_stride_t, ...), then makes the scratch, resolves every tile config and loads every kernel, and only then
// launches them on `stream`. A refused call (or one that fails before its first launch: no GPU, a compile error)
// has written nothing: o, the optional outputs, idx and cnt are untouched. Shapes: T >= 1 (T = 0, an empty batch,
// is refused with "bad T = 0"); a varlen batch may hold empty sequences anywhere (the last one included) and at
// most 65535 sequences (the grid's z dimension); T < l (no compressed block) is valid: every query's compressed
// key set is then empty (branch output 0, lse_cmp = -inf, NSA.md) and the selection holds the forced blocks.
//
// The call runs in the calling thread's current CUDA context; when none is current, or the current one belongs to
// another device than q's, it binds the primary context of q's device (and restores the previous one on return;
// a thread that had none keeps the primary context current, as cuBLAS does).
void forward(const Problem& problem, const ForwardTensors& tensors, CUstream stream);

// The checks of forward alone, with no driver call: what forward would refuse, except a default or tuned tile
// config that does not fit the device (that needs the device).
void check_forward(const Problem& problem, const ForwardTensors& tensors);

}  // namespace nsajit
