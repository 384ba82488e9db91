// A deliberately simple window-attention forward: one warp per (sequence, query, head), keys one at a time, fp32
// throughout. Slow; it exists to check the fast kernels at sizes the CPU reference cannot reach, and is itself
// checked against the CPU reference.
#ifndef NSA_WIN_FWD_REF_CUH
#define NSA_WIN_FWD_REF_CUH
#ifndef NSAJIT_GENERATED
#include "common.cuh"
#include "win_params.cuh"
namespace nsa::spec {
typedef bf16 elem;
constexpr int kDK = 128, kDV = 128, kG = 16;
}  // namespace nsa::spec
#endif

namespace nsa {
namespace win_fwd_ref {

using namespace spec;
constexpr int kWarpsPerBlock = 4;
constexpr int kThreads = kWarpsPerBlock * 32;
static_assert(kDK % 32 == 0 && kDV % 32 == 0, "head dims must be multiples of 32");

__device__ __forceinline__ void run(const WinFwdParams& p) {
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const i64 item = static_cast<i64>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  const int b = static_cast<int>(blockIdx.z);
  const i64 HQ = static_cast<i64>(p.H) * kG;
  i64 len = p.T, q_off = b * p.q_sb, k_off = b * p.k_sb, v_off = b * p.v_sb, o_off = b * p.o_sb,
      l_off = b * p.lse_sb;
  if (p.cu_seqlens != nullptr) {
    const i64 begin = p.cu_seqlens[b];
    len = p.cu_seqlens[b + 1] - begin;
    q_off = begin * p.q_st, k_off = begin * p.k_st, v_off = begin * p.v_st, o_off = begin * p.o_st;
    l_off = begin * p.lse_st;
  }
  if (item >= len * HQ) return;
  const i64 t = item / HQ;
  const i64 h = item % HQ;
  const i64 kvh = h / kG;
  const elem* q = static_cast<const elem*>(p.q) + q_off + t * p.q_st + h * p.q_sh;
  const elem* k = static_cast<const elem*>(p.k) + k_off + kvh * p.k_sh;
  const elem* v = static_cast<const elem*>(p.v) + v_off + kvh * p.v_sh;

  float qv[kDK / 32];
#pragma unroll
  for (int i = 0; i < kDK / 32; ++i) qv[i] = to_float(q[lane + 32 * i]);
  float acc[kDV / 32];
#pragma unroll
  for (int i = 0; i < kDV / 32; ++i) acc[i] = 0.f;
  float mx = neg_inf(), sum = 0.f;
  const float scale = p.scale_log2 * 0.6931471805599453f;  // back to the natural-log scale
  const i64 lo = t - p.w + 1 > 0 ? t - p.w + 1 : 0;
  for (i64 s = lo; s <= t && p.w > 0; ++s) {
    float dot = 0.f;
#pragma unroll
    for (int i = 0; i < kDK / 32; ++i) dot += qv[i] * to_float(k[s * p.k_st + lane + 32 * i]);
#pragma unroll
    for (int off = 16; off > 0; off /= 2) dot += __shfl_xor_sync(0xffffffffu, dot, off);
    const float x = dot * scale;
    const float m_new = fmaxf(mx, x);
    const float alpha = expf(mx - m_new);
    const float e = expf(x - m_new);
    sum = sum * alpha + e;
#pragma unroll
    for (int i = 0; i < kDV / 32; ++i) acc[i] = acc[i] * alpha + e * to_float(v[s * p.v_st + lane + 32 * i]);
    mx = m_new;
  }
  elem* o = static_cast<elem*>(p.o) + o_off + t * p.o_st + h * p.o_sh;
#pragma unroll
  for (int i = 0; i < kDV / 32; ++i) o[lane + 32 * i] = from_float<elem>(sum > 0.f ? acc[i] / sum : 0.f);
  if (p.lse != nullptr && lane == 0) p.lse[l_off + t * p.lse_st + h] = sum > 0.f ? mx + logf(sum) : neg_inf();
}

}  // namespace win_fwd_ref
}  // namespace nsa

#endif  // NSA_WIN_FWD_REF_CUH
