// Attention backward of the three NSA branches (NSA.md "Backward"), FlashAttention-2 style on mma.sync m16n8k16,
// deterministic by construction: every output element is reduced by one thread in a fixed order (no float atomics).
//
// Two kernels per branch, selected by kPart:
// - dq (query-centric): a CTA owns query rows, loops over the keys they see and accumulates
//   dQ = scale * dS K with P = exp(S - lse), dP = do_b V^T, dS = P * (dP - delta). do_b = g * do is never
//   materialized: dP is computed from do and scaled by the row's gate in fp32.
// - dkv (key-centric): a CTA owns a tile of keys (16 per warp), loops over the query rows that see them and
//   accumulates dV = (g P)^T do and dK = scale * dS^T q.
//
// kMask chooses the branch: window (keys t-w+1 .. t), compressed (compressed keys i with i*d + l - 1 <= t) or
// selected (the keys of the blocks in idx[t], s <= t). Rows are flattened (query position, head-in-group) pairs
// m = t * G + g as in attn_fwd.cuh. For the selected dkv kernel the query positions come from an inverted index:
// for each (KV head, block) the ascending list of positions that selected it (built by bwd_util.cuh), cut into
// work items of at most kQChunk positions so that a block every query selects (block 0) is spread over many CTAs;
// a block with several items writes per-item partial sums that bwd_util.cuh's reduce adds up in item order.
//
// The fp32 outputs are packed, contiguous [tokens, heads, dim] arrays (varlen: the packed token index) that later
// kernels add to and finally convert to the caller's dtype and strides.
#ifndef NSA_ATTN_BWD_CUH
#define NSA_ATTN_BWD_CUH
#ifndef NSAJIT_GENERATED
#include "common.cuh"
#include "attn_params.cuh"
#include "bwd_params.h"
namespace nsa::spec {
typedef bf16 elem;
constexpr int kMask = kMaskWindow, kPart = 0, kDK = 128, kDV = 128, kG = 16, kL = 64;
constexpr int kBM = 64, kBN = 32, kWarps = 4, kQChunk = 1024;
}  // namespace nsa::spec
#endif

namespace nsa {
namespace attn_bwd {

using namespace spec;
constexpr float kLog2e = 1.4426950408889634f;

// Head dims: kDK and kDV are the true ones (global memory and the packed fp32 arrays); shared tiles are dim_smem
// wide, the MMA loops and the accumulators dim_mma (common.cuh). (Written out where used: a namespace-scope constant
// would be a symbol of the CUBIN, and those of the head dims that were always multiples of 64 stay as they were.)
static_assert(kDK % 8 == 0 && kDV % 8 == 0, "head dims must be multiples of 8");

// This thread's accumulators of a warp's 16 rows x D columns (D the true dim; the accumulators hold dim_mma(D)),
// written to a packed fp32 array (row r of the warp at row_ptr(r), nullptr for a row that does not exist), scaled by
// `mul`, added to what is there when `add`.
template <int D, class RowPtr>
__device__ __forceinline__ void store_rows_f32(const float (&acc)[dim_mma(D) / 8][4], RowPtr row_ptr, float mul,
                                               bool add, int lane) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float* row = row_ptr(lane / 4 + 8 * r);
    if (row == nullptr) continue;
#pragma unroll
    for (int dn = 0; dn < D / 8; ++dn) {
      float2* dst = reinterpret_cast<float2*>(row + dn * 8 + (lane % 4) * 2);
      float2 x = make_float2(acc[dn][2 * r] * mul, acc[dn][2 * r + 1] * mul);
      if (add) {
        const float2 old = *dst;
        x.x += old.x, x.y += old.y;
      }
      *dst = x;
    }
  }
}

template <int N, int D>
__device__ __forceinline__ void zero(float (&a)[N][D]) {
#pragma unroll
  for (int i = 0; i < N; ++i)
#pragma unroll
    for (int j = 0; j < D; ++j) a[i][j] = 0.f;
}

// The per-row scalars a backward step needs: lse in base 2 (+inf for a row without keys, so that P = 0), the
// row's delta = g <do, o_b> and its gate g, and its query position (-1: padding row).
struct RowScalars {
  float lse2, delta, gate;
  int t;
};

__device__ __forceinline__ RowScalars load_row(const AttnBwdParams& p, i64 tok, i64 lse_off, i64 gate_off, int t,
                                               int h) {
  RowScalars r;
  const float lse = p.lse[lse_off + h];
  r.lse2 = lse == neg_inf() ? __int_as_float(0x7f800000) : lse * kLog2e;
  r.delta = p.delta[tok * (static_cast<i64>(p.H) * kG) + h];
  r.gate = to_float(static_cast<const elem*>(p.gate)[gate_off + h * p.gate_sh]);
  r.t = t;
  return r;
}

