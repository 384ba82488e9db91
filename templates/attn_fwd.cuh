// Dense attention forward for the window branch (NSA.md branch 3: query t sees keys max(0, t - w + 1) .. t) and
// the compressed branch (branch 1: query t sees compressed blocks 0 .. nc(t) - 1), chosen by kMask.
//
// FlashAttention-2 style: one CTA owns kBM rows of the flattened (query position, head-in-group) index
// m = t * kG + g of one KV head, so the G query heads sharing a KV head fill the MMA rows together and every
// key tile loaded into shared memory serves all of them. Each warp owns 16 rows; S = Q K^T and O += P V use
// mma.sync m16n8k16 with fp32 accumulators; the softmax is online, in base 2. K/V tiles are double-buffered
// with cp.async. This is IMPL=0; kImpl = 1 runs the Hopper implementation instead (templates/attn_fwd_hopper.cuh:
// wgmma, the softmax overlapped with the matrix products).
#ifndef NSA_ATTN_FWD_CUH
#define NSA_ATTN_FWD_CUH
#ifndef NSAJIT_GENERATED
// Defaults so that an editor or `nvcc -arch=sm_90a -c` can read this file on its own; codegen writes these.
#include "common.cuh"
#include "attn_params.cuh"
#include "hopper.cuh"
#include "attn_fwd_hopper.cuh"
namespace nsa::spec {
typedef bf16 elem;
constexpr int kMask = kMaskWindow, kDK = 128, kDV = 128, kG = 16, kBM = 64, kBN = 64, kQInRegs = 1, kImpl = 0,
              kStages = 2;
}  // namespace nsa::spec
#endif

