// The parameter block of the top-n block selection (select.cuh): the kernel's one by-value argument, defined once
// for both sides. The template reads it (codegen pastes this file into the generated source before the template);
// runtime/select_api.cpp fills it. Plain C++ over nsa_types.h, which g++ and NVRTC both compile. Strides are in
// elements; the last dim is contiguous.
#ifndef NSA_SELECT_PARAMS_H
#define NSA_SELECT_PARAMS_H
#ifndef NSAJIT_GENERATED
#include "nsa_types.h"
#endif

namespace nsa {

struct SelectParams {
  const void* q;      // [B, T, HQ, dk]
  const void* k_cmp;  // [B, Nc, H, dk]; varlen: each sequence's Nc(len) blocks one after another
  const float* lse;   // [B, T, HQ] branch 1's lse (natural log, -inf where no block is visible); head stride 1
  i32* idx;           // [B, T, H, n] contiguous; varlen: rows of the packed tokens
  i32* cnt;           // [B, T, H] contiguous
  i64 q_sb, q_st, q_sh;
  i64 k_sb, k_st, k_sh;
  i64 lse_sb, lse_st;
  const i32* cu_seqlens;  // [B + 1] when varlen (then the batch strides are unused), else null
  i64 T;                  // sequence length (varlen: the longest one)
  i32 H;                  // KV heads
  i32 ns_row;             // floats per position of the score array (>= ceil(T / l'), a multiple of 4)
  float scale_log2;       // softmax scale * log2(e)
};

}  // namespace nsa

#endif  // NSA_SELECT_PARAMS_H
