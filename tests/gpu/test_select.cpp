// GPU tests of the top-n block selection (NSA.md branch 2, selection part).
//
// Small and medium shapes: fresh random normal q and k_cmp (k_cmp drawn directly, not pooled), lse_cmp from
// ref::compressed_attention on the same rounded values (stored as fp32; padding of a strided lse buffer is NaN, so
// a stray read shows), idx / cnt poisoned (0x7f7f7f7f) with guard rows after the last token, then
// ref::select_blocks (fed the fp32 lse) and ref::selection_matches (equal sets, or NSA.md's near ties) for every
// position and KV head of every sequence.
//
// Long sequences (T = 65536 with preset fla; T = 131072 with dk = 256, q a view with every other token row of its
// buffer, so that q's element offsets reach 2^32, past int32, asserted): lse_cmp is the
// true float64 log-sum-exp at a sample of positions and a plausible synthetic value elsewhere (the selection of a
// position depends only on its own lse, and every lse is a valid input). Every row is checked for structure (cnt,
// strictly ascending causal entries, the forced blocks, -1 padding); the sampled positions against scores
// recomputed here in float64 from NSA.md's definition (not by ref::select_blocks over the whole sequence, which
// would cost O(T^2) per head).
#include <doctest/doctest.h>
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <future>
#include <limits>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "base/error.h"
#include "cache/cubin_cache.h"
#include "codegen/codegen.h"
#include "codegen/family.h"
#include "reference/reference.h"
#include "runtime/device.h"
#include "runtime/jit.h"
#include "runtime/select_api.h"
#include "tuner/inputs.h"

using namespace nsajit;

