// Device helpers over the dense-attention parameter block (attn_params.h): compressed-block counts and where a
// sequence starts.
#ifndef NSA_ATTN_PARAMS_CUH
#define NSA_ATTN_PARAMS_CUH
#ifndef NSAJIT_GENERATED
#include "common.cuh"
#include "attn_params.h"
#endif

namespace nsa {

// Compressed blocks of a sequence of `len` tokens, and those query t sees.
__device__ __forceinline__ i64 num_cmp_blocks(i64 len, int l, int d) { return len >= l ? (len - l) / d + 1 : 0; }
__device__ __forceinline__ i64 visible_cmp_blocks(i64 t, int l, int d) { return t + 1 >= l ? (t + 1 - l) / d + 1 : 0; }

// Where sequence b starts, in tokens and (for compressed keys) in compressed blocks, and its length.
struct SeqSpan {
  i64 begin = 0, len = 0, cmp_begin = 0;
};
__device__ __forceinline__ SeqSpan sequence_span(const AttnFwdParams& p, int b) {
  SeqSpan s;
  if (p.cu_seqlens == nullptr) {
    s.len = p.T;
    return s;
  }
  s.begin = p.cu_seqlens[b];
  s.len = p.cu_seqlens[b + 1] - s.begin;
  for (int i = 0; i < b; ++i) s.cmp_begin += num_cmp_blocks(p.cu_seqlens[i + 1] - p.cu_seqlens[i], p.l, p.d);
  return s;
}

// The keys the rows [m0, m0 + kBM) of one KV head's flattened (position, head-in-group) index m = t * kG + g see
// together, for a sequence of len tokens: window, positions max(0, t - w + 1) .. t; compressed, blocks 0 .. nc(t) - 1.
// [begin, end) in n_tiles tiles of kBN keys; t_lo, t_hi the first and last position of the rows.
struct KeyRange {
  i64 t_lo, t_hi, begin, end;
  int n_tiles;
};
template <int kMask, int kG, int kBM, int kBN>
__device__ __forceinline__ KeyRange key_range(i64 m0, i64 len, int w, int l, int d) {
  KeyRange r;
  r.t_lo = m0 / kG;
  r.t_hi = min(len - 1, (m0 + kBM - 1) / kG);
  r.begin = kMask == kMaskWindow ? max(static_cast<i64>(0), r.t_lo - w + 1) : 0;
  r.end = kMask == kMaskWindow ? r.t_hi + 1 : visible_cmp_blocks(r.t_hi, l, d);
  r.n_tiles = r.end > r.begin ? static_cast<int>((r.end - r.begin + kBN - 1) / kBN) : 0;
  return r;
}

}  // namespace nsa

#endif  // NSA_ATTN_PARAMS_CUH
