#include "runtime/slc_fwd_api.h"

#include <fmt/format.h>

#include <algorithm>

#include "base/error.h"
#include "codegen/codegen.h"
#include "runtime/kernels.h"
#include "runtime/tuned.h"
#include "runtime/validate.h"
#include "templates/slc_fwd_params.h"
#include "templates/slc_plan_params.h"

namespace nsajit {
namespace {

using nsa::SlcFwdParams;
using nsa::SlcPlanParams;
static_assert(kOverlapSpan >= 1 && kOverlapSpan <= 64, "slc_plan walks at most 64 positions per span");

// Every check; returns the problem the grid sees (B and T: the sequences and the longest). No driver call.
Problem check_slc(const KernelFamily& family, const Problem& problem, const SlcFwdArgs& a, const TileConfig* config) {
  family.check_problem(problem);
  const bool varlen = a.cu_seqlens != nullptr;
  check_view("slc_fwd", "q", a.q, varlen);
  check_view("slc_fwd", "k", a.k, varlen);
  check_view("slc_fwd", "v", a.v, varlen);
  check_gated_out("slc_fwd", a.gate, a.gate_stride_b, a.gate_stride_t, a.gate_stride_h, a.out, a.accumulate, varlen);
  if (a.o_slc.data != nullptr)
    check_view("slc_fwd", "o_slc", a.o_slc, varlen);
  else if (a.gate == nullptr && a.lse == nullptr)
    throw UsageError("slc_fwd: o_slc and lse are null pointers and no gated out is given: nothing would be written");
  if (a.lse != nullptr) {
    check_aligned("slc_fwd", "lse", a.lse, 4);
    check_row_strides("slc_fwd", "lse", a.lse_stride_b, a.lse_stride_t, varlen);
  }
  if (a.idx == nullptr) throw UsageError("slc_fwd: idx is a null pointer");
  if (a.cnt == nullptr) throw UsageError("slc_fwd: cnt is a null pointer");
  check_aligned("slc_fwd", "idx", a.idx, 4);
  check_aligned("slc_fwd", "cnt", a.cnt, 4);
  if (a.plan != nullptr && a.plan_bytes < slc_plan_bytes(problem))
    throw UsageError(fmt::format("slc_fwd: plan of {} bytes is too small: this problem needs {} (slc_plan_bytes)",
                                 a.plan_bytes, slc_plan_bytes(problem)));
  BatchLayout batch;
  batch.cu_seqlens = a.cu_seqlens, batch.cu_seqlens_host = a.cu_seqlens_host;
  batch.num_seqs = a.num_seqs, batch.max_seqlen = a.max_seqlen;
  const GridShape grid = check_batch("slc_fwd", problem, batch, true);
  Problem launch = problem;
  launch.B = grid.B, launch.T = grid.T;
  if (config != nullptr) {
    check_config("slc_fwd", family, *config);
    if (auto why = family.reject(problem, *config, kHopperMaxSmemOptin))
      throw UsageError(fmt::format("slc_fwd: tile config [{}] is not valid: {}", describe(*config), *why));
  }
  return launch;
}

}  // namespace

size_t slc_plan_bytes(const Problem& problem) {
  problem.validate();
  return static_cast<size_t>(overlap_spans(problem.B * problem.T)) * static_cast<size_t>(problem.H);
}

void check_slc_fwd(const Problem& problem, const SlcFwdArgs& a, const TileConfig* config) {
  check_slc(find_family("slc_fwd"), problem, a, config);
}

namespace {

// One variant: `config` on the positions of overlap bucket `bucket` (null: on every position).
PreparedLaunch prepare_variant(const KernelFamily& family, const Problem& problem, const Problem& launch,
                               const SlcFwdArgs& a, const TileConfig& config, const OverlapBucket* bucket) {
  KernelSpec spec{&family, problem, config, "sm_90a"};
  if (auto why = family.reject(problem, spec.config, kHopperMaxSmemOptin))
    throw UsageError(fmt::format("slc_fwd: tile config [{}] is not valid: {}", describe(spec.config), *why));
  PreparedLaunch r;
  r.kernel = &runtime_kernel(spec);
  r.geometry = family.geometry(launch, spec.config);

  const bool gated = a.gate != nullptr;
  SlcFwdParams p{};
  p.q = a.q.data, p.k = a.k.data, p.v = a.v.data, p.o = const_cast<void*>(a.o_slc.data), p.lse = a.lse;
  p.idx = a.idx, p.cnt = a.cnt;
  p.gate = a.gate, p.out = gated ? const_cast<void*>(a.out.data) : nullptr;
  p.q_sb = a.q.stride_b, p.q_st = a.q.stride_t, p.q_sh = a.q.stride_h;
  p.k_sb = a.k.stride_b, p.k_st = a.k.stride_t, p.k_sh = a.k.stride_h;
  p.v_sb = a.v.stride_b, p.v_st = a.v.stride_t, p.v_sh = a.v.stride_h;
  p.o_sb = a.o_slc.stride_b, p.o_st = a.o_slc.stride_t, p.o_sh = a.o_slc.stride_h;
  p.out_sb = a.out.stride_b, p.out_st = a.out.stride_t, p.out_sh = a.out.stride_h;
  p.lse_sb = a.lse_stride_b, p.lse_st = a.lse_stride_t;
  p.gate_sb = a.gate_stride_b, p.gate_st = a.gate_stride_t, p.gate_sh = a.gate_stride_h == 0 ? 1 : a.gate_stride_h;
  p.cu_seqlens = a.cu_seqlens;
  p.T = problem.T;  // the per-sequence length of the batch layout; varlen reads lengths from cu_seqlens
  p.H = problem.H;
  p.n = problem.n;
  p.accumulate = a.accumulate ? 1 : 0;
  p.scale_log2 = static_cast<float>(problem.softmax_scale() * 1.4426950408889634);
  if (bucket != nullptr) {
    p.plan = a.plan;
    p.plan_span = kOverlapSpan;
    p.plan_bucket = static_cast<int32_t>(*bucket);
  }
  r.set_params(p);
  return r;
}

// The overlap plan of the selection, into a.plan.
PreparedLaunch prepare_plan(const Problem& problem, const SlcFwdArgs& a) {
  const KernelFamily& family = find_family("slc_plan");
  const KernelSpec spec{&family, problem, {}, "sm_90a"};
  PreparedLaunch r;
  r.kernel = &runtime_kernel(spec);
  r.geometry = family.geometry(problem, spec.config);  // the B * T packed rows of the caller's problem
  SlcPlanParams p{};
  p.idx = a.idx, p.cnt = a.cnt, p.plan = a.plan;
  p.rows = problem.B * problem.T;
  p.H = problem.H, p.n = problem.n;
  p.span = kOverlapSpan;
  p.max_distinct = high_overlap_max_distinct(problem.n);
  r.set_params(p);
  return r;
}

}  // namespace

std::vector<PreparedLaunch> prepare_slc_fwd(const Problem& problem, const SlcFwdArgs& a, const TileConfig* config) {
  const KernelFamily& family = find_family("slc_fwd");
  const Problem launch = check_slc(family, problem, a, config);
  if (config != nullptr) return {prepare_variant(family, problem, launch, a, *config, nullptr)};
  const TileConfig& high = resolve_config(family, problem, launch, OverlapBucket::high).config;
  const TileConfig& low = resolve_config(family, problem, launch, OverlapBucket::low).config;
  if (a.plan == nullptr || low == high) return {prepare_variant(family, problem, launch, a, high, nullptr)};
  std::vector<PreparedLaunch> out;
  out.push_back(prepare_plan(problem, a));
  for (OverlapBucket b : kAllOverlapBuckets)
    out.push_back(prepare_variant(family, problem, launch, a, b == OverlapBucket::high ? high : low, &b));
  return out;
}

void slc_overlap_plan(const Problem& problem, const int32_t* idx, const int32_t* cnt, uint8_t* plan,
                      size_t plan_bytes, CUstream stream) {
  find_family("slc_fwd").check_problem(problem);
  if (idx == nullptr) throw UsageError("slc_overlap_plan: idx is a null pointer");
  if (cnt == nullptr) throw UsageError("slc_overlap_plan: cnt is a null pointer");
  if (plan == nullptr) throw UsageError("slc_overlap_plan: plan is a null pointer");
  check_aligned("slc_overlap_plan", "idx", idx, 4);
  check_aligned("slc_overlap_plan", "cnt", cnt, 4);
  if (plan_bytes < slc_plan_bytes(problem))
    throw UsageError(fmt::format("slc_overlap_plan: plan of {} bytes is too small: this problem needs {}",
                                 plan_bytes, slc_plan_bytes(problem)));
  const DeviceScope scope(idx, "slc_overlap_plan", "idx");
  SlcFwdArgs a;
  a.idx = idx, a.cnt = cnt, a.plan = plan, a.plan_bytes = plan_bytes;
  prepare_plan(problem, a).launch(stream);
}

void slc_fwd(const Problem& problem, const SlcFwdArgs& a, CUstream stream, const TileConfig* config) {
  check_slc_fwd(problem, a, config);
  const DeviceScope scope(a.q.data, "slc_fwd", "q");
  for (const PreparedLaunch& l : prepare_slc_fwd(problem, a, config)) l.launch(stream);
}

}  // namespace nsajit
