#include "runtime/attn_fwd_api.h"

#include <fmt/format.h>

#include <algorithm>

#include "base/error.h"
#include "codegen/codegen.h"
#include "runtime/kernels.h"
#include "runtime/tuned.h"
#include "runtime/validate.h"
#include "templates/attn_params.h"

namespace nsajit {
namespace {

using nsa::AttnFwdParams;

BatchLayout batch_of(const AttnFwdArgs& a) {
  BatchLayout b;
  b.cu_seqlens = a.cu_seqlens, b.cu_seqlens_host = a.cu_seqlens_host;
  b.num_seqs = a.num_seqs, b.max_seqlen = a.max_seqlen;
  return b;
}

// Every check of one dense-attention call; returns B and T as the grid sees them. No driver call.
GridShape check_attn(const KernelFamily& family, const Problem& problem, const AttnFwdArgs& a,
                     const TileConfig* config, bool compressed) {
  const std::string who(family.name());
  family.check_problem(problem);
  const bool varlen = a.cu_seqlens != nullptr;
  check_view(who.c_str(), "q", a.q, varlen);
  check_view(who.c_str(), compressed ? "k_cmp" : "k", a.k, varlen);
  check_view(who.c_str(), compressed ? "v_cmp" : "v", a.v, varlen);
  if (a.o.data != nullptr) check_view(who.c_str(), "o", a.o, varlen);
  check_gated_out(who.c_str(), a.gate, a.gate_stride_b, a.gate_stride_t, a.gate_stride_h, a.out, a.accumulate,
                  varlen);
  if (a.gate == nullptr && a.o.data == nullptr && a.lse == nullptr)
    throw UsageError(who + ": nothing to write: o and lse are null and no gate/out is given");
  if (a.lse != nullptr) {
    check_aligned(who.c_str(), "lse", a.lse, 4);
    check_row_strides(who.c_str(), "lse", a.lse_stride_b, a.lse_stride_t, varlen);
  }
  const GridShape grid = check_batch(who.c_str(), problem, batch_of(a), true);
  if (config != nullptr) {
    check_config(who.c_str(), family, *config);
    if (auto why = family.reject(problem, *config, kHopperMaxSmemOptin))
      throw UsageError(fmt::format("{}: tile config [{}] is not valid: {}", who, describe(*config), *why));
  }
  return grid;
}

PreparedLaunch prepare_attn(const KernelFamily& family, const Problem& problem, const AttnFwdArgs& a,
                            const TileConfig* config, bool compressed) {
  const GridShape grid = check_attn(family, problem, a, config, compressed);
  Problem launch = problem;  // B and T as the grid sees them
  launch.B = grid.B, launch.T = grid.T;

  KernelSpec spec{&family, problem, config ? *config : resolve_config(family, problem, problem).config, "sm_90a"};
  if (auto why = family.reject(problem, spec.config, kHopperMaxSmemOptin))
    throw UsageError(fmt::format("{}: tile config [{}] is not valid: {}", family.name(), describe(spec.config), *why));
  PreparedLaunch r;
  r.kernel = &runtime_kernel(spec);
  r.geometry = family.geometry(launch, spec.config);

  AttnFwdParams p{};
  p.q = a.q.data, p.k = a.k.data, p.v = a.v.data, p.o = const_cast<void*>(a.o.data), p.lse = a.lse;
  p.gate = a.gate, p.out = const_cast<void*>(a.out.data);
  p.q_sb = a.q.stride_b, p.q_st = a.q.stride_t, p.q_sh = a.q.stride_h;
  p.k_sb = a.k.stride_b, p.k_st = a.k.stride_t, p.k_sh = a.k.stride_h;
  p.v_sb = a.v.stride_b, p.v_st = a.v.stride_t, p.v_sh = a.v.stride_h;
  p.o_sb = a.o.stride_b, p.o_st = a.o.stride_t, p.o_sh = a.o.stride_h;
  p.lse_sb = a.lse_stride_b, p.lse_st = a.lse_stride_t;
  p.gate_sb = a.gate_stride_b, p.gate_st = a.gate_stride_t, p.gate_sh = a.gate_stride_h == 0 ? 1 : a.gate_stride_h;
  p.out_sb = a.out.stride_b, p.out_st = a.out.stride_t, p.out_sh = a.out.stride_h;
  p.cu_seqlens = a.cu_seqlens;
  p.T = launch.T;
  p.H = problem.H;
  p.w = problem.w;
  p.l = problem.l, p.d = problem.d;
  p.accumulate = a.accumulate ? 1 : 0;
  p.scale_log2 = static_cast<float>(problem.softmax_scale() * 1.4426950408889634);
  r.set_params(p);
  return r;
}

void check_reference(const char* who, const AttnFwdArgs& args) {
  if (args.o.data == nullptr || args.gate != nullptr || args.out.data != nullptr || args.accumulate)
    throw UsageError(std::string(who) + ": needs o and takes no gate");
}

}  // namespace

void win_fwd(const Problem& problem, const AttnFwdArgs& args, CUstream stream, const TileConfig* config) {
  check_win_fwd(problem, args, config);
  const DeviceScope scope(args.q.data, "win_fwd", "q");
  prepare_win_fwd(problem, args, config).launch(stream);
}
void cmp_fwd(const Problem& problem, const AttnFwdArgs& args, CUstream stream, const TileConfig* config) {
  check_cmp_fwd(problem, args, config);
  const DeviceScope scope(args.q.data, "cmp_fwd", "q");
  prepare_cmp_fwd(problem, args, config).launch(stream);
}
void check_win_fwd(const Problem& problem, const AttnFwdArgs& args, const TileConfig* config) {
  check_attn(find_family("win_fwd"), problem, args, config, false);
}
void check_cmp_fwd(const Problem& problem, const AttnFwdArgs& args, const TileConfig* config) {
  check_attn(find_family("cmp_fwd"), problem, args, config, true);
}
PreparedLaunch prepare_win_fwd(const Problem& problem, const AttnFwdArgs& args, const TileConfig* config) {
  return prepare_attn(find_family("win_fwd"), problem, args, config, false);
}
PreparedLaunch prepare_cmp_fwd(const Problem& problem, const AttnFwdArgs& args, const TileConfig* config) {
  return prepare_attn(find_family("cmp_fwd"), problem, args, config, true);
}
void win_fwd_reference(const Problem& problem, const AttnFwdArgs& args, CUstream stream) {
  check_reference("win_fwd_reference", args);
  prepare_attn(find_family("win_fwd_ref"), problem, args, nullptr, false).launch(stream);
}
void cmp_fwd_reference(const Problem& problem, const AttnFwdArgs& args, CUstream stream) {
  check_reference("cmp_fwd_reference", args);
  prepare_attn(find_family("cmp_fwd_ref"), problem, args, nullptr, true).launch(stream);
}

}  // namespace nsajit
