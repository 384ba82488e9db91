// Selected-block attention forward (NSA.md branch 2): query t of head h attends to the tokens of the blocks
// idx[t, h / G, 0 .. cnt) (block j holds tokens [j * l', (j + 1) * l')), keys s <= t only.
//
// One CTA serves kP consecutive query positions of one KV head; its kBM MMA rows are (position, head-in-group)
// pairs, whole positions per warp: for G <= 16 a warp holds 16 / G positions (row i = position * G + head, rows
// past that are padding), for G > 16 one position spans ceil(G / 16) warps (rounded up to a power of two). The
// grid runs positions fastest, so CTAs in flight together work on neighbouring positions of one KV head and share
// its blocks in L2. The positions' block lists are merged into one ascending, de-duplicated list in shared memory,
// each block with a bitmask of the positions that selected it. The K/V of every listed block streams once through
// cp.async-pipelined shared-memory tiles for all rows; a warp skips a tile that none of its positions selected, and
// each row is masked to its own position's blocks and to s <= t. The MMA fragment layouts and the base-2 online
// softmax are those of attn_fwd.cuh.
//
// With an overlap plan (templates/slc_plan.cuh), several variants share one selection: each serves only the
// positions whose span (plan_span consecutive rows of the packed positions) is in its bucket (plan_bucket), and
// treats the others as absent (no list, no Q, nothing written), so every output row is written by exactly one
// variant. A CTA none of whose positions is its own returns at once.
#ifndef NSA_SLC_FWD_CUH
#define NSA_SLC_FWD_CUH
#ifndef NSAJIT_GENERATED
// Defaults so that an editor or `nvcc -arch=sm_90a -c` can read this file on its own; codegen writes these.
#include "common.cuh"
#include "slc_fwd_params.h"
#include "hopper.cuh"
#include "hopper_attn.cuh"
namespace nsa::spec {
typedef bf16 elem;
constexpr int kDK = 128, kDV = 128, kG = 16, kL = 64, kBM = 64, kBN = 64, kStages = 2, kQInRegs = 1, kImpl = 0;
}  // namespace nsa::spec
#endif

