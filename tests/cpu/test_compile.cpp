// NVRTC compiles for sm_90a (no GPU needed): every valid win_fwd config per supported head dim, the default config
// for every dtype x head dim x G, the reference kernel; the ptxas report; the disk cache on the jit path
// (hits, corrupted entries); the compile error message; the arch option set.
#include <doctest/doctest.h>
#include <stdlib.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <map>
#include <optional>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "base/error.h"
#include "cache/cubin_cache.h"
#include "codegen/codegen.h"
#include "codegen/family.h"
#include "codegen/problem.h"
#include "runtime/jit.h"
#include "runtime/nvrtc_compiler.h"
#include "runtime/phase_times.h"

namespace fs = std::filesystem;
using nsajit::Dtype;
using nsajit::KernelSpec;
using nsajit::Problem;
using nsajit::TileConfig;

namespace {

bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

#define CHECK_CONTAINS(haystack, needle) \
  CHECK_MESSAGE(contains((haystack), (needle)), "expected \"" << (needle) << "\" in:\n" << (haystack))

// A fresh directory, removed afterwards; NSAJIT_CACHE_DIR points at it meanwhile so nothing here can touch the
// user's cache.
struct TempCacheDir {
  fs::path path;
  std::optional<std::string> saved_env;
  TempCacheDir() {
    std::string model = (fs::temp_directory_path() / "nsajit-compile-test-XXXXXX").string();
    REQUIRE(mkdtemp(model.data()) != nullptr);
    path = model;
    if (const char* v = std::getenv("NSAJIT_CACHE_DIR")) saved_env = v;
    setenv("NSAJIT_CACHE_DIR", path.c_str(), 1);
  }
  ~TempCacheDir() {
    if (saved_env)
      setenv("NSAJIT_CACHE_DIR", saved_env->c_str(), 1);
    else
      unsetenv("NSAJIT_CACHE_DIR");
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  TempCacheDir(const TempCacheDir&) = delete;
  TempCacheDir& operator=(const TempCacheDir&) = delete;
};

bool is_elf(const std::vector<char>& bytes) {
  return bytes.size() > 4 && bytes[0] == 0x7f && bytes[1] == 'E' && bytes[2] == 'L' && bytes[3] == 'F';
}

const std::vector<std::pair<int, int>> kHeadDims = {{64, 64}, {128, 128}, {192, 128}, {256, 256}};
// Group sizes (G = HQ / H) the families are compiled for: the small ones, the paper's 16, and MQA-like 48, 64, 128.
// Every dtype and head-dim pair gets 1, 3 (odd: padded MMA rows), 16 (the rows filled exactly) and 128 (a position
// spanning warps); the others only with bf16 (128, 128), which keeps CI's compile time in bounds (each kernel is a
// second or two of NVRTC on CI's two cores).
const int kGroupSizes[] = {1, 2, 3, 4, 8, 16, 32, 48, 64, 128};
std::vector<int> group_sizes(Dtype dtype, int dk, int dv) {
  if (dtype == Dtype::bf16 && dk == 128 && dv == 128) return {std::begin(kGroupSizes), std::end(kGroupSizes)};
  return {1, 3, 16, 128};
}
size_t total_group_sizes() {
  size_t n = 0;
  for (Dtype dtype : {Dtype::bf16, Dtype::fp16})
    for (auto [dk, dv] : std::vector<std::pair<int, int>>{{64, 64}, {128, 128}, {192, 128}, {256, 256}})
      n += group_sizes(dtype, dk, dv).size();
  return n;
}

Problem problem_for(Dtype dtype, int dk, int dv, int G) {
  Problem p = nsajit::preset("fla");
  p.dtype = dtype;
  p.dk = dk, p.dv = dv;
  p.H = 4, p.HQ = 4 * G;
  return p;
}

struct Planned {
  KernelSpec spec;
  bool is_default = false;
};

// A real ptxas -v report from NVRTC 13 (win_fwd, dk = dv = 256, default config), its spill loads changed so that
// stores and loads differ.
const char* const kReportWithSpills =
    "ptxas info    : 46 bytes gmem\n"
    "ptxas info    : Compiling entry function 'nsa_win_fwd' for 'sm_90a'\n"
    "ptxas info    : Function properties for nsa_win_fwd\n"
    "ptxas         .     80 bytes stack frame, 76 bytes spill stores, 92 bytes spill loads\n"
    "ptxas info    : Used 255 registers, used 1 barriers, 80 bytes cumulative stack size\n"
    "ptxas info    : Compile time = 533.436 ms\n";

const char* const kReportClean =
    "ptxas info    : Compiling entry function 'nsa_win_fwd_ref' for 'sm_90a'\n"
    "ptxas info    : Function properties for nsa_win_fwd_ref\n"
    "ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n"
    "ptxas info    : Used 40 registers, used 1 barriers, 4096 bytes smem, 400 bytes cmem[0]\n";

}  // namespace

TEST_CASE("compile: every win_fwd config and default, every dtype x head dim x G, and win_fwd_ref, for sm_90a") {
  TempCacheDir dir;
  const nsajit::CubinCache cache(dir.path);
  const nsajit::KernelFamily& win = nsajit::find_family("win_fwd");
  const nsajit::KernelFamily& ref = nsajit::find_family("win_fwd_ref");

  // Planned specs, deduplicated by source (the default config of bf16 G=16 is also one of the sweep's points).
  std::vector<Planned> plan;
  std::map<std::string, size_t> by_source;
  auto add = [&](const KernelSpec& spec, bool is_default) {
    const auto [it, inserted] = by_source.emplace(nsajit::generate_source(spec), plan.size());
    if (inserted)
      plan.push_back({spec, is_default});
    else
      plan[it->second].is_default |= is_default;
  };
  size_t sweep_points = 0, sweep_valid = 0;
  for (auto [dk, dv] : kHeadDims) {
    const Problem p = problem_for(Dtype::bf16, dk, dv, 16);
    REQUIRE_NOTHROW(win.check_problem(p));
    for (const nsajit::SpacePoint& pt : nsajit::enumerate_space(win, p, nsajit::kHopperMaxSmemOptin)) {
      ++sweep_points;
      if (pt.rejected) continue;
      ++sweep_valid;
      add({&win, p, pt.config, "sm_90a"}, pt.config == win.default_config(p));
    }
  }
  size_t space_size = 1;
  for (const auto& decl : win.params()) space_size *= decl.domain.size();
  CHECK(sweep_points == kHeadDims.size() * space_size);
  CHECK(sweep_valid >= kHeadDims.size());  // at least the defaults
  for (Dtype dtype : {Dtype::bf16, Dtype::fp16}) {
    for (auto [dk, dv] : kHeadDims) {
      for (int G : group_sizes(dtype, dk, dv)) {
        const Problem p = problem_for(dtype, dk, dv, G);
        REQUIRE_NOTHROW(win.check_problem(p));
        add({&win, p, win.default_config(p), "sm_90a"}, true);
      }
    }
  }
  for (auto [dk, dv] : kHeadDims) {
    const Problem p = problem_for(Dtype::bf16, dk, dv, 16);
    add({&ref, p, ref.default_config(p), "sm_90a"}, true);
  }
  // The sweep's points, the defaults it did not hold already (all but bf16 G=16), the reference kernels.
  CHECK(plan.size() == sweep_valid + total_group_sizes() - kHeadDims.size() + kHeadDims.size());

  std::vector<KernelSpec> specs;
  for (const Planned& pl : plan) specs.push_back(pl.spec);
  size_t last_done = 0;
  bool progress_in_order = true;
  const auto start = std::chrono::steady_clock::now();
  const std::vector<nsajit::JitOutcome> outcomes =
      nsajit::jit_compile_all(specs, cache, 0, [&](size_t done, size_t total) {
        progress_in_order &= done == last_done + 1 && total == specs.size();
        last_done = done;
      });
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  MESSAGE(specs.size() << " NVRTC compiles for sm_90a (" << sweep_valid << " of the " << sweep_points
                       << " sweep points valid) in " << seconds << " s");
  REQUIRE(outcomes.size() == specs.size());
  CHECK(progress_in_order);
  CHECK(last_done == specs.size());

  std::string spilling_defaults, spilling_sweep_points;
  size_t compiled = 0;
  for (size_t i = 0; i < specs.size(); ++i) {
    const nsajit::JitOutcome& o = outcomes[i];
    INFO(specs[i].describe(), std::string(plan[i].is_default ? " (default config)" : ""));
    CHECK_MESSAGE(o.result.has_value(), o.error);
    if (!o.result) continue;
    ++compiled;
    const nsajit::JitResult& r = *o.result;
    CHECK(!r.from_cache);  // the batch holds no duplicates and the directory started empty
    CHECK(r.cache_problem.empty());
    CHECK(nsajit::is_cubin_cache_key(r.key));
    CHECK(is_elf(r.cubin));
    CHECK(r.usage.parsed);
    CHECK(r.usage.registers > 0);
    CHECK(r.usage.registers <= 255);
    const bool spills = r.usage.spill_store_bytes > 0 || r.usage.spill_load_bytes > 0;
    const std::string spill_line = "\n  " + specs[i].describe() + ": " + std::to_string(r.usage.registers) +
                                   " registers, " + std::to_string(r.usage.spill_store_bytes) + " B spill stores, " +
                                   std::to_string(r.usage.spill_load_bytes) + " B spill loads";
    if (plan[i].is_default) {
      // The design expects no spills from a default config.
      CHECK_MESSAGE(!spills, "default config spills: " << spill_line);
      if (spills) spilling_defaults += spill_line;
    } else if (spills) {
      spilling_sweep_points += spill_line;
    }
  }
  if (!spilling_defaults.empty())
    MESSAGE("DEFAULT configs that spill (each is a failed check above):" << spilling_defaults);
  if (!spilling_sweep_points.empty()) MESSAGE("non-default configs that spill (allowed):" << spilling_sweep_points);
  CHECK(compiled == specs.size());
  // Everything compiled is in the cache, one entry per spec.
  CHECK(cache.list().size() == specs.size());
}

TEST_CASE("compile: a second jit_compile comes from the cache; a corrupted entry is reported and recompiled") {
  TempCacheDir dir;
  const nsajit::CubinCache cache(dir.path);
  const nsajit::KernelFamily& f = nsajit::find_family("win_fwd");
  const Problem p = nsajit::preset("fla");
  const KernelSpec spec{&f, p, f.default_config(p), "sm_90a"};

  const nsajit::JitResult first = nsajit::jit_compile(spec, cache);
  CHECK(!first.from_cache);
  CHECK(first.compile_seconds > 0.0);
  CHECK(first.cache_problem.empty());
  REQUIRE(is_elf(first.cubin));
  REQUIRE(fs::exists(cache.entry_path(first.key)));
  // The key is that of the source, options, arch and NVRTC version.
  CHECK(first.key == nsajit::cubin_cache_key(nsajit::generate_source(spec), nsajit::nvrtc_options("sm_90a"), "sm_90a",
                                             nsajit::nvrtc_version()));

  SUBCASE("hit, also through another cache object on the same directory") {
    for (int round = 0; round < 2; ++round) {
      const nsajit::CubinCache other(dir.path);
      const nsajit::JitResult again = nsajit::jit_compile(spec, round == 0 ? cache : other);
      CHECK(again.from_cache);
      CHECK(again.compile_seconds == 0.0);
      CHECK(again.cache_problem.empty());
      CHECK(again.key == first.key);
      CHECK(again.cubin == first.cubin);
      CHECK(again.usage.registers == first.usage.registers);
      CHECK(again.usage.spill_store_bytes == first.usage.spill_store_bytes);
      CHECK(again.usage.static_smem_bytes == first.usage.static_smem_bytes);
    }
    // The stored metadata describes the compile.
    const auto entries = cache.list();
    REQUIRE(entries.size() == 1);
    REQUIRE(entries[0].meta);
    CHECK(entries[0].meta->family == "win_fwd");
    CHECK(entries[0].meta->spec == spec.describe());
    CHECK(entries[0].meta->arch == "sm_90a");
    CHECK(entries[0].meta->nvrtc_version == nsajit::nvrtc_version());
    CHECK(entries[0].meta->registers == first.usage.registers);
  }

  SUBCASE("a flipped payload byte") {
    const fs::path entry = cache.entry_path(first.key);
    {
      std::fstream file(entry, std::ios::in | std::ios::out | std::ios::binary);
      file.seekg(-1, std::ios::end);
      char c = 0;
      file.get(c);
      file.seekp(-1, std::ios::end);
      file.put(static_cast<char>(c ^ 0x5a));
      REQUIRE(file.good());
    }
    const nsajit::JitResult redone = nsajit::jit_compile(spec, cache);
    CHECK(!redone.from_cache);
    CHECK_CONTAINS(redone.cache_problem, entry.string());
    CHECK_CONTAINS(redone.cache_problem, "checksum mismatch");
    CHECK(redone.cubin == first.cubin);  // NVRTC is deterministic
    // Replaced by a good entry.
    const nsajit::JitResult after = nsajit::jit_compile(spec, cache);
    CHECK(after.from_cache);
    CHECK(after.cache_problem.empty());
    CHECK(after.cubin == first.cubin);
    CHECK(cache.verify(false).empty());
  }

  SUBCASE("a truncated entry") {
    const fs::path entry = cache.entry_path(first.key);
    fs::resize_file(entry, 100);
    const nsajit::JitResult redone = nsajit::jit_compile(spec, cache);
    CHECK(!redone.from_cache);
    CHECK_CONTAINS(redone.cache_problem, "truncated");
    CHECK(redone.cubin == first.cubin);
    CHECK(fs::file_size(entry) > 100);
  }
}

TEST_CASE("compile: parse_ptxas_report") {
  SUBCASE("with spills") {
    const nsajit::ResourceUsage u = nsajit::parse_ptxas_report(kReportWithSpills);
    CHECK(u.parsed);
    CHECK(u.registers == 255);
    CHECK(u.stack_bytes == 80);
    CHECK(u.spill_store_bytes == 76);
    CHECK(u.spill_load_bytes == 92);
    CHECK(u.static_smem_bytes == 0);
  }
  SUBCASE("without spills, with static shared memory") {
    const nsajit::ResourceUsage u = nsajit::parse_ptxas_report(kReportClean);
    CHECK(u.parsed);
    CHECK(u.registers == 40);
    CHECK(u.stack_bytes == 0);
    CHECK(u.spill_store_bytes == 0);
    CHECK(u.spill_load_bytes == 0);
    CHECK(u.static_smem_bytes == 4096);
  }
  SUBCASE("no report") {
    const nsajit::ResourceUsage u = nsajit::parse_ptxas_report("");
    CHECK(!u.parsed);
    CHECK(u.registers == -1);
    CHECK(!nsajit::parse_ptxas_report("ptxas info    : 0 bytes gmem\n").parsed);
  }
}

TEST_CASE("compile: a failed compile names the options and shows the numbered source with a marker") {
  const std::string source =
      "// broken on purpose\n"
      "extern \"C\" __global__ void k(int* p) {\n"
      "  int a = 1;\n"
      "  p[0] = a;\n"
      "  this_is_not_declared = 3;\n"
      "  p[1] = a;\n"
      "  p[2] = a;\n"
      "  p[3] = a;\n"
      "  p[4] = a;\n"
      "}\n";
  std::string message;
  try {
    (void)nsajit::compile_cubin(source, "broken.cu", "sm_90a");
  } catch (const nsajit::UsageError& e) {
    FAIL("a compile error is not a usage error: " << e.what());
  } catch (const nsajit::Error& e) {
    message = e.what();
  }
  REQUIRE(!message.empty());
  CHECK_CONTAINS(message, "NVRTC could not compile broken.cu");
  for (const std::string& option : nsajit::nvrtc_options("sm_90a")) CHECK_CONTAINS(message, option);
  CHECK_CONTAINS(message, "--gpu-architecture=sm_90a");
  CHECK_CONTAINS(message, "this_is_not_declared");  // the log
  CHECK_CONTAINS(message, "source around line 5");
  CHECK_CONTAINS(message, "  >    5 |   this_is_not_declared = 3;");
  CHECK_CONTAINS(message, "       2 | extern \"C\" __global__ void k(int* p) {");
  CHECK_CONTAINS(message, "       8 |   p[3] = a;");
  CHECK(!contains(message, "   9 |"));  // three lines of context either side
  CHECK(!contains(message, "   1 |"));

  SUBCASE("format_compile_error on a given log") {
    const std::string src = "one\ntwo\nthree\nfour\nfive\n";
    const std::string m = nsajit::format_compile_error("x.cu", {"--opt-a", "--opt-b"},
                                                       "x.cu(2): catastrophic error: cannot open source file "
                                                       "\"nope.h\"\nx.cu(5): error: oops\nx.cu(2): error: again\n",
                                                       src);
    CHECK_CONTAINS(m, "  options: --opt-a --opt-b");
    CHECK_CONTAINS(m, "  >    2 | two");
    CHECK_CONTAINS(m, "  >    5 | five");
    CHECK_CONTAINS(m, "       1 | one");
    // Line 2 is shown once although two errors point at it.
    const size_t at = m.find("source around line 2");
    REQUIRE(at != std::string::npos);
    CHECK(m.find("source around line 2", at + 1) == std::string::npos);
    // A line number past the end of the source shows no lines rather than crashing.
    const std::string past = nsajit::format_compile_error("x.cu", {}, "x.cu(40): error: far\n", src);
    CHECK_CONTAINS(past, "source around line 40");
    CHECK(!contains(past, "| five"));
  }
}

TEST_CASE("compile: nvrtc_options takes real GPU archs only") {
  const std::vector<std::string> opts = nsajit::nvrtc_options("sm_90a");
  CHECK(std::find(opts.begin(), opts.end(), "--gpu-architecture=sm_90a") != opts.end());
  CHECK(std::find(opts.begin(), opts.end(), "--ptxas-options=-v") != opts.end());
  CHECK(opts == nsajit::nvrtc_options("sm_90a"));  // fixed per arch: it is part of the cache key
  CHECK(opts != nsajit::nvrtc_options("sm_80"));
  CHECK_NOTHROW(nsajit::nvrtc_options("sm_86"));
  for (const char* bad : {"sm_75", "compute_90", "banana", "", "sm_90b", "sm_"}) {
    CAPTURE(bad);
    std::string message;
    try {
      (void)nsajit::nvrtc_options(bad);
    } catch (const nsajit::UsageError& e) {
      message = e.what();
    }
    CHECK_CONTAINS(message, std::string("bad arch '") + bad + "'");
  }
  const std::string version = nsajit::nvrtc_version();
  CHECK(version.find('.') != std::string::npos);
  CHECK(version.size() >= 3);
}

TEST_CASE("compile: the default config of every forward family over the supported matrix, for sm_90a") {
  TempCacheDir dir;
  const nsajit::CubinCache cache(dir.path);
  std::vector<KernelSpec> specs;
  std::map<std::string, size_t> seen;  // by source: G and the blocking reach only some families' sources
  // The default, and a data-dependent family's default of each overlap bucket (valid for the problem too).
  auto add = [&](const nsajit::KernelFamily& f, const Problem& p) {
    REQUIRE_NOTHROW(f.check_problem(p));
    std::vector<TileConfig> configs = {f.default_config(p)};
    if (f.overlap_dependent())
      for (nsajit::OverlapBucket b : nsajit::kAllOverlapBuckets) configs.push_back(f.bucket_default_config(p, b));
    for (const TileConfig& c : configs) {
      INFO(f.name(), " [", nsajit::describe(c), "] on ", p.describe());
      CHECK_FALSE(f.reject(p, c, nsajit::kHopperMaxSmemOptin));
      const KernelSpec spec{&f, p, c, "sm_90a"};
      if (seen.emplace(nsajit::generate_source(spec), specs.size()).second) specs.push_back(spec);
    }
  };
  const int blocking[][3] = {{32, 16, 64}, {64, 64, 64}, {32, 32, 64}, {64, 32, 64}};
  // Every dtype x head dims x G with the paper's blocking; the other blockings at G in {1, 16} (they reach only
  // select's source, and only through l / d / l').
  for (const char* name : {"cmp_fwd", "pool", "select", "slc_plan", "slc_fwd"}) {
    const nsajit::KernelFamily& f = nsajit::find_family(name);
    for (Dtype dtype : {Dtype::bf16, Dtype::fp16})
      for (auto [dk, dv] : kHeadDims)
        for (int G : group_sizes(dtype, dk, dv))
          for (const auto& b : blocking) {
            if (&b != &blocking[0] && G != 1 && G != 16) continue;
            Problem p = problem_for(dtype, dk, dv, G);
            p.l = b[0], p.d = b[1], p.lsel = b[2];
            add(f, p);
          }
  }
  const auto start = std::chrono::steady_clock::now();
  const std::vector<nsajit::JitOutcome> outcomes = nsajit::jit_compile_all(specs, cache, 0);
  MESSAGE(specs.size() << " distinct default kernels of cmp_fwd, pool, select, slc_plan and slc_fwd compiled in "
                       << std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() << " s");
  std::map<std::string, int> per_family;
  for (size_t i = 0; i < specs.size(); ++i) {
    const nsajit::JitOutcome& o = outcomes[i];
    INFO(specs[i].describe());
    REQUIRE_MESSAGE(o.result.has_value(), o.error);
    CHECK(is_elf(o.result->cubin));
    CHECK(o.result->usage.parsed);
    CHECK(o.result->usage.spill_store_bytes == 0);  // the design expects no spills from a default config
    CHECK(o.result->usage.spill_load_bytes == 0);
    ++per_family[std::string(specs[i].family->name())];
  }
  // Every family compiled, and G reached the sources of the families that pack heads into MMA rows.
  CHECK(per_family["cmp_fwd"] >= total_group_sizes());
  CHECK(per_family["select"] >= total_group_sizes());
  CHECK(per_family["slc_fwd"] > total_group_sizes());  // the overlap buckets' defaults differ
  CHECK(per_family["slc_plan"] >= 1);
  CHECK(per_family["pool"] >= 2 * 3);
}

TEST_CASE("compile: the default config of every backward family, for sm_90a") {
  TempCacheDir dir;
  const nsajit::CubinCache cache(dir.path);
  std::vector<KernelSpec> specs;
  std::map<std::string, size_t> seen;
  for (const nsajit::KernelFamily* f : nsajit::families()) {
    const std::string name(f->name());
    if (name.find("bwd") == std::string::npos) continue;
    // bf16 at the paper's (dk, dv) = (192, 128) with a group that fills the MMA rows and one that does not (G = 3
    // pads them), fp16 at (64, 64): dtype, head dims and G all reach the sources (the GPU tests run the rest).
    const std::tuple<Dtype, int, int, int> combos[] = {
        {Dtype::bf16, 192, 128, 16}, {Dtype::bf16, 192, 128, 3}, {Dtype::fp16, 64, 64, 16}};
    for (auto [dtype, dk, dv, G] : combos) {
      Problem p = problem_for(dtype, dk, dv, G);
      p.l = 32, p.d = 16;
      REQUIRE_NOTHROW(f->check_problem(p));
      const KernelSpec spec{f, p, f->default_config(p), "sm_90a"};
      if (seen.emplace(nsajit::generate_source(spec), specs.size()).second) specs.push_back(spec);
    }
  }
  const std::vector<nsajit::JitOutcome> outcomes = nsajit::jit_compile_all(specs, cache, 0);
  std::map<std::string, int> per_family;
  for (size_t i = 0; i < specs.size(); ++i) {
    INFO(specs[i].describe());
    REQUIRE_MESSAGE(outcomes[i].result.has_value(), outcomes[i].error);
    CHECK(is_elf(outcomes[i].result->cubin));
    ++per_family[std::string(specs[i].family->name())];
  }
  MESSAGE(specs.size() << " distinct default backward kernels compiled");
  for (const char* name : {"bwd_pre", "cmp_bwd_dq", "cmp_bwd_dkv", "cmp_bwd_reduce", "slc_bwd_index", "slc_bwd_dq",
                           "slc_bwd_dkv", "slc_bwd_reduce", "win_bwd_dq", "win_bwd_dkv", "pool_bwd", "bwd_cast"})
    CHECK(per_family[name] >= 1);
  CHECK(per_family["slc_bwd_dkv"] == 3);  // dtype, head dims and G all reach its source
}

// The start-up ledger (runtime/phase_times.h): a phase timed inside another is not counted in the outer one, and
// jit_compile records its phases.
TEST_CASE("phase times: nested phases count only their own time; jit_compile records its phases") {
  nsajit::reset_phase_times();
  const auto start = std::chrono::steady_clock::now();
  {
    nsajit::PhaseTimer outer(nsajit::Phase::config_lookup);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    {
      nsajit::PhaseTimer inner(nsajit::Phase::module_load);
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }
  const double wall = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  const nsajit::PhaseTotals t = nsajit::phase_totals();
  const double outer = t.ms[static_cast<size_t>(nsajit::Phase::config_lookup)];
  const double inner = t.ms[static_cast<size_t>(nsajit::Phase::module_load)];
  CHECK(t.count[static_cast<size_t>(nsajit::Phase::config_lookup)] == 1);
  CHECK(t.count[static_cast<size_t>(nsajit::Phase::module_load)] == 1);
  CHECK(inner >= 50);
  CHECK(outer >= 20);
  CHECK(outer + inner <= wall + 0.5);  // the inner time is not counted twice
  CHECK_CONTAINS(nsajit::describe_phases(t), "modules loaded");

  TempCacheDir dir;
  const nsajit::CubinCache cache(dir.path);
  nsajit::Problem p = nsajit::preset("fla");
  const nsajit::KernelFamily& f = nsajit::find_family("pool");
  const nsajit::KernelSpec spec{&f, p, f.default_config(p), "sm_90a"};
  nsajit::reset_phase_times();
  (void)nsajit::jit_compile(spec, cache);  // a miss: compiled
  (void)nsajit::jit_compile(spec, cache);  // a hit
  const nsajit::PhaseTotals j = nsajit::phase_totals();
  CHECK(j.count[static_cast<size_t>(nsajit::Phase::source_and_key)] == 2);
  CHECK(j.count[static_cast<size_t>(nsajit::Phase::cache_read)] == 2);
  CHECK(j.count[static_cast<size_t>(nsajit::Phase::compile)] == 1);
}

// Issue 14: dk and dv independently any multiple of 8 from 32 to 256 and l' in {16, 32, 64, 128}, in every family.
// The default config (and each overlap bucket's) of every family that takes the head dims or l', at a sample of
// dims that are not multiples of 64 (padded inside the kernels: shared-memory rows to 64, MMA loops to 16) or differ
// between dk and dv, each with its own dtype, G and blocking. No spills, except in the backward's attention kernels
// past dk + dv = 256 (rounded up to 16), which spill at the old dims too ((192, 128): about 130 B in each dkv
// kernel; (256, 256): 1 to 6 KB).
TEST_CASE("compile: any head dim: every family's default config at dims off the 64 grid and l' = 16 .. 128") {
  TempCacheDir dir;
  const nsajit::CubinCache cache(dir.path);
  struct Case {
    Dtype dtype;
    int dk, dv, G, l, d, lsel;
  };
  const Case cases[] = {
      {Dtype::fp16, 32, 32, 1, 32, 16, 16},    {Dtype::bf16, 40, 72, 3, 32, 16, 64},
      {Dtype::bf16, 80, 80, 16, 32, 16, 16},   {Dtype::fp16, 96, 64, 8, 64, 32, 32},
      {Dtype::bf16, 160, 160, 2, 64, 64, 128}, {Dtype::bf16, 200, 120, 3, 32, 32, 32},
      {Dtype::fp16, 256, 128, 16, 32, 16, 128},
  };
  std::vector<KernelSpec> specs;
  std::map<std::string, size_t> seen;
  for (const Case& k : cases) {
    Problem p = problem_for(k.dtype, k.dk, k.dv, k.G);
    // T = 32768: select keeps T / l' scores per position in shared memory, and at l' = 16 with G = 1 (16 positions
    // per row group) T = 65536 does not fit.
    p.l = k.l, p.d = k.d, p.lsel = k.lsel, p.T = 32768;
    for (const nsajit::KernelFamily* f : nsajit::families()) {
      const std::string name(f->name());
      if (name == "compare" || name == "fault_test") continue;
      INFO(name, " on ", p.describe());
      REQUIRE_NOTHROW(f->check_problem(p));
      std::vector<TileConfig> configs = {f->default_config(p)};
      if (f->overlap_dependent())
        for (nsajit::OverlapBucket b : nsajit::kAllOverlapBuckets) configs.push_back(f->bucket_default_config(p, b));
      for (const TileConfig& c : configs) {
        CHECK_FALSE(f->reject(p, c, nsajit::kHopperMaxSmemOptin));
        const KernelSpec spec{f, p, c, "sm_90a"};
        if (seen.emplace(nsajit::generate_source(spec), specs.size()).second) specs.push_back(spec);
      }
    }
  }
  const auto start = std::chrono::steady_clock::now();
  const std::vector<nsajit::JitOutcome> outcomes = nsajit::jit_compile_all(specs, cache, 0);
  MESSAGE(specs.size() << " distinct default kernels at new head dims compiled in "
                       << std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() << " s");
  for (size_t i = 0; i < specs.size(); ++i) {
    const nsajit::JitOutcome& o = outcomes[i];
    INFO(specs[i].describe());
    REQUIRE_MESSAGE(o.result.has_value(), o.error);
    CHECK(is_elf(o.result->cubin));
    CHECK(o.result->usage.parsed);
    const Problem& p = specs[i].problem;
    const bool large = nsajit::head_dim_mma(p.dk) + nsajit::head_dim_mma(p.dv) > 256;
    const bool bwd = std::string(specs[i].family->name()).find("_bwd_d") != std::string::npos;
    if (large && bwd) {
      if (o.result->usage.spill_store_bytes > 0)
        MESSAGE(specs[i].describe() << ": " << o.result->usage.spill_store_bytes << " B spilled");
      continue;
    }
    CHECK(o.result->usage.spill_store_bytes == 0);
    CHECK(o.result->usage.spill_load_bytes == 0);
  }
}

TEST_CASE("compile: any head dim: refused dims and l' name the value and the rule") {
  for (const nsajit::KernelFamily* f : nsajit::families()) {
    const std::string name(f->name());
    const bool attention = name.find("_fwd") != std::string::npos || name.find("_bwd_d") != std::string::npos ||
                           name == "select";
    if (!attention) continue;
    CAPTURE(name);
    for (int bad : {24, 100, 264, 0}) {
      Problem p = nsajit::preset("fla");
      p.dk = bad;
      std::string e;
      try {
        f->check_problem(p);
      } catch (const nsajit::UsageError& x) {
        e = x.what();
      }
      CAPTURE(bad);
      if (bad == 0) {
        CHECK_CONTAINS(e, "dk = 0");
        continue;
      }
      CHECK_CONTAINS(e, "dk = " + std::to_string(bad));
      CHECK_CONTAINS(e, "multiples of 8 from 32 to 256");
      if (name == "select") continue;  // dv does not reach it
      Problem q = nsajit::preset("fla");
      q.dv = bad;
      e.clear();
      try {
        f->check_problem(q);
      } catch (const nsajit::UsageError& x) {
        e = x.what();
      }
      CHECK_CONTAINS(e, "dv = " + std::to_string(bad));
    }
  }
}
