// The dense-attention forward families: window (NSA.md branch 3) and compressed (branch 1), each with a fast
// kernel (templates/attn_fwd.cuh) and a simple reference kernel (templates/attn_fwd_ref.cuh).
#include <fmt/format.h>

#include <algorithm>
#include <utility>

#include "base/error.h"
#include "codegen/family.h"

namespace nsajit {
namespace {

enum class Mask { window, compressed };

// What the dense-attention kernels share: the problems they serve, their parameter block and their work.
class AttnFamily : public KernelFamily {
public:
  explicit AttnFamily(Mask mask) : mask_(mask) {}
  std::vector<std::string_view> support_files() const override {
    return {"templates/attn_params.h", "templates/attn_params.cuh"};
  }
  std::string_view harness_path() const override { return "templates/harness_attn_fwd.cuh"; }
  std::string_view params_type() const override { return "nsa::AttnFwdParams"; }

  void check_problem(const Problem& p) const override {
    p.validate();
    check_head_dims(name(), p);
  }

  double flops(const Problem& p) const override {
    // 2 dk + 2 dv FLOP per (query, head, visible key).
    return static_cast<double>(p.B) * p.HQ * keys_per_head(p) * 2.0 * (p.dk + p.dv);
  }
  double min_bytes(const Problem& p) const override {
    const double tokens = static_cast<double>(p.B) * static_cast<double>(p.T);
    const double keys = mask_ == Mask::window ? tokens : static_cast<double>(p.B) * num_cmp(p);
    return tokens * static_cast<double>(p.HQ) * (p.dk + p.dv + 2.0) * 2.0 + keys * p.H * (p.dk + p.dv) * 2.0;
  }

protected:
  std::string mask_constant() const { return mask_ == Mask::window ? "kMaskWindow" : "kMaskCompressed"; }
  // Keys seen by all queries of one head together.
  double keys_per_head(const Problem& p) const {
    const double T = static_cast<double>(p.T);
    if (mask_ == Mask::window) {
      const double w = p.w;
      return T <= w ? T * (T + 1) / 2 : w * (w + 1) / 2 + (T - w) * w;
    }
    double keys = 0;  // sum over t of nc(t): closed forms are easy to get wrong; T is at most 2^31
    for (int64_t t = p.l - 1; t < p.T; ++t) keys += static_cast<double>((t + 1 - p.l) / p.d + 1);
    return keys;
  }
  static double num_cmp(const Problem& p) { return p.T >= p.l ? static_cast<double>((p.T - p.l) / p.d + 1) : 0.0; }

  Mask mask_;
};

class AttnFwdFamily final : public AttnFamily {
public:
  explicit AttnFwdFamily(Mask mask) : AttnFamily(mask) {}
  std::string_view name() const override { return mask_ == Mask::window ? "win_fwd" : "cmp_fwd"; }
  std::string_view description() const override {
    return mask_ == Mask::window
               ? "sliding-window attention forward (branch 3): mma.sync m16n8k16 (IMPL=0) or Hopper wgmma with the "
                 "softmax overlapped (IMPL=1; IMPL=2 warp-specialized), G heads packed in the tile rows"
               : "compressed attention forward (branch 1): mma.sync m16n8k16 (IMPL=0) or Hopper wgmma with the "
                 "softmax overlapped (IMPL=1; IMPL=2 warp-specialized), G heads packed in the tile rows";
  }
  std::vector<std::string_view> support_files() const override {
    return {"templates/attn_params.h", "templates/attn_params.cuh", "templates/hopper.cuh",
            "templates/hopper_attn.cuh", "templates/attn_fwd_hopper.cuh"};
  }
  std::string_view template_path() const override { return "templates/attn_fwd.cuh"; }

  const std::vector<ParamDecl>& params() const override {
    static const std::vector<ParamDecl> decls = {
        {"BM", {64, 128, 192}, "rows (query position x head-in-group) per CTA; 16 per warp (IMPL=0), 64 per "
                               "warpgroup (IMPL=1, 2; 192 for IMPL=1 only)"},
        {"BN", {16, 32, 64, 128}, "keys per shared-memory tile"},
        {"QREGS", {0, 1}, "1: Q fragments held in registers; 0: re-read from shared memory"},
        {"IMPL", {0, 1, 2},
         "0: mma.sync (any GPU since sm_80); 1: Hopper wgmma, 64 rows per warpgroup (sm_90a); 2: IMPL=1 with the "
         "copies in a warpgroup of their own on mbarriers (warp-specialized, setmaxnreg)"},
        {"STAGES", {2, 3}, "K/V shared-memory stages (IMPL=1, 2; IMPL=0 double-buffers)"},
    };
    return decls;
  }

