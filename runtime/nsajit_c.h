/* nsajit C ABI: the NSA forward, its branches and the backward on device pointers, for callers in any language
 * (libnsajit.so exports these functions and nothing else).
 * Every call returns NSAJIT_OK (0), NSAJIT_ERROR (1: a CUDA or compile failure) or NSAJIT_USAGE (2: a bad
 * argument); nsajit_last_error() then gives the message for the calling thread (empty after a call that
 * succeeded). Tensors are [B, T, heads, dim] with element strides; the last dim is contiguous; strides are never
 * negative; any B, T and head strides that are multiples of 8 elements work (views of a fused projection need no
 * copy).
 *
 * Context: a call runs in the calling thread's current CUDA context when it belongs to the device q lives on.
 * Otherwise (no context current, as on a thread that has done no CUDA work, such as PyTorch's autograd thread, or
 * another device's) it makes the primary context of q's device current (found with cuPointerGetAttribute); a
 * thread that had no context keeps it current afterwards, a thread that had another device's gets its own back.
 * `stream` must belong to q's device.
 *
 * Memory: given a workspace, nsajit_forward and nsajit_backward neither allocate nor synchronize, so they can be
 * captured into a CUDA graph (after one call outside the capture has compiled and loaded their kernels). Without
 * one they allocate and free their own scratch and synchronize `stream`, and are refused while it is capturing.
 *
 * Every argument is checked before anything is launched: a call that returns NSAJIT_USAGE has written nothing
 * (nsajit_forward included: no branch has run). Shapes: T >= 1 (T = 0, an empty batch, is refused with "bad
 * T = 0": skip the call). Without varlen, cu_seqlens_host must be null, num_seqs and max_seqlen 0, and
 * B <= 65535. Varlen (cu_seqlens given: B = 1, T = the total tokens, num_seqs in 1 .. 65535, the grid's z
 * dimension) takes one of:
 *   - cu_seqlens_host: num_seqs + 1 offsets from 0, non-decreasing, ending at T, checked (max_seqlen 0);
 *   - max_seqlen >= the longest sequence, with cu_seqlens_host null, as flash-attn takes it: nothing is copied
 *     back from the device, so nothing of the offsets can be checked: the device offsets must start at 0, be
 *     non-decreasing and end at T, and no sequence may be longer than max_seqlen (rows past it are not written).
 *     Scratch is then sized by upper bounds from (T, num_seqs, max_seqlen), and a given k_cmp/v_cmp holds the
 *     sequences' compressed blocks one after another (nsajit_varlen_cmp_rows bounds their number).
 * Empty sequences are allowed anywhere, the last one included. T < l (no compressed block) is valid: every
 * query's compressed key set is empty (output 0, lse = -inf). */
#ifndef NSAJIT_C_H
#define NSAJIT_C_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum { NSAJIT_OK = 0, NSAJIT_ERROR = 1, NSAJIT_USAGE = 2 };
/* Bumped whenever a struct below or a function's meaning changes. */
#define NSAJIT_ABI_VERSION 4
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
  int64_t gate_stride_b, gate_stride_t;     /* the gates' head stride is gate_stride_h, below */
  nsajit_tensor o;
  nsajit_tensor o_cmp, o_slc, o_win; /* optional outputs (the backward needs those of every enabled branch) */
  float *lse_cmp, *lse_slc, *lse_win;
  int64_t lse_stride_b, lse_stride_t;
  int32_t *idx, *cnt;              /* optional: [B, T, H, n] and [B, T, H], contiguous */
  const int32_t* cu_seqlens;       /* varlen: device offsets [num_seqs + 1] */
  const int32_t* cu_seqlens_host;  /* the same values on the host, or null with max_seqlen */
  int64_t num_seqs;
  void* workspace; /* optional scratch of nsajit_forward_workspace_bytes() bytes, 256-byte aligned */
  size_t workspace_bytes;
  int64_t gate_stride_h; /* the gates' head stride; 0 means 1 (a layer projecting the 3 gates together: 3) */
  int64_t max_seqlen;    /* varlen without cu_seqlens_host: the longest sequence (or more); else 0 */
} nsajit_forward_tensors;

