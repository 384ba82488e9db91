#include "runtime/kernels.h"

#include <fmt/format.h>

#include <map>
#include <mutex>

#include "base/error.h"
#include "cache/cubin_cache.h"
#include "runtime/driver.h"
#include "runtime/phase_times.h"
#include "runtime/jit.h"

namespace nsajit {

const Kernel& runtime_kernel(const KernelSpec& spec) {
  static std::mutex mutex;
  static std::map<std::pair<CUcontext, std::string>, std::unique_ptr<Kernel>> loaded;
  CUcontext ctx = nullptr;
  check_cu(driver().cuCtxGetCurrent_(&ctx), "cuCtxGetCurrent");
  if (ctx == nullptr) throw Error("no current CUDA context: make one current on this thread before calling nsajit");
  // The geometry's shared memory depends only on the compiled parts of the spec, never on T or B.
  const int smem = spec.family->geometry(spec.problem, spec.config).smem_bytes;
  // Everything that reaches the compiled source: the family, its preamble and the arch.
  const std::string key = fmt::format("{}|{}|{}", spec.family->name(), spec.family->preamble(spec.problem, spec.config),
                                      spec.arch);
  std::lock_guard<std::mutex> lock(mutex);
  auto& slot = loaded[{ctx, key}];
  if (!slot) {
    static const CubinCache cache(CubinCache::default_dir());
    JitResult jit = jit_compile(spec, cache);
    PhaseTimer timer(Phase::module_load);
    slot = std::make_unique<Kernel>(jit.cubin, spec.family->entry_name(), smem);
  }
  return *slot;
}

}  // namespace nsajit
