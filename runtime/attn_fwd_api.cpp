#include "runtime/attn_fwd_api.h"

#include <fmt/format.h>

#include <algorithm>

#include "codegen/codegen.h"
#include "runtime/error.h"
#include "runtime/kernels.h"
#include "runtime/tuned.h"
#include "runtime/validate.h"

namespace nsajit {
namespace {

// Byte for byte the AttnFwdParams of templates/attn_params.cuh.
struct AttnFwdParams {
  const void* q;
  const void* k;
  const void* v;
  void* o;
  float* lse;
  const void* gate;
  void* out;
  int64_t q_sb, q_st, q_sh;
  int64_t k_sb, k_st, k_sh;
  int64_t v_sb, v_st, v_sh;
  int64_t o_sb, o_st, o_sh;
  int64_t lse_sb, lse_st;
  int64_t gate_sb, gate_st;
  int64_t out_sb, out_st, out_sh;
  const int32_t* cu_seqlens;
  int64_t T;
  int32_t H;
  int32_t w;
  int32_t l, d;
  int32_t accumulate;
  float scale_log2;
};
static_assert(sizeof(AttnFwdParams) == 248, "must match templates/attn_params.cuh");

void launch_attn(const KernelFamily& family, const Problem& problem, const AttnFwdArgs& a, CUstream stream,
                 const TileConfig* config, bool compressed) {
  const std::string who(family.name());
  family.check_problem(problem);
  const bool varlen = a.cu_seqlens != nullptr;
  check_view(who.c_str(), "q", a.q, varlen);
  check_view(who.c_str(), compressed ? "k_cmp" : "k", a.k, varlen);
  check_view(who.c_str(), compressed ? "v_cmp" : "v", a.v, varlen);
  if (a.o.data != nullptr) check_view(who.c_str(), "o", a.o, varlen);
  if (a.gate != nullptr) {
    check_view(who.c_str(), "out", a.out, varlen);
    if (reinterpret_cast<uintptr_t>(a.gate) % 2 != 0) throw UsageError(who + ": gate is not 2-byte aligned");
  } else if (a.o.data == nullptr && a.lse == nullptr) {
    throw UsageError(who + ": nothing to write: o and lse are null and no gate/out is given");
  }
  if (a.lse != nullptr && reinterpret_cast<uintptr_t>(a.lse) % 4 != 0)
    throw UsageError(who + ": lse is not 4-byte aligned");

  Problem launch = problem;  // B and T as the grid sees them
  if (varlen) {
    if (problem.B != 1) throw UsageError(fmt::format("{}: varlen needs B = 1 (got B = {})", who, problem.B));
    launch.T = std::max<int64_t>(check_cu_seqlens(who.c_str(), a.cu_seqlens_host, problem.T), 1);
    launch.B = static_cast<int64_t>(a.cu_seqlens_host.size()) - 1;
  } else if (!a.cu_seqlens_host.empty()) {
    throw UsageError(who + ": cu_seqlens_host given without the device cu_seqlens");
  }

  KernelSpec spec{&family, problem, config ? *config : resolve_config(family, problem, problem).config, "sm_90a"};
  if (auto why = family.reject(problem, spec.config, kHopperMaxSmemOptin))
    throw UsageError(fmt::format("{}: tile config [{}] is not valid: {}", who, describe(spec.config), *why));
  const Kernel& kernel = runtime_kernel(spec);
  const LaunchGeometry g = family.geometry(launch, spec.config);

  AttnFwdParams p{};
  p.q = a.q.data, p.k = a.k.data, p.v = a.v.data, p.o = const_cast<void*>(a.o.data), p.lse = a.lse;
  p.gate = a.gate, p.out = const_cast<void*>(a.out.data);
  p.q_sb = a.q.stride_b, p.q_st = a.q.stride_t, p.q_sh = a.q.stride_h;
  p.k_sb = a.k.stride_b, p.k_st = a.k.stride_t, p.k_sh = a.k.stride_h;
  p.v_sb = a.v.stride_b, p.v_st = a.v.stride_t, p.v_sh = a.v.stride_h;
  p.o_sb = a.o.stride_b, p.o_st = a.o.stride_t, p.o_sh = a.o.stride_h;
  p.lse_sb = a.lse_stride_b, p.lse_st = a.lse_stride_t;
  p.gate_sb = a.gate_stride_b, p.gate_st = a.gate_stride_t;
  p.out_sb = a.out.stride_b, p.out_st = a.out.stride_t, p.out_sh = a.out.stride_h;
  p.cu_seqlens = a.cu_seqlens;
  p.T = launch.T;
  p.H = problem.H;
  p.w = problem.w;
  p.l = problem.l, p.d = problem.d;
  p.accumulate = a.accumulate ? 1 : 0;
  p.scale_log2 = static_cast<float>(problem.softmax_scale() * 1.4426950408889634);
  kernel.launch(g.grid, g.block, g.smem_bytes, stream, &p);
}

}  // namespace

void win_fwd(const Problem& problem, const AttnFwdArgs& args, CUstream stream, const TileConfig* config) {
  launch_attn(find_family("win_fwd"), problem, args, stream, config, false);
}
void cmp_fwd(const Problem& problem, const AttnFwdArgs& args, CUstream stream, const TileConfig* config) {
  launch_attn(find_family("cmp_fwd"), problem, args, stream, config, true);
}
void win_fwd_reference(const Problem& problem, const AttnFwdArgs& args, CUstream stream) {
  if (args.o.data == nullptr || args.gate != nullptr)
    throw UsageError("win_fwd_reference: needs o and takes no gate");
  launch_attn(find_family("win_fwd_ref"), problem, args, stream, nullptr, false);
}
void cmp_fwd_reference(const Problem& problem, const AttnFwdArgs& args, CUstream stream) {
  if (args.o.data == nullptr || args.gate != nullptr)
    throw UsageError("cmp_fwd_reference: needs o and takes no gate");
  launch_attn(find_family("cmp_fwd_ref"), problem, args, stream, nullptr, true);
}

}  // namespace nsajit
