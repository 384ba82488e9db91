#pragma once
// The whole NSA backward (NSA.md "Backward") in one call, with the selection held fixed as the forward chose it.
//
// What the forward must save (ForwardTensors' optional outputs), per token: for each enabled branch b its output
// o_b [HQ, dv] in the input dtype and its lse_b [HQ] in fp32, and for the selected branch idx [H, n] / cnt [H]
// int32: 2 * HQ * dv + 4 * HQ bytes per branch plus 4 * H * (n + 1). At preset fla (HQ = 64, dv = 128, H = 4,
// n = 16) that is 16.6 KiB per token for the three branches (1.06 GiB at T = 65536). The mean-pooled k_cmp/v_cmp
// are not saved: the backward pools k and v again (one cheap pass).
//
// Deterministic: every gradient element is reduced by one thread in a fixed order (no float atomics), so the same
// inputs give bitwise identical gradients from run to run. The selected branch's dk/dv go through an inverted index
// (for each KV head and block, the ascending positions that selected it), cut into work items of at most QCHUNK
// positions; a block with several items (block 0, which every query selects) is reduced from per-item partial
// sums in item order.
#include <cuda.h>

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "codegen/family.h"
#include "codegen/problem.h"
#include "runtime/tensor.h"

namespace nsajit {

struct BackwardTensors {
  // What the forward was given (same shapes and rules as ForwardTensors).
  TensorView q, k, v;
  TensorView k_slc, v_slc, k_win, v_win;  // optional separate per-branch keys/values
  TensorView k_cmp, v_cmp;                // optional caller's compressed keys; null: the mean pool of k, v
  const void* g_cmp = nullptr;            // gates [B, T, HQ] (head stride 0 means 1); a null gate: branch off
  const void* g_slc = nullptr;
  const void* g_win = nullptr;            // ignored (branch off) when w == 0, as in the forward
  int64_t gate_stride_b = 0, gate_stride_t = 0, gate_stride_h = 1;

  // What the forward saved: o_b and lse_b of every enabled branch, idx/cnt when the selected branch is on.
  TensorView o_cmp, o_slc, o_win;
  const float* lse_cmp = nullptr;
  const float* lse_slc = nullptr;
  const float* lse_win = nullptr;
  int64_t lse_stride_b = 0, lse_stride_t = 0;
  const int32_t* idx = nullptr;  // [B, T, H, n] contiguous
  const int32_t* cnt = nullptr;  // [B, T, H] contiguous

  TensorView dout;  // dL/do [B, T, HQ, dv]

  // Gradients, overwritten in full (zeros where no gradient flows). dq is required; dk/dv when an enabled branch
  // reads k/v (the window without k_win, the selected branch without k_slc, the mean pool); dk_slc/dv_slc when
  // k_slc is given and the selected branch is on, dk_win/dv_win likewise; dk_cmp/dv_cmp when k_cmp is given and
  // the compressed branch is on. Any other one given is written with zeros or its gradient. dg_b [B, T, HQ] (head
  // stride 1, input dtype) = <do, o_b> is optional; dg_win is 0 when w == 0.
  TensorView dq, dk, dv, dk_slc, dv_slc, dk_win, dv_win, dk_cmp, dv_cmp;
  void* dg_cmp = nullptr;
  void* dg_slc = nullptr;
  void* dg_win = nullptr;
  int64_t dg_stride_b = 0, dg_stride_t = 0;

  // Varlen: problem.B == 1, T = total tokens; cu_seqlens [N + 1] on the device and the same values on the host,
  // or no host offsets and num_seqs and max_seqlen (runtime/validate.h BatchLayout; the scratch is then sized by
  // upper bounds). dk_cmp/dv_cmp (with k_cmp given) then need backward_cmp_rows() rows: the rows past the batch's
  // own compressed blocks are written with zeros.
  const int32_t* cu_seqlens = nullptr;
  std::span<const int32_t> cu_seqlens_host;
  int64_t num_seqs = 0, max_seqlen = 0;

  // Scratch: at least backward_workspace_bytes(problem, tensors) bytes, 256-byte aligned. With it the call neither
  // allocates nor synchronizes (it can be captured in a CUDA graph once its kernels are loaded). Without it the call
  // allocates and frees its own and synchronizes `stream` before returning, and is refused while `stream` is
  // capturing.
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
};

// Tile configs per backward family (null: tuned or default), for the tuner and the tests.
struct BackwardConfigs {
  const TileConfig* cmp_dq = nullptr;
  const TileConfig* cmp_dkv = nullptr;
  const TileConfig* slc_dq = nullptr;
  const TileConfig* slc_dkv = nullptr;
  const TileConfig* win_dq = nullptr;
  const TileConfig* win_dkv = nullptr;
};

// The scratch a call with these tensors (which branches, which separate k/v, varlen offsets) needs; the pointers
// themselves are not read.
size_t backward_workspace_bytes(const Problem& problem, const BackwardTensors& tensors);
// The common case: every branch on, shared k/v, mean pool, no varlen.
size_t backward_workspace_bytes(const Problem& problem);

// The rows dk_cmp/dv_cmp get written: B Nc(T), or (varlen) the sum of Nc over the sequences, or its upper bound
// (validate.h batch_sums) when the host has no offsets.
int64_t backward_cmp_rows(const Problem& problem, const BackwardTensors& tensors);

// Checks every argument (UsageError naming it, in the caller's names), then prepares every kernel, then launches.
// A refused call has written nothing. Binds a context of q's device as forward does (runtime/device.h DeviceScope).
void backward(const Problem& problem, const BackwardTensors& tensors, CUstream stream,
              const BackwardConfigs& configs = {});
void check_backward(const Problem& problem, const BackwardTensors& tensors);

// The backward's launches grouped by kernel family, in order, for the benchmark: running every stage in order is
// one backward; a stage may be re-run alone to time it (accumulating stages then add again: the values change,
// the work does not). Needs tensors.workspace and a current context; prepares (compiles, loads) every kernel.
struct BackwardStage {
  std::string name;  // "zero", "pool", "bwd_pre", "cmp_bwd_dq", ..., "bwd_cast"
  std::function<void(CUstream)> run;
};
std::vector<BackwardStage> backward_stages(const Problem& problem, const BackwardTensors& tensors,
                                           const BackwardConfigs& configs = {});

}  // namespace nsajit