namespace nsa {

namespace slc_fwd {

using namespace spec;
constexpr int kWarps = kBM / 16;
constexpr int kThreads = kWarps * 32;
constexpr bool kSmallGroup = kG <= 16;
constexpr int kPosPerWarp = kSmallGroup ? 16 / kG : 1;        // G <= 16: whole positions in one warp
// G > 16: the warps of one position, ceil(G / 16) rounded up to a power of two so that kBM holds whole positions
// (warps past ceil(G / 16) are all padding and compute nothing).
constexpr int kWarpsPerPos = kSmallGroup ? 1 : (kG <= 32 ? 2 : kG <= 64 ? 4 : kG <= 128 ? 8 : 16);
constexpr int kP = kSmallGroup ? kWarps * kPosPerWarp : kWarps / kWarpsPerPos;
constexpr int kTilesPerBlock = kL / kBN;
// Head dims: kDK and kDV are the true ones (global memory); shared tiles are dim_smem wide, the MMA loops and the
// accumulators dim_mma (common.cuh).
constexpr int kSmemQ = kBM * dim_smem(kDK) * 2;
constexpr int kSmemK = kBN * dim_smem(kDK) * 2;
constexpr int kSmemV = kBN * dim_smem(kDV) * 2;
constexpr int kMaxN = 32;           // the merge's shared-memory lists hold kP * kMaxN entries (n <= kMaxN)
constexpr u32 kNone = 0xffffffffu;  // "no block" in the merge
static_assert(kBM % 16 == 0 && kBN % 16 == 0, "tile sizes must be multiples of 16");
static_assert(kDK % 8 == 0 && kDV % 8 == 0, "head dims must be multiples of 8");
static_assert(kL % kBN == 0, "a selection block must be a whole number of key tiles");
static_assert(kSmallGroup || kWarps % kWarpsPerPos == 0, "a CTA must hold whole positions");
static_assert(kP >= 1 && kP <= 32, "block masks are 32-bit: 1..32 positions per CTA");
static_assert(kStages >= 2, "at least double buffering");
static_assert(kP * kMaxN * 4 <= kStages * (kSmemK + kSmemV), "the idx rows must fit the K/V stages");

// Position (0 .. kP) of row i (0 .. 16) of warp w, or -1 for a padding row; and the row's head within the group.
__device__ __forceinline__ int row_position(int w, int i) {
  if constexpr (kSmallGroup) {
    return i < kPosPerWarp * kG ? w * kPosPerWarp + i / kG : -1;
  } else {
    return (w % kWarpsPerPos) * 16 + i < kG ? w / kWarpsPerPos : -1;
  }
}
__device__ __forceinline__ int row_head(int w, int i) {
  if constexpr (kSmallGroup) {
    return i % kG;
  } else {
    return (w % kWarpsPerPos) * 16 + i;
  }
}

__device__ __forceinline__ u32 warp_min_u32(u32 v) {
  u32 r;
  asm volatile("redux.sync.min.u32 %0, %1, 0xffffffff;\n" : "=r"(r) : "r"(v));
  return r;
}

// The two 16-bit values of a packed pair, as fp32.
__device__ __forceinline__ float unpack_lo(u32 x) {
  elem e;
  e.bits = static_cast<unsigned short>(x & 0xffffu);
  return to_float<elem>(e);
}
__device__ __forceinline__ float unpack_hi(u32 x) {
  elem e;
  e.bits = static_cast<unsigned short>(x >> 16);
  return to_float<elem>(e);
}

// Copies rows [0, kRows) of D elements (D the true dim), row r at base + r * stride, into a swizzled shared tile of
// dim_smem(D)-wide rows; rows >= valid are zero-filled and not read (`readable`, an address inside the tensor, stands
// in for them), and so are chunks D / 8 .. dim_mma(D) / 8 of every row. The stride passes through an empty asm so
// that the row offsets are recomputed per call: hoisted out of the main loop, they would hold one 64-bit register per
// copied row.
template <int kRows, int D>
__device__ __forceinline__ void load_rows_async(u32 tile, const elem* base, i64 stride, int valid,
                                                const elem* readable) {
  constexpr int kChunks = dim_smem(D) / 8;  // row pitch
  constexpr int kCopy = dim_mma(D) / 8;     // chunks written per row
  constexpr int kTotal = kRows * kCopy;
  asm volatile("" : "+l"(stride));
#pragma unroll 8
  for (int i = 0; i < (kTotal + kThreads - 1) / kThreads; ++i) {
    const int linear = i * kThreads + static_cast<int>(threadIdx.x);
    if (kTotal % kThreads != 0 && linear >= kTotal) break;
    const int row = linear / kCopy;
    const int chunk = linear % kCopy;
    bool ok = row < valid;
    if constexpr (kCopy != D / 8) ok = ok && chunk < D / 8;
    const elem* src = ok ? base + row * stride + chunk * 8 : readable;
    cp_async_16(tile + swz<kChunks>(row, chunk), src, ok);
  }
}

// Merge (warp 0, lane p = position p, `count` its number of idx entries): repeatedly take the smallest head of the
// lists, record which positions hold it, advance those. Entries that cannot contribute (negative, or a block
// starting after t) are skipped. Every step consumes at least one entry, so the merged list has at most kP * n
// blocks.
__device__ __forceinline__ void merge_lists(const i32* s_lists, int count, int t0, int n, i32* s_block, u32* s_mask,
                                            i32* s_count, int lane) {
  const int t_lane = t0 + lane;
  const i32* list = s_lists + lane * n;
  int ptr = 0;
  auto next = [&]() -> u32 {
    for (; ptr < count; ++ptr) {
      const i32 j = list[ptr];
      if (j >= 0 && static_cast<i64>(j) * kL <= t_lane) return static_cast<u32>(j);
    }
    return kNone;
  };
  u32 head = next();
  int merged = 0;
  for (;;) {
    const u32 m = warp_min_u32(head);
    if (m == kNone) break;
    const u32 who = __ballot_sync(0xffffffffu, head == m);
    if (lane == 0) {
      s_block[merged] = static_cast<i32>(m);
      s_mask[merged] = who;
    }
    ++merged;
    if (head == m) {
      ++ptr;
      head = next();
    }
  }
  if (lane == 0) *s_count = merged;
}

// The CTA's live positions (bit p: position t0 + p): those before the end of the sequence and, with a plan, in a
// span of this variant's bucket (the loop visits each span the CTA's positions fall in: one or two for the runtime's
// 64-position spans).
__device__ __forceinline__ u32 live_positions(const SlcFwdParams& p, int len, i64 tok0, int t0, int kvh) {
  u32 live = len - t0 >= kP ? (kP == 32 ? 0xffffffffu : (1u << kP) - 1u) : (1u << (len - t0)) - 1u;
  if (p.plan != nullptr) {
    u32 mine = 0;
    const i64 row0 = tok0 + t0;  // the packed row of position t0
    for (int q = 0; q < kP;) {
      const i64 span = (row0 + q) / p.plan_span;
      const int end = static_cast<int>(min(static_cast<i64>(kP), (span + 1) * p.plan_span - row0));
      const u32 bits = (end >= 32 ? 0xffffffffu : (1u << end) - 1u) & ~((1u << q) - 1u);
      if ((live & bits) != 0 && p.plan[span * p.H + kvh] == p.plan_bucket) mine |= bits;
      q = end;
    }
    live &= mine;
  }
  return live;
}

__device__ __forceinline__ void run_mma(const SlcFwdParams& p) {
  extern __shared__ __align__(128) char smem[];
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const int warp = static_cast<int>(threadIdx.x) / 32;
  const int b = static_cast<int>(blockIdx.z);
  const int kvh = static_cast<int>(blockIdx.y);
  const int n = p.n;

  // The sequence: its length, and the offset of its first token in a tensor with batch / sequence strides sb, st
  // (varlen: token cu_seqlens[b] of the packed rows). Positions within a sequence are < 2^31 (T is), so they are
  // 32-bit; every address is 64-bit. Offsets are recomputed where used: the epilogue's four would otherwise stay
  // live through the main loop, which runs at the register cap.
  const bool varlen = p.cu_seqlens != nullptr;
  const int len = varlen ? p.cu_seqlens[b + 1] - p.cu_seqlens[b] : static_cast<int>(p.T);
  auto seq_offset = [&](i64 sb, i64 st) -> i64 {
    return varlen ? static_cast<i64>(p.cu_seqlens[b]) * st : static_cast<i64>(b) * sb;
  };
  const i64 tok0 = seq_offset(p.T, 1);  // the sequence's first row of idx and cnt
  if (static_cast<i64>(blockIdx.x) * kP >= len) return;
  const int t0 = static_cast<int>(blockIdx.x) * kP;  // first query position of this CTA

  const u32 live = live_positions(p, len, tok0, t0, kvh);
  if (live == 0) return;

  const elem* q = static_cast<const elem*>(p.q) + seq_offset(p.q_sb, p.q_st) + static_cast<i64>(kvh) * kG * p.q_sh;

  const u32 sQ = smem_addr(smem);
  const u32 sK0 = sQ + kSmemQ;
  const u32 sV0 = sK0 + kStages * kSmemK;
  // The idx rows as given, [kP][n], live only until the merge is done: they borrow the K/V stages, which are
  // first written after the barrier that ends the merge.
  i32* s_lists = reinterpret_cast<i32*>(smem + kSmemQ);
  i32* s_block = reinterpret_cast<i32*>(smem + kSmemQ + kStages * (kSmemK + kSmemV));  // merged blocks, ascending
  u32* s_mask = reinterpret_cast<u32*>(s_block + kP * kMaxN);  // per merged block: bit p = position p selected it
  i32* s_count = reinterpret_cast<i32*>(s_mask + kP * kMaxN);  // number of merged blocks
  u32* s_live = reinterpret_cast<u32*>(s_count + 1);            // bit p: position p is this CTA's to compute

  load_tile_async<kThreads, kBM, kDK>(
      sQ,
      [&](int r) -> const void* {
        const int pos = row_position(r / 16, r % 16);
        return pos >= 0 && ((live >> pos) & 1u) != 0
                   ? q + static_cast<i64>(t0 + pos) * p.q_st + row_head(r / 16, r % 16) * p.q_sh
                   : nullptr;
      },
      q);
  cp_async_commit();

  // The positions' idx rows into shared memory; lane p of warp 0 fetches position p's count.
  const i32* idx = p.idx + ((tok0 + t0) * p.H + kvh) * static_cast<i64>(n);
  for (int e = static_cast<int>(threadIdx.x); e < kP * n; e += kThreads) {
    const int pos = e / n;
    s_lists[e] = ((live >> pos) & 1u) != 0 ? idx[static_cast<i64>(pos) * p.H * n + (e - pos * n)] : -1;
  }
  int count = 0;
  if (warp == 0 && lane < kP && ((live >> lane) & 1u) != 0)
    count = min(max(p.cnt[(tok0 + t0 + lane) * p.H + kvh], 0), n);
  if (threadIdx.x == 0) *s_live = live;
  __syncthreads();

  if (warp == 0) merge_lists(s_lists, count, t0, n, s_block, s_mask, s_count, lane);
  cp_async_wait<0>();
  __syncthreads();
  const int n_steps = *s_count * kTilesPerBlock;

  // The warp's positions: their live bits and their query range. Cheap functions of t0 and the live bits (in
  // shared memory), recomputed where used rather than held in registers across the main loop (which runs at the
  // register cap).
  const int w_first = kSmallGroup ? warp * kPosPerWarp : warp / kWarpsPerPos;
  const int w_count = kSmallGroup ? kPosPerWarp : 1;
  const bool warp_has_rows = kSmallGroup || (warp % kWarpsPerPos) * 16 < kG;
  auto warp_bits = [&]() -> u32 {
    return warp_has_rows ? *s_live & (((w_count >= 32 ? 0xffffffffu : (1u << w_count) - 1u)) << w_first) : 0u;
  };
  const int t_hi_cta = t0 + 31 - __clz(live);  // the CTA's last live position
  // Merged blocks start at or before some query of the CTA, so tile starts are < len (32-bit).
  auto tile_start = [&](int step) -> int {
    return s_block[step / kTilesPerBlock] * kL + (step % kTilesPerBlock) * kBN;
  };
  // Keys past the CTA's last query are never used: zero-filled, not read. The K/V base pointers are recomputed per
  // tile (registers again).
  auto load_kv = [&](int step, int stage) {
    const int s0 = tile_start(step);
    const elem* k = static_cast<const elem*>(p.k) + seq_offset(p.k_sb, p.k_st) + static_cast<i64>(kvh) * p.k_sh;
    const elem* v = static_cast<const elem*>(p.v) + seq_offset(p.v_sb, p.v_st) + static_cast<i64>(kvh) * p.v_sh;
    load_rows_async<kBN, kDK>(sK0 + stage * kSmemK, k + static_cast<i64>(s0) * p.k_st, p.k_st, t_hi_cta + 1 - s0,
                              k);
    load_rows_async<kBN, kDV>(sV0 + stage * kSmemV, v + static_cast<i64>(s0) * p.v_st, p.v_st, t_hi_cta + 1 - s0,
                              v);
  };

  u32 qf[kQInRegs ? dim_mma(kDK) / 16 : 1][4];
  if constexpr (kQInRegs) {
#pragma unroll
    for (int kk = 0; kk < dim_mma(kDK) / 16; ++kk)
      ldmatrix_x4(sQ + swz<dim_smem(kDK) / 8>(warp * 16 + lane % 16, kk * 2 + lane / 16), qf[kk][0], qf[kk][1],
                  qf[kk][2], qf[kk][3]);
  }

#pragma unroll
  for (int i = 0; i < kStages - 1; ++i) {
    if (i < n_steps) load_kv(i, i);
    cp_async_commit();
  }

  float acc[dim_mma(kDV) / 8][4];
#pragma unroll
  for (int i = 0; i < dim_mma(kDV) / 8; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;
  float row_max[2] = {neg_inf(), neg_inf()};
  float row_sum[2] = {0.f, 0.f};

  for (int j = 0; j < n_steps; ++j) {
    const int stage = j % kStages;
    if (j + kStages - 1 < n_steps) load_kv(j + kStages - 1, (j + kStages - 1) % kStages);
    cp_async_commit();
    cp_async_wait<kStages - 1>();
    __syncthreads();

    const u32 block_bits = s_mask[j / kTilesPerBlock];
    const int s0 = tile_start(j);
    const u32 w_bits = warp_bits();
    // Warp-uniform: skip a tile none of this warp's positions selected or can see.
    if ((block_bits & w_bits) != 0 && s0 <= min(t0 + w_first + w_count - 1, len - 1)) {
      const u32 sK = sK0 + stage * kSmemK;
      const u32 sV = sV0 + stage * kSmemV;

      float s[kBN / 8][4];
      qk_tile<elem, kBN, kDK, kQInRegs != 0>(s, qf, sQ, sK, warp, lane);

      // Mask unless every position of the warp selected this block and the whole tile is <= its first query.
      // Row r keeps the tile's columns c <= hi[r] (hi = -1: none, for a row whose position did not select it).
      // Padding rows and rows past the end hold zero Q: finite, never written.
      const bool full = (block_bits & w_bits) == w_bits && s0 + kBN - 1 <= t0 + w_first;
      if (!full) {
        int hi[2];
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          // This thread's rows lane/4 and lane/4 + 8 of the warp's 16.
          // Only live positions have lists, so a set bit means a live position that selected this block.
          const int pos = row_position(warp, lane / 4 + 8 * r);
          const bool selected = pos >= 0 && ((block_bits >> pos) & 1u) != 0;
          hi[r] = selected ? min(t0 + pos - s0, kBN) : -1;
        }
#pragma unroll
        for (int nt = 0; nt < kBN / 8; ++nt) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int c = nt * 8 + (lane % 4) * 2 + (e & 1);
            if (c > hi[e / 2]) s[nt][e] = neg_inf();
          }
        }
      }

      online_softmax<kBN, kDV>(s, acc, row_max, row_sum, p.scale_log2);
      accumulate_pv<elem, kBN, kDV>(s, acc, sV, lane);
    }
    __syncthreads();
  }
  cp_async_wait<0>();

