// NSA.md's rule for judging one selection row (one query position and KV head) against reference block scores:
// the structure of idx/cnt, the forced blocks, and near ties. Plain host C++17 with no nsajit header, because it
// is used twice: pasted into the standalone program `nsajit emit --family select` writes, and by the tuner's
// correctness gate for select (tuner/select_gate.cpp). The CPU reference's ref::selection_matches states the same
// rule for whole selections.
#ifndef NSA_SELECTION_RULE_H
#define NSA_SELECTION_RULE_H
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

namespace nsa_rule {

struct RowVerdict {
  std::string error;  // empty: the row is acceptable
  int swaps = 0;      // chosen blocks the reference set does not hold: accepted near-tie swaps when error is empty
};

// Row t of a selection: `row` holds n entries, the first `cnt` valid. `score` holds the reference scores of the
// causal blocks 0 .. jt (jt = t / lsel; any positive scale: the tolerance is relative to their largest). `ref`, when
// not null, is the reference's chosen row (ref_cnt valid entries; a trusted kernel's output); when null the
// reference set is the forced blocks plus the highest scores, equal scores to the lower index (NSA.md). The scores
// are read only where the row's set differs from the reference's (so with ref = row, score may be null: a check of
// the structure alone).
//
// The row must hold cnt = min(n, jt + 1) strictly ascending causal blocks, then -1 padding, and the forced blocks
// 0, jt - 1, jt. Where its set differs from the reference's, every swap must be a near tie: each chosen non-forced
// block scores at least (the highest score of an unchosen block) - rel_tol * (the largest score of the row).
inline RowVerdict judge_row(int64_t t, const int32_t* row, int32_t cnt, const int32_t* ref, int32_t ref_cnt,
                            const double* score, int lsel, int n, double rel_tol = 1e-3) {
  RowVerdict v;
  char buf[256];
  const int64_t jt = t / lsel;
  const int64_t want = jt + 1 < n ? jt + 1 : n;
  if (cnt != want) {
    std::snprintf(buf, sizeof buf, "cnt %d, expected min(n, t / l' + 1) = %lld", cnt, static_cast<long long>(want));
    v.error = buf;
    return v;
  }
  if (ref != nullptr && ref_cnt != cnt) {
    std::snprintf(buf, sizeof buf, "cnt %d differs from the reference's %d", cnt, ref_cnt);
    v.error = buf;
    return v;
  }
  std::vector<char> got(static_cast<size_t>(jt + 1), 0), in_ref(static_cast<size_t>(jt + 1), 0);
  for (int m = 0; m < n; ++m) {
    if (m >= cnt) {
      if (row[m] != -1) {
        std::snprintf(buf, sizeof buf, "idx[%d] = %d past cnt = %d, expected -1", m, row[m], cnt);
        v.error = buf;
        return v;
      }
      continue;
    }
    if (row[m] < 0 || row[m] > jt) {
      std::snprintf(buf, sizeof buf, "idx[%d] = %d is not a causal block (0 .. %lld)", m, row[m],
                    static_cast<long long>(jt));
      v.error = buf;
      return v;
    }
    if (m > 0 && row[m] <= row[m - 1]) {
      std::snprintf(buf, sizeof buf, "idx is not strictly ascending at entry %d (%d after %d)", m, row[m], row[m - 1]);
      v.error = buf;
      return v;
    }
    got[static_cast<size_t>(row[m])] = 1;
  }
  for (int64_t j : {int64_t{0}, jt - 1, jt})
    if (j >= 0 && !got[static_cast<size_t>(j)]) {
      std::snprintf(buf, sizeof buf, "forced block %lld is missing", static_cast<long long>(j));
      v.error = buf;
      return v;
    }
  if (ref != nullptr) {
    for (int m = 0; m < ref_cnt; ++m)
      if (ref[m] >= 0 && ref[m] <= jt) in_ref[static_cast<size_t>(ref[m])] = 1;
  } else {
    int64_t taken = 0;
    for (int64_t j : {int64_t{0}, jt - 1, jt})
      if (j >= 0 && !in_ref[static_cast<size_t>(j)]) in_ref[static_cast<size_t>(j)] = 1, ++taken;
    for (; taken < cnt; ++taken) {
      int64_t best = -1;
      for (int64_t j = 0; j <= jt; ++j)
        if (!in_ref[static_cast<size_t>(j)] && (best < 0 || score[j] > score[best])) best = j;
      if (best < 0) break;
      in_ref[static_cast<size_t>(best)] = 1;
    }
  }
  for (int64_t j = 0; j <= jt; ++j) v.swaps += got[static_cast<size_t>(j)] && !in_ref[static_cast<size_t>(j)];
  if (v.swaps == 0) return v;  // the reference's own set (its scores are not read)
  double top = 0, min_chosen = 0, max_unchosen = 0;
  int64_t j_min = -1, j_max = -1;
  for (int64_t j = 0; j <= jt; ++j) {
    const size_t u = static_cast<size_t>(j);
    top = score[j] > top ? score[j] : top;
    const bool forced = j == 0 || j == jt || j == jt - 1;
    if (got[u] && !forced && (j_min < 0 || score[j] < min_chosen)) min_chosen = score[j], j_min = j;
    if (!got[u] && (j_max < 0 || score[j] > max_unchosen)) max_unchosen = score[j], j_max = j;
  }
  if (j_min >= 0 && j_max >= 0 && max_unchosen - min_chosen > rel_tol * top) {
    std::snprintf(buf, sizeof buf,
                  "chose block %lld (score %.10g) over block %lld (score %.10g): not a near tie (difference > %g of "
                  "the top score %.10g)",
                  static_cast<long long>(j_min), min_chosen, static_cast<long long>(j_max), max_unchosen, rel_tol, top);
    v.error = buf;
  }
  return v;
}

}  // namespace nsa_rule

#endif  // NSA_SELECTION_RULE_H