namespace nsa {

namespace attn_fwd {

using namespace spec;
constexpr int kWarps = kBM / 16;
constexpr int kThreads = kWarps * 32;
// Head dims: kDK and kDV are the true ones (global memory); shared tiles are dim_smem wide, the MMA loops and the
// accumulators dim_mma (common.cuh).
constexpr int kSmemQ = kBM * dim_smem(kDK) * 2;
constexpr int kSmemK = kBN * dim_smem(kDK) * 2;
constexpr int kSmemV = kBN * dim_smem(kDV) * 2;
static_assert(kBM % 16 == 0 && kBN % 16 == 0, "tile sizes must be multiples of 16");
static_assert(kDK % 8 == 0 && kDV % 8 == 0, "head dims must be multiples of 8");

__device__ __forceinline__ void run_mma(const AttnFwdParams& p) {
  extern __shared__ __align__(128) char smem[];
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const int warp = static_cast<int>(threadIdx.x) / 32;
  const int b = static_cast<int>(blockIdx.z);
  const int kvh = static_cast<int>(blockIdx.y);

  const SeqSpan seq = sequence_span(p, b);
  const i64 len = seq.len;
  const bool varlen = p.cu_seqlens != nullptr;
  const i64 q_off = varlen ? seq.begin * p.q_st : b * p.q_sb;
  const i64 o_off = varlen ? seq.begin * p.o_st : b * p.o_sb;
  const i64 l_off = varlen ? seq.begin * p.lse_st : b * p.lse_sb;
  const i64 key_begin = kMask == kMaskWindow ? seq.begin : seq.cmp_begin;
  const i64 k_off = varlen ? key_begin * p.k_st : b * p.k_sb;
  const i64 v_off = varlen ? key_begin * p.v_st : b * p.v_sb;
  const i64 m0 = static_cast<i64>(blockIdx.x) * kBM;
  if (m0 >= len * kG) return;

  const elem* q = static_cast<const elem*>(p.q) + q_off + static_cast<i64>(kvh) * kG * p.q_sh;
  const elem* k = static_cast<const elem*>(p.k) + k_off + static_cast<i64>(kvh) * p.k_sh;
  const elem* v = static_cast<const elem*>(p.v) + v_off + static_cast<i64>(kvh) * p.v_sh;

  // The keys any row of this tile sees: [s_begin, s_end).
  const KeyRange keys = key_range<kMask, kG, kBM, kBN>(m0, len, p.w, p.l, p.d);
  const i64 t_lo = keys.t_lo, t_hi = keys.t_hi, s_begin = keys.begin, s_end = keys.end;
  const int n_tiles = keys.n_tiles;

  const u32 sQ = smem_addr(smem);
  const u32 sK0 = sQ + kSmemQ;
  const u32 sV0 = sK0 + 2 * kSmemK;

  auto load_kv = [&](int tile, int stage) {
    const i64 s0 = s_begin + static_cast<i64>(tile) * kBN;
    load_tile_async<kThreads, kBN, kDK>(
        sK0 + stage * kSmemK,
        [&](int r) -> const void* { return s0 + r < s_end ? k + (s0 + r) * p.k_st : nullptr; }, k);
    load_tile_async<kThreads, kBN, kDV>(
        sV0 + stage * kSmemV,
        [&](int r) -> const void* { return s0 + r < s_end ? v + (s0 + r) * p.v_st : nullptr; }, v);
  };

  load_tile_async<kThreads, kBM, kDK>(
      sQ,
      [&](int r) -> const void* {
        const i64 m = m0 + r;
        const i64 t = m / kG;
        return t < len ? q + t * p.q_st + (m % kG) * p.q_sh : nullptr;
      },
      q);
  if (n_tiles > 0) load_kv(0, 0);
  cp_async_commit();

  // This thread's two rows (of the warp's 16) and their query positions.
  const int row0 = warp * 16 + lane / 4;
  const i64 t_row[2] = {(m0 + row0) / kG, (m0 + row0 + 8) / kG};

  float acc[dim_mma(kDV) / 8][4];
#pragma unroll
  for (int i = 0; i < dim_mma(kDV) / 8; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;
  float row_max[2] = {neg_inf(), neg_inf()};
  float row_sum[2] = {0.f, 0.f};
  u32 qf[kQInRegs ? dim_mma(kDK) / 16 : 1][4];

  for (int j = 0; j < n_tiles; ++j) {
    const int stage = j & 1;
    if (j + 1 < n_tiles) load_kv(j + 1, stage ^ 1);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();

    if constexpr (kQInRegs) {
      if (j == 0) {
#pragma unroll
        for (int kk = 0; kk < dim_mma(kDK) / 16; ++kk)
          ldmatrix_x4(sQ + swz<dim_smem(kDK) / 8>(warp * 16 + lane % 16, kk * 2 + lane / 16), qf[kk][0], qf[kk][1],
                      qf[kk][2], qf[kk][3]);
      }
    }

    const u32 sK = sK0 + stage * kSmemK;
    const u32 sV = sV0 + stage * kSmemV;

    float s[kBN / 8][4];
    qk_tile<elem, kBN, kDK, kQInRegs != 0>(s, qf, sQ, sK, warp, lane);

    // Mask only the tiles that reach past some row's key range. Row r sees the tile's columns c with
    // lo[r] <= c <= hi[r], in 32-bit tile-relative terms.
    const i64 s0 = s_begin + static_cast<i64>(j) * kBN;
    const bool full = kMask == kMaskWindow ? s0 >= t_hi - p.w + 1 && s0 + kBN - 1 <= t_lo
                                           : s0 + kBN <= visible_cmp_blocks(t_lo, p.l, p.d);
    if (!full) {
      int hi[2], lo[2];
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const i64 last = kMask == kMaskWindow ? t_row[r] : visible_cmp_blocks(t_row[r], p.l, p.d) - 1;
        const i64 first = kMask == kMaskWindow ? t_row[r] - p.w + 1 : 0;
        hi[r] = static_cast<int>(max(min(last - s0, static_cast<i64>(kBN)), static_cast<i64>(-1)));
        lo[r] = static_cast<int>(min(max(first - s0, static_cast<i64>(-1)), static_cast<i64>(kBN)));
      }
#pragma unroll
      for (int nt = 0; nt < kBN / 8; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int c = nt * 8 + (lane % 4) * 2 + (e & 1);
          if (c > hi[e / 2] || c < lo[e / 2]) s[nt][e] = neg_inf();
        }
      }
    }

    online_softmax<kBN, kDV>(s, acc, row_max, row_sum, p.scale_log2);
    accumulate_pv<elem, kBN, kDV>(s, acc, sV, lane);
    __syncthreads();
  }
  cp_async_wait<0>();

