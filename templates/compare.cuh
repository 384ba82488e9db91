// The tuner's correctness gate on the GPU: relative L2 difference of a tensor against a trusted one, and counts of
// the values that cannot be right, without copying either to the host; the element kinds are CompareKind's.
// A trusted value of -inf (an lse over no keys) must be matched by -inf exactly; any other non-finite trusted value
// (NaN, +inf, the poison an unwritten trusted output keeps) is counted, so that a broken trusted result cannot pass
// every candidate.
#ifndef NSA_COMPARE_CUH
#define NSA_COMPARE_CUH
#ifndef NSAJIT_GENERATED
#include "common.cuh"
#include "compare_params.h"
#endif

namespace nsa {

namespace compare {

__device__ __forceinline__ float load_as_float(const void* p, i64 i, int kind) {
  if (kind == kCompareF32) return static_cast<const float*>(p)[i];
  const unsigned short bits = static_cast<const unsigned short*>(p)[i];
  if (kind == kCompareBf16) return __uint_as_float(static_cast<u32>(bits) << 16);
  float f;
  asm("{ .reg .b16 h; mov.b16 h, %1; cvt.f32.f16 %0, h; }" : "=f"(f) : "h"(bits));
  return f;
}

__device__ __forceinline__ void run(const CompareParams& p) {
  double d2 = 0.0, r2 = 0.0;
  u64 bad = 0, mismatch = 0, wrong_inf = 0, ref_bad = 0;
  const i64 stride = static_cast<i64>(gridDim.x) * blockDim.x;
  for (i64 i = static_cast<i64>(blockIdx.x) * blockDim.x + threadIdx.x; i < p.n; i += stride) {
    if (p.kind == kCompareI32) {
      const i32 r = static_cast<const i32*>(p.ref)[i];
      mismatch += static_cast<const i32*>(p.a)[i] != r;
      ref_bad += r == 0x7f7f7f7f;
      continue;
    }
    const float a = load_as_float(p.a, i, p.kind), r = load_as_float(p.ref, i, p.kind);
    if (!isfinite(r)) {
      if (isinf(r) && r < 0)
        wrong_inf += !(isinf(a) && a < 0);  // no keys: only -inf is right
      else
        ++ref_bad;
      continue;
    }
    if (!isfinite(a)) {
      ++bad;
      continue;
    }
    const double d = static_cast<double>(a) - static_cast<double>(r);
    d2 += d * d;
    r2 += static_cast<double>(r) * r;
  }
  for (int o = 16; o > 0; o >>= 1) {
    d2 += __shfl_xor_sync(0xffffffffu, d2, o);
    r2 += __shfl_xor_sync(0xffffffffu, r2, o);
    bad += __shfl_xor_sync(0xffffffffu, bad, o);
    mismatch += __shfl_xor_sync(0xffffffffu, mismatch, o);
    wrong_inf += __shfl_xor_sync(0xffffffffu, wrong_inf, o);
    ref_bad += __shfl_xor_sync(0xffffffffu, ref_bad, o);
  }
  if ((threadIdx.x & 31) == 0) {
    atomicAdd(&p.sums[0], d2);
    atomicAdd(&p.sums[1], r2);
    atomicAdd(&p.counts[0], bad);
    atomicAdd(&p.counts[1], mismatch);
    atomicAdd(&p.counts[2], wrong_inf);
    atomicAdd(&p.counts[3], ref_bad);
  }
}

}  // namespace compare
}  // namespace nsa

#endif  // NSA_COMPARE_CUH
