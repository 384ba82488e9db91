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

// A gate's head stride as the kernels take it: 0 means 1 (a contiguous [B, T, HQ] gate, and what a zero-initialized
// C struct holds); negative is refused.
int64_t gate_head_stride(const char* who, const char* name, int64_t stride_h);

// A plain pointer, when non-null, aligned to `alignment` bytes.
void check_aligned(const char* who, const char* name, const void* p, size_t alignment);

// The gated epilogue out (+)= gate * o: gate and out both given or neither, `accumulate` only with them; out is a
// view, the gate 2-byte aligned with non-negative strides.
void check_gated_out(const char* who, const void* gate, int64_t gate_stride_b, int64_t gate_stride_t,
                     int64_t gate_stride_h, const TensorView& out, bool accumulate, bool varlen);

// cu_seqlens_host starts at 0, is non-decreasing and ends at `total` tokens; returns the longest sequence.
int64_t check_cu_seqlens(const char* who, std::span<const int32_t> cu, int64_t total);

// B and T as a kernel's grid sees them: the batch, or (varlen) the sequences and the longest of them (at least 1).
struct GridShape {
  int64_t B = 1, T = 1;
};
// How a call's batch is laid out, as the host knows it. Without cu_seqlens: B sequences of T tokens. Varlen (B = 1,
// T = total tokens, cu_seqlens [N + 1] on the device), either
//   - cu_seqlens_host: the same N + 1 offsets on the host (checked: from 0, non-decreasing, ending at T), or
//   - num_seqs = N and max_seqlen >= the longest sequence, as flash-attn takes them, with no host offsets: nothing
//     is copied back from the device and the offsets cannot be checked on the host. The device offsets must then
//     start at 0, be non-decreasing and end at T, and no sequence may be longer than max_seqlen (a longer one
//     has its rows past max_seqlen left unwritten). max_seqlen > T is taken as T. Scratch is sized by upper
//     bounds computed from (T, N, max_seqlen): see batch_sums.
struct BatchLayout {
  const int32_t* cu_seqlens = nullptr;
  std::span<const int32_t> cu_seqlens_host;
  int64_t num_seqs = 0;
  int64_t max_seqlen = 0;
  bool varlen() const { return cu_seqlens != nullptr; }
  bool bounded() const { return cu_seqlens != nullptr && cu_seqlens_host.empty(); }  // no host offsets
};

// The batch or varlen layout of a call, and the grid limits: varlen needs B = 1 and either cu_seqlens_host with
// N + 1 valid offsets or num_seqs and max_seqlen (not both), N <= 65535 sequences (checked before any offset is
// read); without cu_seqlens no host offsets, num_seqs or max_seqlen may be given and B <= 65535. With
// `heads_in_grid`, H <= 65535 too.
GridShape check_batch(const char* who, const Problem& p, const BatchLayout& batch, bool heads_in_grid);
// The same, for callers with host offsets or none.
GridShape check_batch(const char* who, const Problem& p, const int32_t* cu_seqlens,
                      std::span<const int32_t> cu_seqlens_host, bool heads_in_grid);

// Sums over the sequences of a call, for sizing its scratch: exact from the host offsets (or B x T), upper bounds
// when varlen is given by num_seqs and max_seqlen. The layout must have passed check_batch.
struct BatchSums {
  int64_t tokens = 0;      // sum of the lengths (= B T)
  int64_t cmp_blocks = 0;  // sum of Nc(len) = max(0, floor((len - l) / d) + 1)
  int64_t sel_blocks = 0;  // sum of ceil(len / l')
  int64_t mask_words = 0;  // sum of ceil(len / l') ceil(len / 32)
};
BatchSums batch_sums(const Problem& p, const BatchLayout& batch);

// A caller's tile config: every parameter of the family, each in its domain, no other.
void check_config(const char* who, const KernelFamily& family, const TileConfig& config);

}  // namespace nsajit
