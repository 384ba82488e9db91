// NSA decode (NSA.md, Decode): the last Tq tokens of B sequences attend to a paged KV cache and a compressed cache.
// One CTA per (KV head, query token, sequence); its rows are the G query heads of the group. In turn, on CUDA
// cores in fp32 (the baseline decode kernel, memory-bound by design):
//   1. the compressed branch over the visible compressed entries (online softmax, base 2), giving o_cmp and lse;
//   2. the selection: a second pass over the compressed keys turns each score into p_cmp = exp(s - lse), summed over
//      the group's heads per entry, then to selection blocks by overlap (NSA.md's weights), then the forced blocks
//      (0, t/l' - 1, t/l') and the highest scores, equal scores to the lower index;
//   3. the selected branch over the chosen blocks' tokens (s <= t) and the window branch over the last w tokens,
//      both read through the page table;
//   4. o = g_cmp o_cmp + g_slc o_slc + g_win o_win, written in the output dtype.
// Keys stream through shared memory KT at a time, converted to fp32 (K rows padded by one float so that lanes
// reading one column of different keys hit different banks); with kMma on tensor cores instead (below).
// That is the one-launch path (DecodeParams.phase 0). Split-KV (the config's SPLIT > 1, DecodeParams.split) runs the
// same steps as five launches through a workspace: 1. each branch's partial state over a chunk of its keys (the
// compressed and the window branch), 2. the compressed branch's lse from the partials and the selection
// probabilities of a chunk, 3. the selection (one CTA per row), 4. the selected branch's partials, 5. the merge and
// the gated sum.
#ifndef NSA_DECODE_CUH
#define NSA_DECODE_CUH
#ifndef NSAJIT_GENERATED
#include "common.cuh"
#include "decode_params.h"
namespace nsa::spec {
typedef bf16 elem;
constexpr int kDK = 128, kDV = 128, kG = 16, kThreads = 128, kKT = 32, kMaxCmp = 1024, kMaxSel = 1024, kMaxN = 32,
              kMma = 0;
}  // namespace nsa::spec
#endif

