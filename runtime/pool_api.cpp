#include "runtime/pool_api.h"

#include <fmt/format.h>

#include <algorithm>

#include "codegen/codegen.h"
#include "base/error.h"
#include "runtime/validate.h"
#include "runtime/kernels.h"
#include "runtime/tuned.h"
#include "templates/pool_params.h"

namespace nsajit {
namespace {

using nsa::PoolParams;

}  // namespace

namespace {

// Every check; returns the problem the kernel is built and launched for. No driver call.
Problem check_pool(const KernelFamily& family, const Problem& problem, const PoolArgs& a, const TileConfig* config) {
  family.check_problem(problem);
  if (a.dim != problem.dk && a.dim != problem.dv)
    throw UsageError(fmt::format("pool: dim {} is neither dk = {} nor dv = {}", a.dim, problem.dk, problem.dv));
  const bool varlen = a.cu_seqlens != nullptr;
  check_view("pool", "x", a.x, varlen);
  check_view("pool", "y", a.y, varlen);
  BatchLayout batch;
  batch.cu_seqlens = a.cu_seqlens, batch.cu_seqlens_host = a.cu_seqlens_host;
  batch.num_seqs = a.num_seqs, batch.max_seqlen = a.max_seqlen;
  const GridShape grid = check_batch("pool", problem, batch, false);
  Problem launch = problem;
  launch.dk = a.dim;  // the family pools one tensor of this dim per launch
  launch.B = grid.B, launch.T = grid.T;
  if (config != nullptr) check_config("pool", family, *config);
  return launch;
}

}  // namespace

void check_mean_pool(const Problem& problem, const PoolArgs& a, const TileConfig* config) {
  check_pool(find_family("pool"), problem, a, config);
}

PreparedLaunch prepare_mean_pool(const Problem& problem, const PoolArgs& a, const TileConfig* config) {
  const KernelFamily& family = find_family("pool");
  const Problem launch = check_pool(family, problem, a, config);
  KernelSpec spec{&family, launch, config ? *config : resolve_config(family, problem, launch).config, "sm_90a"};
  PreparedLaunch r;
  r.kernel = &runtime_kernel(spec);
  r.geometry = family.geometry(launch, spec.config);
  PoolParams p{};
  p.x = a.x.data, p.y = const_cast<void*>(a.y.data);
  p.x_sb = a.x.stride_b, p.x_st = a.x.stride_t, p.x_sh = a.x.stride_h;
  p.y_sb = a.y.stride_b, p.y_st = a.y.stride_t, p.y_sh = a.y.stride_h;
  p.cu_seqlens = a.cu_seqlens;
  p.T = launch.T;
  p.H = problem.H, p.l = problem.l, p.d = problem.d;
  r.set_params(p);
  return r;
}

void mean_pool(const Problem& problem, const PoolArgs& a, CUstream stream, const TileConfig* config) {
  check_mean_pool(problem, a, config);
  const DeviceScope scope(a.x.data, "pool", "x");
  prepare_mean_pool(problem, a, config).launch(stream);
}

}  // namespace nsajit
