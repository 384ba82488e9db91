// `nsajit emit` for every family: each declares a standalone harness (a family without one fails here), the
// program is generated for three problems, and nvcc builds a sample of them (compile only: one problem per family,
// alternating, so that the whole set stays within a minute or two on two cores). The GPU run of every program is
// scripts/gpu_check.sh's `emit` part.
#include <doctest/doctest.h>
#include <fmt/format.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "base/error.h"
#include "codegen/codegen.h"
#include "codegen/family.h"
#include "codegen/problem.h"
#include "tests/cpu/test_util.h"

namespace {

namespace fs = std::filesystem;
using nsajit::KernelSpec;
using nsajit::Problem;

// The paper's shapes (bf16, dk 192, dv 128, G 16, l 32, d 16) and fla's in fp16 with G = 4, both short; and head
// dims off the 64 grid with l' = 16 (bf16, dk 80, dv 48, G 3).
std::vector<Problem> emit_problems() {
  Problem a = nsajit::preset("paper");
  a.T = 2048;
  Problem b = nsajit::preset("fla");
  b.dtype = nsajit::Dtype::fp16;
  b.HQ = 16, b.H = 4, b.T = 1500;
  Problem c = nsajit::preset("paper");
  c.dk = 80, c.dv = 48, c.lsel = 16, c.HQ = 6, c.H = 2, c.T = 1000;
  return {a, b, c};
}

KernelSpec spec_for(const nsajit::KernelFamily& f, const Problem& p) {
  f.check_problem(p);
  return KernelSpec{&f, p, f.default_config(p), "sm_90a"};
}

}  // namespace

TEST_CASE("emit: every family declares a standalone program") {
  for (const nsajit::KernelFamily* f : nsajit::families()) {
    CAPTURE(f->name());
    CHECK_MESSAGE(!f->harness_path().empty(),
                  "family " << f->name() << " declares no harness: `nsajit emit` cannot write a program for it");
    for (const Problem& p : emit_problems()) {
      CAPTURE(p.describe());
      std::string s;
      REQUIRE_NOTHROW(s = nsajit::generate_standalone(spec_for(*f, p)));
      CHECK_CONTAINS(s, "int main(");
      CHECK_CONTAINS(s, fmt::format("constexpr const char* kFamily = \"{}\";", f->name()));
      CHECK_CONTAINS(s, fmt::format("#define kEntry {}", f->entry_name()));
      CHECK_CONTAINS(s, "// ---- " + std::string(f->harness_path()) + " ----");
      for (std::string_view support : f->harness_support_files()) CHECK_CONTAINS(s, "// ---- " + std::string(support));
    }
  }
}

TEST_CASE("emit: a family without a harness is refused with the families that have one") {
  // What generate_standalone says for a family that declares none (a new family before its harness is written).
  struct NoHarness final : nsajit::KernelFamily {
    const nsajit::KernelFamily& base = nsajit::find_family("pool");
    std::string_view name() const override { return "no_harness"; }
    std::string_view description() const override { return "test"; }
    std::string_view template_path() const override { return base.template_path(); }
    std::string_view harness_path() const override { return {}; }
    const std::vector<nsajit::ParamDecl>& params() const override { return base.params(); }
    void check_problem(const Problem& p) const override { base.check_problem(p); }
    std::optional<std::string> reject(const Problem& p, const nsajit::TileConfig& c, int m) const override {
      return base.reject(p, c, m);
    }
    nsajit::TileConfig default_config(const Problem& p) const override { return base.default_config(p); }
    nsajit::LaunchGeometry geometry(const Problem& p, const nsajit::TileConfig& c) const override {
      return base.geometry(p, c);
    }
    std::string preamble(const Problem& p, const nsajit::TileConfig& c) const override { return base.preamble(p, c); }
    std::string_view params_type() const override { return base.params_type(); }
    std::string entry_body() const override { return base.entry_body(); }
    std::string launch_bounds(const Problem& p, const nsajit::TileConfig& c) const override {
      return base.launch_bounds(p, c);
    }
    double flops(const Problem&) const override { return 0; }
    double min_bytes(const Problem&) const override { return 0; }
  } f;
  const Problem p = emit_problems()[0];
  try {
    (void)nsajit::generate_standalone(KernelSpec{&f, p, f.default_config(p), "sm_90a"});
    FAIL("generate_standalone accepted a family without a harness");
  } catch (const nsajit::UsageError& e) {
    CHECK_CONTAINS(std::string(e.what()), "family no_harness has no standalone harness");
    CHECK_CONTAINS(std::string(e.what()), "slc_fwd");
  }
}

TEST_CASE("emit: nvcc builds every family's program (compile only, one problem per family)") {
  const fs::path nvcc = fs::path(NSAJIT_DEFAULT_CUDA_ROOT) / "bin" / "nvcc";
  REQUIRE_MESSAGE(fs::exists(nvcc), "no nvcc at " << nvcc.string() << " (the CUDA toolkit this build uses)");
  const fs::path dir = fs::temp_directory_path() / fmt::format("nsajit_emit_{}", getpid());
  fs::create_directories(dir);
  const std::vector<Problem> problems = emit_problems();
  std::string jobs;
  std::vector<std::string> names;
  size_t i = 0;
  for (const nsajit::KernelFamily* f : nsajit::families()) {
    const Problem& p = problems[i++ % problems.size()];
    const std::string base = fmt::format("{}_{}", f->name(), nsajit::dtype_name(p.dtype));
    std::ofstream(dir / (base + ".cu"), std::ios::binary) << nsajit::generate_standalone(spec_for(*f, p));
    jobs += base + "\n";
    names.push_back(base);
  }
  std::ofstream(dir / "jobs") << jobs;
  // Two at a time (CI has two cores); each job leaves NAME.log, and NAME.o only when nvcc succeeded.
  const std::string cmd = fmt::format(
      "cd {} && xargs -P 2 -I NAME sh -c '{} -std=c++17 -gencode=arch=compute_90a,code=sm_90a -c NAME.cu -o NAME.o > NAME.log 2>&1' < jobs; "
      "echo done",
      quoted(dir.string()), nvcc.string());
  const Run r = run_shell(cmd + " 2>&1");
  CHECK_CONTAINS(r.output, "done");
  bool all = true;
  for (const std::string& base : names) {
    CAPTURE(base);
    std::ifstream log(dir / (base + ".log"));
    const std::string text((std::istreambuf_iterator<char>(log)), std::istreambuf_iterator<char>());
    const bool built = fs::exists(dir / (base + ".o"));
    CHECK_MESSAGE(built, "nvcc failed on " << (dir / (base + ".cu")).string() << ":\n" << text);
    all = all && built;
  }
  if (all) fs::remove_all(dir);  // else kept for a look
}
