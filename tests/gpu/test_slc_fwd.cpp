// GPU tests of the selected-attention forward (NSA.md branch 2): fresh random inputs and selections, poisoned
// outputs, NSA.md's tolerance against the float64 CPU reference ref::selected_attention, for o_slc, lse and the
// gated epilogue; T = 65536 (preset fla) on sampled positions, each checked against the reference run on a compact
// sequence made of that position's selected blocks.
#include <doctest/doctest.h>
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <future>
#include <limits>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "cache/cubin_cache.h"
#include "codegen/family.h"
#include "reference/reference.h"
#include "runtime/device.h"
#include "base/error.h"
#include "runtime/jit.h"
#include "runtime/slc_fwd_api.h"
#include "runtime/tuned.h"
#include "tuner/inputs.h"
#include "tests/gpu/check.h"

using namespace nsajit;

namespace {

const int kDims[][2] = {{64, 64}, {128, 128}, {192, 128}, {256, 256}};
// G: the small ones, the paper's 16, and the MQA-like 48, 64 (HQ = 64, H = 1) and 128.
const int kGroups[] = {1, 2, 3, 4, 8, 16, 32, 48, 64, 128};
const int64_t kLengths[] = {1, 15, 16, 17, 63, 64, 65, 511};
const int kTopN[] = {8, 16, 32};

Problem slc_problem(Dtype dtype, int dk, int dv, int G, int H, int64_t T, int n, int64_t B = 1, int lsel = 64) {
  Problem p = preset("fla");
  p.dtype = dtype, p.dk = dk, p.dv = dv, p.H = H, p.HQ = G * H, p.T = T, p.n = n, p.B = B;
  p.lsel = lsel, p.l = lsel, p.d = lsel;
  return p;
}

// The problem of the matrix test for case i (dtype x head dims x G, T and n cycling).
Problem matrix_problem(int i, Dtype dt, int dk, int dv, int G) {
  return slc_problem(dt, dk, dv, G, G >= 8 ? 1 : 2, kLengths[i % 8], kTopN[i % 3]);
}

// Every valid point of the tile space once: each config on the first head-dim pair (rotating the start) that
// accepts it, with G = 8 (BM = 16 .. 128 give 2 .. 16 positions per CTA).
std::vector<std::pair<Problem, TileConfig>> config_sweep(int max_smem) {
  const KernelFamily& f = find_family("slc_fwd");
  std::vector<std::pair<Problem, TileConfig>> out;
  const Problem first = slc_problem(Dtype::bf16, 64, 64, 8, 1, 600, 16);
  int rotate = 0;
  for (const SpacePoint& pt : enumerate_space(f, first, max_smem)) {
    for (int tries = 0; tries < 4; ++tries) {
      const auto& dims = kDims[(rotate + tries) % 4];
      const Problem p = slc_problem(Dtype::bf16, dims[0], dims[1], 8, 1, 600, 16);
      if (!f.reject(p, pt.config, max_smem)) {
        out.push_back({p, pt.config});
        break;
      }
    }
    ++rotate;
  }
  return out;
}

// Positions per CTA other than the defaults': G = 1 and 3 with one warp, G = 32 with one position per CTA (the
// paper's layout) and with four. The default config with BM replaced, or the portable one where that does not serve
// (the Hopper kernel's 64 rows per warpgroup).
std::vector<std::pair<Problem, TileConfig>> row_layouts(int max_smem) {
  const KernelFamily& f = find_family("slc_fwd");
  std::vector<std::pair<Problem, TileConfig>> out;
  for (auto [G, BM] : {std::pair{1, 16}, {3, 16}, {3, 32}, {32, 32}, {32, 128}}) {
    const Problem p = slc_problem(Dtype::bf16, 128, 128, G, 1, 900, 16);
    TileConfig c = f.default_config(p);
    c["BM"] = BM;
    if (f.reject(p, c, max_smem)) {
      c = f.portable_default_config(p);
      c["BM"] = BM;
    }
    REQUIRE_FALSE(f.reject(p, c, max_smem));
    out.push_back({p, c});
  }
  return out;
}

// The config that the cases without a config of their own run beside the default one, on the same inputs: the other
// implementation's. Where the default is the Hopper kernel (G >= 16), the portable mma.sync default; else IMPL=1
// with 64 rows (128 where one position's heads need them), Q from shared memory, three stages where they fit, or
// none where IMPL=1 cannot serve the problem (l' not a multiple of 64).
std::optional<TileConfig> other_config(const KernelFamily& f, const Problem& p, int max_smem) {
  if (f.default_config(p).at("IMPL") == 1) return f.portable_default_config(p);
  for (int bm : {64, 128})
    for (int stages : {3, 2}) {
      const TileConfig c{{"BM", bm}, {"BN", 64}, {"STAGES", stages}, {"QREGS", 0}, {"IMPL", 1}};
      if (!f.reject(p, c, max_smem)) return c;
    }
  return std::nullopt;
}

// Compiles every kernel the tests use in parallel up front (into the disk cache), instead of one by one on
// first use.
void prewarm(int max_smem) {
  const KernelFamily& f = find_family("slc_fwd");
  std::vector<KernelSpec> specs;
  int i = 0;
  for (Dtype dt : {Dtype::bf16, Dtype::fp16})
    for (auto& dims : kDims)
      for (int G : kGroups) {
        const Problem p = matrix_problem(i++, dt, dims[0], dims[1], G);
        specs.push_back({&f, p, f.default_config(p), "sm_90a"});
        if (const auto h = other_config(f, p, max_smem)) specs.push_back({&f, p, *h, "sm_90a"});
      }
  for (int lsel : {32, 128}) {
    const Problem p = slc_problem(Dtype::bf16, 128, 128, 4, 1, 700, 16, 1, lsel);
    specs.push_back({&f, p, f.default_config(p), "sm_90a"});
  }
  for (const auto& [p, c] : config_sweep(max_smem)) specs.push_back({&f, p, c, "sm_90a"});
  for (const auto& [p, c] : row_layouts(max_smem)) specs.push_back({&f, p, c, "sm_90a"});
  const auto t0 = std::chrono::steady_clock::now();
  const auto outcomes = jit_compile_all(specs, CubinCache(CubinCache::default_dir()), 0);
  for (const auto& o : outcomes) REQUIRE_MESSAGE(o.result, o.error);
  MESSAGE(fmt::format("prewarmed {} slc_fwd kernels in {:.1f} s", specs.size(),
                      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count()));
}

Context& gpu() {
  static Context ctx(0);
  static const bool warmed = (prewarm(ctx.info().max_smem_optin), true);
  (void)warmed;
  return ctx;
}

double tolerance(Dtype d) { return d == Dtype::bf16 ? 1e-2 : 2e-3; }

using test::ErrorMeter;
using test::LseMeter;

// How the selections are drawn, per (position, KV head).
enum class Pick {
  standard,    // NSA.md's shape: blocks 0, floor(t/l'), floor(t/l') - 1 and random other causal blocks,
               // cnt = min(n, floor(t/l') + 1); independent per position, so neighbours differ a lot
  correlated,  // as standard, but groups of 8 neighbours draw the same blocks and one in three swaps one
  disjoint,    // as standard, but the non-forced blocks of neighbouring positions are disjoint (j = t mod 32)
  arbitrary,   // any 0 <= cnt <= n (some empty) blocks anywhere in the sequence, also after t
  mixed,       // spans of kOverlapSpan positions alternate: the even ones as standard but every position of the span
               // drawing the same blocks (high overlap), the odd ones as arbitrary (low overlap once the sequence
               // has more than 4 n blocks)
};

const char* pick_name(Pick p) {
  switch (p) {
    case Pick::standard: return "standard";
    case Pick::correlated: return "correlated";
    case Pick::disjoint: return "disjoint";
    case Pick::arbitrary: return "arbitrary";
    case Pick::mixed: return "mixed";
  }
  return "?";
}

// A cheap generator (splitmix64) to seed one per group of positions.
struct SplitMix64 {
  using result_type = uint64_t;
  uint64_t s;
  static constexpr uint64_t min() { return 0; }
  static constexpr uint64_t max() { return ~uint64_t{0}; }
  uint64_t operator()() {
    uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
};

// The selection of one sequence of `len` tokens: idx [len, H, n] ascending and -1 padded, cnt [len, H].
void make_selection(Pick pick, int64_t len, int H, int n, int lsel, uint64_t seed, int32_t* idx, int32_t* cnt) {
  SplitMix64 rng{seed};
  const int64_t NS = (len + lsel - 1) / lsel;
  std::vector<int64_t> chosen;
  auto has = [&](int64_t j) { return std::find(chosen.begin(), chosen.end(), j) != chosen.end(); };
  auto uniform = [](int64_t lo, int64_t hi, SplitMix64& r) {
    return std::uniform_int_distribution<int64_t>(lo, hi)(r);
  };
  for (int64_t t = 0; t < len; ++t)
    for (int h = 0; h < H; ++h) {
      chosen.clear();
      const int64_t jt = t / lsel;
      const bool low_span = pick == Pick::mixed && (t / kOverlapSpan) % 2 == 1;
      if (pick == Pick::arbitrary || low_span) {
        const int64_t c = std::clamp<int64_t>(uniform(-n / 4, n, rng), 0, std::min<int64_t>(n, NS));
        while (static_cast<int64_t>(chosen.size()) < c) {
          const int64_t j = uniform(0, NS - 1, rng);
          if (!has(j)) chosen.push_back(j);
        }
      } else {
        const int64_t c = std::min<int64_t>(n, jt + 1);
        for (int64_t j : {int64_t{0}, jt, jt - 1})
          if (j >= 0 && !has(j)) chosen.push_back(j);
        if (pick == Pick::disjoint) {
          for (int64_t j = t % 32; j <= jt && static_cast<int64_t>(chosen.size()) < c; j += 32)
            if (!has(j)) chosen.push_back(j);
        }
        const int64_t group = pick == Pick::mixed ? t / kOverlapSpan : t / 8;
        SplitMix64 group_rng{seed ^ (0xD1B54A32D192ED03ull * static_cast<uint64_t>(group * H + h + 1))};
        SplitMix64& draw = pick == Pick::correlated || pick == Pick::mixed ? group_rng : rng;
        while (static_cast<int64_t>(chosen.size()) < c) {
          const int64_t j = uniform(0, jt, draw);
          if (!has(j)) chosen.push_back(j);
        }
        if (pick == Pick::correlated && chosen.size() > 3 && rng() % 3 == 0) {
          for (int tries = 0; tries < 8; ++tries) {
            const int64_t j = uniform(0, jt, rng);
            if (!has(j)) {
              chosen.back() = j;
              break;
            }
          }
        }
      }
      std::sort(chosen.begin(), chosen.end());
      int32_t* row = idx + (t * H + h) * n;
      for (int m = 0; m < n; ++m) row[m] = m < static_cast<int>(chosen.size()) ? static_cast<int32_t>(chosen[m]) : -1;
      cnt[t * H + h] = static_cast<int32_t>(chosen.size());
    }
}

// Which outputs a run asks for.
enum class Epilogue {
  plain,       // o_slc and lse
  gated,       // o_slc, lse and out = gate * o_slc
  accumulate,  // out += gate * o_slc only (o_slc and lse null), out pre-filled with random values
};

// How the tensors sit in memory: contiguous, or strided views of fused buffers (q padded per token, k and v
// interleaved in one [T, H, dk + dv] buffer, o and out padded per head, gate and lse padded per token).
enum class Layout { contiguous, strided };

struct Errors {
  ErrorMeter o, out;
  LseMeter lse;
  int64_t pad_written = 0;
  int64_t plan_mismatches = -1;  // with the overlap dispatch: plan entries that differ from the host's
};

// One set of inputs (q, k, v, selection, gate) with the reference outputs, run against any tile config and
// epilogue.
class SlcCase {
public:
  SlcCase(const Problem& p, uint64_t seed, Pick pick = Pick::standard, Layout layout = Layout::contiguous,
          std::vector<int32_t> cu = {})
      : p_(p), seed_(seed), layout_(layout), cu_(std::move(cu)) {
    gpu();
    const bool strided = layout == Layout::strided;
    tokens_ = p.B * p.T;
    q_st_ = strided ? p.HQ * p.dk + 64 : p.HQ * p.dk;
    kv_sh_ = strided ? p.dk + p.dv : p.dk;
    kv_st_ = strided ? p.H * kv_sh_ : p.H * p.dk;
    v_sh_ = strided ? kv_sh_ : p.dv;
    v_st_ = strided ? kv_st_ : p.H * p.dv;
    o_sh_ = strided ? p.dv + 8 : p.dv;
    o_st_ = p.HQ * o_sh_;
    g_st_ = strided ? p.HQ + 8 : p.HQ;
    l_st_ = strided ? p.HQ + 4 : p.HQ;

    qb_ = random_normal_bits(static_cast<size_t>(tokens_ * q_st_), p.dtype, seed);
    kb_ = random_normal_bits(static_cast<size_t>(tokens_ * kv_st_), p.dtype, seed + 1);
    if (!strided) vb_ = random_normal_bits(static_cast<size_t>(tokens_ * v_st_), p.dtype, seed + 2);
    std::mt19937_64 rng(seed + 3);
    gb_.resize(static_cast<size_t>(tokens_ * g_st_));
    for (auto& g : gb_) g = float_to_bits(std::uniform_real_distribution<float>(0.05f, 1.0f)(rng), p.dtype);

    if (!cu_.empty()) {
      for (size_t i = 0; i + 1 < cu_.size(); ++i) seqs_.push_back({cu_[i], cu_[i + 1] - cu_[i]});
    } else {
      for (int64_t b = 0; b < p.B; ++b) seqs_.push_back({b * p.T, p.T});
    }
    idx_.assign(static_cast<size_t>(tokens_ * p.H * p.n), -1);
    cnt_.assign(static_cast<size_t>(tokens_ * p.H), 0);
    for (size_t s = 0; s < seqs_.size(); ++s) {
      const auto [first, len] = seqs_[s];
      make_selection(pick, len, p.H, p.n, p.lsel, seed + 100 + s, idx_.data() + first * p.H * p.n,
                     cnt_.data() + first * p.H);
    }

    dq_ = upload(qb_);
    dk_ = upload(kb_);
    dv_ = strided ? DeviceBuffer(16) : upload(vb_);
    dg_ = upload(gb_);
    didx_ = DeviceBuffer(std::max<size_t>(idx_.size(), 1) * 4);
    dcnt_ = DeviceBuffer(std::max<size_t>(cnt_.size(), 1) * 4);
    if (!idx_.empty()) didx_.upload(idx_.data(), idx_.size() * 4);
    if (!cnt_.empty()) dcnt_.upload(cnt_.data(), cnt_.size() * 4);
    dcu_ = DeviceBuffer(std::max<size_t>(cu_.size(), 1) * 4);
    if (!cu_.empty()) dcu_.upload(cu_.data(), cu_.size() * 4);
    compute_reference();
  }

