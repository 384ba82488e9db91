#include "runtime/select_api.h"

#include <fmt/format.h>

#include <algorithm>
#include <mutex>

#include "base/error.h"
#include "codegen/codegen.h"
#include "runtime/driver.h"
#include "runtime/kernels.h"
#include "runtime/tuned.h"
#include "runtime/validate.h"
#include "templates/select_params.h"

namespace nsajit {
namespace {

using nsa::SelectParams;

void check_output(const char* name, const void* p) {
  if (p == nullptr) throw UsageError(fmt::format("select: {} is a null pointer", name));
  check_aligned("select", name, p, 4);
}

// Every check; returns the problem the grid sees (B and T: the sequences and the longest). No driver call.
Problem check_select(const KernelFamily& family, const Problem& problem, const SelectArgs& a, const TileConfig* config) {
  family.check_problem(problem);
  const bool varlen = a.cu_seqlens != nullptr;
  check_view("select", "q", a.q, varlen);
  check_view("select", "k_cmp", a.k_cmp, varlen);
  check_output("lse_cmp", a.lse_cmp);
  check_row_strides("select", "lse_cmp", a.lse_stride_b, a.lse_stride_t, varlen);
  check_output("idx", a.idx);
  check_output("cnt", a.cnt);
  BatchLayout batch;
  batch.cu_seqlens = a.cu_seqlens, batch.cu_seqlens_host = a.cu_seqlens_host;
  batch.num_seqs = a.num_seqs, batch.max_seqlen = a.max_seqlen;
  const GridShape grid = check_batch("select", problem, batch, true);
  Problem launch = problem;
  launch.B = grid.B, launch.T = grid.T;
  if (config != nullptr) {
    check_config("select", family, *config);
    if (auto why = family.reject(launch, *config, kHopperMaxSmemOptin))
      throw UsageError(fmt::format("select: tile config [{}] is not valid: {}", describe(*config), *why));
  }
  return launch;
}

}  // namespace

void check_select_blocks(const Problem& problem, const SelectArgs& a, const TileConfig* config) {
  check_select(find_family("select"), problem, a, config);
}

PreparedLaunch prepare_select_blocks(const Problem& problem, const SelectArgs& a, const TileConfig* config) {
  const KernelFamily& family = find_family("select");
  const Problem launch = check_select(family, problem, a, config);
  // The default config and the shared memory depend on the longest sequence; the compiled kernel does not.
  KernelSpec spec{&family, launch, config ? *config : resolve_config(family, problem, launch).config, "sm_90a"};
  if (auto why = family.reject(launch, spec.config, kHopperMaxSmemOptin))
    throw UsageError(fmt::format("select: tile config [{}] is not valid: {}", describe(spec.config), *why));
  PreparedLaunch r;
  const Kernel& kernel = runtime_kernel(spec);
  r.kernel = &kernel;
  r.geometry = family.geometry(launch, spec.config);

  SelectParams p{};
  p.q = a.q.data, p.k_cmp = a.k_cmp.data, p.lse = a.lse_cmp, p.idx = a.idx, p.cnt = a.cnt;
  p.q_sb = a.q.stride_b, p.q_st = a.q.stride_t, p.q_sh = a.q.stride_h;
  p.k_sb = a.k_cmp.stride_b, p.k_st = a.k_cmp.stride_t, p.k_sh = a.k_cmp.stride_h;
  p.lse_sb = a.lse_stride_b, p.lse_st = a.lse_stride_t;
  p.cu_seqlens = a.cu_seqlens;
  p.T = launch.T;
  p.H = problem.H;
  p.ns_row = select_score_row_floats(launch.T, problem.lsel);
  p.scale_log2 = static_cast<float>(problem.softmax_scale() * 1.4426950408889634);
  r.set_params(p);

  // The kernel was loaded with the shared-memory limit of the first problem it served; a longer sequence needs
  // more. The limit only ever grows, so a concurrent launch of a shorter problem is never refused.
  static std::mutex mutex;
  {
    std::lock_guard<std::mutex> lock(mutex);
    const DriverApi& d = driver();
    int limit = 0;
    check_cu(d.cuFuncGetAttribute_(&limit, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, kernel.function()),
             "cuFuncGetAttribute(max dynamic shared memory)");
    if (r.geometry.smem_bytes > limit)
      check_cu(d.cuFuncSetAttribute_(kernel.function(), CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                                     r.geometry.smem_bytes),
               "cuFuncSetAttribute(max dynamic shared memory)");
  }
  return r;
}

void select_blocks(const Problem& problem, const SelectArgs& a, CUstream stream, const TileConfig* config) {
  check_select_blocks(problem, a, config);
  const DeviceScope scope(a.q.data, "select", "q");
  prepare_select_blocks(problem, a, config).launch(stream);
}

}  // namespace nsajit
