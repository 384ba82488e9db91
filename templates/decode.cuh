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
// reading one column of different keys hit different banks).
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

// This warp's tile of keys j0 .. j0 + kKT (K, and V when kWithV) into its swizzled shared tiles; rows at or past n
// are zero-filled. Waits for the copies.
template <bool kWithV, class KeyFn>
__device__ __forceinline__ void warp_load(u32 sK, u32 sV, i64 j0, i64 n, KeyFn key, int lane, const void* any) {
  // (The path needs dims that are multiples of 64; the pitches are written as the shared helpers' so that the
  // template compiles for every dim.)
  constexpr int kKC = kDK / 8, kVC = kDV / 8, kKP = dim_smem(kDK) / 8, kVP = dim_smem(kDV) / 8;
  for (int item = lane; item < kKT * kKC; item += 32) {
    const int r = item / kKC, c = item % kKC;
    const bool valid = j0 + r < n;
    cp_async_16(sK + swz<kKP>(r, c), valid ? static_cast<const void*>(key(j0 + r).k + c * 8) : any, valid);
  }
  if constexpr (kWithV)
    for (int item = lane; item < kKT * kVC; item += 32) {
      const int r = item / kVC, c = item % kVC;
      const bool valid = j0 + r < n;
      cp_async_16(sV + swz<kVP>(r, c), valid ? static_cast<const void*>(key(j0 + r).v + c * 8) : any, valid);
    }
  cp_async_commit();
  cp_async_wait<0>();
  __syncwarp();
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
  for (i64 j0 = static_cast<i64>(warp) * kKT; j0 < n; j0 += kWarps * kKT) {
    warp_load<true>(sK, sV, j0, n, key, lane, any);
    float sc[kKT / 8][4];
    qk_tile<elem, kKT, kDK, false>(sc, dummy, sQ, sK, 0, lane);
    mask_tail(sc, j0, n, lane);
    online_softmax<kKT, kDV>(sc, o, row_max, row_sum, scale_log2);
    accumulate_pv<elem, kKT, kDV>(sc, o, sV, lane);
    __syncwarp();
  }
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
                                                      const void* any) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const u32 sQ = smem_addr(s.q);
  const u32 sK = smem_addr(s.k) + warp * kTileBytes;
  const u32 dummy[1][4] = {{0, 0, 0, 0}};
  __syncthreads();
  const int r0 = lane / 4, r1 = lane / 4 + 8;
  const float l0 = r0 < kG ? s.lse[r0] : neg_inf(), l1 = r1 < kG ? s.lse[r1] : neg_inf();
  for (i64 j0 = static_cast<i64>(warp) * kKT; j0 < nc; j0 += kWarps * kKT) {
    warp_load<false>(sK, 0, j0, nc, key, lane, any);
    float sc[kKT / 8][4];
    qk_tile<elem, kKT, kDK, false>(sc, dummy, sQ, sK, 0, lane);
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
        if (lane < 4 && j < nc) s.pc[j] = p;
      }
    __syncwarp();
  }
  __syncthreads();
}

__device__ __forceinline__ float gate_at(const DecodeParams& p, const void* g, int b, int qi, int head) {
  return to_float(static_cast<const elem*>(g)[b * p.g_sb + qi * p.g_st + head * p.g_sh]);
}

