// CPU float64 reference of Native Sparse Attention, exactly as defined in NSA.md.
//
// Everything here works on ONE sequence (no batch dim); varlen input is split by forward_varlen. Tensors are
// plain contiguous row-major float64 arrays in the NSA.md layouts without the batch dim:
//   q [T,HQ,dk]   k [T,H,dk]   v [T,H,dv]   k_cmp [Nc,H,dk]   v_cmp [Nc,H,dv]   gates [T,HQ]
//   o [T,HQ,dv]   lse [T,HQ]   idx [T,H,n] int32   cnt [T,H] int32   score [T,H,NS] with NS = ceil(T/lsel)
// Query head h reads KV head h / G with G = HQ / H. Softmax is float64 with max subtraction; lse is the
// natural log; an empty key set gives o = 0 and lse = -inf. Slow (O(T^2)), meant for small shapes.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace nsajit::ref {

struct Config {
  int64_t T = 0;                      // sequence length (0 allowed: everything is empty)
  int HQ = 0, H = 0, dk = 0, dv = 0;  // query heads, KV heads, head dims of q/k and of v
  int l = 0, d = 0, lsel = 0;         // compression block length / stride, selection block length l'
  int n = 0;                          // selected blocks per query including the forced ones (>= 3)
  int w = 0;                          // sliding window, 0 disables the branch
  double scale = 0.0;                 // softmax scale, finite and > 0 (usually 1/sqrt(dk))

  int G() const { return HQ / H; }
  int64_t num_cmp() const;  // Nc = num_cmp_blocks(T, l, d)
  int64_t num_sel() const;  // NS = ceil(T / lsel)
  // Throws std::invalid_argument naming the bad field: T < 0; HQ, H, dk, dv, l, d, lsel <= 0; HQ % H != 0;
  // l % d != 0; lsel % d != 0; n < 3 (the three forced blocks must fit); w < 0; scale not finite or <= 0.
  void validate() const;
};

// floor(a / b) for b > 0 (rounds towards -inf, unlike C++ '/').
int64_t floor_div(int64_t a, int64_t b);
// Nc = max(0, floor((T - l) / d) + 1).
int64_t num_cmp_blocks(int64_t T, int l, int d);
// nc(t) = max(0, floor((t + 1 - l) / d) + 1): compressed blocks whose every token is <= t.
int64_t visible_cmp_blocks(int64_t t, int l, int d);
// NS = ceil(T / lsel).
int64_t num_sel_blocks(int64_t T, int lsel);
// |[i*d, i*d+l) ∩ [j*lsel, (j+1)*lsel)| / d: weight of compressed block i in selection block j.
double overlap_weight(int64_t i, int64_t j, int l, int d, int lsel);

// Mean-pool phi: x [T,H,dim] -> x_cmp [Nc,H,dim], block i = mean of tokens [i*d, i*d + l).
void mean_pool(const Config& cfg, const double* x, int dim, double* x_cmp);

// Branch 3: keys max(0, t-w+1) .. t. w == 0: o = 0, lse = -inf. lse may be nullptr.
void window_attention(const Config& cfg, const double* q, const double* k, const double* v, double* o,
                      double* lse);

// Branch 1: keys k_cmp[0 .. nc(t)). lse may be nullptr.
void compressed_attention(const Config& cfg, const double* q, const double* k_cmp, const double* v_cmp,
                          double* o, double* lse);

struct Selection {
  int64_t T = 0;
  int H = 0, n = 0;
  int64_t num_sel = 0;         // NS = ceil(T / lsel)
  std::vector<int32_t> idx;    // [T,H,n] ascending, padded with -1
  std::vector<int32_t> cnt;    // [T,H] = min(n, floor(t/lsel) + 1)
  std::vector<double> score;   // [T,H,NS] group-summed importance (Eq. 10) before forcing; 0 for j > t/lsel
};

// Branch-2 block selection. lse_cmp [T,HQ] (branch 1's lse) is optional: when given, p_cmp is computed as
// exp(scale*q.k_cmp - lse_cmp), otherwise by a softmax over the visible compressed blocks.
Selection select_blocks(const Config& cfg, const double* q, const double* k_cmp,
                        const double* lse_cmp = nullptr);

// NSA.md's near-tie rule: true iff for every (t, KV head) cnt matches, the first cnt entries of idx are
// strictly ascending causal block indices followed by -1 padding, the forced blocks are present, and any
// block swapped against the reference is a near tie: every chosen non-forced block scores at least
// (max score of the unchosen candidates) - rel_tol * (largest score for that t and KV head). On failure the
// first reason is written to *why when why is not null.
bool selection_matches(const Selection& ref, const int32_t* idx, const int32_t* cnt, const Config& cfg,
                       double rel_tol = 1e-3, std::string* why = nullptr);

// Branch 2 over the given blocks idx [T,H,n] / cnt [T,H] (any order, no duplicates, each in [0, NS)),
// keys s <= t only. Throws std::invalid_argument on a bad index or count. lse may be nullptr.
void selected_attention(const Config& cfg, const double* q, const double* k, const double* v,
                        const int32_t* idx, const int32_t* cnt, double* o, double* lse);

