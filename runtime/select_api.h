#pragma once
// Top-n block selection (NSA.md branch 2, selection part) on device pointers: block scores from q, k_cmp and
// branch 1's lse, never materialized in global memory; the forced blocks and the top-n as idx and cnt.
#include <cuda.h>

#include <cstdint>
#include <span>

#include "codegen/family.h"
#include "codegen/problem.h"
#include "runtime/prepared_launch.h"
#include "runtime/tensor.h"

namespace nsajit {

struct SelectArgs {
  TensorView q;      // [B, T, HQ, dk]
  TensorView k_cmp;  // [B, Nc, H, dk], Nc = max(0, floor((T - l) / d) + 1); stride_t steps one compressed block
  // [B, T, HQ] fp32, head stride 1: branch 1's log-sum-exp (natural log) of scale * q . k_cmp over the visible
  // blocks, -inf where none is visible.
  const float* lse_cmp = nullptr;
  int64_t lse_stride_b = 0, lse_stride_t = 0;
  int32_t* idx = nullptr;  // [B, T, H, n] contiguous, written: ascending block indices, padded with -1
  int32_t* cnt = nullptr;  // [B, T, H] contiguous, written: min(n, floor(t / l') + 1)
  // Varlen: problem.B == 1, T = total tokens; cu_seqlens [N + 1] on the device and the same values on the host.
  // k_cmp then holds each sequence's Nc(len) blocks one after another (its batch stride is unused); idx and cnt
  // rows are the packed tokens, block indices relative to the sequence start.
  const int32_t* cu_seqlens = nullptr;
  std::span<const int32_t> cu_seqlens_host;
  // Varlen without host offsets (cu_seqlens_host empty): the number of sequences and an upper bound of the longest
  // (runtime/validate.h BatchLayout says what the device offsets must then satisfy).
  int64_t num_seqs = 0, max_seqlen = 0;
};

// Validates everything (throws UsageError naming the bad argument), then launches on `stream`. `config` overrides
// the family's default tile config (which depends on T: the scores of a CTA's positions live in shared memory).
// A refused call launches nothing and writes nothing.
void select_blocks(const Problem& problem, const SelectArgs& args, CUstream stream, const TileConfig* config = nullptr);
// The checks alone, with no driver call; and everything but the launch (see attn_fwd_api.h).
void check_select_blocks(const Problem& problem, const SelectArgs& args, const TileConfig* config = nullptr);
PreparedLaunch prepare_select_blocks(const Problem& problem, const SelectArgs& args,
                                     const TileConfig* config = nullptr);

}  // namespace nsajit
