#pragma once
// A branch launch made ready: every argument checked, the tile config resolved and checked, the kernel compiled
// and loaded, its parameter block filled. Launching it is one cuLaunchKernel, so a caller can prepare every
// launch of a call (forward) before the first one runs, and a refusal leaves every output untouched.
#include <cuda.h>

#include <cstring>
#include <type_traits>

#include "codegen/family.h"
#include "runtime/device.h"

namespace nsajit {

struct PreparedLaunch {
  const Kernel* kernel = nullptr;
  LaunchGeometry geometry;
  alignas(16) unsigned char params[512] = {};  // the family's parameter struct, byte for byte

  template <class P>
  void set_params(const P& p) {
    static_assert(std::is_trivially_copyable_v<P> && sizeof(P) <= sizeof(params));
    std::memcpy(params, &p, sizeof(P));
  }
  void launch(CUstream stream) const {
    kernel->launch(geometry.grid, geometry.block, geometry.smem_bytes, stream, params);
  }
};

}  // namespace nsajit