  // Epilogue: normalize; write o_slc, the gated output and lse for the rows that exist (the true kDV columns).
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const float total = warp_quad_sum(row_sum[r]);
    const int i = lane / 4 + 8 * r;  // the row within the warp
    const int pos = row_position(warp, i);
    if (pos < 0 || ((*s_live >> pos) & 1u) == 0) continue;
    const i64 t = t0 + pos;
    const i64 head = static_cast<i64>(kvh) * kG + row_head(warp, i);
    const float inv = total > 0.f ? 1.f / total : 0.f;
    if (p.o != nullptr) {
      elem* orow = static_cast<elem*>(p.o) + seq_offset(p.o_sb, p.o_st) + t * p.o_st + head * p.o_sh;
#pragma unroll
      for (int dn = 0; dn < kDV / 8; ++dn)
        *reinterpret_cast<u32*>(orow + dn * 8 + (lane % 4) * 2) =
            pack2<elem>(acc[dn][2 * r] * inv, acc[dn][2 * r + 1] * inv);
    }
    if (p.gate != nullptr) {
      const i64 g_at = seq_offset(p.gate_sb, p.gate_st) + t * p.gate_st + head * p.gate_sh;
      const float g = to_float<elem>(static_cast<const elem*>(p.gate)[g_at]) * inv;
      elem* xrow = static_cast<elem*>(p.out) + seq_offset(p.out_sb, p.out_st) + t * p.out_st + head * p.out_sh;
#pragma unroll
      for (int dn = 0; dn < kDV / 8; ++dn) {
        u32* dst = reinterpret_cast<u32*>(xrow + dn * 8 + (lane % 4) * 2);
        float x0 = acc[dn][2 * r] * g, x1 = acc[dn][2 * r + 1] * g;
        if (p.accumulate) {
          const u32 old = *dst;
          x0 += unpack_lo(old);
          x1 += unpack_hi(old);
        }
        *dst = pack2<elem>(x0, x1);
      }
    }
    if (p.lse != nullptr && lane % 4 == 0) {
      const float ln2 = 0.6931471805599453f;
      p.lse[seq_offset(p.lse_sb, p.lse_st) + t * p.lse_st + head] = total > 0.f ? (row_max[r] + fast_log2(total)) * ln2 : neg_inf();
    }
  }
}