__device__ __forceinline__ RowScalars padding_row() {
  RowScalars r;
  r.lse2 = __int_as_float(0x7f800000);
  r.delta = 0.f, r.gate = 0.f, r.t = -1;
  return r;
}

// Is key s visible to query t (t >= 0) in this branch? For kMaskSelected the block membership is known by
// construction; only causality (s <= t) is left.
__device__ __forceinline__ bool visible(const AttnBwdParams& p, i64 s, i64 t) {
  if constexpr (kMask == kMaskWindow) {
    return s <= t && s > t - p.w;
  } else if constexpr (kMask == kMaskCompressed) {
    return s * p.d + p.l - 1 <= t;
  } else {
    return s <= t;
  }
}

// ================================================================================================================
// dq, window and compressed: the forward's loop structure (attn_fwd.cuh).
namespace dq_dense {

constexpr int kWarpsDq = kBM / 16;
constexpr int kThreads = kWarpsDq * 32;
constexpr int kSmemQ = kBM * dim_smem(kDK) * 2;
constexpr int kSmemDO = kBM * dim_smem(kDV) * 2;
constexpr int kSmemK = kBN * dim_smem(kDK) * 2;
constexpr int kSmemV = kBN * dim_smem(kDV) * 2;
constexpr int kSmem = kSmemQ + kSmemDO + 2 * (kSmemK + kSmemV);

__device__ __forceinline__ void run(const AttnBwdParams& p) {
  extern __shared__ __align__(128) char smem[];
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const int warp = static_cast<int>(threadIdx.x) / 32;
  const int b = static_cast<int>(blockIdx.z);
  const int kvh = static_cast<int>(blockIdx.y);

  AttnFwdParams fp;  // sequence_span needs only these
  fp.cu_seqlens = p.cu_seqlens, fp.T = p.T, fp.l = p.l, fp.d = p.d;
  const SeqSpan seq = sequence_span(fp, b);
  const i64 len = seq.len;
  const bool varlen = p.cu_seqlens != nullptr;
  const i64 m0 = static_cast<i64>(blockIdx.x) * kBM;
  if (m0 >= len * kG) return;
  const i64 tok0 = varlen ? seq.begin : b * p.T;  // packed index of position 0
  const i64 q_off = varlen ? seq.begin * p.q_st : b * p.q_sb;
  const i64 do_off = varlen ? seq.begin * p.do_st : b * p.do_sb;
  const i64 key_begin = kMask == kMaskWindow ? seq.begin : seq.cmp_begin;
  const i64 k_off = varlen ? key_begin * p.k_st : b * p.k_sb;
  const i64 v_off = varlen ? key_begin * p.v_st : b * p.v_sb;
  const i64 lse_off = varlen ? seq.begin * p.lse_st : b * p.lse_sb;
  const i64 gate_off = varlen ? seq.begin * p.gate_st : b * p.gate_sb;

  const elem* q = static_cast<const elem*>(p.q) + q_off + static_cast<i64>(kvh) * kG * p.q_sh;
  const elem* dout = static_cast<const elem*>(p.dout) + do_off + static_cast<i64>(kvh) * kG * p.do_sh;
  const elem* k = static_cast<const elem*>(p.k) + k_off + static_cast<i64>(kvh) * p.k_sh;
  const elem* v = static_cast<const elem*>(p.v) + v_off + static_cast<i64>(kvh) * p.v_sh;

  const KeyRange keys = key_range<kMask, kG, kBM, kBN>(m0, len, p.w, p.l, p.d);
  const i64 s_begin = keys.begin, s_end = keys.end;
  const int n_tiles = keys.n_tiles;

  const u32 sQ = smem_addr(smem);
  const u32 sDO = sQ + kSmemQ;
  const u32 sK0 = sDO + kSmemDO;
  const u32 sV0 = sK0 + 2 * kSmemK;

  auto load_kv = [&](int tile, int stage) {
    const i64 s0 = s_begin + static_cast<i64>(tile) * kBN;
    load_tile_async<kThreads, kBN, kDK>(
        sK0 + stage * kSmemK, [&](int r) -> const void* { return s0 + r < s_end ? k + (s0 + r) * p.k_st : nullptr; },
        k);
    load_tile_async<kThreads, kBN, kDV>(
        sV0 + stage * kSmemV, [&](int r) -> const void* { return s0 + r < s_end ? v + (s0 + r) * p.v_st : nullptr; },
        v);
  };
  load_tile_async<kThreads, kBM, kDK>(
      sQ,
      [&](int r) -> const void* {
        const i64 m = m0 + r, t = m / kG;
        return t < len ? q + t * p.q_st + (m % kG) * p.q_sh : nullptr;
      },
      q);
  load_tile_async<kThreads, kBM, kDV>(
      sDO,
      [&](int r) -> const void* {
        const i64 m = m0 + r, t = m / kG;
        return t < len ? dout + t * p.do_st + (m % kG) * p.do_sh : nullptr;
      },
      dout);
  if (n_tiles > 0) load_kv(0, 0);
  cp_async_commit();

  const int row0 = warp * 16 + lane / 4;
  RowScalars rs[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const i64 m = m0 + row0 + 8 * r, t = m / kG;
    rs[r] = t < len ? load_row(p, tok0 + t, lse_off + t * p.lse_st, gate_off + t * p.gate_st, static_cast<int>(t),
                               kvh * kG + static_cast<int>(m % kG))
                    : padding_row();
  }

  float dq[dim_mma(kDK) / 8][4];
  zero(dq);
  const u32 qf_unused[1][4] = {{0, 0, 0, 0}};

  for (int j = 0; j < n_tiles; ++j) {
    const int stage = j & 1;
    if (j + 1 < n_tiles) load_kv(j + 1, stage ^ 1);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    const u32 sK = sK0 + stage * kSmemK;
    const u32 sV = sV0 + stage * kSmemV;

    float s[kBN / 8][4], dp[kBN / 8][4];
    qk_tile<elem, kBN, kDK, false>(s, qf_unused, sQ, sK, warp, lane);
    qk_tile<elem, kBN, kDV, false>(dp, qf_unused, sDO, sV, warp, lane);
    const i64 s0 = s_begin + static_cast<i64>(j) * kBN;
#pragma unroll
    for (int nt = 0; nt < kBN / 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const RowScalars& r = rs[e / 2];
        const i64 key = s0 + nt * 8 + (lane % 4) * 2 + (e & 1);
        const bool ok = r.t >= 0 && key < s_end && visible(p, key, r.t);
        const float pr = ok ? fast_exp2(s[nt][e] * p.scale_log2 - r.lse2) : 0.f;
        s[nt][e] = pr * (r.gate * dp[nt][e] - r.delta);  // dS
      }
    }
    accumulate_pv<elem, kBN, kDK>(s, dq, sK, lane);
    __syncthreads();
  }
  cp_async_wait<0>();

