// The attention steps the Hopper (IMPL=1) kernels share (templates/attn_fwd_hopper.cuh, run_hopper in
// templates/slc_fwd.cuh): one warpgroup owns 64 query rows; per key tile of kSB x 64 keys
//   S = Q K^T     issue_s: wgmma m64n64k16, Q from registers (qf, mma.sync A-fragment layout) or from the shared
//                 Q tile, K from the shared K tile (both 128-byte-swizzled K-major, hopper.cuh's sw128 layout);
//   softmax       softmax_exp (row maxima, rescale factors, S -> exp2(S scale - max), row sums; touches neither O
//                 nor P, so it can run while P V is in flight) and rescale_pack (O and the sums rescaled, P packed);
//   O += P V      issue_pv: wgmma m64n64k16, P from registers, V from the shared tile read MN-major.
// Fragments: s[kSB][32] (wgmma's accumulator layout: per warp the m16n8 layout of mma.sync, n8 tile i of block b in
// s[b][4 i ..]), acc[kOB][32] the same for O's 64-column blocks, pf[kSB * 4][4] P as A fragments (16 keys each).
// Masking is the kernels' own (window, compressed, selected blocks).
#ifndef NSA_HOPPER_ATTN_CUH
#define NSA_HOPPER_ATTN_CUH
#ifndef NSAJIT_GENERATED
#include "common.cuh"
#include "hopper.cuh"
#endif

namespace nsa {
namespace hopper {

__device__ __forceinline__ u64 desc_kmajor(u32 addr) { return smem_desc(addr, 16, 1024, 1); }
// V as wgmma's B read MN-major: 8-key groups 1024 bytes apart (one 64-column block per instruction, so the other
// offset is never used; both are set so that either reading of the two fields is right).
__device__ __forceinline__ u64 desc_mnmajor(u32 addr) { return smem_desc(addr, 1024, 1024, 1); }
// A descriptor `byte_offset` bytes further into the same tile: the address field (bits 0-13, in 16-byte units) grows
// without carrying out of it, since shared memory ends below 2^18 bytes. One add per wgmma instead of rebuilding
// the descriptor from the address.
__device__ __forceinline__ u64 desc_advance(u64 desc, u32 byte_offset) { return desc + (byte_offset >> 4); }

// S = Q K^T for one key tile (issued and committed, not waited for). sQ: the CTA's Q tile of kRowsQ rows (this
// warpgroup's 64 start at row 64 wg); sK: the K tile of kRowsK rows.
template <bool kBf16, int kSB, int kKSteps, int kRowsQ, int kRowsK, bool kQInRegs, int kQF>
__device__ __forceinline__ void issue_s(float (&s)[kSB][32], const u32 (&qf)[kQF][4], u32 sQ, u32 sK, int wg) {
  const u64 dk0 = desc_kmajor(sK);
  const u64 dq0 = desc_kmajor(sQ + wg * (64 * 128));
#pragma unroll
  for (int nb = 0; nb < kSB; ++nb) {
#pragma unroll
    for (int kk = 0; kk < kKSteps; ++kk) {
      const u64 db = desc_advance(dk0, (kk / 4) * (kRowsK * 128) + nb * (64 * 128) + (kk % 4) * 32);
      if constexpr (kQInRegs) {
        wgmma_m64n64k16_rs<0, kBf16>(s[nb], qf[kk], db, kk > 0);
      } else {
        const u64 da = desc_advance(dq0, (kk / 4) * (kRowsQ * 128) + (kk % 4) * 32);
        wgmma_m64n64k16_ss<kBf16>(s[nb], da, db, kk > 0);
      }
    }
  }
  wgmma_commit();
}

// O += P V for one value tile of kBN rows at sV (issued and committed, not waited for).
template <bool kBf16, int kBN, int kOB>
__device__ __forceinline__ void issue_pv(float (&acc)[kOB][32], const u32 (&pf)[kBN / 16][4], u32 sV) {
  const u64 dv0 = desc_mnmajor(sV);
#pragma unroll
  for (int kk = 0; kk < kBN / 16; ++kk) {
#pragma unroll
    for (int ob = 0; ob < kOB; ++ob)
      wgmma_m64n64k16_rs<1, kBf16>(acc[ob], pf[kk], desc_advance(dv0, ob * (kBN * 128) + kk * (16 * 128)), 1);
  }
  wgmma_commit();
}

// The first half of the online softmax on a masked S (base 2): new row maxima, the rescale factors alpha, S ->
// exp2(S scale_log2 - max) and its row sums (tile_sum). O and P are not touched.
template <int kSB>
__device__ __forceinline__ void softmax_exp(float (&s)[kSB][32], float (&row_max)[2], float (&alpha)[2],
                                            float (&tile_sum)[2], float scale_log2) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float mx = neg_inf();
#pragma unroll
    for (int nt = 0; nt < kSB * 8; ++nt)
      mx = fmaxf(mx, fmaxf(s[nt / 8][(nt % 8) * 4 + 2 * r], s[nt / 8][(nt % 8) * 4 + 2 * r + 1]));
    mx = warp_quad_max(mx) * scale_log2;
    const float m_new = fmaxf(row_max[r], mx);
    const float m_use = m_new == neg_inf() ? 0.f : m_new;
    alpha[r] = fast_exp2(row_max[r] - m_use);
    row_max[r] = m_new;
    float sum = 0.f;
#pragma unroll
    for (int nt = 0; nt < kSB * 8; ++nt) {
      float& x0 = s[nt / 8][(nt % 8) * 4 + 2 * r];
      float& x1 = s[nt / 8][(nt % 8) * 4 + 2 * r + 1];
      x0 = fast_exp2(x0 * scale_log2 - m_use);
      x1 = fast_exp2(x1 * scale_log2 - m_use);
      sum += x0 + x1;
    }
    tile_sum[r] = sum;
  }
}

