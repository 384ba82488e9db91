// Fuzz test of the whole forward through the C ABI (runtime/nsajit_c.h): random valid small problems, each run by
// nsajit_forward and judged against the float64 reference (reference/reference.h) as test_forward.cpp judges the C++
// forward: NSA.md's tolerance per output through tests/gpu/check.h's meters (whole tensor, every row, lse), the
// selection by NSA.md's near-tie rule (ref::selection_matches), the selected branch re-derived on the GPU's own
// choice, the pooled compressed keys the reference uses made by the GPU (nsajit_mean_pool, the forward's own
// kernel), outputs poisoned before the call. NSAJIT_TEST_PLANT (check.h) plants its faults here too.
//
// What is drawn (every draw valid by Problem::validate, the branch families' checks and the C ABI's, so a refusal
// fails the test): dtype; G in {1, 2, 3, 4, 5, 8, 16} with H in 1..3; dk and dv independently any multiple of 8 in
// 32..256; each gate null (its branch off) with probability 1/4, never all three; the optional outputs (o_b, lse_b,
// idx/cnt); l' in {16, 32, 64, 128} with (l, d) one select supports (l - d <= l', d | l', l' | 8 d) and n in
// {8, 16, 32} when the selection or the selected branch runs, else any d in {4, .., 64} dividing l', l = 1..4 d and
// n in 3..32; w = 0 or 1..300; a custom scale sometimes; B in 1..3 and T in 1..600, or varlen (B = 1, up to 8
// sequences, empty and single-token ones included) given by the host offsets or by num_seqs and max_seqlen;
// contiguous, padded (head, token and batch strides above dense) or fused (q, k, v views of one projection)
// layouts; gates contiguous, padded or fused [.., HQ, 3]; separate k/v for the selected and window branches;
// given (random) k_cmp/v_cmp; a caller workspace. The reference's work bounds T (about 0.5 s of one core each).
//
// The problems are drawn from a fixed seed, printed (NSAJIT_TEST_SEED shifts it: tests/test_seed.h). Their kernels
// are compiled in parallel first; the GPU runs them one by one; the reference judges them on every core; then one
// line per problem is printed (the problem and the worst errors) and checked.
#include <doctest/doctest.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <functional>
#include <limits>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "cache/cubin_cache.h"
#include "codegen/codegen.h"
#include "codegen/family.h"
#include "reference/reference.h"
#include "runtime/device.h"
#include "runtime/jit.h"
#include "runtime/nsajit_c.h"
#include "tests/gpu/check.h"
#include "tests/test_seed.h"
#include "tuner/inputs.h"

using namespace nsajit;

namespace {

constexpr uint64_t kFuzzSeed = 20261201;
constexpr int kFuzzProblems = 40;
// The reference's work per problem (fuzz_work's units; about 3e9 a second on one core), which bounds T.
constexpr double kMaxReferenceWork = 1.5e9;

using test::ErrorMeter;
using test::LseMeter;

// splitmix64, so that the same seed draws the same problems with every standard library.
struct Rng {
  uint64_t state;
  uint64_t next() {
    uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  int64_t uniform(int64_t lo, int64_t hi) { return lo + static_cast<int64_t>(next() % static_cast<uint64_t>(hi - lo + 1)); }
  bool chance(double p) { return static_cast<double>(next() >> 11) * 0x1.0p-53 < p; }
  template <class T, size_t N>
  T pick(const T (&a)[N]) {
    return a[next() % N];
  }
};

// One device buffer of the call, as the test fills it: random normal values, gates (random values through a
// sigmoid), or poison for an output (NaN for 16-bit and fp32 outputs, 0x7f7f7f7f for int32).
enum class SlabKind { normal, gate, out16, out_lse, out_int };
struct Slab {
  SlabKind kind;
  size_t elems = 0;
  size_t elem_bytes() const { return kind == SlabKind::out_lse || kind == SlabKind::out_int ? 4 : 2; }
  bool input() const { return kind == SlabKind::normal || kind == SlabKind::gate; }
};

// Where a [B, rows, heads, dim] tensor lives in its slab: (b, t, h, i) is element offset + b sb + t st + h sh + i.
// Varlen tensors have B = 1 (sb is then never used by the call, nor here).
struct Place {
  int slab = -1;  // -1: not given
  int64_t offset = 0, sb = 0, st = 0, sh = 0;
  int64_t at(int64_t b, int64_t t, int64_t h) const { return offset + b * sb + t * st + h * sh; }
};

// One sequence of the call: tokens (b, row .. row + len), its compressed blocks (b, cmp_row .. cmp_row + Nc(len)).
struct Seq {
  int64_t b = 0, row = 0, len = 0, cmp_row = 0;
};

struct Case {
  int index = 0;
  uint64_t data_seed = 0;
  Problem p;                 // varlen: B = 1 and T = the total tokens
  std::vector<int32_t> cu;   // varlen offsets; empty: B sequences of T
  int64_t max_seqlen = 0;    // varlen given by num_seqs and max_seqlen (no host offsets); 0: the host offsets
  bool gate[3] = {};         // g_cmp, g_slc, g_win given
  bool out_o[3] = {}, out_lse[3] = {}, out_idx = false;  // the optional outputs o_b, lse_b, idx/cnt asked for
  bool companion = false;    // a second call asks for idx/cnt: the selected branch is judged on the GPU's choice
  bool workspace = false;    // the first call gets a caller workspace (poisoned)
  bool pooled = false;       // k_cmp/v_cmp not given: the mean pool of k/v (made by nsajit_mean_pool for the reference)
  bool sep_slc = false, sep_win = false;
  const char* layout = "";
  const char* gate_layout = "";
  int64_t gate_stride_h = 0;  // as passed (0 means 1)
  int64_t lse_sb = 0, lse_st = 0;
  std::vector<Slab> slabs;
  Place q, k, v, k_slc, v_slc, k_win, v_win, k_cmp, v_cmp, g[3];
  Place o, o2, o_b[3], lse[3], kc_pool, vc_pool;
  int idx = -1, cnt = -1, idx2 = -1, cnt2 = -1;  // int32 slabs, contiguous [B, T, H, n] and [B, T, H]
  std::vector<Seq> seqs;
  int64_t total_cmp = 0;
  double work = 0;

