// The parameter block of the dense-attention kernels, the window branch (NSA.md branch 3) and the compressed
// branch (branch 1), fast (attn_fwd.cuh) and simple (attn_fwd_ref.cuh): the kernels' one by-value argument,
// defined once for both sides. The templates read it (codegen pastes this file into the generated source);
// runtime/attn_fwd_api.cpp fills it. Plain C++ over nsa_types.h, which g++ and NVRTC both compile.
// Strides are in elements; the last dim is contiguous.
#ifndef NSA_ATTN_PARAMS_H
#define NSA_ATTN_PARAMS_H
#ifndef NSAJIT_GENERATED
#include "nsa_types.h"
#endif

namespace nsa {

// Which keys query t sees.
enum MaskKind {
  kMaskWindow = 0,      // k[max(0, t - w + 1) .. t]
  kMaskCompressed = 1,  // k_cmp[0 .. nc(t)), nc(t) = max(0, floor((t + 1 - l) / d) + 1)
};

struct AttnFwdParams {
  const void* q;  // [B, T, HQ, dk]
  const void* k;  // window: [B, T, H, dk]; compressed: [B, Nc, H, dk]
  const void* v;  // window: [B, T, H, dv]; compressed: [B, Nc, H, dv]
  void* o;        // [B, T, HQ, dv], may be null when `out` is given
  float* lse;     // [B, T, HQ], may be null
  const void* gate;  // [B, T, HQ] with strides gate_sb, gate_st, gate_sh; may be null: then `out` is not written
  void* out;         // [B, T, HQ, dv]: out = gate * o, or out += gate * o when accumulate
  i64 q_sb, q_st, q_sh;
  i64 k_sb, k_st, k_sh;
  i64 v_sb, v_st, v_sh;
  i64 o_sb, o_st, o_sh;
  i64 lse_sb, lse_st;  // lse head stride is 1
  i64 gate_sb, gate_st, gate_sh;
  i64 out_sb, out_st, out_sh;
  const i32* cu_seqlens;  // [B + 1] when varlen (then the batch strides are unused), else null
  i64 T;                  // sequence length (varlen: the longest one)
  i32 H;                  // KV heads
  i32 w;                  // window; 0 gives o = 0 and lse = -inf
  i32 l, d;               // compression block length and stride
  i32 accumulate;         // 1: out += gate * o
  float scale_log2;       // softmax scale * log2(e)
};

}  // namespace nsa

#endif  // NSA_ATTN_PARAMS_H
