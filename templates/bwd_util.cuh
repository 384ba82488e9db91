// The small kernels of the backward: the per-branch preprocessing (delta and the gate gradients), the inverted index
// of the selection, the reduce of the selected dK/dV partial sums, the mean pool's backward and the final cast of
// the fp32 gradients to the caller's dtype. None uses float atomics: every output is deterministic. (The index's
// bitmask is built with atomicOr and its counts with integer atomicAdd, both order-independent.)
#ifndef NSA_BWD_UTIL_CUH
#define NSA_BWD_UTIL_CUH
#ifndef NSAJIT_GENERATED
#include "common.cuh"
#include "bwd_params.h"
namespace nsa::spec {
typedef bf16 elem;
constexpr int kDK = 128, kDV = 128, kL = 64;
}  // namespace nsa::spec
#endif

namespace nsa {
namespace bwd_util {

using namespace spec;

__device__ __forceinline__ float lo_f(u32 x) {
  elem e;
  e.bits = static_cast<unsigned short>(x & 0xffffu);
  return to_float(e);
}
__device__ __forceinline__ float hi_f(u32 x) {
  elem e;
  e.bits = static_cast<unsigned short>(x >> 16);
  return to_float(e);
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// ---- preprocessing: one warp per (token, query head), 8 warps per CTA -------------------------------------------
__device__ __forceinline__ void pre(const BwdPreParams& p) {
  const int b = static_cast<int>(blockIdx.z);
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const bool varlen = p.cu_seqlens != nullptr;
  const i64 begin = varlen ? p.cu_seqlens[b] : 0;
  const i64 len = varlen ? p.cu_seqlens[b + 1] - begin : p.T;
  const i64 item = static_cast<i64>(blockIdx.x) * 8 + threadIdx.x / 32;
  if (item >= len * p.HQ) return;
  const i64 t = item / p.HQ;
  const int h = static_cast<int>(item % p.HQ);
  const i64 tok = varlen ? begin + t : b * p.T + t;
  const uint4* dout = reinterpret_cast<const uint4*>(static_cast<const elem*>(p.dout) +
                                                     (varlen ? begin * p.do_st : b * p.do_sb) + t * p.do_st +
                                                     h * p.do_sh);
  const i64 gate_row = (varlen ? begin * p.gate_st : b * p.gate_sb) + t * p.gate_st + h * p.gate_sh;
  const i64 dg_row = (varlen ? begin * p.dg_st : b * p.dg_sb) + t * p.dg_st + h;
  // do is read once (16-byte chunks, one per lane for dv <= 256) for the three dot products.
  float dot[3] = {0.f, 0.f, 0.f};
  const uint4* o[3];
#pragma unroll
  for (int br = 0; br < 3; ++br)
    o[br] = p.o[br] == nullptr ? nullptr
                               : reinterpret_cast<const uint4*>(static_cast<const elem*>(p.o[br]) +
                                                                (varlen ? begin * p.o_st[br] : b * p.o_sb[br]) +
                                                                t * p.o_st[br] + h * p.o_sh[br]);
  for (int i = lane; i < p.dv / 8; i += 32) {
    const uint4 x = dout[i];
#pragma unroll
    for (int br = 0; br < 3; ++br) {
      if (o[br] == nullptr) continue;
      const uint4 y = o[br][i];
      dot[br] += lo_f(x.x) * lo_f(y.x) + hi_f(x.x) * hi_f(y.x) + lo_f(x.y) * lo_f(y.y) + hi_f(x.y) * hi_f(y.y) +
                 lo_f(x.z) * lo_f(y.z) + hi_f(x.z) * hi_f(y.z) + lo_f(x.w) * lo_f(y.w) + hi_f(x.w) * hi_f(y.w);
    }
  }
#pragma unroll
  for (int br = 0; br < 3; ++br) {
    const float d = warp_sum(dot[br]);
    if (lane != 0) continue;
    if (p.dg[br] != nullptr) static_cast<elem*>(p.dg[br])[dg_row] = from_float<elem>(d);
    if (p.delta[br] != nullptr) {
      const float g = to_float(static_cast<const elem*>(p.g[br])[gate_row]);
      p.delta[br][tok * p.HQ + h] = g * d;
    }
  }
}

// ---- the inverted index of the selection --------------------------------------------------------------------------
// Exclusive scan of one value per thread over a 1024-thread CTA; returns the prefix, *total gets the sum.
__device__ __forceinline__ i64 block_scan(i64 x, i64* total) {
  __shared__ i64 warp_sums[32];
  const int lane = static_cast<int>(threadIdx.x) % 32, warp = static_cast<int>(threadIdx.x) / 32;
  i64 inc = x;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const i64 y = __shfl_up_sync(0xffffffffu, inc, o);
    if (lane >= o) inc += y;
  }
  if (lane == 31) warp_sums[warp] = inc;
  __syncthreads();
  if (warp == 0) {
    const int nw = static_cast<int>(blockDim.x) / 32;
    i64 s = lane < nw ? warp_sums[lane] : 0;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const i64 y = __shfl_up_sync(0xffffffffu, s, o);
      if (lane >= o) s += y;
    }
    warp_sums[lane] = s;  // inclusive
  }
  __syncthreads();
  const i64 before = warp == 0 ? 0 : warp_sums[warp - 1];
  *total = warp_sums[blockDim.x / 32 - 1];
  __syncthreads();
  return before + inc - x;
}

__device__ __forceinline__ void seq_of(const SlcIndexParams& p, int b, i64* begin, i64* len) {
  if (p.cu_seqlens != nullptr) {
    *begin = p.cu_seqlens[b];
    *len = p.cu_seqlens[b + 1] - *begin;
  } else {
    *begin = b * p.T;
    *len = p.T;
  }
}

// step 0, one CTA of 1024 threads: per-sequence first block and first mask word.
__device__ __forceinline__ void index_prep(const SlcIndexParams& p) {
  i64 blk_base = 0, word_base = 0;
  for (i64 c0 = 0; c0 < p.N; c0 += blockDim.x) {
    const i64 b = c0 + threadIdx.x;
    i64 nb = 0, words = 0;
    if (b < p.N) {
      i64 begin, len;
      seq_of(p, static_cast<int>(b), &begin, &len);
      nb = (len + kL - 1) / kL;
      words = nb * ((len + 31) / 32);
    }
    i64 tb, tw;
    const i64 pb = block_scan(nb, &tb);
    const i64 pw = block_scan(words, &tw);
    if (b < p.N) {
      p.seq_blk_off[b] = blk_base + pb;
      p.seq_mask_off[b] = word_base + pw;
    }
    blk_base += tb, word_base += tw;
  }
  if (threadIdx.x == 0) {
    p.seq_blk_off[p.N] = blk_base;
    p.seq_mask_off[p.N] = word_base;
  }
}

// step 1, one thread per (position, KV head), grid z = sequence: mark the bitmask, count, and name each block's
// sequence.
__device__ __forceinline__ void index_mark(const SlcIndexParams& p) {
  const int b = static_cast<int>(blockIdx.z);
  i64 begin, len;
  seq_of(p, b, &begin, &len);
  const i64 item = static_cast<i64>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (item >= len * p.H) return;
  const i64 t = item / p.H;
  const int h = static_cast<int>(item % p.H);
  const i64 blk0 = p.seq_blk_off[b];
  if (h == 0 && t % kL == 0) p.blk_seq[blk0 + t / kL] = b;
  const i64 words = (len + 31) / 32;
  const i64 tok = begin + t;
  const int c = p.cnt[tok * p.H + h];
  const i32* idx = p.idx + (tok * p.H + h) * p.n;
  u32* mask = p.mask + h * p.mask_stride + p.seq_mask_off[b];
  for (int s = 0; s < c && s < p.n; ++s) {
    const i64 j = idx[s];
    if (j < 0 || j > t / kL) continue;  // not a causal block of this sequence: carries no gradient
    atomicOr(mask + j * words + t / 32, 1u << (t % 32));
    atomicAdd(p.count + h * p.nblk + blk0 + j, 1);
  }
}

// step 2, one CTA of 1024 threads per KV head: list offsets, work items and partial slots of every block.
__device__ __forceinline__ void index_scan(const SlcIndexParams& p) {
  const int h = static_cast<int>(blockIdx.y);
  i64 list_base = 0, item_base = 0, slot_base = 0;
  for (i64 c0 = 0; c0 < p.nblk; c0 += blockDim.x) {
    const i64 g = c0 + threadIdx.x;
    const i64 c = g < p.nblk ? p.count[h * p.nblk + g] : 0;
    const i64 items = (c + p.qchunk - 1) / p.qchunk;
    const i64 slots = items > 1 ? items : 0;
    i64 tl, ti, ts;
    const i64 pl = block_scan(c, &tl);
    const i64 pi = block_scan(items, &ti);
    const i64 ps = block_scan(slots, &ts);
    if (g < p.nblk) {
      p.list_off[h * p.nblk + g] = list_base + pl;
      p.item_off[h * (p.nblk + 1) + g] = item_base + pi;
      p.slot_off[h * p.nblk + g] = slots > 0 ? slot_base + ps : -1;
    }
    list_base += tl, item_base += ti, slot_base += ts;
  }
  if (threadIdx.x == 0) p.item_off[h * (p.nblk + 1) + p.nblk] = item_base;
}

// step 3, one warp per (block, KV head): the block's selecting positions, ascending.
__device__ __forceinline__ void index_fill(const SlcIndexParams& p) {
  const i64 g = blockIdx.x;
  // nblk (the grid) is an upper bound when the host had no offsets (varlen given by max_seqlen): blocks past the
  // batch's own have no sequence.
  if (g >= p.seq_blk_off[p.N]) return;
  const int h = static_cast<int>(blockIdx.y);
  const int lane = static_cast<int>(threadIdx.x);
  const int b = p.blk_seq[g];
  i64 begin, len;
  seq_of(p, b, &begin, &len);
  const i64 j = g - p.seq_blk_off[b];
  const i64 words = (len + 31) / 32;
  const u32* mask = p.mask + h * p.mask_stride + p.seq_mask_off[b] + j * words;
  i32* out = p.list + h * p.list_stride + p.list_off[h * p.nblk + g];
  i64 written = 0;
  for (i64 w0 = j * kL / 32; w0 < words; w0 += 32) {
    const i64 w = w0 + lane;
    u32 bits = w < words ? mask[w] : 0u;
    const int c = __popc(bits);
    int inc = c;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const int y = __shfl_up_sync(0xffffffffu, inc, o);
      if (lane >= o) inc += y;
    }
    i64 pos = written + inc - c;
    while (bits != 0u) {
      const int bit = __ffs(bits) - 1;
      bits &= bits - 1;
      out[pos++] = static_cast<i32>(w * 32 + bit);
    }
    written += __shfl_sync(0xffffffffu, inc, 31);
  }
}

