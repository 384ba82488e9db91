// The backward families (NSA.md "Backward"): per branch a query-centric dq kernel and a key-centric dk/dv kernel
// (templates/attn_bwd.cuh), and the small kernels around them (templates/bwd_util.cuh): the preprocessing of
// delta and the gate gradients, the selection's inverted index, the reduce of the selected blocks' partial sums,
// the mean pool's backward and the cast of the fp32 gradients.
#include <fmt/format.h>

#include <algorithm>
#include <utility>

#include "base/error.h"
#include "codegen/family.h"

namespace nsajit {
namespace {

constexpr int kSelBlocks[] = {16, 32, 64, 128};
constexpr int kTopN[] = {8, 16, 32};

enum class Branch { window, compressed, selected };
enum class Part { dq, dkv };

const char* branch_name(Branch b) {
  return b == Branch::window ? "win" : b == Branch::compressed ? "cmp" : "slc";
}
const char* mask_constant(Branch b) {
  return b == Branch::window ? "kMaskWindow" : b == Branch::compressed ? "kMaskCompressed" : "kMaskSelected";
}

void check_dims(std::string_view who, const Problem& p) {
  p.validate();
  check_head_dims(who, p);
}

void check_selection(std::string_view who, const Problem& p) {
  if (std::find(std::begin(kSelBlocks), std::end(kSelBlocks), p.lsel) == std::end(kSelBlocks))
    throw UsageError(
        fmt::format("{} does not support l' = {}: supported selection block lengths are 16, 32, 64, 128", who,
                    p.lsel));
  if (std::find(std::begin(kTopN), std::end(kTopN), p.n) == std::end(kTopN))
    throw UsageError(fmt::format("{} does not support n = {}: supported are 8, 16, 32 selected blocks", who, p.n));
}

std::string elem_type(const Problem& p) { return p.dtype == Dtype::bf16 ? "bf16" : "f16"; }

// Keys seen by all queries of one head together, per branch (as the forward families count them).
double keys_per_head(Branch br, const Problem& p) {
  const double T = static_cast<double>(p.T);
  if (br == Branch::window) {
    const double w = p.w;
    return T <= w ? T * (T + 1) / 2 : w * (w + 1) / 2 + (T - w) * w;
  }
  if (br == Branch::compressed) {
    double keys = 0;
    for (int64_t t = p.l - 1; t < p.T; ++t) keys += static_cast<double>((t + 1 - p.l) / p.d + 1);
    return keys;
  }
  double keys = 0;
  for (int64_t jb = 0; jb * p.lsel < p.T; ++jb) {
    const double in_block = static_cast<double>(std::min<int64_t>(p.lsel, p.T - jb * p.lsel));
    const double cnt = static_cast<double>(std::min<int64_t>(p.n, jb + 1));
    keys += in_block * (cnt - 1) * p.lsel + in_block * (in_block + 1) / 2;
  }
  return keys;
}

class AttnBwdFamily final : public KernelFamily {
public:
  AttnBwdFamily(Branch br, Part part)
      : br_(br), part_(part), name_(fmt::format("{}_bwd_{}", branch_name(br), part == Part::dq ? "dq" : "dkv")) {}
  std::string_view name() const override { return name_; }
  std::string_view description() const override {
    static const std::string d[3][2] = {
        {"window backward, dq: query-centric FA2 loop (S, dP, dQ), mma.sync, G heads in the tile rows",
         "window backward, dk/dv: key-centric FA2 loop (S^T, dP^T, dV, dK), mma.sync"},
        {"compressed backward, dq: query-centric over the visible compressed keys, mma.sync",
         "compressed backward, dk_cmp/dv_cmp: key-centric over the queries that see each compressed key"},
        {"selected backward, dq: one warp per 16 rows (16/G positions' heads, or 16 heads of one) over the union of "
         "their selected blocks, mma.sync",
         "selected backward, dk/dv: one CTA per work item of a block's inverted index (at most QCHUNK selecting "
         "positions x G heads), partial sums reduced in item order: deterministic"}};
    return d[static_cast<int>(br_)][static_cast<int>(part_)];
  }
  std::string_view template_path() const override { return "templates/attn_bwd.cuh"; }
  std::vector<std::string_view> support_files() const override {
    return {"templates/attn_params.h", "templates/attn_params.cuh", "templates/bwd_params.h"};
  }
  std::string_view harness_path() const override { return "templates/harness_attn_bwd.cuh"; }
  std::vector<std::string_view> harness_support_files() const override { return {"templates/harness_selection.h"}; }
  std::string_view params_type() const override { return "nsa::AttnBwdParams"; }