  const Problem& problem() const { return p_; }
  // The overlap plan of this selection, computed on the host.
  std::vector<OverlapBucket> host_plan() const { return overlap_plan(idx_.data(), cnt_.data(), tokens_, p_.H, p_.n); }

  // `dispatch`: with a plan buffer, so that (without a config) each overlap bucket's config runs on its spans.
  Errors run(const TileConfig* cfg, Epilogue ep, bool dispatch = false) const {
    const size_t o_n = static_cast<size_t>(tokens_ * o_st_), l_n = static_cast<size_t>(tokens_ * l_st_);
    DeviceBuffer dout(o_n * 2), dl(l_n * 4), dx(o_n * 2);
    dout.fill_u16(0xffff);  // NaN in bf16 and fp16
    dl.fill_bytes(0xff);    // NaN in fp32
    dx.fill_u16(0xffff);
    std::vector<uint16_t> before;
    if (ep == Epilogue::accumulate) {
      before = random_normal_bits(o_n, p_.dtype, seed_ + 7);
      for (auto& x : before) x = float_to_bits(0.25f * bits_to_float(x, p_.dtype), p_.dtype);
      dx.upload(before.data(), o_n * 2);
    }

    SlcFwdArgs a;
    const char* v_base = layout_ == Layout::strided ? static_cast<const char*>(dk_.get()) + p_.dk * 2
                                                    : static_cast<const char*>(dv_.get());
    a.q = {dq_.get(), p_.T * q_st_, q_st_, p_.dk};
    a.k = {dk_.get(), p_.T * kv_st_, kv_st_, kv_sh_};
    a.v = {v_base, p_.T * v_st_, v_st_, v_sh_};
    if (ep != Epilogue::accumulate) {
      a.o_slc = {dout.get(), p_.T * o_st_, o_st_, o_sh_};
      a.lse = static_cast<float*>(dl.get());
      a.lse_stride_t = l_st_, a.lse_stride_b = p_.T * l_st_;
    }
    a.idx = static_cast<const int32_t*>(didx_.get());
    a.cnt = static_cast<const int32_t*>(dcnt_.get());
    if (ep != Epilogue::plain) {
      a.gate = dg_.get();
      a.gate_stride_t = g_st_, a.gate_stride_b = p_.T * g_st_;
      a.out = {dx.get(), p_.T * o_st_, o_st_, o_sh_};
      a.accumulate = ep == Epilogue::accumulate;
    }
    if (!cu_.empty()) {
      a.cu_seqlens = static_cast<const int32_t*>(dcu_.get());
      a.cu_seqlens_host = cu_;
    }
    DeviceBuffer dplan(dispatch ? slc_plan_bytes(p_) : 1);
    if (dispatch) {
      dplan.fill_bytes(0xee);  // neither bucket: an entry the plan kernel leaves unwritten runs nowhere
      a.plan = static_cast<uint8_t*>(dplan.get()), a.plan_bytes = dplan.bytes();
    }
    slc_fwd(p_, a, nullptr, cfg);
    gpu().synchronize();

    std::vector<uint16_t> ob(o_n), xb(o_n);
    std::vector<float> lse(l_n);
    dout.download(ob.data(), o_n * 2);
    dx.download(xb.data(), o_n * 2);
    dl.download(lse.data(), l_n * 4);
    if (tokens_ > 0) {  // planted faults (NSAJIT_TEST_PLANT): the last token's last head
      const size_t last = static_cast<size_t>((tokens_ - 1) * o_st_ + (p_.HQ - 1) * o_sh_);
      test::plant_row(ob, last, static_cast<size_t>(p_.dv));
      test::plant_row(xb, last, static_cast<size_t>(p_.dv));
      test::plant_lse(lse, static_cast<size_t>((tokens_ - 1) * l_st_));
    }

    Errors r;
    if (dispatch) {
      std::vector<uint8_t> plan(slc_plan_bytes(p_));
      dplan.download(plan.data(), plan.size());
      test::plant_byte(plan, 0);
      const std::vector<OverlapBucket> want = host_plan();
      r.plan_mismatches = 0;
      for (size_t i = 0; i < plan.size(); ++i) r.plan_mismatches += plan[i] != static_cast<uint8_t>(want[i]);
    }
    ErrorMeter& eo = r.o;
    ErrorMeter& ex = r.out;
    LseMeter& el = r.lse;
    for (const auto& [first, len] : seqs_)
      for (int64_t tok = first; tok < first + len; ++tok)
        for (int h = 0; h < p_.HQ; ++h) {
          const double g = bits_to_float(gb_[static_cast<size_t>(tok * g_st_ + h)], p_.dtype);
          for (int i = 0; i < p_.dv; ++i) {
            const size_t at = static_cast<size_t>(tok * o_st_ + h * o_sh_ + i);
            const double ref = o_ref_[static_cast<size_t>((tok * p_.HQ + h) * p_.dv + i)];
            if (ep != Epilogue::accumulate) eo.add(bits_to_float(ob[at], p_.dtype), ref);
            if (ep == Epilogue::gated) ex.add(bits_to_float(xb[at], p_.dtype), g * ref);
            if (ep == Epilogue::accumulate)
              ex.add(bits_to_float(xb[at], p_.dtype), bits_to_float(before[at], p_.dtype) + g * ref);
          }
          // The padding after each head of o_slc must still hold the poison.
          for (int64_t i = p_.dv; i < o_sh_ && ep != Epilogue::accumulate; ++i)
            r.pad_written += ob[static_cast<size_t>(tok * o_st_ + h * o_sh_ + i)] != 0xffff;
          if (ep != Epilogue::accumulate)
            el.add(lse[static_cast<size_t>(tok * l_st_ + h)], lse_ref_[static_cast<size_t>(tok * p_.HQ + h)], tok, h);
          eo.end_row(tok, h);
          ex.end_row(tok, h);
        }
    return r;
  }

private:
  static DeviceBuffer upload(const std::vector<uint16_t>& host) {
    DeviceBuffer d(std::max<size_t>(host.size(), 1) * 2);
    if (!host.empty()) d.upload(host.data(), host.size() * 2);
    return d;
  }

