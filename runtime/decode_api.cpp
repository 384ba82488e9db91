#include "runtime/decode_api.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <optional>

#include "codegen/codegen.h"
#include "runtime/device.h"
#include "runtime/driver.h"
#include "base/error.h"
#include "runtime/kernels.h"
#include "runtime/prepared_launch.h"
#include "runtime/tuned.h"
#include "runtime/validate.h"
#include "templates/decode_params.h"

namespace nsajit {
namespace {

int64_t floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }
int64_t num_cmp(int64_t len, const Problem& p) { return len >= p.l ? (len - p.l) / p.d + 1 : 0; }

void check_pointer(const char* who, const char* name, const void* ptr, size_t alignment) {
  if (ptr == nullptr) throw UsageError(fmt::format("{}: {} is a null pointer", who, name));
  check_aligned(who, name, ptr, alignment);
}

// The table's own fields, and its capacity against the problem's T; returns the capacity in tokens.
int64_t check_table(const char* who, const Problem& p, const PageTable& t) {
  check_pointer(who, "page_table", t.pages, 4);
  if (t.page_size < 1 || t.page_size % p.lsel != 0 || t.page_size % 8 != 0)
    throw UsageError(fmt::format("{}: page_size = {} must be a positive multiple of l' = {} and of 8", who,
                                 t.page_size, p.lsel));
  if (t.stride < 1) throw UsageError(fmt::format("{}: page_table stride = {} must be >= 1 (max pages)", who, t.stride));
  if (t.stride > (int64_t{1} << 40) / t.page_size)
    throw UsageError(fmt::format("{}: page_table stride = {} pages of {} tokens: more than 2^40 tokens per sequence",
                                 who, t.stride, t.page_size));
  const int64_t capacity = t.stride * t.page_size;
  if (capacity > p.T)
    throw UsageError(fmt::format("{}: the page table holds {} pages of {} tokens = {} tokens per sequence, more than "
                                 "the problem's T = {} (T is the cache's capacity: the kernel is built for it)",
                                 who, t.stride, t.page_size, capacity, p.T));
  return capacity;
}

// Host copies of seqlens and the page table, when given: every length in [min_len, capacity - extra] and every page
// a sequence uses (up to its length + extra) inside each pool.
void check_host_copies(const char* who, const Problem& p, const PageTable& t, const int32_t* seqlens_host,
                       int64_t min_len, int64_t extra, int64_t capacity, const std::vector<int64_t>& pools) {
  if (seqlens_host == nullptr) return;
  for (int64_t b = 0; b < p.B; ++b) {
    const int64_t len = seqlens_host[b];
    if (len < min_len || len + extra > capacity)
      throw UsageError(fmt::format("{}: seqlens[{}] = {}{}: must be in [{}, {}] (capacity {} tokens{})", who, b, len,
                                   extra > 0 ? fmt::format(" (+ {} appended)", extra) : "", min_len,
                                   capacity - extra, capacity,
                                   min_len > 0 ? fmt::format(", at least the {} query tokens", min_len) : ""));
    if (t.pages_host == nullptr) continue;
    const int64_t used = (len + extra + t.page_size - 1) / t.page_size;
    for (int64_t lp = 0; lp < used; ++lp) {
      const int64_t page = t.pages_host[b * t.stride + lp];
      for (int64_t n : pools)
        if (page < 0 || page >= n)
          throw UsageError(fmt::format("{}: page_table[{}][{}] = {} is outside the pool of {} pages", who, b, lp,
                                       page, n));
    }
  }
}

void check_cmp_cache(const char* who, const Problem& p, const TensorView& k_cmp, const TensorView& v_cmp,
                     int64_t max_cmp, int64_t capacity) {
  check_view(who, "k_cmp", k_cmp, false);
  check_view(who, "v_cmp", v_cmp, false);
  if (max_cmp < num_cmp(capacity, p))
    throw UsageError(fmt::format("{}: max_cmp = {} compressed entries per sequence, but a full sequence of {} tokens "
                                 "completes {} (l = {}, d = {})",
                                 who, max_cmp, capacity, num_cmp(capacity, p), p.l, p.d));
}

struct CheckedDecode {
  Problem launch;
  TileConfig config;
};

// The split-KV workspace's parts (templates/decode_params.h), byte offsets from its start, each 256-byte aligned.
struct DecodeLayout {
  size_t part = 0, ml = 0, pc = 0, sel = 0, total = 0;
  int64_t pc_stride = 0;
};
DecodeLayout decode_layout(const Problem& p, int Tq, const TileConfig& c) {
  DecodeLayout l;
  const int64_t split = c.at("SPLIT");
  if (split <= 1) return l;
  const int64_t rows = p.B * Tq * p.H, G = p.HQ / p.H;
  auto align = [](size_t v) { return (v + 255) / 256 * 256; };
  l.pc_stride = (num_cmp(p.T, p) + 63) / 64 * 64;
  l.part = 0;
  l.ml = align(l.part + static_cast<size_t>(rows * 3 * split * G * p.dv) * 4);
  l.pc = align(l.ml + static_cast<size_t>(rows * 3 * split * G * 2) * 4);
  l.sel = align(l.pc + static_cast<size_t>(rows * l.pc_stride) * 4);
  l.total = align(l.sel + static_cast<size_t>(rows * (nsa::kDecodeMaxSelected + 1)) * 4);
  return l;
}

void check_workspace_size(const DecodeTensors& t, const DecodeLayout& layout) {
  if (t.workspace != nullptr && t.workspace_bytes < layout.total)
    throw UsageError(fmt::format("decode: workspace of {} bytes is too small: this call needs {} "
                                 "(decode_workspace_bytes)", t.workspace_bytes, layout.total));
}

CheckedDecode checked_decode(const Problem& p, int Tq, const DecodeTensors& t, const TileConfig* config) {
  const char* who = "decode";
  const KernelFamily& family = find_family("decode");
  family.check_problem(p);
  if (Tq < 1 || Tq > kDecodeMaxTq)
    throw UsageError(fmt::format("{}: Tq = {} query tokens per sequence: must be in 1 .. {}", who, Tq, kDecodeMaxTq));
  if (p.B > kMaxGridYZ) throw UsageError(fmt::format("{}: B = {} sequences: at most {}", who, p.B, kMaxGridYZ));
  check_view(who, "q", t.q, false);
  check_view(who, "o", t.o, false);
  if (t.g_cmp == nullptr && t.g_slc == nullptr && t.g_win == nullptr)
    throw UsageError(fmt::format("{}: every gate is null: give at least one of g_cmp, g_slc, g_win", who));
  for (auto [name, g] : {std::pair{"g_cmp", t.g_cmp}, std::pair{"g_slc", t.g_slc}, std::pair{"g_win", t.g_win}})
    if (g != nullptr) check_aligned(who, name, g, 2);
  check_row_strides(who, "gates", t.gate_stride_b, t.gate_stride_t, false);
  (void)gate_head_stride(who, "gates", t.gate_stride_h);
  check_pointer(who, "cache.k", t.cache.k, 16);
  check_pointer(who, "cache.v", t.cache.v, 16);
  if (t.cache.num_pages < 1) throw UsageError(fmt::format("{}: cache.num_pages = {} must be >= 1", who, t.cache.num_pages));
  std::vector<int64_t> pools = {t.cache.num_pages};
  for (auto [name, c] : {std::pair{"cache_slc", &t.cache_slc}, std::pair{"cache_win", &t.cache_win}}) {
    if ((c->k == nullptr) != (c->v == nullptr))
      throw UsageError(fmt::format("{}: give both {}.k and {}.v, or neither", who, name, name));
    if (c->k == nullptr) continue;
    check_aligned(who, name, c->k, 16);
    check_aligned(who, name, c->v, 16);
    if (c->num_pages < 1) throw UsageError(fmt::format("{}: {}.num_pages = {} must be >= 1", who, name, c->num_pages));
    pools.push_back(c->num_pages);
  }
  const int64_t capacity = check_table(who, p, t.table);
  check_pointer(who, "seqlens", t.seqlens, 4);
  if (t.g_cmp != nullptr || t.g_slc != nullptr) check_cmp_cache(who, p, t.k_cmp, t.v_cmp, t.max_cmp, capacity);
  if ((t.idx == nullptr) != (t.cnt == nullptr))
    throw UsageError(fmt::format("{}: give both idx and cnt, or neither", who));
  if (t.idx != nullptr) check_aligned(who, "idx", t.idx, 4), check_aligned(who, "cnt", t.cnt, 4);
  check_host_copies(who, p, t.table, t.seqlens_host, Tq, 0, capacity, pools);
  CheckedDecode c;
  c.launch = p;
  if (config != nullptr) {
    check_config(who, family, *config);
    if (auto why = family.reject(p, *config, kHopperMaxSmemOptin))
      throw UsageError(fmt::format("{}: tile config [{}] is not valid: {}", who, describe(*config), *why));
    c.config = *config;
  }
  if (t.workspace != nullptr && reinterpret_cast<uintptr_t>(t.workspace) % 256 != 0)
    throw UsageError(fmt::format("{}: workspace is not 256-byte aligned", who));
  // The workspace's size depends on the config: checked here when it is given, else by decode() once it has
  // resolved the config (in the device's context, before any launch).
  if (config != nullptr) check_workspace_size(t, decode_layout(p, Tq, c.config));
  return c;
}

}  // namespace