  const std::vector<ParamDecl>& params() const override {
    static const std::vector<ParamDecl> dq_dense = {
        {"BM", {64, 128}, "query rows (position x head-in-group) per CTA; 16 per warp"},
        {"BN", {16, 32, 64}, "keys per shared-memory tile"},
    };
    static const std::vector<ParamDecl> dq_sel = {
        {"WARPS", {1, 2, 4, 8}, "warps per CTA; each works alone on 16 rows: the heads of 16/G positions (G <= 16) "
                                "over the union of their blocks, or 16 heads of one position"},
        {"BN", {16, 32, 64}, "keys per shared-memory tile (a selection block is l'/BN tiles)"},
    };
    static const std::vector<ParamDecl> dkv_dense = {
        {"WARPS", {2, 4, 8}, "warps per CTA; each owns 16 keys"},
        {"BM", {16, 32, 64}, "query rows per streamed tile"},
    };
    static const std::vector<ParamDecl> dkv_cmp = {
        {"WARPS", {2, 4, 8}, "warps per CTA; each owns 16 compressed keys"},
        {"BM", {16, 32, 64}, "query rows per streamed tile"},
        {"QSPLIT", {2048, 4096, 8192}, "query positions per CTA: a key tile's queries (up to T) are cut into chunks "
                                       "summed by cmp_bwd_reduce in chunk order"},
    };
    static const std::vector<ParamDecl> dkv_sel = {
        {"BM", {16, 32, 64}, "query rows per streamed tile"},
        {"QCHUNK", {1024, 2048, 4096}, "selecting positions per work item: a hot block is split over CTAs"},
    };
    if (part_ == Part::dq) return br_ == Branch::selected ? dq_sel : dq_dense;
    if (br_ == Branch::compressed) return dkv_cmp;
    return br_ == Branch::selected ? dkv_sel : dkv_dense;
  }

  void check_problem(const Problem& p) const override {
    check_dims(name_, p);
    if (br_ == Branch::selected) check_selection(name_, p);
  }

  // Head dims count as the MMA loops run them (rounded up to 16) in the register estimates and the defaults.
  std::optional<std::string> reject(const Problem& p, const TileConfig& c, int max_smem) const override {
    const int smem = smem_bytes(p, c);
    if (smem > max_smem) return fmt::format("shared memory {} B > device limit {} B", smem, max_smem);
    const int dk = head_dim_mma(p.dk), dv = head_dim_mma(p.dv);
    if (part_ == Part::dq) {
      const int BN = c.at("BN");
      if (br_ == Branch::selected && p.lsel % BN != 0) return fmt::format("BN = {} does not divide l' = {}", BN, p.lsel);
      const int regs = dk / 2 + BN;  // dQ accumulators, S and dP
      if (regs > 200) return fmt::format("fragment registers {} > 200: would spill", regs);
    } else {
      const int BM = c.at("BM");
      const int regs = dk / 2 + dv / 2 + BM;  // dK, dV accumulators, S^T and dP^T
      // The largest head dims (256, 256) spill at every BM; keep the smallest BM for them.
      if (regs > 200 && !(BM == 16 && dk + dv > 300)) return fmt::format("fragment registers {} > 200: would spill", regs);
    }
    return std::nullopt;
  }

