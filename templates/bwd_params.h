// The parameter blocks of the backward kernels (attn_bwd.cuh, bwd_util.cuh), each the kernel's one by-value
// argument, defined once for both sides. The templates read them (codegen pastes this file into the generated
// source); runtime/backward.cpp fills them. Plain C++ over nsa_types.h, which g++ and NVRTC both compile.
// Strides are in elements; the last dim is contiguous; lse and dg have head stride 1, gates the head stride gate_sh.
#ifndef NSA_BWD_PARAMS_H
#define NSA_BWD_PARAMS_H
#ifndef NSAJIT_GENERATED
#include "nsa_types.h"
#endif

namespace nsa {

enum { kMaskSelected = 2 };

struct AttnBwdParams {
  const void* q;      // [B, T, HQ, dk]
  const void* k;      // window/selected: [B, T, H, dk]; compressed: [B, Nc, H, dk]
  const void* v;
  const void* dout;   // do [B, T, HQ, dv]
  const void* gate;   // the branch's gate [B, T, HQ]
  const float* lse;   // the branch's lse [B, T, HQ], natural log
  const float* delta; // [tokens, HQ] packed: g <do, o_b>
  float* dq;          // [tokens, HQ, dk] packed fp32 (dq kernels)
  float* dk;          // [key tokens, H, dk] packed fp32 (dkv kernels, added to)
  float* dv;          // [key tokens, H, dv]
  const i32* idx;     // selected: [tokens, H, n] packed
  const i32* cnt;     // selected: [tokens, H]
  // Selected dkv: the inverted index over the nblk selection blocks of the whole batch (per KV head).
  const i32* list;      // positions, per head at list_stride, block g's at list_off[g]
  const i64* list_off;  // [H, nblk]
  const i32* count;     // [H, nblk] positions that selected block g
  const i64* item_off;  // [H, nblk + 1] work items of block g: [item_off[g], item_off[g + 1])
  const i64* slot_off;  // [H, nblk] first partial slot of block g, -1 when it has one item
  const i32* blk_seq;   // [nblk] sequence of block g
  const i64* seq_blk_off;  // [N + 1] first block of sequence b
  float* partial;          // [H, slot_stride, l', dk + dv]
  const i32* cu_seqlens;   // [B + 1] when varlen, else null
  i64 q_sb, q_st, q_sh;
  i64 k_sb, k_st, k_sh;
  i64 v_sb, v_st, v_sh;
  i64 do_sb, do_st, do_sh;
  i64 lse_sb, lse_st;
  i64 gate_sb, gate_st, gate_sh;
  i64 T;  // sequence length (varlen: the longest)
  i64 nblk, list_stride, slot_stride;
  i32 H, w, l, d, n;
  i32 accumulate;  // dq: add to p.dq instead of writing it
  float scale_log2;
  float scale;
  // Compressed dkv: the queries are cut into nchunks chunks of qsplit positions, one CTA per (key tile, chunk),
  // each writing its sums to cpart [nchunks, cmp_rows, H, dk] (then [nchunks, cmp_rows, H, dv]); bwd_util's
  // chunk_reduce adds them up in chunk order.
  float* cpart;
  i64 nchunks, qsplit, cmp_rows;
};

// dk[r] += sum over chunks c of part[c][r] (and dv), in chunk order (cmp_bwd_reduce).
struct ChunkReduceParams {
  const float* part;
  float* dk;
  float* dv;
  i64 rows;  // cmp_rows * H
  i64 nchunks;
};

// delta_b = g_b <do, o_b> and dg_b = <do, o_b> for the three branches, one warp per (token, query head).
struct BwdPreParams {
  const void* dout;
  const void* o[3];   // o_cmp, o_slc, o_win; null: branch off
  const void* g[3];
  void* dg[3];        // null: not written
  float* delta[3];    // [tokens, HQ] packed
  const i32* cu_seqlens;
  i64 do_sb, do_st, do_sh;
  i64 o_sb[3], o_st[3], o_sh[3];
  i64 gate_sb, gate_st, gate_sh;
  i64 dg_sb, dg_st;
  i64 T;
  i32 HQ, dv;
  i32 zero_dg_win;  // w == 0: the window branch is off, dg_win = 0
  i32 unused;
};

// The inverted index of the selection (slc_bwd_index): prep, mark, scan and fill steps.
struct SlcIndexParams {
  const i32* idx;  // [tokens, H, n]
  const i32* cnt;  // [tokens, H]
  const i32* cu_seqlens;
  i64* seq_blk_off;   // [N + 1]
  i64* seq_mask_off;  // [N + 1] in words
  i32* blk_seq;       // [nblk]
  u32* mask;          // [H, mask_stride] bit t of block g's words: position t selected g
  i32* count;         // [H, nblk]
  i64* list_off;      // [H, nblk]
  i64* item_off;      // [H, nblk + 1]
  i64* slot_off;      // [H, nblk]
  i32* list;          // [H, list_stride]
  i64 T, N;           // longest sequence (or T), sequences (or B)
  i64 nblk, mask_stride, list_stride;
  i32 H, n, step, qchunk;
};

// Sum of the partial slots of each multi-item block into the packed dk/dv (slc_bwd_reduce).
struct SlcReduceParams {
  const float* partial;
  const i64* item_off;
  const i64* slot_off;
  const i32* blk_seq;
  const i64* seq_blk_off;
  const i32* cu_seqlens;
  float* dk;
  float* dv;
  i64 T, nblk, slot_stride;
  i32 H, unused;
};

// Mean-pool backward (pool_bwd): dx[s] += sum over the compressed blocks i covering s of dx_cmp[i] / l, fp32 packed.
struct PoolBwdParams {
  const float* dx_cmp;  // [cmp tokens, H, dim]
  float* dx;            // [tokens, H, dim]
  const i32* cu_seqlens;
  i64 T;
  i32 H, dim, l, d;
};

// fp32 packed [rows, heads, dim] to the caller's dtype and strides (bwd_cast). Packed row r is batch entry
// r / rows_per_batch, row r % rows_per_batch; rows_per_batch = 0 (varlen) puts packed row r at r * dst_st.
struct BwdCastParams {
  const float* src;
  void* dst;
  i64 dst_sb, dst_st, dst_sh;
  i64 rows_per_batch, rows;
  i32 heads, dim;
};

}  // namespace nsa

#endif  // NSA_BWD_PARAMS_H
