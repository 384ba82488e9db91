#pragma once
// Sliding-window attention forward (NSA.md branch 3) on device pointers.
#include <cuda.h>

#include <cstdint>
#include <span>

#include "codegen/family.h"
#include "codegen/problem.h"

namespace nsajit {

// A [B, T, heads, dim] tensor on the device: strides in elements, the last dim contiguous.
struct TensorView {
  const void* data = nullptr;
  int64_t stride_b = 0, stride_t = 0, stride_h = 0;
};

struct WinFwdArgs {
  TensorView q;    // [B, T, HQ, dk]
  TensorView k;    // [B, T, H, dk]
  TensorView v;    // [B, T, H, dv]
  TensorView o;    // [B, T, HQ, dv], written
  float* lse = nullptr;  // [B, T, HQ] fp32, natural log; optional
  int64_t lse_stride_b = 0, lse_stride_t = 0;
  // Varlen: problem.B == 1, T = total tokens; cu_seqlens [N + 1] on the device and the same values on the host.
  const int32_t* cu_seqlens = nullptr;
  std::span<const int32_t> cu_seqlens_host;
};

// Contiguous strides for a [B, T, heads, dim] tensor.
TensorView contiguous(const void* data, int64_t T, int heads, int dim);

// Validates everything (throws UsageError naming the bad argument), then launches on `stream`. `config`
// overrides the family's default tile config.
void win_fwd(const Problem& problem, const WinFwdArgs& args, CUstream stream, const TileConfig* config = nullptr);

// The same operation by a deliberately simple kernel (fp32, one warp per query and head): slow, for checking the
// fast kernel at sizes the CPU reference cannot reach.
void win_fwd_reference(const Problem& problem, const WinFwdArgs& args, CUstream stream);

}  // namespace nsajit
