// Top-n block selection (NSA.md branch 2, selection part): block scores from q, k_cmp and lse_cmp, never writing
// the [T, Nc] probabilities to memory, then the forced blocks and the top-n, as idx (ascending, -1 padded) and cnt.
//
// One CTA owns kP consecutive query positions of one KV head of one sequence. Its kW warps form kWR row groups x kKS
// key splits. A row group's warps own kPPW whole positions: their G query heads sit in the MMA rows
// (m = position * G + head, 16 * kMT rows, padding rows at the end), as in win_fwd. The CTA walks the compressed
// keys its last position sees, kKS * kBN per tile (cp.async, double buffered, swizzled); key split s of a row group
// takes the tile's s-th kBN keys. S = Q K^T by mma.sync m16n8k16 (fp32 accumulators),
// p = exp2(S * scale * log2e - lse * log2e), 0 for blocks a row does not see; p is summed over the G rows of each
// position in fp32 (register butterflies when G divides 8 or 16 divides G, else a per-warp shared buffer), compressed
// blocks are folded into selection blocks with the overlap weights of Eq. 9, and the scores of the CTA's positions
// go to a [kP, ns_row] fp32 array in shared memory. The rows of a key tile are loaded in a permuted order so that
// each thread's accumulator columns are kBN / 4 consecutive compressed blocks (a "run"): every selection block but a
// run's first is written by exactly one thread, once; a run's first block also gets the spill of the run before it
// (its last blocks reach into it when l > d), so there the two values are added to the zeroed array with shared
// atomics (two adds onto 0 commute exactly: the result does not depend on their order). After the key loop one warp
// per position picks the top n (forced blocks first, then a warp-wide argmax that keeps each lane's two best
// candidates cached, ties to the lower index), sorts the set across the warp and writes it.
#ifndef NSA_SELECT_CUH
#define NSA_SELECT_CUH
#ifndef NSAJIT_GENERATED
// Defaults so that an editor or `nvcc -arch=sm_90a -c` can read this file on its own; codegen writes these.
#include "common.cuh"
#include "select_params.h"
namespace nsa::spec {
typedef bf16 elem;
constexpr int kDK = 128, kG = 16, kL = 64, kD = 64, kLSel = 64, kN = 16, kW = 8, kKS = 1, kBN = 32, kQInRegs = 1,
              kOcc = 2;
}  // namespace nsa::spec
#endif

