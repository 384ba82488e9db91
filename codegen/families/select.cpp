// The top-n block selection family (NSA.md branch 2, selection part); kernel in templates/select.cuh.
#include <fmt/format.h>

#include <algorithm>
#include <array>

#include "base/error.h"
#include "codegen/family.h"

namespace nsajit {
namespace {

// (l, d) pairs; l' is any of kSelBlocks that d divides, with l - d <= l' (a compressed block reaches at most one
// selection block past its first) and 8 d a multiple of l' (a thread's run of BN / 4 >= 8 compressed blocks covers
// whole selection blocks).
constexpr std::array<std::array<int, 2>, 4> kBlockShapes = {{{32, 16}, {64, 64}, {32, 32}, {64, 32}}};
constexpr int kSelBlocks[] = {16, 32, 64, 128};
constexpr int kTopN[] = {8, 16, 32};

// Mirrors kMT, kPPW, kWR and kP of the template.
int row_tiles(int G) { return (G + 15) / 16; }
int positions_per_warp(int G) { return 16 * row_tiles(G) / G; }
int row_groups(const TileConfig& c) { return c.at("W") / c.at("KS"); }
int positions_per_cta(int G, const TileConfig& c) { return row_groups(c) * positions_per_warp(G); }
// The template sums a position's G rows in registers when G divides 8 or 16 divides G, else through a
// per-warp buffer of 16 * kMT rows x (BN + 8) floats.
bool sums_through_smem(int G) { return !((G <= 8 && 8 % G == 0) || G % 16 == 0); }

int64_t smem_bytes(const Problem& p, const TileConfig& c) {
  const int64_t W = c.at("W"), BN = c.at("BN"), rows = 16 * row_tiles(p.G());
  const int64_t dk = head_dim_smem(p.dk);  // shared-memory rows are padded to 64 elements (templates/common.cuh)
  const int64_t q = row_groups(c) * rows * dk * 2, k = 2 * c.at("KS") * BN * dk * 2;
  const int64_t pbuf = sums_through_smem(p.G()) ? W * rows * (BN + 8) * 4 : 0;
  const int64_t scores =
      static_cast<int64_t>(positions_per_cta(p.G(), c)) * select_score_row_floats(p.T, p.lsel) * 4;
  return q + k + pbuf + scores;
}

// Fragment registers per thread: S accumulators (BN / 2), the run values and their butterflies (about BN / 4 per
// position slot), Q when held (row tiles x dk / 4, dk rounded up to 16 as the MMA loop runs). Calibrated against ptxas on sm_90a (nsajit compile
// --all-configs): with OCC = 1 (up to 255 registers) configs past 120 spill; within 128 registers (OCC = 2) only
// configs up to 64 with BN = 32 stay clear of spills, or BN = 64 at dk = 64 when one row tile sums in registers;
// and not with Q held for two row tiles or at dk = 128 with key splits, nor with shared-memory sums at dk = 256.
int fragment_registers(const Problem& p, const TileConfig& c) {
  const int BN = c.at("BN"), G = p.G();
  const int slots = (G <= 8 && 8 % G == 0) ? 2 : 1;
  return BN / 2 + slots * BN / 4 + (c.at("QREGS") ? row_tiles(G) * head_dim_mma(p.dk) / 4 : 0);
}

std::optional<std::string> register_problem(const Problem& p, const TileConfig& c) {
  const int regs = fragment_registers(p, c), BN = c.at("BN");
  if (c.at("OCC") == 2) {
    const int G = p.G(), dk = head_dim_mma(p.dk);
    const bool light = (BN == 32 || (BN == 64 && dk <= 64 && row_tiles(G) == 1 && !sums_through_smem(G))) &&
                       (c.at("QREGS") == 0 || (row_tiles(G) == 1 && (dk <= 64 || c.at("KS") == 1))) &&
                       !(sums_through_smem(G) && dk > 192);
    if (regs > 64 || !light)
      return fmt::format("fragment registers {} (BN = {}, dk = {}, G = {}) do not fit 128 registers per thread "
                         "(OCC = 2)",
                         regs, BN, p.dk, p.G());
    return std::nullopt;
  }
  if (regs > 120) return fmt::format("fragment registers {} > 120: would spill", regs);
  return std::nullopt;
}

// Warps resident per SM: shared memory (228 KB per SM, 1 KB reserved per CTA) and, with OCC = 2, at most 16; with
// OCC = 1 the registers (up to 255) allow one CTA of 8 warps, or two of 4, so count 8.
int64_t resident_warps(const Problem& p, const TileConfig& c) {
  const int64_t W = c.at("W");
  const int64_t by_smem = 233472 / (smem_bytes(p, c) + 1024);
  const int64_t by_regs = c.at("OCC") == 2 ? 16 / W : std::max<int64_t>(1, 8 / W);
  return std::min(by_smem, by_regs) * W;
}

class SelectFamily final : public KernelFamily {
public:
  std::string_view name() const override { return "select"; }
  std::string_view description() const override {
    return "top-n block selection (branch 2): block scores from q, k_cmp and lse_cmp by mma.sync with G heads in "
           "the tile rows, kept in shared memory; forced blocks and a warp top-n; idx ascending, -1 padded, and cnt";
  }
  std::string_view template_path() const override { return "templates/select.cuh"; }
  std::vector<std::string_view> support_files() const override { return {"templates/select_params.h"}; }
  std::string_view harness_path() const override { return "templates/harness_select.cuh"; }
  std::vector<std::string_view> harness_support_files() const override { return {"templates/selection_rule.h"}; }
  std::string_view params_type() const override { return "nsa::SelectParams"; }

