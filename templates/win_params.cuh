// The parameter block of the window-attention kernels (win_fwd and its simple reference win_fwd_ref).
#ifndef NSA_WIN_PARAMS_CUH
#define NSA_WIN_PARAMS_CUH
#ifndef NSAJIT_GENERATED
#include "common.cuh"
#endif

namespace nsa {

// Mirrored byte for byte by runtime/win_fwd_api.cpp. Strides are in elements; the last dim is contiguous.
struct WinFwdParams {
  const void* q;  // [B, T, HQ, dk]
  const void* k;  // [B, T, H, dk]
  const void* v;  // [B, T, H, dv]
  void* o;        // [B, T, HQ, dv]
  float* lse;     // [B, T, HQ], may be null
  i64 q_sb, q_st, q_sh;
  i64 k_sb, k_st, k_sh;
  i64 v_sb, v_st, v_sh;
  i64 o_sb, o_st, o_sh;
  i64 lse_sb, lse_st;    // lse head stride is 1
  const i32* cu_seqlens;  // [B + 1] when varlen (then the batch strides are unused), else null
  i64 T;                  // sequence length (varlen: the longest one)
  i32 H;                  // KV heads
  i32 w;                  // window; 0 gives o = 0 and lse = -inf
  float scale_log2;       // softmax scale * log2(e)
};

}  // namespace nsa

#endif  // NSA_WIN_PARAMS_CUH
