#include "runtime/jit.h"

#include <llvm/Support/ThreadPool.h>

#include <atomic>
#include <mutex>

#include "base/error.h"
#include "runtime/phase_times.h"

namespace nsajit {

JitResult jit_compile(const KernelSpec& spec, const CubinCache& cache) {
  std::optional<PhaseTimer> timer(std::in_place, Phase::source_and_key);
  const std::string source = generate_source(spec);
  const std::vector<std::string> options = nvrtc_options(spec.arch);
  const std::string version = nvrtc_version();
  JitResult out;
  out.key = cubin_cache_key(source, options, spec.arch, version);
  timer.emplace(Phase::cache_read);
  auto hit = cache.load(out.key, &out.cache_problem);
  timer.reset();
  if (hit) {
    out.cubin = std::move(hit->cubin);
    out.usage.registers = hit->meta.registers;
    out.usage.spill_store_bytes = hit->meta.spill_bytes;
    out.usage.static_smem_bytes = hit->meta.shared_bytes;
    out.usage.parsed = true;
    out.from_cache = true;
    return out;
  }
  timer.emplace(Phase::compile);
  CompileResult c = compile_cubin(source, std::string(spec.family->name()) + ".cu", spec.arch);
  timer.reset();
  out.cubin = std::move(c.cubin);
  out.usage = c.usage;
  out.compile_seconds = c.seconds;
  CubinMeta meta;
  meta.family = std::string(spec.family->name());
  meta.spec = spec.describe();
  meta.arch = spec.arch;
  meta.nvrtc_version = version;
  meta.registers = out.usage.registers;
  meta.spill_bytes = out.usage.spill_store_bytes;
  meta.shared_bytes = out.usage.static_smem_bytes;
  cache.store(out.key, out.cubin, meta);
  return out;
}

std::vector<JitOutcome> jit_compile_all(const std::vector<KernelSpec>& specs, const CubinCache& cache,
                                        unsigned threads, const std::function<void(size_t, size_t)>& progress) {
  std::vector<JitOutcome> out(specs.size());
  std::atomic<size_t> done{0};
  std::mutex progress_mutex;
  {
    llvm::DefaultThreadPool pool(threads == 0 ? llvm::hardware_concurrency() : llvm::hardware_concurrency(threads));
    for (size_t i = 0; i < specs.size(); ++i) {
      pool.async([&, i] {
        try {
          out[i].result = jit_compile(specs[i], cache);
        } catch (const std::exception& e) {
          out[i].error = e.what();
        }
        const size_t n = ++done;
        if (progress) {
          std::lock_guard<std::mutex> lock(progress_mutex);
          progress(n, specs.size());
        }
      });
    }
    pool.wait();
  }
  return out;
}

}  // namespace nsajit