// The second half, once the previous P V is done: O and the row sums rescaled, P packed for the next P V.
template <class E, int kSB, int kOB>
__device__ __forceinline__ void rescale_pack(float (&acc)[kOB][32], const float (&s)[kSB][32],
                                             u32 (&pf)[kSB * 4][4], float (&row_sum)[2], const float (&alpha)[2],
                                             const float (&tile_sum)[2]) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    row_sum[r] = row_sum[r] * alpha[r] + tile_sum[r];
#pragma unroll
    for (int ob = 0; ob < kOB; ++ob)
#pragma unroll
      for (int nt = 0; nt < 8; ++nt) {
        acc[ob][nt * 4 + 2 * r] *= alpha[r];
        acc[ob][nt * 4 + 2 * r + 1] *= alpha[r];
      }
  }
#pragma unroll
  for (int kk = 0; kk < kSB * 4; ++kk) {
    const float* a0 = &s[(2 * kk) / 8][((2 * kk) % 8) * 4];
    const float* a1 = &s[(2 * kk + 1) / 8][((2 * kk + 1) % 8) * 4];
    pf[kk][0] = pack2<E>(a0[0], a0[1]);
    pf[kk][1] = pack2<E>(a0[2], a0[3]);
    pf[kk][2] = pack2<E>(a1[0], a1[1]);
    pf[kk][3] = pack2<E>(a1[2], a1[3]);
  }
}

template <int kB, int kN>
__device__ __forceinline__ void fence_regs(float (&r)[kB][kN]) {
#pragma unroll
  for (int b = 0; b < kB; ++b) fence_regs(r[b]);
}
template <int kB, int kN>
__device__ __forceinline__ void fence_regs(u32 (&r)[kB][kN]) {
#pragma unroll
  for (int b = 0; b < kB; ++b) fence_regs(r[b]);
}

}  // namespace hopper
}  // namespace nsa

#endif  // NSA_HOPPER_ATTN_CUH