namespace nsa {

namespace select_blocks {

using namespace spec;

constexpr int kMT = (kG + 15) / 16;  // MMA row tiles per warp
constexpr int kRowsW = 16 * kMT;     // rows per warp
constexpr int kPPW = kRowsW / kG;    // whole positions per row group
constexpr int kWR = kW / kKS;        // row groups
constexpr int kP = kWR * kPPW;       // positions per CTA
constexpr int kTile = kKS * kBN;     // compressed blocks per key tile
constexpr int kThreads = 32 * kW;
// How the G rows of a position are summed: butterflies over the lane groups of one row half (G = 1, 2, 4, 8) or of
// the whole warp after an in-thread sum over halves and row tiles (G a multiple of 16); else through shared memory.
constexpr int kPathXor = 0, kPathXor16 = 1, kPathSmem = 2;
constexpr int kPath = (kG <= 8 && 8 % kG == 0) ? kPathXor : (kG % 16 == 0 ? kPathXor16 : kPathSmem);
constexpr int kSlots = kPath == kPathXor ? 2 : 1;  // positions a thread holds (row halves)
constexpr int kR4 = kBN / 4;                       // compressed blocks of a thread's run
constexpr int kNJ = kR4 * kD / kLSel;              // selection blocks a run covers
constexpr bool kSpill = kL > kD;                   // a run's last blocks reach into the next run's first block
constexpr int kNOut = kNJ + (kSpill ? 1 : 0);
constexpr int kPStride = kBN + 8;  // floats per row of the probability buffer (padded against bank conflicts)
// kDK is the true head dim (global memory); shared tiles are dim_smem(kDK) wide, the MMA loop runs to dim_mma(kDK).
// (Written out where used: a namespace-scope constant would be a symbol of the CUBIN.)
constexpr int kSmemQ = kWR * kRowsW * dim_smem(kDK) * 2;
constexpr int kSmemK = kTile * dim_smem(kDK) * 2;
constexpr int kSmemP = kPath == kPathSmem ? kW * kRowsW * kPStride * 4 : 0;
constexpr int kNone = 0x7fffffff;
constexpr unsigned kFull = 0xffffffffu;
constexpr float kLog2e = 1.4426950408889634f;

static_assert(kBN % 32 == 0, "key tiles hold a multiple of 32 compressed blocks");
static_assert(kDK % 8 == 0, "head dim must be a multiple of 8");
static_assert(kL % kD == 0 && kLSel % kD == 0, "d must divide l and l'");
static_assert((kR4 * kD) % kLSel == 0, "a run must cover whole selection blocks");
static_assert(kL - kD <= kLSel, "a compressed block may reach at most one selection block past its first");
static_assert(kN >= 3 && kN <= 32, "n must be 3 .. 32 (one lane per selected block)");
static_assert(kPPW >= 1 && kPPW * kG <= kRowsW, "a warp holds whole positions");
static_assert(kOcc == 1 || kOcc == 2, "kOcc (CTAs' register budget, applied by the entry's launch bounds) is 1 or 2");
static_assert(kW % kKS == 0, "the warps split into whole row groups");

// nc(t): compressed blocks whose every token is <= t.
__device__ __forceinline__ int visible_blocks(i64 t) {
  return t + 1 >= kL ? static_cast<int>((t + 1 - kL) / kD) + 1 : 0;
}

// Nc(len): compressed blocks of a sequence of len tokens.
__device__ __forceinline__ int num_blocks(i64 len) { return len >= kL ? static_cast<int>((len - kL) / kD) + 1 : 0; }

// Smem row n of a key tile holds compressed block (tile start + key_of_row(n)). Accumulator column n of a thread
// (n = 8 nt + 2 (lane % 4) + c) thereby holds block (lane % 4) * kR4 + 2 nt + c: consecutive blocks per thread.
__device__ __forceinline__ int key_of_row(int n) { return ((n % 8) / 2) * kR4 + 2 * (n / 8) + n % 2; }

// Eq. 9 for one run: v[u] belongs to compressed block u of the run, whose first token is a multiple of l'. out[s]
// gets the overlap-weighted sum for the run's selection block s; out[kNJ] (when l > d) the spill into the block
// after the run. The weights |[u d, u d + l) ∩ [s l', (s+1) l')| / d are compile-time constants.
__device__ __forceinline__ void fold_run(const float (&v)[kR4], float (&out)[kNOut]) {
#pragma unroll
  for (int s = 0; s < kNOut; ++s) out[s] = 0.f;
#pragma unroll
  for (int u = 0; u < kR4; ++u) {
    const int lo = u * kD;
    const int s0 = lo / kLSel;
    const int w0 = (min(lo + kL, (s0 + 1) * kLSel) - lo) / kD;
    out[s0] += w0 == 1 ? v[u] : static_cast<float>(w0) * v[u];
    if (lo + kL > (s0 + 1) * kLSel) {
      const int w1 = (lo + kL - (s0 + 1) * kLSel) / kD;
      out[s0 + 1] += w1 == 1 ? v[u] : static_cast<float>(w1) * v[u];
    }
  }
}

// Stores a thread's folded run into its score row at j_start .. j_start + kNJ - 1 and, when l > d, its spill at
// j_start + kNJ (blocks at or past ns_row are dropped: they are past the sequence and hold 0). A run's first block
// also receives the spill of the run before it, so with l > d that block and the spill are added atomically to the
// zeroed row: exactly two adds onto 0, whose result does not depend on their order.
__device__ __forceinline__ void emit_run(const float (&acc)[kNOut], float* row, int j_start, int ns_row) {
  if constexpr (kSpill) {
    if (j_start < ns_row) atomicAdd(row + j_start, acc[0]);
#pragma unroll
    for (int s = 1; s < kNJ; ++s)
      if (j_start + s < ns_row) row[j_start + s] = acc[s];
    if (j_start + kNJ < ns_row) atomicAdd(row + j_start + kNJ, acc[kNJ]);
  } else if constexpr (kNJ % 4 == 0) {
    // j_start and ns_row are multiples of 4 here: whole vectors are in or out.
#pragma unroll
    for (int s = 0; s < kNJ; s += 4)
      if (j_start + s < ns_row)
        *reinterpret_cast<float4*>(row + j_start + s) = make_float4(acc[s], acc[s + 1], acc[s + 2], acc[s + 3]);
  } else {
#pragma unroll
    for (int s = 0; s < kNJ; ++s)
      if (j_start + s < ns_row) row[j_start + s] = acc[s];
  }
}

__device__ __forceinline__ int warp_max(int v) {
  int r;
  asm volatile("redux.sync.max.s32 %0, %1, %2;\n" : "=r"(r) : "r"(v), "r"(kFull));
  return r;
}
__device__ __forceinline__ int warp_min(int v) {
  int r;
  asm volatile("redux.sync.min.s32 %0, %1, %2;\n" : "=r"(r) : "r"(v), "r"(kFull));
  return r;
}
__device__ __forceinline__ int warp_sum(int v) {
  int r;
  asm volatile("redux.sync.add.s32 %0, %1, %2;\n" : "=r"(r) : "r"(v), "r"(kFull));
  return r;
}

// The selection of one position (one warp): sc[0 .. jt] are its scores (>= 0), jt = floor(t / l'). Writes the kN
// entries of its idx row and its cnt.
__device__ __forceinline__ void select_top(const float* sc, int jt, i32* idx, i32* cnt) {
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const int count = min(kN, jt + 1);
  int mine = kNone;  // lane m holds the m-th chosen block (in choice order)
  if (jt + 1 <= kN) {
    mine = lane <= jt ? lane : kNone;  // every causal block
  } else {
    // Forced: 0, jt - 1, jt (distinct, since jt >= kN >= 3). Candidates 1 .. jt - 2, lane-strided.
    constexpr int kFree = kN - 3;
    const int last = jt - 2;
    // Each lane caches its two best remaining candidates (score, then lower index). `bound` excludes what it has
    // handed out already: a rescan takes only (v, j) below (bound_v, bound_j) in that order.
    float v0, v1;
    int j0, j1;
    auto scan = [&](float bound_v, int bound_j) {
      v0 = v1 = -1.f;
      j0 = j1 = kNone;
      for (int j = lane == 0 ? 32 : lane; j <= last; j += 32) {
        const float v = sc[j];
        if (v < bound_v || (v == bound_v && j > bound_j)) {
          if (v > v0) {
            v1 = v0, j1 = j0, v0 = v, j0 = j;
          } else if (v > v1) {
            v1 = v, j1 = j;
          }
        }
      }
    };
    scan(__int_as_float(0x7f800000), -1);
    bool complete = v1 < 0.f;  // the cache holds every remaining candidate of this lane
    for (int it = 0; it < kFree; ++it) {
      // Non-negative floats order like their bit patterns; the empty cache (-1) is below all of them.
      const int best = warp_max(__float_as_int(v0));
      const int pick = warp_min(__float_as_int(v0) == best ? j0 : kNone);
      if (lane == it) mine = pick;
      if (j0 == pick) {
        const float pv = v0;
        v0 = v1, j0 = j1, v1 = -1.f, j1 = kNone;
        if (v0 < 0.f && !complete) {
          scan(pv, pick);
          complete = v1 < 0.f;
        }
      }
    }
    if (lane == kFree) mine = 0;
    if (lane == kFree + 1) mine = jt - 1;
    if (lane == kFree + 2) mine = jt;
  }
  // Bitonic sort across the warp, ascending; kNone (unused lanes) last.
#pragma unroll
  for (int k = 2; k <= 32; k <<= 1) {
#pragma unroll
    for (int j = k >> 1; j > 0; j >>= 1) {
      const int other = __shfl_xor_sync(kFull, mine, j);
      const bool keep_min = ((lane & k) == 0) == ((lane & j) == 0);
      mine = keep_min ? min(mine, other) : max(mine, other);
    }
  }
  if (lane < kN) idx[lane] = lane < count && mine != kNone ? mine : -1;
  if (lane == 0) *cnt = count;
}

__device__ __forceinline__ void run(const SelectParams& p) {
  extern __shared__ __align__(128) char smem[];
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const int warp = static_cast<int>(threadIdx.x) / 32;
  const int wr = warp % kWR;  // row group: the positions
  const int ks = warp / kWR;  // key split: the tile's ks-th kBN blocks
  const int q4 = lane % 4;
  const int b = static_cast<int>(blockIdx.z);
  const int kvh = static_cast<int>(blockIdx.y);
  // The last positions see the most blocks: start them first.
  const i64 t0 = static_cast<i64>(gridDim.x - 1 - blockIdx.x) * kP;

  i64 len = p.T, tok0 = b * p.T;  // tok0: row of the sequence's first token in idx / cnt
  i64 q_off = b * p.q_sb, l_off = b * p.lse_sb, k_off = b * p.k_sb;
  if (p.cu_seqlens != nullptr) {
    const i64 begin = p.cu_seqlens[b];
    len = p.cu_seqlens[b + 1] - begin;
    tok0 = begin;
    q_off = begin * p.q_st;
    l_off = begin * p.lse_st;
  }
  if (t0 >= len) return;
  if (p.cu_seqlens != nullptr) {
    // The sequence's compressed blocks follow those of the sequences before it.
    int before = 0;
    for (int s = lane; s < b; s += 32) before += num_blocks(p.cu_seqlens[s + 1] - p.cu_seqlens[s]);
    k_off = static_cast<i64>(warp_sum(before)) * p.k_st;
  }

  const i64 t_hi = min(len - 1, t0 + kP - 1);
  const int n_keys = visible_blocks(t_hi);
  const int n_tiles = (n_keys + kTile - 1) / kTile;
  const int ns_row = p.ns_row;

  const elem* q = static_cast<const elem*>(p.q) + q_off + static_cast<i64>(kvh) * kG * p.q_sh;
  const elem* k = static_cast<const elem*>(p.k_cmp) + k_off + static_cast<i64>(kvh) * p.k_sh;

  const u32 sQ = smem_addr(smem);
  const u32 sK0 = sQ + kSmemQ;
  float* const pbuf = reinterpret_cast<float*>(smem + kSmemQ + 2 * kSmemK) + warp * kRowsW * kPStride;
  float* const scores = reinterpret_cast<float*>(smem + kSmemQ + 2 * kSmemK + kSmemP);

  // Blocks no tile reaches (not visible to any position here) score 0.
  for (int i = static_cast<int>(threadIdx.x); i < kP * ns_row / 4; i += kThreads)
    reinterpret_cast<float4*>(scores)[i] = make_float4(0.f, 0.f, 0.f, 0.f);

  // A key tile, rows permuted within each split's kBN (key_of_row). Unrolled at most 4 deep: with few threads, a
  // full unroll would keep every row's address live across the key loop. Chunks kDK / 8 .. dim_mma(kDK) / 8 are
  // zero-filled.
  auto load_k = [&](int tile, int stage) {
    constexpr int kChunks = dim_smem(kDK) / 8;  // row pitch
    constexpr int kCopy = dim_mma(kDK) / 8;    // chunks written per row
    constexpr int kTotal = kTile * kCopy;
    const int i0 = tile * kTile;
    const u32 dst = sK0 + stage * kSmemK;
#pragma unroll 4
    for (int it = 0; it < (kTotal + kThreads - 1) / kThreads; ++it) {
      const int linear = it * kThreads + static_cast<int>(threadIdx.x);
      if (kTotal % kThreads != 0 && linear >= kTotal) break;
      const int r = linear / kCopy, chunk = linear % kCopy;
      const int i = i0 + (r / kBN) * kBN + key_of_row(r % kBN);
      bool ok = i < n_keys;
      if constexpr (kCopy != kDK / 8) ok = ok && chunk < kDK / 8;
      cp_async_16(dst + swz<kChunks>(r, chunk), ok ? k + static_cast<i64>(i) * p.k_st + chunk * 8 : k, ok);
    }
  };
  load_tile_async<kThreads, kWR * kRowsW, kDK>(
      sQ,
      [&](int r) -> const void* {
        const int lr = r % kRowsW;
        if (lr >= kPPW * kG) return nullptr;
        const i64 t = t0 + (r / kRowsW) * kPPW + lr / kG;
        return t < len ? q + t * p.q_st + (lr % kG) * p.q_sh : nullptr;
      },
      q);
  if (n_tiles > 0) load_k(0, 0);
  cp_async_commit();

  // This thread's rows: mt * 16 + lane / 4 + 8 h of its row group. Padding rows and rows past the sequence see
  // nothing.
  const i64 t_first = t0 + wr * kPPW;
  const bool warp_active = t_first < len;
  const int vis_first = visible_blocks(t_first);
  float nlse[kMT][2];
  int vis[kMT][2];
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int lr = mt * 16 + lane / 4 + 8 * h;
      const i64 t = t_first + lr / kG;
      nlse[mt][h] = 0.f;
      vis[mt][h] = 0;
      if (lr < kPPW * kG && t < len) {
        const float l = p.lse[l_off + t * p.lse_st + kvh * kG + lr % kG];
        nlse[mt][h] = l == neg_inf() ? neg_inf() : -l * kLog2e;
        vis[mt][h] = visible_blocks(t);
      }
    }
  }

