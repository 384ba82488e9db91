// The nsajit command: a thin front over the library. Exit codes: 0 success, 1 failure, 2 usage error.
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <iostream>
#include <optional>
#include <tuple>

#include "cache/cubin_cache.h"
#include "cli/bench.h"
#include "cli/db_cmd.h"
#include "codegen/codegen.h"
#include "codegen/family.h"
#include "codegen/problem.h"
#include "runtime/device.h"
#include "runtime/driver.h"
#include "base/error.h"
#include "runtime/jit.h"
#include "runtime/nvrtc_compiler.h"
#include "runtime/attn_fwd_api.h"
#include "tuner/inputs.h"
#include "tuner/timing.h"
#include "db/db.h"
#include "db/keys.h"
#include "tuner/search.h"
#include "tuner/tuner.h"
#include "tuner/worker.h"

#include <charconv>
#include <unistd.h>

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

int max_smem_for(const std::string& arch) {
  if (driver_available()) return query_device(0).max_smem_optin;
  (void)arch;
  return kHopperMaxSmemOptin;
}

// The family's config for the problem with --tile's overrides, refused (naming the rule) where the tuner would prune
// it: a pruned point may not compile, may spill, or (IMPL=2's register split) may not run correctly.
KernelSpec make_spec(const KernelFamily& f, const Problem& p, const SpecFlags& s) {
  f.check_problem(p);
  const std::string arch = s.arch.empty() ? default_arch() : s.arch;
  nvrtc_options(arch);  // validates the arch
  KernelSpec spec{&f, p, apply_overrides(f, default_config_for(f, p, arch), s.tile), arch};
  std::optional<std::string> why = arch_reject(spec.config, spec.arch);
  if (!why) why = f.reject(p, spec.config, max_smem_for(arch));
  if (why)
    throw UsageError(fmt::format("{} [{}] for {}: {} (`nsajit compile --all-configs` lists the valid points)",
                                 f.name(), describe(spec.config), p.describe(), *why));
  return spec;
}

// ---- devices ------------------------------------------------------------------------------------------------------