namespace {

struct BlockShape {
  int l, d, lsel;
};
const BlockShape kShapes[] = {{32, 16, 64}, {64, 64, 64}, {32, 32, 64}, {64, 32, 64}};
const int kDks[] = {64, 128, 192, 256};
// G: the small ones, the paper's 16, and the MQA-like 48, 64 (HQ = 64, H = 1) and 128.
const int kGroups[] = {1, 2, 3, 4, 8, 16, 32, 48, 64, 128};
const int kTopNs[] = {8, 16, 32};
constexpr int32_t kPoison = 0x7f7f7f7f;
constexpr int64_t kGuardRows = 64;  // idx / cnt rows after the last token, which must stay poisoned

Problem select_problem(Dtype dtype, int dk, int G, int H, int64_t T, BlockShape s, int n, int64_t B = 1) {
  Problem p = preset("fla");
  p.dtype = dtype, p.dk = dk, p.dv = 128, p.H = H, p.HQ = G * H, p.T = T, p.B = B;
  p.l = s.l, p.d = s.d, p.lsel = s.lsel, p.n = n;
  return p;
}

// One test problem: varlen offsets (B = 1) or none; strided views of padded buffers or contiguous tensors.
struct Case {
  Problem p;
  std::vector<int32_t> cu;
  bool strided = false;
  uint64_t seed = 0;
  std::string what;
  bool zero_q = false;  // q = 0: every candidate block scores the same (exact ties)
  std::optional<TileConfig> config = std::nullopt;  // else the default
};

std::vector<Case> matrix_cases() {
  const int64_t lengths[] = {1, 15, 16, 17, 63, 64, 65, 511};
  std::vector<Case> out;
  int i = 0;
  for (Dtype dt : {Dtype::bf16, Dtype::fp16})
    for (int dk : kDks)
      for (int G : kGroups) {
        const Problem p = select_problem(dt, dk, G, G >= 16 ? 1 : 2, lengths[i % 8], kShapes[(i / 2) % 4],
                                         kTopNs[i % 3]);
        out.push_back({p, {}, false, 1000 + 7 * static_cast<uint64_t>(i), "matrix"});
        ++i;
      }
  return out;
}

std::vector<Case> length_cases() {
  std::vector<Case> out;
  uint64_t seed = 2000;
  for (int64_t T : {1, 15, 16, 17, 63, 64, 65, 511, 4096})
    out.push_back({select_problem(Dtype::bf16, 128, 4, 1, T, kShapes[0], 8), {}, false, seed += 3, "length"});
  // T = 4096 for the other block shapes, n = 16 and 32 among them (64 causal blocks: a real top-n).
  out.push_back({select_problem(Dtype::fp16, 64, 16, 1, 4096, kShapes[1], 16), {}, false, seed += 3, "length"});
  out.push_back({select_problem(Dtype::bf16, 192, 2, 1, 4096, kShapes[2], 32), {}, false, seed += 3, "length"});
  out.push_back({select_problem(Dtype::fp16, 128, 8, 1, 4096, kShapes[3], 8), {}, false, seed += 3, "length"});
  // Past 64 candidate blocks a lane holds three or more of them: its cache of two empties and it rescans.
  out.push_back({select_problem(Dtype::bf16, 64, 1, 1, 16384, kShapes[1], 32), {}, false, seed += 3, "rescans"});
  out.push_back({select_problem(Dtype::fp16, 64, 2, 1, 8192, kShapes[0], 16), {}, false, seed += 3, "rescans"});
  out.push_back({select_problem(Dtype::bf16, 64, 1, 2, 12000, kShapes[3], 8), {}, false, seed += 3, "rescans"});
  return out;
}

// q = 0: all logits 0, p = 1 / nc for every visible block, and every candidate block sums the same terms in the
// same order (for these shapes), so its score is exactly equal: the lowest indices must be chosen, exactly.
std::vector<Case> tie_cases() {
  std::vector<Case> out;
  uint64_t seed = 2500;
  for (int s : {1, 2, 3})
    for (int G : {1, 3, 16}) {
      Case c{select_problem(Dtype::bf16, 64, G, 1, 3000, kShapes[s], 16), {}, false, seed += 3, "ties"};
      c.zero_q = true;
      out.push_back(c);
    }
  return out;
}

std::vector<Case> layout_cases() {
  std::vector<Case> out;
  out.push_back({select_problem(Dtype::bf16, 64, 16, 2, 300, kShapes[0], 8, 3), {}, false, 3000, "batch 3"});
  out.push_back({select_problem(Dtype::bf16, 64, 16, 2, 300, kShapes[0], 8, 3), {}, true, 3001, "batch 3 strided"});
  out.push_back({select_problem(Dtype::fp16, 192, 3, 2, 1000, kShapes[3], 16, 2), {}, true, 3002, "batch 2 strided"});
  const std::vector<int32_t> cu = {0, 5, 5, 6, 300, 1000, 1100};  // empty and short sequences
  out.push_back({select_problem(Dtype::bf16, 128, 4, 2, 1100, kShapes[0], 8), cu, false, 3003, "varlen"});
  out.push_back({select_problem(Dtype::fp16, 64, 1, 3, 1100, kShapes[3], 8), cu, true, 3004, "varlen strided"});
  const std::vector<int32_t> cu2 = {0, 0, 700, 701, 2000};
  out.push_back({select_problem(Dtype::bf16, 256, 32, 1, 2000, kShapes[1], 16), cu2, false, 3005, "varlen G=32"});
  out.push_back({select_problem(Dtype::bf16, 128, 8, 2, 2000, kShapes[2], 32), cu2, true, 3006, "varlen strided"});
  // Group sizes summed through shared memory with several positions per warp and with two row tiles.
  uint64_t seed = 3100;
  for (int G : {5, 6, 7, 24})
    out.push_back({select_problem(Dtype::bf16, 128, G, 1, 900, kShapes[G % 4], 8), {}, false, seed += 5, "group"});
  // Two row tiles with Q held in registers (the defaults re-read Q there), register and shared-memory sums.
  const TileConfig q_in_regs{{"W", 4}, {"KS", 2}, {"BN", 32}, {"QREGS", 1}, {"OCC", 1}};
  for (int G : {24, 32}) {
    Case c{select_problem(Dtype::fp16, 64, G, 2, 800, kShapes[0], 16), {}, false, seed += 5, "two row tiles"};
    c.config = q_in_regs;
    out.push_back(c);
  }
  return out;
}

// Problems whose every valid tile config is run: G = 16 (register sums over the whole warp), G = 3 (shared-memory
// sums), G = 1 (two positions per thread); each with a block shape whose runs spill into the next. (Two row tiles,
// G = 32, run with Q in registers at dk = 64 and from shared memory above, in the matrix.)
std::vector<Case> config_cases() {
  return {
      {select_problem(Dtype::bf16, 128, 16, 1, 700, kShapes[0], 8), {}, false, 4000, "configs G=16"},
      {select_problem(Dtype::fp16, 64, 3, 2, 700, kShapes[3], 16), {}, false, 4001, "configs G=3"},
      {select_problem(Dtype::bf16, 192, 1, 2, 700, kShapes[0], 8), {}, false, 4002, "configs G=1"},
  };
}

// Issue 14: dk off the 64 grid (multiples of 8 from 32 to 256) and l' = 16 .. 128 with every (l, d) that allows
// it, both dtypes, G in {1, 3, 8, 16, 32}, B = 2, strided views, varlen.
const int kAnyDks[] = {32, 40, 72, 80, 96, 120, 160, 200, 248};
const BlockShape kAnyShapes[] = {{32, 16, 16}, {32, 16, 32}, {32, 16, 128}, {64, 64, 128},
                                 {32, 32, 32}, {64, 32, 32}, {64, 32, 128}, {32, 32, 128}};
std::vector<Case> any_dim_cases() {
  std::vector<Case> out;
  const int groups[] = {1, 3, 8, 16, 32};
  const int64_t lengths[] = {300, 517, 1000, 777};
  int i = 0;
  for (Dtype dt : {Dtype::bf16, Dtype::fp16})
    for (int dk : kAnyDks) {
      const int G = groups[i % 5];
      const Problem p = select_problem(dt, dk, G, G >= 8 ? 1 : 2, lengths[i % 4], kAnyShapes[i % 8], kTopNs[i % 3], 2);
      out.push_back({p, {}, i % 2 == 1, 5000 + 7 * static_cast<uint64_t>(i), "any head dim"});
      ++i;
    }
  // Every block shape with l' != 64 once more at dk = 64, and varlen at new pairs.
  for (const BlockShape& sh : kAnyShapes)
    out.push_back({select_problem(Dtype::bf16, 64, 4, 1, 2000, sh, 16), {}, false, 5200 + static_cast<uint64_t>(i++),
                   "any l'"});
  const std::vector<int32_t> cu = {0, 5, 5, 6, 300, 1000, 1100};
  out.push_back({select_problem(Dtype::fp16, 80, 3, 2, 1100, kAnyShapes[0], 8), cu, true, 5300, "varlen strided"});
  out.push_back({select_problem(Dtype::bf16, 200, 16, 1, 1100, kAnyShapes[5], 16), cu, false, 5301, "varlen"});
  return out;
}

// Every valid tile config at a new dk and l' = 16.
Case any_dim_config_case() {
  return {select_problem(Dtype::bf16, 80, 3, 2, 700, kAnyShapes[0], 8), {}, false, 5400, "configs dk=80 l'=16"};
}

Problem long_problem(int which) {
  if (which == 0) {
    Problem p = preset("fla");
    p.T = 65536;
    return p;
  }
  // q holds 131072 * 64 * 256 = 2^31 elements; check_long doubles its token stride (offsets up to 2^32).
  return select_problem(Dtype::fp16, 256, 16, 4, 131072, kShapes[3], 16);
}

// B and T as the kernel's grid sees them (mirrors select_blocks): varlen gives one grid slice per sequence, sized
// for the longest.
Problem launch_problem(const Problem& p, const std::vector<int32_t>& cu) {
  if (cu.empty()) return p;
  Problem l = p;
  int64_t longest = 0;
  for (size_t i = 1; i < cu.size(); ++i) longest = std::max<int64_t>(longest, cu[i] - cu[i - 1]);
  l.B = static_cast<int64_t>(cu.size()) - 1;
  l.T = std::max<int64_t>(longest, 1);
  return l;
}

std::vector<TileConfig> valid_configs(const Problem& launch, int max_smem) {
  std::vector<TileConfig> out;
  for (const SpacePoint& pt : enumerate_space(find_family("select"), launch, max_smem))
    if (!pt.rejected) out.push_back(pt.config);
  return out;
}

// Every point of the space that is valid for one of config_cases(), each run once: point i on case i % 3 if valid
// there, else on the next case where it is (so every path sees every parameter value).
std::vector<std::pair<size_t, TileConfig>> config_plan(int max_smem) {
  const std::vector<Case> cases = config_cases();
  std::vector<std::vector<TileConfig>> valid;
  for (const Case& c : cases) valid.push_back(valid_configs(launch_problem(c.p, c.cu), max_smem));
  std::vector<std::pair<size_t, TileConfig>> plan;
  for (const SpacePoint& pt : enumerate_space(find_family("select"), cases[0].p, max_smem)) {
    for (size_t k = 0; k < cases.size(); ++k) {
      const size_t c = (plan.size() + k) % cases.size();
      if (std::find(valid[c].begin(), valid[c].end(), pt.config) != valid[c].end()) {
        plan.push_back({c, pt.config});
        break;
      }
    }
  }
  return plan;
}

// Compiles every kernel the tests use in parallel up front (into the disk cache), instead of one by one on
// first use.
void prewarm(int max_smem) {
  const KernelFamily& f = find_family("select");
  std::vector<KernelSpec> specs;
  std::set<std::string> seen;
  auto add = [&](const Problem& launch, const TileConfig& c) {
    if (seen.insert(f.preamble(launch, c)).second) specs.push_back({&f, launch, c, "sm_90a"});
  };
  for (const auto& list : {matrix_cases(), length_cases(), tie_cases(), layout_cases()})
    for (const Case& c : list) {
      const Problem l = launch_problem(c.p, c.cu);
      add(l, c.config ? *c.config : f.default_config(l));
    }
  const std::vector<Case> configs = config_cases();
  for (const auto& [c, cfg] : config_plan(max_smem)) add(launch_problem(configs[c].p, configs[c].cu), cfg);
  for (int which : {0, 1}) add(long_problem(which), f.default_config(long_problem(which)));
  const auto t0 = std::chrono::steady_clock::now();
  const auto outcomes = jit_compile_all(specs, CubinCache(CubinCache::default_dir()), 0);
  for (const auto& o : outcomes) REQUIRE_MESSAGE(o.result, o.error);
  MESSAGE(fmt::format("prewarmed {} select kernels in {:.1f} s", specs.size(),
                      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count()));
}

Context& gpu() {
  static Context ctx(0);
  static const bool warmed = (prewarm(ctx.info().max_smem_optin), true);
  (void)warmed;
  return ctx;
}

int64_t num_cmp(int64_t len, const Problem& p) { return ref::num_cmp_blocks(len, p.l, p.d); }

// ---- checks of one (t, KV head) row --------------------------------------------------------------------------

// Why the row breaks NSA.md's output rules (cnt, strictly ascending causal entries, -1 padding, forced blocks),
// or "" when it does not.
std::string structure_error(const int32_t* row, int32_t cnt, int64_t t, int lsel, int n) {
  const int64_t jt = t / lsel;
  const int64_t expect = std::min<int64_t>(n, jt + 1);
  if (cnt != expect) return fmt::format("cnt {} != {}", cnt, expect);
  for (int m = 0; m < n; ++m) {
    if (m >= cnt) {
      if (row[m] != -1) return fmt::format("idx[{}] = {} past cnt, expected -1", m, row[m]);
      continue;
    }
    if (row[m] < 0 || row[m] > jt) return fmt::format("idx[{}] = {} is not a causal block (0 .. {})", m, row[m], jt);
    if (m > 0 && row[m] <= row[m - 1]) return fmt::format("idx is not strictly ascending at entry {}", m);
  }
  for (int64_t j : {int64_t{0}, jt, jt - 1}) {
    if (j < 0) continue;
    if (std::find(row, row + cnt, static_cast<int32_t>(j)) == row + cnt)
      return fmt::format("forced block {} missing", j);
  }
  return {};
}

// The same rule as ref::selection_matches for one row, given float64 scores of blocks 0 .. jt. Sets `exact` to
// whether the chosen set equals the reference's.
std::string row_error(const std::vector<double>& score, int64_t t, const int32_t* row, int32_t cnt, int lsel, int n,
                      bool* exact) {
  std::string why = structure_error(row, cnt, t, lsel, n);
  if (!why.empty()) return why;
  const int64_t jt = t / lsel;
  std::vector<char> ref(static_cast<size_t>(jt + 1), 0), got(static_cast<size_t>(jt + 1), 0);
  int64_t taken = 0;
  for (int64_t j : {int64_t{0}, jt, jt - 1})
    if (j >= 0 && !ref[j]) ref[j] = 1, ++taken;
  for (; taken < cnt; ++taken) {
    int64_t best = -1;
    for (int64_t j = 0; j <= jt; ++j)
      if (!ref[j] && (best < 0 || score[j] > score[best])) best = j;
    if (best < 0) break;  // unreachable: cnt <= jt + 1 candidates
    ref[static_cast<size_t>(best)] = 1;
  }
  for (int m = 0; m < cnt; ++m) got[row[m]] = 1;
  *exact = ref == got;
  if (*exact) return {};
  double top = 0, min_chosen = std::numeric_limits<double>::infinity(), max_unchosen = -1;
  int64_t j_min = -1, j_max = -1;
  for (int64_t j = 0; j <= jt; ++j) {
    top = std::max(top, score[j]);
    const bool forced = j == 0 || j == jt || j == jt - 1;
    if (got[j] && !forced && score[j] < min_chosen) min_chosen = score[j], j_min = j;
    if (!got[j] && score[j] > max_unchosen) max_unchosen = score[j], j_max = j;
  }
  if (j_min >= 0 && j_max >= 0 && max_unchosen - min_chosen > 1e-3 * top)
    return fmt::format("chose block {} (score {:.10g}) over block {} (score {:.10g}), top {:.10g}", j_min, min_chosen,
                       j_max, max_unchosen, top);
  return {};
}

// ---- small and medium shapes against the CPU reference -------------------------------------------------------

struct Sequence {
  int64_t first = 0, len = 0;          // first token (idx / cnt row) and length
  int64_t q_base = 0, lse_base = 0;    // element offsets of its token 0
  int64_t k_base = 0;                  // element offset of its compressed block 0
};

// Inputs on the device and the reference selections, for one case; run() checks any tile config against them.
struct Prepared {
  Problem p;
  std::vector<int32_t> cu;
  std::vector<Sequence> seqs;
  int64_t tokens = 0;
  DeviceBuffer q, k, lse, cu_dev;
  SelectArgs args;
  std::vector<ref::Config> cfg;
  std::vector<ref::Selection> sel;
};

Prepared prepare(const Case& c) {
  Prepared r;
  const Problem& p = c.p;
  r.p = p;
  r.cu = c.cu;
  const bool varlen = !c.cu.empty();
  const int64_t pad = c.strided ? 1 : 0;
  const int64_t q_sh = p.dk + 8 * pad, q_st = p.HQ * q_sh + 64 * pad;
  const int64_t k_sh = p.dk + 16 * pad, k_st = p.H * k_sh + 8 * pad;
  const int64_t l_st = p.HQ + 3 * pad;
  const int64_t nc_T = num_cmp(p.T, p);
  const int64_t q_sb = p.T * q_st + 128 * pad, k_sb = nc_T * k_st + 64 * pad, l_sb = p.T * l_st + 5 * pad;

  int64_t q_n = 0, k_n = 0, l_n = 0;
  if (varlen) {
    int64_t cmp = 0;
    for (size_t i = 0; i + 1 < c.cu.size(); ++i) {
      const int64_t len = c.cu[i + 1] - c.cu[i];
      r.seqs.push_back({c.cu[i], len, c.cu[i] * q_st, c.cu[i] * l_st, cmp * k_st});
      cmp += num_cmp(len, p);
    }
    r.tokens = p.T;
    q_n = p.T * q_st, k_n = cmp * k_st, l_n = p.T * l_st;
  } else {
    for (int64_t b = 0; b < p.B; ++b) r.seqs.push_back({b * p.T, p.T, b * q_sb, b * l_sb, b * k_sb});
    r.tokens = p.B * p.T;
    q_n = (p.B - 1) * q_sb + p.T * q_st, k_n = (p.B - 1) * k_sb + nc_T * k_st, l_n = (p.B - 1) * l_sb + p.T * l_st;
  }
  k_n = std::max<int64_t>(k_n, 64);  // a valid pointer even without compressed blocks

  const std::vector<uint16_t> qb = c.zero_q ? std::vector<uint16_t>(static_cast<size_t>(q_n), 0)
                                            : random_normal_bits(static_cast<size_t>(q_n), p.dtype, c.seed);
  const std::vector<uint16_t> kb = random_normal_bits(static_cast<size_t>(k_n), p.dtype, c.seed + 1);
  std::vector<float> lse(static_cast<size_t>(l_n), std::numeric_limits<float>::quiet_NaN());

  for (const Sequence& s : r.seqs) {
    ref::Config rc;
    rc.T = s.len, rc.HQ = p.HQ, rc.H = p.H, rc.dk = p.dk, rc.dv = 8, rc.l = p.l, rc.d = p.d, rc.lsel = p.lsel;
    rc.n = p.n, rc.w = 0, rc.scale = p.softmax_scale();
    const int64_t nc = num_cmp(s.len, p);
    std::vector<double> q(static_cast<size_t>(s.len * p.HQ * p.dk)), k(static_cast<size_t>(nc * p.H * p.dk));
    for (int64_t t = 0; t < s.len; ++t)
      for (int h = 0; h < p.HQ; ++h)
        for (int i = 0; i < p.dk; ++i)
          q[static_cast<size_t>((t * p.HQ + h) * p.dk + i)] =
              bits_to_float(qb[static_cast<size_t>(s.q_base + t * q_st + h * q_sh + i)], p.dtype);
    for (int64_t j = 0; j < nc; ++j)
      for (int h = 0; h < p.H; ++h)
        for (int i = 0; i < p.dk; ++i)
          k[static_cast<size_t>((j * p.H + h) * p.dk + i)] =
              bits_to_float(kb[static_cast<size_t>(s.k_base + j * k_st + h * k_sh + i)], p.dtype);
    std::vector<double> v(static_cast<size_t>(nc * p.H * rc.dv), 0.0), o(static_cast<size_t>(s.len * p.HQ * rc.dv));
    std::vector<double> l(static_cast<size_t>(s.len * p.HQ));
    ref::compressed_attention(rc, q.data(), k.data(), v.data(), o.data(), l.data());
    for (int64_t t = 0; t < s.len; ++t)
      for (int h = 0; h < p.HQ; ++h) {
        const float f = static_cast<float>(l[static_cast<size_t>(t * p.HQ + h)]);
        lse[static_cast<size_t>(s.lse_base + t * l_st + h)] = f;
        l[static_cast<size_t>(t * p.HQ + h)] = f;  // the reference sees what the kernel sees
      }
    r.cfg.push_back(rc);
    r.sel.push_back(ref::select_blocks(rc, q.data(), k.data(), l.data()));
  }

  r.q = DeviceBuffer(qb.size() * 2);
  r.k = DeviceBuffer(kb.size() * 2);
  r.lse = DeviceBuffer(lse.size() * 4);
  r.q.upload(qb.data(), qb.size() * 2);
  r.k.upload(kb.data(), kb.size() * 2);
  r.lse.upload(lse.data(), lse.size() * 4);
  r.args.q = {r.q.get(), q_sb, q_st, q_sh};
  r.args.k_cmp = {r.k.get(), k_sb, k_st, k_sh};
  r.args.lse_cmp = static_cast<const float*>(r.lse.get());
  r.args.lse_stride_b = l_sb, r.args.lse_stride_t = l_st;
  if (varlen) {
    r.cu_dev = DeviceBuffer(c.cu.size() * 4);
    r.cu_dev.upload(c.cu.data(), c.cu.size() * 4);
    r.args.cu_seqlens = static_cast<const int32_t*>(r.cu_dev.get());
  }
  return r;
}

struct Outcome {
  std::string error;   // first failure, or empty
  int64_t rows = 0;    // (position, KV head) rows checked
  int64_t inexact = 0; // rows whose set differs from the reference's (accepted near ties)
};

Outcome run(const Prepared& in, const TileConfig* config) {
  const Problem& p = in.p;
  const size_t rows = static_cast<size_t>((in.tokens + kGuardRows) * p.H);
  DeviceBuffer idx(rows * p.n * 4), cnt(rows * 4);
  idx.fill_bytes(0x7f);
  cnt.fill_bytes(0x7f);
  SelectArgs a = in.args;
  a.cu_seqlens_host = in.cu;
  a.idx = static_cast<int32_t*>(idx.get());
  a.cnt = static_cast<int32_t*>(cnt.get());
  select_blocks(p, a, nullptr, config);
  gpu().synchronize();
  std::vector<int32_t> hi(rows * p.n), hc(rows);
  idx.download(hi.data(), hi.size() * 4);
  cnt.download(hc.data(), hc.size() * 4);

  Outcome out;
  for (size_t i = 0; i < in.seqs.size(); ++i) {
    const Sequence& s = in.seqs[i];
    if (s.len == 0) continue;
    std::string why;
    const int32_t* gi = hi.data() + s.first * p.H * p.n;
    const int32_t* gc = hc.data() + s.first * p.H;
    if (!ref::selection_matches(in.sel[i], gi, gc, in.cfg[i], 1e-3, &why) && out.error.empty())
      out.error = fmt::format("sequence {} (first token {}, length {}): {}", i, s.first, s.len, why);
    for (int64_t r = 0; r < s.len * p.H; ++r) {
      ++out.rows;
      out.inexact += !std::equal(gi + r * p.n, gi + (r + 1) * p.n, in.sel[i].idx.data() + r * p.n);
    }
  }
  for (size_t r = static_cast<size_t>(in.tokens * p.H); r < rows; ++r) {
    const bool idx_poisoned = std::all_of(hi.begin() + r * p.n, hi.begin() + (r + 1) * p.n,
                                          [](int32_t v) { return v == kPoison; });
    if ((!idx_poisoned || hc[r] != kPoison) && out.error.empty())
      out.error = fmt::format("guard row {} after the last token was written", r);
  }
  return out;
}

void expect_ok(const Case& c, const Outcome& r, const std::string& config = "default config") {
  const std::string what =
      fmt::format("{} | {}{}{} | {} | {}", c.what, c.p.describe(),
                  c.cu.empty() ? std::string() : fmt::format(" cu_seqlens {}", fmt::join(c.cu, ",")),
                  c.strided ? " strided" : "", config, r.error);
  INFO(what);
  CHECK(r.error.empty());
  CHECK(r.rows > 0);
  if (r.inexact > 0)
    MESSAGE(fmt::format("{} | {}: {} of {} rows are accepted near ties", c.what, c.p.describe(), r.inexact, r.rows));
}

void check_cases(const std::vector<Case>& cases) {
  gpu();
  for (const Case& c : cases) {
    const Prepared in = prepare(c);
    expect_ok(c, run(in, c.config ? &*c.config : nullptr), c.config ? "config " + describe(*c.config) : "default config");
  }
}

// ---- long sequences ------------------------------------------------------------------------------------------

// Selection of one long problem: structure of every row, the sampled positions against float64 scores.
// q_spread: q's token stride in units of HQ * dk (2: a view of every other token row of a twice larger buffer).
void check_long(const Problem& p, uint64_t seed, int q_spread = 1) {
  gpu();
  const int64_t T = p.T, nc_T = num_cmp(T, p);
  const int64_t q_st = static_cast<int64_t>(q_spread) * p.HQ * p.dk;
  const size_t q_n = static_cast<size_t>(T * q_st), k_n = static_cast<size_t>(nc_T) * p.H * p.dk;
  if (q_spread > 1) CHECK((T - 1) * q_st + p.HQ * p.dk - 1 > INT32_MAX);  // the largest element offset of q
  DeviceBuffer q = random_device_tensor(q_n, p.dtype, seed);
  const std::vector<uint16_t> kb = random_normal_bits(k_n, p.dtype, seed + 1);
  DeviceBuffer k(k_n * 2);
  k.upload(kb.data(), k_n * 2);
  std::vector<double> kd(k_n);
  for (size_t i = 0; i < k_n; ++i) kd[i] = bits_to_float(kb[i], p.dtype);

  // Sampled positions: the edges of blocks and of the sequence, and random ones.
  std::set<int64_t> sample = {0, 1, p.l - 2, p.l - 1, p.l, 63, 64, 65, 127, 128, 1023, 1024, 4095, 4096,
                              T / 2 - 1, T / 2, T - 65, T - 64, T - 63, T - 2, T - 1};
  std::mt19937_64 rng(seed + 2);
  while (sample.size() < 48) sample.insert(static_cast<int64_t>(rng() % static_cast<uint64_t>(T)));

  // Synthetic lse everywhere (about the true value for random inputs), the true one at the sampled positions.
  const double scale = p.softmax_scale();
  std::vector<float> lse(static_cast<size_t>(T) * p.HQ);
  std::normal_distribution<double> noise(0.0, 0.25);
  for (int64_t t = 0; t < T; ++t) {
    const int64_t nc = ref::visible_cmp_blocks(t, p.l, p.d);
    for (int h = 0; h < p.HQ; ++h)
      lse[static_cast<size_t>(t * p.HQ + h)] =
          nc == 0 ? -std::numeric_limits<float>::infinity()
                  : static_cast<float>(std::log(static_cast<double>(nc)) + 0.5 + noise(rng));
  }
  const int G = p.G();
  std::vector<std::vector<double>> qs;  // per sampled position: [HQ, dk]
  for (int64_t t : sample) {
    std::vector<uint16_t> bits(static_cast<size_t>(p.HQ) * p.dk);
    q.download(bits.data(), bits.size() * 2, static_cast<size_t>(t * q_st) * 2);
    std::vector<double> qd(bits.size());
    for (size_t i = 0; i < bits.size(); ++i) qd[i] = bits_to_float(bits[i], p.dtype);
    qs.push_back(std::move(qd));
  }
  auto logit = [&](const std::vector<double>& qd, int h, int64_t i) {
    const double* a = qd.data() + static_cast<size_t>(h) * p.dk;
    const double* b = kd.data() + static_cast<size_t>((i * p.H + h / G) * p.dk);
    double s = 0;
    for (int c = 0; c < p.dk; ++c) s += a[c] * b[c];
    return scale * s;
  };
  {
    std::vector<std::future<void>> jobs;
    size_t si = 0;
    for (int64_t t : sample) {
      const std::vector<double>* qd = &qs[si++];
      jobs.push_back(std::async(std::launch::async, [&, t, qd] {
        const int64_t nc = ref::visible_cmp_blocks(t, p.l, p.d);
        if (nc == 0) return;
        for (int h = 0; h < p.HQ; ++h) {
          double m = -std::numeric_limits<double>::infinity(), sum = 0;
          std::vector<double> s(static_cast<size_t>(nc));
          for (int64_t i = 0; i < nc; ++i) m = std::max(m, s[static_cast<size_t>(i)] = logit(*qd, h, i));
          for (int64_t i = 0; i < nc; ++i) sum += std::exp(s[static_cast<size_t>(i)] - m);
          lse[static_cast<size_t>(t * p.HQ + h)] = static_cast<float>(m + std::log(sum));
        }
      }));
    }
    for (auto& j : jobs) j.get();
  }
  DeviceBuffer dlse(lse.size() * 4);
  dlse.upload(lse.data(), lse.size() * 4);

  const size_t rows = static_cast<size_t>((T + kGuardRows) * p.H);
  DeviceBuffer idx(rows * p.n * 4), cnt(rows * 4);
  idx.fill_bytes(0x7f);
  cnt.fill_bytes(0x7f);
  SelectArgs a;
  a.q = {q.get(), T * q_st, q_st, p.dk};
  a.k_cmp = contiguous(k.get(), nc_T, p.H, p.dk);
  a.lse_cmp = static_cast<const float*>(dlse.get());
  a.lse_stride_t = p.HQ, a.lse_stride_b = T * p.HQ;
  a.idx = static_cast<int32_t*>(idx.get());
  a.cnt = static_cast<int32_t*>(cnt.get());
  select_blocks(p, a, nullptr);
  gpu().synchronize();
  std::vector<int32_t> hi(rows * p.n), hc(rows);
  idx.download(hi.data(), hi.size() * 4);
  cnt.download(hc.data(), hc.size() * 4);

  std::string first_error;
  int64_t bad = 0;
  for (int64_t t = 0; t < T; ++t)
    for (int kh = 0; kh < p.H; ++kh) {
      const size_t r = static_cast<size_t>(t * p.H + kh);
      const std::string why = structure_error(hi.data() + r * p.n, hc[r], t, p.lsel, p.n);
      if (!why.empty()) {
        if (bad++ == 0) first_error = fmt::format("t={} kv_head={}: {}", t, kh, why);
      }
    }
  for (size_t r = static_cast<size_t>(T * p.H); r < rows; ++r)
    if (hc[r] != kPoison || std::any_of(hi.begin() + r * p.n, hi.begin() + (r + 1) * p.n,
                                        [](int32_t v) { return v != kPoison; })) {
      if (bad++ == 0) first_error = fmt::format("guard row {} after the last token was written", r);
    }
  INFO(p.describe(), " | ", first_error);
  CHECK(bad == 0);

  // Sampled positions: scores from the definition, in float64, with the lse the kernel saw.
  std::vector<std::future<std::pair<std::string, int>>> jobs;
  size_t si = 0;
  for (int64_t t : sample) {
    const std::vector<double>* qd = &qs[si++];
    jobs.push_back(std::async(std::launch::async, [&, t, qd]() -> std::pair<std::string, int> {
      const int64_t jt = t / p.lsel, nc = ref::visible_cmp_blocks(t, p.l, p.d);
      int inexact = 0;
      for (int kh = 0; kh < p.H; ++kh) {
        std::vector<double> score(static_cast<size_t>(jt + 1), 0.0);
        for (int h = kh * G; h < (kh + 1) * G; ++h) {
          const double l = lse[static_cast<size_t>(t * p.HQ + h)];
          for (int64_t i = 0; i < nc; ++i) {
            const double pc = std::exp(logit(*qd, h, i) - l);
            const int64_t j0 = i * p.d / p.lsel, j1 = (i * p.d + p.l - 1) / p.lsel;
            for (int64_t j = j0; j <= j1 && j <= jt; ++j)
              score[static_cast<size_t>(j)] += ref::overlap_weight(i, j, p.l, p.d, p.lsel) * pc;
          }
        }
        const size_t r = static_cast<size_t>(t * p.H + kh);
        bool exact = false;
        const std::string why = row_error(score, t, hi.data() + r * p.n, hc[r], p.lsel, p.n, &exact);
        if (!why.empty()) return {fmt::format("t={} kv_head={}: {}", t, kh, why), inexact};
        inexact += !exact;
      }
      return {std::string(), inexact};
    }));
  }
  int inexact = 0;
  for (auto& j : jobs) {
    auto [why, n] = j.get();
    inexact += n;
    INFO(p.describe(), " | sampled ", why);
    CHECK(why.empty());
  }
  MESSAGE(fmt::format("{}: {} rows well-formed, {} sampled positions x {} KV heads checked ({} near ties)",
                      p.describe(), T * p.H, sample.size(), p.H, inexact));
}

}  // namespace

