#include "runtime/select_api.h"

#include <fmt/format.h>

#include <algorithm>
#include <mutex>

#include "codegen/codegen.h"
#include "runtime/driver.h"
#include "runtime/error.h"
#include "runtime/kernels.h"
#include "runtime/tuned.h"
#include "runtime/validate.h"

namespace nsajit {
namespace {

// Byte for byte the SelectParams of templates/select.cuh.
struct SelectParams {
  const void* q;
  const void* k_cmp;
  const float* lse;
  int32_t* idx;
  int32_t* cnt;
  int64_t q_sb, q_st, q_sh;
  int64_t k_sb, k_st, k_sh;
  int64_t lse_sb, lse_st;
  const int32_t* cu_seqlens;
  int64_t T;
  int32_t H;
  int32_t ns_row;
  float scale_log2;
};
static_assert(sizeof(SelectParams) == 136, "must match templates/select.cuh");

void check_output(const char* name, const void* p) {
  if (p == nullptr) throw UsageError(fmt::format("select: {} is a null pointer", name));
  if (reinterpret_cast<uintptr_t>(p) % 4 != 0) throw UsageError(fmt::format("select: {} is not 4-byte aligned", name));
}

}  // namespace

void select_blocks(const Problem& problem, const SelectArgs& a, CUstream stream, const TileConfig* config) {
  const KernelFamily& family = find_family("select");
  family.check_problem(problem);
  const bool varlen = a.cu_seqlens != nullptr;
  check_view("select", "q", a.q, varlen);
  check_view("select", "k_cmp", a.k_cmp, varlen);
  if (a.lse_cmp == nullptr) throw UsageError("select: lse_cmp is a null pointer");
  if (reinterpret_cast<uintptr_t>(a.lse_cmp) % 4 != 0) throw UsageError("select: lse_cmp is not 4-byte aligned");
  if (a.lse_stride_t < 0 || (!varlen && a.lse_stride_b < 0))
    throw UsageError(fmt::format("select: lse_cmp strides (batch {}, sequence {}) must be non-negative",
                                 a.lse_stride_b, a.lse_stride_t));
  check_output("idx", a.idx);
  check_output("cnt", a.cnt);
  if (problem.H > 65535) throw UsageError(fmt::format("select: H = {} KV heads exceed the grid limit 65535", problem.H));

  Problem launch = problem;  // B and T as the grid sees them
  if (varlen) {
    if (problem.B != 1) throw UsageError(fmt::format("select: varlen needs B = 1 (got B = {})", problem.B));
    const auto& cu = a.cu_seqlens_host;
    const int64_t longest = check_cu_seqlens("select", cu, problem.T);
    if (cu.size() - 1 > 65535)
      throw UsageError(fmt::format("select: {} sequences exceed the grid limit 65535", cu.size() - 1));
    launch.B = static_cast<int64_t>(cu.size()) - 1;
    launch.T = std::max<int64_t>(longest, 1);
  } else {
    if (!a.cu_seqlens_host.empty()) throw UsageError("select: cu_seqlens_host is given but cu_seqlens is null");
    if (problem.B > 65535) throw UsageError(fmt::format("select: B = {} exceeds the grid limit 65535", problem.B));
  }

  if (config != nullptr) {
    for (const ParamDecl& d : family.params()) {
      const auto it = config->find(d.name);
      if (it == config->end() || std::find(d.domain.begin(), d.domain.end(), it->second) == d.domain.end())
        throw UsageError(fmt::format("select: tile config [{}] needs {} in {{{}}}", describe(*config), d.name,
                                     fmt::join(d.domain, ", ")));
    }
    if (config->size() != family.params().size())
      throw UsageError(fmt::format("select: tile config [{}] has parameters the family does not know", describe(*config)));
  }
  // The default config and the shared memory depend on the longest sequence; the compiled kernel does not.
  KernelSpec spec{&family, launch, config ? *config : resolve_config(family, problem, launch).config, "sm_90a"};
  if (auto why = family.reject(launch, spec.config, kHopperMaxSmemOptin))
    throw UsageError(fmt::format("select: tile config [{}] is not valid: {}", describe(spec.config), *why));
  const Kernel& kernel = runtime_kernel(spec);
  const LaunchGeometry g = family.geometry(launch, spec.config);

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

  // The kernel was loaded with the shared-memory limit of the first problem it served; a longer sequence needs
  // more. The limit only ever grows, so a concurrent launch of a shorter problem is never refused.
  static std::mutex mutex;
  {
    std::lock_guard<std::mutex> lock(mutex);
    const DriverApi& d = driver();
    int limit = 0;
    check_cu(d.cuFuncGetAttribute_(&limit, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, kernel.function()),
             "cuFuncGetAttribute(max dynamic shared memory)");
    if (g.smem_bytes > limit)
      check_cu(d.cuFuncSetAttribute_(kernel.function(), CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, g.smem_bytes),
               "cuFuncSetAttribute(max dynamic shared memory)");
  }
  kernel.launch(g.grid, g.block, g.smem_bytes, stream, &p);
}

}  // namespace nsajit