std::pair<int64_t, int64_t> completed_cmp_entries(const Problem& p, int64_t old_len, int64_t new_len) {
  const int64_t first = std::max<int64_t>(0, floor_div(old_len - p.l, p.d) + 1);
  const int64_t last = floor_div(new_len - p.l, p.d);
  return {first, std::max<int64_t>(0, last - first + 1)};
}

void check_decode(const Problem& p, int Tq, const DecodeTensors& t, const TileConfig* config) {
  (void)checked_decode(p, Tq, t, config);
}

size_t decode_workspace_bytes(const Problem& p, int Tq, const TileConfig* config) {
  const KernelFamily& family = find_family("decode");
  family.check_problem(p);
  if (Tq < 1 || Tq > kDecodeMaxTq)
    throw UsageError(fmt::format("decode: Tq = {} query tokens per sequence: must be in 1 .. {}", Tq, kDecodeMaxTq));
  if (config != nullptr) {
    check_config("decode", family, *config);
    return decode_layout(p, Tq, *config).total;
  }
  // The config decode() would resolve (tuned for the GPU, or the default): looked up in the current context, or
  // with none current, in the only GPU's.
  const DeviceScope scope(nullptr, "decode_workspace_bytes", "its GPU (the call takes no tensor)");
  return decode_layout(p, Tq, resolve_config(family, p, p).config).total;
}

