#pragma once
// The mean-pool compressor on device pointers: x [B, T, H, dim] -> y [B, Nc, H, dim], block i = mean of
// x[i*d .. i*d + l).
#include <cuda.h>

#include <cstdint>
#include <span>

#include "codegen/family.h"
#include "codegen/problem.h"
#include "runtime/prepared_launch.h"
#include "runtime/tensor.h"

namespace nsajit {

struct PoolArgs {
  TensorView x;  // [B, T, H, dim]
  TensorView y;  // [B, Nc, H, dim]; varlen: each sequence's Nc(len) blocks one after another
  int dim = 0;   // problem.dk for k, problem.dv for v
  const int32_t* cu_seqlens = nullptr;  // varlen (B == 1): device offsets, and the same on the host
  std::span<const int32_t> cu_seqlens_host;
  // Varlen without host offsets (cu_seqlens_host empty): the number of sequences and an upper bound of the longest
  // (runtime/validate.h BatchLayout says what the device offsets must then satisfy).
  int64_t num_seqs = 0, max_seqlen = 0;
};

// Validates everything (throws UsageError naming the bad argument), then launches on `stream`.
void mean_pool(const Problem& problem, const PoolArgs& args, CUstream stream, const TileConfig* config = nullptr);
// The checks alone, with no driver call; and everything but the launch (see attn_fwd_api.h).
void check_mean_pool(const Problem& problem, const PoolArgs& args, const TileConfig* config = nullptr);
PreparedLaunch prepare_mean_pool(const Problem& problem, const PoolArgs& args, const TileConfig* config = nullptr);

}  // namespace nsajit