namespace nsa {

namespace decode {

using namespace spec;
constexpr int kGG = kThreads / kKT;                  // row groups in the score layout (thread = key x row group)
constexpr int kRPT = (kG + kGG - 1) / kGG;           // rows per thread in the score layout
constexpr int kE = (kG * kDV + kThreads - 1) / kThreads;  // (row, column) accumulators per thread
constexpr int kWarps = kThreads / 32;
static_assert(kKT == 16 || kKT == 32, "a key tile is 16 or 32 keys (one row group within one warp)");
static_assert(kThreads % 32 == 0 && kThreads % kKT == 0, "threads: a multiple of the warp and of the key tile");
static_assert(kDK % 8 == 0 && kDV % 8 == 0, "head dims must be multiples of 8");
static_assert(kE <= 64, "too many accumulators per thread: use more threads");

// kMma: the branches' attention on tensor cores instead (mma.sync m16n8k16): the G <= 16 heads are the 16 rows of
// one MMA tile, each of the 4 warps takes every 4th tile of 32 keys with a flash-attention state of its own
// (K and V tiles by cp.async into its own swizzled shared memory), and the 4 states merge at the end of a branch.
static_assert(!kMma || (kG <= 16 && kDK % 64 == 0 && kDV % 64 == 0 && kKT == 32 && kThreads == 128),
              "the tensor-core path: G <= 16, head dims multiples of 64, 32-key tiles, 4 warps");
constexpr int kTileBytes = kKT * (kDK + kDV) * 2;  // one warp's K and V tile (16-bit elements)

// Shared memory, in floats (then bytes for the flags and the chosen list).
constexpr int kOffQ = 0;
constexpr int kSizeQ = kMma ? (16 * kDK / 2 > kG * kDK ? 16 * kDK / 2 : kG * kDK) : kG * kDK;
constexpr int kOffK = kOffQ + kSizeQ;
constexpr int kSizeK = kMma ? kWarps * kTileBytes / 4 : kKT * (kDK + 1);
constexpr int kOffV = kOffK + kSizeK;
constexpr int kOffP = kOffV + (kMma ? 0 : kKT * kDV);
constexpr int kOffRed = kOffP + kG * kKT;
constexpr int kOffM = kOffRed + kGG * kKT;
constexpr int kOffL = kOffM + kG;
constexpr int kOffA = kOffL + kG;
constexpr int kOffLse = kOffA + kG;
constexpr int kOffPc = kOffLse + kG;
constexpr int kOffImp = kOffPc + kMaxCmp;
constexpr int kOffBestV = kOffImp + kMaxSel;
constexpr int kOffBestJ = kOffBestV + kWarps;  // ints
constexpr int kOffSel = kOffBestJ + kWarps;    // ints
constexpr int kOffFlags = kOffSel + kMaxN;     // bytes from here
constexpr int kSmemBytes = kOffFlags * 4 + ((kMaxSel + 15) / 16) * 16;

struct Smem {
  float* q;
  float* k;
  float* v;
  float* p;
  float* red;
  float* m;
  float* l;
  float* a;
  float* lse;
  float* pc;
  float* imp;
  float* best_v;
  int* best_j;
  int* sel;
  unsigned char* flags;
};

__device__ __forceinline__ Smem carve(float* base) {
  Smem s;
  s.q = base + kOffQ, s.k = base + kOffK, s.v = base + kOffV, s.p = base + kOffP, s.red = base + kOffRed;
  s.m = base + kOffM, s.l = base + kOffL, s.a = base + kOffA, s.lse = base + kOffLse, s.pc = base + kOffPc;
  s.imp = base + kOffImp, s.best_v = base + kOffBestV;
  s.best_j = reinterpret_cast<int*>(base + kOffBestJ);
  s.sel = reinterpret_cast<int*>(base + kOffSel);
  s.flags = reinterpret_cast<unsigned char*>(base + kOffFlags);
  return s;
}

// 8 elements (one 16-byte chunk) to fp32.
__device__ __forceinline__ void unpack8(const uint4 raw, float (&f)[8]) {
  const u32 w[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    elem lo, hi;
    lo.bits = static_cast<unsigned short>(w[i] & 0xffffu);
    hi.bits = static_cast<unsigned short>(w[i] >> 16);
    f[2 * i] = to_float(lo);
    f[2 * i + 1] = to_float(hi);
  }
}

// Rows j0 .. j0 + kKT of K (and of V when kWithV) into shared memory as fp32; rows at or past n are zeros.
// key(j) gives the key's K and V rows.
template <bool kWithV, class KeyFn>
__device__ __forceinline__ void load_tile(const Smem& s, i64 j0, i64 n, KeyFn key) {
  constexpr int kKC = kDK / 8, kVC = kDV / 8;
  for (int item = threadIdx.x; item < kKT * kKC; item += kThreads) {
    const int r = item / kKC, c = item % kKC;
    float f[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    if (j0 + r < n) unpack8(*reinterpret_cast<const uint4*>(key(j0 + r).k + c * 8), f);
#pragma unroll
    for (int e = 0; e < 8; ++e) s.k[r * (kDK + 1) + c * 8 + e] = f[e];
  }
  if constexpr (kWithV) {
    for (int item = threadIdx.x; item < kKT * kVC; item += kThreads) {
      const int r = item / kVC, c = item % kVC;
      float f[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
      if (j0 + r < n) unpack8(*reinterpret_cast<const uint4*>(key(j0 + r).v + c * 8), f);
#pragma unroll
      for (int e = 0; e < 8; ++e) s.v[r * kDV + c * 8 + e] = f[e];
    }
  }
}

// Scores of this thread's key (tid % kKT) against its rows g = tid / kKT + r * kGG (scaled to base 2 by the q
// tile); -inf for a key at or past n and 0 for rows past G (never used).
__device__ __forceinline__ void tile_scores(const Smem& s, i64 j0, i64 n, float (&sc)[kRPT]) {
  const int jj = threadIdx.x % kKT, gg = threadIdx.x / kKT;
#pragma unroll
  for (int r = 0; r < kRPT; ++r) sc[r] = 0.f;
  const float* kr = s.k + jj * (kDK + 1);
  for (int c = 0; c < kDK; ++c) {
    const float kv = kr[c];
#pragma unroll
    for (int r = 0; r < kRPT; ++r) {
      const int g = gg + r * kGG;
      if (g < kG) sc[r] = fmaf(s.q[g * kDK + c], kv, sc[r]);
    }
  }
  if (j0 + jj >= n)
#pragma unroll
    for (int r = 0; r < kRPT; ++r) sc[r] = neg_inf();
}

// Reductions over the kKT lanes of one row group (inside one warp).
__device__ __forceinline__ float group_max(float v) {
#pragma unroll
  for (int o = kKT / 2; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ float group_sum(float v) {
#pragma unroll
  for (int o = kKT / 2; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// One branch: softmax(scores) V over keys 0 .. n. Leaves acc (this thread's (row, column) elements, unnormalized),
// s.m / s.l (per row: running max in base 2 and sum), and returns nothing else. n may be 0 (acc = 0, l = 0).
template <class KeyFn>
__device__ __forceinline__ void attend(const Smem& s, i64 n, KeyFn key, float (&acc)[kE]) {
#pragma unroll
  for (int e = 0; e < kE; ++e) acc[e] = 0.f;
  __syncthreads();  // every thread is done with the previous branch's row stats
  for (int g = threadIdx.x; g < kG; g += kThreads) s.m[g] = neg_inf(), s.l[g] = 0.f;
  const int jj = threadIdx.x % kKT, gg = threadIdx.x / kKT;
  for (i64 j0 = 0; j0 < n; j0 += kKT) {
    __syncthreads();  // the previous tile is consumed; the row stats are initialized
    load_tile<true>(s, j0, n, key);
    __syncthreads();
    float sc[kRPT];
    tile_scores(s, j0, n, sc);
#pragma unroll
    for (int r = 0; r < kRPT; ++r) {
      const int g = gg + r * kGG;
      const float m_old = g < kG ? s.m[g] : 0.f;
      const float mt = group_max(sc[r]);
      const float m_new = fmaxf(m_old, mt);
      const float m_use = m_new == neg_inf() ? 0.f : m_new;
      const float pr = sc[r] == neg_inf() ? 0.f : fast_exp2(sc[r] - m_use);
      const float lt = group_sum(pr);
      __syncwarp();
      if (g < kG) {
        s.p[g * kKT + jj] = pr;
        if (jj == 0) {
          const float alpha = m_old == neg_inf() ? 0.f : fast_exp2(m_old - m_use);
          s.a[g] = alpha;
          s.l[g] = s.l[g] * alpha + lt;
          s.m[g] = m_new;
        }
      }
    }
    __syncthreads();
#pragma unroll
    for (int e = 0; e < kE; ++e) {
      const int idx = threadIdx.x + e * kThreads;
      if (idx < kG * kDV) {
        const int g = idx / kDV, c = idx % kDV;
        float a = acc[e] * s.a[g];
        const float* pg = s.p + g * kKT;
#pragma unroll 8
        for (int j = 0; j < kKT; ++j) a = fmaf(pg[j], s.v[j * kDV + c], a);
        acc[e] = a;
      }
    }
  }
  __syncthreads();  // the row stats are final for every thread
}

struct KeyRows {
  const elem* k;
  const elem* v;
};

// ---- the tensor-core path ------------------------------------------------------------------------------------------

// The pipelined loads of the tensor-core path: each lane looks up its own key row of tile j0 (kKT = 32 rows, one per
// lane) once; row pointers for K and V.
template <class KeyFn>
__device__ __forceinline__ void row_ptrs(i64 j0, i64 n, KeyFn key, int lane, const void* any, u64& kp, u64& vp) {
  const bool mine = j0 + lane < n;
  const KeyRows kr = mine ? key(j0 + lane) : KeyRows{static_cast<const elem*>(any), static_cast<const elem*>(any)};
  kp = reinterpret_cast<u64>(kr.k), vp = reinterpret_cast<u64>(kr.v);
}
// Copies (cp.async, not waited for) of the rows of tile j0 whose pointers `ptr` the lanes hold into the swizzled
// tile at sT; rows at or past n are zero-filled.
template <int D>
__device__ __forceinline__ void issue_rows(u32 sT, u64 ptr, i64 j0, i64 n, int lane, const void* any) {
  constexpr int kC = D / 8, kP = dim_smem(D) / 8;
  for (int item = lane; item < kKT * kC; item += 32) {
    const int r = item / kC, c = item % kC;
    const bool valid = j0 + r < n;
    const elem* row = reinterpret_cast<const elem*>(__shfl_sync(0xffffffffu, ptr, r));
    cp_async_16(sT + swz<kP>(r, c), valid ? static_cast<const void*>(row + c * 8) : any, valid);
  }
}

// Keys at or past n get -inf (the S accumulators of this thread: columns (lane % 4) * 2 + {0, 1} of each 8).
__device__ __forceinline__ void mask_tail(float (&sc)[kKT / 8][4], i64 j0, i64 n, int lane) {
#pragma unroll
  for (int nt = 0; nt < kKT / 8; ++nt)
#pragma unroll
    for (int e = 0; e < 2; ++e)
      if (j0 + nt * 8 + (lane % 4) * 2 + e >= n) sc[nt][e] = sc[nt][2 + e] = neg_inf();
}

// One branch over keys 0 .. n on tensor cores; leaves what attend() leaves: acc (this thread's (row, column)
// elements in the CUDA-core layout, unnormalized) and s.m / s.l per row (base-2 max, sum).
template <class KeyFn>
__device__ __forceinline__ void attend_mma(const Smem& s, i64 n, KeyFn key, float (&acc)[kE], float scale_log2,
                                           const void* any) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const u32 sQ = smem_addr(s.q);
  const u32 sK = smem_addr(s.k) + warp * kTileBytes, sV = sK + kKT * kDK * 2;
  float o[dim_mma(kDV) / 8][4];
#pragma unroll
  for (int i = 0; i < dim_mma(kDV) / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
  float row_max[2] = {neg_inf(), neg_inf()}, row_sum[2] = {0.f, 0.f};
  const u32 dummy[1][4] = {{0, 0, 0, 0}};
  __syncthreads();  // the previous branch's readers of the merge area are done
  // Software pipeline over this warp's tiles (no extra shared memory): the next tile's K is copied while this
  // tile's softmax and P V run, and its V while the next Q K^T runs. cp.async groups, in commit order:
  // K0 V0 | K1 (after Q K0) V1 (after P V0) | K2 V2 | ...; "wait until at most one group is pending" before each
  // use leaves exactly the other half in flight.
  const i64 step = static_cast<i64>(kWarps) * kKT;
  i64 j0 = static_cast<i64>(warp) * kKT;
  u64 kp, vp;
  if (j0 < n) {
    row_ptrs(j0, n, key, lane, any, kp, vp);
    issue_rows<kDK>(sK, kp, j0, n, lane, any);
    cp_async_commit();
    issue_rows<kDV>(sV, vp, j0, n, lane, any);
    cp_async_commit();
  }
  for (; j0 < n; j0 += step) {
    const i64 jn = j0 + step;
    cp_async_wait<1>();  // K of this tile
    __syncwarp();
    float sc[kKT / 8][4];
    qk_tile<elem, kKT, kDK, false>(sc, dummy, sQ, sK, 0, lane);
    mask_tail(sc, j0, n, lane);
    __syncwarp();  // every lane has read K
    if (jn < n) {
      row_ptrs(jn, n, key, lane, any, kp, vp);
      issue_rows<kDK>(sK, kp, jn, n, lane, any);
    }
    cp_async_commit();
    online_softmax<kKT, kDV>(sc, o, row_max, row_sum, scale_log2);
    cp_async_wait<1>();  // V of this tile (the next K may still be in flight)
    __syncwarp();
    accumulate_pv<elem, kKT, kDV>(sc, o, sV, lane);
    __syncwarp();  // every lane has read V
    if (jn < n) issue_rows<kDV>(sV, vp, jn, n, lane, any);
    cp_async_commit();
  }
  cp_async_wait<0>();
  // Merge the warps' states through shared memory (the K/V tiles' space): per warp, its rows' max and sum and its
  // unnormalized O [16, kDV].
  __syncthreads();
  float* mrg = s.k;  // [kWarps][16 * kDV] then [kWarps][16] maxes and [kWarps][16] sums
  float* mrg_m = mrg + kWarps * 16 * kDV;
  float* mrg_l = mrg_m + kWarps * 16;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = lane / 4 + r * 8;
    const float total = warp_quad_sum(row_sum[r]);
    if (lane % 4 == 0) mrg_m[warp * 16 + row] = row_max[r], mrg_l[warp * 16 + row] = total;
#pragma unroll
    for (int dn = 0; dn < kDV / 8; ++dn)
#pragma unroll
      for (int e = 0; e < 2; ++e) mrg[(warp * 16 + row) * kDV + dn * 8 + (lane % 4) * 2 + e] = o[dn][2 * r + e];
  }
  __syncthreads();
  for (int g = threadIdx.x; g < kG; g += kThreads) {
    float m = neg_inf();
    for (int w = 0; w < kWarps; ++w) m = fmaxf(m, mrg_m[w * 16 + g]);
    const float m_use = m == neg_inf() ? 0.f : m;
    float l = 0.f;
    for (int w = 0; w < kWarps; ++w)
      if (mrg_m[w * 16 + g] != neg_inf()) l += mrg_l[w * 16 + g] * fast_exp2(mrg_m[w * 16 + g] - m_use);
    s.m[g] = m, s.l[g] = l;
  }
#pragma unroll
  for (int e = 0; e < kE; ++e) {
    const int idx = threadIdx.x + e * kThreads;
    acc[e] = 0.f;
    if (idx < kG * kDV) {
      const int g = idx / kDV, c = idx % kDV;
      float m = neg_inf();
      for (int w = 0; w < kWarps; ++w) m = fmaxf(m, mrg_m[w * 16 + g]);
      const float m_use = m == neg_inf() ? 0.f : m;
      float a = 0.f;
      for (int w = 0; w < kWarps; ++w)
        if (mrg_m[w * 16 + g] != neg_inf()) a += mrg[(w * 16 + g) * kDV + c] * fast_exp2(mrg_m[w * 16 + g] - m_use);
      acc[e] = a;
    }
  }
  __syncthreads();  // s.m / s.l are final for every thread
}

// The selection's second pass on tensor cores: pc[i] = sum over the group's rows of exp2(s - lse2) for the
// compressed keys 0 .. nc (s.lse holds the rows' base-2 lse).
template <class KeyFn>
__device__ __forceinline__ void cmp_probabilities_mma(const Smem& s, i64 nc, KeyFn key, float scale_log2,
                                                      const void* any, float* out) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const u32 sQ = smem_addr(s.q);
  const u32 sK = smem_addr(s.k) + warp * kTileBytes;
  const u32 dummy[1][4] = {{0, 0, 0, 0}};
  __syncthreads();
  const int r0 = lane / 4, r1 = lane / 4 + 8;
  const float l0 = r0 < kG ? s.lse[r0] : neg_inf(), l1 = r1 < kG ? s.lse[r1] : neg_inf();
  // Two K buffers where the V tile's space (free in this pass) holds a K tile: the next tile's copy runs while this
  // one is scored. Otherwise (dv < dk) one buffer, refilled as soon as this tile's scores are in registers.
  constexpr bool kTwo = kDV >= kDK;
  const u32 sK2 = sK + kKT * kDK * 2;
  const i64 step = static_cast<i64>(kWarps) * kKT;
  i64 j0 = static_cast<i64>(warp) * kKT;
  u64 kp, vp;
  if (j0 < nc) {
    row_ptrs(j0, nc, key, lane, any, kp, vp);
    issue_rows<kDK>(sK, kp, j0, nc, lane, any);
  }
  cp_async_commit();
  for (int it = 0; j0 < nc; j0 += step, ++it) {
    const i64 jn = j0 + step;
    const u32 cur = kTwo && (it & 1) ? sK2 : sK, nxt = (it & 1) ? sK : sK2;
    if constexpr (kTwo) {
      if (jn < nc) {
        row_ptrs(jn, nc, key, lane, any, kp, vp);
        issue_rows<kDK>(nxt, kp, jn, nc, lane, any);
      }
      cp_async_commit();
      cp_async_wait<1>();  // this tile's K (the next one may still be in flight)
    } else {
      cp_async_wait<0>();
    }
    __syncwarp();
    float sc[kKT / 8][4];
    qk_tile<elem, kKT, kDK, false>(sc, dummy, sQ, cur, 0, lane);
    if constexpr (!kTwo) {
      __syncwarp();  // every lane has read the buffer
      if (jn < nc) {
        row_ptrs(jn, nc, key, lane, any, kp, vp);
        issue_rows<kDK>(sK, kp, jn, nc, lane, any);
      }
      cp_async_commit();
    }
#pragma unroll
    for (int nt = 0; nt < kKT / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        float p = (l0 == neg_inf() ? 0.f : fast_exp2(sc[nt][e] * scale_log2 - l0)) +
                  (l1 == neg_inf() ? 0.f : fast_exp2(sc[nt][2 + e] * scale_log2 - l1));
        p += __shfl_xor_sync(0xffffffffu, p, 4);
        p += __shfl_xor_sync(0xffffffffu, p, 8);
        p += __shfl_xor_sync(0xffffffffu, p, 16);
        const i64 j = j0 + nt * 8 + (lane % 4) * 2 + e;
        if (lane < 4 && j < nc) out[j] = p;
      }
    __syncwarp();  // every lane has read this buffer before the next iteration refills it
  }
  cp_async_wait<0>();
  __syncthreads();
}

__device__ __forceinline__ float gate_at(const DecodeParams& p, const void* g, int b, int qi, int head) {
  return to_float(static_cast<const elem*>(g)[b * p.g_sb + qi * p.g_st + head * p.g_sh]);
}

__device__ __forceinline__ i64 floor_div(i64 a, i64 b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

// The keys of each branch, offset by `off` (a split's chunk starts there).
struct CmpKeys {
  const elem* kc;
  const elem* vc;
  i64 kst, vst, off;
  __device__ __forceinline__ KeyRows operator()(i64 i) const { return KeyRows{kc + (off + i) * kst, vc + (off + i) * vst}; }
};
struct PagedKeys {  // token `off + i` of the sequence, through its page table
  const elem* kpool;
  const elem* vpool;
  const i32* pages;
  i64 page_size, row, vrow, off;
  int h;
  __device__ __forceinline__ KeyRows operator()(i64 i) const {
    const i64 tok = off + i;
    const i64 phys = static_cast<i64>(pages[tok / page_size]) * page_size + tok % page_size;
    return KeyRows{kpool + phys * row + h * kDK, vpool + phys * vrow + h * kDV};
  }
};
struct SlcKeys {  // token `off + i` of the chosen blocks laid end to end
  PagedKeys tok;
  const int* sel;
  int lsel;
  i64 off;
  __device__ __forceinline__ KeyRows operator()(i64 i) const {
    const int kk = static_cast<int>(off + i);
    return tok(static_cast<i64>(sel[kk / lsel]) * lsel + kk % lsel);
  }
};

// Where one (sequence, query token, KV head) is: the query's position t (negative: no such token), the visible
// compressed entries, the workspace row.
struct Where {
  int h, qi, b, split_idx;
  i64 t, nc, r;
};
__device__ __forceinline__ Where where(const DecodeParams& p, int splits) {
  Where w;
  w.h = static_cast<int>(blockIdx.x) / splits, w.split_idx = static_cast<int>(blockIdx.x) % splits;
  w.qi = static_cast<int>(blockIdx.y), w.b = static_cast<int>(blockIdx.z);
  w.t = static_cast<i64>(p.seqlens[w.b]) - p.Tq + w.qi;
  w.nc = w.t + 1 >= p.l ? (w.t + 1 - p.l) / p.d + 1 : 0;
  w.r = (static_cast<i64>(w.b) * p.Tq + w.qi) * p.H + w.h;
  return w;
}

__device__ __forceinline__ CmpKeys cmp_keys(const DecodeParams& p, const Where& w, i64 off) {
  return CmpKeys{static_cast<const elem*>(p.k_cmp) + w.b * p.kc_sb + w.h * p.kc_sh,
                 static_cast<const elem*>(p.v_cmp) + w.b * p.vc_sb + w.h * p.vc_sh, p.kc_st, p.vc_st, off};
}
__device__ __forceinline__ PagedKeys paged_keys(const DecodeParams& p, const Where& w, const void* kpool,
                                                const void* vpool, i64 off) {
  return PagedKeys{static_cast<const elem*>(kpool), static_cast<const elem*>(vpool), p.page_table + w.b * p.pt_stride,
                   p.page_size, static_cast<i64>(p.H) * kDK, static_cast<i64>(p.H) * kDV, off, w.h};
}

// The group's query rows into shared memory (the tensor-core path: a swizzled [16, kDK] 16-bit tile, rows past G
// zero; else fp32 scaled to base 2).
__device__ __forceinline__ void load_q(const Smem& s, const DecodeParams& p, const Where& w) {
  const elem* q = static_cast<const elem*>(p.q) + w.b * p.q_sb + w.qi * p.q_st;
  if constexpr (kMma) {
    for (int item = threadIdx.x; item < 16 * (kDK / 8); item += kThreads) {
      const int g = item / (kDK / 8), c = item % (kDK / 8);
      uint4 v = {0u, 0u, 0u, 0u};
      if (g < kG) v = *reinterpret_cast<const uint4*>(q + (w.h * kG + g) * p.q_sh + c * 8);
      *reinterpret_cast<uint4*>(reinterpret_cast<char*>(s.q) + swz<dim_smem(kDK) / 8>(g, c)) = v;
    }
  } else {
    for (int item = threadIdx.x; item < kG * kDK; item += kThreads) {
      const int g = item / kDK, c = item % kDK;
      s.q[item] = to_float(q[(w.h * kG + g) * p.q_sh + c]) * p.scale_log2;
    }
  }
  __syncthreads();
}

template <class KeyFn>
__device__ __forceinline__ void attend_any(const Smem& s, const DecodeParams& p, i64 n, KeyFn key, float (&acc)[kE]) {
  if constexpr (kMma)
    attend_mma(s, n, key, acc, p.scale_log2, p.q);
  else
    attend(s, n, key, acc);
}

// pc[i - j0] = the selection probability of compressed entry i (summed over the group's rows) for i in [j0, j1),
// written to `out` (shared or global memory); s.lse holds the rows' base-2 lse.
__device__ __forceinline__ void cmp_probabilities(const Smem& s, const DecodeParams& p, const Where& w, i64 j0,
                                                  i64 j1, float* out) {
  const CmpKeys key = cmp_keys(p, w, j0);
  const i64 n = j1 - j0;
  if constexpr (kMma) {
    cmp_probabilities_mma(s, n, key, p.scale_log2, p.q, out);
  } else {
    const int jj = threadIdx.x % kKT, gg = threadIdx.x / kKT;
    for (i64 k0 = 0; k0 < n; k0 += kKT) {
      __syncthreads();
      load_tile<false>(s, k0, n, key);
      __syncthreads();
      float sc[kRPT];
      tile_scores(s, k0, n, sc);
      float part = 0.f;
#pragma unroll
      for (int r = 0; r < kRPT; ++r) {
        const int g = gg + r * kGG;
        if (g < kG && sc[r] != neg_inf() && s.lse[g] != neg_inf()) part += fast_exp2(sc[r] - s.lse[g]);
      }
      s.red[gg * kKT + jj] = part;
      __syncthreads();
      if (threadIdx.x < kKT && k0 + threadIdx.x < n) {
        float sum = 0.f;
        for (int k = 0; k < kGG; ++k) sum += s.red[k * kKT + threadIdx.x];
        out[k0 + threadIdx.x] = sum;
      }
    }
    __syncthreads();
  }
}

// The selection from s.pc (nc entries): importance per selection block by overlap (NSA.md's weights), the forced
// blocks (0, t/l' - 1, t/l'), then the highest, equal scores to the lower index. Leaves the chosen blocks ascending
// in s.sel, writes idx / cnt when asked, and returns how many.
__device__ __forceinline__ int select_blocks(const Smem& s, const DecodeParams& p, const Where& w) {
  const i64 t = w.t, nc = w.nc;
  __syncthreads();
  const i64 jt = t / p.lsel;
  const int want = static_cast<int>(jt + 1 < p.n ? jt + 1 : p.n);
  // 32-bit positions: the capacity is bounded by the kernel's kMaxSel blocks (shared memory), far below 2^31.
  const int ncl = static_cast<int>(nc), jtl = static_cast<int>(jt), ls = p.lsel, l = p.l, d = p.d;
  for (int j = threadIdx.x; j <= jtl; j += kThreads) {
    // Compressed blocks i overlapping selection block j: [i*d, i*d + l) meets [j*l', (j+1)*l').
    const int lo = j * ls, hi = lo + ls;
    const int x = lo - l;
    int i0 = (x >= 0 ? x / d : -((-x + d - 1) / d)) + 1;
    i0 = i0 < 0 ? 0 : i0;
    int i1 = (hi - 1) / d;
    i1 = i1 > ncl - 1 ? ncl - 1 : i1;
    float sum = 0.f;
    for (int i = i0; i <= i1; ++i) {
      const int a = i * d > lo ? i * d : lo, e = i * d + l < hi ? i * d + l : hi;
      if (e > a) sum += static_cast<float>(e - a) / static_cast<float>(d) * s.pc[i];
    }
    s.imp[j] = sum;
    s.flags[j] = (j == 0 || j == jtl || j == jtl - 1) ? 1 : 0;
  }
  __syncthreads();
  const int forced = jt == 0 ? 1 : jt == 1 ? 2 : 3;
  for (int pick = forced; pick < want; ++pick) {
    float bv = neg_inf();
    int bj = 0x7fffffff;
    for (i64 j = threadIdx.x; j <= jt; j += kThreads)
      if (!s.flags[j] && (s.imp[j] > bv || (s.imp[j] == bv && j < bj))) bv = s.imp[j], bj = static_cast<int>(j);
#pragma unroll
    for (int o = 16; o > 0; o /= 2) {
      const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
      const int oj = __shfl_xor_sync(0xffffffffu, bj, o);
      if (ov > bv || (ov == bv && oj < bj)) bv = ov, bj = oj;
    }
    if (threadIdx.x % 32 == 0) s.best_v[threadIdx.x / 32] = bv, s.best_j[threadIdx.x / 32] = bj;
    __syncthreads();
    if (threadIdx.x == 0) {
      for (int wp = 1; wp < kWarps; ++wp)
        if (s.best_v[wp] > bv || (s.best_v[wp] == bv && s.best_j[wp] < bj)) bv = s.best_v[wp], bj = s.best_j[wp];
      s.flags[bj] = 1;
    }
    __syncthreads();
  }
  if (threadIdx.x < 32) {  // the chosen blocks, ascending
    int taken = 0;
    for (i64 base = 0; base <= jt; base += 32) {
      const i64 j = base + threadIdx.x;
      const bool f = j <= jt && s.flags[j];
      const u32 ballot = __ballot_sync(0xffffffffu, f);
      if (f) s.sel[taken + __popc(ballot & ((1u << threadIdx.x) - 1u))] = static_cast<int>(j);
      taken += __popc(ballot);
    }
  }
  __syncthreads();
  if (p.idx != nullptr) {
    i32* row_idx = p.idx + w.r * p.n;
    for (int m = threadIdx.x; m < p.n; m += kThreads) row_idx[m] = m < want ? s.sel[m] : -1;
    if (threadIdx.x == 0) p.cnt[w.r] = want;
  }
  return want;
}

// The selected branch's tokens s <= t: every chosen block whole except the last, block t/l' (the largest), cut at t.
__device__ __forceinline__ i64 selected_tokens(const DecodeParams& p, i64 t, int want) {
  const i64 jt = t / p.lsel;
  return static_cast<i64>(want - 1) * p.lsel + (t - jt * p.lsel + 1);
}

__device__ __forceinline__ void empty_selection(const DecodeParams& p, const Where& w) {
  if (p.idx == nullptr || p.g_slc == nullptr) return;
  for (int m = threadIdx.x; m < p.n; m += kThreads) p.idx[w.r * p.n + m] = -1;
  if (threadIdx.x == 0) p.cnt[w.r] = 0;
}

// out += gate * acc / l per (row, column) element of this thread.
__device__ __forceinline__ void add_gated(const Smem& s, const DecodeParams& p, const Where& w, const void* gate,
                                          const float (&acc)[kE], float (&out)[kE]) {
#pragma unroll
  for (int e = 0; e < kE; ++e) {
    const int idx = threadIdx.x + e * kThreads;
    if (idx < kG * kDV) {
      const int g = idx / kDV;
      if (s.l[g] > 0.f) out[e] += gate_at(p, gate, w.b, w.qi, w.h * kG + g) * acc[e] / s.l[g];
    }
  }
}

__device__ __forceinline__ void store_out(const DecodeParams& p, const Where& w, const float (&out)[kE]) {
  elem* o = static_cast<elem*>(p.o) + w.b * p.o_sb + w.qi * p.o_st;
#pragma unroll
  for (int e = 0; e < kE; ++e) {
    const int idx = threadIdx.x + e * kThreads;
    if (idx < kG * kDV) {
      const int g = idx / kDV, c = idx % kDV;
      o[(w.h * kG + g) * p.o_sh + c] = from_float<elem>(out[e]);
    }
  }
}

__device__ __forceinline__ void set_lse(const Smem& s) {
  for (int g = threadIdx.x; g < kG; g += kThreads) s.lse[g] = s.l[g] > 0.f ? s.m[g] + fast_log2(s.l[g]) : neg_inf();
}

// The one-launch path: one CTA per (KV head, query token, sequence) does the whole step.
__device__ __forceinline__ void run_whole(const DecodeParams& p) {
  extern __shared__ float4 smem_raw[];
  const Smem s = carve(reinterpret_cast<float*>(smem_raw));
  const Where w = where(p, 1);
  float out[kE];
#pragma unroll
  for (int e = 0; e < kE; ++e) out[e] = 0.f;
  if (w.t < 0) {  // no such token: zeros and an empty selection
    empty_selection(p, w);
    store_out(p, w, out);
    return;
  }
  load_q(s, p, w);
  float acc[kE];
  // 1. The compressed branch (also needed for the selection).
  if (p.g_cmp != nullptr || p.g_slc != nullptr) {
    attend_any(s, p, w.nc, cmp_keys(p, w, 0), acc);
    set_lse(s);
    if (p.g_cmp != nullptr) add_gated(s, p, w, p.g_cmp, acc, out);
  }
  // 2. The selection and the selected branch.
  if (p.g_slc != nullptr) {
    cmp_probabilities(s, p, w, 0, w.nc, s.pc);
    const int want = select_blocks(s, p, w);
    const SlcKeys key{paged_keys(p, w, p.k_slc, p.v_slc, 0), s.sel, p.lsel, 0};
    attend_any(s, p, selected_tokens(p, w.t, want), key, acc);
    add_gated(s, p, w, p.g_slc, acc, out);
  }
  // 3. The window branch: tokens max(0, t - w + 1) .. t.
  if (p.g_win != nullptr && p.w > 0) {
    const i64 s0 = w.t - p.w + 1 > 0 ? w.t - p.w + 1 : 0;
    attend_any(s, p, w.t - s0 + 1, paged_keys(p, w, p.k_win, p.v_win, s0), acc);
    add_gated(s, p, w, p.g_win, acc, out);
  }
  store_out(p, w, out);
}

// ---- split-KV: five launches (DecodeParams.phase 1 .. 5) ----------------------------------------------------------

// Split `s` of `splits` over n keys: [lo, hi), whole key tiles per warp where the chunk allows.
__device__ __forceinline__ void chunk(i64 n, int splits, int s, i64& lo, i64& hi) {
  i64 c = (n + splits - 1) / splits;
  c = (c + kKT - 1) / kKT * kKT;
  lo = c * s < n ? c * s : n;
  hi = lo + c < n ? lo + c : n;
}

__device__ __forceinline__ float* part_o(const DecodeParams& p, i64 r, int br, int s) {
  return p.ws_part + ((r * 3 + br) * p.split + s) * (kG * kDV);
}
__device__ __forceinline__ float* part_ml(const DecodeParams& p, i64 r, int br, int s) {
  return p.ws_ml + ((r * 3 + br) * p.split + s) * (kG * 2);
}

// The state attend_*() left (acc, s.m, s.l) as split s's partial of branch br.
__device__ __forceinline__ void store_partial(const Smem& s, const DecodeParams& p, const Where& w, int br,
                                              const float (&acc)[kE]) {
  float* o = part_o(p, w.r, br, w.split_idx);
  float* ml = part_ml(p, w.r, br, w.split_idx);
#pragma unroll
  for (int e = 0; e < kE; ++e) {
    const int idx = threadIdx.x + e * kThreads;
    if (idx < kG * kDV) o[idx] = acc[e];
  }
  for (int g = threadIdx.x; g < kG; g += kThreads) ml[2 * g] = s.m[g], ml[2 * g + 1] = s.l[g];
}

// Phase 1, grid (H * split, Tq, B): the compressed and the window branch over this split's chunk of their keys.
__device__ __forceinline__ void phase_partials(const DecodeParams& p) {
  extern __shared__ float4 smem_raw[];
  const Smem s = carve(reinterpret_cast<float*>(smem_raw));
  const Where w = where(p, p.split);
  if (w.t < 0) return;
  load_q(s, p, w);
  float acc[kE];
  i64 lo, hi;
  if (p.g_cmp != nullptr || p.g_slc != nullptr) {
    chunk(w.nc, p.split, w.split_idx, lo, hi);
    attend_any(s, p, hi - lo, cmp_keys(p, w, lo), acc);
    store_partial(s, p, w, 0, acc);
  }
  if (p.g_win != nullptr && p.w > 0) {
    const i64 s0 = w.t - p.w + 1 > 0 ? w.t - p.w + 1 : 0;
    chunk(w.t - s0 + 1, p.split, w.split_idx, lo, hi);
    attend_any(s, p, hi - lo, paged_keys(p, w, p.k_win, p.v_win, s0 + lo), acc);
    store_partial(s, p, w, 2, acc);
  }
}

// Phase 2, grid (H * split, Tq, B): the compressed branch's lse from the partials, then the selection
// probabilities of this split's chunk of the compressed entries (re-reading their keys) into ws_pc.
__device__ __forceinline__ void phase_probabilities(const DecodeParams& p) {
  extern __shared__ float4 smem_raw[];
  const Smem s = carve(reinterpret_cast<float*>(smem_raw));
  const Where w = where(p, p.split);
  if (w.t < 0 || p.g_slc == nullptr) return;
  for (int g = threadIdx.x; g < kG; g += kThreads) {
    float m = neg_inf();
    for (int k = 0; k < p.split; ++k) m = fmaxf(m, part_ml(p, w.r, 0, k)[2 * g]);
    float l = 0.f;
    for (int k = 0; k < p.split; ++k) {
      const float* ml = part_ml(p, w.r, 0, k);
      if (ml[2 * g] != neg_inf()) l += ml[2 * g + 1] * fast_exp2(ml[2 * g] - m);
    }
    s.lse[g] = l > 0.f ? m + fast_log2(l) : neg_inf();
  }
  load_q(s, p, w);  // (synchronizes: s.lse is visible)
  i64 lo, hi;
  chunk(w.nc, p.split, w.split_idx, lo, hi);
  cmp_probabilities(s, p, w, lo, hi, p.ws_pc + w.r * p.pc_stride + lo);
}

// Phase 3, grid (H, Tq, B): the selection from ws_pc; the chosen blocks to ws_sel (and idx / cnt).
__device__ __forceinline__ void phase_select(const DecodeParams& p) {
  extern __shared__ float4 smem_raw[];
  const Smem s = carve(reinterpret_cast<float*>(smem_raw));
  const Where w = where(p, 1);
  if (p.g_slc == nullptr) return;
  if (w.t < 0) {
    empty_selection(p, w);
    return;
  }
  const float* pc = p.ws_pc + w.r * p.pc_stride;
#pragma unroll 8
  for (i64 i = threadIdx.x; i < w.nc; i += kThreads) s.pc[i] = pc[i];
  const int want = select_blocks(s, p, w);  // (synchronizes first)
  i32* sel = p.ws_sel + w.r * (kMaxN + 1);
  for (int m = threadIdx.x; m < want; m += kThreads) sel[1 + m] = s.sel[m];
  if (threadIdx.x == 0) sel[0] = want;
}

// Phase 4, grid (H * split, Tq, B): the selected branch over this split's chunk of the chosen tokens.
__device__ __forceinline__ void phase_selected(const DecodeParams& p) {
  extern __shared__ float4 smem_raw[];
  const Smem s = carve(reinterpret_cast<float*>(smem_raw));
  const Where w = where(p, p.split);
  if (w.t < 0 || p.g_slc == nullptr) return;
  const i32* sel = p.ws_sel + w.r * (kMaxN + 1);
  const int want = sel[0];
  for (int m = threadIdx.x; m < want; m += kThreads) s.sel[m] = sel[1 + m];
  load_q(s, p, w);  // (synchronizes: s.sel is visible)
  i64 lo, hi;
  chunk(selected_tokens(p, w.t, want), p.split, w.split_idx, lo, hi);
  float acc[kE];
  attend_any(s, p, hi - lo, SlcKeys{paged_keys(p, w, p.k_slc, p.v_slc, 0), s.sel, p.lsel, lo}, acc);
  store_partial(s, p, w, 1, acc);
}

// Phase 5, grid (H * split, Tq, B): the gated sum of the branches' merged partials; split s writes its share of the
// G x dv outputs. First the weight of every (branch, split, row) partial, gate / l * 2^(m_split - m), into shared
// memory; then each output element is one pass over the partials (independent loads, coalesced across threads).
__device__ __forceinline__ void phase_combine(const DecodeParams& p) {
  extern __shared__ float4 smem_raw[];
  float* wts = reinterpret_cast<float*>(smem_raw);  // [3][split][kG] weights, then [3][split][kG] sums
  const Where w = where(p, p.split);
  constexpr int kElems = kG * kDV;
  const int per = (kElems + p.split - 1) / p.split, e0 = w.split_idx * per;
  const int e1 = e0 + per < kElems ? e0 + per : kElems;
  elem* o = static_cast<elem*>(p.o) + w.b * p.o_sb + w.qi * p.o_st;
  if (w.t < 0) {
    for (int idx = e0 + threadIdx.x; idx < e1; idx += kThreads)
      o[(w.h * kG + idx / kDV) * p.o_sh + idx % kDV] = from_float<elem>(0.f);
    return;
  }
  const void* gates[3] = {p.g_cmp, p.g_slc, p.w > 0 ? p.g_win : nullptr};
  for (int item = threadIdx.x; item < 3 * kG; item += kThreads) {
    const int br = item / kG, g = item % kG;
    if (gates[br] == nullptr) continue;
    // The partials' (m, l) pairs into shared memory first (independent loads), then the merge from there.
    float* mk = wts + (br * p.split) * kG + g;  // m of split k at mk[k * kG], later its weight
    float* lk = wts + (3 * p.split) * kG + (br * p.split) * kG + g;
    const float* src = part_ml(p, w.r, br, 0) + 2 * g;
#pragma unroll 8
    for (int k = 0; k < p.split; ++k) mk[k * kG] = src[k * kG * 2], lk[k * kG] = src[k * kG * 2 + 1];
    float m = neg_inf();
    for (int k = 0; k < p.split; ++k) m = fmaxf(m, mk[k * kG]);
    float l = 0.f;
    for (int k = 0; k < p.split; ++k)
      if (mk[k * kG] != neg_inf()) l += lk[k * kG] * fast_exp2(mk[k * kG] - m);
    const float gl = l > 0.f ? gate_at(p, gates[br], w.b, w.qi, w.h * kG + g) / l : 0.f;
    for (int k = 0; k < p.split; ++k) mk[k * kG] = mk[k * kG] == neg_inf() ? 0.f : gl * fast_exp2(mk[k * kG] - m);
  }
  __syncthreads();
  for (int idx = e0 + threadIdx.x; idx < e1; idx += kThreads) {
    const int g = idx / kDV;
    float acc = 0.f;
    for (int br = 0; br < 3; ++br) {
      if (gates[br] == nullptr) continue;
      const float* part = part_o(p, w.r, br, 0) + idx;
      const float* wt = wts + br * p.split * kG + g;
#pragma unroll 4
      for (int k = 0; k < p.split; ++k) acc = fmaf(part[static_cast<i64>(k) * kElems], wt[k * kG], acc);
    }
    o[(w.h * kG + g) * p.o_sh + idx % kDV] = from_float<elem>(acc);
  }
}

__device__ __forceinline__ void run(const DecodeParams& p) {
  switch (p.phase) {
    case 1: phase_partials(p); break;
    case 2: phase_probabilities(p); break;
    case 3: phase_select(p); break;
    case 4: phase_selected(p); break;
    case 5: phase_combine(p); break;
    default: run_whole(p); break;
  }
}

}  // namespace decode
}  // namespace nsa

#endif  // NSA_DECODE_CUH