__device__ __forceinline__ void slc_index(const SlcIndexParams& p) {
  switch (p.step) {
    case 0: index_prep(p); break;
    case 1: index_mark(p); break;
    case 2: index_scan(p); break;
    default: index_fill(p); break;
  }
}

// ---- reduce of the selected dK/dV partials: one CTA per (block, KV head), fixed item order ------------------------
__device__ __forceinline__ void slc_reduce(const SlcReduceParams& p) {
  const i64 g = blockIdx.x;
  const int h = static_cast<int>(blockIdx.y);
  const i64 slot = p.slot_off[h * p.nblk + g];
  if (slot < 0) return;
  const i64 items = p.item_off[h * (p.nblk + 1) + g + 1] - p.item_off[h * (p.nblk + 1) + g];
  const int b = p.blk_seq[g];
  const i64 begin = p.cu_seqlens ? p.cu_seqlens[b] : b * p.T;
  const i64 len = p.cu_seqlens ? p.cu_seqlens[b + 1] - begin : p.T;
  const i64 j = g - p.seq_blk_off[b];
  constexpr int kRow = kDK + kDV;
  const float* part = p.partial + (h * p.slot_stride + slot) * static_cast<i64>(kL) * kRow;
  for (int e = static_cast<int>(threadIdx.x); e < kL * kRow; e += blockDim.x) {
    const bool is_k = e < kL * kDK;
    const int r = is_k ? e / kDK : (e - kL * kDK) / kDV;
    const int col = is_k ? e % kDK : (e - kL * kDK) % kDV;
    const i64 key = j * kL + r;
    if (key >= len) continue;
    float s = 0.f;
    for (i64 i = 0; i < items; ++i) s += part[i * kL * kRow + e];
    float* dst = is_k ? p.dk + ((begin + key) * p.H + h) * kDK + col : p.dv + ((begin + key) * p.H + h) * kDV + col;
    *dst += s;
  }
}