  const std::vector<ParamDecl>& params() const override {
    static const std::vector<ParamDecl> decls = {
        {"W", {2, 4, 8}, "warps per CTA: W / KS row groups x KS key splits"},
        {"KS", {1, 2, 4},
         "key splits: warps sharing a row group's positions, each taking BN of every KS * BN-key tile. A row group "
         "holds 16 * ceil(G/16) MMA rows, floor(16 * ceil(G/16) / G) whole query positions, whose scores "
         "(ceil(T/l') floats each) live in shared memory"},
        {"BN", {32, 64}, "compressed keys per warp and tile"},
        {"QREGS", {0, 1}, "1: Q fragments held in registers; 0: re-read from shared memory"},
        {"OCC", {1, 2},
         "1: up to 255 registers per thread; 2: at most 128, so that 16 warps fit per SM (the launch bounds ask "
         "for 16 / W CTAs)"},
    };
    return decls;
  }

  void check_problem(const Problem& p) const override {
    p.validate();
    check_head_dims("select", p, false);
    const bool shape_ok = std::any_of(kBlockShapes.begin(), kBlockShapes.end(),
                                      [&](const auto& s) { return s[0] == p.l && s[1] == p.d; });
    if (!shape_ok)
      throw UsageError(fmt::format("select does not support (l, d) = ({}, {}): supported are (32, 16), (64, 64), "
                                   "(32, 32), (64, 32)",
                                   p.l, p.d));
    if (std::find(std::begin(kSelBlocks), std::end(kSelBlocks), p.lsel) == std::end(kSelBlocks))
      throw UsageError(fmt::format("select does not support l' = {}: supported are 16, 32, 64, 128", p.lsel));
    if (p.l - p.d > p.lsel || (8 * p.d) % p.lsel != 0)
      throw UsageError(fmt::format("select does not support (l, d, l') = ({}, {}, {}): needs l - d <= l' (a "
                                   "compressed block reaches at most one selection block past its first) and 8 d a "
                                   "multiple of l'",
                                   p.l, p.d, p.lsel));
    if (std::find(std::begin(kTopN), std::end(kTopN), p.n) == std::end(kTopN))
      throw UsageError(fmt::format("select does not support n = {}: supported are 8, 16, 32 selected blocks", p.n));
  }

  std::optional<std::string> reject(const Problem& p, const TileConfig& c, int max_smem) const override {
    if (c.at("KS") > c.at("W")) return fmt::format("KS = {} key splits need W >= KS warps", c.at("KS"));
    if ((c.at("BN") / 4 * p.d) % p.lsel != 0)
      return fmt::format("a thread's run of BN / 4 = {} compressed blocks (d = {}) does not cover whole selection "
                         "blocks of l' = {}",
                         c.at("BN") / 4, p.d, p.lsel);
    const int64_t smem = smem_bytes(p, c);
    if (smem > max_smem)
      return fmt::format("shared memory {} B > device limit {} B ({} positions x {} score floats at T = {})", smem,
                         max_smem, positions_per_cta(p.G(), c), select_score_row_floats(p.T, p.lsel), p.T);
    return register_problem(p, c);
  }

