#pragma once
// The correctness gate for select (NSA.md "How a result is judged correct", Selection): a candidate's idx may differ
// from the trusted selection (the default config's) only by near-tie swaps. A tile config that sums the block scores
// in another order rounds differently, and among blocks whose scores differ by less than that rounding it may pick
// another one: still correct. So the gate compares idx/cnt bitwise first; only the rows that differ are judged, by
// templates/selection_rule.h (the rule the emitted select program applies too) against float64 block scores computed
// from the definition (q, k_cmp and the lse the kernels were given): every swapped-in block must score at least the
// best unchosen block's score minus 1e-3 of the row's top score. Anything else (a block that is not a near tie, a
// missing forced block, a bad cnt, padding or order) is a wrong result.
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "codegen/problem.h"

namespace nsajit {

// Rows whose scores the gate computes at most: each costs G * nc(t) * dk multiply-adds on the host (0.4 G at the
// paper's shapes and T = 131072), and random inputs give a handful of near ties. More differing rows than this are
// a wrong result.
constexpr int64_t kMaxScoredSelectionRows = 256;

struct SelectionVerdict {
  std::optional<std::string> wrong;  // what is wrong; nullopt when every differing row is acceptable
  int64_t differing_rows = 0;        // rows (position, KV head) whose idx or cnt differ from the trusted ones
  int64_t near_tie_swaps = 0;        // accepted: blocks chosen in place of trusted ones, summed over the rows
};

// Row r = (b * T + t) * H + kvh of idx [rows, n] / cnt [rows]: the rows where candidate and trusted differ.
std::vector<int64_t> differing_selection_rows(const int32_t* idx, const int32_t* cnt, const int32_t* ref_idx,
                                              const int32_t* ref_cnt, int64_t rows, int n);

// NSA.md's block scores (Eq. 9 and 10) of position t for one KV head, blocks 0 .. t / l', in float64: q holds the
// group's G query rows [G, dk], k_cmp the head's compressed keys [nc(t), dk] (at least those t sees), lse the G
// rows' branch-1 lse (natural log; -inf: no visible block).
std::vector<double> selection_row_scores(const Problem& p, int64_t t, const float* q, const float* k_cmp,
                                         const float* lse);

// Judges the given differing rows; `scores(r)` gives row r's reference scores (blocks 0 .. t / l').
SelectionVerdict judge_selection(const Problem& p, const std::vector<int64_t>& rows, const int32_t* idx,
                                 const int32_t* cnt, const int32_t* ref_idx, const int32_t* ref_cnt,
                                 const std::function<std::vector<double>(int64_t row)>& scores);

// "3 near-tie swaps accepted in 2 rows ..." for the trial's record; empty when nothing differed.
std::string describe_near_ties(const SelectionVerdict& v);

// The gate on the GPU's buffers (the tuner's select case, and the GPU tests' planted selections). Device pointers of
// contiguous tensors of B sequences of T tokens, in p's dtype: q [B, T, HQ, dk], k_cmp [B, Nc, H, dk], lse [B, T, HQ]
// (what both selections were computed from) and the trusted selection idx [B * T * H, n], cnt [B * T * H]. They
// must outlive the gate; the current context must be theirs. Host copies of the trusted selection and of k_cmp are
// made on first need and kept.
class SelectGate {
public:
  SelectGate(const Problem& p, const void* q, const void* k_cmp, const float* lse, const int32_t* ref_idx,
             const int32_t* ref_cnt);
  // Judges the candidate selection (device pointers, same layout) given how many idx entries differ from the
  // trusted ones (the GPU compare kernel counts them; 0 returns at once).
  SelectionVerdict judge(const int32_t* idx, const int32_t* cnt, uint64_t differing_entries);
  // Row r's float64 block scores (blocks 0 .. t / l').
  std::vector<double> row_scores(int64_t r);

private:
  Problem p_;
  const void *q_, *k_cmp_;
  const float* lse_;
  const int32_t *ref_idx_, *ref_cnt_;
  std::vector<int32_t> ref_idx_host_, ref_cnt_host_;
  std::vector<float> k_cmp_host_;
};

}  // namespace nsajit
