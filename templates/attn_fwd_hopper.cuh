// The Hopper (sm_90a) implementations of the dense attention forward (window and compressed branches, IMPL=1 and
// IMPL=2 of win_fwd / cmp_fwd; templates/attn_fwd.cuh is the mma.sync one and chooses these by its kImpl).
//
// Same work split as the mma.sync kernel: a CTA owns kBM rows of the flattened (query position, head-in-group) index
// m = t * kG + g of one KV head. Each computing warpgroup (4 warps) owns 64 of them and runs warpgroup MMAs:
//   S = Q K^T     wgmma m64n64k16, Q from registers (kQInRegs) or shared memory, K from shared memory (K-major);
//   O += P V      wgmma m64n64k16, P from registers (the softmax's output, never stored), V from shared memory
//                 read MN-major (stored [keys][dv] as loaded).
// The shared tiles use the 128-byte-swizzled K-major layout the wgmma descriptors describe (hopper.cuh). K/V tiles
// stream through kStages cp.async stages shared by the CTA's warpgroups (the copies become visible to the async proxy
// through fence.proxy.async). IMPL=1: every thread copies, and a CTA-wide barrier per key tile hands the stages over.
// IMPL=2 (kWarpSpec): one more warpgroup only copies; its copies arrive on a per-stage `full` mbarrier as they land,
// the computing warps arrive on a per-stage `empty` one when done with it, and setmaxnreg gives the copier 40
// registers and the computing warps the rest.
// The steps are hopper_attn.cuh's. The softmax overlaps the matrix products (FlashAttention-3's intra-warpgroup
// overlap): iteration j issues S_{j+1} = Q K_{j+1}^T and O += P_j V_j together, waits for S_{j+1} only, takes its
// row maxima and exponentials while P_j V_j still runs, then waits for it, rescales O and packs P_{j+1}.
//
// Written as a class template over every constant so that it is instantiated only when kImpl selects it.
#ifndef NSA_ATTN_FWD_HOPPER_CUH
#define NSA_ATTN_FWD_HOPPER_CUH
#ifndef NSAJIT_GENERATED
#include "common.cuh"
#include "attn_params.cuh"
#include "hopper.cuh"
#include "hopper_attn.cuh"
#endif

namespace nsa {
namespace attn_fwd_hopper {

using hopper::load_tile_sw128;
using hopper::load_tile_sw128_lean;
using hopper::sw128;

template <class elem, int kMask, int kDK, int kDV, int kG, int kBM, int kBN, int kQInRegs, int kStages,
          bool kWarpSpec = false>
struct Kernel {
  static constexpr bool kBf16 = DtypeTraits<elem>::is_bf16;
  static constexpr int kConsumers = kBM / 64;  // warpgroups that compute, 64 rows each
  // kWarpSpec adds one warpgroup that only copies (the last one), so that the consumers never wait at a CTA barrier.
  static constexpr int kThreads = kConsumers * 128 + (kWarpSpec ? 128 : 0);
  // Register split (setmaxnreg) of the warp-specialized kernel: the copying warpgroup keeps kProducerRegs, the
  // consumers take the rest of the CTA's share (one CTA per SM at 128 rows, two at 64), rounded down to 8.
  static constexpr int kCtasPerSm = kBM == 64 ? 2 : 1;
  static constexpr int kProducerRegs = kCtasPerSm == 2 ? 88 : 40;
  static constexpr int kConsumerRegsRaw = (65536 / kCtasPerSm - 128 * kProducerRegs) / (kConsumers * 128) / 8 * 8;
  static constexpr int kConsumerRegs = kConsumerRegsRaw > 240 ? 240 : kConsumerRegsRaw;
  static constexpr int kKSteps = dim_mma(kDK) / 16;   // k steps of S = Q K^T
  static constexpr int kSB = kBN / 64;                // 64-key blocks of S
  static constexpr int kOB = dim_smem(kDV) / 64;      // 64-column blocks of O
  static constexpr int kSmemQ = kBM * dim_smem(kDK) * 2;
  static constexpr int kSmemK = kBN * dim_smem(kDK) * 2;
  static constexpr int kSmemV = kBN * dim_smem(kDV) * 2;
  static_assert(kBM % 64 == 0 && kBN % 64 == 0, "wgmma tiles: 64 rows per warpgroup, keys in blocks of 64");
  static_assert(kStages >= 2, "at least double buffering");

