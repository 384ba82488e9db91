// The nsajit command: a thin front over the library. Exit codes: 0 success, 1 failure, 2 usage error.
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <iostream>
#include <optional>

#include "cache/cubin_cache.h"
#include "cli/bench.h"
#include "codegen/codegen.h"
#include "codegen/family.h"
#include "codegen/problem.h"
#include "runtime/device.h"
#include "runtime/driver.h"
#include "runtime/error.h"
#include "runtime/jit.h"
#include "runtime/nvrtc_compiler.h"
#include "runtime/attn_fwd_api.h"
#include "tuner/inputs.h"
#include "tuner/timing.h"

namespace nsajit {
namespace {

// Integer flags: a clear message instead of CLI11's floating-point range text.
CLI::Validator integer_at_least(int64_t min) {
  return CLI::Validator(
      [min](std::string& value) -> std::string {
        try {
          size_t used = 0;
          const long long v = std::stoll(value, &used);
          if (used == value.size() && v >= min) return {};
        } catch (const std::exception&) {
        }
        return fmt::format("'{}' is not an integer >= {}", value, min);
      },
      fmt::format("INT>={}", min));
}
const CLI::Validator kPositive = integer_at_least(1);
const CLI::Validator kNonNegative = integer_at_least(0);

// Problem flags shared by every command that builds kernels: a preset, then any field overridden.
struct ProblemFlags {
  std::string preset = "paper";
  std::string dtype;
  int64_t batch = 0, seq = 0;
  int heads = 0, kv_heads = 0, group = 0, dk = 0, dv = 0, l = 0, d = 0, lsel = 0, n = 0, w = -1;
  double scale = 0;

  void add_to(CLI::App& app, bool with_seq = true) {
    app.add_option("--preset", preset, "Base problem: paper or fla (NSA.md)")->capture_default_str();
    app.add_option("--dtype", dtype, "bf16 or fp16");
    app.add_option("--batch", batch, "B, sequences per batch")->check(kPositive);
    if (with_seq) app.add_option("--seq", seq, "T, sequence length")->check(kPositive);
    app.add_option("--heads", heads, "HQ, query heads")->check(kPositive);
    app.add_option("--kv-heads", kv_heads, "H, KV heads")->check(kPositive);
    app.add_option("--group", group, "G = HQ / H (sets H from HQ)")->check(kPositive);
    app.add_option("--dk", dk, "head dim of q and k")->check(kPositive);
    app.add_option("--dv", dv, "head dim of v")->check(kPositive);
    app.add_option("--block-len,--l", l, "l, compression block length")->check(kPositive);
    app.add_option("--stride,--d", d, "d, compression stride")->check(kPositive);
    app.add_option("--sel-block,--lsel", lsel, "l', selection block length")->check(kPositive);
    app.add_option("--topn,--n", n, "n, selected blocks per query")->check(kPositive);
    app.add_option("--window,--w", w, "w, sliding window (0 disables)")->check(kNonNegative);
    app.add_option("--scale", scale, "softmax scale (default 1/sqrt(dk))")->check(CLI::PositiveNumber);
  }

