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

}  // namespace nsa

#endif  // NSA_ATTN_PARAMS_CUH
