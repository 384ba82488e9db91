// The selected-attention forward family (NSA.md branch 2); kernel in templates/slc_fwd.cuh.
#include <fmt/format.h>

#include <algorithm>
#include <utility>

#include "base/error.h"
#include "codegen/family.h"

namespace nsajit {
namespace {

constexpr int kSelBlocks[] = {16, 32, 64, 128};
constexpr int kTopN[] = {8, 16, 32};
constexpr int kMaxTopN = 32;  // kMaxN of the template
constexpr int kMaxGroup = 128;  // one position's heads must fit the 8 warps of BM = 128

// Warps of one position for G > 16: ceil(G / 16) rounded up to a power of two (so BM can hold whole positions).
int warps_per_position(int G) {
  int w = 1;
  while (w * 16 < G) w *= 2;
  return w;
}

// Positions per CTA for group size G and BM rows (0: BM cannot hold a whole position). Mirrors kP of the template.
int positions_per_cta(int G, int BM) {
  const int warps = BM / 16;
  if (G <= 16) return warps * (16 / G);
  return warps / warps_per_position(G);
}

class SlcFwdFamily final : public KernelFamily {
public:
  std::string_view name() const override { return "slc_fwd"; }
  std::string_view description() const override {
    return "selected-block attention forward (branch 2): mma.sync m16n8k16 (IMPL=0) or Hopper wgmma (IMPL=1), "
           "consecutive positions x G heads in the tile rows, their block lists merged so each K/V block is loaded "
           "once per CTA";
  }
  std::string_view template_path() const override { return "templates/slc_fwd.cuh"; }
  std::vector<std::string_view> support_files() const override {
    return {"templates/slc_fwd_params.h", "templates/hopper.cuh", "templates/hopper_attn.cuh"};
  }
  std::string_view harness_path() const override { return "templates/harness_slc_fwd.cuh"; }
  std::vector<std::string_view> harness_support_files() const override { return {"templates/harness_selection.h"}; }
  std::string_view params_type() const override { return "nsa::SlcFwdParams"; }

  const std::vector<ParamDecl>& params() const override {
    static const std::vector<ParamDecl> decls = {
        {"BM", {16, 32, 64, 128},
         "MMA rows per CTA, 16 per warp, whole query positions per warp: P = BM/16 * floor(16/G) positions "
         "for G <= 16; for G > 16 a position takes ceil(G/16) warps rounded up to a power of two"},
        {"BN", {16, 32, 64}, "keys per shared-memory tile (a selection block is l'/BN tiles)"},
        {"STAGES", {2, 3}, "K/V tiles in flight (cp.async pipeline depth)"},
        {"QREGS", {0, 1}, "1: Q fragments held in registers; 0: re-read from shared memory"},
        {"IMPL", {0, 1},
         "0: mma.sync, a warp skips the tiles its positions did not select; 1: Hopper wgmma (sm_90a), 64 rows per "
         "warpgroup, 64-key tiles, the softmax overlapped with the matrix products"},
    };
    return decls;
  }

  void check_problem(const Problem& p) const override {
    p.validate();
    check_head_dims("slc_fwd", p);
    if (std::find(std::begin(kSelBlocks), std::end(kSelBlocks), p.lsel) == std::end(kSelBlocks))
      throw UsageError(fmt::format("slc_fwd does not support l' = {}: supported selection block lengths are 16, 32, "
                                   "64, 128",
                                   p.lsel));
    if (std::find(std::begin(kTopN), std::end(kTopN), p.n) == std::end(kTopN))
      throw UsageError(fmt::format("slc_fwd does not support n = {}: supported are 8, 16, 32 selected blocks", p.n));
    if (p.G() > kMaxGroup)
      throw UsageError(fmt::format("slc_fwd does not support G = HQ / H = {}: supported are 1 .. {}", p.G(),
                                   kMaxGroup));
  }