// ---- IMPL=1: the Hopper implementation -------------------------------------------------------------------------
// The same CTA (kP positions, their lists merged) on warpgroup MMAs, as attn_fwd_hopper.cuh: each warpgroup owns 64
// rows; per 64-key tile S = Q K^T and O += P V are wgmma m64n64k16 (K, V and Q in 128-byte-swizzled shared tiles, P
// from registers), and S of the next tile runs together with P V of this one while the softmax takes the maxima and
// exponentials (the steps are hopper_attn.cuh's). A warpgroup computes every merged tile (it cannot skip per warp):
// rows whose position did not select the block are masked whole. A template so that it is instantiated only for
// kImpl = 1.
template <class E>
__device__ __forceinline__ void run_hopper(const SlcFwdParams& p) {
  static_assert(kBM % 64 == 0 && kBN == 64 && kL % 64 == 0, "IMPL=1: 64 rows per warpgroup, 64-key tiles");
  constexpr bool kBf16 = DtypeTraits<E>::is_bf16;
  constexpr int kKSteps = dim_mma(kDK) / 16;
  constexpr int kOB = dim_smem(kDV) / 64;
  extern __shared__ __align__(128) char smem[];
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const int warp = static_cast<int>(threadIdx.x) / 32;
  const int wg = warp / 4;
  const int b = static_cast<int>(blockIdx.z);
  const int kvh = static_cast<int>(blockIdx.y);
  const int n = p.n;

  const bool varlen = p.cu_seqlens != nullptr;
  const int len = varlen ? p.cu_seqlens[b + 1] - p.cu_seqlens[b] : static_cast<int>(p.T);
  auto seq_offset = [&](i64 sb, i64 st) -> i64 {
    return varlen ? static_cast<i64>(p.cu_seqlens[b]) * st : static_cast<i64>(b) * sb;
  };
  const i64 tok0 = seq_offset(p.T, 1);
  if (static_cast<i64>(blockIdx.x) * kP >= len) return;
  const int t0 = static_cast<int>(blockIdx.x) * kP;
  const u32 live = live_positions(p, len, tok0, t0, kvh);
  if (live == 0) return;

  const E* q = static_cast<const E*>(p.q) + seq_offset(p.q_sb, p.q_st) + static_cast<i64>(kvh) * kG * p.q_sh;

  // The tiles 1024-byte aligned (the launch asks for 1 KB more), then the merge's arrays as in run_mma.
  const u32 raw = smem_addr(smem);
  const u32 sQ = (raw + 1023u) & ~1023u;
  char* base = smem + (sQ - raw);
  const u32 sKV = sQ + kSmemQ;
  auto stage_k = [&](int stage) { return sKV + static_cast<u32>(stage) * (kSmemK + kSmemV); };
  auto stage_v = [&](int stage) { return stage_k(stage) + kSmemK; };
  i32* s_lists = reinterpret_cast<i32*>(base + kSmemQ);
  i32* s_block = reinterpret_cast<i32*>(base + kSmemQ + kStages * (kSmemK + kSmemV));
  u32* s_mask = reinterpret_cast<u32*>(s_block + kP * kMaxN);
  i32* s_count = reinterpret_cast<i32*>(s_mask + kP * kMaxN);

  hopper::load_tile_sw128<kThreads, kBM, kDK>(
      sQ,
      [&](int r) -> const void* {
        const int pos = row_position(r / 16, r % 16);
        return pos >= 0 && ((live >> pos) & 1u) != 0
                   ? q + static_cast<i64>(t0 + pos) * p.q_st + row_head(r / 16, r % 16) * p.q_sh
                   : nullptr;
      },
      q);
  cp_async_commit();

  const i32* idx = p.idx + ((tok0 + t0) * p.H + kvh) * static_cast<i64>(n);
  for (int e = static_cast<int>(threadIdx.x); e < kP * n; e += kThreads) {
    const int pos = e / n;
    s_lists[e] = ((live >> pos) & 1u) != 0 ? idx[static_cast<i64>(pos) * p.H * n + (e - pos * n)] : -1;
  }
  int count = 0;
  if (warp == 0 && lane < kP && ((live >> lane) & 1u) != 0)
    count = min(max(p.cnt[(tok0 + t0 + lane) * p.H + kvh], 0), n);
  __syncthreads();
  if (warp == 0) merge_lists(s_lists, count, t0, n, s_block, s_mask, s_count, lane);
  __syncthreads();
  const int n_tiles = *s_count * kTilesPerBlock;

  const int t_hi_cta = t0 + 31 - __clz(live);
  auto tile_start = [&](int step) -> int {
    return s_block[step / kTilesPerBlock] * kL + (step % kTilesPerBlock) * kBN;
  };
  // Keys past the CTA's last query are never used: zero-filled, not read.
  auto load_kv = [&](int tile) {
    const int stage = tile % kStages;
    const int s0 = tile_start(tile);
    const int valid = t_hi_cta + 1 - s0;
    const E* k = static_cast<const E*>(p.k) + seq_offset(p.k_sb, p.k_st) + static_cast<i64>(kvh) * p.k_sh +
                 static_cast<i64>(s0) * p.k_st;
    const E* v = static_cast<const E*>(p.v) + seq_offset(p.v_sb, p.v_st) + static_cast<i64>(kvh) * p.v_sh +
                 static_cast<i64>(s0) * p.v_st;
    hopper::load_tile_sw128<kThreads, kBN, kDK>(
        stage_k(stage), [&](int r) -> const void* { return r < valid ? k + r * p.k_st : nullptr; }, p.k);
    hopper::load_tile_sw128<kThreads, kBN, kDV>(
        stage_v(stage), [&](int r) -> const void* { return r < valid ? v + r * p.v_st : nullptr; }, p.v);
  };
#pragma unroll
  for (int i = 0; i < kStages - 1; ++i) {
    if (i < n_tiles) load_kv(i);
    cp_async_commit();
  }

  // This thread's two rows: their positions (-1: padding) within the CTA.
  const int pos_row[2] = {row_position(warp, lane / 4), row_position(warp, lane / 4 + 8)};

  float acc[kOB][32];
#pragma unroll
  for (int i = 0; i < kOB; ++i)
#pragma unroll
    for (int e = 0; e < 32; ++e) acc[i][e] = 0.f;
  float s[1][32];
  u32 pf[4][4];
  u32 qf[kQInRegs ? kKSteps : 1][4];
  float row_max[2] = {neg_inf(), neg_inf()};
  float row_sum[2] = {0.f, 0.f};
  float alpha[2], tile_sum[2];

  auto issue_s = [&](int stage) {
    hopper::issue_s<kBf16, 1, kKSteps, kBM, kBN, kQInRegs != 0>(s, qf, sQ, stage_k(stage), wg);
  };
  auto issue_pv = [&](int stage) { hopper::issue_pv<kBf16, kBN, kOB>(acc, pf, stage_v(stage)); };
  // Mask row r to its position's blocks and to s <= t, then the first half of the online softmax (O and P untouched).
  auto softmax_a = [&](int tile) {
    const u32 bits = s_mask[tile / kTilesPerBlock];
    const int s0 = tile_start(tile);
    if (!(bits == live && s0 + kBN - 1 <= t0)) {
      int hi[2];
#pragma unroll
      for (int r = 0; r < 2; ++r)
        hi[r] = pos_row[r] >= 0 && ((bits >> pos_row[r]) & 1u) != 0 ? min(t0 + pos_row[r] - s0, kBN) : -1;
#pragma unroll
      for (int nt = 0; nt < 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e)
          if (nt * 8 + (lane % 4) * 2 + (e & 1) > hi[e / 2]) s[0][nt * 4 + e] = neg_inf();
    }
    hopper::softmax_exp<1>(s, row_max, alpha, tile_sum, p.scale_log2);
  };
  auto softmax_b = [&]() { hopper::rescale_pack<E, 1, kOB>(acc, s, pf, row_sum, alpha, tile_sum); };
  auto fence_acc = [&]() { hopper::fence_regs(acc); };
  auto fence_p = [&]() { hopper::fence_regs(pf); };

  cp_async_wait<kStages - 2>();
  hopper::fence_async_shared();
  __syncthreads();
  if (n_tiles > 0) {
    if constexpr (kQInRegs) {
#pragma unroll
      for (int kk = 0; kk < kKSteps; ++kk)
        ldmatrix_x4(sQ + hopper::sw128<kBM>(warp * 16 + lane % 16, kk * 2 + lane / 16), qf[kk][0], qf[kk][1],
                    qf[kk][2], qf[kk][3]);
    }
    hopper::fence_regs(s);
    hopper::wgmma_fence();
    issue_s(0);
    hopper::wgmma_wait<0>();
    hopper::fence_regs(s);
    softmax_a(0);
    softmax_b();
  }
  for (int j = 0; j + 1 < n_tiles; ++j) {
    if constexpr (kStages >= 3) {
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
    hopper::fence_regs(s);
    fence_acc();
    fence_p();
    hopper::wgmma_fence();
    issue_s((j + 1) % kStages);
    issue_pv(j % kStages);
    hopper::wgmma_wait<1>();
    hopper::fence_regs(s);
    softmax_a(j + 1);
    hopper::wgmma_wait<0>();
    fence_acc();
    fence_p();
    softmax_b();
  }
  if (n_tiles > 0) {
    fence_acc();
    fence_p();
    hopper::wgmma_fence();
    issue_pv((n_tiles - 1) % kStages);
    hopper::wgmma_wait<0>();
    fence_acc();
  }
  cp_async_wait<0>();

  // Epilogue, as run_mma's (acc in wgmma's layout: n8 tile dn of O in acc[dn / 8][(dn % 8) * 4 ..]).
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const float total = warp_quad_sum(row_sum[r]);
    const int i = lane / 4 + 8 * r;
    const int pos = pos_row[r];
    if (pos < 0 || ((live >> pos) & 1u) == 0) continue;
    const i64 t = t0 + pos;
    const i64 head = static_cast<i64>(kvh) * kG + row_head(warp, i);
    const float inv = total > 0.f ? 1.f / total : 0.f;
    if (p.o != nullptr) {
      E* orow = static_cast<E*>(p.o) + seq_offset(p.o_sb, p.o_st) + t * p.o_st + head * p.o_sh;
#pragma unroll
      for (int dn = 0; dn < kDV / 8; ++dn)
        *reinterpret_cast<u32*>(orow + dn * 8 + (lane % 4) * 2) =
            pack2<E>(acc[dn / 8][(dn % 8) * 4 + 2 * r] * inv, acc[dn / 8][(dn % 8) * 4 + 2 * r + 1] * inv);
    }
    if (p.gate != nullptr) {
      const i64 g_at = seq_offset(p.gate_sb, p.gate_st) + t * p.gate_st + head * p.gate_sh;
      const float g = to_float<E>(static_cast<const E*>(p.gate)[g_at]) * inv;
      E* xrow = static_cast<E*>(p.out) + seq_offset(p.out_sb, p.out_st) + t * p.out_st + head * p.out_sh;
#pragma unroll
      for (int dn = 0; dn < kDV / 8; ++dn) {
        u32* dst = reinterpret_cast<u32*>(xrow + dn * 8 + (lane % 4) * 2);
        float x0 = acc[dn / 8][(dn % 8) * 4 + 2 * r] * g, x1 = acc[dn / 8][(dn % 8) * 4 + 2 * r + 1] * g;
        if (p.accumulate) {
          const u32 old = *dst;
          x0 += unpack_lo(old);
          x1 += unpack_hi(old);
        }
        *dst = pack2<E>(x0, x1);
      }
    }
    if (p.lse != nullptr && lane % 4 == 0) {
      const float ln2 = 0.6931471805599453f;
      p.lse[seq_offset(p.lse_sb, p.lse_st) + t * p.lse_st + head] =
          total > 0.f ? (row_max[r] + fast_log2(total)) * ln2 : neg_inf();
    }
  }
}

template <class E>
__device__ __forceinline__ void run_impl(const SlcFwdParams& p) {
  if constexpr (kImpl == 1) {
    run_hopper<E>(p);
  } else {
    run_mma(p);
  }
}
__device__ __forceinline__ void run(const SlcFwdParams& p) { run_impl<elem>(p); }

}  // namespace slc_fwd
}  // namespace nsa

#endif  // NSA_SLC_FWD_CUH