// ---- the compressed dkv's chunks, added up in chunk order: one thread per element ---------------------------------
__device__ __forceinline__ void chunk_reduce(const ChunkReduceParams& p) {
  const i64 e = static_cast<i64>(blockIdx.x) * blockDim.x + threadIdx.x;
  const i64 nk = p.rows * kDK, nv = p.rows * kDV;
  if (e >= nk + nv) return;
  const bool is_k = e < nk;
  const i64 i = is_k ? e : e - nk;
  const float* part = is_k ? p.part + i : p.part + p.nchunks * nk + i;
  const i64 stride = is_k ? nk : nv;
  float s = 0.f;
  for (i64 c = 0; c < p.nchunks; ++c) s += part[c * stride];
  float* dst = is_k ? p.dk + i : p.dv + i;
  *dst += s;
}

// ---- mean pool backward: one thread per 4 floats of one (token, KV head) row --------------------------------------
__device__ __forceinline__ void pool_bwd(const PoolBwdParams& p) {
  const int b = static_cast<int>(blockIdx.z);
  i64 begin = b * p.T, len = p.T, cmp_begin = 0;
  if (p.cu_seqlens != nullptr) {
    begin = p.cu_seqlens[b];
    len = p.cu_seqlens[b + 1] - begin;
    for (int s = 0; s < b; ++s) {
      const i64 ls = p.cu_seqlens[s + 1] - p.cu_seqlens[s];
      cmp_begin += ls >= p.l ? (ls - p.l) / p.d + 1 : 0;
    }
  } else {
    cmp_begin = b * (p.T >= p.l ? (p.T - p.l) / p.d + 1 : 0);
  }
  const int chunks = p.dim / 4;
  const i64 item = static_cast<i64>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (item >= len * p.H * chunks) return;
  const int c = static_cast<int>(item % chunks);
  const int h = static_cast<int>((item / chunks) % p.H);
  const i64 t = item / (static_cast<i64>(chunks) * p.H);
  const i64 nc = len >= p.l ? (len - p.l) / p.d + 1 : 0;
  // Blocks i with i*d <= t < i*d + l.
  const i64 i_hi = min(nc - 1, t / p.d);
  const i64 i_lo = t - p.l + 1 <= 0 ? 0 : (t - p.l + 1 + p.d - 1) / p.d;
  float4 s = make_float4(0.f, 0.f, 0.f, 0.f);
  for (i64 i = i_lo; i <= i_hi; ++i) {
    const float4 x = *reinterpret_cast<const float4*>(p.dx_cmp + ((cmp_begin + i) * p.H + h) * p.dim + c * 4);
    s.x += x.x, s.y += x.y, s.z += x.z, s.w += x.w;
  }
  const float inv = 1.f / static_cast<float>(p.l);
  float4* dst = reinterpret_cast<float4*>(p.dx + ((begin + t) * p.H + h) * p.dim + c * 4);
  float4 o = *dst;
  o.x += s.x * inv, o.y += s.y * inv, o.z += s.z * inv, o.w += s.w * inv;
  *dst = o;
}