  TileConfig default_config(const Problem& p) const override {
    const int dk = head_dim_mma(p.dk), dv = head_dim_mma(p.dv);
    if (part_ == Part::dq) {
      if (br_ == Branch::selected) {
        // Four warps, each with its own tiles, unless their shared memory does not fit (dims padded to 64 past
        // 128 + 128): then fewer.
        TileConfig c = {{"WARPS", 4}, {"BN", std::min(dk > 192 ? 16 : 32, p.lsel)}};
        while (c["WARPS"] > 1 && reject(p, c, kHopperMaxSmemOptin)) c["WARPS"] /= 2;
        return c;
      }
      return {{"BM", 64}, {"BN", dk > 192 ? 16 : 32}};
    }
    // BM = 32 for dk + dv <= 128 and at (128, 128) (as measured when those were the only dims), else 16: from
    // dk + dv = 160 on, BM = 32 spills (ptxas through NVRTC, sm_90a: 52 B for cmp_bwd_dkv at (80, 80)).
    const int BM = dk + dv <= 128 || (dk == 128 && dv == 128) ? 32 : 16;
    if (br_ == Branch::selected) return {{"BM", BM}, {"QCHUNK", 1024}};
    if (br_ == Branch::compressed) return {{"WARPS", 4}, {"BM", BM}, {"QSPLIT", 4096}};
    return {{"WARPS", 4}, {"BM", BM}};
  }

  // The selected dkv grid's x is the runtime's bound on the work items (set by runtime/backward.cpp).
  LaunchGeometry geometry(const Problem& p, const TileConfig& c) const override {
    LaunchGeometry g;
    const int64_t G = p.G();
    if (part_ == Part::dq) {
      if (br_ == Branch::selected) {
        const int64_t P = G <= 16 ? 16 / G : 1;  // positions per warp
        const int64_t units = (p.T + P - 1) / P * ((G + 15) / 16);
        const int W = c.at("WARPS");
        g.grid = {static_cast<unsigned>((units + W - 1) / W), static_cast<unsigned>(p.H), static_cast<unsigned>(p.B)};
        g.block = {static_cast<unsigned>(W * 32), 1, 1};
      } else {
        const int BM = c.at("BM");
        g.grid = {static_cast<unsigned>((p.T * G + BM - 1) / BM), static_cast<unsigned>(p.H),
                  static_cast<unsigned>(p.B)};
        g.block = {static_cast<unsigned>(BM / 16 * 32), 1, 1};
      }
    } else if (br_ == Branch::selected) {
      g.grid = {1, static_cast<unsigned>(p.H), 1};
      g.block = {static_cast<unsigned>(p.lsel / 16 * 32), 1, 1};
    } else {
      const int W = c.at("WARPS");
      const int64_t keys = br_ == Branch::window ? p.T : (p.T >= p.l ? (p.T - p.l) / p.d + 1 : 0);
      const int64_t chunks = br_ == Branch::compressed ? (p.T + c.at("QSPLIT") - 1) / c.at("QSPLIT") : 1;
      g.grid = {static_cast<unsigned>(std::max<int64_t>(1, (keys + 16 * W - 1) / (16 * W)) * chunks),
                static_cast<unsigned>(p.H), static_cast<unsigned>(p.B)};
      g.block = {static_cast<unsigned>(W * 32), 1, 1};
    }
    g.smem_bytes = smem_bytes(p, c);
    return g;
  }

  std::string preamble(const Problem& p, const TileConfig& c) const override {
    int BM = 64, BN = 32, W = 4, QC = 1024;
    if (part_ == Part::dq) {
      BN = c.at("BN");
      if (br_ == Branch::selected) W = c.at("WARPS");
      else BM = c.at("BM");
    } else {
      BM = c.at("BM");
      if (br_ == Branch::selected) W = p.lsel / 16, QC = c.at("QCHUNK");
      else W = c.at("WARPS");
    }
    return fmt::format(
        "typedef {} elem;\nconstexpr int kMask = {}, kPart = {}, kDK = {}, kDV = {}, kG = {}, kL = {};\n"
        "constexpr int kBM = {}, kBN = {}, kWarps = {}, kQChunk = {};\n",
        elem_type(p), mask_constant(br_), part_ == Part::dq ? 0 : 1, p.dk, p.dv, p.G(), p.lsel, BM, BN, W, QC);
  }
  std::string entry_body() const override { return "nsa::attn_bwd::run(p);"; }
  std::string launch_bounds(const Problem& p, const TileConfig& c) const override {
    return std::to_string(geometry(p, c).block.x);
  }

