// The parameter block of the mean-pool compressor (pool.cuh): the kernel's one by-value argument, defined once for
// both sides. The template reads it (codegen pastes this file into the generated source before the template);
// runtime/pool_api.cpp fills it. Plain C++ over nsa_types.h, which g++ and NVRTC both compile. Strides are in
// elements; the last dim is contiguous.
#ifndef NSA_POOL_PARAMS_H
#define NSA_POOL_PARAMS_H
#ifndef NSAJIT_GENERATED
#include "nsa_types.h"
#endif

namespace nsa {

struct PoolParams {
  const void* x;  // [B, T, H, dim]
  void* y;        // [B, Nc, H, dim]; varlen: each sequence's Nc(len) blocks one after another
  i64 x_sb, x_st, x_sh;
  i64 y_sb, y_st, y_sh;
  const i32* cu_seqlens;  // [B + 1] when varlen, else null
  i64 T;                  // sequence length (varlen: the longest one)
  i32 H, l, d;
  i32 unused;
};

}  // namespace nsa

#endif  // NSA_POOL_PARAMS_H