// ---- fp32 packed -> the caller's dtype and strides: one thread per 8 elements -------------------------------------
__device__ __forceinline__ void cast(const BwdCastParams& p) {
  const int chunks = p.dim / 8;
  const i64 item = static_cast<i64>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (item >= p.rows * p.heads * chunks) return;
  const int c = static_cast<int>(item % chunks);
  const int h = static_cast<int>((item / chunks) % p.heads);
  const i64 r = item / (static_cast<i64>(chunks) * p.heads);
  const float* src = p.src + (r * p.heads + h) * p.dim + c * 8;
  const float4 a = *reinterpret_cast<const float4*>(src);
  const float4 bb = *reinterpret_cast<const float4*>(src + 4);
  const i64 row_off = p.rows_per_batch > 0 ? (r / p.rows_per_batch) * p.dst_sb + (r % p.rows_per_batch) * p.dst_st
                                           : r * p.dst_st;
  uint4 o;
  o.x = pack2<elem>(a.x, a.y);
  o.y = pack2<elem>(a.z, a.w);
  o.z = pack2<elem>(bb.x, bb.y);
  o.w = pack2<elem>(bb.z, bb.w);
  *reinterpret_cast<uint4*>(static_cast<elem*>(p.dst) + row_off + h * p.dst_sh + c * 8) = o;
}

}  // namespace bwd_util
}  // namespace nsa

#endif  // NSA_BWD_UTIL_CUH