  float* out = p.dq;
  store_rows_f32<kDK>(
      dq,
      [&](int i) -> float* {
        const i64 m = m0 + warp * 16 + i, t = m / kG;
        if (t >= len) return nullptr;
        return out + ((tok0 + t) * p.H * kG + kvh * kG + m % kG) * kDK;
      },
      p.scale, p.accumulate != 0, lane);
}

}  // namespace dq_dense

// ================================================================================================================
// dq, selected: each warp works alone on 16 rows. For G <= 16 they are the G heads of kP = 16 / G consecutive
// positions (rows past kP * G are padding); for G > 16, a 16-head slice of one position. The warp walks the union
// of its positions' block lists (merged in ascending order, each block with the mask of the positions that chose
// it), streaming each block's K/V once through its own double-buffered shared tiles; a row attends to a block only
// if its position chose it, and to keys s <= t.
namespace dq_selected {

constexpr int kThreads = kWarps * 32;
constexpr int kSlices = (kG + 15) / 16;        // warps' worth of rows per position (G > 16)
constexpr int kP = kG <= 16 ? 16 / kG : 1;     // positions per warp
constexpr int kMaxUnion = kP * 32;             // n <= 32 blocks per position
constexpr int kSmemQ = 16 * dim_smem(kDK) * 2;
constexpr int kSmemDO = 16 * dim_smem(kDV) * 2;
constexpr int kSmemK = kBN * dim_smem(kDK) * 2;
constexpr int kSmemV = kBN * dim_smem(kDV) * 2;
constexpr int kSmemUnion = kMaxUnion * 8;
constexpr int kSmemWarp = kSmemQ + kSmemDO + 2 * (kSmemK + kSmemV) + kSmemUnion;
constexpr int kSmem = kWarps * kSmemWarp;
// (Every backward source holds this namespace; only the selected branch's dq runs it.)
static_assert(kMask != kMaskSelected || kPart != 0 || kL % kBN == 0,
              "a selection block must be a whole number of key tiles");

// A warp's copy of kRows rows of D elements (the true dim) into a swizzled tile of dim_smem(D)-wide rows (rows with a
// null pointer zero-filled, and chunks D / 8 .. dim_mma(D) / 8 of every row). kRows * dim_mma(D) / 8 is a multiple of
// 32: kRows is of 16, dim_mma(D) / 8 even.
template <int kRows, int D, class RowPtr>
__device__ __forceinline__ void warp_load(u32 tile, RowPtr row_ptr, const void* any_valid, int lane) {
  constexpr int kChunks = dim_smem(D) / 8;  // row pitch
  constexpr int kCopy = dim_mma(D) / 8;     // chunks written per row
  static_assert(kRows * kCopy % 32 == 0, "the copy divides evenly over the warp");
#pragma unroll 4
  for (int i = 0; i < kRows * kCopy / 32; ++i) {
    const int linear = i * 32 + lane;
    const int row = linear / kCopy, chunk = linear % kCopy;
    const char* src = static_cast<const char*>(row_ptr(row));
    if constexpr (kCopy == D / 8) {
      cp_async_16(tile + swz<kChunks>(row, chunk), src ? src + chunk * 16 : any_valid, src != nullptr);
    } else {
      const bool ok = src != nullptr && chunk < D / 8;
      cp_async_16(tile + swz<kChunks>(row, chunk), ok ? src + chunk * 16 : any_valid, ok);
    }
  }
}

__device__ __forceinline__ int warp_min_i32(int v) {
  int r;
  asm volatile("redux.sync.min.s32 %0, %1, 0xffffffff;\n" : "=r"(r) : "r"(v));
  return r;
}

__device__ __forceinline__ void run(const AttnBwdParams& p) {
  extern __shared__ __align__(128) char smem[];
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const int warp = static_cast<int>(threadIdx.x) / 32;
  const int b = static_cast<int>(blockIdx.z);
  const int kvh = static_cast<int>(blockIdx.y);
  const i64 unit = static_cast<i64>(blockIdx.x) * kWarps + warp;  // (group of kP positions, slice)
  const i64 t0 = (unit / kSlices) * kP;
  const int g0 = static_cast<int>(unit % kSlices) * 16;

  i64 begin = 0, len = p.T;
  if (p.cu_seqlens != nullptr) begin = p.cu_seqlens[b], len = p.cu_seqlens[b + 1] - begin;
  if (t0 >= len) return;  // no __syncthreads below: warps are independent
  const int np = static_cast<int>(min(static_cast<i64>(kP), len - t0));  // positions of this warp
  const i64 t_max = t0 + np - 1;
  const bool varlen = p.cu_seqlens != nullptr;
  const i64 tok0 = varlen ? begin + t0 : b * p.T + t0;
  const elem* q = static_cast<const elem*>(p.q) + (varlen ? begin * p.q_st : b * p.q_sb) + t0 * p.q_st +
                  static_cast<i64>(kvh) * kG * p.q_sh;
  const elem* dout = static_cast<const elem*>(p.dout) + (varlen ? begin * p.do_st : b * p.do_sb) + t0 * p.do_st +
                     static_cast<i64>(kvh) * kG * p.do_sh;
  const elem* k = static_cast<const elem*>(p.k) + (varlen ? begin * p.k_st : b * p.k_sb) + kvh * p.k_sh;
  const elem* v = static_cast<const elem*>(p.v) + (varlen ? begin * p.v_st : b * p.v_sb) + kvh * p.v_sh;
  const i64 lse_off = (varlen ? begin * p.lse_st : b * p.lse_sb) + t0 * p.lse_st;
  const i64 gate_off = (varlen ? begin * p.gate_st : b * p.gate_sb) + t0 * p.gate_st;

  // Row r of the warp: its position (0 .. np, or -1 for padding) and head in the group.
  auto row_pos = [&](int r) -> int {
    if constexpr (kG <= 16) {
      return r / kG < np ? r / kG : -1;
    } else {
      return g0 + r < kG ? 0 : -1;
    }
  };
  auto row_head = [&](int r) -> int { return kG <= 16 ? r % kG : g0 + r; };

  const u32 base = smem_addr(smem) + warp * kSmemWarp;
  const u32 sQ = base, sDO = base + kSmemQ, sK0 = sDO + kSmemDO, sV0 = sK0 + 2 * kSmemK;
  u32* ulist = reinterpret_cast<u32*>(smem + warp * kSmemWarp + kSmemQ + kSmemDO + 2 * (kSmemK + kSmemV));

  warp_load<16, kDK>(
      sQ,
      [&](int r) -> const void* {
        const int i = row_pos(r);
        return i >= 0 ? q + i * p.q_st + row_head(r) * p.q_sh : nullptr;
      },
      q, lane);
  warp_load<16, kDV>(
      sDO,
      [&](int r) -> const void* {
        const int i = row_pos(r);
        return i >= 0 ? dout + i * p.do_st + row_head(r) * p.do_sh : nullptr;
      },
      dout, lane);
  cp_async_commit();

  // The union of the positions' block lists: lane i < np walks position i's list; each step takes the smallest
  // current block and the mask of the positions at it (any order of a list is correct, ascending is fastest).
  int ulen = 0;
  {
    const i32* idx = lane < np ? p.idx + ((tok0 + lane) * p.H + kvh) * p.n : nullptr;
    const int cnt = lane < np ? min(p.cnt[(tok0 + lane) * p.H + kvh], p.n) : 0;
    int cur = 0;
    constexpr int kNone = 0x7fffffff;
    const i64 last_blk = (t0 + lane) / kL;  // a block past this one, or a negative one, carries no gradient
    while (true) {
      while (cur < cnt && (idx[cur] < 0 || idx[cur] > last_blk)) ++cur;
      const int val = cur < cnt ? idx[cur] : kNone;
      const int m = warp_min_i32(val);
      if (m == kNone) break;
      const u32 mask = __ballot_sync(0xffffffffu, val == m);
      if (lane == 0) ulist[2 * ulen] = static_cast<u32>(m), ulist[2 * ulen + 1] = mask;
      cur += val == m ? 1 : 0;
      ++ulen;
    }
    __syncwarp();
  }
  constexpr int kTilesPerBlock = kL >= kBN ? kL / kBN : 1;  // kL / kBN where this runs (the static_assert above)
  const int n_tiles = ulen * kTilesPerBlock;

  auto load_kv = [&](int tile, int stage) {
    const i64 s0 = static_cast<i64>(ulist[2 * (tile / kTilesPerBlock)]) * kL + (tile % kTilesPerBlock) * kBN;
    warp_load<kBN, kDK>(
        sK0 + stage * kSmemK, [&](int r) -> const void* { return s0 + r <= t_max ? k + (s0 + r) * p.k_st : nullptr; },
        k, lane);
    warp_load<kBN, kDV>(
        sV0 + stage * kSmemV, [&](int r) -> const void* { return s0 + r <= t_max ? v + (s0 + r) * p.v_st : nullptr; },
        v, lane);
  };
  if (n_tiles > 0) load_kv(0, 0);
  cp_async_commit();

  RowScalars rs[2];
  int rpos[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = lane / 4 + 8 * r;
    rpos[r] = row_pos(row);
    rs[r] = rpos[r] >= 0 ? load_row(p, tok0 + rpos[r], lse_off + rpos[r] * p.lse_st, gate_off + rpos[r] * p.gate_st,
                                    static_cast<int>(t0 + rpos[r]), kvh * kG + row_head(row))
                         : padding_row();
  }
  float dq[dim_mma(kDK) / 8][4];
  zero(dq);
  const u32 qf_unused[1][4] = {{0, 0, 0, 0}};

  for (int j = 0; j < n_tiles; ++j) {
    const int stage = j & 1;
    if (j + 1 < n_tiles) load_kv(j + 1, stage ^ 1);
    cp_async_commit();
    cp_async_wait<1>();
    __syncwarp();
    const u32 sK = sK0 + stage * kSmemK, sV = sV0 + stage * kSmemV;
    float s[kBN / 8][4], dp[kBN / 8][4];
    qk_tile<elem, kBN, kDK, false>(s, qf_unused, sQ, sK, 0, lane);
    qk_tile<elem, kBN, kDV, false>(dp, qf_unused, sDO, sV, 0, lane);
    const i64 s0 = static_cast<i64>(ulist[2 * (j / kTilesPerBlock)]) * kL + (j % kTilesPerBlock) * kBN;
    const u32 chose = ulist[2 * (j / kTilesPerBlock) + 1];
    bool row_on[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) row_on[r] = rpos[r] >= 0 && ((chose >> rpos[r]) & 1u);
#pragma unroll
    for (int nt = 0; nt < kBN / 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const RowScalars& r = rs[e / 2];
        const i64 key = s0 + nt * 8 + (lane % 4) * 2 + (e & 1);
        const bool ok = row_on[e / 2] && key <= r.t;
        const float pr = ok ? fast_exp2(s[nt][e] * p.scale_log2 - r.lse2) : 0.f;
        s[nt][e] = pr * (r.gate * dp[nt][e] - r.delta);
      }
    }
    accumulate_pv<elem, kBN, kDK>(s, dq, sK, lane);
    __syncwarp();
  }
  cp_async_wait<0>();

