/* nsajit C ABI: the NSA forward and its branches on device pointers, for callers in any language.
 * Every call returns NSAJIT_OK (0), NSAJIT_ERROR (1: a CUDA or compile failure) or NSAJIT_USAGE (2: a bad
 * argument); nsajit_last_error() then gives the message for the calling thread (empty after a call that
 * succeeded). The caller's CUDA context must be current. Tensors are [B, T, heads, dim] with element strides; the
 * last dim is contiguous; strides are never negative.
 *
 * Every argument is checked before anything is launched: a call that returns NSAJIT_USAGE has written nothing
 * (nsajit_forward included: no branch has run). Shapes: T >= 1 (T = 0, an empty batch, is refused with "bad
 * T = 0": skip the call); varlen (cu_seqlens given): B = 1, num_seqs in 1 .. 65535 (the grid's z dimension),
 * cu_seqlens_host holds num_seqs + 1 offsets from 0, non-decreasing, ending at T; empty sequences are allowed
 * anywhere, the last one included. Without varlen, cu_seqlens_host must be null and num_seqs 0, and B <= 65535.
 * T < l (no compressed block) is valid: every query's compressed key set is empty (output 0, lse = -inf). */
#ifndef NSAJIT_C_H
#define NSAJIT_C_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum { NSAJIT_OK = 0, NSAJIT_ERROR = 1, NSAJIT_USAGE = 2 };
enum { NSAJIT_BF16 = 0, NSAJIT_FP16 = 1 };

typedef struct nsajit_problem {
  int dtype;          /* NSAJIT_BF16 or NSAJIT_FP16 */
  int64_t B, T;       /* varlen: B = 1 and T = total tokens */
  int HQ, H, dk, dv;  /* query heads, KV heads (HQ % H == 0), head dims */
  int l, d, lsel;     /* compression block length and stride, selection block length */
  int n, w;           /* selected blocks per query (>= 3), window (0 disables) */
  double scale;       /* 0: 1/sqrt(dk) */
} nsajit_problem;

typedef struct nsajit_tensor {
  const void* data;
  int64_t stride_b, stride_t, stride_h;
} nsajit_tensor;

/* Fills *p with a preset ("paper" or "fla", NSA.md); T = 65536, B = 1. */
int nsajit_preset(const char* name, nsajit_problem* p);

typedef struct nsajit_forward_tensors {
  nsajit_tensor q, k, v;
  nsajit_tensor k_slc, v_slc, k_win, v_win; /* optional: null data means k, v */
  nsajit_tensor k_cmp, v_cmp;               /* optional: null data means the mean pool of k, v */
  const void *g_cmp, *g_slc, *g_win;        /* [B, T, HQ]; null disables the branch */
  int64_t gate_stride_b, gate_stride_t;
  nsajit_tensor o;
  nsajit_tensor o_cmp, o_slc, o_win; /* optional outputs */
  float *lse_cmp, *lse_slc, *lse_win;
  int64_t lse_stride_b, lse_stride_t;
  int32_t *idx, *cnt;              /* optional: [B, T, H, n] and [B, T, H], contiguous */
  const int32_t* cu_seqlens;       /* varlen: device offsets [num_seqs + 1] */
  const int32_t* cu_seqlens_host;  /* the same values on the host */
  int64_t num_seqs;
  void* workspace; /* optional scratch of nsajit_forward_workspace_bytes() bytes, 256-byte aligned */
  size_t workspace_bytes;
} nsajit_forward_tensors;

/* The scratch nsajit_forward needs at most for this problem, in *bytes (0 on error). */
int nsajit_forward_workspace_size(const nsajit_problem* p, size_t* bytes);
/* The same, returning the size; 0 means an error (then nsajit_last_error() says which). Prefer the above. */
size_t nsajit_forward_workspace_bytes(const nsajit_problem* p);
int nsajit_forward(const nsajit_problem* p, const nsajit_forward_tensors* t, void* stream);

/* One branch at a time (the fields mean what they mean in the C++ headers runtime/<branch>_api.h). */
typedef struct nsajit_attn_args {
  nsajit_tensor q, k, v, o;
  float* lse;
  int64_t lse_stride_b, lse_stride_t;
  const void* gate;
  int64_t gate_stride_b, gate_stride_t;
  nsajit_tensor out;
  int accumulate;
  const int32_t* cu_seqlens;
  const int32_t* cu_seqlens_host;
  int64_t num_seqs;
} nsajit_attn_args;
int nsajit_win_fwd(const nsajit_problem* p, const nsajit_attn_args* a, void* stream);
int nsajit_cmp_fwd(const nsajit_problem* p, const nsajit_attn_args* a, void* stream); /* k, v: k_cmp, v_cmp */

typedef struct nsajit_select_args {
  nsajit_tensor q, k_cmp;
  const float* lse_cmp;
  int64_t lse_stride_b, lse_stride_t;
  int32_t *idx, *cnt;
  const int32_t* cu_seqlens;
  const int32_t* cu_seqlens_host;
  int64_t num_seqs;
} nsajit_select_args;
int nsajit_select(const nsajit_problem* p, const nsajit_select_args* a, void* stream);

typedef struct nsajit_slc_args {
  nsajit_tensor q, k, v, o_slc;
  float* lse;
  int64_t lse_stride_b, lse_stride_t;
  const int32_t *idx, *cnt;
  const void* gate;
  int64_t gate_stride_b, gate_stride_t;
  nsajit_tensor out;
  int accumulate;
  const int32_t* cu_seqlens;
  const int32_t* cu_seqlens_host;
  int64_t num_seqs;
} nsajit_slc_args;
int nsajit_slc_fwd(const nsajit_problem* p, const nsajit_slc_args* a, void* stream);

/* Mean pool x [B, T, H, dim] -> y [B, Nc, H, dim]; dim is dk or dv. */
int nsajit_mean_pool(const nsajit_problem* p, nsajit_tensor x, nsajit_tensor y, int dim, const int32_t* cu_seqlens,
                     const int32_t* cu_seqlens_host, int64_t num_seqs, void* stream);

const char* nsajit_last_error(void);

#ifdef __cplusplus
}
#endif

#endif /* NSAJIT_C_H */