  // ref::selected_attention per sequence, with the rows split into chunks run in parallel: a chunk [a, b) runs the
  // reference on the prefix of b tokens (all its keys) with cnt = 0 outside [a, b). Entries that select a block
  // after t are dropped for the reference: they hold no key s <= t (the kernel gets them as they are).
  void compute_reference() {
    const Problem& p = p_;
    o_ref_.assign(static_cast<size_t>(tokens_ * p.HQ * p.dv), 0.0);
    lse_ref_.assign(static_cast<size_t>(tokens_ * p.HQ), -std::numeric_limits<double>::infinity());
    for (const auto& [first, len] : seqs_) {
      if (len <= 0) continue;
      std::vector<double> q(static_cast<size_t>(len * p.HQ * p.dk)), k(static_cast<size_t>(len * p.H * p.dk)),
          v(static_cast<size_t>(len * p.H * p.dv));
      std::vector<int32_t> idx(static_cast<size_t>(len * p.H * p.n), -1), cnt(static_cast<size_t>(len * p.H), 0);
      for (int64_t t = 0; t < len; ++t) {
        const int64_t tok = first + t;
        for (int h = 0; h < p.HQ; ++h)
          for (int i = 0; i < p.dk; ++i)
            q[static_cast<size_t>((t * p.HQ + h) * p.dk + i)] =
                bits_to_float(qb_[static_cast<size_t>(tok * q_st_ + h * p.dk + i)], p.dtype);
        for (int h = 0; h < p.H; ++h) {
          for (int i = 0; i < p.dk; ++i)
            k[static_cast<size_t>((t * p.H + h) * p.dk + i)] =
                bits_to_float(kb_[static_cast<size_t>(tok * kv_st_ + h * kv_sh_ + i)], p.dtype);
          for (int i = 0; i < p.dv; ++i)
            v[static_cast<size_t>((t * p.H + h) * p.dv + i)] =
                layout_ == Layout::strided
                    ? bits_to_float(kb_[static_cast<size_t>(tok * kv_st_ + h * kv_sh_ + p.dk + i)], p.dtype)
                    : bits_to_float(vb_[static_cast<size_t>(tok * v_st_ + h * v_sh_ + i)], p.dtype);
          int c = 0;
          for (int m = 0; m < cnt_[static_cast<size_t>(tok * p.H + h)]; ++m) {
            const int32_t j = idx_[static_cast<size_t>((tok * p.H + h) * p.n + m)];
            if (static_cast<int64_t>(j) * p.lsel <= t) idx[static_cast<size_t>((t * p.H + h) * p.n + c++)] = j;
          }
          cnt[static_cast<size_t>(t * p.H + h)] = c;
        }
      }
      // Chunks: enough to keep the cores busy, few enough that their prefix outputs fit in about 1 GB.
      const double out_bytes = static_cast<double>(len) * p.HQ * (p.dv + 1) * 8.0;
      const int64_t chunks = std::clamp<int64_t>(static_cast<int64_t>(1e9 / out_bytes), 1,
                                                 std::min<int64_t>(len, 2 * std::max(1u, std::thread::hardware_concurrency())));
      std::vector<std::future<void>> tasks;
      for (int64_t c = 0; c < chunks; ++c) {
        const int64_t a = len * c / chunks, b = len * (c + 1) / chunks;
        if (a == b) continue;
        tasks.push_back(std::async(std::launch::async, [&, first = first, a, b] {
          ref::Config rc;
          rc.T = b, rc.HQ = p.HQ, rc.H = p.H, rc.dk = p.dk, rc.dv = p.dv, rc.l = p.l, rc.d = p.d, rc.lsel = p.lsel;
          rc.n = p.n, rc.w = p.w, rc.scale = p.softmax_scale();
          std::vector<int32_t> cnt_chunk(cnt.begin(), cnt.begin() + b * p.H);
          std::fill(cnt_chunk.begin(), cnt_chunk.begin() + a * p.H, 0);
          std::vector<double> o(static_cast<size_t>(b * p.HQ * p.dv)), l(static_cast<size_t>(b * p.HQ));
          ref::selected_attention(rc, q.data(), k.data(), v.data(), idx.data(), cnt_chunk.data(), o.data(), l.data());
          std::copy(o.begin() + a * p.HQ * p.dv, o.end(), o_ref_.begin() + (first + a) * p.HQ * p.dv);
          std::copy(l.begin() + a * p.HQ, l.end(), lse_ref_.begin() + (first + a) * p.HQ);
        }));
      }
      for (auto& t : tasks) t.get();
    }
  }