struct Inputs {
  const double* q = nullptr;  // [T,HQ,dk], required
  const double* k = nullptr;  // [T,H,dk], required
  const double* v = nullptr;  // [T,H,dv], required
  const double* k_slc = nullptr, *v_slc = nullptr;  // default k / v
  const double* k_win = nullptr, *v_win = nullptr;  // default k / v
  const double* k_cmp = nullptr, *v_cmp = nullptr;  // [Nc,H,dk|dv]; default mean_pool(k) / mean_pool(v)
  const double* g_cmp = nullptr, *g_slc = nullptr, *g_win = nullptr;  // [T,HQ]; null disables the branch
  // A fixed branch-2 selection idx [T,H,n] / cnt [T,H] (both or neither), e.g. the GPU's, or the forward's own
  // to hold the selection fixed while differentiating. When given, forward() attends over these blocks instead
  // of the ones select_blocks chooses (Outputs.sel.idx/cnt are copies of them; sel.score is still computed);
  // nothing else changes. Null: select_blocks(q, k_cmp, lse_cmp) chooses.
  const int32_t* idx = nullptr;
  const int32_t* cnt = nullptr;
};

struct Outputs {
  std::vector<double> o;                          // [T,HQ,dv] gated sum of the enabled branches
  std::vector<double> o_cmp, o_slc, o_win;        // [T,HQ,dv] every branch, computed even when disabled
  std::vector<double> lse_cmp, lse_slc, lse_win;  // [T,HQ]
  std::vector<double> k_cmp, v_cmp;               // [Nc,H,dk|dv] the compressed tensors used
  Selection sel;                                  // chosen by select_blocks(q, k_cmp, lse_cmp), or Inputs.idx/cnt
};

// o = g_cmp*o_cmp + g_slc*o_slc + g_win*o_win over the non-null gates (w == 0 also disables the window).
Outputs forward(const Config& cfg, const Inputs& in);

// Throws std::invalid_argument unless cu_seqlens is non-empty, starts at 0, is non-decreasing and ends at
// total_T.
void validate_cu_seqlens(const std::vector<int32_t>& cu_seqlens, int64_t total_T);
// Offsets of each sequence's compressed blocks in a packed k_cmp/v_cmp: [N+1], cumulative Nc(T_i).
std::vector<int64_t> cmp_cu_seqlens(const std::vector<int32_t>& cu_seqlens, int l, int d);

// Varlen: cfg.T is the packed total (must equal cu_seqlens.back()). Tensors of `packed` are [total_T, ...]
// (k_cmp/v_cmp, if given, are [total_Nc, ...] at the offsets of cmp_cu_seqlens); every sequence is handled
// on its own, result i is forward() of sequence i. A fixed selection Inputs.idx/cnt is packed [total_T,H,n] /
// [total_T,H] like the other per-token tensors.
std::vector<Outputs> forward_varlen(const Config& cfg, const std::vector<int32_t>& cu_seqlens,
                                    const Inputs& packed);
// Concatenates per-sequence outputs along T into the packed layout (k_cmp/v_cmp at cmp_cu_seqlens
// offsets; sel.score is concatenated flat because NS differs per sequence, sel.num_sel is set to 0).
Outputs concat_outputs(const std::vector<Outputs>& parts);

// ---------------------------------------------------------------------------------------------------------
// Decode (NSA.md "Decode"), reference/decode.cpp: one query token at position t of one sequence, computed on its
// own (no O(T^2) pass over the sequence): decoding token t must give row t of forward().

struct DecodeRow {
  std::vector<double> o;               // [HQ, dv] the gated sum of the enabled branches
  std::vector<double> o_cmp, o_slc, o_win;  // [HQ, dv] each branch
  std::vector<int32_t> idx;            // [H, n] the reference's own selection, ascending, -1 padded
  std::vector<int32_t> cnt;            // [H]
  std::vector<double> score;           // [H, t / lsel + 1] group-summed importance (Eq. 10)
};

struct DecodeInputs {
  const double* q = nullptr;  // [HQ, dk]: the query token's row
  const double* k = nullptr;  // [len, H, dk] the sequence's tokens (len > t; tokens past t are never read)
  const double* v = nullptr;  // [len, H, dv]
  const double* k_slc = nullptr, *v_slc = nullptr;  // default k / v
  const double* k_win = nullptr, *v_win = nullptr;  // default k / v
  const double* k_cmp = nullptr;  // [>= nc(t), H, dk] the compressed cache (required)
  const double* v_cmp = nullptr;  // [>= nc(t), H, dv]
  const double* g_cmp = nullptr, *g_slc = nullptr, *g_win = nullptr;  // [HQ]; null disables the branch
  // A fixed selection idx [H, n] / cnt [H] to attend over (e.g. the GPU's), else the reference's own.
  const int32_t* idx = nullptr;
  const int32_t* cnt = nullptr;
};

