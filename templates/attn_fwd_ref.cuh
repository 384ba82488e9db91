// A deliberately simple dense-attention forward (window or compressed keys, by kMask): one warp per (sequence, query, head), keys one at a time, fp32
// throughout. Slow; it exists to check the fast kernels at sizes the CPU reference cannot reach, and is itself
// checked against the CPU reference.
#ifndef NSA_ATTN_FWD_REF_CUH
#define NSA_ATTN_FWD_REF_CUH
#ifndef NSAJIT_GENERATED
#include "common.cuh"
#include "attn_params.cuh"
namespace nsa::spec {
typedef bf16 elem;
constexpr int kMask = kMaskWindow, kDK = 128, kDV = 128, kG = 16;
}  // namespace nsa::spec
#endif

namespace nsa {
namespace attn_fwd_ref {

using namespace spec;
constexpr int kWarpsPerBlock = 4;
constexpr int kThreads = kWarpsPerBlock * 32;
// Lane i holds elements i, i + 32, ... of a row: (dim + 31) / 32 of them, the last one partial unless 32 divides the
// dim. (Functions rather than namespace-scope constants: each of those is a symbol of the CUBIN.)
__device__ __forceinline__ bool in_dim(int dim, int e) { return dim % 32 == 0 || e < dim; }

__device__ __forceinline__ void run(const AttnFwdParams& p) {
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const i64 item = static_cast<i64>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  const int b = static_cast<int>(blockIdx.z);
  const i64 HQ = static_cast<i64>(p.H) * kG;
  const SeqSpan seq = sequence_span(p, b);
  const i64 len = seq.len;
  const bool varlen = p.cu_seqlens != nullptr;
  const i64 q_off = varlen ? seq.begin * p.q_st : b * p.q_sb;
  const i64 o_off = varlen ? seq.begin * p.o_st : b * p.o_sb;
  const i64 l_off = varlen ? seq.begin * p.lse_st : b * p.lse_sb;
  const i64 key_begin = kMask == kMaskWindow ? seq.begin : seq.cmp_begin;
  const i64 k_off = varlen ? key_begin * p.k_st : b * p.k_sb;
  const i64 v_off = varlen ? key_begin * p.v_st : b * p.v_sb;
  if (item >= len * HQ) return;
  const i64 t = item / HQ;
  const i64 h = item % HQ;
  const i64 kvh = h / kG;
  const elem* q = static_cast<const elem*>(p.q) + q_off + t * p.q_st + h * p.q_sh;
  const elem* k = static_cast<const elem*>(p.k) + k_off + kvh * p.k_sh;
  const elem* v = static_cast<const elem*>(p.v) + v_off + kvh * p.v_sh;

  float qv[(kDK + 31) / 32];
#pragma unroll
  for (int i = 0; i < (kDK + 31) / 32; ++i) qv[i] = in_dim(kDK, lane + 32 * i) ? to_float(q[lane + 32 * i]) : 0.f;
  float acc[(kDV + 31) / 32];
#pragma unroll
  for (int i = 0; i < (kDV + 31) / 32; ++i) acc[i] = 0.f;
  float mx = neg_inf(), sum = 0.f;
  const float scale = p.scale_log2 * 0.6931471805599453f;  // back to the natural-log scale
  const i64 lo = kMask == kMaskWindow ? (t - p.w + 1 > 0 ? t - p.w + 1 : 0) : 0;
  const i64 hi = kMask == kMaskWindow ? (p.w > 0 ? t : -1) : visible_cmp_blocks(t, p.l, p.d) - 1;
  for (i64 s = lo; s <= hi; ++s) {
    float dot = 0.f;
#pragma unroll
    for (int i = 0; i < (kDK + 31) / 32; ++i)
      if (in_dim(kDK, lane + 32 * i)) dot += qv[i] * to_float(k[s * p.k_st + lane + 32 * i]);
#pragma unroll
    for (int off = 16; off > 0; off /= 2) dot += __shfl_xor_sync(0xffffffffu, dot, off);
    const float x = dot * scale;
    const float m_new = fmaxf(mx, x);
    const float alpha = expf(mx - m_new);
    const float e = expf(x - m_new);
    sum = sum * alpha + e;
#pragma unroll
    for (int i = 0; i < (kDV + 31) / 32; ++i)
      if (in_dim(kDV, lane + 32 * i)) acc[i] = acc[i] * alpha + e * to_float(v[s * p.v_st + lane + 32 * i]);
    mx = m_new;
  }
  elem* o = static_cast<elem*>(p.o) + o_off + t * p.o_st + h * p.o_sh;
#pragma unroll
  for (int i = 0; i < (kDV + 31) / 32; ++i)
    if (in_dim(kDV, lane + 32 * i)) o[lane + 32 * i] = from_float<elem>(sum > 0.f ? acc[i] / sum : 0.f);
  if (p.lse != nullptr && lane == 0) p.lse[l_off + t * p.lse_st + h] = sum > 0.f ? mx + logf(sum) : neg_inf();
}

}  // namespace attn_fwd_ref
}  // namespace nsa

#endif  // NSA_ATTN_FWD_REF_CUH
