#pragma once
// How much the selections of neighbouring positions overlap, as the selected-attention forward sees it, and the
// buckets that data-dependent families (slc_fwd) are tuned and dispatched by.
//
// The statistic: for each span of kOverlapSpan consecutive rows (rows of the packed [B * T] tokens, so a span may
// cross from one batch entry or sequence into the next) and each KV head, the number of distinct blocks the span's
// positions select (the valid idx entries: the first cnt, the negative ones skipped). A CTA of slc_fwd streams the
// union of its positions' lists, so this is what a CTA of the whole span would stream. A span is high-overlap when
// it selects at most kHighOverlapBlocksPerN * n distinct blocks: each block then serves on average at least
// kOverlapSpan / kHighOverlapBlocksPerN = 16 of the span's 64 positions, and merging several positions per CTA
// loads each block once for many of them. Measured at T = 65536 (fla, n = 16): span-coherent queries select
// about 23 distinct blocks per 64 positions (1.4 n), random ones about 356 (22 n); the bar, 4 n, sits between.
//
// The runtime computes the bucket of every (span, KV head) on the GPU (family slc_plan, templates/slc_plan.cuh)
// into a byte array [spans][H], and every variant of slc_fwd serves only the positions whose span is in its bucket.
// Which bucket a position lands in never changes its result, only which variant computes it.
#include <cstdint>
#include <optional>
#include <string_view>
#include <vector>

namespace nsajit {

enum class OverlapBucket : uint8_t { low = 0, high = 1 };
constexpr int kOverlapBuckets = 2;
constexpr OverlapBucket kAllOverlapBuckets[kOverlapBuckets] = {OverlapBucket::low, OverlapBucket::high};

constexpr int kOverlapSpan = 64;            // rows per span (positions per plan entry)
constexpr int kHighOverlapBlocksPerN = 4;   // high overlap: distinct blocks <= 4 n

std::string_view overlap_bucket_name(OverlapBucket b);                // "low" | "high"
std::optional<OverlapBucket> parse_overlap_bucket(std::string_view s);  // nullopt for anything else

// The most distinct blocks a high-overlap span may select, for n selected blocks per position.
constexpr int high_overlap_max_distinct(int n) { return kHighOverlapBlocksPerN * n; }
constexpr OverlapBucket overlap_bucket(int64_t distinct, int n) {
  return distinct <= high_overlap_max_distinct(n) ? OverlapBucket::high : OverlapBucket::low;
}

// Spans of a selection of `rows` positions: ceil(rows / kOverlapSpan). The plan holds spans * H bytes.
constexpr int64_t overlap_spans(int64_t rows) { return (rows + kOverlapSpan - 1) / kOverlapSpan; }

// The distinct valid blocks of span `span` and KV head `h` of idx [rows, H, n] / cnt [rows, H].
int64_t span_distinct_blocks(const int32_t* idx, const int32_t* cnt, int64_t rows, int H, int n, int64_t span,
                             int h);

// The host's plan: the bucket of every (span, KV head), [spans][H], as the GPU's slc_plan writes it.
std::vector<OverlapBucket> overlap_plan(const int32_t* idx, const int32_t* cnt, int64_t rows, int H, int n);

// The share of (span, KV head) entries of a plan in each bucket, and the bucket most entries are in (high on a
// tie, and for an empty plan).
struct PlanShares {
  double low = 0, high = 0;
  OverlapBucket majority = OverlapBucket::high;
};
PlanShares plan_shares(const std::vector<OverlapBucket>& plan);

}  // namespace nsajit
