#pragma once
// Argument checks shared by the branch APIs; each throws UsageError starting with `who` (the family's name).
#include <cstdint>
#include <span>

#include "runtime/tensor.h"

namespace nsajit {

// Non-null, 16-byte aligned, and strides that are non-negative multiples of 8 elements (the kernels copy 16-byte
// chunks); the batch stride is not checked for a varlen call.
void check_view(const char* who, const char* name, const TensorView& t, bool varlen);

// cu_seqlens_host starts at 0, is non-decreasing and ends at `total` tokens; returns the longest sequence.
int64_t check_cu_seqlens(const char* who, std::span<const int32_t> cu, int64_t total);

}  // namespace nsajit
