#include "runtime/validate.h"

#include <fmt/format.h>

#include <algorithm>

#include "runtime/error.h"

namespace nsajit {

void check_view(const char* who, const char* name, const TensorView& t, bool varlen) {
  if (t.data == nullptr) throw UsageError(fmt::format("{}: {} is a null pointer", who, name));
  if (reinterpret_cast<uintptr_t>(t.data) % 16 != 0)
    throw UsageError(fmt::format("{}: {} is not 16-byte aligned (the kernels copy 16-byte chunks)", who, name));
  const int64_t strides[] = {t.stride_b, t.stride_t, t.stride_h};
  const char* names[] = {"batch", "sequence", "head"};
  for (int i = varlen ? 1 : 0; i < 3; ++i) {
    if (strides[i] < 0 || strides[i] % 8 != 0)
      throw UsageError(fmt::format("{}: {}'s {} stride {} must be a non-negative multiple of 8 elements (16 bytes)",
                                   who, name, names[i], strides[i]));
  }
}

int64_t check_cu_seqlens(const char* who, std::span<const int32_t> cu, int64_t total) {
  if (cu.size() < 2)
    throw UsageError(fmt::format("{}: cu_seqlens_host must hold N + 1 >= 2 offsets (the device copy's values)", who));
  if (cu[0] != 0) throw UsageError(fmt::format("{}: cu_seqlens[0] = {} must be 0", who, cu[0]));
  int64_t longest = 0;
  for (size_t i = 1; i < cu.size(); ++i) {
    if (cu[i] < cu[i - 1])
      throw UsageError(fmt::format("{}: cu_seqlens is not non-decreasing: cu_seqlens[{}] = {} < cu_seqlens[{}] = {}",
                                   who, i, cu[i], i - 1, cu[i - 1]));
    longest = std::max<int64_t>(longest, cu[i] - cu[i - 1]);
  }
  if (cu.back() != total)
    throw UsageError(fmt::format("{}: cu_seqlens ends at {} but T = {} tokens", who, cu.back(), total));
  return longest;
}

}  // namespace nsajit