  bool varlen() const { return !cu.empty(); }
  bool runs_selection() const { return gate[1] || out_idx; }
  bool runs_slc() const { return gate[1] || out_o[1] || out_lse[1]; }
  bool runs_cmp() const { return gate[0] || runs_selection() || out_o[0] || out_lse[0]; }
  bool runs_win() const { return gate[2] || out_o[2] || out_lse[2]; }
  std::string describe() const;
};

int64_t ncmp(int64_t len, const Problem& p) { return len >= p.l ? (len - p.l) / p.d + 1 : 0; }

const char* const kBranch[3] = {"cmp", "slc", "win"};

std::string Case::describe() const {
  std::string s = p.describe();
  if (varlen()) {
    s += fmt::format(" varlen cu=[{}]", fmt::join(cu, ","));
    s += max_seqlen ? fmt::format(" (max_seqlen {}, no host offsets)", max_seqlen) : std::string(" (host offsets)");
  }
  std::string gates, outs;
  for (int j = 0; j < 3; ++j) {
    gates += gate[j] ? fmt::format(" {}", kBranch[j]) : std::string();
    outs += out_o[j] ? fmt::format(" o_{}", kBranch[j]) : std::string();
    outs += out_lse[j] ? fmt::format(" lse_{}", kBranch[j]) : std::string();
  }
  if (out_idx) outs += " idx";
  s += fmt::format(" | gates{} | outputs o{} | {} layout, {} gates", gates, outs, layout, gate_layout);
  if (sep_slc) s += ", own k_slc";
  if (sep_win) s += ", own k_win";
  s += pooled ? ", k_cmp pooled" : ", k_cmp given";
  if (workspace) s += ", workspace";
  if (companion) s += ", 2nd call for idx";
  return s;
}

// The reference's multiply-adds, about: per query head and token, the compressed keys, the selected ones twice (its
// own choice and the GPU's), the window.
double fuzz_work(const Case& c) {
  const Problem& p = c.p;
  double w = 0;
  for (const Seq& s : c.seqs) {
    const double L = static_cast<double>(s.len);
    w += L * p.HQ * (p.dk + p.dv) *
         (L / p.d + 2 * std::min(static_cast<double>(p.n) * p.lsel, L) + std::min(static_cast<double>(p.w), L));
  }
  return w;
}

void make_seqs(Case& c) {
  c.seqs.clear();
  c.total_cmp = 0;
  if (!c.varlen()) {
    for (int64_t b = 0; b < c.p.B; ++b) c.seqs.push_back({b, 0, c.p.T, 0});
    c.total_cmp = c.p.B * ncmp(c.p.T, c.p);
    return;
  }
  for (size_t i = 0; i + 1 < c.cu.size(); ++i) {
    const int64_t len = c.cu[i + 1] - c.cu[i];
    c.seqs.push_back({0, c.cu[i], len, c.total_cmp});
    c.total_cmp += ncmp(len, c.p);
  }
}

int add_slab(Case& c, SlabKind kind, size_t elems) {
  c.slabs.push_back({kind, std::max<size_t>(elems, 8)});
  return static_cast<int>(c.slabs.size()) - 1;
}

// The elements a view of B x rows x heads x dim spans from its slab's start.
int64_t extent(const Place& pl, int64_t B, int64_t rows, int heads, int dim) {
  if (B == 0 || rows == 0) return pl.offset;
  return pl.at(B - 1, rows - 1, heads - 1) + dim;
}

// A tensor of its own slab: dense, or (padded) with head, token and batch strides above dense and an offset, all
// multiples of 8 elements as the ABI requires.
Place own_slab(Case& c, Rng& r, SlabKind kind, bool padded, int64_t B, int64_t rows, int heads, int dim) {
  Place pl;
  pl.offset = padded ? 8 * r.uniform(0, 2) : 0;
  pl.sh = dim + (padded ? 8 * r.uniform(0, 2) : 0);
  pl.st = heads * pl.sh + (padded ? 8 * r.uniform(0, 3) : 0);
  pl.sb = rows * pl.st + (padded ? 8 * r.uniform(0, 4) : 0);
  pl.slab = add_slab(c, kind, static_cast<size_t>(extent(pl, B, rows, heads, dim)));
  return pl;
}

Case draw_case(uint64_t seed, int index) {
  Rng r{seed + static_cast<uint64_t>(index) * 0xD1B54A32D192ED03ull};
  Case c;
  c.index = index;
  c.data_seed = r.next();
  Problem& p = c.p;
  p.dtype = r.chance(0.5) ? Dtype::bf16 : Dtype::fp16;
  const int groups[] = {1, 2, 3, 4, 5, 8, 16};
  const int G = r.pick(groups);
  p.H = static_cast<int>(r.uniform(1, 3));
  p.HQ = G * p.H;
  p.dk = 8 * static_cast<int>(r.uniform(4, 32));
  p.dv = 8 * static_cast<int>(r.uniform(4, 32));
  p.scale = r.chance(0.15) ? (0.5 + static_cast<double>(r.uniform(0, 100)) / 100) / std::sqrt(p.dk) : 0.0;
  do {
    for (bool& g : c.gate) g = r.chance(0.75);
  } while (!c.gate[0] && !c.gate[1] && !c.gate[2]);  // all three null is refused
  if (r.chance(0.5)) {
    for (int j = 0; j < 3; ++j) c.out_o[j] = r.chance(0.5), c.out_lse[j] = r.chance(0.5);
    c.out_idx = r.chance(0.5);
  }
  // The blocking: what select supports when the selection or the selected branch runs (slc_fwd's own rules, l' in
  // {16, 32, 64, 128} and n in {8, 16, 32}, are within them), else anything Problem::validate takes.
  const int lsels[] = {16, 32, 64, 128};
  if (c.runs_selection() || c.runs_slc()) {
    const int shapes[][2] = {{32, 16}, {64, 64}, {32, 32}, {64, 32}};
    do {
      p.lsel = r.pick(lsels);
      const auto& s = shapes[r.uniform(0, 3)];
      p.l = s[0], p.d = s[1];
    } while (!(p.l - p.d <= p.lsel && p.lsel % p.d == 0 && (8 * p.d) % p.lsel == 0));
    const int topn[] = {8, 16, 32};
    p.n = r.pick(topn);
  } else {
    p.lsel = r.pick(lsels);
    const int strides[] = {4, 8, 16, 32, 64};
    do p.d = r.pick(strides);
    while (p.lsel % p.d != 0);
    p.l = p.d * static_cast<int>(r.uniform(1, 4));
    p.n = static_cast<int>(r.uniform(3, 32));
  }
  p.w = r.chance(0.2) ? 0 : static_cast<int>(r.uniform(1, 300));

  // The batch: B sequences of T, or varlen (empty and single-token sequences among longer ones).
  std::vector<int64_t> lens;
  if (r.chance(0.35)) {
    const int64_t num = r.uniform(1, 8);
    for (int64_t i = 0; i < num; ++i) {
      const int64_t kind = r.uniform(0, 9);
      lens.push_back(kind == 0 ? 0 : kind <= 2 ? 1 : r.uniform(2, 600 / num));
    }
    if (std::all_of(lens.begin(), lens.end(), [](int64_t x) { return x == 0; }))
      lens[static_cast<size_t>(r.uniform(0, num - 1))] = r.uniform(1, 600 / num);
    p.B = 1;
  } else {
    p.B = r.uniform(1, 3);
    p.T = r.chance(0.15) ? r.uniform(1, p.l) : r.uniform(1, 600);
  }
  auto set_batch = [&] {
    if (lens.empty()) return make_seqs(c);
    c.cu.assign(1, 0);
    for (int64_t len : lens) c.cu.push_back(c.cu.back() + static_cast<int32_t>(len));
    p.T = c.cu.back();
    make_seqs(c);
  };
  set_batch();
  // Within the reference's budget: fewer batch entries first, then shorter sequences.
  while ((c.work = fuzz_work(c)) > kMaxReferenceWork) {
    if (lens.empty() && p.B > 1)
      --p.B;
    else if (lens.empty())
      p.T = std::max<int64_t>(1, p.T * 3 / 4);
    else
      for (int64_t& len : lens) len = len > 1 ? std::max<int64_t>(1, len * 3 / 4) : len;
    set_batch();
  }
  if (c.varlen() && r.chance(0.35)) {
    int64_t longest = 0;
    for (const Seq& s : c.seqs) longest = std::max(longest, s.len);
    c.max_seqlen = longest + (r.chance(0.5) ? 0 : r.uniform(1, 100));
  }

  // The layout of the tensors.
  const int64_t B = p.B, T = p.T;
  const int64_t layout = r.uniform(0, 9);
  const bool padded = layout >= 5;
  c.layout = layout < 5 ? "contiguous" : layout < 8 ? "padded" : "fused qkv";
  if (layout >= 8) {
    // One projection [B, T, HQ dk + H dk + H dv (+ pad)]; k and v either head after head or interleaved per head.
    const bool interleaved = r.chance(0.5);
    const int64_t st = static_cast<int64_t>(p.HQ) * p.dk + static_cast<int64_t>(p.H) * (p.dk + p.dv) + 8 * r.uniform(0, 2);
    const int64_t sb = T * st + 8 * r.uniform(0, 2);
    const int64_t kv = static_cast<int64_t>(p.HQ) * p.dk;
    c.q = {0, 0, sb, st, p.dk};
    c.k = interleaved ? Place{0, kv, sb, st, p.dk + p.dv} : Place{0, kv, sb, st, p.dk};
    c.v = interleaved ? Place{0, kv + p.dk, sb, st, p.dk + p.dv} : Place{0, kv + static_cast<int64_t>(p.H) * p.dk, sb, st, p.dv};
    c.layout = interleaved ? "fused qkv (k, v interleaved per head)" : "fused qkv";
    const int slab = add_slab(c, SlabKind::normal, static_cast<size_t>(B * sb));
    c.q.slab = c.k.slab = c.v.slab = slab;
  } else {
    c.q = own_slab(c, r, SlabKind::normal, padded, B, T, p.HQ, p.dk);
    c.k = own_slab(c, r, SlabKind::normal, padded, B, T, p.H, p.dk);
    c.v = own_slab(c, r, SlabKind::normal, padded, B, T, p.H, p.dv);
  }
  c.sep_slc = r.chance(0.2), c.sep_win = r.chance(0.2);
  if (c.sep_slc) {
    c.k_slc = own_slab(c, r, SlabKind::normal, padded, B, T, p.H, p.dk);
    c.v_slc = own_slab(c, r, SlabKind::normal, padded, B, T, p.H, p.dv);
  }
  if (c.sep_win) {
    c.k_win = own_slab(c, r, SlabKind::normal, padded, B, T, p.H, p.dk);
    c.v_win = own_slab(c, r, SlabKind::normal, padded, B, T, p.H, p.dv);
  }
  // k_cmp/v_cmp [B, Nc, H, dim], or varlen every sequence's blocks one after another.
  const int64_t cmp_rows = c.varlen() ? c.total_cmp : ncmp(T, p);
  const int64_t cmp_b = c.varlen() ? 1 : B;
  c.pooled = !r.chance(0.25);
  if (c.pooled) {
    if (c.total_cmp > 0) {
      c.kc_pool = own_slab(c, r, SlabKind::out16, false, cmp_b, cmp_rows, p.H, p.dk);
      c.vc_pool = own_slab(c, r, SlabKind::out16, false, cmp_b, cmp_rows, p.H, p.dv);
    }
  } else {
    c.k_cmp = own_slab(c, r, SlabKind::normal, padded, cmp_b, cmp_rows, p.H, p.dk);
    c.v_cmp = own_slab(c, r, SlabKind::normal, padded, cmp_b, cmp_rows, p.H, p.dv);
  }
  // Gates: three [B, T, HQ] (contiguous, head stride given as 0 or 1; or padded token and batch strides), or views
  // of one [B, T, HQ, 3] projection (head stride 3). All three share their strides, as the ABI has them.
  const int64_t gl = r.uniform(0, 2);
  if (gl == 2) {
    c.gate_layout = "fused [.., HQ, 3]";
    c.gate_stride_h = 3;
    const int64_t st = 3 * p.HQ + r.uniform(0, 4), sb = T * st + r.uniform(0, 4);
    const int slab = add_slab(c, SlabKind::gate, static_cast<size_t>(B * sb));
    for (int j = 0; j < 3; ++j) c.g[j] = {slab, j, sb, st, 3};
  } else {
    c.gate_layout = gl == 0 ? "contiguous" : "padded";
    c.gate_stride_h = gl == 0 ? r.uniform(0, 1) : 1;
    const int64_t st = p.HQ + (gl == 1 ? r.uniform(1, 5) : 0), sb = T * st + (gl == 1 ? r.uniform(0, 9) : 0);
    for (int j = 0; j < 3; ++j) {
      c.g[j] = {-1, 0, sb, st, 1};
      if (c.gate[j]) c.g[j].slab = add_slab(c, SlabKind::gate, static_cast<size_t>(extent(c.g[j], B, T, p.HQ, 1)));
    }
  }
  // Outputs, poisoned: o (padded with the inputs), the optional ones, lse [B, T, HQ] with shared strides.
  c.o = own_slab(c, r, SlabKind::out16, padded, B, T, p.HQ, p.dv);
  for (int j = 0; j < 3; ++j)
    if (c.out_o[j]) c.o_b[j] = own_slab(c, r, SlabKind::out16, padded, B, T, p.HQ, p.dv);
  c.lse_st = p.HQ + (padded ? r.uniform(0, 3) : 0);
  c.lse_sb = T * c.lse_st + (padded ? r.uniform(0, 5) : 0);
  for (int j = 0; j < 3; ++j)
    if (c.out_lse[j]) {
      c.lse[j] = {-1, 0, c.lse_sb, c.lse_st, 1};
      c.lse[j].slab = add_slab(c, SlabKind::out_lse, static_cast<size_t>(extent(c.lse[j], B, T, p.HQ, 1)));
    }
  const size_t rows = static_cast<size_t>(B * T) * static_cast<size_t>(p.H);
  if (c.out_idx) c.idx = add_slab(c, SlabKind::out_int, rows * p.n), c.cnt = add_slab(c, SlabKind::out_int, rows);
  // The selected branch is judged on the GPU's own choice: a second call asks for idx/cnt when the first does not.
  c.companion = c.runs_slc() && !c.out_idx;
  if (c.companion) {
    c.o2 = own_slab(c, r, SlabKind::out16, padded && r.chance(0.5), B, T, p.HQ, p.dv);
    c.idx2 = add_slab(c, SlabKind::out_int, rows * p.n), c.cnt2 = add_slab(c, SlabKind::out_int, rows);
  }
  c.workspace = r.chance(0.4);
  return c;
}

nsajit_problem c_problem(const Problem& p) {
  nsajit_problem c{};
  c.dtype = p.dtype == Dtype::bf16 ? NSAJIT_BF16 : NSAJIT_FP16;
  c.B = p.B, c.T = p.T, c.HQ = p.HQ, c.H = p.H, c.dk = p.dk, c.dv = p.dv;
  c.l = p.l, c.d = p.d, c.lsel = p.lsel, c.n = p.n, c.w = p.w, c.scale = p.scale;
  return c;
}

// The slabs' device addresses: base(slab).
using Bases = std::function<char*(int)>;

nsajit_tensor c_tensor(const Case& c, const Bases& base, const Place& pl) {
  if (pl.slab < 0) return {};
  return {base(pl.slab) + pl.offset * static_cast<int64_t>(c.slabs[static_cast<size_t>(pl.slab)].elem_bytes()), pl.sb,
          pl.st, pl.sh};
}

// The tensors of the first call, or (second) of the call that asks for idx/cnt into their own slabs and no other
// optional output.
nsajit_forward_tensors c_tensors(const Case& c, const Bases& base, bool second, const int32_t* cu_device) {
  nsajit_forward_tensors t{};
  t.q = c_tensor(c, base, c.q), t.k = c_tensor(c, base, c.k), t.v = c_tensor(c, base, c.v);
  t.k_slc = c_tensor(c, base, c.k_slc), t.v_slc = c_tensor(c, base, c.v_slc);
  t.k_win = c_tensor(c, base, c.k_win), t.v_win = c_tensor(c, base, c.v_win);
  t.k_cmp = c_tensor(c, base, c.k_cmp), t.v_cmp = c_tensor(c, base, c.v_cmp);
  const void* gates[3];
  for (int j = 0; j < 3; ++j) gates[j] = c.gate[j] ? c_tensor(c, base, c.g[j]).data : nullptr;
  t.g_cmp = gates[0], t.g_slc = gates[1], t.g_win = gates[2];
  t.gate_stride_b = c.g[0].sb, t.gate_stride_t = c.g[0].st, t.gate_stride_h = c.gate_stride_h;
  t.lse_stride_b = c.lse_sb, t.lse_stride_t = c.lse_st;
  auto i32 = [&](int slab) { return slab < 0 ? nullptr : reinterpret_cast<int32_t*>(base(slab)); };
  if (second) {
    t.o = c_tensor(c, base, c.o2);
    t.idx = i32(c.idx2), t.cnt = i32(c.cnt2);
  } else {
    t.o = c_tensor(c, base, c.o);
    t.o_cmp = c_tensor(c, base, c.o_b[0]), t.o_slc = c_tensor(c, base, c.o_b[1]), t.o_win = c_tensor(c, base, c.o_b[2]);
    float* lse[3];
    for (int j = 0; j < 3; ++j) lse[j] = c.lse[j].slab < 0 ? nullptr : reinterpret_cast<float*>(base(c.lse[j].slab));
    t.lse_cmp = lse[0], t.lse_slc = lse[1], t.lse_win = lse[2];
    t.idx = i32(c.idx), t.cnt = i32(c.cnt);
  }
  if (c.varlen()) {
    t.cu_seqlens = cu_device;
    t.num_seqs = static_cast<int64_t>(c.cu.size()) - 1;
    if (c.max_seqlen > 0)
      t.max_seqlen = c.max_seqlen;
    else
      t.cu_seqlens_host = c.cu.data();
  }
  return t;
}

// What the GPU gave: every slab's host image (inputs as uploaded, outputs as downloaded), and the calls' codes.
struct Run {
  int rc = NSAJIT_OK, rc2 = NSAJIT_OK, rc_pool = NSAJIT_OK, rc_ws = NSAJIT_OK;
  std::string error;  // the first failed call's nsajit_last_error(), or an exception's message
  bool fatal = false;  // an exception (the context may be unusable: later problems are not run)
  bool ran = false;
  std::vector<std::vector<uint16_t>> h16;
  std::vector<std::vector<float>> h32;
  std::vector<std::vector<int32_t>> hi;
  bool judgeable() const {
    return ran && !fatal && rc == NSAJIT_OK && rc2 == NSAJIT_OK && rc_pool == NSAJIT_OK && rc_ws == NSAJIT_OK;
  }
};

// The inputs' host images (deterministic in the case's seed).
void make_inputs(const Case& c, Run& r) {
  r.h16.assign(c.slabs.size(), {});
  r.h32.assign(c.slabs.size(), {});
  r.hi.assign(c.slabs.size(), {});
  const Dtype dt = c.p.dtype;
  for (size_t i = 0; i < c.slabs.size(); ++i) {
    const Slab& s = c.slabs[i];
    if (!s.input()) continue;
    r.h16[i] = random_normal_bits(s.elems, dt, c.data_seed + 7919 * i);
    if (s.kind == SlabKind::gate)
      for (uint16_t& b : r.h16[i]) b = float_to_bits(1.f / (1.f + std::exp(-bits_to_float(b, dt))), dt);
  }
}

Context& fuzz_gpu() {
  static Context ctx(0);
  return ctx;
}

void run_case(const Case& c, Run& r) {
  fuzz_gpu();
  make_inputs(c, r);
  std::vector<DeviceBuffer> dev;
  for (size_t i = 0; i < c.slabs.size(); ++i) {
    const Slab& s = c.slabs[i];
    dev.emplace_back(s.elems * s.elem_bytes());
    if (s.input())
      dev.back().upload(r.h16[i].data(), s.elems * 2);
    else if (s.kind == SlabKind::out16)
      dev.back().fill_u16(0xffff);  // NaN in bf16 and fp16
    else
      dev.back().fill_bytes(s.kind == SlabKind::out_lse ? 0xff : 0x7f);
  }
  const Bases base = [&](int slab) { return static_cast<char*>(dev[static_cast<size_t>(slab)].get()); };
  DeviceBuffer dcu(std::max<size_t>(c.cu.size(), 1) * 4);
  if (c.varlen()) dcu.upload(c.cu.data(), c.cu.size() * 4);
  const int32_t* cu_device = c.varlen() ? static_cast<const int32_t*>(dcu.get()) : nullptr;
  const nsajit_problem cp = c_problem(c.p);
  auto failed = [&](int rc, const char* call) {
    if (rc != NSAJIT_OK && r.error.empty()) r.error = fmt::format("{}: {}", call, nsajit_last_error());
    return rc;
  };

  nsajit_forward_tensors t = c_tensors(c, base, false, cu_device);
  DeviceBuffer ws;
  if (c.workspace) {
    size_t bytes = 0;
    r.rc_ws = failed(nsajit_forward_workspace_size(&cp, &bytes), "nsajit_forward_workspace_size");
    if (r.rc_ws != NSAJIT_OK) return;
    ws = DeviceBuffer(std::max<size_t>(bytes, 256));
    ws.fill_bytes(0xff);
    t.workspace = ws.get(), t.workspace_bytes = bytes;
  }
  r.ran = true;
  r.rc = failed(nsajit_forward(&cp, &t, nullptr), "nsajit_forward");
  if (c.companion) {
    const nsajit_forward_tensors t2 = c_tensors(c, base, true, cu_device);
    r.rc2 = failed(nsajit_forward(&cp, &t2, nullptr), "nsajit_forward (2nd call, for idx/cnt)");
  }
  // The compressed keys the reference takes: the forward's own pool kernel, through the C ABI.
  if (c.pooled && c.total_cmp > 0) {
    const int64_t num_seqs = c.varlen() ? static_cast<int64_t>(c.cu.size()) - 1 : 0;
    const int32_t* host = c.varlen() ? c.cu.data() : nullptr;
    r.rc_pool = failed(nsajit_mean_pool(&cp, c_tensor(c, base, c.k), c_tensor(c, base, c.kc_pool), c.p.dk, cu_device,
                                        host, num_seqs, nullptr),
                       "nsajit_mean_pool (k)");
    if (r.rc_pool == NSAJIT_OK)
      r.rc_pool = failed(nsajit_mean_pool(&cp, c_tensor(c, base, c.v), c_tensor(c, base, c.vc_pool), c.p.dv,
                                          cu_device, host, num_seqs, nullptr),
                         "nsajit_mean_pool (v)");
  }
  fuzz_gpu().synchronize();
  for (size_t i = 0; i < c.slabs.size(); ++i) {
    const Slab& s = c.slabs[i];
    if (s.kind == SlabKind::out16) {
      r.h16[i].resize(s.elems);
      dev[i].download(r.h16[i].data(), s.elems * 2);
    } else if (s.kind == SlabKind::out_lse) {
      r.h32[i].resize(s.elems);
      dev[i].download(r.h32[i].data(), s.elems * 4);
    } else if (s.kind == SlabKind::out_int) {
      r.hi[i].resize(s.elems);
      dev[i].download(r.hi[i].data(), s.elems * 4);
    }
  }
  // Planted faults (NSAJIT_TEST_PLANT): o's row of the last token's last head, the first requested lse.
  const int64_t last_b = c.varlen() ? 0 : c.p.B - 1;
  test::plant_row(r.h16[static_cast<size_t>(c.o.slab)], static_cast<size_t>(c.o.at(last_b, c.p.T - 1, c.p.HQ - 1)),
                  static_cast<size_t>(c.p.dv));
  for (const Place& l : c.lse)
    if (l.slab >= 0) {
      test::plant_lse(r.h32[static_cast<size_t>(l.slab)], 0);
      break;
    }
}

// The kernels the problems' calls will load, compiled in parallel into the CUBIN cache first (as the runtime asks
// for them with NSAJIT_DB=off: each family's default config for the problem the runtime builds it for). Only a
// speed-up: a kernel missed here is compiled by the call itself.
void prewarm(const std::vector<Case>& cases) {
  std::vector<KernelSpec> specs;
  std::set<size_t> seen;  // the sources' hashes (the CUBIN cache's key is the source's)
  auto add = [&](const char* name, const Problem& p, const TileConfig& config) {
    const KernelSpec spec{&find_family(name), p, config, "sm_90a"};
    if (seen.insert(std::hash<std::string>()(generate_source(spec))).second) specs.push_back(spec);
  };
  for (const Case& c : cases) {
    try {
      const Problem& p = c.p;
      Problem launch = p;  // B and T as the grids see them
      if (c.varlen()) {
        int64_t longest = 0;
        for (const Seq& s : c.seqs) longest = std::max(longest, s.len);
        launch.B = static_cast<int64_t>(c.cu.size()) - 1;
        launch.T = c.max_seqlen ? std::min(c.max_seqlen, p.T) : std::max<int64_t>(longest, 1);
      }
      const bool selection = c.runs_selection() || c.companion;
      const bool cmp = c.runs_cmp() || c.companion;
      if (c.pooled && c.total_cmp > 0)
        for (int dim : {p.dk, p.dv}) {
          Problem pool = launch;
          pool.dk = dim;
          add("pool", pool, find_family("pool").default_config(pool));
        }
      if (cmp) add("cmp_fwd", p, find_family("cmp_fwd").default_config(p));
      if (c.runs_win()) add("win_fwd", p, find_family("win_fwd").default_config(p));
      if (selection) add("select", launch, find_family("select").default_config(launch));
      if (c.runs_slc()) {
        const KernelFamily& f = find_family("slc_fwd");
        for (OverlapBucket b : kAllOverlapBuckets) add("slc_fwd", p, f.bucket_default_config(launch, b));
        add("slc_plan", p, {});
      }
    } catch (const std::exception&) {
      // A problem the families refuse: its call says so.
    }
  }
  const auto t0 = std::chrono::steady_clock::now();
  const auto outcomes = jit_compile_all(specs, CubinCache(CubinCache::default_dir()), 0);
  size_t failed = 0;
  for (const auto& o : outcomes) failed += !o.result;
  fmt::print("fuzz: prewarmed {} kernels in {:.1f} s ({} failed to compile; their calls will say why)\n", specs.size(),
             std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), failed);
  std::fflush(stdout);
}

// How one problem's outputs compare with the reference.
struct Verdict {
  std::vector<std::pair<std::string, ErrorMeter>> outs;
  std::vector<std::pair<std::string, LseMeter>> lses;
  int selection_mismatches = 0;
  std::string first_mismatch;
  int64_t outside_writes = 0;  // output elements outside the views that lost their poison
  std::string error;           // the reference or the judge threw
  std::string summary() const {
    std::string s;
    for (const auto& [name, m] : outs) s += fmt::format("{} {:.1e}/{:.1e}  ", name, m.rel(), m.worst_row);
    for (const auto& [name, m] : lses) s += fmt::format("{} {:.1e}  ", name, m.worst_abs);
    if (selection_mismatches) s += fmt::format("selection mismatches {}  ", selection_mismatches);
    if (outside_writes) s += fmt::format("writes outside the views {}  ", outside_writes);
    if (!error.empty()) s += "error: " + error;
    return s;
  }
};

// [rows, heads, dim] of a 16-bit tensor as float64, from (b, row0).
std::vector<double> gather(const std::vector<uint16_t>& img, const Place& pl, Dtype dt, int64_t b, int64_t row0,
                           int64_t rows, int heads, int dim) {
  std::vector<double> out(static_cast<size_t>(rows * heads * dim));
  for (int64_t t = 0; t < rows; ++t)
    for (int h = 0; h < heads; ++h)
      for (int i = 0; i < dim; ++i)
        out[static_cast<size_t>((t * heads + h) * dim + i)] = bits_to_float(img[static_cast<size_t>(pl.at(b, row0 + t, h) + i)], dt);
  return out;
}

ref::Config ref_config(const Problem& p, int64_t len) {
  ref::Config rc;
  rc.T = len, rc.HQ = p.HQ, rc.H = p.H, rc.dk = p.dk, rc.dv = p.dv, rc.l = p.l, rc.d = p.d, rc.lsel = p.lsel;
  rc.n = p.n, rc.w = p.w, rc.scale = p.softmax_scale();
  return rc;
}

Verdict judge_case(const Case& c, const Run& r) {
  Verdict v;
  const Problem& p = c.p;
  const Dtype dt = p.dtype;
  const int HQ = p.HQ, H = p.H, dk = p.dk, dv = p.dv, n = p.n;
  const int64_t B = p.B, T = p.T;
  // The meters, in the order they are printed.
  enum { kO, kO2, kOcmp, kOslc, kOwin, kKc, kVc, kMeters };
  int at[kMeters];
  auto meter = [&](int which, bool on, std::string name) {
    at[which] = -1;
    if (!on) return;
    at[which] = static_cast<int>(v.outs.size());
    v.outs.push_back({std::move(name), ErrorMeter()});
  };
  meter(kO, true, "o");
  meter(kO2, c.companion, "o(2nd)");
  for (int j = 0; j < 3; ++j) meter(kOcmp + j, c.out_o[j], fmt::format("o_{}", kBranch[j]));
  meter(kKc, c.pooled && c.total_cmp > 0, "k_cmp(pool)");
  meter(kVc, c.pooled && c.total_cmp > 0, "v_cmp(pool)");
  int lse_at[3];
  for (int j = 0; j < 3; ++j) {
    lse_at[j] = c.out_lse[j] ? static_cast<int>(v.lses.size()) : -1;
    if (c.out_lse[j]) v.lses.push_back({fmt::format("lse_{}", kBranch[j]), LseMeter()});
  }
  auto M = [&](int which) -> ErrorMeter* { return at[which] < 0 ? nullptr : &v.outs[static_cast<size_t>(at[which])].second; };
  auto img = [&](const Place& pl) -> const std::vector<uint16_t>& { return r.h16[static_cast<size_t>(pl.slab)]; };

  try {
    for (const Seq& s : c.seqs) {
      if (s.len == 0) continue;
      const int64_t nc = ncmp(s.len, p);
      const ref::Config rc = ref_config(p, s.len);
      const auto qd = gather(img(c.q), c.q, dt, s.b, s.row, s.len, HQ, dk);
      const auto kd = gather(img(c.k), c.k, dt, s.b, s.row, s.len, H, dk);
      const auto vd = gather(img(c.v), c.v, dt, s.b, s.row, s.len, H, dv);
      std::vector<double> ksd, vsd, kwd, vwd, kcd, vcd, gd[3];
      if (c.sep_slc)
        ksd = gather(img(c.k_slc), c.k_slc, dt, s.b, s.row, s.len, H, dk),
        vsd = gather(img(c.v_slc), c.v_slc, dt, s.b, s.row, s.len, H, dv);
      if (c.sep_win)
        kwd = gather(img(c.k_win), c.k_win, dt, s.b, s.row, s.len, H, dk),
        vwd = gather(img(c.v_win), c.v_win, dt, s.b, s.row, s.len, H, dv);
      // The compressed keys: the caller's, or the GPU's mean pool (so the reference sees the same rounded values).
      const Place& kcp = c.pooled ? c.kc_pool : c.k_cmp;
      const Place& vcp = c.pooled ? c.vc_pool : c.v_cmp;
      if (nc > 0)
        kcd = gather(img(kcp), kcp, dt, s.b, s.cmp_row, nc, H, dk), vcd = gather(img(vcp), vcp, dt, s.b, s.cmp_row, nc, H, dv);
      for (int j = 0; j < 3; ++j)
        if (c.gate[j]) gd[j] = gather(img(c.g[j]), c.g[j], dt, s.b, s.row, s.len, HQ, 1);
      ref::Inputs in;
      in.q = qd.data(), in.k = kd.data(), in.v = vd.data();
      if (c.sep_slc) in.k_slc = ksd.data(), in.v_slc = vsd.data();
      if (c.sep_win) in.k_win = kwd.data(), in.v_win = vwd.data();
      if (nc > 0) in.k_cmp = kcd.data(), in.v_cmp = vcd.data();
      in.g_cmp = c.gate[0] ? gd[0].data() : nullptr;
      in.g_slc = c.gate[1] ? gd[1].data() : nullptr;
      in.g_win = c.gate[2] ? gd[2].data() : nullptr;
      const ref::Outputs R = ref::forward(rc, in);

      // The GPU's mean pool against the float64 one.
      if (c.pooled && nc > 0) {
        std::vector<double> kc_ref(kcd.size()), vc_ref(vcd.size());
        ref::mean_pool(rc, kd.data(), dk, kc_ref.data());
        ref::mean_pool(rc, vd.data(), dv, vc_ref.data());
        for (int64_t i = 0; i < nc; ++i)
          for (int h = 0; h < H; ++h) {
            for (int e = 0; e < dk; ++e) {
              const size_t x = static_cast<size_t>((i * H + h) * dk + e);
              M(kKc)->add(kcd[x], kc_ref[x]);
            }
            for (int e = 0; e < dv; ++e) {
              const size_t x = static_cast<size_t>((i * H + h) * dv + e);
              M(kVc)->add(vcd[x], vc_ref[x]);
            }
            M(kKc)->end_row(s.b * ncmp(T, p) + s.cmp_row + i, h);
            M(kVc)->end_row(s.b * ncmp(T, p) + s.cmp_row + i, h);
          }
      }

      // The selection, by the near-tie rule, of every call that returned one; the selected branch on the GPU's.
      const int64_t first_row = s.b * T + s.row;  // idx [B, T, H, n] and cnt [B, T, H] are contiguous
      const int32_t *gi = nullptr, *gc = nullptr;
      bool selection_ok = true;
      for (int call = 0; call < 2; ++call) {
        const int idx_slab = call == 0 ? c.idx : c.idx2, cnt_slab = call == 0 ? c.cnt : c.cnt2;
        if (idx_slab < 0) continue;
        const int32_t* i0 = r.hi[static_cast<size_t>(idx_slab)].data() + first_row * H * n;
        const int32_t* c0 = r.hi[static_cast<size_t>(cnt_slab)].data() + first_row * H;
        std::string why;
        if (!ref::selection_matches(R.sel, i0, c0, rc, 1e-3, &why)) {
          if (v.selection_mismatches++ == 0)
            v.first_mismatch = fmt::format("{} call, sequence at (b {}, t {}): {}", call == 0 ? "1st" : "2nd", s.b,
                                           s.row, why);
          selection_ok = false;
        }
        if (gi == nullptr) gi = i0, gc = c0;
      }
      if (!selection_ok) continue;
      std::vector<double> o_slc = R.o_slc, lse_slc = R.lse_slc;
      if (gi != nullptr)
        ref::selected_attention(rc, qd.data(), c.sep_slc ? ksd.data() : kd.data(), c.sep_slc ? vsd.data() : vd.data(),
                                gi, gc, o_slc.data(), lse_slc.data());
      const std::vector<double>* branch_o[3] = {&R.o_cmp, &o_slc, &R.o_win};
      const std::vector<double>* branch_lse[3] = {&R.lse_cmp, &lse_slc, &R.lse_win};
      const bool in_sum[3] = {c.gate[0], c.gate[1], c.gate[2] && p.w > 0};  // w = 0 disables the window

      for (int64_t t = 0; t < s.len; ++t)
        for (int h = 0; h < HQ; ++h) {
          const size_t row = static_cast<size_t>(t * HQ + h);
          const int64_t tok = s.b * T + s.row + t;
          for (int i = 0; i < dv; ++i) {
            const size_t e = row * dv + i;
            double want = 0;
            for (int j = 0; j < 3; ++j)
              if (in_sum[j]) want += gd[j][row] * (*branch_o[j])[e];
            M(kO)->add(bits_to_float(img(c.o)[static_cast<size_t>(c.o.at(s.b, s.row + t, h) + i)], dt), want);
            if (c.companion)
              M(kO2)->add(bits_to_float(img(c.o2)[static_cast<size_t>(c.o2.at(s.b, s.row + t, h) + i)], dt), want);
            for (int j = 0; j < 3; ++j)
              if (c.out_o[j])
                M(kOcmp + j)->add(
                    bits_to_float(img(c.o_b[j])[static_cast<size_t>(c.o_b[j].at(s.b, s.row + t, h) + i)], dt),
                    (*branch_o[j])[e]);
          }
          for (int which = kO; which <= kOwin; ++which)
            if (M(which)) M(which)->end_row(tok, h);
          for (int j = 0; j < 3; ++j)
            if (lse_at[j] >= 0)
              v.lses[static_cast<size_t>(lse_at[j])].second.add(
                  r.h32[static_cast<size_t>(c.lse[j].slab)][static_cast<size_t>(c.lse[j].at(s.b, s.row + t, h))],
                  (*branch_lse[j])[row], tok, h);
        }
    }

    // Nothing written outside the output views (the padding between heads, tokens and batch entries).
    auto outside = [&](const Place& pl, int64_t rows, int64_t batches, int heads, int dim) {
      if (pl.slab < 0) return;
      const Slab& sl = c.slabs[static_cast<size_t>(pl.slab)];
      std::vector<char> inside(sl.elems, 0);
      for (int64_t b = 0; b < batches; ++b)
        for (int64_t t = 0; t < rows; ++t)
          for (int h = 0; h < heads; ++h)
            std::fill_n(inside.begin() + pl.at(b, t, h), dim, 1);
      for (size_t e = 0; e < sl.elems; ++e) {
        if (inside[e]) continue;
        if (sl.kind == SlabKind::out16)
          v.outside_writes += r.h16[static_cast<size_t>(pl.slab)][e] != 0xffff;
        else {
          uint32_t bits;
          std::memcpy(&bits, &r.h32[static_cast<size_t>(pl.slab)][e], 4);
          v.outside_writes += bits != 0xffffffffu;
        }
      }
    };
    outside(c.o, T, B, HQ, dv);
    outside(c.o2, T, B, HQ, dv);
    for (int j = 0; j < 3; ++j) outside(c.o_b[j], T, B, HQ, dv), outside(c.lse[j], T, B, HQ, 1);
  } catch (const std::exception& e) {
    v.error = e.what();
  }
  return v;
}

// The reference of every problem, on every core (no doctest macro runs here).
std::vector<Verdict> judge_all(const std::vector<Case>& cases, const std::vector<Run>& runs) {
  std::vector<Verdict> verdicts(cases.size());
  std::atomic<size_t> next{0};
  const unsigned threads = std::clamp(std::thread::hardware_concurrency(), 1u, 32u);
  std::vector<std::thread> pool;
  for (unsigned w = 0; w < threads; ++w)
    pool.emplace_back([&] {
      for (size_t i; (i = next++) < cases.size();)
        if (runs[i].judgeable()) verdicts[i] = judge_case(cases[i], runs[i]);
    });
  for (std::thread& t : pool) t.join();
  return verdicts;
}

}  // namespace