void decode(const Problem& p, int Tq, const DecodeTensors& t, CUstream stream, const TileConfig* config) {
  CheckedDecode c = checked_decode(p, Tq, t, config);
  const DeviceScope scope(t.q.data, "decode", "q");
  const KernelFamily& family = find_family("decode");
  if (config == nullptr) c.config = resolve_config(family, p, c.launch).config;
  KernelSpec spec{&family, c.launch, c.config, "sm_90a"};
  PreparedLaunch r;
  r.kernel = &runtime_kernel(spec);
  r.geometry = family.geometry(c.launch, c.config);
  r.geometry.grid = {static_cast<unsigned>(p.H), static_cast<unsigned>(Tq), static_cast<unsigned>(p.B)};
  const DecodeLayout layout = decode_layout(p, Tq, c.config);
  if (config == nullptr) check_workspace_size(t, layout);
  std::optional<DeviceBuffer> owned;
  uintptr_t scratch = reinterpret_cast<uintptr_t>(t.workspace);
  if (layout.total > 0 && t.workspace == nullptr) {
    check_not_capturing(stream, "decode");
    owned.emplace(layout.total);
    scratch = static_cast<uintptr_t>(owned->ptr());
  }
  nsa::DecodeParams d{};
  d.q = t.q.data, d.q_sb = t.q.stride_b, d.q_st = t.q.stride_t, d.q_sh = t.q.stride_h;
  d.g_cmp = t.g_cmp, d.g_slc = t.g_slc, d.g_win = t.g_win;
  d.g_sb = t.gate_stride_b, d.g_st = t.gate_stride_t, d.g_sh = gate_head_stride("decode", "gates", t.gate_stride_h);
  d.o = const_cast<void*>(t.o.data), d.o_sb = t.o.stride_b, d.o_st = t.o.stride_t, d.o_sh = t.o.stride_h;
  const PagedCache& slc = t.cache_slc.k != nullptr ? t.cache_slc : t.cache;
  const PagedCache& win = t.cache_win.k != nullptr ? t.cache_win : t.cache;
  d.k_slc = slc.k, d.v_slc = slc.v, d.k_win = win.k, d.v_win = win.v;
  d.page_table = t.table.pages, d.pt_stride = t.table.stride, d.seqlens = t.seqlens;
  d.k_cmp = t.k_cmp.data, d.v_cmp = t.v_cmp.data;
  d.kc_sb = t.k_cmp.stride_b, d.kc_st = t.k_cmp.stride_t, d.kc_sh = t.k_cmp.stride_h;
  d.vc_sb = t.v_cmp.stride_b, d.vc_st = t.v_cmp.stride_t, d.vc_sh = t.v_cmp.stride_h;
  d.idx = t.idx, d.cnt = t.cnt;
  d.scale_log2 = static_cast<float>(p.softmax_scale() * 1.4426950408889634);
  d.Tq = Tq, d.H = p.H, d.page_size = t.table.page_size, d.l = p.l, d.d = p.d, d.lsel = p.lsel, d.n = p.n, d.w = p.w;
  const int split = c.config.at("SPLIT");
  d.split = split;
  if (split <= 1) {
    d.phase = 0;
    r.set_params(d);
    r.launch(stream);
    return;
  }
  d.ws_part = reinterpret_cast<float*>(scratch + layout.part);
  d.ws_ml = reinterpret_cast<float*>(scratch + layout.ml);
  d.ws_pc = reinterpret_cast<float*>(scratch + layout.pc);
  d.ws_sel = reinterpret_cast<int32_t*>(scratch + layout.sel);
  d.pc_stride = layout.pc_stride;
  // Five launches of the one kernel: partials, probabilities, selection (one CTA per row), selected, merge.
  try {
    for (int phase = 1; phase <= 5; ++phase) {
      const bool split_grid = phase != 3;  // the selection: one CTA per (sequence, query token, KV head)
      if ((phase == 2 || phase == 3 || phase == 4) && t.g_slc == nullptr) continue;
      d.phase = phase;
      r.geometry.grid.x = static_cast<unsigned>(p.H * (split_grid ? split : 1));
      r.set_params(d);
      r.launch(stream);
    }
  } catch (...) {
    if (owned) (void)driver().cuStreamSynchronize_(stream);
    throw;
  }
  if (owned) check_cu(driver().cuStreamSynchronize_(stream), "cuStreamSynchronize");
}