  store_rows_f32<kDK>(
      dq,
      [&](int r) -> float* {
        const int i = row_pos(r);
        return i >= 0 ? p.dq + ((tok0 + i) * p.H * kG + kvh * kG + row_head(r)) * kDK : nullptr;
      },
      p.scale, p.accumulate != 0, lane);
}

}  // namespace dq_selected

// ================================================================================================================
// dK/dV: a CTA owns kKeys = 16 * kWarps keys of one KV head (K and V stay in shared memory) and streams tiles of
// kBM query rows (Q, do and the rows' scalars, double-buffered). Per warp, per tile:
//   S^T = K Q^T, P^T = exp(S^T - lse), dP^T = V do^T, dS^T = P^T (g dP^T - delta),
//   dV += (g P)^T do, dK += dS^T Q.
namespace dkv {

constexpr int kKeys = 16 * kWarps;
constexpr int kThreads = kWarps * 32;
constexpr int kSmemK = kKeys * dim_smem(kDK) * 2;
constexpr int kSmemV = kKeys * dim_smem(kDV) * 2;
constexpr int kSmemQ = kBM * dim_smem(kDK) * 2;
constexpr int kSmemDO = kBM * dim_smem(kDV) * 2;
constexpr int kSmemRows = kBM * 16;  // RowScalars
constexpr int kSmem = kSmemK + kSmemV + 2 * (kSmemQ + kSmemDO + kSmemRows);
static_assert(kMask != kMaskSelected || kPart == 0 || kKeys == kL,
              "the selected dkv kernel owns one whole selection block");

// The inner step for one tile of query rows already in shared memory.
__device__ __forceinline__ void step(const AttnBwdParams& p, float (&dk)[dim_mma(kDK) / 8][4],
                                     float (&dv)[dim_mma(kDV) / 8][4],
                                     u32 sK, u32 sV, u32 sQ, u32 sDO, const RowScalars* rows, i64 key0, i64 key_end,
                                     int warp, int lane) {
  const u32 unused[1][4] = {{0, 0, 0, 0}};
  float st[kBM / 8][4], dpt[kBM / 8][4];
  qk_tile<elem, kBM, kDK, false>(st, unused, sK, sQ, warp, lane);
  qk_tile<elem, kBM, kDV, false>(dpt, unused, sV, sDO, warp, lane);
  // This thread's two keys (rows of S^T).
  const i64 keys[2] = {key0 + warp * 16 + lane / 4, key0 + warp * 16 + lane / 4 + 8};
#pragma unroll
  for (int nt = 0; nt < kBM / 8; ++nt) {
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const RowScalars r = rows[nt * 8 + (lane % 4) * 2 + e];
#pragma unroll
      for (int kr = 0; kr < 2; ++kr) {
        const int i = 2 * kr + e;
        const bool ok = r.t >= 0 && keys[kr] < key_end && visible(p, keys[kr], r.t);
        const float pr = ok ? fast_exp2(st[nt][i] * p.scale_log2 - r.lse2) : 0.f;
        st[nt][i] = pr * r.gate;                       // (g P)^T
        dpt[nt][i] = pr * (r.gate * dpt[nt][i] - r.delta);  // dS^T
      }
    }
  }
  accumulate_pv<elem, kBM, kDV>(st, dv, sDO, lane);
  accumulate_pv<elem, kBM, kDK>(dpt, dk, sQ, lane);
}

