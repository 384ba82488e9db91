#include "runtime/win_fwd_api.h"

#include <fmt/format.h>

#include <cmath>

#include "codegen/codegen.h"
#include "runtime/error.h"
#include "runtime/kernels.h"

namespace nsajit {
namespace {

// Byte for byte the WinFwdParams of templates/win_fwd.cuh.
struct WinFwdParams {
  const void* q;
  const void* k;
  const void* v;
  void* o;
  float* lse;
  int64_t q_sb, q_st, q_sh;
  int64_t k_sb, k_st, k_sh;
  int64_t v_sb, v_st, v_sh;
  int64_t o_sb, o_st, o_sh;
  int64_t lse_sb, lse_st;
  const int32_t* cu_seqlens;
  int64_t T;
  int32_t H;
  int32_t w;
  float scale_log2;
};
static_assert(sizeof(WinFwdParams) == 184, "must match templates/win_fwd.cuh");

void check_view(const char* name, const TensorView& t, bool varlen) {
  if (t.data == nullptr) throw UsageError(fmt::format("win_fwd: {} is a null pointer", name));
  if (reinterpret_cast<uintptr_t>(t.data) % 16 != 0)
    throw UsageError(fmt::format("win_fwd: {} is not 16-byte aligned (the kernels copy 16-byte chunks)", name));
  const int64_t strides[] = {t.stride_b, t.stride_t, t.stride_h};
  const char* names[] = {"batch", "sequence", "head"};
  for (int i = varlen ? 1 : 0; i < 3; ++i) {
    if (strides[i] < 0 || strides[i] % 8 != 0)
      throw UsageError(fmt::format("win_fwd: {}'s {} stride {} must be a non-negative multiple of 8 elements "
                                   "(16 bytes)",
                                   name, names[i], strides[i]));
  }
}

}  // namespace

TensorView contiguous(const void* data, int64_t T, int heads, int dim) {
  return {data, T * heads * dim, static_cast<int64_t>(heads) * dim, dim};
}

namespace {

void launch_window(const KernelFamily& family, const Problem& problem, const WinFwdArgs& a, CUstream stream,
                   const TileConfig* config) {
  family.check_problem(problem);
  const bool varlen = a.cu_seqlens != nullptr;
  check_view("q", a.q, varlen);
  check_view("k", a.k, varlen);
  check_view("v", a.v, varlen);
  check_view("o", a.o, varlen);
  if (a.lse != nullptr && reinterpret_cast<uintptr_t>(a.lse) % 4 != 0)
    throw UsageError("win_fwd: lse is not 4-byte aligned");

  Problem launch = problem;  // B and T as the grid sees them
  if (varlen) {
    if (problem.B != 1) throw UsageError(fmt::format("win_fwd: varlen needs B = 1 (got B = {})", problem.B));
    const auto& cu = a.cu_seqlens_host;
    if (cu.size() < 2)
      throw UsageError("win_fwd: cu_seqlens_host must hold N + 1 >= 2 offsets (the device copy's values)");
    if (cu[0] != 0) throw UsageError(fmt::format("win_fwd: cu_seqlens[0] = {} must be 0", cu[0]));
    int64_t longest = 0;
    for (size_t i = 1; i < cu.size(); ++i) {
      if (cu[i] < cu[i - 1])
        throw UsageError(fmt::format("win_fwd: cu_seqlens is not non-decreasing: cu_seqlens[{}] = {} < "
                                     "cu_seqlens[{}] = {}",
                                     i, cu[i], i - 1, cu[i - 1]));
      longest = std::max<int64_t>(longest, cu[i] - cu[i - 1]);
    }
    if (cu.back() != problem.T)
      throw UsageError(fmt::format("win_fwd: cu_seqlens ends at {} but T = {} tokens", cu.back(), problem.T));
    launch.B = static_cast<int64_t>(cu.size()) - 1;
    launch.T = std::max<int64_t>(longest, 1);
  }

  KernelSpec spec{&family, problem, config ? *config : family.default_config(problem), "sm_90a"};
  if (auto why = family.reject(problem, spec.config, kHopperMaxSmemOptin))
    throw UsageError(fmt::format("{}: tile config [{}] is not valid: {}", family.name(), describe(spec.config), *why));
  const Kernel& kernel = runtime_kernel(spec);
  const LaunchGeometry g = family.geometry(launch, spec.config);

  WinFwdParams p{};
  p.q = a.q.data, p.k = a.k.data, p.v = a.v.data, p.o = const_cast<void*>(a.o.data), p.lse = a.lse;
  p.q_sb = a.q.stride_b, p.q_st = a.q.stride_t, p.q_sh = a.q.stride_h;
  p.k_sb = a.k.stride_b, p.k_st = a.k.stride_t, p.k_sh = a.k.stride_h;
  p.v_sb = a.v.stride_b, p.v_st = a.v.stride_t, p.v_sh = a.v.stride_h;
  p.o_sb = a.o.stride_b, p.o_st = a.o.stride_t, p.o_sh = a.o.stride_h;
  p.lse_sb = a.lse_stride_b, p.lse_st = a.lse_stride_t;
  p.cu_seqlens = a.cu_seqlens;
  p.T = launch.T;
  p.H = problem.H;
  p.w = problem.w;
  p.scale_log2 = static_cast<float>(problem.softmax_scale() * 1.4426950408889634);
  kernel.launch(g.grid, g.block, g.smem_bytes, stream, &p);
}

}  // namespace

void win_fwd(const Problem& problem, const WinFwdArgs& args, CUstream stream, const TileConfig* config) {
  launch_window(find_family("win_fwd"), problem, args, stream, config);
}

void win_fwd_reference(const Problem& problem, const WinFwdArgs& args, CUstream stream) {
  launch_window(find_family("win_fwd_ref"), problem, args, stream, nullptr);
}

}  // namespace nsajit
