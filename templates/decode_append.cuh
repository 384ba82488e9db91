// The KV-cache append step of NSA decode: Tn new tokens per sequence are written into the paged pools at positions
// seqlens[b] .. seqlens[b] + Tn, and (when a compressed cache is given) every compressed entry those tokens complete,
// i with i*d + l - 1 in that range, is written as the mean of its l tokens (read from the pool for the old ones and
// from the new rows for the others), with the arithmetic of the prefill's mean pool (pool.cuh): an fp32 sum in
// token order, times 1 / l. No entry is ever pooled twice, and nothing re-reads the whole cache.
// grid.y = 0 copies (one thread per 16-byte chunk of a new row), grid.y = 1 pools (one thread per chunk of a
// completed entry); the two never touch the same memory.
#ifndef NSA_DECODE_APPEND_CUH
#define NSA_DECODE_APPEND_CUH
#ifndef NSAJIT_GENERATED
#include "common.cuh"
#include "decode_params.h"
namespace nsa::spec {
typedef bf16 elem;
constexpr int kDK = 128, kDV = 128, kThreads = 256;
}  // namespace nsa::spec
#endif

namespace nsa {

namespace decode_append {

using namespace spec;
constexpr int kKC = kDK / 8, kVC = kDV / 8;  // 16-byte chunks of a K row and of a V row
static_assert(kDK % 8 == 0 && kDV % 8 == 0, "head dims must be multiples of 8");

__device__ __forceinline__ i64 floor_div(i64 a, i64 b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

__device__ __forceinline__ void run(const DecodeAppendParams& p) {
  const int b = static_cast<int>(blockIdx.z);
  const i64 old = p.seqlens[b];
  const i32* pages = p.page_table + b * p.pt_stride;
  const i64 item = static_cast<i64>(blockIdx.x) * kThreads + threadIdx.x;
  auto pool_row = [&](i64 tok) {
    return static_cast<i64>(pages[tok / p.page_size]) * p.page_size + tok % p.page_size;
  };
  if (blockIdx.y == 0) {
    if (item >= static_cast<i64>(p.Tn) * p.H * (kKC + kVC)) return;
    const int per_token = p.H * (kKC + kVC);
    const i64 s = item / per_token;
    const int rest = static_cast<int>(item % per_token);
    const int hh = rest / (kKC + kVC), c = rest % (kKC + kVC);
    const i64 row = pool_row(old + s);
    if (c < kKC) {
      const elem* src = static_cast<const elem*>(p.k_new) + b * p.kn_sb + s * p.kn_st + hh * p.kn_sh + c * 8;
      elem* dst = static_cast<elem*>(p.k_pool) + (row * p.H + hh) * kDK + c * 8;
      *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(src);
    } else {
      const int cv = c - kKC;
      const elem* src = static_cast<const elem*>(p.v_new) + b * p.vn_sb + s * p.vn_st + hh * p.vn_sh + cv * 8;
      elem* dst = static_cast<elem*>(p.v_pool) + (row * p.H + hh) * kDV + cv * 8;
      *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(src);
    }
    return;
  }
  if (p.k_cmp == nullptr) return;
  // Entries completed by this append: i*d + l - 1 in [old, old + Tn).
  i64 first = floor_div(old - p.l, p.d) + 1;
  first = first < 0 ? 0 : first;
  const i64 last = floor_div(old + p.Tn - p.l, p.d);
  if (last < first) return;
  const int per_entry = p.H * (kKC + kVC);
  const i64 i = first + item / per_entry;
  if (i > last) return;
  const int rest = static_cast<int>(item % per_entry);
  const int hh = rest / (kKC + kVC), c = rest % (kKC + kVC);
  const bool is_k = c < kKC;
  const int cc = is_k ? c : c - kKC;
  const int dim = is_k ? kDK : kDV;
  float sum[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  for (int r = 0; r < p.l; ++r) {
    const i64 tok = i * p.d + r;
    const elem* src;
    if (tok < old) {
      src = static_cast<const elem*>(is_k ? p.k_pool : p.v_pool) + (pool_row(tok) * p.H + hh) * dim + cc * 8;
    } else {
      src = is_k ? static_cast<const elem*>(p.k_new) + b * p.kn_sb + (tok - old) * p.kn_st + hh * p.kn_sh + cc * 8
                 : static_cast<const elem*>(p.v_new) + b * p.vn_sb + (tok - old) * p.vn_st + hh * p.vn_sh + cc * 8;
    }
    const uint4 v = *reinterpret_cast<const uint4*>(src);
    const u32 w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      elem lo, hi;
      lo.bits = static_cast<unsigned short>(w[k] & 0xffffu);
      hi.bits = static_cast<unsigned short>(w[k] >> 16);
      sum[2 * k] += to_float(lo);
      sum[2 * k + 1] += to_float(hi);
    }
  }
  const float inv = 1.f / static_cast<float>(p.l);
  uint4 out;
  out.x = pack2<elem>(sum[0] * inv, sum[1] * inv);
  out.y = pack2<elem>(sum[2] * inv, sum[3] * inv);
  out.z = pack2<elem>(sum[4] * inv, sum[5] * inv);
  out.w = pack2<elem>(sum[6] * inv, sum[7] * inv);
  elem* dst = is_k ? static_cast<elem*>(p.k_cmp) + b * p.kc_sb + i * p.kc_st + hh * p.kc_sh + cc * 8
                   : static_cast<elem*>(p.v_cmp) + b * p.vc_sb + i * p.vc_st + hh * p.vc_sh + cc * 8;
  *reinterpret_cast<uint4*>(dst) = out;
}

}  // namespace decode_append
}  // namespace nsa

#endif  // NSA_DECODE_APPEND_CUH