__device__ __forceinline__ i64 floor_div(i64 a, i64 b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

__device__ __forceinline__ void run(const DecodeParams& p) {
  extern __shared__ float4 smem_raw[];
  const Smem s = carve(reinterpret_cast<float*>(smem_raw));
  const int h = static_cast<int>(blockIdx.x), qi = static_cast<int>(blockIdx.y), b = static_cast<int>(blockIdx.z);
  const i64 t = static_cast<i64>(p.seqlens[b]) - p.Tq + qi;  // the query's position in its sequence
  elem* o = static_cast<elem*>(p.o) + b * p.o_sb + qi * p.o_st;
  float out[kE];
#pragma unroll
  for (int e = 0; e < kE; ++e) out[e] = 0.f;

  if (t >= 0) {
    const elem* q = static_cast<const elem*>(p.q) + b * p.q_sb + qi * p.q_st;
    if constexpr (kMma) {  // a swizzled [16, kDK] 16-bit tile, rows past G zero
      for (int item = threadIdx.x; item < 16 * (kDK / 8); item += kThreads) {
        const int g = item / (kDK / 8), c = item % (kDK / 8);
        uint4 v = {0u, 0u, 0u, 0u};
        if (g < kG) v = *reinterpret_cast<const uint4*>(q + (h * kG + g) * p.q_sh + c * 8);
        *reinterpret_cast<uint4*>(reinterpret_cast<char*>(s.q) + swz<dim_smem(kDK) / 8>(g, c)) = v;
      }
    } else {
      for (int item = threadIdx.x; item < kG * kDK; item += kThreads) {
        const int g = item / kDK, c = item % kDK;
        s.q[item] = to_float(q[(h * kG + g) * p.q_sh + c]) * p.scale_log2;
      }
    }
    const i32* pages = p.page_table + b * p.pt_stride;
    const i64 row = static_cast<i64>(p.H) * kDK, vrow = static_cast<i64>(p.H) * kDV;
    auto paged = [&](const void* kpool, const void* vpool, i64 tok) {
      const i64 phys = static_cast<i64>(pages[tok / p.page_size]) * p.page_size + tok % p.page_size;
      return KeyRows{static_cast<const elem*>(kpool) + phys * row + h * kDK,
                     static_cast<const elem*>(vpool) + phys * vrow + h * kDV};
    };
    float acc[kE];

    // 1. The compressed branch (also needed for the selection).
    const i64 nc = t + 1 >= p.l ? (t + 1 - p.l) / p.d + 1 : 0;
    const elem* kc = static_cast<const elem*>(p.k_cmp) + b * p.kc_sb + h * p.kc_sh;
    const elem* vc = static_cast<const elem*>(p.v_cmp) + b * p.vc_sb + h * p.vc_sh;
    auto cmp_key = [&](i64 i) { return KeyRows{kc + i * p.kc_st, vc + i * p.vc_st}; };
    if (p.g_cmp != nullptr || p.g_slc != nullptr) {
      if constexpr (kMma)
        attend_mma(s, nc, cmp_key, acc, p.scale_log2, p.q);
      else
        attend(s, nc, cmp_key, acc);
      for (int g = threadIdx.x; g < kG; g += kThreads)
        s.lse[g] = s.l[g] > 0.f ? s.m[g] + fast_log2(s.l[g]) : neg_inf();
      if (p.g_cmp != nullptr) {
#pragma unroll
        for (int e = 0; e < kE; ++e) {
          const int idx = threadIdx.x + e * kThreads;
          if (idx < kG * kDV) {
            const int g = idx / kDV;
            if (s.l[g] > 0.f) out[e] += gate_at(p, p.g_cmp, b, qi, h * kG + g) * acc[e] / s.l[g];
          }
        }
      }
    }

    // 2. The selection and the selected branch.
    if (p.g_slc != nullptr) {
      const int jj = threadIdx.x % kKT, gg = threadIdx.x / kKT;
      if constexpr (kMma) cmp_probabilities_mma(s, nc, cmp_key, p.scale_log2, p.q);
      for (i64 j0 = 0; !kMma && j0 < nc; j0 += kKT) {
        __syncthreads();
        load_tile<false>(s, j0, nc, cmp_key);
        __syncthreads();
        float sc[kRPT];
        tile_scores(s, j0, nc, sc);
        float part = 0.f;
#pragma unroll
        for (int r = 0; r < kRPT; ++r) {
          const int g = gg + r * kGG;
          if (g < kG && sc[r] != neg_inf() && s.lse[g] != neg_inf()) part += fast_exp2(sc[r] - s.lse[g]);
        }
        s.red[gg * kKT + jj] = part;
        __syncthreads();
        if (threadIdx.x < kKT && j0 + threadIdx.x < nc) {
          float sum = 0.f;
          for (int k = 0; k < kGG; ++k) sum += s.red[k * kKT + threadIdx.x];
          s.pc[j0 + threadIdx.x] = sum;
        }
      }
      __syncthreads();
      const i64 jt = t / p.lsel;
      const int want = static_cast<int>(jt + 1 < p.n ? jt + 1 : p.n);
      for (i64 j = threadIdx.x; j <= jt; j += kThreads) {
        // Compressed blocks i overlapping selection block j: [i*d, i*d + l) meets [j*l', (j+1)*l').
        const i64 lo = j * p.lsel, hi = lo + p.lsel;
        i64 i0 = floor_div(lo - p.l, p.d) + 1;
        i0 = i0 < 0 ? 0 : i0;
        i64 i1 = floor_div(hi - 1, p.d);
        i1 = i1 > nc - 1 ? nc - 1 : i1;
        float sum = 0.f;
        for (i64 i = i0; i <= i1; ++i) {
          const i64 a = i * p.d > lo ? i * p.d : lo, e = i * p.d + p.l < hi ? i * p.d + p.l : hi;
          if (e > a) sum += static_cast<float>(e - a) / static_cast<float>(p.d) * s.pc[i];
        }
        s.imp[j] = sum;
        s.flags[j] = (j == 0 || j == jt || j == jt - 1) ? 1 : 0;
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
          for (int w = 1; w < kWarps; ++w)
            if (s.best_v[w] > bv || (s.best_v[w] == bv && s.best_j[w] < bj)) bv = s.best_v[w], bj = s.best_j[w];
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
        i32* row_idx = p.idx + ((static_cast<i64>(b) * p.Tq + qi) * p.H + h) * p.n;
        for (int m = threadIdx.x; m < p.n; m += kThreads) row_idx[m] = m < want ? s.sel[m] : -1;
        if (threadIdx.x == 0) p.cnt[(static_cast<i64>(b) * p.Tq + qi) * p.H + h] = want;
      }
      // The chosen blocks' tokens s <= t: every block whole except the last, block jt (the largest), cut at t.
      const i64 n_slc = static_cast<i64>(want - 1) * p.lsel + (t - jt * p.lsel + 1);
      auto slc_key = [&](i64 kk) { return paged(p.k_slc, p.v_slc, s.sel[kk / p.lsel] * static_cast<i64>(p.lsel) + kk % p.lsel); };
      if constexpr (kMma)
        attend_mma(s, n_slc, slc_key, acc, p.scale_log2, p.q);
      else
        attend(s, n_slc, slc_key, acc);
#pragma unroll
      for (int e = 0; e < kE; ++e) {
        const int idx = threadIdx.x + e * kThreads;
        if (idx < kG * kDV) {
          const int g = idx / kDV;
          if (s.l[g] > 0.f) out[e] += gate_at(p, p.g_slc, b, qi, h * kG + g) * acc[e] / s.l[g];
        }
      }
    }

    // 3. The window branch: tokens max(0, t - w + 1) .. t.
    if (p.g_win != nullptr && p.w > 0) {
      const i64 s0 = t - p.w + 1 > 0 ? t - p.w + 1 : 0;
      auto win_key = [&](i64 kk) { return paged(p.k_win, p.v_win, s0 + kk); };
      if constexpr (kMma)
        attend_mma(s, t - s0 + 1, win_key, acc, p.scale_log2, p.q);
      else
        attend(s, t - s0 + 1, win_key, acc);
#pragma unroll
      for (int e = 0; e < kE; ++e) {
        const int idx = threadIdx.x + e * kThreads;
        if (idx < kG * kDV) {
          const int g = idx / kDV;
          if (s.l[g] > 0.f) out[e] += gate_at(p, p.g_win, b, qi, h * kG + g) * acc[e] / s.l[g];
        }
      }
    }
  } else if (p.idx != nullptr && p.g_slc != nullptr) {  // no such token: an empty selection
    i32* row_idx = p.idx + ((static_cast<i64>(b) * p.Tq + qi) * p.H + h) * p.n;
    for (int m = threadIdx.x; m < p.n; m += kThreads) row_idx[m] = -1;
    if (threadIdx.x == 0) p.cnt[(static_cast<i64>(b) * p.Tq + qi) * p.H + h] = 0;
  }

#pragma unroll
  for (int e = 0; e < kE; ++e) {
    const int idx = threadIdx.x + e * kThreads;
    if (idx < kG * kDV) {
      const int g = idx / kDV, c = idx % kDV;
      o[(h * kG + g) * p.o_sh + c] = from_float<elem>(out[e]);
    }
  }
}

}  // namespace decode
}  // namespace nsa

#endif  // NSA_DECODE_CUH
