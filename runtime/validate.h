#pragma once
// Argument checks shared by the branch APIs and forward; each throws UsageError starting with `who` (the family's
// name, or "forward") and naming the argument. None of them calls the driver.
#include <cstddef>
#include <cstdint>
#include <span>

#include "codegen/family.h"
#include "codegen/problem.h"
#include "runtime/tensor.h"

namespace nsajit {

// CUDA's limit on gridDim.y and gridDim.z: the branch kernels put KV heads and batch entries (or sequences) there.
inline constexpr int64_t kMaxGridYZ = 65535;

// Non-null, 16-byte aligned, and strides that are non-negative multiples of 8 elements (the kernels copy 16-byte
// chunks); the batch stride is not checked for a varlen call.
void check_view(const char* who, const char* name, const TensorView& t, bool varlen);

// A [B, T, HQ] row array (lse, gate; head stride 1): batch and sequence strides non-negative (the batch stride is
// not used, so not checked, for a varlen call).
void check_row_strides(const char* who, const char* name, int64_t stride_b, int64_t stride_t, bool varlen);

// A plain pointer, when non-null, aligned to `alignment` bytes.
void check_aligned(const char* who, const char* name, const void* p, size_t alignment);

// The gated epilogue out (+)= gate * o: gate and out both given or neither, `accumulate` only with them; out is a
// view, the gate 2-byte aligned with non-negative row strides.
void check_gated_out(const char* who, const void* gate, int64_t gate_stride_b, int64_t gate_stride_t,
                     const TensorView& out, bool accumulate, bool varlen);

// cu_seqlens_host starts at 0, is non-decreasing and ends at `total` tokens; returns the longest sequence.
int64_t check_cu_seqlens(const char* who, std::span<const int32_t> cu, int64_t total);

// B and T as a kernel's grid sees them: the batch, or (varlen) the sequences and the longest of them (at least 1).
struct GridShape {
  int64_t B = 1, T = 1;
};
// The batch or varlen layout of a call, and the grid limits: varlen needs B = 1 and cu_seqlens_host with N + 1
// valid offsets, N <= 65535 sequences (checked before any offset is read); without cu_seqlens no host offsets may
// be given and B <= 65535. With `heads_in_grid`, H <= 65535 too.
GridShape check_batch(const char* who, const Problem& p, const int32_t* cu_seqlens,
                      std::span<const int32_t> cu_seqlens_host, bool heads_in_grid);

// A caller's tile config: every parameter of the family, each in its domain, no other.
void check_config(const char* who, const KernelFamily& family, const TileConfig& config);

}  // namespace nsajit
