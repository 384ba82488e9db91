// The parameter block of the selected-block attention forward (slc_fwd.cuh): the kernel's one by-value argument,
// defined once for both sides. The template reads it (codegen pastes this file into the generated source before the
// template); runtime/slc_fwd_api.cpp fills it. Plain C++ over nsa_types.h, which g++ and NVRTC both compile.
// Strides are in elements; the last dim is contiguous.
#ifndef NSA_SLC_FWD_PARAMS_H
#define NSA_SLC_FWD_PARAMS_H
#ifndef NSAJIT_GENERATED
#include "nsa_types.h"
#endif

namespace nsa {

struct SlcFwdParams {
  const void* q;     // [B, T, HQ, dk]
  const void* k;     // [B, T, H, dk]
  const void* v;     // [B, T, H, dv]
  void* o;           // [B, T, HQ, dv] o_slc; null: not written
  float* lse;        // [B, T, HQ] natural log; null: not written
  const i32* idx;    // [B, T, H, n] contiguous: selected block indices, ascending, -1 padded
  const i32* cnt;    // [B, T, H] contiguous: valid entries of idx
  const void* gate;  // [B, T, HQ] with strides gate_sb, gate_st, gate_sh; null: no gated output
  void* out;         // [B, T, HQ, dv]: out = gate * o_slc, or out += gate * o_slc; used iff gate is non-null
  i64 q_sb, q_st, q_sh;
  i64 k_sb, k_st, k_sh;
  i64 v_sb, v_st, v_sh;
  i64 o_sb, o_st, o_sh;
  i64 out_sb, out_st, out_sh;
  i64 lse_sb, lse_st;     // lse head stride is 1
  i64 gate_sb, gate_st, gate_sh;
  const i32* cu_seqlens;  // [B + 1] when varlen (then the batch strides are unused), else null
  i64 T;                  // sequence length (varlen: the longest one)
  i32 H;                  // KV heads
  i32 n;                  // entries per idx row
  i32 accumulate;         // nonzero: out += gate * o_slc
  float scale_log2;       // softmax scale * log2(e)
  const u8* plan;         // [ceil(rows / plan_span), H] overlap buckets, or null: every position is this variant's
  i32 plan_span;          // positions per plan entry (> 0 when plan is given)
  i32 plan_bucket;        // the bucket this variant serves
};

}  // namespace nsa

#endif  // NSA_SLC_FWD_PARAMS_H