/* The scratch nsajit_forward needs at most for this problem, in *bytes (0 on error); it is enough for any varlen
 * layout of the problem's T tokens too. */
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
  int64_t gate_stride_h; /* 0 means 1 */
  int64_t max_seqlen;    /* varlen without cu_seqlens_host */
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
  int64_t max_seqlen; /* varlen without cu_seqlens_host */
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
  int64_t gate_stride_h; /* 0 means 1 */
  int64_t max_seqlen;    /* varlen without cu_seqlens_host */
} nsajit_slc_args;
int nsajit_slc_fwd(const nsajit_problem* p, const nsajit_slc_args* a, void* stream);

/* Mean pool x [B, T, H, dim] -> y [B, Nc, H, dim]; dim is dk or dv. Varlen needs the host offsets here. */
int nsajit_mean_pool(const nsajit_problem* p, nsajit_tensor x, nsajit_tensor y, int dim, const int32_t* cu_seqlens,
                     const int32_t* cu_seqlens_host, int64_t num_seqs, void* stream);

/* The backward (NSA.md "Backward"), with the selection held fixed as the forward chose it; deterministic (no float
 * atomics: the same inputs give bitwise identical gradients). The C mirror of runtime/backward.h BackwardTensors:
 * the forward's inputs and what it saved (o_b and lse_b of every enabled branch, idx/cnt when g_slc is given), dL/do,
 * and the gradients, overwritten in full. dq is required; dk/dv when an enabled branch reads k/v (the window without
 * k_win, the selected branch without k_slc, the mean pool); dk_slc/dv_slc, dk_win/dv_win, dk_cmp/dv_cmp when
 * k_slc, k_win, k_cmp are given (for varlen without host offsets dk_cmp/dv_cmp hold nsajit_varlen_cmp_rows rows,
 * those past the batch's own blocks written with zeros). dg_b = <do, o_b> [B, T, HQ] (head stride 1) is optional;
 * dg_win is 0 when w = 0. */
typedef struct nsajit_backward_tensors {
  nsajit_tensor q, k, v;
  nsajit_tensor k_slc, v_slc, k_win, v_win; /* optional: null data means k, v */
  nsajit_tensor k_cmp, v_cmp;               /* optional: null data means the mean pool of k, v */
  const void *g_cmp, *g_slc, *g_win;        /* the forward's gates; null: branch off */
  int64_t gate_stride_b, gate_stride_t, gate_stride_h; /* gate_stride_h 0 means 1 */
  nsajit_tensor o_cmp, o_slc, o_win;        /* saved by the forward */
  const float *lse_cmp, *lse_slc, *lse_win; /* saved by the forward */
  int64_t lse_stride_b, lse_stride_t;
  const int32_t *idx, *cnt;                 /* saved by the forward */
  nsajit_tensor dout;                       /* dL/do [B, T, HQ, dv] */
  nsajit_tensor dq, dk, dv, dk_slc, dv_slc, dk_win, dv_win, dk_cmp, dv_cmp;
  void *dg_cmp, *dg_slc, *dg_win;
  int64_t dg_stride_b, dg_stride_t;
  const int32_t* cu_seqlens;      /* varlen, as for the forward */
  const int32_t* cu_seqlens_host; /* or null with max_seqlen */
  int64_t num_seqs, max_seqlen;
  void* workspace; /* optional scratch of nsajit_backward_workspace_size() bytes, 256-byte aligned */
  size_t workspace_bytes;
} nsajit_backward_tensors;

/* The scratch nsajit_backward needs for a call with these tensors, in *bytes (0 on error): which branches are on,
 * which k/v are separate and the varlen layout count; the data pointers are not read. */
int nsajit_backward_workspace_size(const nsajit_problem* p, const nsajit_backward_tensors* t, size_t* bytes);
int nsajit_backward(const nsajit_problem* p, const nsajit_backward_tensors* t, void* stream);

/* Varlen given by num_seqs and max_seqlen: the upper bound of the batch's compressed blocks (the sum over the
 * sequences of max(0, floor((len - l) / d) + 1)) that sizes the scratch and dk_cmp/dv_cmp, in *rows. */
int nsajit_varlen_cmp_rows(const nsajit_problem* p, int64_t num_seqs, int64_t max_seqlen, int64_t* rows);

