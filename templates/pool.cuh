// Mean-pool compressor (fla's phi): y[i] = mean of x[i*d .. i*d + l) for every compressed block i, any l and d
// with d | l (overlapping blocks when d < l). One thread per 16-byte chunk of one output row, fp32 sums.
#ifndef NSA_POOL_CUH
#define NSA_POOL_CUH
#ifndef NSAJIT_GENERATED
#include "common.cuh"
#include "attn_params.cuh"
#include "pool_params.h"
namespace nsa::spec {
typedef bf16 elem;
constexpr int kDim = 128, kThreads = 256;
}  // namespace nsa::spec
#endif

namespace nsa {

namespace pool {

using namespace spec;
constexpr int kChunks = kDim / 8;
static_assert(kDim % 8 == 0, "dim must be a multiple of 8");

__device__ __forceinline__ void run(const PoolParams& p) {
  const int b = static_cast<int>(blockIdx.z);
  i64 len = p.T, x_off = b * p.x_sb, y_off = b * p.y_sb;
  if (p.cu_seqlens != nullptr) {
    const i64 begin = p.cu_seqlens[b];
    len = p.cu_seqlens[b + 1] - begin;
    i64 cmp_begin = 0;
    for (int s = 0; s < b; ++s) cmp_begin += num_cmp_blocks(p.cu_seqlens[s + 1] - p.cu_seqlens[s], p.l, p.d);
    x_off = begin * p.x_st;
    y_off = cmp_begin * p.y_st;
  }
  const i64 nc = num_cmp_blocks(len, p.l, p.d);
  const i64 item = static_cast<i64>(blockIdx.x) * kThreads + threadIdx.x;
  if (item >= nc * p.H * kChunks) return;
  const int c = static_cast<int>(item % kChunks);
  const int h = static_cast<int>((item / kChunks) % p.H);
  const i64 i = item / (static_cast<i64>(kChunks) * p.H);
  const elem* x = static_cast<const elem*>(p.x) + x_off + i * p.d * p.x_st + h * p.x_sh + c * 8;
  float sum[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  for (int r = 0; r < p.l; ++r) {
    const uint4 v = *reinterpret_cast<const uint4*>(x + r * p.x_st);
    auto add_pair = [&](u32 w, float& s0, float& s1) {
      elem lo, hi;
      lo.bits = static_cast<unsigned short>(w & 0xffffu);
      hi.bits = static_cast<unsigned short>(w >> 16);
      s0 += to_float(lo);
      s1 += to_float(hi);
    };
    add_pair(v.x, sum[0], sum[1]);
    add_pair(v.y, sum[2], sum[3]);
    add_pair(v.z, sum[4], sum[5]);
    add_pair(v.w, sum[6], sum[7]);
  }
  const float inv = 1.f / static_cast<float>(p.l);
  uint4 out;
  out.x = pack2<elem>(sum[0] * inv, sum[1] * inv);
  out.y = pack2<elem>(sum[2] * inv, sum[3] * inv);
  out.z = pack2<elem>(sum[4] * inv, sum[5] * inv);
  out.w = pack2<elem>(sum[6] * inv, sum[7] * inv);
  elem* y = static_cast<elem*>(p.y) + y_off + i * p.y_st + h * p.y_sh + c * 8;
  *reinterpret_cast<uint4*>(y) = out;
}

}  // namespace pool
}  // namespace nsa

#endif  // NSA_POOL_CUH