  double flops(const Problem& p) const override {
    // Per (query, head, visible key): dq recomputes S and dP and adds dQ (3 products), dkv S, dP, dV and dK (4).
    const double per_key = part_ == Part::dq ? 2.0 * (2 * p.dk + p.dv) : 2.0 * (2 * p.dk + 2 * p.dv);
    return static_cast<double>(p.B) * p.HQ * keys_per_head(br_, p) * per_key;
  }
  double min_bytes(const Problem& p) const override {
    const double tokens = static_cast<double>(p.B) * static_cast<double>(p.T);
    // q, do, lse, delta, gate read; dq (fp32) or dk/dv (fp32) written.
    double bytes = tokens * p.HQ * ((p.dk + p.dv) * 2.0 + 10.0);
    bytes += part_ == Part::dq ? tokens * p.HQ * p.dk * 4.0 : tokens * p.H * (p.dk + p.dv) * 4.0;
    return bytes;
  }

private:
  // Shared-memory rows are padded to 64 elements (templates/common.cuh).
  int smem_bytes(const Problem& p, const TileConfig& c) const {
    const int row = (head_dim_smem(p.dk) + head_dim_smem(p.dv)) * 2;
    if (part_ == Part::dq) {
      if (br_ == Branch::selected) {
        const int P = p.G() <= 16 ? 16 / p.G() : 1;
        return c.at("WARPS") * (16 * row + 2 * c.at("BN") * row + P * 32 * 8);
      }
      return c.at("BM") * row + 2 * c.at("BN") * row;
    }
    const int keys = br_ == Branch::selected ? p.lsel : 16 * c.at("WARPS");
    return keys * row + 2 * (c.at("BM") * row + c.at("BM") * 16);
  }