  std::optional<std::string> reject(const Problem& p, const TileConfig& c, int max_smem) const override {
    const int G = p.G(), BM = c.at("BM"), BN = c.at("BN");
    const int P = positions_per_cta(G, BM);
    if (P == 0)
      return fmt::format("BM = {} cannot hold the {} heads of a position (G = {} needs BM >= {})", BM, G, G,
                         16 * warps_per_position(G));
    if (P > 32) return fmt::format("{} positions per CTA > 32 (the per-block position masks are 32-bit)", P);
    if (p.lsel % BN != 0) return fmt::format("BN = {} does not divide l' = {}", BN, p.lsel);
    const int smem = smem_bytes(p, c);
    if (smem > max_smem) return fmt::format("shared memory {} B > device limit {} B", smem, max_smem);
    if (c.at("IMPL") == 1) {
      if (BM % 64 != 0) return fmt::format("IMPL=1 has 64 rows per warpgroup: BM = {} is not a multiple of 64", BM);
      if (BN != 64) return fmt::format("IMPL=1 takes 64-key tiles: BN = {} is not 64", BN);
      if (p.lsel % 64 != 0) return fmt::format("IMPL=1 takes 64-key tiles: l' = {} is not a multiple of 64", p.lsel);
      // O (dim_smem(dv) / 2: whole 64-column blocks), S (32), P (16), Q when held (dk / 4, rounded to 16), and an
      // eighth of dk's shared width for descriptors and addresses. Calibrated against ptxas on sm_90a: (192, 128)
      // with Q held, 184, compiles clean; (256, 256), 208, spills.
      const int regs = head_dim_smem(p.dv) / 2 + 48 + (c.at("QREGS") ? head_dim_mma(p.dk) / 4 : 0) +
                       head_dim_smem(p.dk) / 8;
      if (regs > 200) return fmt::format("fragment registers {} > 200: would spill", regs);
      return std::nullopt;
    }
    // Accumulators and fragments live in registers: O (dv/2), S (BN/2), Q (dk/4 when held), dims rounded up to 16
    // as the MMA loops run. Past 140 ptxas spills (checked: dk = 192 with BN = 64 and Q held is 144 and spills; 136
    // does not): 255 is the hard cap, and the row masks, positions, addresses and the softmax need the rest.
    const int regs = head_dim_mma(p.dv) / 2 + BN / 2 + (c.at("QREGS") ? head_dim_mma(p.dk) / 4 : 0);
    if (regs > 140) return fmt::format("fragment registers {} > 140: would spill", regs);
    return std::nullopt;
  }

  bool overlap_dependent() const override { return true; }
  // High overlap: default_config(), several positions per CTA share their blocks. Low overlap (neighbours select
  // unrelated blocks, so a CTA of several positions streams nearly the sum of their lists and each warp skips most
  // tiles): the fewest positions per CTA, one warp (G <= 16: floor(16/G) positions; G > 16: one position's warps),
  // and small key tiles, BN = 16 and Q in registers where they are valid (measured on the H200, fla, T = 65536,
  // random queries: BM=16 BN=16 STAGES=2 QREGS=1 17.7 ms against 22.2 ms for the high-overlap default).
  TileConfig bucket_default_config(const Problem& p, OverlapBucket bucket) const override {
    if (bucket == OverlapBucket::high) return default_config(p);
    const int BM = p.G() <= 16 ? 16 : 16 * warps_per_position(p.G());
    for (int BN : {16, 32, 64})
      for (int qregs : {1, 0}) {
        TileConfig c = {{"BM", BM}, {"BN", BN}, {"STAGES", 2}, {"QREGS", qregs}, {"IMPL", 0}};
        if (!reject(p, c, kHopperMaxSmemOptin)) return c;
      }
    return default_config(p);
  }

