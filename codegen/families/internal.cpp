// Families that serve the tuner rather than the operator: `compare` (the correctness gate's relative-error
// kernel) and `fault_test` (test-only, registered with NSAJIT_TEST_FAMILIES=1: variants that fault, hang or are
// wrong, to prove a sweep survives them).
#include <fmt/format.h>

#include "base/error.h"
#include "codegen/family.h"

namespace nsajit {
namespace {

class CompareFamily final : public KernelFamily {
public:
  std::string_view name() const override { return "compare"; }
  std::string_view description() const override {
    return "tuner correctness gate: relative L2 difference of two tensors and non-finite count, on the GPU";
  }
  std::string_view template_path() const override { return "templates/compare.cuh"; }
  std::vector<std::string_view> support_files() const override { return {"templates/compare_params.h"}; }
  std::string_view harness_path() const override { return "templates/harness_compare.cuh"; }
  const std::vector<ParamDecl>& params() const override {
    static const std::vector<ParamDecl> none;
    return none;
  }
  void check_problem(const Problem&) const override {}
  std::optional<std::string> reject(const Problem&, const TileConfig&, int) const override { return std::nullopt; }
  TileConfig default_config(const Problem&) const override { return {}; }
  // The caller picks the grid (a grid-stride loop); this is the usual one.
  LaunchGeometry geometry(const Problem&, const TileConfig&) const override {
    LaunchGeometry g;
    g.grid = {1024, 1, 1};
    g.block = {256, 1, 1};
    return g;
  }
  std::string preamble(const Problem&, const TileConfig&) const override { return ""; }
  std::string_view params_type() const override { return "nsa::CompareParams"; }
  std::string entry_body() const override { return "nsa::compare::run(p);"; }
  std::string launch_bounds(const Problem&, const TileConfig&) const override { return "256"; }
  double flops(const Problem&) const override { return 0; }
  double min_bytes(const Problem&) const override { return 0; }
};

class FaultTestFamily final : public KernelFamily {
public:
  std::string_view name() const override { return "fault_test"; }
  std::string_view description() const override {
    return "TEST ONLY: MODE 0 correct, 1 writes out of bounds, 2 hangs, 3 wrong result (out[i] = 3 i + 1)";
  }
  std::string_view template_path() const override { return "templates/fault_test.cuh"; }
  std::vector<std::string_view> support_files() const override { return {"templates/fault_test_params.h"}; }
  std::string_view harness_path() const override { return "templates/harness_fault_test.cuh"; }
  const std::vector<ParamDecl>& params() const override {
    static const std::vector<ParamDecl> decls = {
        {"MODE", {0, 1, 2, 3}, "0 correct, 1 out-of-bounds write, 2 hang, 3 wrong value"},
        {"THREADS", {128, 256}, "threads per CTA"},
    };
    return decls;
  }
  void check_problem(const Problem& p) const override { p.validate(); }
  std::optional<std::string> reject(const Problem&, const TileConfig&, int) const override { return std::nullopt; }
  TileConfig default_config(const Problem&) const override { return {{"MODE", 0}, {"THREADS", 128}}; }
  // One element per (token, query head).
  LaunchGeometry geometry(const Problem& p, const TileConfig& c) const override {
    LaunchGeometry g;
    const int64_t n = p.B * p.T * p.HQ;
    g.grid = {static_cast<unsigned>((n + c.at("THREADS") - 1) / c.at("THREADS")), 1, 1};
    g.block = {static_cast<unsigned>(c.at("THREADS")), 1, 1};
    return g;
  }
  std::string preamble(const Problem&, const TileConfig& c) const override {
    return fmt::format("constexpr int kMode = {}, kThreads = {};\n", c.at("MODE"), c.at("THREADS"));
  }
  std::string_view params_type() const override { return "nsa::FaultTestParams"; }
  std::string entry_body() const override { return "nsa::fault_test::run(p);"; }
  std::string launch_bounds(const Problem&, const TileConfig& c) const override {
    return std::to_string(c.at("THREADS"));
  }
  double flops(const Problem&) const override { return 0; }
  double min_bytes(const Problem& p) const override { return 4.0 * p.B * p.T * p.HQ; }
};

}  // namespace

const KernelFamily& compare_family() {
  static const CompareFamily f;
  return f;
}
const KernelFamily& fault_test_family() {
  static const FaultTestFamily f;
  return f;
}

}  // namespace nsajit
