#pragma once
// TMA descriptors (CUtensorMap, 128 bytes) for the Hopper kernels of issue 11: a 16-bit tensor (bf16 or fp16) of
// rank 2 or 3 with boxes loaded by cp.async.bulk.tensor (templates/hopper.cuh). The checks follow the driver's rules
// for cuTensorMapEncodeTiled (cuda.h 13.0) so that a bad tensor is refused with a message naming the field rather
// than with CUDA_ERROR_INVALID_VALUE.
#include <array>
#include <cstdint>

namespace nsajit {

struct TmaTensor {
  const void* base = nullptr;      // 16-byte aligned
  int rank = 2;                    // 2 or 3
  uint64_t dims[3] = {0, 0, 0};    // elements, innermost first (dims[0] contiguous)
  uint64_t strides[2] = {0, 0};    // bytes between consecutive indices of dims[1], dims[2]: multiples of 16, < 2^40
  uint32_t box[3] = {0, 0, 0};     // the box one copy loads, innermost first, each 1 .. 256
  bool swizzle_128b = true;        // the layout wgmma's 128-byte-swizzled K-major descriptors read
  bool zero_fill = true;           // out-of-bounds elements of a box read as zeros (else NaN)
  bool fp16 = false;               // fp16 elements (else bf16)
};

// Throws UsageError naming the field that breaks a rule: rank, null or misaligned base, zero dims, strides, box sizes
// (inner box a multiple of 16 bytes; at most 128 bytes with the 128-byte swizzle).
void check_tma_tensor(const char* who, const TmaTensor& t);

// The checked tensor encoded by the driver (cuTensorMapEncodeTiled, 16-bit elements, L2 promotion 128 B): the bytes a
// kernel takes as nsa::hopper::TmaDesc. Throws Error when no driver is loaded or the driver refuses.
std::array<uint64_t, 16> encode_tma_tensor(const char* who, const TmaTensor& t);

}  // namespace nsajit