  // Several positions per CTA (about 64 rows): neighbouring queries share most of their blocks, so a CTA loads
  // their union once instead of each position's list; BM = 32 for G = 1 keeps P <= 32.
  TileConfig default_config(const Problem& p) const override {
    // G >= 16 (one position per warp, so the mma.sync kernel's per-warp skipping has nothing to win over a warpgroup):
    // the Hopper kernel, one warpgroup of 4..1 positions, two stages (two CTAs per SM; three stages leave one and
    // were 1.4x slower). H200, fla, T = 65536, coherent inputs: 12.52 ms against 12.80 for the mma.sync default.
    if (p.G() >= 16) {
      const TileConfig h = {{"BM", 64}, {"BN", 64}, {"STAGES", 2}, {"QREGS", 0}, {"IMPL", 1}};
      if (!reject(p, h, kHopperMaxSmemOptin)) return h;
    }
    return portable_default_config(p);
  }

  TileConfig portable_default_config(const Problem& p) const override {
    const int G = p.G();
    int BM = 64;
    while (positions_per_cta(G, BM) > 32) BM /= 2;
    while (positions_per_cta(G, BM) == 0 && BM < 128) BM *= 2;
    // Registers decide the rest (checked with ptxas through NVRTC for every G and both dtypes): with BN = 64 and
    // Q held in registers, dk = 128 sits at the edge (a few bytes of spill for some G) and dk = 192 spills, so Q
    // stays in shared memory from dk = 128 on; dv = 256 (128 accumulator registers) needs BN = 16.
    // Head dims count as the MMA loops run them (rounded up to 16).
    const int BN = head_dim_mma(p.dv) > 192 ? 16 : std::min(64, p.lsel);
    return {{"BM", BM}, {"BN", BN}, {"STAGES", 2}, {"QREGS", head_dim_mma(p.dk) <= 64 ? 1 : 0}, {"IMPL", 0}};
  }

  LaunchGeometry geometry(const Problem& p, const TileConfig& c) const override {
    LaunchGeometry g;
    const int P = positions_per_cta(p.G(), c.at("BM"));
    g.grid = {static_cast<unsigned>((p.T + P - 1) / P), static_cast<unsigned>(p.H), static_cast<unsigned>(p.B)};
    g.block = {static_cast<unsigned>(c.at("BM") / 16 * 32), 1, 1};
    g.smem_bytes = smem_bytes(p, c);
    return g;
  }

  std::string preamble(const Problem& p, const TileConfig& c) const override {
    return fmt::format(
        "typedef {} elem;\nconstexpr int kDK = {}, kDV = {}, kG = {}, kL = {}, kBM = {}, kBN = {}, kStages = {}, "
        "kQInRegs = {}, kImpl = {};\n",
        p.dtype == Dtype::bf16 ? "bf16" : "f16", p.dk, p.dv, p.G(), p.lsel, c.at("BM"), c.at("BN"), c.at("STAGES"),
        c.at("QREGS"), c.at("IMPL"));
  }
  std::string entry_body() const override { return "nsa::slc_fwd::run(p);"; }
  // At least one CTA per SM: without it ptxas caps some variants at 168 registers (an occupancy guess) and spills.
  std::string launch_bounds(const Problem&, const TileConfig& c) const override {
    return std::to_string(c.at("BM") / 16 * 32) + ", 1";
  }

