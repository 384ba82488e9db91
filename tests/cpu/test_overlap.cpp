// The selection-overlap statistic and buckets (codegen/overlap.h) on synthetic selections: every position the same
// blocks, every position its own, half and half, the 4 n boundary exactly, and what does not count (entries past
// cnt, negative entries, repeats). tests/gpu/test_overlap.cpp checks the GPU's plan against the same host plan.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "codegen/overlap.h"

using nsajit::OverlapBucket;

namespace {

// A selection of `rows` positions, H heads, n entries per row, all padded: blocks(t, h) fills each row.
struct Selection {
  int64_t rows;
  int H, n;
  std::vector<int32_t> idx, cnt;
  Selection(int64_t rows_, int H_, int n_)
      : rows(rows_), H(H_), n(n_), idx(static_cast<size_t>(rows_ * H_ * n_), -1), cnt(static_cast<size_t>(rows_ * H_), 0) {}
  void set(int64_t t, int h, std::vector<int32_t> blocks) {
    std::sort(blocks.begin(), blocks.end());
    for (size_t m = 0; m < blocks.size(); ++m) idx[static_cast<size_t>((t * H + h) * n) + m] = blocks[m];
    cnt[static_cast<size_t>(t * H + h)] = static_cast<int32_t>(blocks.size());
  }
  int64_t distinct(int64_t span, int h) const {
    return nsajit::span_distinct_blocks(idx.data(), cnt.data(), rows, H, n, span, h);
  }
  std::vector<OverlapBucket> plan() const { return nsajit::overlap_plan(idx.data(), cnt.data(), rows, H, n); }
};

std::vector<int32_t> range(int32_t first, int count) {
  std::vector<int32_t> v(static_cast<size_t>(count));
  for (int i = 0; i < count; ++i) v[static_cast<size_t>(i)] = first + i;
  return v;
}

}  // namespace

TEST_CASE("overlap: bucket names and the 4 n bar") {
  CHECK(nsajit::overlap_bucket_name(OverlapBucket::low) == "low");
  CHECK(nsajit::overlap_bucket_name(OverlapBucket::high) == "high");
  CHECK(nsajit::parse_overlap_bucket("low") == OverlapBucket::low);
  CHECK(nsajit::parse_overlap_bucket("high") == OverlapBucket::high);
  CHECK_FALSE(nsajit::parse_overlap_bucket(""));
  CHECK_FALSE(nsajit::parse_overlap_bucket("High"));
  for (int n : {8, 16, 32}) {
    CHECK(nsajit::high_overlap_max_distinct(n) == 4 * n);
    CHECK(nsajit::overlap_bucket(0, n) == OverlapBucket::high);
    CHECK(nsajit::overlap_bucket(4 * n, n) == OverlapBucket::high);
    CHECK(nsajit::overlap_bucket(4 * n + 1, n) == OverlapBucket::low);
  }
  CHECK(nsajit::overlap_spans(0) == 0);
  CHECK(nsajit::overlap_spans(1) == 1);
  CHECK(nsajit::overlap_spans(64) == 1);
  CHECK(nsajit::overlap_spans(65) == 2);
}

TEST_CASE("overlap: every position the same blocks, every position its own, half and half") {
  const int n = 16;
  Selection s(4 * 64, 1, n);
  for (int64_t t = 0; t < s.rows; ++t) {
    const int64_t span = t / 64, i = t % 64;
    if (span == 0) s.set(t, 0, range(100, n));                                     // all the same
    if (span == 1) s.set(t, 0, range(static_cast<int32_t>(1000 + i * n), n));       // all different
    if (span == 2) s.set(t, 0, i < 32 ? range(100, n) : range(static_cast<int32_t>(2000 + i * n), n));  // half
    if (span == 3) s.set(t, 0, range(static_cast<int32_t>(3000 + (i / 8) * n), n));  // 8 groups of 8
  }
  CHECK(s.distinct(0, 0) == n);
  CHECK(s.distinct(1, 0) == 64 * n);
  CHECK(s.distinct(2, 0) == n + 32 * n);
  CHECK(s.distinct(3, 0) == 8 * n);
  const std::vector<OverlapBucket> plan = s.plan();
  CHECK(plan == std::vector<OverlapBucket>{OverlapBucket::high, OverlapBucket::low, OverlapBucket::low,
                                           OverlapBucket::low});
  const nsajit::PlanShares shares = nsajit::plan_shares(plan);
  CHECK(shares.high == doctest::Approx(0.25));
  CHECK(shares.low == doctest::Approx(0.75));
  CHECK(shares.majority == OverlapBucket::low);
  // Half the spans each way: a tie goes to high; an empty plan is high.
  CHECK(nsajit::plan_shares({OverlapBucket::low, OverlapBucket::high}).majority == OverlapBucket::high);
  CHECK(nsajit::plan_shares({}).majority == OverlapBucket::high);
}

TEST_CASE("overlap: exactly 4 n distinct blocks is high, 4 n + 1 low, per KV head; what does not count") {
  const int n = 8, H = 2;
  Selection s(250, H, n);  // 4 spans, the last one of 58 positions
  const int distinct[4][2] = {{n, 4 * n + 1}, {4 * n, 4 * n}, {4 * n + 1, 1}, {12 * n, 4 * n}};
  for (int64_t t = 0; t < s.rows; ++t)
    for (int h = 0; h < H; ++h) {
      const int d = distinct[t / 64][h];
      std::vector<int32_t> blocks;
      for (int m = 0; m < n; ++m) {
        const int32_t b = static_cast<int32_t>(((t % 64) * n + m) % d);
        if (std::find(blocks.begin(), blocks.end(), b) == blocks.end()) blocks.push_back(b);
      }
      s.set(t, h, blocks);
    }
  for (int64_t span = 0; span < 4; ++span)
    for (int h = 0; h < H; ++h) CHECK(s.distinct(span, h) == distinct[span][h]);
  const OverlapBucket hi = OverlapBucket::high, lo = OverlapBucket::low;
  CHECK(s.plan() == std::vector<OverlapBucket>{hi, lo, hi, hi, lo, hi, lo, hi});
  // Entries past cnt, negative entries and a repeated entry are not blocks; cnt past n is n, a negative cnt none.
  Selection odd(64, 1, n);
  for (int64_t t = 0; t < 64; ++t) odd.set(t, 0, range(0, 4));
  odd.idx[static_cast<size_t>(0 * n + 6)] = 77;  // past cnt = 4: not counted
  odd.idx[static_cast<size_t>(1 * n + 1)] = -1;  // inside cnt, negative: not counted
  odd.idx[static_cast<size_t>(2 * n + 1)] = 0;   // a repeat of block 0
  odd.cnt[3] = n + 5;                            // past n: the whole row (blocks 0..3 and the padding)
  odd.cnt[4] = -2;                               // none
  CHECK(odd.distinct(0, 0) == 4);
  odd.idx[static_cast<size_t>(5 * n + 3)] = 99;  // a new block inside cnt counts
  CHECK(odd.distinct(0, 0) == 5);
}