  // The positions (within the row group) whose sums this thread holds, and whether it stores them.
  bool owner[kSlots];
  float* row[kSlots];
#pragma unroll
  for (int h = 0; h < kSlots; ++h) {
    int pos = 0;
    if constexpr (kPath == kPathXor) {
      owner[h] = (lane / 4) % kG == 0;
      pos = (lane / 4 + 8 * h) / kG;
    } else if constexpr (kPath == kPathXor16) {
      owner[h] = lane / 4 == 0;
    } else {
      owner[h] = lane / 4 < kPPW;
      pos = owner[h] ? lane / 4 : 0;
    }
    row[h] = scores + (wr * kPPW + pos) * ns_row;
  }

  u32 qf[kQInRegs ? kMT : 1][kQInRegs ? dim_mma(kDK) / 16 : 1][4];

  for (int kt = 0; kt < n_tiles; ++kt) {
    const int stage = kt & 1;
    if (kt + 1 < n_tiles) load_k(kt + 1, stage ^ 1);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();

    if (warp_active) {
      if constexpr (kQInRegs) {
        if (kt == 0) {
#pragma unroll
          for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
            for (int kk = 0; kk < dim_mma(kDK) / 16; ++kk)
              ldmatrix_x4(sQ + swz<dim_smem(kDK) / 8>(wr * kRowsW + mt * 16 + lane % 16, kk * 2 + lane / 16),
                          qf[mt][kk][0], qf[mt][kk][1], qf[mt][kk][2], qf[mt][kk][3]);
        }
      }
      const u32 sK = sK0 + stage * kSmemK + ks * (kBN * dim_smem(kDK) * 2);  // this split's kBN rows
      const int i0 = kt * kTile + ks * kBN;
      const int run0 = i0 + q4 * kR4;  // first compressed block of this thread's run
      const bool full = i0 + kBN <= vis_first;

      float red[kSlots][kR4];
      if constexpr (kPath == kPathXor16) {
#pragma unroll
        for (int u = 0; u < kR4; ++u) red[0][u] = 0.f;
      }
      // Row tiles one after the other (Q fragments held in registers need constant indices: then unrolled).
#pragma unroll(kQInRegs ? kMT : 1)
      for (int mt = 0; mt < kMT; ++mt) {
        float s[kBN / 8][4];
#pragma unroll
        for (int i = 0; i < kBN / 8; ++i) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.f;
#pragma unroll
        for (int kk = 0; kk < dim_mma(kDK) / 16; ++kk) {
          u32 a[4];
          if constexpr (kQInRegs) {
            a[0] = qf[mt][kk][0], a[1] = qf[mt][kk][1], a[2] = qf[mt][kk][2], a[3] = qf[mt][kk][3];
          } else {
            ldmatrix_x4(sQ + swz<dim_smem(kDK) / 8>(wr * kRowsW + mt * 16 + lane % 16, kk * 2 + lane / 16), a[0], a[1],
                        a[2], a[3]);
          }
#pragma unroll
          for (int nn = 0; nn < kBN / 16; ++nn) {
            u32 b0, b1, b2, b3;
            ldmatrix_x4(sK + swz<dim_smem(kDK) / 8>(nn * 16 + (lane / 16) * 8 + lane % 8, kk * 2 + ((lane / 8) & 1)),
                        b0, b1, b2, b3);
            mma_16816<elem>(s[2 * nn], a, b0, b1);
            mma_16816<elem>(s[2 * nn + 1], a, b2, b3);
          }
        }
        // This row tile's row data, picked with constant indices (a dynamic index would put them in local memory).
        float nl[2] = {nlse[0][0], nlse[0][1]};
        int vs[2] = {vis[0][0], vis[0][1]};
#pragma unroll
        for (int m = 1; m < kMT; ++m) {
          if (m == mt) nl[0] = nlse[m][0], nl[1] = nlse[m][1], vs[0] = vis[m][0], vs[1] = vis[m][1];
        }
        // p = exp(scale * q.k - lse), 0 for the blocks a row does not see. Element (nt, 2 h + c) is row half h,
        // block run0 + 2 nt + c.
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int lim = vs[h] - run0;
#pragma unroll
          for (int nt = 0; nt < kBN / 8; ++nt) {
#pragma unroll
            for (int c = 0; c < 2; ++c) {
              float x = fast_exp2(fmaf(s[nt][2 * h + c], p.scale_log2, nl[h]));
              if (!full && 2 * nt + c >= lim) x = 0.f;
              s[nt][2 * h + c] = x;
            }
          }
        }
#pragma unroll
        for (int nt = 0; nt < kBN / 8; ++nt) {
#pragma unroll
          for (int c = 0; c < 2; ++c) {
            if constexpr (kPath == kPathXor) {
              red[0][2 * nt + c] = s[nt][c];
              red[1][2 * nt + c] = s[nt][2 + c];
            } else if constexpr (kPath == kPathXor16) {
              red[0][2 * nt + c] += s[nt][c] + s[nt][2 + c];
            }
          }
          if constexpr (kPath == kPathSmem) {
            const int r = mt * 16 + lane / 4;
            const int col = nt * 8 + 2 * q4;
            *reinterpret_cast<float2*>(pbuf + r * kPStride + col) = make_float2(s[nt][0], s[nt][1]);
            *reinterpret_cast<float2*>(pbuf + (r + 8) * kPStride + col) = make_float2(s[nt][2], s[nt][3]);
          }
        }
      }

      float acc[kSlots][kNOut];
      if constexpr (kPath == kPathSmem) {
        // Column sums over each position's G rows, in place (rows 0 .. kPPW - 1); a lane owns its columns.
        __syncwarp();
        for (int col = lane; col < kBN; col += 32) {
          float sum[kPPW];
#pragma unroll
          for (int m = 0; m < kPPW; ++m) {
            sum[m] = 0.f;
#pragma unroll
            for (int g = 0; g < kG; ++g) sum[m] += pbuf[(m * kG + g) * kPStride + col];
          }
#pragma unroll
          for (int m = 0; m < kPPW; ++m) pbuf[m * kPStride + col] = sum[m];
        }
        __syncwarp();
#pragma unroll
        for (int u = 0; u < kR4; ++u) red[0][u] = pbuf[(lane / 4) * kPStride + 8 * (u / 2) + 2 * q4 + u % 2];
        fold_run(red[0], acc[0]);
      } else {
        // Fold first (linear), then sum the folded values over the lane groups that hold a position's rows.
        constexpr int kSpan = kPath == kPathXor ? 4 * kG : 32;
#pragma unroll
        for (int h = 0; h < kSlots; ++h) {
          fold_run(red[h], acc[h]);
#pragma unroll
          for (int m = 4; m < kSpan; m <<= 1)
#pragma unroll
            for (int s = 0; s < kNOut; ++s) acc[h][s] += __shfl_xor_sync(kFull, acc[h][s], m);
        }
      }
#pragma unroll
      for (int h = 0; h < kSlots; ++h)
        if (owner[h]) emit_run(acc[h], row[h], run0 * kD / kLSel, ns_row);
    }
    __syncthreads();
  }
  cp_async_wait<0>();
  __syncthreads();

  for (int pos = warp; pos < kP; pos += kW) {
    const i64 t = t0 + pos;
    if (t >= len) break;
    const i64 r = (tok0 + t) * p.H + kvh;
    select_top(scores + pos * ns_row, static_cast<int>(t / kLSel), p.idx + r * kN, p.cnt + r);
  }
}

}  // namespace select_blocks
}  // namespace nsa

#endif  // NSA_SELECT_CUH