TEST_CASE("select: every dtype, head dim and group size") { check_cases(matrix_cases()); }

TEST_CASE("select: sequence lengths 1 .. 4096, every block shape and n") { check_cases(length_cases()); }

TEST_CASE("select: exact ties go to the lower block index") {
  gpu();
  for (const Case& c : tie_cases()) {
    const Prepared in = prepare(c);
    const Outcome r = run(in, nullptr);
    expect_ok(c, r);
    CHECK(r.inexact == 0);
  }
}

TEST_CASE("select: batches, varlen with empty and short sequences, strided views, group sizes") {
  check_cases(layout_cases());
}

TEST_CASE("select: every valid tile config of the space") {
  const std::vector<Case> cases = config_cases();
  std::vector<Prepared> inputs;
  for (const Case& c : cases) inputs.push_back(prepare(c));
  const auto plan = config_plan(gpu().info().max_smem_optin);
  std::vector<int> per_case(cases.size(), 0);
  for (const auto& [c, cfg] : plan) {
    expect_ok(cases[c], run(inputs[c], &cfg), "config " + describe(cfg));
    ++per_case[c];
  }
  MESSAGE(fmt::format("{} tile configs run ({} on G = 16, {} on G = 3, {} on G = 1)", plan.size(), per_case[0],
                      per_case[1], per_case[2]));
  CHECK(plan.size() >= 40);
  for (int n : per_case) CHECK(n >= 10);
}

TEST_CASE("select: any head dim, l' = 16 .. 128") {
  check_cases(any_dim_cases());
  const Case c = any_dim_config_case();
  const Prepared in = prepare(c);
  int runs = 0;
  for (const TileConfig& cfg : valid_configs(launch_problem(c.p, c.cu), gpu().info().max_smem_optin)) {
    expect_ok(c, run(in, &cfg), "config " + describe(cfg));
    ++runs;
  }
  CHECK(runs >= 10);
}

TEST_CASE("select at T = 65536 (fla) and T = 131072 (dk = 256, q offsets past 2^31)") {
  check_long(long_problem(0), 600);
  check_long(long_problem(1), 700, 2);
}