  static __device__ __forceinline__ void run(const AttnFwdParams& p) {
    extern __shared__ __align__(128) char smem[];
    const int lane = static_cast<int>(threadIdx.x) % 32;
    const int warp = static_cast<int>(threadIdx.x) / 32;
    const int wg = warp / 4;
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

    const KeyRange keys = key_range<kMask, kG, kBM, kBN>(m0, len, p.w, p.l, p.d);
    const i64 t_lo = keys.t_lo, t_hi = keys.t_hi, s_begin = keys.begin, s_end = keys.end;
    const int n_tiles = keys.n_tiles;

    // The tiles, 1024-byte aligned (the launch asks for 1 KB more than they need).
    const u32 sQ = (smem_addr(smem) + 1023u) & ~1023u;
    const u32 sKV = sQ + kSmemQ;
    auto stage_k = [&](int stage) { return sKV + static_cast<u32>(stage) * (kSmemK + kSmemV); };
    auto stage_v = [&](int stage) { return stage_k(stage) + kSmemK; };
    // kWarpSpec: per stage a `full` barrier (the copying warpgroup's 128 threads arrive as their copies land) and an
    // `empty` one (each consumer warp arrives when it is done with the stage), after the tiles.
    const u32 sBar = sKV + static_cast<u32>(kStages) * (kSmemK + kSmemV);
    auto full_bar = [&](int stage) { return sBar + 8u * static_cast<u32>(stage); };
    auto empty_bar = [&](int stage) { return sBar + 8u * static_cast<u32>(kStages + stage); };

    const int load_tid = kWarpSpec ? static_cast<int>(threadIdx.x) - kConsumers * 128 : static_cast<int>(threadIdx.x);
    auto load_kv = [&](int tile) {
      const int stage = tile % kStages;
      const i64 s0 = s_begin + static_cast<i64>(tile) * kBN;
      const int n_valid = static_cast<int>(min(s_end - s0, static_cast<i64>(kBN)));
      constexpr int kLoaders = kWarpSpec ? 128 : kThreads;
      hopper::load_rows_sw128<kLoaders, kBN, kDK, kWarpSpec>(stage_k(stage), k + s0 * p.k_st, p.k_st, n_valid, k,
                                                              load_tid);
      hopper::load_rows_sw128<kLoaders, kBN, kDV, kWarpSpec>(stage_v(stage), v + s0 * p.v_st, p.v_st, n_valid, v,
                                                              load_tid);
    };
    auto load_q = [&]() {
      auto q_row = [&](int r) -> const void* {
        const i64 m = m0 + r;
        const i64 t = m / kG;
        return t < len ? q + t * p.q_st + (m % kG) * p.q_sh : nullptr;
      };
      if constexpr (kWarpSpec)
        load_tile_sw128_lean<128, kBM, kDK>(sQ, q_row, q, load_tid);
      else
        load_tile_sw128<kThreads, kBM, kDK>(sQ, q_row, q);
    };

    if constexpr (kWarpSpec) {
      if (threadIdx.x == 0) {
        for (int i = 0; i < kStages; ++i) {
          hopper::mbar_init(full_bar(i), 128);
          hopper::mbar_init(empty_bar(i), kConsumers * 4);
        }
        hopper::mbar_init_fence();
      }
      __syncthreads();
      if (warp / 4 == kConsumers) {
        // The copying warpgroup: Q with tile 0, then every tile once its stage is free. Each thread's copies arrive
        // on the stage's `full` barrier as they land (cp.async.mbarrier.arrive.noinc), so it never waits for them.
        hopper::regs_dealloc<kProducerRegs>();
        for (int j = 0; j < n_tiles; ++j) {
          const int stage = j % kStages;
          if (j >= kStages) hopper::mbar_wait(empty_bar(stage), static_cast<u32>((j / kStages - 1) & 1));
          if (j == 0) load_q();
          load_kv(j);
          hopper::mbar_arrive_cp_async(full_bar(stage));
        }
        cp_async_wait<0>();
        return;
      }
      hopper::regs_alloc<kConsumerRegs>();
    } else {
      // Prologue: Q with tile 0, then tiles 1 .. kStages - 2, one commit group each (empty past the last tile).
      load_q();
#pragma unroll
      for (int i = 0; i < kStages - 1; ++i) {
        if (i < n_tiles) load_kv(i);
        cp_async_commit();
      }
    }
    // kWarpSpec: waits until tile j's copies (and Q's with tile 0) have landed, and makes them visible to wgmma.
    auto wait_full = [&](int j) {
      hopper::mbar_wait(full_bar(j % kStages), static_cast<u32>((j / kStages) & 1));
      hopper::fence_async_shared();
    };
    // kWarpSpec: this warp is done with tile j's stage (its wgmma reads of K and V have completed).
    auto release = [&](int j) {
      __syncwarp();
      if (lane == 0) hopper::mbar_arrive(empty_bar(j % kStages));
    };

    // This thread's two rows (of its warp's 16) and their query positions.
    const int row0 = warp * 16 + lane / 4;
    const i64 t_row[2] = {(m0 + row0) / kG, (m0 + row0 + 8) / kG};

    float acc[kOB][32];
#pragma unroll
    for (int i = 0; i < kOB; ++i)
#pragma unroll
      for (int e = 0; e < 32; ++e) acc[i][e] = 0.f;
    float s[kSB][32];
    u32 pf[kBN / 16][4];
    u32 qf[kQInRegs ? kKSteps : 1][4];
    float row_max[2] = {neg_inf(), neg_inf()};
    float row_sum[2] = {0.f, 0.f};
    float alpha[2], tile_sum[2];

    auto issue_s = [&](int stage) {
      hopper::issue_s<kBf16, kSB, kKSteps, kBM, kBN, kQInRegs != 0>(s, qf, sQ, stage_k(stage), wg);
    };
    auto issue_pv = [&](int stage) { hopper::issue_pv<kBf16, kBN, kOB>(acc, pf, stage_v(stage)); };
    // Masks S of key tile `tile` (only where it reaches past some row's key range), then the first half of the
    // online softmax: new row maxima, the rescale factors, S -> exp2(S scale - max) and its row sums. O and P are
    // not touched (P V may still be running).
    auto softmax_a = [&](int tile) {
      const i64 s0 = s_begin + static_cast<i64>(tile) * kBN;
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
            if (c > hi[e / 2] || c < lo[e / 2]) s[nt / 8][(nt % 8) * 4 + e] = neg_inf();
          }
        }
      }
      hopper::softmax_exp<kSB>(s, row_max, alpha, tile_sum, p.scale_log2);
    };
    // The second half, once P V is done: rescale O and the sums, pack P for the next P V.
    auto softmax_b = [&]() { hopper::rescale_pack<elem, kSB, kOB>(acc, s, pf, row_sum, alpha, tile_sum); };
    auto fence_s = [&]() { hopper::fence_regs(s); };
    auto fence_acc = [&]() { hopper::fence_regs(acc); };
    auto fence_p = [&]() { hopper::fence_regs(pf); };

