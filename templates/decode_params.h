// The parameter blocks of NSA decode (decode.cuh) and of the KV-cache append (decode_append.cuh): each kernel's one
// by-value argument, defined once for both sides (runtime/decode_api.cpp fills them). Plain C++ over nsa_types.h.
//
// The KV cache is paged: a pool [num_pages, page_size, H, dim] (contiguous: page stride page_size * H * dim, token
// stride H * dim, head stride dim), and per sequence b a row of page_table [B, pt_stride] mapping logical page
// s / page_size to a physical page. The compressed cache is [B, max_cmp, H, dim] with strides; entry i of a
// sequence holds the mean pool of its tokens [i*d, i*d + l) once token i*d + l - 1 is in the cache.
#ifndef NSA_DECODE_PARAMS_H
#define NSA_DECODE_PARAMS_H
#ifndef NSAJIT_GENERATED
#include "nsa_types.h"
#endif

namespace nsa {

// The most selected blocks per query decode supports (n): the kernel's and the workspace's bound.
constexpr int kDecodeMaxSelected = 32;

struct DecodeParams {
  const void* q;  // [B, Tq, HQ, dk]
  i64 q_sb, q_st, q_sh;
  const void* g_cmp;  // [B, Tq, HQ] gates; a null gate disables its branch
  const void* g_slc;
  const void* g_win;
  i64 g_sb, g_st, g_sh;
  void* o;  // [B, Tq, HQ, dv]
  i64 o_sb, o_st, o_sh;
  const void* k_slc;  // the pools the selected and the window branch read (the same pool unless the caller keeps
  const void* v_slc;  // separate per-branch caches)
  const void* k_win;
  const void* v_win;
  const i32* page_table;  // [B, pt_stride]
  i64 pt_stride;
  const i32* seqlens;  // [B]: tokens in the cache per sequence, the Tq queries' own included
  const void* k_cmp;   // [B, max_cmp, H, dk]
  const void* v_cmp;   // [B, max_cmp, H, dv]
  i64 kc_sb, kc_st, kc_sh;
  i64 vc_sb, vc_st, vc_sh;
  i32* idx;  // optional [B, Tq, H, n] (the chosen blocks, ascending, -1 padded) and cnt [B, Tq, H]
  i32* cnt;
  float scale_log2;  // softmax scale * log2(e)
  i32 Tq, H, page_size, l, d, lsel, n, w;
  // Split-KV (the config's SPLIT > 1): the step runs as five launches of the same kernel, `phase` 1 .. 5 (0: the
  // one-launch path). Row r = (b * Tq + qi) * H + h of the workspace belongs to one (sequence, query token, KV head):
  //   ws_part [rows, 3 branches, split, G * dv] unnormalized partial outputs (fp32), ws_ml [rows, 3, split, G, 2]
  //   their base-2 running max and sum, ws_pc [rows, pc_stride] the compressed entries' selection probabilities,
  //   ws_sel [rows, kMaxN + 1] the chosen block count then the blocks.
  i32 phase, split;
  float* ws_part;
  float* ws_ml;
  float* ws_pc;
  i32* ws_sel;
  i64 pc_stride;
};

struct DecodeAppendParams {
  const void* k_new;  // [B, Tn, H, dk]: the tokens appended to each sequence
  const void* v_new;  // [B, Tn, H, dv]
  i64 kn_sb, kn_st, kn_sh;
  i64 vn_sb, vn_st, vn_sh;
  void* k_pool;  // [num_pages, page_size, H, dk]
  void* v_pool;  // [num_pages, page_size, H, dv]
  const i32* page_table;  // [B, pt_stride]
  i64 pt_stride;
  const i32* seqlens;  // [B]: the lengths before this append; token s of sequence b goes to position seqlens[b] + s
  void* k_cmp;         // optional [B, max_cmp, H, dk] / [.., dv]: the compressed entries completed by the new
  void* v_cmp;         // tokens are written (mean pool); null: no pooling
  i64 kc_sb, kc_st, kc_sh;
  i64 vc_sb, vc_st, vc_sh;
  i32 Tn, H, page_size, l, d;
  i32 unused;
};

}  // namespace nsa

#endif  // NSA_DECODE_PARAMS_H
