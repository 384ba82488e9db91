// The selection's overlap plan (codegen/overlap.h): for each span of `span` consecutive rows of the packed [B * T]
// positions and each KV head, whether the span's positions select at most `max_distinct` distinct blocks (1: high
// overlap) or more (0: low). The variants of slc_fwd read it to split the positions between them, on the device:
// nothing goes back to the host, so a captured CUDA graph stays right when the selection changes between replays.
//
// One warp per (span, KV head): lane i walks the idx rows of positions i and i + 32 of the span (ascending lists);
// each step takes the smallest head of all lists (a warp min), counts it and advances every list that holds it.
// Counting stops past max_distinct, so a low-overlap span costs at most max_distinct + 1 steps.
#ifndef NSA_SLC_PLAN_CUH
#define NSA_SLC_PLAN_CUH
#ifndef NSAJIT_GENERATED
#include "common.cuh"
#include "slc_plan_params.h"
#endif

namespace nsa {

namespace slc_plan {

constexpr int kWarps = 4;
constexpr u32 kNone = 0xffffffffu;

__device__ __forceinline__ u32 warp_min_u32(u32 v) {
  u32 r;
  asm volatile("redux.sync.min.u32 %0, %1, 0xffffffff;\n" : "=r"(r) : "r"(v));
  return r;
}

// One position's list: its valid entries, walked in order.
struct List {
  const i32* at = nullptr;
  int count = 0, ptr = 0;
  u32 head = kNone;
  __device__ __forceinline__ void advance() {
    for (; ptr < count; ++ptr) {
      const i32 j = at[ptr];
      if (j >= 0) {
        head = static_cast<u32>(j);
        return;
      }
    }
    head = kNone;
  }
  // Moves past every entry equal to m (a malformed list may repeat one).
  __device__ __forceinline__ void pass(u32 m) {
    while (head == m) {
      ++ptr;
      advance();
    }
  }
};

__device__ __forceinline__ void run(const SlcPlanParams& p) {
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const i64 item = static_cast<i64>(blockIdx.x) * kWarps + static_cast<int>(threadIdx.x) / 32;  // span * H + head
  const i64 spans = (p.rows + p.span - 1) / p.span;
  if (item >= spans * p.H) return;  // warp-uniform
  const i64 span = item / p.H;
  const int kvh = static_cast<int>(item % p.H);

  List lists[2];
#pragma unroll
  for (int k = 0; k < 2; ++k) {
    const int in_span = lane + 32 * k;
    const i64 row = span * p.span + in_span;
    if (in_span < p.span && row < p.rows) {
      lists[k].at = p.idx + (row * p.H + kvh) * static_cast<i64>(p.n);
      lists[k].count = min(max(p.cnt[row * p.H + kvh], 0), p.n);
    }
    lists[k].advance();
  }
  int distinct = 0;
  while (distinct <= p.max_distinct) {
    const u32 m = warp_min_u32(min(lists[0].head, lists[1].head));
    if (m == kNone) break;
    ++distinct;
    lists[0].pass(m);
    lists[1].pass(m);
  }
  if (lane == 0) p.plan[item] = distinct <= p.max_distinct ? 1 : 0;
}

}  // namespace slc_plan
}  // namespace nsa

#endif  // NSA_SLC_PLAN_CUH
