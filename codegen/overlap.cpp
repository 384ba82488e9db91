#include "codegen/overlap.h"

#include <algorithm>

namespace nsajit {

std::string_view overlap_bucket_name(OverlapBucket b) { return b == OverlapBucket::low ? "low" : "high"; }

std::optional<OverlapBucket> parse_overlap_bucket(std::string_view s) {
  if (s == "low") return OverlapBucket::low;
  if (s == "high") return OverlapBucket::high;
  return std::nullopt;
}

int64_t span_distinct_blocks(const int32_t* idx, const int32_t* cnt, int64_t rows, int H, int n, int64_t span,
                             int h) {
  std::vector<int32_t> blocks;
  const int64_t first = span * kOverlapSpan, last = std::min(rows, first + kOverlapSpan);
  for (int64_t r = first; r < last; ++r) {
    const int32_t* row = idx + (r * H + h) * n;
    const int valid = std::clamp(cnt[r * H + h], 0, n);
    for (int i = 0; i < valid; ++i)
      if (row[i] >= 0) blocks.push_back(row[i]);
  }
  std::sort(blocks.begin(), blocks.end());
  return std::unique(blocks.begin(), blocks.end()) - blocks.begin();
}

std::vector<OverlapBucket> overlap_plan(const int32_t* idx, const int32_t* cnt, int64_t rows, int H, int n) {
  std::vector<OverlapBucket> plan(static_cast<size_t>(overlap_spans(rows) * H));
  for (int64_t s = 0; s < overlap_spans(rows); ++s)
    for (int h = 0; h < H; ++h)
      plan[static_cast<size_t>(s * H + h)] = overlap_bucket(span_distinct_blocks(idx, cnt, rows, H, n, s, h), n);
  return plan;
}

PlanShares plan_shares(const std::vector<OverlapBucket>& plan) {
  PlanShares s;
  if (plan.empty()) return s;
  const auto high = std::count(plan.begin(), plan.end(), OverlapBucket::high);
  s.high = static_cast<double>(high) / static_cast<double>(plan.size());
  s.low = 1.0 - s.high;
  s.majority = s.high >= s.low ? OverlapBucket::high : OverlapBucket::low;
  return s;
}

}  // namespace nsajit
