#pragma once
// The dense-attention branches on device pointers: sliding window (NSA.md branch 3) and compressed (branch 1).
#include <cuda.h>

#include <cstdint>
#include <span>

#include "codegen/family.h"
#include "codegen/problem.h"
#include "runtime/prepared_launch.h"
#include "runtime/tensor.h"

namespace nsajit {

struct AttnFwdArgs {
  TensorView q;  // [B, T, HQ, dk]
  TensorView k;  // window: [B, T, H, dk]; compressed: k_cmp [B, Nc, H, dk]
  TensorView v;  // window: [B, T, H, dv]; compressed: v_cmp [B, Nc, H, dv]
  TensorView o;  // [B, T, HQ, dv], written; may have null data when `out` is given
  float* lse = nullptr;  // [B, T, HQ] fp32, natural log; optional
  int64_t lse_stride_b = 0, lse_stride_t = 0;
  // Gated output (optional): out = gate * o, or out += gate * o with accumulate. gate [B, T, HQ] with row strides
  // and a head stride (0 means 1).
  const void* gate = nullptr;
  int64_t gate_stride_b = 0, gate_stride_t = 0, gate_stride_h = 1;
  TensorView out;
  bool accumulate = false;
  // Varlen: problem.B == 1, T = total tokens; cu_seqlens [N + 1] on the device and the same values on the host.
  // Compressed keys of a varlen batch: each sequence's Nc(len) blocks one after another.
  const int32_t* cu_seqlens = nullptr;
  std::span<const int32_t> cu_seqlens_host;
  // Varlen without host offsets (cu_seqlens_host empty): the number of sequences and an upper bound of the longest
  // (runtime/validate.h BatchLayout says what the device offsets must then satisfy).
  int64_t num_seqs = 0, max_seqlen = 0;
};

// Validate everything (throw UsageError naming the bad argument), then launch on `stream`. `config` overrides the
// family's default tile config. A refused call launches nothing and writes nothing.
void win_fwd(const Problem& problem, const AttnFwdArgs& args, CUstream stream, const TileConfig* config = nullptr);
void cmp_fwd(const Problem& problem, const AttnFwdArgs& args, CUstream stream, const TileConfig* config = nullptr);

// Every argument check of win_fwd / cmp_fwd (views, strides, gate/out/accumulate, varlen offsets, grid limits, a
// given config), with no driver call: what the call would refuse, except a resolved default or tuned config
// (which needs the device).
void check_win_fwd(const Problem& problem, const AttnFwdArgs& args, const TileConfig* config = nullptr);
void check_cmp_fwd(const Problem& problem, const AttnFwdArgs& args, const TileConfig* config = nullptr);

// The checks, the config (resolved and checked), the kernel loaded and its parameters filled: everything but the
// launch (needs a current context).
PreparedLaunch prepare_win_fwd(const Problem& problem, const AttnFwdArgs& args, const TileConfig* config = nullptr);
PreparedLaunch prepare_cmp_fwd(const Problem& problem, const AttnFwdArgs& args, const TileConfig* config = nullptr);

// The same operations by deliberately simple kernels (fp32, one warp per query and head; `o` required, no gate):
// slow, for checking the fast kernels at sizes the CPU reference cannot reach.
void win_fwd_reference(const Problem& problem, const AttnFwdArgs& args, CUstream stream);
void cmp_fwd_reference(const Problem& problem, const AttnFwdArgs& args, CUstream stream);

}  // namespace nsajit