    // Q and tile 0 have landed (the copies of every thread, made visible to the async proxy).
    if constexpr (kWarpSpec) {
      if (n_tiles > 0) wait_full(0);
    } else {
      cp_async_wait<kStages - 2>();
      hopper::fence_async_shared();
      __syncthreads();
    }
    if (n_tiles > 0) {
      if constexpr (kQInRegs) {
#pragma unroll
        for (int kk = 0; kk < kKSteps; ++kk)
          ldmatrix_x4(sQ + sw128<kBM>(warp * 16 + lane % 16, kk * 2 + lane / 16), qf[kk][0], qf[kk][1], qf[kk][2],
                      qf[kk][3]);
      }
      fence_s();
      hopper::wgmma_fence();
      issue_s(0);
      hopper::wgmma_wait<0>();
      fence_s();
      softmax_a(0);
      softmax_b();
    }

    // Tiles 0 .. n - 2: S of the next tile and P V of this one in flight together. The loop issues both always (the
    // last tile's P V follows it), so that no branch separates a wgmma from its fence.
    for (int j = 0; j + 1 < n_tiles; ++j) {
      // Tile j + 1 must have landed, and every warp must be done with tile j - 1 (its stage is refilled next).
      if constexpr (kWarpSpec) {
        wait_full(j + 1);
      } else if constexpr (kStages >= 3) {
        cp_async_wait<kStages - 3>();
        hopper::fence_async_shared();
        __syncthreads();
        if (j + kStages - 1 < n_tiles) load_kv(j + kStages - 1);
        cp_async_commit();
      } else {
        __syncthreads();
        load_kv(j + 1);
        cp_async_commit();
        cp_async_wait<0>();
        hopper::fence_async_shared();
        __syncthreads();
      }
      fence_s();
      fence_acc();
      fence_p();
      hopper::wgmma_fence();
      issue_s((j + 1) % kStages);
      issue_pv(j % kStages);
      hopper::wgmma_wait<1>();
      fence_s();
      softmax_a(j + 1);
      hopper::wgmma_wait<0>();
      fence_acc();
      fence_p();
      if constexpr (kWarpSpec) release(j);
      softmax_b();
    }
    if (n_tiles > 0) {  // the last tile's P V (its V landed with its K)
      fence_acc();
      fence_p();
      hopper::wgmma_fence();
      issue_pv((n_tiles - 1) % kStages);
      hopper::wgmma_wait<0>();
      fence_acc();
    }
    if constexpr (!kWarpSpec) cp_async_wait<0>();

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
              pack2<elem>(acc[dn / 8][(dn % 8) * 4 + 2 * r] * inv, acc[dn / 8][(dn % 8) * 4 + 2 * r + 1] * inv);
      }
      if (gate != nullptr) {
        const float g = to_float(gate[gate_off + t * p.gate_st + h * p.gate_sh]);
        elem* orow = out + out_off + t * p.out_st + h * p.out_sh;
#pragma unroll
        for (int dn = 0; dn < kDV / 8; ++dn) {
          u32* dst = reinterpret_cast<u32*>(orow + dn * 8 + (lane % 4) * 2);
          float x0 = g * acc[dn / 8][(dn % 8) * 4 + 2 * r] * inv, x1 = g * acc[dn / 8][(dn % 8) * 4 + 2 * r + 1] * inv;
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
};

}  // namespace attn_fwd_hopper
}  // namespace nsa

#endif  // NSA_ATTN_FWD_HOPPER_CUH