void check_decode_append(const Problem& p, int Tn, const AppendTensors& t, const TileConfig* config) {
  const char* who = "decode_append";
  const KernelFamily& family = find_family("decode_append");
  family.check_problem(p);
  if (Tn < 1) throw UsageError(fmt::format("{}: Tn = {} tokens to append: must be >= 1", who, Tn));
  if (p.B > kMaxGridYZ) throw UsageError(fmt::format("{}: B = {} sequences: at most {}", who, p.B, kMaxGridYZ));
  check_view(who, "k_new", t.k_new, false);
  check_view(who, "v_new", t.v_new, false);
  check_pointer(who, "k_pool", t.k_pool, 16);
  check_pointer(who, "v_pool", t.v_pool, 16);
  if (t.num_pages < 1) throw UsageError(fmt::format("{}: num_pages = {} must be >= 1", who, t.num_pages));
  const int64_t capacity = check_table(who, p, t.table);
  if (Tn > capacity)
    throw UsageError(fmt::format("{}: Tn = {} tokens do not fit a sequence's capacity of {}", who, Tn, capacity));
  check_pointer(who, "seqlens", t.seqlens, 4);
  if ((t.k_cmp.data == nullptr) != (t.v_cmp.data == nullptr))
    throw UsageError(fmt::format("{}: give both k_cmp and v_cmp, or neither", who));
  if (t.k_cmp.data != nullptr) check_cmp_cache(who, p, t.k_cmp, t.v_cmp, t.max_cmp, capacity);
  check_host_copies(who, p, t.table, t.seqlens_host, 0, Tn, capacity, {t.num_pages});
  if (config != nullptr) check_config(who, family, *config);
}

void decode_append(const Problem& p, int Tn, const AppendTensors& t, CUstream stream, const TileConfig* config) {
  check_decode_append(p, Tn, t, config);
  const DeviceScope scope(t.k_new.data, "decode_append", "k_new");
  const KernelFamily& family = find_family("decode_append");
  const TileConfig cfg = config != nullptr ? *config : resolve_config(family, p, p).config;
  KernelSpec spec{&family, p, cfg, "sm_90a"};
  PreparedLaunch r;
  r.kernel = &runtime_kernel(spec);
  r.geometry = family.geometry(p, cfg);
  const int64_t items = static_cast<int64_t>(Tn) * p.H * (p.dk / 8 + p.dv / 8);
  const int threads = cfg.at("THREADS");
  r.geometry.grid = {static_cast<unsigned>((items + threads - 1) / threads), 2, static_cast<unsigned>(p.B)};
  nsa::DecodeAppendParams a{};
  a.k_new = t.k_new.data, a.v_new = t.v_new.data;
  a.kn_sb = t.k_new.stride_b, a.kn_st = t.k_new.stride_t, a.kn_sh = t.k_new.stride_h;
  a.vn_sb = t.v_new.stride_b, a.vn_st = t.v_new.stride_t, a.vn_sh = t.v_new.stride_h;
  a.k_pool = t.k_pool, a.v_pool = t.v_pool, a.page_table = t.table.pages, a.pt_stride = t.table.stride;
  a.seqlens = t.seqlens;
  a.k_cmp = const_cast<void*>(t.k_cmp.data), a.v_cmp = const_cast<void*>(t.v_cmp.data);
  a.kc_sb = t.k_cmp.stride_b, a.kc_st = t.k_cmp.stride_t, a.kc_sh = t.k_cmp.stride_h;
  a.vc_sb = t.v_cmp.stride_b, a.vc_st = t.v_cmp.stride_t, a.vc_sh = t.v_cmp.stride_h;
  a.Tn = Tn, a.H = p.H, a.page_size = t.table.page_size, a.l = p.l, a.d = p.d;
  r.set_params(a);
  r.launch(stream);
}

}  // namespace nsajit