  std::optional<std::string> reject(const Problem& p, const TileConfig& c, int max_smem) const override {
    const int smem = smem_bytes(p, c);
    if (smem > max_smem) return fmt::format("shared memory {} B > device limit {} B", smem, max_smem);
    if (c.at("IMPL") == 0 && c.at("STAGES") != 2) return std::string("IMPL=0 double-buffers: STAGES=2 only");
    if (c.at("BM") == 192 && c.at("IMPL") != 1) return fmt::format("BM=192 (three warpgroups) is IMPL=1's only");
    // IMPL=2 at 64 rows is built for two CTAs per SM (its launch bounds and register split): both must fit in the
    // SM's shared memory (the opt-in limit plus the 1 KB each CTA reserves). H200: three stages do not (5.4-9.5 ms).
    // (64-bit: callers may pass INT_MAX for "no limit".)
    const long long per_cta = (static_cast<long long>(max_smem) + 1024) / 2 - 1024;
    if (c.at("IMPL") == 2 && c.at("BM") == 64 && smem > per_cta)
      return fmt::format("IMPL=2 at BM=64 runs two CTAs per SM: shared memory {} B > {} B each", smem, per_cta);
    if (c.at("IMPL") != 0) {
      if (c.at("BN") % 64 != 0)
        return fmt::format("IMPL={} takes keys in blocks of 64: BN={} is not", c.at("IMPL"), c.at("BN"));
      // O (dim_smem(dv) / 2: whole 64-column blocks), S (BN / 2), P (BN / 4), Q when held (dk / 4, rounded to 16),
      // and an eighth of dk's shared width for the descriptors and addresses. Calibrated against ptxas on sm_90a
      // (64 rows per CTA, where spills come first): 176 for (128, 128) with BN = 128 compiles clean, 184 spills
      // (dk 192 with BN = 128, or with BN = 64 and Q held).
      const int regs = head_dim_smem(p.dv) / 2 + c.at("BN") * 3 / 4 +
                       (c.at("QREGS") ? head_dim_mma(p.dk) / 4 : 0) + head_dim_smem(p.dk) / 8;
      if (regs > 180) return fmt::format("fragment registers {} > 180: would spill", regs);
      // IMPL=2's consumers get what setmaxnreg gives them: 232 registers at 128 rows, 168 at 64 (two CTAs per SM);
      // IMPL=1 at 192 rows (384 threads) has 168. The estimate runs about 40 below what ptxas allocates.
      const int budget = c.at("BM") == 128 ? 232 : 168;
      if ((c.at("IMPL") == 2 || c.at("BM") == 192) && regs + 40 > budget)
        return fmt::format("fragment registers {} + 40 > {}, the compute threads' share at BM={}: would spill", regs,
                           budget, c.at("BM"));
      return std::nullopt;
    }
    // Accumulators and fragments live in registers: O (dv/2), S (BN/2), Q (dk/4 when held), dims rounded up to 16
    // as the MMA loops run. Past ~200 the compiler spills (255 is the hard cap, and addressing needs the rest).
    const int regs = head_dim_mma(p.dv) / 2 + c.at("BN") / 2 + (c.at("QREGS") ? head_dim_mma(p.dk) / 4 : 0);
    if (regs > 200) return fmt::format("fragment registers {} > 200: would spill", regs);
    return std::nullopt;
  }

  TileConfig default_config(const Problem& p) const override {
    // The Hopper kernels where they serve the problem: 128 rows (two computing warpgroups), 64-key tiles, Q from
    // shared memory, three stages where they fit. The warp-specialized IMPL=2 where its copying warpgroup takes the
    // strided-row path (head dims padded to 64 or 128 elements: templates/hopper.cuh's load_rows_sw128), IMPL=1
    // elsewhere. H200, T = 65536, 2026-12-01 (bench/RESULTS.md): fla win_fwd 3.66 ms and cmp_fwd 3.77 with IMPL=2
    // against IMPL=1's 4.19 and 4.49; paper (dk = 192, the rolled copies) IMPL=2 5.77 and 17.19 against IMPL=1's 4.70
    // and 15.04. Every target is sm_90a today (the runtime compiles for it).
    const bool ws_copies = head_dim_smem(p.dk) <= 128 && head_dim_smem(p.dv) <= 128;
    for (int impl : {2, 1}) {
      if (impl == 2 && !ws_copies) continue;
      for (int stages : {3, 2}) {
        const TileConfig h = {{"BM", 128}, {"BN", 64}, {"QREGS", 0}, {"IMPL", impl}, {"STAGES", stages}};
        if (!reject(p, h, kHopperMaxSmemOptin)) return h;
      }
    }
    return portable_default_config(p);
  }

  TileConfig portable_default_config(const Problem& p) const override {
    // The mma.sync kernel:
    // the fastest of the tile sweep on the H200 at T = 65536 (bench/RESULTS.md) among the configs that do not
    // spill, until the tuner's database supplies measured winners per problem.
    // Head dims count as the MMA loops run them (rounded up to 16).
    if (head_dim_mma(p.dk) > 192 || head_dim_mma(p.dv) > 192)
      return {{"BM", 128}, {"BN", 16}, {"QREGS", 0}, {"IMPL", 0}, {"STAGES", 2}};
    if (head_dim_mma(p.dk) > 128 && mask_ == Mask::compressed)
      return {{"BM", 64}, {"BN", 32}, {"QREGS", 0}, {"IMPL", 0}, {"STAGES", 2}};
    return {{"BM", 64}, {"BN", 32}, {"QREGS", 1}, {"IMPL", 0}, {"STAGES", 2}};
  }

