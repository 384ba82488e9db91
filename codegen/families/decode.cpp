// NSA decode's families: the attention step over a paged KV cache (templates/decode.cuh) and the cache append with
// the compressed entries it completes (templates/decode_append.cuh). Problem.T is the cache's capacity in tokens
// per sequence (max_pages * page_size): it bounds the compressed entries and selection blocks a query can see,
// which size the decode kernel's shared memory. The query count Tq (decode) and the appended count Tn (append)
// are launch arguments, not part of the kernel.
#include <fmt/format.h>

#include <algorithm>

#include "codegen/family.h"
#include "base/error.h"
#include "templates/decode_params.h"

namespace nsajit {

int64_t decode_pow2_at_least(int64_t v) {
  int64_t r = 1;
  while (r < v) r *= 2;
  return r;
}

namespace {

constexpr int kDecodeMaxN = nsa::kDecodeMaxSelected;

int64_t max_cmp_entries(const Problem& p) {
  return std::max<int64_t>(decode_pow2_at_least(p.T >= p.l ? (p.T - p.l) / p.d + 1 : 1), 32);
}
int64_t max_sel_blocks(const Problem& p) { return std::max<int64_t>(decode_pow2_at_least((p.T + p.lsel - 1) / p.lsel), 32); }

void check_decode_dims(const char* who, const Problem& p) {
  p.validate();
  for (auto [name, dim] : {std::pair{"dk", p.dk}, std::pair{"dv", p.dv}})
    if (dim % 8 != 0 || dim < 8 || dim > 256)
      throw UsageError(fmt::format("{}: {} = {} must be a multiple of 8 from 8 to 256", who, name, dim));
}

// The decode kernel's shared memory (templates/decode.cuh's layout), in bytes.
int64_t decode_smem(const Problem& p, int threads, int kt, bool mma = false) {
  const int64_t G = p.HQ / p.H, gg = threads / kt, warps = threads / 32;
  const int64_t q = mma ? std::max<int64_t>(16 * p.dk / 2, G * p.dk) : G * p.dk;
  const int64_t kv = mma ? warps * kt * (p.dk + p.dv) * 2 / 4 : kt * (p.dk + 1) + static_cast<int64_t>(kt) * p.dv;
  const int64_t floats = q + kv + G * kt + gg * kt + 4 * G + max_cmp_entries(p) + max_sel_blocks(p) + 2 * warps +
                         kDecodeMaxN;
  return floats * 4 + (max_sel_blocks(p) + 15) / 16 * 16;
}

// Split-KV by default only for small batches: measured on the H200 (fla, 64k), B = 64 (256 pairs) is fastest in one
// launch (170 us; SPLIT=2 219, 4 255) and B = 1 (4 pairs) with 32 CTAs (SPLIT=8 68 us; 4: 73, 16: 68, 32: 71): the
// split phases cost a fixed latency each, so the split stops at 32 CTAs, at most 8 per pair and no more than the
// compressed entries' 32-key tiles. The tuner refines it per (B, T bucket).
int decode_default_split(const Problem& p) {
  const int64_t pairs = p.B * p.H, tiles = std::max<int64_t>(1, max_cmp_entries(p) / 32);
  int split = 1;
  while (split < 8 && pairs * split < 32 && split * 2 <= tiles) split *= 2;
  return split;
}

// The launch's shared memory: the kernel's layout, and with split-KV at least the merge's weights and sums
// ([2][3][split][G] floats, templates/decode.cuh phase_combine).
int64_t launch_smem(const Problem& p, const TileConfig& c) {
  const int64_t base = decode_smem(p, c.at("THREADS"), c.at("KT"), c.at("MMA") != 0);
  const int64_t split = c.count("SPLIT") ? c.at("SPLIT") : 1;
  return split > 1 ? std::max<int64_t>(base, 6 * split * (p.HQ / p.H) * 4) : base;
}

class DecodeFamily final : public KernelFamily {
public:
  std::string_view name() const override { return "decode"; }
  std::string_view description() const override {
    return "NSA decode over a paged KV cache: the group's heads as the rows, per (KV head, query token, sequence) "
           "one CTA (SPLIT=1) or SPLIT CTAs per branch with a merge; compressed branch, selection, selected and "
           "window branches, gated sum (tensor cores with MMA=1, else fp32 CUDA cores)";
  }
  std::string_view template_path() const override { return "templates/decode.cuh"; }
  std::vector<std::string_view> support_files() const override { return {"templates/decode_params.h"}; }
  std::string_view harness_path() const override { return "templates/harness_decode.cuh"; }
  const std::vector<ParamDecl>& params() const override {
    static const std::vector<ParamDecl> decls = {
        {"THREADS", {128, 256, 512}, "threads per CTA"},
        {"KT", {16, 32}, "keys per shared-memory tile"},
        {"MMA", {0, 1}, "1: the branches' attention on tensor cores (G <= 16, dims multiples of 64, 4 warps, KT 32)"},
        {"SPLIT", {1, 2, 4, 8, 16, 32, 64},
         "split-KV: CTAs per (sequence, query token, KV head) over each branch's keys; > 1 runs the step as five "
         "launches (partials, selection probabilities, selection, selected branch, merge) through a workspace"}};
    return decls;
  }
  void check_problem(const Problem& p) const override {
    check_decode_dims("decode", p);
    if (p.lsel != 16 && p.lsel != 32 && p.lsel != 64 && p.lsel != 128)
      throw UsageError(fmt::format("decode: l' = {} is not supported: supported are 16, 32, 64, 128", p.lsel));
    if (p.n > kDecodeMaxN)
      throw UsageError(fmt::format("decode: n = {} selected blocks: at most {} are supported", p.n, kDecodeMaxN));
    const int64_t smem = decode_smem(p, 512, 16);
    if (smem > kHopperMaxSmemOptin)
      throw UsageError(fmt::format("decode: a cache of {} tokens per sequence needs {} B of shared memory per CTA "
                                   "(> {} B): use a smaller capacity (max_pages * page_size)",
                                   p.T, smem, kHopperMaxSmemOptin));
  }
  std::optional<std::string> reject(const Problem& p, const TileConfig& c, int max_smem) const override {
    const int threads = c.at("THREADS"), kt = c.at("KT");
    const bool mma = c.at("MMA") != 0;
    const int64_t G = p.HQ / p.H;
    if (mma && (G > 16 || p.dk % 64 != 0 || p.dv % 64 != 0 || kt != 32 || threads != 128))
      return std::string("MMA=1 needs G <= 16, dk and dv multiples of 64, KT=32 and THREADS=128");
    if ((G * p.dv + threads - 1) / threads > 64)
      return fmt::format("G x dv = {} accumulators over {} threads: more than 64 per thread", G * p.dv, threads);
    if (launch_smem(p, c) > max_smem) return fmt::format("shared memory {} B > {} B", launch_smem(p, c), max_smem);
    return std::nullopt;
  }
  // The tensor-core path where it applies (measured on the H200: 233 us against 1276 us at B = 64, 64k, fla), else
  // CUDA cores with enough threads for the group's accumulators.
  TileConfig default_config(const Problem& p) const override {
    const int split = decode_default_split(p);
    const TileConfig mma = {{"THREADS", 128}, {"KT", 32}, {"MMA", 1}, {"SPLIT", split}};
    if (!reject(p, mma, kHopperMaxSmemOptin)) return mma;
    const int64_t G = p.HQ / p.H;
    int threads = 128;
    while (threads < 512 && (G * p.dv + threads - 1) / threads > 32) threads *= 2;
    return {{"THREADS", threads}, {"KT", 32}, {"MMA", 0}, {"SPLIT", split}};
  }
  LaunchGeometry geometry(const Problem& p, const TileConfig& c) const override {
    LaunchGeometry g;
    g.grid = {static_cast<unsigned>(p.H), 1, static_cast<unsigned>(p.B)};  // y: the query tokens (the API's Tq)
    g.block = {static_cast<unsigned>(c.at("THREADS")), 1, 1};
    g.smem_bytes = static_cast<int>(launch_smem(p, c));
    return g;
  }
  TileConfig source_config(const TileConfig& c) const override {
    TileConfig s = c;
    s.erase("SPLIT");  // DecodeParams.split: the same kernel serves every split
    return s;
  }
  std::string preamble(const Problem& p, const TileConfig& c) const override {
    return fmt::format(
        "typedef {} elem;\nconstexpr int kDK = {}, kDV = {}, kG = {}, kThreads = {}, kKT = {}, kMaxCmp = {}, "
        "kMaxSel = {}, kMaxN = {}, kMma = {};\n",
        p.dtype == Dtype::bf16 ? "bf16" : "f16", p.dk, p.dv, p.HQ / p.H, c.at("THREADS"), c.at("KT"),
        max_cmp_entries(p), max_sel_blocks(p), kDecodeMaxN, c.at("MMA"));
  }
  std::string_view params_type() const override { return "nsa::DecodeParams"; }
  std::string entry_body() const override { return "nsa::decode::run(p);"; }
  std::string launch_bounds(const Problem&, const TileConfig& c) const override {
    return std::to_string(c.at("THREADS")) + ", 1";
  }
  // Per query token of each sequence at full capacity: the three branches' keys, 2 (dk + dv) FLOP per (head, key),
  // and the compressed keys' second pass.
  double flops(const Problem& p) const override {
    const double nc = p.T >= p.l ? static_cast<double>((p.T - p.l) / p.d + 1) : 0.0;
    const double keys = nc + static_cast<double>(p.n) * p.lsel + p.w;
    return static_cast<double>(p.B) * p.HQ * (keys * 2.0 * (p.dk + p.dv) + nc * 2.0 * p.dk);
  }
  double min_bytes(const Problem& p) const override {
    const double nc = p.T >= p.l ? static_cast<double>((p.T - p.l) / p.d + 1) : 0.0;
    const double keys = nc + static_cast<double>(p.n) * p.lsel + p.w;
    return static_cast<double>(p.B) * p.H * keys * (p.dk + p.dv) * 2.0;
  }
};

class DecodeAppendFamily final : public KernelFamily {
public:
  std::string_view name() const override { return "decode_append"; }
  std::string_view description() const override {
    return "NSA decode's cache append: new k/v rows into the paged pools, and the compressed entries they complete "
           "(mean pool), one thread per 16-byte chunk";
  }
  std::string_view template_path() const override { return "templates/decode_append.cuh"; }
  std::vector<std::string_view> support_files() const override { return {"templates/decode_params.h"}; }
  std::string_view harness_path() const override { return "templates/harness_decode_append.cuh"; }
  const std::vector<ParamDecl>& params() const override {
    static const std::vector<ParamDecl> decls = {{"THREADS", {128, 256}, "threads per CTA"}};
    return decls;
  }
  void check_problem(const Problem& p) const override { check_decode_dims("decode_append", p); }
  std::optional<std::string> reject(const Problem&, const TileConfig&, int) const override { return std::nullopt; }
  TileConfig default_config(const Problem&) const override { return {{"THREADS", 256}}; }
  // For one appended token per sequence (the API sizes the grid for its Tn).
  LaunchGeometry geometry(const Problem& p, const TileConfig& c) const override {
    LaunchGeometry g;
    const int64_t items = static_cast<int64_t>(p.H) * (p.dk / 8 + p.dv / 8) * 2;
    g.grid = {static_cast<unsigned>((items + c.at("THREADS") - 1) / c.at("THREADS")), 2,
              static_cast<unsigned>(p.B)};
    g.block = {static_cast<unsigned>(c.at("THREADS")), 1, 1};
    return g;
  }
  std::string preamble(const Problem& p, const TileConfig& c) const override {
    return fmt::format("typedef {} elem;\nconstexpr int kDK = {}, kDV = {}, kThreads = {};\n",
                       p.dtype == Dtype::bf16 ? "bf16" : "f16", p.dk, p.dv, c.at("THREADS"));
  }
  std::string_view params_type() const override { return "nsa::DecodeAppendParams"; }
  std::string entry_body() const override { return "nsa::decode_append::run(p);"; }
  std::string launch_bounds(const Problem&, const TileConfig& c) const override {
    return std::to_string(c.at("THREADS")) + ", 1";
  }
  double flops(const Problem& p) const override { return static_cast<double>(p.B) * p.H * (p.dk + p.dv); }
  double min_bytes(const Problem& p) const override { return static_cast<double>(p.B) * p.H * (p.dk + p.dv) * 4.0; }
};

}  // namespace

const KernelFamily& decode_family() {
  static const DecodeFamily f;
  return f;
}
const KernelFamily& decode_append_family() {
  static const DecodeAppendFamily f;
  return f;
}

}  // namespace nsajit