  // Epilogue: normalize; write o, lse and the gated output for the rows that exist (the true kDV columns).
  elem* o = p.o ? static_cast<elem*>(p.o) + o_off + static_cast<i64>(kvh) * kG * p.o_sh : nullptr;
  const elem* gate = static_cast<const elem*>(p.gate);
  elem* out = static_cast<elem*>(p.out);
  const i64 gate_off = varlen ? seq.begin * p.gate_st : b * p.gate_sb;
  const i64 out_off = varlen ? seq.begin * p.out_st : b * p.out_sb;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const float total = warp_quad_sum(row_sum[r]);
    const i64 m = m0 + row0 + 8 * r;
    const i64 t = m / kG;
    if (t >= len) continue;
    const i64 h = static_cast<i64>(kvh) * kG + m % kG;
    const float inv = total > 0.f ? 1.f / total : 0.f;
    if (o != nullptr) {
      elem* orow = o + t * p.o_st + (m % kG) * p.o_sh;
#pragma unroll
      for (int dn = 0; dn < kDV / 8; ++dn)
        *reinterpret_cast<u32*>(orow + dn * 8 + (lane % 4) * 2) =
            pack2<elem>(acc[dn][2 * r] * inv, acc[dn][2 * r + 1] * inv);
    }
    if (gate != nullptr) {
      const float g = to_float(gate[gate_off + t * p.gate_st + h * p.gate_sh]);
      elem* orow = out + out_off + t * p.out_st + h * p.out_sh;
#pragma unroll
      for (int dn = 0; dn < kDV / 8; ++dn) {
        u32* dst = reinterpret_cast<u32*>(orow + dn * 8 + (lane % 4) * 2);
        float x0 = g * acc[dn][2 * r] * inv, x1 = g * acc[dn][2 * r + 1] * inv;
        if (p.accumulate) {
          const u32 old = *dst;
          elem lo_e, hi_e;
          lo_e.bits = static_cast<unsigned short>(old & 0xffffu);
          hi_e.bits = static_cast<unsigned short>(old >> 16);
          x0 += to_float(lo_e);
          x1 += to_float(hi_e);
        }
        *dst = pack2<elem>(x0, x1);
      }
    }
    if (p.lse != nullptr && lane % 4 == 0) {
      const float ln2 = 0.6931471805599453f;
      p.lse[l_off + t * p.lse_st + h] = total > 0.f ? (row_max[r] + fast_log2(total)) * ln2 : neg_inf();
    }
  }
}

// The implementation kImpl names. A template over the element type so that the Hopper kernel's class (and its
// static_asserts, which IMPL=0's tile sizes would fail) is instantiated only when kImpl selects it.
template <class E>
__device__ __forceinline__ void run_impl(const AttnFwdParams& p) {
  if constexpr (kImpl == 1 || kImpl == 2) {
    attn_fwd_hopper::Kernel<E, kMask, kDK, kDV, kG, kBM, kBN, kQInRegs, kStages, kImpl == 2>::run(p);
  } else {
    run_mma(p);
  }
}
__device__ __forceinline__ void run(const AttnFwdParams& p) { run_impl<elem>(p); }

}  // namespace attn_fwd
}  // namespace nsa

#endif  // NSA_ATTN_FWD_CUH
