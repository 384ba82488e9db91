#pragma once
// Spec -> CUBIN through the disk cache: generate the source, look it up by content, compile with NVRTC when
// absent or bad, store. Independent specs compile in parallel on LLVM's thread pool.
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "cache/cubin_cache.h"
#include "codegen/codegen.h"
#include "runtime/nvrtc_compiler.h"

namespace nsajit {

struct JitResult {
  std::string key;
  std::vector<char> cubin;
  ResourceUsage usage;
  bool from_cache = false;
  double compile_seconds = 0.0;  // 0 when from the cache
  std::string cache_problem;     // a bad entry found (and replaced) on the way, if any
};

JitResult jit_compile(const KernelSpec& spec, const CubinCache& cache);

// Compiles every spec, `threads` at a time (0: the hardware's concurrency). Results are in input order; a
// spec that fails to compile has its error message instead. `progress(done, total)` is called as each ends.
struct JitOutcome {
  std::optional<JitResult> result;
  std::string error;
};
std::vector<JitOutcome> jit_compile_all(const std::vector<KernelSpec>& specs, const CubinCache& cache,
                                        unsigned threads,
                                        const std::function<void(size_t, size_t)>& progress = nullptr);

}  // namespace nsajit