TEST_CASE("fuzz: random valid problems through the C ABI match the float64 reference") {
  const auto t0 = std::chrono::steady_clock::now();
  auto seconds = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); };
  const uint64_t seed = test::test_seed(kFuzzSeed);
  MESSAGE(fmt::format("fuzz seed {} (NSAJIT_TEST_SEED={}), {} problems", seed, test::seed_offset(), kFuzzProblems));
  fmt::print("fuzz: seed {} (NSAJIT_TEST_SEED={}), {} problems\n", seed, test::seed_offset(), kFuzzProblems);
  std::vector<Case> cases;
  for (int i = 0; i < kFuzzProblems; ++i) cases.push_back(draw_case(seed, i));
  fuzz_gpu();
  prewarm(cases);

  std::vector<Run> runs(cases.size());
  for (size_t i = 0; i < cases.size(); ++i) {
    try {
      run_case(cases[i], runs[i]);
    } catch (const std::exception& e) {
      runs[i].fatal = true;
      runs[i].error = e.what();
      break;  // a CUDA error may have left the context unusable
    }
  }
  const double gpu_s = seconds();
  const std::vector<Verdict> verdicts = judge_all(cases, runs);
  fmt::print("fuzz: ran in {:.1f} s, judged in {:.1f} s\n", gpu_s, seconds() - gpu_s);

  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    const Run& r = runs[i];
    const Verdict& v = verdicts[i];
    const std::string problem = fmt::format("fuzz #{}: {}", c.index, c.describe());
    if (!r.ran && !r.fatal && r.rc_ws == NSAJIT_OK) {
      fmt::print("fuzz #{:2} not run (an earlier problem's CUDA error)\n", c.index);
      continue;
    }
    fmt::print("fuzz #{:2} {} || {}{}\n", c.index, c.describe(), v.summary(),
               r.judgeable() ? "" : fmt::format("FAILED: {}", r.error));
    std::fflush(stdout);
    CAPTURE(problem);
    INFO("run: ", r.error);
    REQUIRE_FALSE(r.fatal);
    CHECK(r.rc_ws == NSAJIT_OK);
    CHECK(r.rc == NSAJIT_OK);
    CHECK(r.rc2 == NSAJIT_OK);
    CHECK(r.rc_pool == NSAJIT_OK);
    if (!r.judgeable()) continue;
    const double tol = c.p.dtype == Dtype::bf16 ? 1e-2 : 2e-3;  // NSA.md
    INFO("selection: ", v.first_mismatch);
    CHECK(v.error.empty());
    CHECK(v.selection_mismatches == 0);
    CHECK(v.outside_writes == 0);
    for (const auto& out : v.outs) CHECK_MESSAGE(out.second.ok(tol), out.first, ": ", out.second.describe());
    for (const auto& lse : v.lses) CHECK_MESSAGE(lse.second.ok(tol), lse.first, ": ", lse.second.describe());
  }
  fmt::print("fuzz: {:.1f} s in all\n", seconds());
}