// Where this CTA's work is: its keys, the rows it streams, and where its sums go.
struct Work {
  int b = 0;            // batch entry or sequence
  i64 len = 0;          // the sequence's length
  i64 seq_begin = 0;    // packed token index of position 0 of the sequence (varlen: cu_seqlens[b])
  i64 key0 = 0;         // first key (sequence-relative: token, or compressed block for the compressed branch)
  i64 key_end = 0;      // keys past this are not in the sequence
  i64 key_tok0 = 0;     // packed index of key 0 of the sequence in the fp32 dk/dv arrays
  i64 m_begin = 0, m_end = 0;  // rows streamed (flattened index over the row source)
  const i32* list = nullptr;    // selected: positions of the row source (list[e], e = m / G)
  float* dk_out = nullptr;      // selected: partial slot, or null to add into p.dk/p.dv rows
  float* dv_out = nullptr;
  float* dk_base = nullptr;     // otherwise: the packed rows the sums go to, added (dk/dv) or written (a chunk's)
  float* dv_base = nullptr;
  bool add = true;
  bool valid = false;
};

__device__ __forceinline__ i64 upper_bound_i64(const i64* a, i64 n, i64 x) {  // first i with a[i] > x
  i64 lo = 0, hi = n;
  while (lo < hi) {
    const i64 mid = (lo + hi) / 2;
    if (a[mid] <= x) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

__device__ __forceinline__ Work find_work(const AttnBwdParams& p, int kvh) {
  Work w;
  if constexpr (kMask == kMaskSelected) {
    // blockIdx.x is a work item of this KV head; items of block g are [item_off[g], item_off[g + 1]).
    const i64 nblk = p.nblk;
    const i64* item_off = p.item_off + kvh * (nblk + 1);
    const i64 item = blockIdx.x;
    if (item >= item_off[nblk]) return w;
    const i64 g = upper_bound_i64(item_off, nblk + 1, item) - 1;
    const int b = p.blk_seq[g];
    w.b = b;
    const i64 blk_begin = p.seq_blk_off[b];
    const i64 j = g - blk_begin;
    if (p.cu_seqlens != nullptr) {
      w.seq_begin = p.cu_seqlens[b];
      w.len = p.cu_seqlens[b + 1] - w.seq_begin;
    } else {
      w.seq_begin = static_cast<i64>(b) * p.T;
      w.len = p.T;
    }
    w.key0 = j * kL;
    w.key_end = w.len;
    w.key_tok0 = w.seq_begin;
    const i64 c = p.count[kvh * nblk + g];
    const i64 k_item = item - item_off[g];
    const i64 e0 = k_item * kQChunk, e1 = min(c, e0 + kQChunk);
    w.list = p.list + kvh * p.list_stride + p.list_off[kvh * nblk + g];
    w.m_begin = e0 * kG, w.m_end = e1 * kG;
    w.dk_base = p.dk, w.dv_base = p.dv;
    const i64 slot = p.slot_off[kvh * nblk + g];
    if (slot >= 0) {
      float* part = p.partial + (kvh * p.slot_stride + slot + k_item) * static_cast<i64>(kL) * (kDK + kDV);
      w.dk_out = part;
      w.dv_out = part + kL * kDK;
    }
    w.valid = true;
    return w;
  } else {
    const int b = static_cast<int>(blockIdx.z);
    const i64 nchunks = kMask == kMaskCompressed ? p.nchunks : 1;
    const i64 chunk = blockIdx.x % nchunks;
    AttnFwdParams fp;
    fp.cu_seqlens = p.cu_seqlens, fp.T = p.T, fp.l = p.l, fp.d = p.d;
    const SeqSpan seq = sequence_span(fp, b);
    const bool varlen = p.cu_seqlens != nullptr;
    w.b = b;
    w.len = seq.len;
    w.seq_begin = varlen ? seq.begin : static_cast<i64>(b) * p.T;
    const i64 nkeys = kMask == kMaskWindow ? seq.len : num_cmp_blocks(seq.len, p.l, p.d);
    w.key0 = static_cast<i64>(blockIdx.x / nchunks) * kKeys;
    if (w.key0 >= nkeys) return w;
    w.key_end = nkeys;
    w.key_tok0 = kMask == kMaskWindow ? w.seq_begin
                                      : (varlen ? seq.cmp_begin : static_cast<i64>(b) * num_cmp_blocks(p.T, p.l, p.d));
    const i64 last_key = min(nkeys, w.key0 + kKeys) - 1;
    i64 t_first, t_last;
    if constexpr (kMask == kMaskWindow) {
      t_first = w.key0;
      t_last = min(seq.len - 1, last_key + p.w - 1);
    } else {
      t_first = w.key0 * p.d + p.l - 1;
      t_last = seq.len - 1;
    }
    w.dk_base = p.dk, w.dv_base = p.dv;
    if constexpr (kMask == kMaskCompressed) {
      // This CTA's chunk of the queries; an empty one still writes its (zero) sums, which the reduce adds.
      t_first = max(t_first, chunk * p.qsplit);
      t_last = min(t_last, (chunk + 1) * p.qsplit - 1);
      w.dk_base = p.cpart + chunk * p.cmp_rows * p.H * kDK;
      w.dv_base = p.cpart + nchunks * p.cmp_rows * p.H * kDK + chunk * p.cmp_rows * p.H * kDV;
      w.add = false;
    } else if (t_first > t_last) {
      return w;
    }
    w.m_begin = t_first * kG, w.m_end = t_last >= t_first ? (t_last + 1) * kG : t_first * kG;
    w.valid = true;
    return w;
  }
}

__device__ __forceinline__ void run(const AttnBwdParams& p) {
  extern __shared__ __align__(128) char smem[];
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const int warp = static_cast<int>(threadIdx.x) / 32;
  const int kvh = static_cast<int>(blockIdx.y);
  const Work w = find_work(p, kvh);
  if (!w.valid) return;
  const bool varlen = p.cu_seqlens != nullptr;

  const i64 pos_base_tok = w.seq_begin;  // packed token of position 0
  const elem* q = static_cast<const elem*>(p.q) + (varlen ? w.seq_begin * p.q_st : w.b * p.q_sb) +
                  static_cast<i64>(kvh) * kG * p.q_sh;
  const elem* dout = static_cast<const elem*>(p.dout) + (varlen ? w.seq_begin * p.do_st : w.b * p.do_sb) +
                     static_cast<i64>(kvh) * kG * p.do_sh;
  const i64 key_seq_begin = kMask == kMaskCompressed ? w.key_tok0 : w.seq_begin;
  const elem* k = static_cast<const elem*>(p.k) + (varlen ? key_seq_begin * p.k_st : w.b * p.k_sb) + kvh * p.k_sh;
  const elem* v = static_cast<const elem*>(p.v) + (varlen ? key_seq_begin * p.v_st : w.b * p.v_sb) + kvh * p.v_sh;
  const i64 lse_off = varlen ? w.seq_begin * p.lse_st : w.b * p.lse_sb;
  const i64 gate_off = varlen ? w.seq_begin * p.gate_st : w.b * p.gate_sb;

  const u32 sK = smem_addr(smem);
  const u32 sV = sK + kSmemK;
  const u32 sQ0 = sV + kSmemV;
  const u32 sDO0 = sQ0 + 2 * kSmemQ;
  RowScalars* rows0 = reinterpret_cast<RowScalars*>(smem + kSmemK + kSmemV + 2 * (kSmemQ + kSmemDO));

  load_tile_async<kThreads, kKeys, kDK>(
      sK, [&](int r) -> const void* { return w.key0 + r < w.key_end ? k + (w.key0 + r) * p.k_st : nullptr; }, k);
  load_tile_async<kThreads, kKeys, kDV>(
      sV, [&](int r) -> const void* { return w.key0 + r < w.key_end ? v + (w.key0 + r) * p.v_st : nullptr; }, v);

  // Row m of the row source: its position, or -1.
  auto position = [&](i64 m) -> i64 {
    if (m >= w.m_end) return -1;
    if constexpr (kMask == kMaskSelected) {
      return w.list[m / kG];
    } else {
      return m / kG;
    }
  };
  auto load_rows = [&](i64 m0, int stage) {
    load_tile_async<kThreads, kBM, kDK>(
        sQ0 + stage * kSmemQ,
        [&](int r) -> const void* {
          const i64 t = position(m0 + r);
          return t >= 0 ? q + t * p.q_st + ((m0 + r) % kG) * p.q_sh : nullptr;
        },
        q);
    load_tile_async<kThreads, kBM, kDV>(
        sDO0 + stage * kSmemDO,
        [&](int r) -> const void* {
          const i64 t = position(m0 + r);
          return t >= 0 ? dout + t * p.do_st + ((m0 + r) % kG) * p.do_sh : nullptr;
        },
        dout);
    for (int r = static_cast<int>(threadIdx.x); r < kBM; r += kThreads) {
      const i64 t = position(m0 + r);
      rows0[stage * kBM + r] =
          t >= 0 ? load_row(p, pos_base_tok + t, lse_off + t * p.lse_st, gate_off + t * p.gate_st,
                            static_cast<int>(t), kvh * kG + static_cast<int>((m0 + r) % kG))
                 : padding_row();
    }
  };

  const int n_tiles = static_cast<int>((w.m_end - w.m_begin + kBM - 1) / kBM);
  load_rows(w.m_begin, 0);
  cp_async_commit();

  float dk[dim_mma(kDK) / 8][4], dv[dim_mma(kDV) / 8][4];
  zero(dk);
  zero(dv);
  for (int j = 0; j < n_tiles; ++j) {
    const int stage = j & 1;
    if (j + 1 < n_tiles) load_rows(w.m_begin + static_cast<i64>(j + 1) * kBM, stage ^ 1);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    step(p, dk, dv, sK, sV, sQ0 + stage * kSmemQ, sDO0 + stage * kSmemDO, rows0 + stage * kBM, w.key0, w.key_end,
         warp, lane);
    __syncthreads();
  }
  cp_async_wait<0>();

  if (w.dk_out != nullptr) {  // a partial slot: [kL, dk] then [kL, dv], written (not added)
    store_rows_f32<kDK>(dk, [&](int i) -> float* { return w.dk_out + (warp * 16 + i) * kDK; }, p.scale, false,
                        lane);
    store_rows_f32<kDV>(dv, [&](int i) -> float* { return w.dv_out + (warp * 16 + i) * kDV; }, 1.f, false, lane);
  } else {
    auto row_of = [&](int i, float* base, int dim) -> float* {
      const i64 key = w.key0 + warp * 16 + i;
      return key < w.key_end ? base + ((w.key_tok0 + key) * p.H + kvh) * dim : nullptr;
    };
    store_rows_f32<kDK>(dk, [&](int i) { return row_of(i, w.dk_base, kDK); }, p.scale, w.add, lane);
    store_rows_f32<kDV>(dv, [&](int i) { return row_of(i, w.dv_base, kDV); }, 1.f, w.add, lane);
  }
}

}  // namespace dkv

__device__ __forceinline__ void run(const AttnBwdParams& p) {
  if constexpr (kPart == 0) {
    if constexpr (kMask == kMaskSelected) {
      dq_selected::run(p);
    } else {
      dq_dense::run(p);
    }
  } else {
    dkv::run(p);
  }
}

}  // namespace attn_bwd
}  // namespace nsa

#endif  // NSA_ATTN_BWD_CUH