// cfg.T is not read (the sequence may be any length > t); the other fields as for forward().
DecodeRow decode_row(const Config& cfg, int64_t t, const DecodeInputs& in);

// ---------------------------------------------------------------------------------------------------------
// Backward (NSA.md "Backward"), reference/backward.cpp. The selection is held fixed: no gradient flows through
// idx/cnt, and k_cmp/v_cmp get their gradient through branch 1 only.

// One branch's attention backward, the standard one. For each (t, h) with a non-empty key set:
//   P = exp(scale * q K^T - lse), delta = <do_b, o>, dS = P * (do_b V^T - delta),
//   dq = scale * dS K,  dK += scale * dS^T q,  dV += P^T do_b,
// with o [T,HQ,dv] / lse [T,HQ] the branch's forward output (before gating) and log-sum-exp, and
// do_b [T,HQ,dv] = g_b * do. A row with an empty key set contributes nothing (its lse is not read); a row
// with keys whose lse is not finite throws std::invalid_argument. Every element of dq [T,HQ,dk] and of
// dk/dv (the shapes of the k/v given) is written: these overwrite, they do not accumulate.
void window_attention_backward(const Config& cfg, const double* q, const double* k, const double* v,
                               const double* o, const double* lse, const double* do_b, double* dq, double* dk,
                               double* dv);
// dk_cmp [Nc,H,dk], dv_cmp [Nc,H,dv].
void compressed_attention_backward(const Config& cfg, const double* q, const double* k_cmp, const double* v_cmp,
                                   const double* o, const double* lse, const double* do_b, double* dq,
                                   double* dk_cmp, double* dv_cmp);
// Over the given blocks idx [T,H,n] / cnt [T,H], keys s <= t only; same validation as selected_attention.
void selected_attention_backward(const Config& cfg, const double* q, const double* k, const double* v,
                                 const int32_t* idx, const int32_t* cnt, const double* o, const double* lse,
                                 const double* do_b, double* dq, double* dk, double* dv);
// Mean-pool backward: dx[s] = sum over the compressed blocks i that cover token s of dx_cmp[i] / l (zero for
// a token in no block). dx_cmp [Nc,H,dim] in, dx [T,H,dim] overwritten.
void mean_pool_backward(const Config& cfg, const double* dx_cmp, int dim, double* dx);
// The gate split of one branch: do_b[t,h] = g[t,h] * do[t,h] and dg[t,h] = <do[t,h], o_b[t,h]> with o_b the
// branch output before gating. do_b [T,HQ,dv] and dg [T,HQ] are written; either may be nullptr.
void gate_backward(const Config& cfg, const double* do_, const double* g, const double* o_b, double* do_b,
                   double* dg);

struct Grads {
  std::vector<double> dq;              // [T,HQ,dk]
  // [T,H,dk|dv] gradient w.r.t. Inputs.k / Inputs.v: the branches that default to them (selected when no
  // k_slc/v_slc, window when no k_win/v_win) and, when k_cmp/v_cmp is not given, the mean pool folded back.
  std::vector<double> dk, dv;
  // [T,H,dk|dv] w.r.t. Inputs.k_slc, v_slc, k_win, v_win; each one empty when that input is null (its
  // gradient is then in dk/dv). Given pointers are separate tensors even if they alias Inputs.k/v.
  std::vector<double> dk_slc, dv_slc, dk_win, dv_win;
  // [Nc,H,dk|dv] w.r.t. the compressed tensors used (Outputs.k_cmp/v_cmp): the caller's k_cmp/v_cmp when
  // given, otherwise the mean pool's output (already folded into dk/dv; reported for the GPU tests).
  std::vector<double> dk_cmp, dv_cmp;
  // [T,HQ] dg_b = <do, o_b>; empty when the gate is null. w == 0 gives dg_win = 0 (the forward ignores g_win).
  std::vector<double> dg_cmp, dg_slc, dg_win;
};

// Gradients of L with dL/do = do_ [T,HQ,dv], for `in` and fwd = forward(cfg, in) (the selection is
// fwd.sel's; pass Inputs.idx/cnt to forward() to hold another one, e.g. the GPU's). A null gate (and w == 0
// for the window) disables its branch: zero gradients from it. Throws std::invalid_argument when fwd does not
// have the shapes of cfg, or when in.idx/cnt is given and fwd.sel differs from it.
Grads backward(const Config& cfg, const Inputs& in, const Outputs& fwd, const double* do_);

// Varlen: packed tensors as in forward_varlen, fwd = forward_varlen(cfg, cu_seqlens, packed), do_ packed
// [total_T,HQ,dv]. Result i is backward() of sequence i.
std::vector<Grads> backward_varlen(const Config& cfg, const std::vector<int32_t>& cu_seqlens, const Inputs& packed,
                                   const std::vector<Outputs>& fwd, const double* do_);
// Concatenates per-sequence gradients along T into the packed layout (dk_cmp/dv_cmp at cmp_cu_seqlens offsets).
Grads concat_grads(const std::vector<Grads>& parts);

}  // namespace nsajit::ref
