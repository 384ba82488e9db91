#include "runtime/slc_fwd_api.h"

#include <fmt/format.h>

#include <algorithm>

#include "codegen/codegen.h"
#include "runtime/error.h"
#include "runtime/kernels.h"
#include "runtime/tuned.h"
#include "runtime/validate.h"

namespace nsajit {
namespace {

// Byte for byte the SlcFwdParams of templates/slc_fwd.cuh.
struct SlcFwdParams {
  const void* q;
  const void* k;
  const void* v;
  void* o;
  float* lse;
  const int32_t* idx;
  const int32_t* cnt;
  const void* gate;
  void* out;
  int64_t q_sb, q_st, q_sh;
  int64_t k_sb, k_st, k_sh;
  int64_t v_sb, v_st, v_sh;
  int64_t o_sb, o_st, o_sh;
  int64_t out_sb, out_st, out_sh;
  int64_t lse_sb, lse_st;
  int64_t gate_sb, gate_st;
  const int32_t* cu_seqlens;
  int64_t T;
  int32_t H;
  int32_t n;
  int32_t accumulate;
  float scale_log2;
};
static_assert(sizeof(SlcFwdParams) == 256, "must match templates/slc_fwd.cuh");

void check_row_strides(const char* name, int64_t stride_b, int64_t stride_t, bool varlen) {
  if ((!varlen && stride_b < 0) || stride_t < 0)
    throw UsageError(fmt::format("slc_fwd: {}'s batch and sequence strides ({}, {}) must be non-negative", name,
                                 stride_b, stride_t));
}

}  // namespace

void slc_fwd(const Problem& problem, const SlcFwdArgs& a, CUstream stream, const TileConfig* config) {
  const KernelFamily& family = find_family("slc_fwd");
  family.check_problem(problem);
  const bool varlen = a.cu_seqlens != nullptr;
  check_view("slc_fwd", "q", a.q, varlen);
  check_view("slc_fwd", "k", a.k, varlen);
  check_view("slc_fwd", "v", a.v, varlen);
  const bool gated = a.gate != nullptr;
  if (a.out.data != nullptr && !gated)
    throw UsageError("slc_fwd: out is given without gate (the gated epilogue needs both)");
  if (gated) {
    if (a.out.data == nullptr) throw UsageError("slc_fwd: gate is given without out (the gated epilogue needs both)");
    check_view("slc_fwd", "out", a.out, varlen);
    if (reinterpret_cast<uintptr_t>(a.gate) % 2 != 0) throw UsageError("slc_fwd: gate is not 2-byte aligned");
    check_row_strides("gate", a.gate_stride_b, a.gate_stride_t, varlen);
  }
  if (a.accumulate && !gated) throw UsageError("slc_fwd: accumulate is set but no gate and out are given");
  if (a.o_slc.data != nullptr)
    check_view("slc_fwd", "o_slc", a.o_slc, varlen);
  else if (!gated && a.lse == nullptr)
    throw UsageError("slc_fwd: o_slc and lse are null pointers and no gated out is given: nothing would be written");
  if (a.lse != nullptr) {
    if (reinterpret_cast<uintptr_t>(a.lse) % 4 != 0) throw UsageError("slc_fwd: lse is not 4-byte aligned");
    check_row_strides("lse", a.lse_stride_b, a.lse_stride_t, varlen);
  }
  if (a.idx == nullptr) throw UsageError("slc_fwd: idx is a null pointer");
  if (a.cnt == nullptr) throw UsageError("slc_fwd: cnt is a null pointer");
  if (reinterpret_cast<uintptr_t>(a.idx) % 4 != 0) throw UsageError("slc_fwd: idx is not 4-byte aligned");
  if (reinterpret_cast<uintptr_t>(a.cnt) % 4 != 0) throw UsageError("slc_fwd: cnt is not 4-byte aligned");
  if (problem.H > 65535) throw UsageError(fmt::format("slc_fwd: H = {} KV heads > 65535 (grid y)", problem.H));

  Problem launch = problem;  // B and T as the grid sees them
  if (varlen) {
    if (problem.B != 1) throw UsageError(fmt::format("slc_fwd: varlen needs B = 1 (got B = {})", problem.B));
    const auto& cu = a.cu_seqlens_host;
    const int64_t longest = check_cu_seqlens("slc_fwd", cu, problem.T);
    launch.B = static_cast<int64_t>(cu.size()) - 1;
    launch.T = std::max<int64_t>(longest, 1);
  }
  if (launch.B > 65535)
    throw UsageError(fmt::format("slc_fwd: {} = {} > 65535 (grid z)", varlen ? "sequences" : "B", launch.B));

  KernelSpec spec{&family, problem, config ? *config : resolve_config(family, problem, launch).config, "sm_90a"};
  if (auto why = family.reject(problem, spec.config, kHopperMaxSmemOptin))
    throw UsageError(fmt::format("slc_fwd: tile config [{}] is not valid: {}", describe(spec.config), *why));
  const Kernel& kernel = runtime_kernel(spec);
  const LaunchGeometry g = family.geometry(launch, spec.config);

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
  p.gate_sb = a.gate_stride_b, p.gate_st = a.gate_stride_t;
  p.cu_seqlens = a.cu_seqlens;
  p.T = problem.T;  // the per-sequence length of the batch layout; varlen reads lengths from cu_seqlens
  p.H = problem.H;
  p.n = problem.n;
  p.accumulate = a.accumulate ? 1 : 0;
  p.scale_log2 = static_cast<float>(problem.softmax_scale() * 1.4426950408889634);
  kernel.launch(g.grid, g.block, g.smem_bytes, stream, &p);
}

}  // namespace nsajit