  Problem p_;
  uint64_t seed_;
  Layout layout_;
  std::vector<int32_t> cu_;
  std::vector<std::pair<int64_t, int64_t>> seqs_;  // (first token, length)
  int64_t tokens_ = 0;
  int64_t q_st_ = 0, kv_sh_ = 0, kv_st_ = 0, v_sh_ = 0, v_st_ = 0, o_sh_ = 0, o_st_ = 0, g_st_ = 0, l_st_ = 0;
  std::vector<uint16_t> qb_, kb_, vb_, gb_;
  std::vector<int32_t> idx_, cnt_;
  DeviceBuffer dq_, dk_, dv_, dg_, didx_, dcnt_, dcu_;
  std::vector<double> o_ref_, lse_ref_;  // [tokens, HQ, dv], [tokens, HQ]
};

void expect_ok(const Problem& p, const Errors& r, Epilogue ep, const std::string& what) {
  INFO(what, " | ", p.describe(), " | o: ", r.o.describe(), " | lse: ", r.lse.describe(), " | out: ",
       r.out.describe(), " | padding written ", r.pad_written, " | plan entries unlike the host's ", r.plan_mismatches);
  CHECK(r.pad_written == 0);
  if (r.plan_mismatches >= 0) CHECK(r.plan_mismatches == 0);
  if (ep != Epilogue::accumulate) CHECK(r.o.ok(tolerance(p.dtype)));
  if (ep != Epilogue::accumulate) CHECK(r.lse.ok(tolerance(p.dtype)));
  if (ep != Epilogue::plain) CHECK(r.out.ok(tolerance(p.dtype)));
}

// With `cfg`, that config; without, the family's default, after the same inputs have also gone through
// other_config (where it exists), so that every case covers both implementations.
void check_case(const SlcCase& c, const TileConfig* cfg, Epilogue ep, const std::string& what) {
  if (cfg == nullptr) {
    if (const auto h = other_config(find_family("slc_fwd"), c.problem(), gpu().info().max_smem_optin))
      expect_ok(c.problem(), c.run(&*h, ep), ep, what + ", beside [" + describe(*h) + "]");
  }
  expect_ok(c.problem(), c.run(cfg, ep), ep, what);
}

}  // namespace

TEST_CASE("slc_fwd: every dtype, head dims and group size") {
  const Pick picks[] = {Pick::standard, Pick::correlated, Pick::arbitrary};
  uint64_t seed = 1000;
  int i = 0;
  for (Dtype dt : {Dtype::bf16, Dtype::fp16})
    for (auto& dims : kDims)
      for (int G : kGroups) {
        const Problem p = matrix_problem(i, dt, dims[0], dims[1], G);
        const Pick pick = picks[i % 3];
        ++i;
        check_case(SlcCase(p, seed += 7, pick), nullptr, Epilogue::plain, fmt::format("matrix, {}", pick_name(pick)));
      }
}

TEST_CASE("slc_fwd: sequence lengths 1..4096, every n, l' = 32 and 128") {
  uint64_t seed = 2000;
  for (int64_t T : {1, 15, 16, 17, 63, 64, 65, 511, 4096}) {
    const Problem p = slc_problem(Dtype::bf16, 64, 64, 4, 1, T, 16);
    check_case(SlcCase(p, seed += 3), nullptr, Epilogue::plain, "T sweep");
  }
  for (int n : kTopN)
    for (int G : {1, 16}) {
      const Problem p = slc_problem(Dtype::fp16, 128, 128, G, 1, 1000, n);
      check_case(SlcCase(p, seed += 3, Pick::correlated), nullptr, Epilogue::plain, "n sweep");
    }
  for (int lsel : {32, 128}) {
    const Problem p = slc_problem(Dtype::bf16, 128, 128, 4, 1, 700, 16, 1, lsel);
    check_case(SlcCase(p, seed += 3), nullptr, Epilogue::plain, fmt::format("l' = {}", lsel));
  }
}

// The merge and the per-row block masks: positions of one CTA with unrelated, shared, disjoint, empty and
// non-causal selections.
TEST_CASE("slc_fwd: selections that neighbouring positions share or not") {
  uint64_t seed = 3000;
  for (Pick pick : {Pick::standard, Pick::correlated, Pick::disjoint, Pick::arbitrary})
    for (int G : {1, 3, 16}) {
      const Problem p = slc_problem(Dtype::bf16, 128, 128, G, G == 16 ? 1 : 2, 777, 16);
      check_case(SlcCase(p, seed += 3, pick), nullptr, Epilogue::plain, pick_name(pick));
    }
  // A long sequence where the 32 positions of a G = 1 CTA select 32 disjoint sets: the merged list is long.
  const Problem p = slc_problem(Dtype::bf16, 64, 64, 1, 1, 8192, 8);
  check_case(SlcCase(p, 3100, Pick::disjoint), nullptr, Epilogue::plain, "disjoint, long");
}

TEST_CASE("slc_fwd: every valid tile config of the space, and other rows per CTA") {
  const int max_smem = gpu().info().max_smem_optin;
  uint64_t seed = 4000;
  std::vector<std::pair<Problem, SlcCase*>> cases;  // one set of inputs (and reference) per problem
  std::vector<std::unique_ptr<SlcCase>> owned;
  auto case_for = [&](const Problem& p) -> const SlcCase& {
    for (auto& [q, c] : cases)
      if (q.describe() == p.describe()) return *c;
    owned.push_back(std::make_unique<SlcCase>(p, seed += 5));
    cases.push_back({p, owned.back().get()});
    return *owned.back();
  };
  auto sweep = config_sweep(max_smem);
  CHECK(sweep.size() >= 24);
  for (const auto& [p, c] : sweep) check_case(case_for(p), &c, Epilogue::plain, "config " + describe(c));
  for (const auto& [p, c] : row_layouts(gpu().info().max_smem_optin))
    check_case(case_for(p), &c, Epilogue::gated, "rows " + describe(c));
}

TEST_CASE("slc_fwd: gated epilogue, written and accumulated, without o_slc") {
  uint64_t seed = 5000;
  for (Dtype dt : {Dtype::bf16, Dtype::fp16})
    for (int G : {1, 3, 16}) {
      const Problem p = slc_problem(dt, 128, 128, G, 2, 300, 16);
      const SlcCase c(p, seed += 3, Pick::correlated);
      check_case(c, nullptr, Epilogue::gated, "gated");
      check_case(c, nullptr, Epilogue::accumulate, "accumulate");
    }
}

TEST_CASE("slc_fwd: batches, varlen with empty and short sequences, strided views") {
  const Problem b3 = slc_problem(Dtype::bf16, 128, 128, 16, 2, 300, 16, 3);
  check_case(SlcCase(b3, 6000), nullptr, Epilogue::plain, "batch 3");
  const SlcCase b3s(b3, 6001, Pick::arbitrary, Layout::strided);
  check_case(b3s, nullptr, Epilogue::plain, "batch 3 strided");
  check_case(b3s, nullptr, Epilogue::accumulate, "batch 3 strided accumulate");

  const Problem v = slc_problem(Dtype::fp16, 64, 64, 3, 2, 1000, 8);
  const std::vector<int32_t> bad = {0, 5, 5, 1, 300, 1000};  // deliberately not sorted: must be refused
  CHECK_THROWS_AS(SlcCase(v, 6002, Pick::standard, Layout::contiguous, bad).run(nullptr, Epilogue::plain), UsageError);
  const std::vector<int32_t> cu = {0, 5, 5, 6, 300, 1000};
  check_case(SlcCase(v, 6003, Pick::standard, Layout::contiguous, cu), nullptr, Epilogue::plain, "varlen");
  const SlcCase vs(v, 6004, Pick::correlated, Layout::strided, cu);
  check_case(vs, nullptr, Epilogue::plain, "varlen strided");
  check_case(vs, nullptr, Epilogue::gated, "varlen strided gated");
  const Problem v32 = slc_problem(Dtype::bf16, 192, 128, 32, 1, 1000, 16);
  check_case(SlcCase(v32, 6005, Pick::arbitrary, Layout::strided, cu), nullptr, Epilogue::accumulate,
             "varlen strided accumulate G = 32");
}

// The overlap dispatch: a selection whose 64-position spans alternate between high and low overlap, so that the
// plan splits the positions and each bucket's default config (they differ: the tests read no tuning database) runs
// on its own spans in one call. Every row must be written by exactly one variant: a row no variant writes keeps its
// poison, a row both write is accumulated twice.
TEST_CASE("slc_fwd: overlap dispatch, high- and low-overlap spans in one call, every epilogue, batches, varlen") {
  gpu();
  uint64_t seed = 8000;
  auto run_dispatch = [&](const SlcCase& c, Epilogue ep, const std::string& what) {
    const Problem& p = c.problem();
    const KernelFamily& f = find_family("slc_fwd");
    const TileConfig& low = resolve_config(f, p, p, OverlapBucket::low).config;
    const TileConfig& high = resolve_config(f, p, p, OverlapBucket::high).config;
    REQUIRE_MESSAGE(low != high, "the buckets' configs must differ for both variants to run: [", describe(low), "]");
    const PlanShares shares = plan_shares(c.host_plan());
    INFO(what, ": ", 100 * shares.high, "% of the plan high-overlap; low [", describe(low), "], high [",
         describe(high), "]");
    REQUIRE(shares.high > 0);
    REQUIRE(shares.low > 0);
    expect_ok(p, c.run(nullptr, ep, true), ep, what);
  };
  // l' = 32 and n = 8: 64 blocks in 2048 tokens, more than 4 n = 32, so the arbitrary spans are low-overlap.
  for (int G : {1, 2, 4, 16}) {
    const Problem p = slc_problem(Dtype::bf16, 128, 128, G, 2, 2048, 8, 1, 32);
    const SlcCase c(p, seed += 11, Pick::mixed);
    run_dispatch(c, Epilogue::plain, fmt::format("G = {}", G));
    if (G == 4 || G == 16) {
      run_dispatch(c, Epilogue::gated, fmt::format("G = {} gated", G));
      run_dispatch(c, Epilogue::accumulate, fmt::format("G = {} accumulate", G));
    }
  }
  const Problem fp16 = slc_problem(Dtype::fp16, 64, 64, 16, 1, 2048, 8, 1, 32);
  run_dispatch(SlcCase(fp16, seed += 11, Pick::mixed), Epilogue::plain, "fp16");
  const Problem b2 = slc_problem(Dtype::bf16, 128, 128, 4, 2, 1536, 8, 2, 32);
  run_dispatch(SlcCase(b2, seed += 11, Pick::mixed, Layout::strided), Epilogue::accumulate, "batch 2 strided");
  const Problem v = slc_problem(Dtype::bf16, 128, 128, 2, 2, 3000, 8, 1, 32);
  const std::vector<int32_t> cu = {0, 37, 37, 1300, 2999, 3000};
  const SlcCase vc(v, seed += 11, Pick::mixed, Layout::contiguous, cu);
  run_dispatch(vc, Epilogue::plain, "varlen");
  run_dispatch(vc, Epilogue::accumulate, "varlen accumulate");
}

// T = 65536 with preset fla on sampled positions. The reference for a sampled (t, KV head) is ref::selected_attention
// on a compact sequence made of t's selected blocks only, in order (block m of it = selected block j_m), with the
// query placed where the cut falls in the same place: row (c - 1) l' + (t - j_last l') when the last selected block
// is t's own, else the last row; its G heads are the group's. Every lse entry is checked finite (each position
// selects at least its own block), which also catches unwritten rows anywhere.
TEST_CASE("slc_fwd at T = 65536 (preset fla) on sampled positions") {
  gpu();
  Problem p = preset("fla");
  p.T = 65536;
  const int G = p.G();
  const size_t q_n = static_cast<size_t>(p.T) * p.HQ * p.dk, k_n = static_cast<size_t>(p.T) * p.H * p.dk;
  const size_t v_n = static_cast<size_t>(p.T) * p.H * p.dv, o_n = static_cast<size_t>(p.T) * p.HQ * p.dv;
  const size_t l_n = static_cast<size_t>(p.T) * p.HQ;
  DeviceBuffer q = random_device_tensor(q_n, p.dtype, 7000);
  DeviceBuffer k = random_device_tensor(k_n, p.dtype, 7001);
  DeviceBuffer v = random_device_tensor(v_n, p.dtype, 7002);
  std::vector<uint16_t> hk(k_n), hv(v_n);
  k.download(hk.data(), k_n * 2);
  v.download(hv.data(), v_n * 2);
  // Selections of two kinds: neighbours sharing most blocks (as NSA's scores do), and independent random blocks
  // (fla's benchmark).
  for (Pick pick : {Pick::correlated, Pick::standard}) {
    std::vector<int32_t> idx(static_cast<size_t>(p.T) * p.H * p.n), cnt(static_cast<size_t>(p.T) * p.H);
    make_selection(pick, p.T, p.H, p.n, p.lsel, 7003, idx.data(), cnt.data());
    DeviceBuffer didx(idx.size() * 4), dcnt(cnt.size() * 4), o(o_n * 2), lse(l_n * 4);
    didx.upload(idx.data(), idx.size() * 4);
    dcnt.upload(cnt.data(), cnt.size() * 4);
    o.fill_u16(0xffff);
    lse.fill_bytes(0xff);

    SlcFwdArgs a;
    a.q = contiguous(q.get(), p.T, p.HQ, p.dk), a.k = contiguous(k.get(), p.T, p.H, p.dk);
    a.v = contiguous(v.get(), p.T, p.H, p.dv), a.o_slc = contiguous(o.get(), p.T, p.HQ, p.dv);
    a.lse = static_cast<float*>(lse.get()), a.lse_stride_t = p.HQ, a.lse_stride_b = p.T * p.HQ;
    a.idx = static_cast<const int32_t*>(didx.get()), a.cnt = static_cast<const int32_t*>(dcnt.get());
    slc_fwd(p, a, nullptr);
    gpu().synchronize();
    {  // Not a benchmark (see bench/): a rough time for the log.
      Event start, stop;
      start.record();
      for (int r = 0; r < 5; ++r) slc_fwd(p, a, nullptr);
      stop.record();
      stop.synchronize();
      const double ms = stop.ms_since(start) / 5;
      MESSAGE(fmt::format("slc_fwd {} ({} selection): {:.2f} ms, {:.0f} TFLOP/s", p.describe(), pick_name(pick), ms,
                          find_family("slc_fwd").flops(p) / ms * 1e-9));
    }

    std::vector<float> hl(l_n);
    lse.download(hl.data(), l_n * 4);
    test::plant_lse(hl, l_n - static_cast<size_t>(p.HQ));
    int64_t bad_lse = 0;
    for (float x : hl) bad_lse += !std::isfinite(x);
    CHECK(bad_lse == 0);

    std::vector<int64_t> samples = {0, 1, 63, 64, 65, 1023, 1024, 1025, 4095, 65535};
    std::mt19937_64 rng(7004);
    while (samples.size() < 48) samples.push_back(std::uniform_int_distribution<int64_t>(0, p.T - 1)(rng));

    // One task per sampled position (its H KV heads), in parallel; errors summed afterwards.
    const int L = p.lsel;
    // The sampled rows of q and o, fetched here: the driver calls need this thread's current context.
    std::vector<std::vector<uint16_t>> q_rows, o_rows;
    for (int64_t t : samples) {
      q_rows.emplace_back(static_cast<size_t>(p.HQ) * p.dk);
      o_rows.emplace_back(static_cast<size_t>(p.HQ) * p.dv);
      q.download(q_rows.back().data(), q_rows.back().size() * 2, static_cast<size_t>(t) * p.HQ * p.dk * 2);
      o.download(o_rows.back().data(), o_rows.back().size() * 2, static_cast<size_t>(t) * p.HQ * p.dv * 2);
      if (t == p.T - 1) test::plant_row(o_rows.back(), static_cast<size_t>(p.HQ - 1) * p.dv, static_cast<size_t>(p.dv));
    }
    auto check_position = [&](size_t sample) {
      const int64_t t = samples[sample];
      const std::vector<uint16_t>& hq = q_rows[sample];
      const std::vector<uint16_t>& ho = o_rows[sample];
      ErrorMeter eo;
      LseMeter el;
      for (int kh = 0; kh < p.H; ++kh) {
        const int c = cnt[static_cast<size_t>(t * p.H + kh)];
        const int32_t* row = idx.data() + (t * p.H + kh) * p.n;
        const int64_t j_last = row[c - 1];
        const int64_t tc = (c - 1) * L + std::min<int64_t>(t - j_last * L, L - 1);  // the query's compact row
        ref::Config rc;
        rc.T = tc + 1, rc.HQ = G, rc.H = 1, rc.dk = p.dk, rc.dv = p.dv, rc.l = L, rc.d = L, rc.lsel = L, rc.n = p.n;
        rc.w = p.w, rc.scale = p.softmax_scale();
        std::vector<double> cq(static_cast<size_t>(rc.T * G * p.dk)), ck(static_cast<size_t>(rc.T * p.dk)),
            cv(static_cast<size_t>(rc.T * p.dv)), co(static_cast<size_t>(rc.T * G * p.dv)),
            cl(static_cast<size_t>(rc.T * G));
        std::vector<int32_t> cidx(static_cast<size_t>(rc.T * p.n), -1), ccnt(static_cast<size_t>(rc.T), 0);
        for (int64_t s = 0; s < rc.T; ++s) {
          const int64_t src = row[s / L] * L + s % L;  // the token of compact row s
          for (int i = 0; i < p.dk; ++i)
            ck[static_cast<size_t>(s * p.dk + i)] =
                bits_to_float(hk[static_cast<size_t>((src * p.H + kh) * p.dk + i)], p.dtype);
          for (int i = 0; i < p.dv; ++i)
            cv[static_cast<size_t>(s * p.dv + i)] =
                bits_to_float(hv[static_cast<size_t>((src * p.H + kh) * p.dv + i)], p.dtype);
        }
        for (int g = 0; g < G; ++g)
          for (int i = 0; i < p.dk; ++i)
            cq[static_cast<size_t>((tc * G + g) * p.dk + i)] =
                bits_to_float(hq[static_cast<size_t>((kh * G + g) * p.dk + i)], p.dtype);
        for (int m = 0; m < c; ++m) cidx[static_cast<size_t>(tc * p.n + m)] = m;
        ccnt[static_cast<size_t>(tc)] = c;
        ref::selected_attention(rc, cq.data(), ck.data(), cv.data(), cidx.data(), ccnt.data(), co.data(), cl.data());
        for (int g = 0; g < G; ++g) {
          const int h = kh * G + g;
          for (int i = 0; i < p.dv; ++i)
            eo.add(bits_to_float(ho[static_cast<size_t>(h * p.dv + i)], p.dtype),
                   co[static_cast<size_t>((tc * G + g) * p.dv + i)]);
          eo.end_row(t, h);
          el.add(hl[static_cast<size_t>(t * p.HQ + h)], cl[static_cast<size_t>(tc * G + g)], t, h);
        }
      }
      return std::pair{eo, el};
    };
    for (int64_t t : samples)
      for (int kh = 0; kh < p.H; ++kh) REQUIRE(cnt[static_cast<size_t>(t * p.H + kh)] >= 1);
    std::vector<std::future<std::pair<ErrorMeter, LseMeter>>> tasks;
    for (size_t i = 0; i < samples.size(); ++i) tasks.push_back(std::async(std::launch::async, check_position, i));
    ErrorMeter eo;
    LseMeter el;
    for (auto& task : tasks) {
      const auto [o_err, l_err] = task.get();
      eo.merge(o_err), el.merge(l_err);
    }
    INFO(p.describe(), " | ", pick_name(pick), " | o: ", eo.describe(), " | lse: ", el.describe());
    CHECK(eo.ok(tolerance(p.dtype)));
    CHECK(el.ok(tolerance(p.dtype)));
    MESSAGE(fmt::format("{} ({}) on {} sampled positions: o {}; lse {}", p.describe(), pick_name(pick),
                        samples.size(), eo.describe(), el.describe()));
  }
}

// Issue 14: head dims off the 64 grid (multiples of 8 from 32 to 256, dk != dv), l' = 16 .. 128, G in {1, 3, 8, 16,
// 32}, B = 2, strided views (the padding after o must stay poisoned), every epilogue, the default config and every
// other valid config of one new pair.
TEST_CASE("slc_fwd: any head dim, l' = 16 .. 128") {
  struct Dims {
    int dk, dv, G, lsel;
  };
  const Dims dims[] = {{32, 32, 1, 16},  {40, 72, 3, 64},    {80, 80, 8, 16},   {96, 64, 16, 32},
                       {96, 96, 3, 128}, {160, 160, 1, 64},  {200, 120, 8, 32}, {256, 128, 3, 16},
                       {72, 40, 32, 64}, {128, 64, 16, 128}, {248, 248, 1, 64}};
  const Pick picks[] = {Pick::standard, Pick::correlated, Pick::arbitrary};
  uint64_t seed = 9000;
  int i = 0;
  for (Dtype dt : {Dtype::bf16, Dtype::fp16})
    for (const Dims& d : dims) {
      const int H = d.G >= 8 ? 1 : 2;
      const Problem p = slc_problem(dt, d.dk, d.dv, d.G, H, 300 + 131 * (i % 6), kTopN[i % 3], 2, d.lsel);
      const Layout layout = i % 2 ? Layout::strided : Layout::contiguous;
      const SlcCase c(p, seed += 7, picks[i % 3], layout);
      const Epilogue ep = i % 3 == 0 ? Epilogue::plain : i % 3 == 1 ? Epilogue::gated : Epilogue::accumulate;
      const std::string what = fmt::format("dims, {}{}", pick_name(picks[i % 3]), i % 2 ? ", strided" : "");
      ++i;
      check_case(c, nullptr, ep, what);
    }
  const Problem p = slc_problem(Dtype::bf16, 80, 48, 4, 1, 700, 16);
  const SlcCase c(p, seed += 7);
  for (const SpacePoint& pt : enumerate_space(find_family("slc_fwd"), p, gpu().info().max_smem_optin))
    if (!pt.rejected) check_case(c, &pt.config, Epilogue::plain, "config " + describe(pt.config));
}