/* Decode over a paged KV cache (NSA.md "Decode"; the C mirror of runtime/decode_api.h, which says what every field
 * means). Pools [num_pages, page_size, H, dk|dv], contiguous; page_table [B, page_table_stride] int32 on the device
 * (page_table_host: an optional host copy, checked in full when given, as seqlens_host is); seqlens [B] int32: the
 * tokens of each sequence in the cache, the Tq query tokens included; the compressed cache k_cmp / v_cmp
 * [B, max_cmp, H, dk|dv]. The problem's T is the cache's capacity per sequence (page_table_stride * page_size) and B
 * the batch. Neither call (nsajit_decode given its workspace where its config is split-KV) allocates, synchronizes
 * or reads device memory on the host: both can be captured into a CUDA graph (after one call outside the capture)
 * and replayed as the sequences grow. */
typedef struct nsajit_decode_tensors {
  nsajit_tensor q;                           /* [B, Tq, HQ, dk]: the last Tq tokens of each sequence */
  const void *g_cmp, *g_slc, *g_win;         /* [B, Tq, HQ]; null disables the branch */
  int64_t gate_stride_b, gate_stride_t, gate_stride_h; /* gate_stride_h 0 means 1 */
  nsajit_tensor o;                           /* [B, Tq, HQ, dv] */
  const void *k_pool, *v_pool;
  int64_t num_pages;
  const void *k_pool_slc, *v_pool_slc;       /* optional separate per-branch pools (same page table) */
  int64_t num_pages_slc;
  const void *k_pool_win, *v_pool_win;
  int64_t num_pages_win;
  const int32_t* page_table;
  int64_t page_table_stride, page_size;
  const int32_t* page_table_host;            /* optional */
  const int32_t* seqlens;
  const int32_t* seqlens_host;               /* optional */
  nsajit_tensor k_cmp, v_cmp;
  int64_t max_cmp;
  int32_t *idx, *cnt;                        /* optional [B, Tq, H, n] / [B, Tq, H]: the chosen blocks */
  void* workspace;                           /* split-KV scratch of nsajit_decode_workspace_size() bytes, 256-byte */
  size_t workspace_bytes;                    /* aligned; null: a split-KV call allocates, synchronizes, and is
                                                refused while the stream is capturing (ABI 4) */
} nsajit_decode_tensors;
int nsajit_decode(const nsajit_problem* p, int Tq, const nsajit_decode_tensors* t, void* stream);
/* The workspace nsajit_decode needs for Tq query tokens per sequence with the config it resolves (tuned or
 * default); 0 when the config runs without one. */
int nsajit_decode_workspace_size(const nsajit_problem* p, int Tq, size_t* bytes);

/* Appends Tn tokens to every sequence at positions seqlens[b] .. seqlens[b] + Tn (seqlens: the lengths before; not
 * updated here) and, when k_cmp is given, writes the compressed entries they complete (mean pool). */
typedef struct nsajit_decode_append_tensors {
  nsajit_tensor k_new, v_new;                /* [B, Tn, H, dk|dv] */
  void *k_pool, *v_pool;
  int64_t num_pages;
  const int32_t* page_table;
  int64_t page_table_stride, page_size;
  const int32_t* page_table_host;            /* optional */
  const int32_t* seqlens;
  const int32_t* seqlens_host;               /* optional */
  nsajit_tensor k_cmp, v_cmp;                /* optional (both or neither) */
  int64_t max_cmp;
} nsajit_decode_append_tensors;
int nsajit_decode_append(const nsajit_problem* p, int Tn, const nsajit_decode_append_tensors* t, void* stream);

/* The library's version ("0.1.0") and NSAJIT_ABI_VERSION as it was built. */
const char* nsajit_version(void);
int nsajit_abi_version(void);
/* The NVRTC the kernels are compiled with: its file (loading it if needed: an NVRTC already in the process, such as
 * the one `import torch` loads from its CUDA wheel, else libnvrtc.so.13 / .12 through this library's RUNPATH and the
 * system's search, else $CUDA_HOME/lib64; $NSAJIT_NVRTC names one explicitly). NULL when none can be loaded, with
 * nsajit_last_error() saying where it looked. */
const char* nsajit_nvrtc_library(void);
/* For bindings that mirror the structs (ctypes): sizeof(struct_name), and offsetof(struct_name, field) when field
 * is non-null; -1 for a name this library does not know. */
int64_t nsajit_struct_layout(const char* struct_name, const char* field);

const char* nsajit_last_error(void);

#ifdef __cplusplus
}
#endif

#endif /* NSAJIT_C_H */