  LaunchGeometry geometry(const Problem& p, const TileConfig& c) const override {
    LaunchGeometry g;
    const int64_t rows = p.T * p.G();
    g.grid = {static_cast<unsigned>((rows + c.at("BM") - 1) / c.at("BM")), static_cast<unsigned>(p.H),
              static_cast<unsigned>(p.B)};
    g.block = {static_cast<unsigned>(threads(c)), 1, 1};
    g.smem_bytes = smem_bytes(p, c);
    return g;
  }

  std::string preamble(const Problem& p, const TileConfig& c) const override {
    return fmt::format(
        "typedef {} elem;\nconstexpr int kMask = {}, kDK = {}, kDV = {}, kG = {}, kBM = {}, kBN = {}, kQInRegs = {}, "
        "kImpl = {}, kStages = {};\n",
        p.dtype == Dtype::bf16 ? "bf16" : "f16", mask_constant(), p.dk, p.dv, p.G(), c.at("BM"), c.at("BN"),
        c.at("QREGS"), c.at("IMPL"), c.at("STAGES"));
  }
  std::string entry_body() const override { return "nsa::attn_fwd::run(p);"; }
  std::string launch_bounds(const Problem&, const TileConfig& c) const override {
    // IMPL=2 names its CTAs per SM too (two at 64 rows, so that one's prologue and epilogue overlap the other's
    // tiles): ptxas applies the kernel's setmaxnreg split (templates/attn_fwd_hopper.cuh) only where the launch
    // bounds fix the registers at entry.
    if (c.at("IMPL") == 2) return fmt::format("{}, {}", threads(c), c.at("BM") == 64 ? 2 : 1);
    return std::to_string(threads(c));
  }

private:
  // A warp per 16 rows (IMPL=0); a warpgroup per 64 rows (IMPL=1, the same count), and one more that copies (IMPL=2).
  static int threads(const TileConfig& c) { return c.at("BM") / 16 * 32 + (c.at("IMPL") == 2 ? 128 : 0); }
  // Shared-memory rows are padded to 64 elements (templates/common.cuh); IMPL=1, 2 align their tiles to 1 KB;
  // IMPL=2 adds two mbarriers per stage.
  static int smem_bytes(const Problem& p, const TileConfig& c) {
    const int dk = head_dim_smem(p.dk), dv = head_dim_smem(p.dv);
    const int impl = c.at("IMPL");
    const int stages = impl != 0 ? c.at("STAGES") : 2;
    return c.at("BM") * dk * 2 + stages * c.at("BN") * (dk + dv) * 2 + (impl != 0 ? 1024 : 0) +
           (impl == 2 ? 16 * stages : 0);
  }
};

class AttnFwdRefFamily final : public AttnFamily {
public:
  explicit AttnFwdRefFamily(Mask mask) : AttnFamily(mask) {}
  std::string_view name() const override { return mask_ == Mask::window ? "win_fwd_ref" : "cmp_fwd_ref"; }
  std::string_view description() const override {
    return mask_ == Mask::window
               ? "simple window forward, one warp per (query, head), fp32: the GPU reference for long sequences"
               : "simple compressed forward, one warp per (query, head), fp32: the GPU reference for long sequences";
  }
  std::string_view template_path() const override { return "templates/attn_fwd_ref.cuh"; }
  const std::vector<ParamDecl>& params() const override {
    static const std::vector<ParamDecl> none;
    return none;
  }
  std::optional<std::string> reject(const Problem&, const TileConfig&, int) const override { return std::nullopt; }
  TileConfig default_config(const Problem&) const override { return {}; }
  LaunchGeometry geometry(const Problem& p, const TileConfig&) const override {
    LaunchGeometry g;
    const int64_t items = p.T * p.HQ;
    g.grid = {static_cast<unsigned>((items + 3) / 4), 1, static_cast<unsigned>(p.B)};
    g.block = {128, 1, 1};
    return g;
  }
  std::string preamble(const Problem& p, const TileConfig&) const override {
    return fmt::format("typedef {} elem;\nconstexpr int kMask = {}, kDK = {}, kDV = {}, kG = {};\n",
                       p.dtype == Dtype::bf16 ? "bf16" : "f16", mask_constant(), p.dk, p.dv, p.G());
  }
  std::string entry_body() const override { return "nsa::attn_fwd_ref::run(p);"; }
  std::string launch_bounds(const Problem&, const TileConfig&) const override { return "128"; }
};

}  // namespace

const KernelFamily& win_fwd_family() {
  static const AttnFwdFamily f(Mask::window);
  return f;
}
const KernelFamily& cmp_fwd_family() {
  static const AttnFwdFamily f(Mask::compressed);
  return f;
}
const KernelFamily& win_fwd_ref_family() {
  static const AttnFwdRefFamily f(Mask::window);
  return f;
}
const KernelFamily& cmp_fwd_ref_family() {
  static const AttnFwdRefFamily f(Mask::compressed);
  return f;
}

}  // namespace nsajit