  Problem build() const {
    Problem p = nsajit::preset(preset);
    if (!dtype.empty()) p.dtype = parse_dtype(dtype);
    if (batch) p.B = batch;
    if (seq) p.T = seq;
    if (heads) p.HQ = heads;
    if (kv_heads) p.H = kv_heads;
    if (group) {
      if (kv_heads) throw UsageError("give --group or --kv-heads, not both");
      if (p.HQ % group != 0)
        throw UsageError(fmt::format("bad --group {}: HQ = {} is not a multiple of it", group, p.HQ));
      p.H = p.HQ / group;
    }
    if (dk) p.dk = dk;
    if (dv) p.dv = dv;
    if (l) p.l = l;
    if (d) p.d = d;
    if (lsel) p.lsel = lsel;
    if (n) p.n = n;
    if (w >= 0) p.w = w;
    if (scale > 0) p.scale = scale;
    p.validate();
    return p;
  }
};

struct SpecFlags {
  std::string family;
  std::string arch;
  std::string tile;
  void add_to(CLI::App& app, bool family_required) {
    auto* f = app.add_option("--family", family, "Kernel family (see `nsajit families`)");
    if (family_required) f->required();
    app.add_option("--arch", arch, "Target GPU arch, e.g. sm_90a (default: the GPU's, else sm_90a)");
    app.add_option("--tile", tile, "Tile parameter overrides, e.g. BM=128,BN=32");
  }
};

std::string default_arch() {
  if (driver_available()) return query_device(0).arch();
  return "sm_90a";
}

KernelSpec make_spec(const KernelFamily& f, const Problem& p, const SpecFlags& s) {
  f.check_problem(p);
  KernelSpec spec{&f, p, apply_overrides(f, f.default_config(p), s.tile), s.arch.empty() ? default_arch() : s.arch};
  nvrtc_options(spec.arch);  // validates the arch
  return spec;
}

int max_smem_for(const std::string& arch) {
  if (driver_available()) return query_device(0).max_smem_optin;
  (void)arch;
  return kHopperMaxSmemOptin;
}

// ---- devices ------------------------------------------------------------------------------------------------------

int cmd_devices() {
  std::string why;
  fmt::print("NVRTC {}\n", nvrtc_version());
  if (!driver_available(&why)) {
    fmt::print("no GPU: {}\n", why);
    return 1;
  }
  const int n = device_count();
  for (int i = 0; i < n; ++i) {
    const DeviceInfo d = query_device(i);
    fmt::print("device {}: {}\n  compute capability {}.{} (arch {}), {} SMs, L2 {} MB, memory {:.1f} GiB, "
               "shared memory per block (opt-in) {} KB\n  driver {}.{}, NVRTC {}\n  fingerprint {}\n",
               i, d.name, d.cc_major, d.cc_minor, d.arch(), d.sm_count, d.l2_bytes >> 20,
               static_cast<double>(d.memory_bytes) / (1u << 30), d.max_smem_optin / 1024, d.driver_version / 1000,
               d.driver_version % 1000 / 10, d.nvrtc_version, d.fingerprint());
  }
  return 0;
}

// ---- families -----------------------------------------------------------------------------------------------------

int cmd_families() {
  for (const KernelFamily* f : families()) {
    fmt::print("{}\n  {}\n", f->name(), f->description());
    if (f->params().empty()) fmt::print("  (no tunable parameters)\n");
    for (const auto& p : f->params()) fmt::print("  {:<6} {{{}}}  {}\n", p.name, fmt::join(p.domain, ", "), p.help);
  }
  return 0;
}

// ---- emit ---------------------------------------------------------------------------------------------------------

int cmd_emit(const ProblemFlags& pf, const SpecFlags& sf, const std::string& out) {
  const KernelSpec spec = make_spec(find_family(sf.family), pf.build(), sf);
  const std::string text = generate_standalone(spec);
  if (out.empty() || out == "-") {
    std::cout << text;
    return 0;
  }
  std::ofstream f(out, std::ios::binary);
  if (!f || !(f << text) || !(f.flush())) throw Error(fmt::format("cannot write {}", out));
  fmt::print(stderr, "wrote {} ({})\nbuild: nvcc -std=c++17 -O2 -arch={} {} -o {}\n", out, spec.describe(),
             spec.arch, out, std::filesystem::path(out).stem().string());
  return 0;
}

// ---- compile and the compile sweep --------------------------------------------------------------------------------

void print_usage_row(const KernelSpec& spec, const JitOutcome& o) {
  if (!o.result) {
    fmt::print("  [{}] COMPILE ERROR\n{}\n", describe(spec.config), o.error);
    return;
  }
  const JitResult& r = *o.result;
  const LaunchGeometry g = spec.family->geometry(spec.problem, spec.config);
  fmt::print("  [{}] regs {:>3}  spill {:>4} B  smem {:>6} B  {}  key {}\n", describe(spec.config), r.usage.registers,
             r.usage.spill_store_bytes, g.smem_bytes + r.usage.static_smem_bytes,
             r.from_cache ? "cached     " : fmt::format("{:>6.2f} s   ", r.compile_seconds), r.key.substr(0, 16));
  if (!r.cache_problem.empty()) fmt::print("    note: replaced a bad cache entry: {}\n", r.cache_problem);
}

// Compiles the given specs in parallel with a live progress line; returns the outcomes in order.
std::vector<JitOutcome> compile_with_progress(const std::vector<KernelSpec>& specs, const CubinCache& cache) {
  const auto start = std::chrono::steady_clock::now();
  auto outcomes = jit_compile_all(specs, cache, 0, [&](size_t done, size_t total) {
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    fmt::print(stderr, "\r  compiling {}/{}  {:.1f} s", done, total, s);
    if (done == total) fmt::print(stderr, "\n");
  });
  return outcomes;
}

int cmd_compile(const ProblemFlags& pf, const SpecFlags& sf, bool all_configs) {
  const KernelFamily& f = find_family(sf.family);
  const KernelSpec base = make_spec(f, pf.build(), sf);
  const CubinCache cache(CubinCache::default_dir());
  std::vector<KernelSpec> specs;
  if (all_configs) {
    for (const SpacePoint& pt : enumerate_space(f, base.problem, max_smem_for(base.arch))) {
      if (pt.rejected) {
        fmt::print("  [{}] pruned: {}\n", describe(pt.config), *pt.rejected);
        continue;
      }
      specs.push_back({&f, base.problem, pt.config, base.arch});
    }
  } else {
    specs.push_back(base);
  }
  fmt::print("{} for {} on {} (cache {})\n", f.name(), base.problem.describe(), base.arch, cache.dir().string());
  const auto outcomes = compile_with_progress(specs, cache);
  int failures = 0;
  for (size_t i = 0; i < specs.size(); ++i) {
    print_usage_row(specs[i], outcomes[i]);
    failures += !outcomes[i].result;
  }
  return failures ? 1 : 0;
}

// Until the tuner exists (issue #4): every variant of every family compiled into the cache with its resource
// report; on a GPU each valid variant of a timed family is also timed, fastest first.
int cmd_tune(const ProblemFlags& pf, const std::vector<std::string>& family_names, const std::string& arch_flag) {
  const Problem p = pf.build();
  for (const std::string& name : family_names) find_family(name);  // a UsageError naming the families
  const std::string arch = arch_flag.empty() ? default_arch() : arch_flag;
  nvrtc_options(arch);
  const CubinCache cache(CubinCache::default_dir());
  std::string why;
  const bool gpu = driver_available(&why);
  fmt::print("nsajit tune: {} on {}\n", p.describe(), arch);
  if (!gpu) fmt::print("no GPU here ({}).\nCompiling every variant into the cache; timing needs a GPU.\n", why);
  int failures = 0;
  for (const KernelFamily* f : families()) {
    if (!family_names.empty() &&
        std::find(family_names.begin(), family_names.end(), std::string(f->name())) == family_names.end())
      continue;
    if (f->params().empty()) continue;  // reference kernels: nothing to tune
    f->check_problem(p);
    std::vector<KernelSpec> specs;
    size_t pruned = 0;
    fmt::print("\n{}: {}\n", f->name(), f->description());
    for (const SpacePoint& pt : enumerate_space(*f, p, max_smem_for(arch))) {
      if (pt.rejected) {
        fmt::print("  [{}] pruned: {}\n", describe(pt.config), *pt.rejected);
        ++pruned;
      } else {
        specs.push_back({f, p, pt.config, arch});
      }
    }
    const auto outcomes = compile_with_progress(specs, cache);
    int family_failures = 0;
    for (size_t i = 0; i < specs.size(); ++i) {
      print_usage_row(specs[i], outcomes[i]);
      family_failures += !outcomes[i].result;
    }
    failures += family_failures;
    fmt::print("  {} variants compiled, {} pruned, {} failed\n", specs.size() - family_failures, pruned,
               family_failures);
    if (!gpu || f->name() != "win_fwd") continue;
    Context ctx(0);
    const size_t q_n = static_cast<size_t>(p.B * p.T) * p.HQ * p.dk, k_n = static_cast<size_t>(p.B * p.T) * p.H * p.dk;
    const size_t v_n = static_cast<size_t>(p.B * p.T) * p.H * p.dv, o_n = static_cast<size_t>(p.B * p.T) * p.HQ * p.dv;
    DeviceBuffer q = random_device_tensor(q_n, p.dtype, 1), k = random_device_tensor(k_n, p.dtype, 2),
                 v = random_device_tensor(v_n, p.dtype, 3), o(o_n * 2), lse(static_cast<size_t>(p.B * p.T) * p.HQ * 4);
    AttnFwdArgs a;
    a.q = contiguous(q.get(), p.T, p.HQ, p.dk), a.k = contiguous(k.get(), p.T, p.H, p.dk);
    a.v = contiguous(v.get(), p.T, p.H, p.dv), a.o = contiguous(o.get(), p.T, p.HQ, p.dv);
    a.lse = static_cast<float*>(lse.get()), a.lse_stride_t = p.HQ, a.lse_stride_b = p.T * p.HQ;
    std::vector<std::pair<double, std::string>> times;
    const TileConfig def = f->default_config(p);
    double default_ms = 0;
    for (size_t i = 0; i < specs.size(); ++i) {
      if (!outcomes[i].result) continue;
      const TimingStats t = time_gpu([&](CUstream s) { win_fwd(p, a, s, &specs[i].config); }, 10, 30);
      times.push_back({t.median_ms, describe(specs[i].config)});
      if (specs[i].config == def) default_ms = t.median_ms;
      fmt::print("  [{}] {:.3f} ms\n", describe(specs[i].config), t.median_ms);
    }
    std::sort(times.begin(), times.end());
    if (!times.empty())
      fmt::print("  fastest [{}] {:.3f} ms; default [{}] {:.3f} ms (not stored: the tuning database is issue #4)\n",
                 times[0].second, times[0].first, describe(def), default_ms);
  }
  return failures ? 1 : 0;
}

// ---- cache --------------------------------------------------------------------------------------------------------

int cmd_cache(const std::string& action, bool repair) {
  const CubinCache cache(CubinCache::default_dir());
  if (action == "list") {
    const auto entries = cache.list();
    fmt::print("{} entries in {}\n", entries.size(), cache.dir().string());
    for (const auto& e : entries) {
      if (e.meta)
        fmt::print("{}  {:>8} B  regs {:>3}  {}\n", e.key.substr(0, 16), e.bytes, e.meta->registers, e.meta->spec);
      else
        fmt::print("{}  {:>8} B  BAD: {}\n", e.key.substr(0, 16), e.bytes, e.problem);
    }
    return 0;
  }
  if (action == "verify") {
    const auto bad = cache.verify(repair);
    for (const auto& e : bad)
      fmt::print("bad entry {}: {}{}\n", e.path.string(), e.problem, e.removed ? " (removed)" : "");
    fmt::print("{} bad entries in {}{}\n", bad.size(), cache.dir().string(),
               bad.empty() || repair ? "" : "; run `nsajit cache verify --repair` to remove them");
    const bool all_removed = std::all_of(bad.begin(), bad.end(), [](const auto& e) { return e.removed; });
    return bad.empty() || (repair && all_removed) ? 0 : 1;
  }
  const size_t n = cache.clear();
  fmt::print("removed {} entries from {}\n", n, cache.dir().string());
  return 0;
}

int run(int argc, char** argv) {
  CLI::App app{"nsajit: Native Sparse Attention kernels generated at run time (NVRTC + CUDA driver API)"};
  app.set_version_flag("--version", std::string(NSAJIT_VERSION));
  app.require_subcommand(1);

  auto* devices = app.add_subcommand("devices", "List the GPUs and their fingerprints");
  auto* fams = app.add_subcommand("families", "List the kernel families and their tunable parameters");

  ProblemFlags emit_pf, compile_pf, tune_pf, bench_pf;
  SpecFlags emit_sf, compile_sf;
  std::string emit_out;
  auto* emit = app.add_subcommand("emit", "Write a standalone .cu that nvcc builds into a self-checking program");
  emit_pf.add_to(*emit);
  emit_sf.add_to(*emit, true);
  emit->add_option("-o,--output", emit_out, "Output file (default: standard output)");

  bool all_configs = false;
  auto* compile = app.add_subcommand("compile", "Compile a kernel (or all its variants) into the cache and report resources");
  compile_pf.add_to(*compile);
  compile_sf.add_to(*compile, true);
  compile->add_flag("--all-configs", all_configs, "Every valid point of the family's tile space");

  std::vector<std::string> tune_families;
  std::string tune_arch;
  auto* tune = app.add_subcommand("tune", "Compile every variant (and time them on a GPU)");
  tune_pf.add_to(*tune);
  tune->add_option("--families", tune_families, "Families to sweep (default: all)")->delimiter(',');
  tune->add_option("--arch", tune_arch, "Target GPU arch (default: the GPU's, else sm_90a)");

  std::vector<int64_t> bench_seqs = {8192, 16384, 32768, 65536};
  std::string bench_json;
  auto* bench = app.add_subcommand(
      "bench", "Time the NSA forward on the GPU, per kernel and whole: median, TFLOP/s, GB/s, fraction of ceilings");
  bench_pf.add_to(*bench, false);
  bench->add_option("--seq", bench_seqs, "Sequence lengths, e.g. 8192,16384,32768,65536")
      ->delimiter(',')
      ->check(kPositive)
      ->capture_default_str();
  bench->add_option("--json", bench_json, "Also write the figures to this JSON file");

  std::string cache_action;
  bool repair = false;
  auto* cache = app.add_subcommand("cache", "Inspect the CUBIN cache");
  cache->add_option("action", cache_action, "list | verify | clear")
      ->required()
      ->check(CLI::IsMember({"list", "verify", "clear"}));
  cache->add_flag("--repair", repair, "With verify: remove the bad entries");

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    app.exit(e);
    return 2;
  }

  try {
    if (*devices) return cmd_devices();
    if (*fams) return cmd_families();
    if (*emit) return cmd_emit(emit_pf, emit_sf, emit_out);
    if (*compile) return cmd_compile(compile_pf, compile_sf, all_configs);
    if (*tune) return cmd_tune(tune_pf, tune_families, tune_arch);
    if (*bench) return run_forward_bench(bench_pf.build(), bench_seqs, bench_json);
    if (*cache) return cmd_cache(cache_action, repair);
  } catch (const UsageError& e) {
    fmt::print(stderr, "nsajit: {}\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    fmt::print(stderr, "nsajit: {}\n", e.what());
    return 1;
  }
  return 2;
}

}  // namespace
}  // namespace nsajit

int main(int argc, char** argv) { return nsajit::run(argc, argv); }