  Branch br_;
  Part part_;
  std::string name_;
};

// The untunable helpers of the backward, each one entry of templates/bwd_util.cuh; the runtime sets their grids.
class BwdUtilFamily final : public KernelFamily {
public:
  BwdUtilFamily(std::string name, std::string description, std::string params_type, std::string body, bool selection)
      : name_(std::move(name)),
        description_(std::move(description)),
        params_type_(std::move(params_type)),
        body_(std::move(body)),
        harness_("templates/harness_" + name_ + ".cuh"),
        selection_(selection) {}
  std::string_view name() const override { return name_; }
  std::string_view description() const override { return description_; }
  std::string_view template_path() const override { return "templates/bwd_util.cuh"; }
  std::vector<std::string_view> support_files() const override { return {"templates/bwd_params.h"}; }
  // templates/harness_<name>.cuh: each helper's standalone program.
  std::string_view harness_path() const override { return harness_; }
  std::vector<std::string_view> harness_support_files() const override {
    if (name_.rfind("slc_", 0) == 0) return {"templates/harness_selection.h"};  // the selection's index
    return {};
  }
  std::string_view params_type() const override { return params_type_; }
  const std::vector<ParamDecl>& params() const override {
    static const std::vector<ParamDecl> none;
    return none;
  }
  void check_problem(const Problem& p) const override {
    p.validate();
    if (p.dk % 8 != 0 || p.dv % 8 != 0 || p.dk > 512 || p.dv > 512)
      throw UsageError(fmt::format("{}: head dims must be multiples of 8 up to 512 (dk = {}, dv = {})", name_, p.dk,
                                   p.dv));
    if (selection_) check_selection(name_, p);
  }
  std::optional<std::string> reject(const Problem&, const TileConfig&, int) const override { return std::nullopt; }
  TileConfig default_config(const Problem&) const override { return {}; }
  LaunchGeometry geometry(const Problem& p, const TileConfig&) const override {
    LaunchGeometry g;
    g.grid = {1, 1, static_cast<unsigned>(p.B)};
    g.block = {256, 1, 1};
    return g;
  }
  std::string preamble(const Problem& p, const TileConfig&) const override {
    return fmt::format("typedef {} elem;\nconstexpr int kDK = {}, kDV = {}, kL = {};\n", elem_type(p), p.dk, p.dv,
                       p.lsel);
  }
  std::string entry_body() const override { return body_; }
  std::string launch_bounds(const Problem&, const TileConfig&) const override { return "1024"; }
  double flops(const Problem&) const override { return 0; }
  double min_bytes(const Problem&) const override { return 0; }

private:
  std::string name_, description_, params_type_, body_, harness_;
  bool selection_;
};

}  // namespace

#define NSAJIT_BWD_FAMILY(fn, ...)         \
  const KernelFamily& fn() {               \
    static const AttnBwdFamily f(__VA_ARGS__); \
    return f;                              \
  }
NSAJIT_BWD_FAMILY(win_bwd_dq_family, Branch::window, Part::dq)
NSAJIT_BWD_FAMILY(win_bwd_dkv_family, Branch::window, Part::dkv)
NSAJIT_BWD_FAMILY(cmp_bwd_dq_family, Branch::compressed, Part::dq)
NSAJIT_BWD_FAMILY(cmp_bwd_dkv_family, Branch::compressed, Part::dkv)
NSAJIT_BWD_FAMILY(slc_bwd_dq_family, Branch::selected, Part::dq)
NSAJIT_BWD_FAMILY(slc_bwd_dkv_family, Branch::selected, Part::dkv)
#undef NSAJIT_BWD_FAMILY

const KernelFamily& bwd_pre_family() {
  static const BwdUtilFamily f("bwd_pre",
                               "backward preprocessing: delta_b = g_b <do, o_b> and dg_b = <do, o_b> for the three "
                               "branches in one pass over do, one warp per (token, query head)",
                               "nsa::BwdPreParams", "nsa::bwd_util::pre(p);", false);
  return f;
}
const KernelFamily& slc_bwd_index_family() {
  static const BwdUtilFamily f("slc_bwd_index",
                               "the selection's inverted index: per (KV head, block) the ascending positions that "
                               "selected it (bitmask, counts, scan, fill), cut into work items",
                               "nsa::SlcIndexParams", "nsa::bwd_util::slc_index(p);", true);
  return f;
}
const KernelFamily& slc_bwd_reduce_family() {
  static const BwdUtilFamily f("slc_bwd_reduce",
                               "selected dk/dv: the partial sums of a block split over several work items, added "
                               "in item order",
                               "nsa::SlcReduceParams", "nsa::bwd_util::slc_reduce(p);", false);
  return f;
}
const KernelFamily& cmp_bwd_reduce_family() {
  static const BwdUtilFamily f("cmp_bwd_reduce",
                               "compressed dk/dv: the per-chunk sums of cmp_bwd_dkv added up in chunk order",
                               "nsa::ChunkReduceParams", "nsa::bwd_util::chunk_reduce(p);", false);
  return f;
}
const KernelFamily& pool_bwd_family() {
  static const BwdUtilFamily f("pool_bwd",
                               "mean pool backward: each token gets dx_cmp / l of every compressed block covering it "
                               "(any l, d with d | l), fp32",
                               "nsa::PoolBwdParams", "nsa::bwd_util::pool_bwd(p);", false);
  return f;
}
const KernelFamily& bwd_cast_family() {
  static const BwdUtilFamily f("bwd_cast", "the fp32 gradients to the caller's dtype and strides",
                               "nsa::BwdCastParams", "nsa::bwd_util::cast(p);", false);
  return f;
}

}  // namespace nsajit