  // 32-key tiles within 128 registers (else within 255), Q in registers where it is small; then the W and KS with
  // the most resident warps per SM, on a tie the more warps per CTA, then the fewer key splits (more positions per
  // CTA: fewer k_cmp reads).
  TileConfig default_config(const Problem& p) const override {
    const int qregs = row_tiles(p.G()) == 1 && head_dim_mma(p.dk) <= 128 ? 1 : 0;
    for (int occ : {2, 1}) {
      TileConfig best;
      int64_t best_warps = 0;
      for (int W : {8, 4, 2})
        for (int KS : {1, 2, 4}) {
          TileConfig c{{"W", W}, {"KS", KS}, {"BN", 32}, {"QREGS", qregs}, {"OCC", occ}};
          if (reject(p, c, kHopperMaxSmemOptin)) c["QREGS"] = 0;
          if (reject(p, c, kHopperMaxSmemOptin)) continue;
          const int64_t warps = resident_warps(p, c);
          if (warps > best_warps) best_warps = warps, best = c;
        }
      if (!best.empty()) return best;
    }
    // Nothing fits (a very long sequence): the smallest config, which reject() explains.
    return {{"W", 4}, {"KS", 4}, {"BN", 32}, {"QREGS", 0}, {"OCC", 1}};
  }

  LaunchGeometry geometry(const Problem& p, const TileConfig& c) const override {
    LaunchGeometry g;
    const int64_t P = positions_per_cta(p.G(), c);
    g.grid = {static_cast<unsigned>((p.T + P - 1) / P), static_cast<unsigned>(p.H), static_cast<unsigned>(p.B)};
    g.block = {static_cast<unsigned>(32 * c.at("W")), 1, 1};
    g.smem_bytes = static_cast<int>(smem_bytes(p, c));
    return g;
  }

  std::string preamble(const Problem& p, const TileConfig& c) const override {
    return fmt::format(
        "typedef {} elem;\nconstexpr int kDK = {}, kG = {}, kL = {}, kD = {}, kLSel = {}, kN = {}, kW = {}, kKS = {}, "
        "kBN = {}, kQInRegs = {}, kOcc = {};\n",
        p.dtype == Dtype::bf16 ? "bf16" : "f16", p.dk, p.G(), p.l, p.d, p.lsel, p.n, c.at("W"), c.at("KS"),
        c.at("BN"), c.at("QREGS"), c.at("OCC"));
  }
  std::string entry_body() const override { return "nsa::select_blocks::run(p);"; }
  std::string launch_bounds(const Problem&, const TileConfig& c) const override {
    // OCC = 2: 16 warps per SM, so at most 128 registers. OCC = 1: the explicit minimum of one CTA lets ptxas use
    // registers freely for small blocks too.
    const int W = c.at("W");
    return fmt::format("{}, {}", 32 * W, c.at("OCC") == 2 ? 16 / W : 1);
  }

  double flops(const Problem& p) const override {
    // 2 dk per (query head, visible compressed block): sum over t of nc(t) = sum over u = 0 .. T - l of
    // (floor(u / d) + 1).
    const int64_t U = p.T - p.l;
    double blocks = 0;
    if (U >= 0) {
      const int64_t n = U + 1, qd = n / p.d, r = n % p.d;
      blocks = static_cast<double>(n) + static_cast<double>(p.d) * qd * (qd - 1) / 2.0 + static_cast<double>(r) * qd;
    }
    return static_cast<double>(p.B) * p.HQ * blocks * 2.0 * p.dk;
  }
  double min_bytes(const Problem& p) const override {
    const double tokens = static_cast<double>(p.B) * static_cast<double>(p.T);
    const int64_t nc = p.T >= p.l ? (p.T - p.l) / p.d + 1 : 0;
    const double q = tokens * p.HQ * p.dk * 2.0, lse = tokens * p.HQ * 4.0;
    const double k_cmp = static_cast<double>(p.B) * static_cast<double>(nc) * p.H * p.dk * 2.0;
    const double out = tokens * p.H * (p.n + 1) * 4.0;
    return q + lse + k_cmp + out;
  }
};

}  // namespace

int select_score_row_floats(int64_t T, int lsel) {
  const int64_t ns = (T + lsel - 1) / lsel;
  return static_cast<int>((ns + 3) / 4 * 4);
}

const KernelFamily& select_family() {
  static const SelectFamily f;
  return f;
}

}  // namespace nsajit