int cmd_devices() {
  std::string why;
  fmt::print("NVRTC {} ({})\n", nvrtc_version(), nvrtc_library());
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
    for (const SpacePoint& pt : enumerate_space(f, base.problem, max_smem_for(base.arch), base.arch)) {
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

// ---- tune -------------------------------------------------------------------------------------------------------

struct TuneFlags {
  std::vector<int64_t> seqs;
  std::vector<std::string> families;
  std::string strategy = "halving";
  std::string budget;
  std::string devices = "0";
  std::string shard;
  std::string db;
  double timeout_s = 30;
  uint64_t seed = 1;
  std::string inputs = "coherent";
};

std::vector<int> parse_devices(const std::string& s) {
  std::vector<int> out;
  if (s == "all") {
    const int n = device_count();
    for (int i = 0; i < n; ++i) out.push_back(i);
    return out;
  }
  const int n = device_count();
  size_t pos = 0;
  while (pos <= s.size()) {
    const size_t comma = s.find(',', pos);
    const std::string item = s.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
    int v = -1;
    const auto [ptr, ec] = std::from_chars(item.data(), item.data() + item.size(), v);
    if (item.empty() || ec != std::errc() || ptr != item.data() + item.size() || v < 0)
      throw UsageError(fmt::format("bad --devices '{}': expected GPU ordinals such as 0,1 or 'all'", s));
    if (v >= n) throw UsageError(fmt::format("bad --devices: GPU {} does not exist ({} GPUs here)", v, n));
    if (std::find(out.begin(), out.end(), v) != out.end())
      throw UsageError(fmt::format("bad --devices: GPU {} is listed twice", v));
    out.push_back(v);
    if (comma == std::string::npos) break;
    pos = comma + 1;
  }
  return out;
}

std::string self_exe() {
  std::error_code ec;
  const auto p = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (ec) throw Error(fmt::format("cannot find the nsajit binary (/proc/self/exe): {}", ec.message()));
  return p.string();
}

int cmd_tune(const ProblemFlags& pf, const TuneFlags& tf) {
  TuneOptions o;
  // Validate everything a user can get wrong before touching the GPU.
  const Problem base = pf.build();
  if (tf.seqs.empty()) {
    o.problems.push_back(base);
  } else {
    for (int64_t T : tf.seqs) {
      Problem p = base;
      p.T = T;
      p.validate();
      o.problems.push_back(p);
    }
  }
  o.families = tf.families;
  for (const std::string& n : o.families)
    if (n != "fwd" && n != "bwd") find_family(n);
  o.search.strategy = parse_strategy(tf.strategy);
  if (!tf.budget.empty()) o.search.budget = parse_budget(tf.budget);
  o.search.seed = tf.seed;
  if (!tf.shard.empty()) std::tie(o.shard_index, o.shard_count) = parse_shard(tf.shard);
  o.db_path = tf.db.empty() ? default_db_path() : std::filesystem::path(tf.db);
  o.timeout_s = tf.timeout_s;
  o.inputs = parse_input_kind(tf.inputs);
  o.live_progress = ::isatty(2);
  std::string why;
  if (!driver_available(&why)) {
    fmt::print(stderr, "nsajit tune needs a GPU to measure on: {}\n(`nsajit compile --all-configs` compiles a "
               "family's whole space without one.)\n", why);
    return 1;
  }
  o.devices = parse_devices(tf.devices);
  o.worker_exe = self_exe();
  fmt::print("nsajit tune: {} inputs, strategy {}, budget {}, database {}{}\n", input_kind_name(o.inputs),
             strategy_name(o.search.strategy), tf.budget.empty() ? "none" : tf.budget, o.db_path.string(),
             o.shard_count > 1 ? fmt::format(", shard {}/{}", o.shard_index, o.shard_count) : "");
  const TuneReport r = run_tune(o);
  // The speed-up is over the default config on the same inputs (a data-dependent family: the default of the
  // overlap bucket it was tuned for).
  fmt::print("\n{:<9} {:<12} {:<8} {:<7} {:>6} {:>6} {:>6} {:>6}  {:<34} {:>10} {:>10} {:>8}\n", "family",
             "problem (T)", "inputs", "overlap", "space", "pruned", "meas.", "reused", "best config", "best ms",
             "default ms", "speed-up");
  int missing = 0;
  for (const FamilyTuneResult& f : r.results) {
    const Problem p = parse_problem(f.problem);
    const std::string overlap = f.overlap.empty() ? "-" : f.overlap;
    if (f.best_config.empty()) {
      ++missing;
      fmt::print("{:<9} T={:<10} {:<8} {:<7} {:>6} {:>6} {:>6} {:>6}  no result: {}\n", f.family, p.T, f.inputs,
                 overlap, f.space, f.pruned, f.measured, f.reused, f.note);
      continue;
    }
    fmt::print("{:<9} T={:<10} {:<8} {:<7} {:>6} {:>6} {:>6} {:>6}  {:<34} {:>10.4f} {:>10} {:>8}\n", f.family, p.T,
               f.inputs, overlap, f.space, f.pruned, f.measured, f.reused, f.best_config, f.best_ms,
               f.default_ms > 0 ? fmt::format("{:.4f}", f.default_ms) : "-",
               f.default_ms > 0 ? fmt::format("{:.2f}x", f.default_ms / f.best_ms) : "-");
  }
  fmt::print("done in {:.1f} s; results in {}\n", r.seconds, o.db_path.string());
  return missing ? 1 : 0;
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

  TuneFlags tf;
  auto* tune = app.add_subcommand("tune", "Autotune kernel variants on the GPU and store the fastest correct ones");
  tune_pf.add_to(*tune, false);
  tune->add_option("--seq", tf.seqs, "Sequence lengths to tune, e.g. 16384,65536 (default: the preset's)")
      ->delimiter(',')
      ->check(kPositive);
  tune->add_option("--families", tf.families,
                   "Families to tune (default: pool, cmp_fwd, select, slc_fwd, win_fwd; `fwd` and `bwd` name the "
                   "forward's and the backward's: cmp_bwd_dq, cmp_bwd_dkv, slc_bwd_dq, slc_bwd_dkv, win_bwd_dq, "
                   "win_bwd_dkv; decode: one decode step of --batch sequences over a full cache of --seq tokens, "
                   "keyed by B and the cache's T bucket)")
      ->delimiter(',');
  tune->add_option("--strategy", tf.strategy, "exhaustive | random | halving (successive halving)")
      ->capture_default_str();
  tune->add_option("--budget", tf.budget, "Per family and problem: N trials, or a total time such as 3m or 90s");
  tune->add_option("--shard", tf.shard,
                   "I/N: this job's share of a sweep split over N machines (each family's points I, I+N, ... and "
                   "the default); merge the databases with `nsajit db export` / `nsajit db import`");
  tune->add_option("--devices", tf.devices, "GPUs to measure on: 0,1 or all (each GPU takes whole tasks; one task's trials are shared out)")
      ->capture_default_str();
  tune->add_option("--db", tf.db, "Tuning database (default: $NSAJIT_DB, else $XDG_DATA_HOME/nsajit/tuning.db)");
  tune->add_option("--timeout", tf.timeout_s, "Seconds before a measurement is declared hung")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  tune->add_option("--seed", tf.seed, "Seed of the random strategy")->capture_default_str();
  tune->add_option("--inputs", tf.inputs,
                   "Queries to measure on: coherent (the queries of each l'-token span share a base vector: "
                   "neighbours select alike, as in a trained model) or random (every element N(0, 1)); recorded "
                   "with each result, and slc_fwd's result is stored under the overlap bucket of its selection")
      ->check(CLI::IsMember({"coherent", "random"}))
      ->capture_default_str();

  int worker_device = 0;
  auto* worker = app.add_subcommand("tune-worker", "");  // internal: the tuner's measuring process
  worker->add_option("--device", worker_device)->required();
  worker->group("");

  std::vector<int64_t> bench_seqs = {8192, 16384, 32768, 65536};
  std::string bench_json, bench_pass = "fwd", bench_inputs = "coherent";
  auto* bench = app.add_subcommand(
      "bench", "Time the NSA forward and/or backward on the GPU, per kernel and whole: median, TFLOP/s, GB/s, "
               "fraction of ceilings");
  bench->add_option("--pass", bench_pass, "fwd (the forward's kernels), bwd (the backward's), fwd+bwd (both, "
                                          "and a training step: forward saving what the backward needs, then "
                                          "backward), or decode (one step over a paged cache of --seq tokens per "
                                          "sequence, --batch sequences, --tq query tokens each)")
      ->check(CLI::IsMember({"fwd", "bwd", "fwd+bwd", "decode"}))
      ->capture_default_str();
  bench->add_option("--inputs", bench_inputs,
                    "coherent (the queries of each l'-token span share a base vector: neighbours select alike, as in "
                    "a trained model) or random (every element N(0, 1), as fla's benchmark); the overlap of "
                    "neighbouring selections is printed")
      ->check(CLI::IsMember({"coherent", "random"}))
      ->capture_default_str();
  bench_pf.add_to(*bench, false);
  bench->add_option("--seq", bench_seqs, "Sequence lengths, e.g. 8192,16384,32768,65536")
      ->delimiter(',')
      ->check(kPositive)
      ->capture_default_str();
  bench->add_option("--json", bench_json, "Also write the figures to this JSON file");
  int bench_tq = 1;
  std::string bench_tile;
  bench->add_option("--tile", bench_tile, "With --pass decode: the decode kernel's config overrides, e.g. MMA=1");
  bench->add_option("--tq", bench_tq, "With --pass decode: query tokens per sequence (1 .. 16)")
      ->check(CLI::Range(1, 16))
      ->capture_default_str();

  std::string cache_action;
  bool repair = false;
  auto* cache = app.add_subcommand("cache", "Inspect the CUBIN cache");
  cache->add_option("action", cache_action, "list | verify | clear")
      ->required()
      ->check(CLI::IsMember({"list", "verify", "clear"}));
  cache->add_flag("--repair", repair, "With verify: remove the bad entries");

  const std::unique_ptr<DbCommand> db = add_db_command(app);

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
    if (*tune) return cmd_tune(tune_pf, tf);
    if (*worker) return run_worker(worker_device);
    if (*bench) {
      const InputKind kind = parse_input_kind(bench_inputs);
      if (bench_pass == "fwd") return run_forward_bench(bench_pf.build(), bench_seqs, bench_json, kind);
      if (bench_pass == "decode") {
        const Problem p = bench_pf.build();
        const KernelFamily& f = find_family("decode");
        std::optional<TileConfig> cfg;
        if (!bench_tile.empty()) cfg = apply_overrides(f, f.default_config(p), bench_tile);
        return run_decode_bench(p, bench_seqs, bench_tq, bench_json, cfg ? &*cfg : nullptr);
      }
      return run_backward_bench(bench_pf.build(), bench_seqs, bench_json, bench_pass == "fwd+bwd", kind);
    }
    if (*cache) return cmd_cache(cache_action, repair);
    if (db->parsed()) return db->run();
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