  // Per (query, head), 2 (dk + dv) FLOP per key it attends to. With NSA.md's selection (the local block always
  // among the cnt = min(n, floor(t/l') + 1) blocks) that is (cnt - 1) whole blocks plus the local block cut at t.
  double flops(const Problem& p) const override {
    double keys = 0;
    for (int64_t jb = 0; jb * p.lsel < p.T; ++jb) {
      const double in_block = static_cast<double>(std::min<int64_t>(p.lsel, p.T - jb * p.lsel));
      const double cnt = static_cast<double>(std::min<int64_t>(p.n, jb + 1));
      keys += in_block * (cnt - 1) * p.lsel + in_block * (in_block + 1) / 2;
    }
    return static_cast<double>(p.B) * p.HQ * keys * 2.0 * (p.dk + p.dv);
  }
  // The least any implementation moves: q read and o_slc written once, lse, idx and cnt once, and every K/V token
  // read once (each block is the local block of its own positions, so every token is selected by someone). K/V
  // re-reads by several CTAs (L2 traffic) and the optional gate/out of the gated epilogue are not counted.
  double min_bytes(const Problem& p) const override {
    const double tokens = static_cast<double>(p.B) * static_cast<double>(p.T);
    return tokens * (static_cast<double>(p.HQ) * (p.dk + p.dv) * 2.0 + static_cast<double>(p.H) * (p.dk + p.dv) * 2.0 +
                     p.HQ * 4.0 + static_cast<double>(p.H) * (p.n + 1) * 4.0);
  }

private:
  // Q tile, the K/V pipeline stages (which also hold the raw idx rows during the merge), the merged blocks and
  // their position masks (P * 32 entries each, for any n <= 32: n is not compiled in, and the runtime loads one
  // kernel per compiled source) and the merged count.
  // Shared-memory rows are padded to 64 elements (templates/common.cuh).
  static int smem_bytes(const Problem& p, const TileConfig& c) {
    const int P = std::max(positions_per_cta(p.G(), c.at("BM")), 1);
    const int dk = head_dim_smem(p.dk), dv = head_dim_smem(p.dv);
    return c.at("BM") * dk * 2 + c.at("STAGES") * c.at("BN") * (dk + dv) * 2 + 2 * P * kMaxTopN * 4 + 16 +
           (c.at("IMPL") == 1 ? 1024 : 0);  // IMPL=1 aligns its tiles to 1 KB
  }
};

// The overlap plan that splits slc_fwd's positions between the variants of the overlap buckets (codegen/overlap.h).
// Nothing to tune; one kernel serves every problem (the shape comes in the parameters).
class SlcPlanFamily final : public KernelFamily {
public:
  std::string_view name() const override { return "slc_plan"; }
  std::string_view description() const override {
    return "the selection's overlap plan for slc_fwd: per span of 64 positions and KV head, whether its positions "
           "select at most 4n distinct blocks (high overlap); one warp per span, a warp-min merge of the lists";
  }
  std::string_view template_path() const override { return "templates/slc_plan.cuh"; }
  std::vector<std::string_view> support_files() const override { return {"templates/slc_plan_params.h"}; }
  std::string_view harness_path() const override { return "templates/harness_slc_plan.cuh"; }
  std::vector<std::string_view> harness_support_files() const override { return {"templates/harness_selection.h"}; }
  std::string_view params_type() const override { return "nsa::SlcPlanParams"; }
  const std::vector<ParamDecl>& params() const override {
    static const std::vector<ParamDecl> none;
    return none;
  }
  void check_problem(const Problem& p) const override { p.validate(); }
  std::optional<std::string> reject(const Problem&, const TileConfig&, int) const override { return std::nullopt; }
  TileConfig default_config(const Problem&) const override { return {}; }
  // Four warps per CTA, one per (span, KV head) of the B * T rows.
  LaunchGeometry geometry(const Problem& p, const TileConfig&) const override {
    LaunchGeometry g;
    const int64_t items = overlap_spans(p.B * p.T) * p.H;
    g.grid = {static_cast<unsigned>(std::max<int64_t>((items + 3) / 4, 1)), 1, 1};
    g.block = {128, 1, 1};
    return g;
  }
  std::string preamble(const Problem&, const TileConfig&) const override { return ""; }
  std::string entry_body() const override { return "nsa::slc_plan::run(p);"; }
  std::string launch_bounds(const Problem&, const TileConfig&) const override { return "128"; }
  double flops(const Problem&) const override { return 0; }
  // idx and cnt read once (a low-overlap span stops early: at most this), the plan written.
  double min_bytes(const Problem& p) const override {
    return static_cast<double>(p.B) * static_cast<double>(p.T) * p.H * (p.n + 1) * 4.0;
  }
};

}  // namespace

const KernelFamily& slc_fwd_family() {
  static const SlcFwdFamily f;
  return f;
}

const KernelFamily& slc_plan_family() {
  static const SlcPlanFamily f;
  return f;
}

}  // namespace nsajit
