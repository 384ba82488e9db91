// The mean-pool compressor family (fla's phi, any l and d with d | l); kernel in templates/pool.cuh.
#include <fmt/format.h>

#include "base/error.h"
#include "codegen/family.h"

namespace nsajit {
namespace {

class PoolFamily final : public KernelFamily {
public:
  std::string_view name() const override { return "pool"; }
  std::string_view description() const override {
    return "mean-pool compressor k -> k_cmp, v -> v_cmp over blocks [i*d, i*d + l): one thread per 16-byte chunk";
  }
  std::string_view template_path() const override { return "templates/pool.cuh"; }
  std::vector<std::string_view> support_files() const override {
    return {"templates/attn_params.h", "templates/attn_params.cuh", "templates/pool_params.h"};
  }
  std::string_view harness_path() const override { return "templates/harness_pool.cuh"; }
  const std::vector<ParamDecl>& params() const override {
    static const std::vector<ParamDecl> decls = {{"THREADS", {128, 256, 512}, "threads per CTA"}};
    return decls;
  }
  void check_problem(const Problem& p) const override {
    p.validate();
    for (int dim : {p.dk, p.dv})
      if (dim % 8 != 0 || dim > 512)
        throw UsageError(fmt::format("pool: head dim {} must be a multiple of 8 and at most 512", dim));
  }
  std::optional<std::string> reject(const Problem&, const TileConfig&, int) const override { return std::nullopt; }
  TileConfig default_config(const Problem&) const override { return {{"THREADS", 256}}; }
  // Pools one tensor per launch; `p.dk` is the pooled dim (the API sets it to dk for k and dv for v).
  LaunchGeometry geometry(const Problem& p, const TileConfig& c) const override {
    LaunchGeometry g;
    const int64_t nc = p.T >= p.l ? (p.T - p.l) / p.d + 1 : 0;
    const int64_t items = std::max<int64_t>(nc * p.H * (p.dk / 8), 1);
    g.grid = {static_cast<unsigned>((items + c.at("THREADS") - 1) / c.at("THREADS")), 1, static_cast<unsigned>(p.B)};
    g.block = {static_cast<unsigned>(c.at("THREADS")), 1, 1};
    return g;
  }
  std::string preamble(const Problem& p, const TileConfig& c) const override {
    return fmt::format("typedef {} elem;\nconstexpr int kDim = {}, kThreads = {};\n",
                       p.dtype == Dtype::bf16 ? "bf16" : "f16", p.dk, c.at("THREADS"));
  }
  std::string_view params_type() const override { return "nsa::PoolParams"; }
  std::string entry_body() const override { return "nsa::pool::run(p);"; }
  std::string launch_bounds(const Problem&, const TileConfig& c) const override {
    // Without the minimum-blocks hint NVRTC's ptxas caps this kernel at 32 registers and spills.
    return std::to_string(c.at("THREADS")) + ", 1";
  }
  double flops(const Problem& p) const override {
    const double nc = p.T >= p.l ? static_cast<double>((p.T - p.l) / p.d + 1) : 0.0;
    return static_cast<double>(p.B) * nc * p.H * p.dk * p.l;
  }
  double min_bytes(const Problem& p) const override {
    const double nc = p.T >= p.l ? static_cast<double>((p.T - p.l) / p.d + 1) : 0.0;
    return static_cast<double>(p.B) * p.H * p.dk * 2.0 * (static_cast<double>(p.T) + nc);
  }
};

}  // namespace

const KernelFamily& pool_family() {
  static const PoolFamily f;
  return f;
}

}  // namespace nsajit
