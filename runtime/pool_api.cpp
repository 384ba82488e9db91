#include "runtime/pool_api.h"

#include <fmt/format.h>

#include <algorithm>

#include "codegen/codegen.h"
#include "runtime/error.h"
#include "runtime/validate.h"
#include "runtime/kernels.h"
#include "runtime/tuned.h"

namespace nsajit {
namespace {

// Byte for byte the PoolParams of templates/pool.cuh.
struct PoolParams {
  const void* x;
  void* y;
  int64_t x_sb, x_st, x_sh;
  int64_t y_sb, y_st, y_sh;
  const int32_t* cu_seqlens;
  int64_t T;
  int32_t H, l, d;
  int32_t unused;
};
static_assert(sizeof(PoolParams) == 96, "must match templates/pool.cuh");

}  // namespace

void mean_pool(const Problem& problem, const PoolArgs& a, CUstream stream, const TileConfig* config) {
  const KernelFamily& family = find_family("pool");
  family.check_problem(problem);
  if (a.dim != problem.dk && a.dim != problem.dv)
    throw UsageError(fmt::format("pool: dim {} is neither dk = {} nor dv = {}", a.dim, problem.dk, problem.dv));
  const bool varlen = a.cu_seqlens != nullptr;
  check_view("pool", "x", a.x, varlen);
  check_view("pool", "y", a.y, varlen);
  Problem launch = problem;
  launch.dk = a.dim;  // the family pools one tensor of this dim per launch
  if (varlen) {
    if (problem.B != 1) throw UsageError(fmt::format("pool: varlen needs B = 1 (got B = {})", problem.B));
    launch.T = std::max<int64_t>(check_cu_seqlens("pool", a.cu_seqlens_host, problem.T), 1);
    launch.B = static_cast<int64_t>(a.cu_seqlens_host.size()) - 1;
  }
  KernelSpec spec{&family, launch, config ? *config : resolve_config(family, problem, launch).config, "sm_90a"};
  const Kernel& kernel = runtime_kernel(spec);
  const LaunchGeometry g = family.geometry(launch, spec.config);
  PoolParams p{};
  p.x = a.x.data, p.y = const_cast<void*>(a.y.data);
  p.x_sb = a.x.stride_b, p.x_st = a.x.stride_t, p.x_sh = a.x.stride_h;
  p.y_sb = a.y.stride_b, p.y_st = a.y.stride_t, p.y_sh = a.y.stride_h;
  p.cu_seqlens = a.cu_seqlens;
  p.T = launch.T;
  p.H = problem.H, p.l = problem.l, p.d = problem.d;
  kernel.launch(g.grid, g.block, g.smem_bytes, stream, &p);
}

}  // namespace nsajit
