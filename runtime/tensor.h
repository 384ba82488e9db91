#pragma once
// Device tensors as the API takes them.
#include <cstdint>

namespace nsajit {

// A [B, T, heads, dim] tensor on the device: strides in elements, the last dim contiguous.
struct TensorView {
  const void* data = nullptr;
  int64_t stride_b = 0, stride_t = 0, stride_h = 0;
};

// Contiguous strides for a [B, T, heads, dim] tensor.
inline TensorView contiguous(const void* data, int64_t T, int heads, int dim) {
  return {data, T * heads * dim, static_cast<int64_t>(heads) * dim, dim};
}

}  // namespace nsajit
