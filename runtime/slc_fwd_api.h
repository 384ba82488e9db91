#pragma once
// Selected-block attention forward (NSA.md branch 2) on device pointers, with an optional gated-sum epilogue.
#include <cuda.h>

#include <cstdint>
#include <span>
#include <vector>

#include "codegen/family.h"
#include "codegen/problem.h"
#include "runtime/prepared_launch.h"
#include "runtime/tensor.h"

namespace nsajit {

struct SlcFwdArgs {
  TensorView q;      // [B, T, HQ, dk]
  TensorView k;      // [B, T, H, dk]: the branch's own k_slc
  TensorView v;      // [B, T, H, dv]: the branch's own v_slc
  TensorView o_slc;  // [B, T, HQ, dv], written; its data may be null (then out or lse must be given)
  float* lse = nullptr;  // [B, T, HQ] fp32, natural log (-inf for an empty key set); optional
  int64_t lse_stride_b = 0, lse_stride_t = 0;
  // The selection (NSA.md): idx [B, T, H, n] ascending block indices relative to the sequence start, -1 padded;
  // cnt [B, T, H] valid entries. Both contiguous int32 (varlen: rows of the packed T).
  const int32_t* idx = nullptr;
  const int32_t* cnt = nullptr;
  // Gated epilogue: with gate [B, T, HQ] (input dtype; row strides and a head stride, 0 meaning 1) and out
  // [B, T, HQ, dv] both given, out = gate * o_slc, or out += gate * o_slc when `accumulate` is set (fp32 sum, one
  // rounding).
  const void* gate = nullptr;
  int64_t gate_stride_b = 0, gate_stride_t = 0, gate_stride_h = 1;
  TensorView out;
  bool accumulate = false;
  // Varlen: problem.B == 1, T = total tokens; cu_seqlens [N + 1] on the device and the same values on the host.
  const int32_t* cu_seqlens = nullptr;
  std::span<const int32_t> cu_seqlens_host;
  // Varlen without host offsets (cu_seqlens_host empty): the number of sequences and an upper bound of the longest
  // (runtime/validate.h BatchLayout says what the device offsets must then satisfy).
  int64_t num_seqs = 0, max_seqlen = 0;
  // Overlap dispatch (codegen/overlap.h): scratch of at least slc_plan_bytes(problem) bytes on the device. With it
  // (and no config given), the call computes the selection's overlap plan on the device (kernel slc_plan) and runs
  // the tuned (or default) config of each overlap bucket on the positions of that bucket's spans, each position by
  // exactly one of them: one launch only when both buckets resolve to the same config. Nothing is copied to the
  // host, so a captured CUDA graph follows a selection that changes between replays. Without it, one config for
  // every position: the high-overlap bucket's. With a config, that config for every position (the plan is unused).
  uint8_t* plan = nullptr;
  size_t plan_bytes = 0;
};

// The plan's size: one byte per (span of kOverlapSpan packed positions, KV head) of the B * T positions.
size_t slc_plan_bytes(const Problem& problem);
// The plan alone (what the dispatch runs first): plan[span * H + h] = 1 when the span's positions select at most
// high_overlap_max_distinct(n) distinct blocks for KV head h (high overlap), else 0; idx [B * T, H, n] and cnt
// [B * T, H] contiguous, as for slc_fwd. Throws UsageError naming a bad argument; launches on `stream`.
void slc_overlap_plan(const Problem& problem, const int32_t* idx, const int32_t* cnt, uint8_t* plan,
                      size_t plan_bytes, CUstream stream);

// Validates everything (throws UsageError naming the bad argument), then launches on `stream`. `config`
// overrides the tuned or default tile config (of every overlap bucket).
// A refused call launches nothing and writes nothing.
void slc_fwd(const Problem& problem, const SlcFwdArgs& args, CUstream stream, const TileConfig* config = nullptr);
// The checks alone, with no driver call; and everything but the launches (see attn_fwd_api.h), in order: the plan
// and the variant of each bucket, or the one variant.
void check_slc_fwd(const Problem& problem, const SlcFwdArgs& args, const TileConfig* config = nullptr);
std::vector<PreparedLaunch> prepare_slc_fwd(const Problem& problem, const SlcFwdArgs& args,
                                            const TileConfig* config = nullptr);

}  // namespace nsajit
