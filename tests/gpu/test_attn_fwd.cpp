// GPU tests of the window forward: fresh random inputs, poisoned outputs, NSA.md's tolerance against the float64
// CPU reference; long sequences against the simple GPU kernel, which is itself checked against the CPU.
#include <doctest/doctest.h>
#include <fmt/format.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <future>
#include <limits>
#include <numeric>
#include <vector>

#include "cache/cubin_cache.h"
#include "codegen/family.h"
#include "reference/reference.h"
#include "runtime/device.h"
#include "base/error.h"
#include "runtime/jit.h"
#include "runtime/attn_fwd_api.h"
#include "tuner/inputs.h"
#include "tests/gpu/check.h"

using namespace nsajit;

namespace {

const int kDims[][2] = {{64, 64}, {128, 128}, {192, 128}, {256, 256}};
// G: the small ones, the paper's 16, and the MQA-like 48, 64 (HQ = 64, H = 1) and 128.
const int kGroups[] = {1, 2, 3, 4, 8, 16, 32, 48, 64, 128};

Problem window_problem(Dtype dtype, int dk, int dv, int G, int H, int64_t T, int w, int64_t B = 1) {
  Problem p = preset("fla");
  p.dtype = dtype, p.dk = dk, p.dv = dv, p.H = H, p.HQ = G * H, p.T = T, p.w = w, p.B = B;
  return p;
}

// The configs that the tests without a config of their own run beside the default one, on the same inputs: the other
// implementations'. Where the default is a Hopper kernel (IMPL=1, 128 rows), the portable mma.sync default; else
// IMPL=1 with 64 rows (128 where 64 do not fit), 64 keys, Q from shared memory, three stages where they fit, or none
// where no IMPL=1 point fits (head dims whose accumulators would spill). Then that Hopper config's twin in the other
// Hopper implementation (the warp-specialized IMPL=2 for IMPL=1), where it fits.
std::vector<TileConfig> other_configs(const KernelFamily& f, const Problem& p, int max_smem) {
  std::vector<TileConfig> out;
  std::optional<TileConfig> hopper;
  const TileConfig d = f.default_config(p);
  if (d.at("IMPL") != 0) {
    out.push_back(f.portable_default_config(p));
    hopper = d;
  } else {
    for (int bm : {64, 128})
      for (int stages : {3, 2}) {
        const TileConfig c{{"BM", bm}, {"BN", 64}, {"QREGS", 0}, {"IMPL", 1}, {"STAGES", stages}};
        if (!hopper && !f.reject(p, c, max_smem)) hopper = c;
      }
    if (hopper) out.push_back(*hopper);
  }
  if (hopper) {  // its twin in the other Hopper implementation (IMPL=1 <-> the warp-specialized IMPL=2)
    TileConfig twin = *hopper;
    twin["IMPL"] = hopper->at("IMPL") == 1 ? 2 : 1;
    if (!f.reject(p, twin, max_smem)) out.push_back(twin);
  }
  return out;
}

// Compiles every kernel the tests use in parallel up front (into the disk cache), instead of one by one on
// first use.
void prewarm(int max_smem) {
  std::vector<KernelSpec> specs;
  for (const char* name : {"win_fwd", "cmp_fwd"}) {
    const KernelFamily& fast = find_family(name);
    const KernelFamily& ref = find_family(std::string(name) + "_ref");
    for (Dtype dt : {Dtype::bf16, Dtype::fp16})
      for (auto& dims : kDims)
        for (int G : kGroups) {
          const Problem p = window_problem(dt, dims[0], dims[1], G, 1, 64, 64);
          specs.push_back({&fast, p, fast.default_config(p), "sm_90a"});
          for (const TileConfig& h : other_configs(fast, p, max_smem)) specs.push_back({&fast, p, h, "sm_90a"});
          specs.push_back({&ref, p, {}, "sm_90a"});
        }
    for (auto& dims : kDims) {
      const Problem p = window_problem(Dtype::bf16, dims[0], dims[1], 8, 1, 64, 64);
      for (const SpacePoint& pt : enumerate_space(fast, p, max_smem))
        if (!pt.rejected) specs.push_back({&fast, p, pt.config, "sm_90a"});
    }
  }
  const auto t0 = std::chrono::steady_clock::now();
  const auto outcomes = jit_compile_all(specs, CubinCache(CubinCache::default_dir()), 0);
  for (const auto& o : outcomes) REQUIRE_MESSAGE(o.result, o.error);
  MESSAGE(fmt::format("prewarmed {} kernels in {:.1f} s", specs.size(),
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

// How the tensors sit in memory: contiguous, or strided views of fused buffers (q padded per token, k and v
// interleaved in one [T, H, dk + dv] buffer, o padded per head).
enum class Layout { contiguous, strided };

struct Outcome {
  ErrorMeter o, out;  // out: the gated output (empty without a gate)
  LseMeter lse;
  bool gated = false;
  int64_t pad_written = 0;  // strided o: elements of the padding after each head that lost the poison
};

enum class Branch { window, compressed };
// The gated output: none, out = g * o (out poisoned first), or out += g * o (out pre-filled with random values).
enum class Gate { none, write, accumulate };

int64_t keys_of(Branch br, const Problem& p, int64_t len) {
  if (br == Branch::window) return len;
  return len >= p.l ? (len - p.l) / p.d + 1 : 0;
}

// Runs win_fwd or cmp_fwd (or their GPU references) on random inputs for `p` (with optional varlen offsets) and
// compares with the CPU reference per sequence. Compressed keys are random, not pooled.
Outcome check_attn_config(Branch br, const Problem& p, uint64_t seed, const TileConfig* cfg, Layout layout,
                          const std::vector<int32_t>& cu, bool use_reference_kernel, Gate gate) {
  gpu();
  const int64_t tokens = p.B * p.T;
  // Per sequence: (first token, length, first key).
  struct Seq {
    int64_t first, len, key_first;
  };
  std::vector<Seq> seqs;
  int64_t total_keys = 0;
  if (!cu.empty()) {
    for (size_t i = 0; i + 1 < cu.size(); ++i) {
      seqs.push_back({cu[i], cu[i + 1] - cu[i], total_keys});
      total_keys += keys_of(br, p, cu[i + 1] - cu[i]);
    }
  } else {
    for (int64_t b = 0; b < p.B; ++b) seqs.push_back({b * p.T, p.T, b * keys_of(br, p, p.T)});
    total_keys = p.B * keys_of(br, p, p.T);
  }
  const int64_t keys_per_batch = cu.empty() ? keys_of(br, p, p.T) : 0;
  // Element strides of each tensor in its buffer.
  const int64_t q_st = layout == Layout::strided ? p.HQ * p.dk + 64 : p.HQ * p.dk;
  const int64_t kv_sh = layout == Layout::strided ? p.dk + p.dv : p.dk;
  const int64_t kv_st = layout == Layout::strided ? p.H * kv_sh : p.H * p.dk;
  const int64_t v_sh = layout == Layout::strided ? kv_sh : p.dv, v_st = layout == Layout::strided ? kv_st : p.H * p.dv;
  const int64_t o_sh = layout == Layout::strided ? p.dv + 8 : p.dv, o_st = p.HQ * o_sh;

  const std::vector<uint16_t> qb = random_normal_bits(static_cast<size_t>(tokens * q_st), p.dtype, seed);
  const std::vector<uint16_t> kb = random_normal_bits(static_cast<size_t>(total_keys * kv_st + 8), p.dtype, seed + 1);
  const std::vector<uint16_t> vb =
      layout == Layout::strided ? std::vector<uint16_t>()
                                : random_normal_bits(static_cast<size_t>(total_keys * v_st + 8), p.dtype, seed + 2);
  DeviceBuffer dq(qb.size() * 2), dk(kb.size() * 2), dv(std::max<size_t>(vb.size(), 1) * 2);
  dq.upload(qb.data(), qb.size() * 2);
  dk.upload(kb.data(), kb.size() * 2);
  if (!vb.empty()) dv.upload(vb.data(), vb.size() * 2);
  DeviceBuffer dout(static_cast<size_t>(tokens * o_st) * 2), dlse(static_cast<size_t>(tokens * p.HQ) * 4);
  dout.fill_u16(0xffff);  // NaN in bf16 and fp16
  dlse.fill_bytes(0xff);  // NaN in fp32

  // Gates in (0, 1) and the gated output buffer [tokens, HQ, dv].
  std::vector<uint16_t> gb, out_before;
  DeviceBuffer dgate(std::max<int64_t>(tokens * p.HQ, 1) * 2), dgated(std::max<int64_t>(tokens * p.HQ * p.dv, 1) * 2);
  if (gate != Gate::none) {
    gb.resize(static_cast<size_t>(tokens * p.HQ));
    const std::vector<uint16_t> raw = random_normal_bits(gb.size(), p.dtype, seed + 3);
    for (size_t i = 0; i < gb.size(); ++i)
      gb[i] = float_to_bits(1.f / (1.f + std::exp(-bits_to_float(raw[i], p.dtype))), p.dtype);
    dgate.upload(gb.data(), gb.size() * 2);
    if (gate == Gate::accumulate) {
      out_before = random_normal_bits(static_cast<size_t>(tokens * p.HQ * p.dv), p.dtype, seed + 4);
      dgated.upload(out_before.data(), out_before.size() * 2);
    } else {
      dgated.fill_u16(0xffff);
    }
  }

  AttnFwdArgs a;
  const char* v_base = layout == Layout::strided ? static_cast<const char*>(dk.get()) + p.dk * 2
                                                 : static_cast<const char*>(dv.get());
  a.q = {dq.get(), p.T * q_st, q_st, p.dk};
  a.k = {dk.get(), keys_per_batch * kv_st, kv_st, kv_sh};
  a.v = {v_base, keys_per_batch * v_st, v_st, v_sh};
  a.o = {dout.get(), p.T * o_st, o_st, o_sh};
  a.lse = static_cast<float*>(dlse.get());
  a.lse_stride_t = p.HQ, a.lse_stride_b = p.T * p.HQ;
  if (gate != Gate::none) {
    a.gate = dgate.get(), a.gate_stride_t = p.HQ, a.gate_stride_b = p.T * p.HQ;
    a.out = contiguous(dgated.get(), p.T, p.HQ, p.dv);
    a.accumulate = gate == Gate::accumulate;
  }
  DeviceBuffer dcu(std::max<size_t>(cu.size(), 1) * 4);
  if (!cu.empty()) {
    dcu.upload(cu.data(), cu.size() * 4);
    a.cu_seqlens = static_cast<const int32_t*>(dcu.get());
    a.cu_seqlens_host = cu;
  }
  if (br == Branch::window)
    use_reference_kernel ? win_fwd_reference(p, a, nullptr) : win_fwd(p, a, nullptr, cfg);
  else
    use_reference_kernel ? cmp_fwd_reference(p, a, nullptr) : cmp_fwd(p, a, nullptr, cfg);
  gpu().synchronize();

  std::vector<uint16_t> ob(static_cast<size_t>(tokens * o_st)), gated;
  std::vector<float> lse(static_cast<size_t>(tokens * p.HQ));
  dout.download(ob.data(), ob.size() * 2);
  dlse.download(lse.data(), lse.size() * 4);
  if (gate != Gate::none) {
    gated.resize(static_cast<size_t>(tokens * p.HQ * p.dv));
    dgated.download(gated.data(), gated.size() * 2);
  }

  // Planted faults (NSAJIT_TEST_PLANT): the last token's last head.
  if (tokens > 0) {
    test::plant_row(ob, static_cast<size_t>((tokens - 1) * o_st + (p.HQ - 1) * o_sh), static_cast<size_t>(p.dv));
    test::plant_lse(lse, static_cast<size_t>((tokens - 1) * p.HQ));
  }
  Outcome r;
  r.gated = gate != Gate::none;
  ErrorMeter& eo = r.o;
  ErrorMeter& eg = r.out;
  LseMeter& el = r.lse;
  for (const Seq& sq : seqs) {
    if (sq.len == 0) continue;
    const int64_t keys = keys_of(br, p, sq.len);
    ref::Config rc;
    rc.T = sq.len, rc.HQ = p.HQ, rc.H = p.H, rc.dk = p.dk, rc.dv = p.dv, rc.l = p.l, rc.d = p.d, rc.lsel = p.lsel;
    rc.n = p.n, rc.w = p.w, rc.scale = p.softmax_scale();
    std::vector<double> q(static_cast<size_t>(sq.len) * p.HQ * p.dk), k(static_cast<size_t>(keys) * p.H * p.dk + 1),
        v(static_cast<size_t>(keys) * p.H * p.dv + 1), o(static_cast<size_t>(sq.len) * p.HQ * p.dv),
        l(static_cast<size_t>(sq.len) * p.HQ);
    for (int64_t t = 0; t < sq.len; ++t)
      for (int h = 0; h < p.HQ; ++h)
        for (int i = 0; i < p.dk; ++i)
          q[static_cast<size_t>((t * p.HQ + h) * p.dk + i)] =
              bits_to_float(qb[static_cast<size_t>((sq.first + t) * q_st + h * p.dk + i)], p.dtype);
    for (int64_t s = 0; s < keys; ++s) {
      const int64_t key = sq.key_first + s;
      for (int h = 0; h < p.H; ++h) {
        for (int i = 0; i < p.dk; ++i)
          k[static_cast<size_t>((s * p.H + h) * p.dk + i)] =
              bits_to_float(kb[static_cast<size_t>(key * kv_st + h * kv_sh + i)], p.dtype);
        for (int i = 0; i < p.dv; ++i)
          v[static_cast<size_t>((s * p.H + h) * p.dv + i)] =
              layout == Layout::strided
                  ? bits_to_float(kb[static_cast<size_t>(key * kv_st + h * kv_sh + p.dk + i)], p.dtype)
                  : bits_to_float(vb[static_cast<size_t>(key * v_st + h * v_sh + i)], p.dtype);
      }
    }
    if (br == Branch::window)
      ref::window_attention(rc, q.data(), k.data(), v.data(), o.data(), l.data());
    else
      ref::compressed_attention(rc, q.data(), k.data(), v.data(), o.data(), l.data());
    for (int64_t t = 0; t < sq.len; ++t) {
      const int64_t tok = sq.first + t;
      for (int h = 0; h < p.HQ; ++h) {
        const double g = gate == Gate::none ? 0.0 : bits_to_float(gb[static_cast<size_t>(tok * p.HQ + h)], p.dtype);
        for (int i = 0; i < p.dv; ++i) {
          const double ref_o = o[static_cast<size_t>((t * p.HQ + h) * p.dv + i)];
          eo.add(bits_to_float(ob[static_cast<size_t>(tok * o_st + h * o_sh + i)], p.dtype), ref_o);
          if (gate != Gate::none) {
            const size_t at = static_cast<size_t>((tok * p.HQ + h) * p.dv + i);
            const double before = gate == Gate::accumulate ? bits_to_float(out_before[at], p.dtype) : 0.0;
            eg.add(bits_to_float(gated[at], p.dtype), before + g * ref_o);
          }
        }
        eo.end_row(tok, h);
        for (int64_t i = p.dv; i < o_sh; ++i) r.pad_written += ob[static_cast<size_t>(tok * o_st + h * o_sh + i)] != 0xffff;
        if (gate != Gate::none) eg.end_row(tok, h);
        // An empty key set must give -inf exactly.
        el.add(lse[static_cast<size_t>(tok * p.HQ + h)], l[static_cast<size_t>(t * p.HQ + h)], tok, h);
      }
    }
  }
  return r;
}

void expect_ok(const Problem& p, const Outcome& r, const std::string& what) {
  INFO(what, " | ", p.describe(), " | o: ", r.o.describe(), " | lse: ", r.lse.describe(),
       r.gated ? " | out: " + r.out.describe() : std::string(), " | padding written ", r.pad_written);
  CHECK(r.pad_written == 0);
  CHECK(r.o.ok(tolerance(p.dtype)));
  CHECK(r.lse.ok(tolerance(p.dtype)));
  if (r.gated) CHECK(r.out.ok(tolerance(p.dtype)));
}


// check_attn_config with `cfg`; without one (and for the fast kernels), with the family's default config, after the
// same inputs have also gone through other_configs (checked here), so that every test of the matrix covers every
// implementation.
Outcome check_attn(Branch br, const Problem& p, uint64_t seed, const TileConfig* cfg = nullptr,
                   Layout layout = Layout::contiguous, const std::vector<int32_t>& cu = {},
                   bool use_reference_kernel = false, Gate gate = Gate::none) {
  if (cfg == nullptr && !use_reference_kernel) {
    for (const TileConfig& h : other_configs(find_family(br == Branch::window ? "win_fwd" : "cmp_fwd"), p,
                                             gpu().info().max_smem_optin))
      expect_ok(p, check_attn_config(br, p, seed, &h, layout, cu, false, gate), "beside [" + describe(h) + "]");
  }
  return check_attn_config(br, p, seed, cfg, layout, cu, use_reference_kernel, gate);
}

Outcome check_window(const Problem& p, uint64_t seed, const TileConfig* cfg = nullptr,
                     Layout layout = Layout::contiguous, const std::vector<int32_t>& cu = {},
                     bool use_reference_kernel = false) {
  return check_attn(Branch::window, p, seed, cfg, layout, cu, use_reference_kernel);
}

}  // namespace

TEST_CASE("win_fwd: every dtype, head dims and group size") {
  const int64_t lengths[] = {1, 15, 16, 17, 63, 64, 65, 511};
  uint64_t seed = 100;
  int i = 0;
  for (Dtype dt : {Dtype::bf16, Dtype::fp16})
    for (auto& dims : kDims)
      for (int G : kGroups) {
        const int64_t T = lengths[i++ % 8];
        const Problem p = window_problem(dt, dims[0], dims[1], G, G >= 16 ? 1 : 2, T, 48);
        expect_ok(p, check_window(p, seed += 7), "matrix");
      }
}

TEST_CASE("win_fwd: sequence lengths 1..8192 and window sizes") {
  uint64_t seed = 200;
  for (int64_t T : {1, 15, 16, 17, 63, 64, 65, 511, 1000, 4096, 8192}) {
    const Problem p = window_problem(Dtype::bf16, 128, 128, 4, 1, T, 512);
    expect_ok(p, check_window(p, seed += 3), "T sweep");
  }
  for (int w : {0, 1, 2, 7, 100, 513, 5000}) {
    const Problem p = window_problem(Dtype::fp16, 192, 128, 3, 2, 777, w);
    expect_ok(p, check_window(p, seed += 3), "w sweep");
  }
}

TEST_CASE("win_fwd: every valid tile config of the space") {
  uint64_t seed = 300;
  for (auto& dims : kDims) {
    const Problem p = window_problem(Dtype::bf16, dims[0], dims[1], 8, 1, 700, 200);
    for (const SpacePoint& pt : enumerate_space(find_family("win_fwd"), p, gpu().info().max_smem_optin)) {
      if (pt.rejected) continue;
      expect_ok(p, check_window(p, seed += 5, &pt.config), "config " + describe(pt.config));
    }
  }
}

TEST_CASE("win_fwd: batches, varlen with empty and short sequences, strided views") {
  Problem p = window_problem(Dtype::bf16, 128, 128, 16, 2, 300, 64, 3);
  expect_ok(p, check_window(p, 400), "batch 3");
  expect_ok(p, check_window(p, 401, nullptr, Layout::strided), "batch 3 strided");

  Problem v = window_problem(Dtype::fp16, 64, 64, 5, 2, 1000, 100);
  const std::vector<int32_t> cu = {0, 5, 5, 1, 300, 1000};  // deliberately not sorted: must be refused
  CHECK_THROWS_AS(check_window(v, 402, nullptr, Layout::contiguous, cu), UsageError);
  const std::vector<int32_t> cu_ok = {0, 5, 5, 6, 300, 1000};
  expect_ok(v, check_window(v, 403, nullptr, Layout::contiguous, cu_ok), "varlen");
  expect_ok(v, check_window(v, 404, nullptr, Layout::strided, cu_ok), "varlen strided");
}

TEST_CASE("win_fwd_ref (the GPU reference) agrees with the CPU reference") {
  uint64_t seed = 500;
  for (auto& dims : kDims) {
    const Problem p = window_problem(Dtype::bf16, dims[0], dims[1], 4, 2, 1500, 512);
    expect_ok(p, check_window(p, seed += 11, nullptr, Layout::contiguous, {}, true), "reference kernel");
  }
  const Problem f = window_problem(Dtype::fp16, 128, 128, 16, 1, 600, 100, 2);
  expect_ok(f, check_window(f, 520, nullptr, Layout::contiguous, {}, true), "reference kernel fp16");
}

const int kBlocking[][2] = {{32, 16}, {64, 64}, {32, 32}, {64, 32}};  // (l, d)

TEST_CASE("cmp_fwd: every dtype, head dims, group size and (l, d)") {
  const int64_t lengths[] = {1, 15, 16, 17, 31, 32, 33, 63, 64, 65, 511, 1000};
  uint64_t seed = 1100;
  int i = 0;
  for (Dtype dt : {Dtype::bf16, Dtype::fp16})
    for (auto& dims : kDims)
      for (int G : kGroups) {
        Problem p = window_problem(dt, dims[0], dims[1], G, G >= 16 ? 1 : 2, lengths[i % 12], 0);
        p.l = kBlocking[i % 4][0], p.d = kBlocking[i % 4][1];
        ++i;
        expect_ok(p, check_attn(Branch::compressed, p, seed += 7), "cmp matrix");
      }
}

TEST_CASE("cmp_fwd: tile configs, batches, varlen, strided views") {
  uint64_t seed = 1200;
  for (auto& dims : kDims) {
    Problem p = window_problem(Dtype::bf16, dims[0], dims[1], 8, 1, 2100, 0);
    p.l = 32, p.d = 16;  // 130 compressed blocks: several key tiles
    for (const SpacePoint& pt : enumerate_space(find_family("cmp_fwd"), p, gpu().info().max_smem_optin)) {
      if (pt.rejected) continue;
      expect_ok(p, check_attn(Branch::compressed, p, seed += 5, &pt.config), "cmp config " + describe(pt.config));
    }
  }
  Problem b = window_problem(Dtype::fp16, 128, 128, 16, 2, 700, 0, 3);
  b.l = 64, b.d = 32;
  expect_ok(b, check_attn(Branch::compressed, b, 1300), "cmp batch 3");
  expect_ok(b, check_attn(Branch::compressed, b, 1301, nullptr, Layout::strided), "cmp batch 3 strided");
  Problem v = window_problem(Dtype::bf16, 192, 128, 4, 2, 1500, 0);
  v.l = 32, v.d = 16;
  const std::vector<int32_t> cu = {0, 5, 5, 40, 300, 1500};  // sequences of 5, 0, 35, 260, 1200 tokens
  expect_ok(v, check_attn(Branch::compressed, v, 1302, nullptr, Layout::contiguous, cu), "cmp varlen");
  expect_ok(v, check_attn(Branch::compressed, v, 1303, nullptr, Layout::strided, cu), "cmp varlen strided");
  expect_ok(v, check_attn(Branch::compressed, v, 1304, nullptr, Layout::contiguous, cu, true), "cmp_fwd_ref varlen");
}

TEST_CASE("gated output: out = g * o and out += g * o, both branches") {
  uint64_t seed = 1400;
  for (Branch br : {Branch::window, Branch::compressed})
    for (Dtype dt : {Dtype::bf16, Dtype::fp16})
      for (Gate g : {Gate::write, Gate::accumulate}) {
        Problem p = window_problem(dt, 128, 128, 4, 2, 900, 100);
        p.l = 32, p.d = 16;
        expect_ok(p, check_attn(br, p, seed += 3, nullptr, Layout::contiguous, {}, false, g), "gated");
        const std::vector<int32_t> cu = {0, 100, 900};
        expect_ok(p, check_attn(br, p, seed += 3, nullptr, Layout::strided, cu, false, g), "gated varlen strided");
      }
}

// One output row of the window or compressed branch computed directly from NSA.md in float64, from host copies of
// q[t, h] and of the keys it sees (rows [first, first + keys) of k and v, KV head h / G): an oracle that shares no
// code with the kernels or with the reference kernels.
void direct_row(const Problem& p, const std::vector<uint16_t>& q, const std::vector<uint16_t>& k,
                const std::vector<uint16_t>& v, int64_t keys, int kh, std::vector<double>& o, double& lse) {
  std::vector<double> s(static_cast<size_t>(keys));
  double m = -INFINITY;
  for (int64_t j = 0; j < keys; ++j) {
    double dot = 0;
    for (int i = 0; i < p.dk; ++i)
      dot += static_cast<double>(bits_to_float(q[static_cast<size_t>(i)], p.dtype)) *
             bits_to_float(k[static_cast<size_t>((j * p.H + kh) * p.dk + i)], p.dtype);
    s[static_cast<size_t>(j)] = dot * p.softmax_scale();
    m = std::max(m, s[static_cast<size_t>(j)]);
  }
  o.assign(static_cast<size_t>(p.dv), 0.0);
  if (keys == 0) {
    lse = -INFINITY;
    return;
  }
  double sum = 0;
  for (int64_t j = 0; j < keys; ++j) {
    const double e = std::exp(s[static_cast<size_t>(j)] - m);
    sum += e;
    for (int i = 0; i < p.dv; ++i)
      o[static_cast<size_t>(i)] += e * bits_to_float(v[static_cast<size_t>((j * p.H + kh) * p.dv + i)], p.dtype);
  }
  for (auto& x : o) x /= sum;
  lse = m + std::log(sum);
}

// Long sequences: the window at T = 65536 (preset fla) and at B = 2, T = 131072 with dk = dv = 256, where q and o
// hold 2^32 elements (element offsets past 2^31, asserted); the compressed branch at T = 65536 (preset paper, 4095
// compressed blocks) and at B = 2, T = 131072, dk = dv = 256 (8191 blocks). Every output is compared with the
// simple GPU kernels, and sampled rows (both batches, block edges, t = T - 1, every head) with the float64 rows
// computed directly from NSA.md on the CPU, so the simple kernels are not the only oracle at these lengths.
TEST_CASE("win_fwd and cmp_fwd at T = 65536 and 131072 (B = 2, offsets past 2^31): all rows against the simple "
          "GPU kernels, sampled rows against float64") {
  gpu();
  struct Long {
    Branch br;
    const char* preset;
    int64_t B, T;
    int dim;  // 0: the preset's dk, dv
  };
  for (const Long& c : {Long{Branch::window, "fla", 1, 65536, 0}, Long{Branch::window, "fla", 2, 131072, 256},
                        Long{Branch::compressed, "paper", 1, 65536, 0},
                        Long{Branch::compressed, "paper", 2, 131072, 256}}) {
    Problem p = preset(c.preset);
    p.B = c.B, p.T = c.T;
    if (c.dim) p.dk = p.dv = c.dim;
    const Branch br = c.br;
    const int64_t tokens = p.B * p.T, keys_b = keys_of(br, p, p.T), keys = p.B * keys_b;
    const size_t o_n = static_cast<size_t>(tokens) * p.HQ * p.dv, l_n = static_cast<size_t>(tokens) * p.HQ;
    const size_t q_n = static_cast<size_t>(tokens) * p.HQ * p.dk;
    if (p.B == 2) CHECK(q_n - 1 > static_cast<size_t>(INT32_MAX));  // the largest element offset of q (and of o)
    DeviceBuffer q = random_device_tensor(q_n, p.dtype, 600 + c.T + c.dim);
    DeviceBuffer k = random_device_tensor(static_cast<size_t>(keys) * p.H * p.dk, p.dtype, 601 + c.T + c.dim);
    DeviceBuffer v = random_device_tensor(static_cast<size_t>(keys) * p.H * p.dv, p.dtype, 602 + c.T + c.dim);
    DeviceBuffer o1(o_n * 2), o2(o_n * 2), l1(l_n * 4), l2(l_n * 4);
    o1.fill_u16(0xffff), o2.fill_u16(0xffff), l1.fill_bytes(0xff), l2.fill_bytes(0xff);
    AttnFwdArgs a;
    a.q = contiguous(q.get(), p.T, p.HQ, p.dk), a.k = contiguous(k.get(), keys_b, p.H, p.dk);
    a.v = contiguous(v.get(), keys_b, p.H, p.dv), a.o = contiguous(o1.get(), p.T, p.HQ, p.dv);
    a.lse = static_cast<float*>(l1.get()), a.lse_stride_t = p.HQ, a.lse_stride_b = p.T * p.HQ;
    br == Branch::window ? win_fwd(p, a, nullptr) : cmp_fwd(p, a, nullptr);
    AttnFwdArgs b = a;
    b.o = contiguous(o2.get(), p.T, p.HQ, p.dv), b.lse = static_cast<float*>(l2.get());
    br == Branch::window ? win_fwd_reference(p, b, nullptr) : cmp_fwd_reference(p, b, nullptr);
    gpu().synchronize();
    std::vector<uint16_t> h1(o_n), h2(o_n);
    std::vector<float> hl1(l_n), hl2(l_n);
    o1.download(h1.data(), o_n * 2), o2.download(h2.data(), o_n * 2);
    l1.download(hl1.data(), l_n * 4), l2.download(hl2.data(), l_n * 4);
    test::plant_row(h1, o_n - static_cast<size_t>(p.dv), static_cast<size_t>(p.dv));
    test::plant_lse(hl1, l_n - static_cast<size_t>(p.HQ));

    // Every row against the simple kernel.
    ErrorMeter eo;
    LseMeter el;
    int64_t ref_non_finite = 0;
    for (int64_t row = 0; row < tokens * p.HQ; ++row) {
      for (int i = 0; i < p.dv; ++i) {
        const size_t at = static_cast<size_t>(row) * p.dv + i;
        const float ref = bits_to_float(h2[at], p.dtype);
        ref_non_finite += !std::isfinite(ref);
        eo.add(bits_to_float(h1[at], p.dtype), ref);
      }
      eo.end_row(row / p.HQ, static_cast<int>(row % p.HQ));
      el.add(hl1[static_cast<size_t>(row)], hl2[static_cast<size_t>(row)], row / p.HQ, static_cast<int>(row % p.HQ));
    }
    CHECK(ref_non_finite == 0);
    CHECK(eo.ref2 > 0);

    // Sampled rows against float64 rows computed from NSA.md.
    std::vector<int64_t> ts = {0, 1, 15, 16, 31, 32, 63, 64, 511, 512, 513, 4095, 4096, 65535, p.T - 2, p.T - 1};
    std::vector<std::pair<int64_t, int64_t>> samples;  // (b, t)
    for (int64_t bb = 0; bb < p.B; ++bb)
      for (int64_t t : ts)
        if (t < p.T) samples.push_back({bb, t});
    const int G = p.G();
    std::vector<std::future<std::pair<ErrorMeter, LseMeter>>> tasks;
    std::vector<std::vector<uint16_t>> qs, ks, vs;
    std::vector<int64_t> nkeys;
    for (auto [bb, t] : samples) {
      // The keys row (b, t) sees: window [max(0, t - w + 1), t]; compressed blocks 0 .. visible - 1.
      const int64_t first = br == Branch::window ? std::max<int64_t>(0, t - p.w + 1) : 0;
      const int64_t n = br == Branch::window ? t - first + 1 : ref::visible_cmp_blocks(t, p.l, p.d);
      nkeys.push_back(n);
      qs.emplace_back(static_cast<size_t>(p.HQ) * p.dk);
      q.download(qs.back().data(), qs.back().size() * 2, static_cast<size_t>((bb * p.T + t) * p.HQ) * p.dk * 2);
      ks.emplace_back(static_cast<size_t>(std::max<int64_t>(n, 1)) * p.H * p.dk);
      vs.emplace_back(static_cast<size_t>(std::max<int64_t>(n, 1)) * p.H * p.dv);
      if (n > 0) {
        k.download(ks.back().data(), static_cast<size_t>(n) * p.H * p.dk * 2,
                   static_cast<size_t>((bb * keys_b + first) * p.H) * p.dk * 2);
        v.download(vs.back().data(), static_cast<size_t>(n) * p.H * p.dv * 2,
                   static_cast<size_t>((bb * keys_b + first) * p.H) * p.dv * 2);
      }
    }
    for (size_t si = 0; si < samples.size(); ++si)
      tasks.push_back(std::async(std::launch::async, [&, si] {
        const auto [bb, t] = samples[si];
        ErrorMeter e;
        LseMeter l;
        std::vector<double> o;
        double lse = 0;
        for (int h = 0; h < p.HQ; ++h) {
          const std::vector<uint16_t> qh(qs[si].begin() + h * p.dk, qs[si].begin() + (h + 1) * p.dk);
          direct_row(p, qh, ks[si], vs[si], nkeys[si], h / G, o, lse);
          const int64_t row = (bb * p.T + t) * p.HQ + h;
          for (int i = 0; i < p.dv; ++i)
            e.add(bits_to_float(h1[static_cast<size_t>(row * p.dv + i)], p.dtype), o[static_cast<size_t>(i)]);
          e.end_row(bb * p.T + t, h);
          l.add(hl1[static_cast<size_t>(row)], lse, bb * p.T + t, h);
        }
        return std::pair{e, l};
      }));
    ErrorMeter so;
    LseMeter sl;
    for (auto& task : tasks) {
      const auto [e, l] = task.get();
      so.merge(e), sl.merge(l);
    }
    INFO(p.describe(), " | against the simple kernel: o ", eo.describe(), "; lse ", el.describe(),
         " | sampled rows against float64: o ", so.describe(), "; lse ", sl.describe());
    CHECK(eo.ok(tolerance(p.dtype)));
    CHECK(el.ok(tolerance(p.dtype)));
    CHECK(so.ok(tolerance(p.dtype)));
    CHECK(sl.ok(tolerance(p.dtype)));
    MESSAGE(fmt::format("{}: against the simple kernel: o {}; lse {} | {} sampled rows x {} heads against float64: "
                        "o {}; lse {}",
                        p.describe(), eo.describe(), el.describe(), samples.size(), p.HQ, so.describe(),
                        sl.describe()));
  }
}

// Issue 14: head dims off the 64 grid (multiples of 8 from 32 to 256, dk != dv), both branches, both dtypes, G in
// {1, 3, 8, 16, 32}, B = 2, strided views (the padding after each o head must stay poisoned), the gated epilogue,
// the simple reference kernels, and every valid tile config of two new pairs.
TEST_CASE("win_fwd and cmp_fwd: any head dim") {
  const int dims[][2] = {{32, 32}, {40, 72}, {80, 80}, {96, 64},  {96, 96},  {128, 64},
                         {160, 160}, {200, 120}, {256, 128}, {72, 40}, {248, 248}, {112, 208}};
  const int groups[] = {1, 3, 8, 16, 32};
  uint64_t seed = 1600;
  int i = 0;
  for (Branch br : {Branch::window, Branch::compressed})
    for (Dtype dt : {Dtype::bf16, Dtype::fp16})
      for (auto& d : dims) {
        const int G = groups[i % 5];
        const int w = br == Branch::window ? 100 : 0;
        Problem p = window_problem(dt, d[0], d[1], G, G >= 8 ? 1 : 2, 300 + 173 * (i % 5), w, 2);
        p.l = kBlocking[i % 4][0], p.d = kBlocking[i % 4][1];
        const Layout layout = i % 2 ? Layout::strided : Layout::contiguous;
        const Gate gate = i % 3 == 0 ? Gate::none : i % 3 == 1 ? Gate::write : Gate::accumulate;
        ++i;
        expect_ok(p, check_attn(br, p, seed += 7, nullptr, layout, {}, false, gate), "dims");
        if (i % 4 == 0)
          expect_ok(p, check_attn(br, p, seed += 7, nullptr, Layout::contiguous, {}, true), "dims, reference kernel");
      }
  for (auto [dk, dv] : {std::pair{80, 80}, std::pair{40, 120}})
    for (Branch br : {Branch::window, Branch::compressed}) {
      Problem p = window_problem(Dtype::bf16, dk, dv, 8, 1, 1100, br == Branch::window ? 300 : 0);
      p.l = 32, p.d = 16;
      for (const SpacePoint& pt :
           enumerate_space(find_family(br == Branch::window ? "win_fwd" : "cmp_fwd"), p, gpu().info().max_smem_optin))
        if (!pt.rejected)
          expect_ok(p, check_attn(br, p, seed += 5, &pt.config), "dims, config " + describe(pt.config));
    }
  // Varlen at a new pair.
  Problem v = window_problem(Dtype::fp16, 96, 64, 3, 2, 1000, 100);
  v.l = 32, v.d = 16;
  const std::vector<int32_t> cu = {0, 5, 5, 6, 300, 1000};
  for (Branch br : {Branch::window, Branch::compressed})
    expect_ok(v, check_attn(br, v, seed += 5, nullptr, Layout::strided, cu), "dims, varlen strided");
}
