#include "runtime/backward.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "base/error.h"
#include "codegen/codegen.h"
#include "runtime/device.h"
#include "runtime/driver.h"
#include "runtime/kernels.h"
#include "runtime/pool_api.h"
#include "runtime/prepared_launch.h"
#include "runtime/tuned.h"
#include "runtime/validate.h"
#include "templates/bwd_params.h"

namespace nsajit {
namespace {

// ---- parameter blocks (templates/bwd_params.h) ---------------------------------------------------------------------
using nsa::AttnBwdParams;
using nsa::BwdPreParams;
using nsa::SlcIndexParams;
using nsa::SlcReduceParams;
using nsa::ChunkReduceParams;
using nsa::PoolBwdParams;
using nsa::BwdCastParams;

// ---- sizes -------------------------------------------------------------------------------------------------------
size_t mul(size_t a, size_t b) {
  size_t r = 0;
  if (__builtin_mul_overflow(a, b, &r))
    throw UsageError("backward: the scratch this problem needs overflows 64 bits: no device can hold it");
  return r;
}
size_t add(size_t a, size_t b) {
  size_t r = 0;
  if (__builtin_add_overflow(a, b, &r))
    throw UsageError("backward: the scratch this problem needs overflows 64 bits: no device can hold it");
  return r;
}
size_t align256(size_t n) { return add(n, 255) / 256 * 256; }
int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }
int64_t num_cmp(int64_t len, const Problem& p) { return len >= p.l ? (len - p.l) / p.d + 1 : 0; }

TensorView or_default(const TensorView& t, const TensorView& fallback) { return t.data ? t : fallback; }

// The smallest work item of the selected dk/dv kernel and the smallest query chunk of the compressed one: the
// scratch is sized for them, whatever config runs.
constexpr int64_t kMinQChunk = 1024;
constexpr int64_t kMinQSplit = 2048;

template <class F>
auto in_backward(F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const UsageError& e) {
    const std::string what = e.what();
    if (what.rfind("backward", 0) == 0) throw;
    throw UsageError(fmt::format("backward: {}", what));
  }
}

// What a call computes, from its arguments alone.
struct Shape {
  bool varlen = false, bounded = false, cmp = false, slc = false, win = false, pool = false;
  bool sep_slc = false, sep_win = false, given_cmp = false;
  bool need_dk = false;
  int64_t N = 1, Tmax = 1;  // sequences (or B) and the longest
  int64_t ntok = 0, ncmp = 0, nblk = 0, mask_words = 0;
};

BatchLayout batch_of(const BackwardTensors& t) {
  BatchLayout b;
  b.cu_seqlens = t.cu_seqlens, b.cu_seqlens_host = t.cu_seqlens_host;
  b.num_seqs = t.num_seqs, b.max_seqlen = t.max_seqlen;
  return b;
}

Shape shape_of(const Problem& p, const BackwardTensors& t) {
  Shape s;
  const BatchLayout batch = batch_of(t);
  s.varlen = batch.varlen();
  s.bounded = batch.bounded();
  const GridShape grid = check_batch("backward", p, batch, true);
  s.N = grid.B, s.Tmax = grid.T;
  s.cmp = t.g_cmp != nullptr;
  s.slc = t.g_slc != nullptr;
  s.win = t.g_win != nullptr && p.w > 0;
  s.given_cmp = t.k_cmp.data != nullptr;
  s.pool = s.cmp && !s.given_cmp;
  s.sep_slc = t.k_slc.data != nullptr;
  s.sep_win = t.k_win.data != nullptr;
  s.need_dk = s.pool || (s.slc && !s.sep_slc) || (s.win && !s.sep_win);
  const BatchSums sums = in_backward([&] { return batch_sums(p, batch); });
  s.ntok = sums.tokens, s.ncmp = sums.cmp_blocks, s.nblk = sums.sel_blocks, s.mask_words = sums.mask_words;
  return s;
}

// The scratch layout, each region 256-byte aligned; a region a call does not use has size 0.
struct Workspace {
  size_t dq = 0, dk = 0, dv = 0, dk_slc = 0, dv_slc = 0, dk_win = 0, dv_win = 0, dkc = 0, dvc = 0, kc = 0, vc = 0;
  size_t cpart = 0;
  size_t delta[3] = {0, 0, 0};
  size_t seq_blk_off = 0, seq_mask_off = 0, blk_seq = 0, mask = 0, count = 0, list_off = 0, item_off = 0,
         slot_off = 0, list = 0, partial = 0;
  size_t total = 0;
  int64_t slot_stride = 0, list_stride = 0;
  // Byte ranges to zero before the kernels run, and before the selection's index is built: [begin, end).
  std::vector<std::pair<size_t, size_t>> zero, index_zero;

  Workspace(const Problem& p, const Shape& s) {
    const size_t HQ = static_cast<size_t>(p.HQ), H = static_cast<size_t>(p.H);
    const size_t dkd = static_cast<size_t>(p.dk), dvd = static_cast<size_t>(p.dv);
    const size_t ntok = static_cast<size_t>(s.ntok), ncmp = static_cast<size_t>(s.ncmp);
    size_t at = 0;
    auto take = [&](size_t bytes) {
      const size_t r = at;
      at = add(at, align256(bytes));
      return r;
    };
    auto take_zeroed = [&](size_t bytes) {
      const size_t r = take(bytes);
      if (bytes > 0) zero.emplace_back(r, r + align256(bytes));
      return r;
    };
    dq = take(mul(mul(ntok, HQ), mul(dkd, 4)));
    dk = take_zeroed(mul(mul(ntok, H), mul(dkd, 4)));
    dv = take_zeroed(mul(mul(ntok, H), mul(dvd, 4)));
    if (s.sep_slc) {
      dk_slc = take_zeroed(mul(mul(ntok, H), mul(dkd, 4)));
      dv_slc = take_zeroed(mul(mul(ntok, H), mul(dvd, 4)));
    }
    if (s.sep_win) {
      dk_win = take_zeroed(mul(mul(ntok, H), mul(dkd, 4)));
      dv_win = take_zeroed(mul(mul(ntok, H), mul(dvd, 4)));
    }
    if (s.cmp || s.given_cmp) {
      dkc = take_zeroed(mul(mul(ncmp, H), mul(dkd, 4)));
      dvc = take_zeroed(mul(mul(ncmp, H), mul(dvd, 4)));
      // Without host offsets ncmp is an upper bound, and the rows past the batch's own are never written by the
      // dkv kernel: zeroed, so that the reduce adds zeros there.
      const size_t cpart_bytes =
          mul(mul(static_cast<size_t>(cdiv(s.Tmax, kMinQSplit)), mul(ncmp, H)), mul(dkd + dvd, 4));
      cpart = s.bounded ? take_zeroed(cpart_bytes) : take(cpart_bytes);
    }
    if (s.pool) {
      kc = take(mul(mul(ncmp, H), mul(dkd, 2)));
      vc = take(mul(mul(ncmp, H), mul(dvd, 2)));
    }
    for (int b = 0; b < 3; ++b) delta[b] = take(mul(mul(ntok, HQ), 4));
    if (s.slc) {
      const size_t N = static_cast<size_t>(s.N), nblk = static_cast<size_t>(s.nblk);
      seq_blk_off = take(mul(N + 1, 8));
      seq_mask_off = take(mul(N + 1, 8));
      blk_seq = take(mul(nblk, 4));
      mask = take(mul(mul(H, static_cast<size_t>(s.mask_words)), 4));
      index_zero.emplace_back(mask, at);
      count = take(mul(mul(H, nblk), 4));
      index_zero.emplace_back(count, at);
      list_off = take(mul(mul(H, nblk), 8));
      item_off = take(mul(mul(H, nblk + 1), 8));
      slot_off = take(mul(mul(H, nblk), 8));
      list_stride = static_cast<int64_t>(mul(ntok, static_cast<size_t>(p.n)));
      list = take(mul(mul(H, static_cast<size_t>(list_stride)), 4));
      // A block with c > QCHUNK selecting positions takes ceil(c / QCHUNK) < 2 c / QCHUNK slots.
      slot_stride = 2 * cdiv(s.ntok * p.n, kMinQChunk) + 1;
      partial = take(mul(mul(mul(H, static_cast<size_t>(slot_stride)), static_cast<size_t>(p.lsel)), mul(dkd + dvd, 4)));
    }
    total = at;
  }
};

void require_view(const char* name, const TensorView& t, bool varlen) {
  if (t.data == nullptr) throw UsageError(fmt::format("backward: {} is required here (null)", name));
  check_view("backward", name, t, varlen);
}

// Every check that names the caller's arguments. No driver call.
Shape check_arguments(const Problem& p, const BackwardTensors& t) {
  p.validate();
  if (t.g_cmp == nullptr && t.g_slc == nullptr && t.g_win == nullptr)
    throw UsageError("backward: all three gates are null: give the gates the forward was given");
  const Shape s = shape_of(p, t);
  in_backward([&] {
    if (s.cmp) {
      find_family("cmp_bwd_dq").check_problem(p);
      if (s.pool) find_family("pool").check_problem(p);
    }
    if (s.slc) find_family("slc_bwd_dkv").check_problem(p);
    if (s.win) find_family("win_bwd_dq").check_problem(p);
    find_family("bwd_cast").check_problem(p);
  });
  const bool v = s.varlen;
  if ((t.k_cmp.data == nullptr) != (t.v_cmp.data == nullptr))
    throw UsageError("backward: give both k_cmp and v_cmp, or neither (then they are the mean pool of k and v)");
  if ((t.k_slc.data == nullptr) != (t.v_slc.data == nullptr))
    throw UsageError("backward: give both k_slc and v_slc, or neither");
  if ((t.k_win.data == nullptr) != (t.v_win.data == nullptr))
    throw UsageError("backward: give both k_win and v_win, or neither");
  require_view("q", t.q, v);
  require_view("do", t.dout, v);
  require_view("dq", t.dq, v);
  if (s.need_dk) {
    require_view("k", t.k, v);
    require_view("v", t.v, v);
    require_view("dk", t.dk, v);
    require_view("dv", t.dv, v);
  }
  if (s.cmp && s.given_cmp) {
    require_view("k_cmp", t.k_cmp, v);
    require_view("v_cmp", t.v_cmp, v);
    require_view("dk_cmp", t.dk_cmp, v);
    require_view("dv_cmp", t.dv_cmp, v);
  }
  if (s.slc && s.sep_slc) {
    require_view("k_slc", t.k_slc, v);
    require_view("v_slc", t.v_slc, v);
    require_view("dk_slc", t.dk_slc, v);
    require_view("dv_slc", t.dv_slc, v);
  }
  if (s.win && s.sep_win) {
    require_view("k_win", t.k_win, v);
    require_view("v_win", t.v_win, v);
    require_view("dk_win", t.dk_win, v);
    require_view("dv_win", t.dv_win, v);
  }
  // Optional gradients given anyway: written in full, so they must be valid views.
  const std::pair<const char*, const TensorView*> optional_grads[] = {
      {"dk", &t.dk},         {"dv", &t.dv},         {"dk_slc", &t.dk_slc}, {"dv_slc", &t.dv_slc},
      {"dk_win", &t.dk_win}, {"dv_win", &t.dv_win}, {"dk_cmp", &t.dk_cmp}, {"dv_cmp", &t.dv_cmp}};
  for (const auto& [name, view] : optional_grads)
    if (view->data != nullptr) check_view("backward", name, *view, v);
  if ((t.dk_cmp.data != nullptr || t.dv_cmp.data != nullptr) && !s.given_cmp)
    throw UsageError("backward: dk_cmp/dv_cmp are given but k_cmp/v_cmp are not: the mean pool's gradient goes to dk/dv");
  if ((t.dk_slc.data != nullptr) != (t.dv_slc.data != nullptr) || (t.dk_win.data != nullptr) != (t.dv_win.data != nullptr) ||
      (t.dk.data != nullptr) != (t.dv.data != nullptr) || (t.dk_cmp.data != nullptr) != (t.dv_cmp.data != nullptr))
    throw UsageError("backward: give the key and value gradients in pairs (dk with dv, dk_slc with dv_slc, ...)");
  if ((t.dk_slc.data != nullptr && !s.sep_slc) || (t.dk_win.data != nullptr && !s.sep_win))
    throw UsageError("backward: dk_slc/dk_win are given without k_slc/k_win: those gradients go to dk/dv");

  // Saved tensors of every enabled branch.
  auto need_saved = [&](bool on, const char* br, const TensorView& o, const float* lse) {
    if (!on) return;
    if (o.data == nullptr)
      throw UsageError(fmt::format("backward: o_{} (the {} branch's output saved by the forward) is required", br, br));
    check_view("backward", fmt::format("o_{}", br).c_str(), o, v);
    if (lse == nullptr)
      throw UsageError(fmt::format("backward: lse_{} (saved by the forward) is required", br));
    check_aligned("backward", fmt::format("lse_{}", br).c_str(), lse, 4);
  };
  need_saved(s.cmp, "cmp", t.o_cmp, t.lse_cmp);
  need_saved(s.slc, "slc", t.o_slc, t.lse_slc);
  need_saved(s.win, "win", t.o_win, t.lse_win);
  if (s.cmp || s.slc || s.win) check_row_strides("backward", "lse", t.lse_stride_b, t.lse_stride_t, v);
  if (s.slc) {
    if (t.idx == nullptr || t.cnt == nullptr)
      throw UsageError("backward: idx and cnt (the forward's selection) are required when g_slc is given");
    check_aligned("backward", "idx", t.idx, 4);
    check_aligned("backward", "cnt", t.cnt, 4);
  }
  check_aligned("backward", "g_cmp", t.g_cmp, 2);
  check_aligned("backward", "g_slc", t.g_slc, 2);
  check_aligned("backward", "g_win", t.g_win, 2);
  check_row_strides("backward", "gate", t.gate_stride_b, t.gate_stride_t, v);
  gate_head_stride("backward", "gate", t.gate_stride_h);
  check_aligned("backward", "dg_cmp", t.dg_cmp, 2);
  check_aligned("backward", "dg_slc", t.dg_slc, 2);
  check_aligned("backward", "dg_win", t.dg_win, 2);
  if (t.dg_cmp || t.dg_slc || t.dg_win) check_row_strides("backward", "dg", t.dg_stride_b, t.dg_stride_t, v);
  if (t.dg_cmp != nullptr && t.g_cmp == nullptr) throw UsageError("backward: dg_cmp is given but g_cmp is null");
  if (t.dg_slc != nullptr && t.g_slc == nullptr) throw UsageError("backward: dg_slc is given but g_slc is null");
  if (t.dg_win != nullptr && t.g_win == nullptr) throw UsageError("backward: dg_win is given but g_win is null");
  if (s.ncmp > 0 && (s.cmp || s.given_cmp) && s.ncmp * p.H > (int64_t{1} << 40))
    throw UsageError("backward: too many compressed blocks");
  if (t.workspace != nullptr) {
    if (reinterpret_cast<uintptr_t>(t.workspace) % 256 != 0)
      throw UsageError("backward: workspace is not 256-byte aligned");
    const size_t need = Workspace(p, s).total;
    if (t.workspace_bytes < need)
      throw UsageError(
          fmt::format("backward: workspace of {} bytes is too small: this call needs {}", t.workspace_bytes, need));
  }
  return s;
}

// One kernel made ready; `grid` overrides the family's grid when its x is non-zero.
template <class P>
PreparedLaunch make_launch(const KernelFamily& family, const Problem& problem, const Problem& launch,
                           const TileConfig* given, const P& params, Dim3 grid = {0, 1, 1}, unsigned block = 0) {
  TileConfig config;
  if (given != nullptr) {
    check_config(std::string(family.name()).c_str(), family, *given);
    config = *given;
  } else if (family.params().empty()) {
    config = {};
  } else {
    config = resolve_config(family, problem, launch).config;
  }
  if (auto why = family.reject(launch, config, kHopperMaxSmemOptin))
    throw UsageError(fmt::format("{}: tile config [{}] is not valid: {}", family.name(), describe(config), *why));
  KernelSpec spec{&family, launch, config, "sm_90a"};
  PreparedLaunch r;
  r.kernel = &runtime_kernel(spec);
  r.geometry = family.geometry(launch, config);
  if (grid.x != 0) r.geometry.grid = grid;
  if (block != 0) r.geometry.block = {block, 1, 1};
  r.set_params(params);
  return r;
}

unsigned grid_x(int64_t n, const char* what) {
  if (n < 1) n = 1;
  if (n > 0x7fffffffLL) throw UsageError(fmt::format("backward: the {} grid needs {} blocks: too large", what, n));
  return static_cast<unsigned>(n);
}

struct Step {
  std::string name;  // the family, or the group it belongs to ("zero" for the accumulators' memsets)
  // A memset (bytes at offset) or a kernel.
  bool is_memset = false;
  CUdeviceptr ptr = 0;
  size_t words = 0;
  PreparedLaunch launch;
};

// Builds every step of the backward; with `prepare` false, nothing is compiled or loaded (a check only).
std::vector<Step> plan(const Problem& p, const BackwardTensors& t, const Shape& s, uintptr_t scratch,
                       const BackwardConfigs& cfg, bool prepare) {
  const Workspace ws(p, s);
  auto at = [&](size_t off) { return reinterpret_cast<void*>(scratch + off); };
  auto f32 = [&](size_t off) { return static_cast<float*>(at(off)); };
  std::vector<Step> steps;
  const GridShape grid{s.N, s.Tmax};
  Problem launch = p;
  launch.B = grid.B, launch.T = grid.T;
  const float scale = static_cast<float>(p.softmax_scale());
  const float scale_log2 = static_cast<float>(p.softmax_scale() * 1.4426950408889634);
  const int32_t* cu = t.cu_seqlens;

  std::string group;  // the name of the steps added next
  auto add_kernel = [&](std::function<PreparedLaunch()> make) {
    Step st;
    st.name = group;
    if (prepare) st.launch = make();
    steps.push_back(std::move(st));
  };
  auto add_memset = [&](size_t begin, size_t end) {
    Step st;
    st.name = group;
    st.is_memset = true;
    st.ptr = static_cast<CUdeviceptr>(scratch + begin);
    st.words = (end - begin) / 4;
    steps.push_back(st);
  };

  group = "zero";
  for (const auto& [b, e] : ws.zero) add_memset(b, e);

  // Compressed keys: the caller's, or the mean pool of k and v (recomputed).
  TensorView kc = t.k_cmp, vc = t.v_cmp;
  if (s.pool) {
    const int64_t per_batch = s.varlen ? 0 : num_cmp(p.T, p);
    kc = {at(ws.kc), per_batch * p.H * p.dk, static_cast<int64_t>(p.H) * p.dk, p.dk};
    vc = {at(ws.vc), per_batch * p.H * p.dv, static_cast<int64_t>(p.H) * p.dv, p.dv};
    if (s.ncmp > 0) {
      group = "pool";
      PoolArgs a;
      a.cu_seqlens = t.cu_seqlens, a.cu_seqlens_host = t.cu_seqlens_host;
      a.num_seqs = t.num_seqs, a.max_seqlen = t.max_seqlen;
      a.x = t.k, a.y = kc, a.dim = p.dk;
      check_mean_pool(p, a);
      add_kernel([=] { return prepare_mean_pool(p, a); });
      PoolArgs b = a;
      b.x = t.v, b.y = vc, b.dim = p.dv;
      add_kernel([=] { return prepare_mean_pool(p, b); });
    }
  }

  // Preprocessing: delta and dg of every branch.
  {
    group = "bwd_pre";
    BwdPreParams pp{};
    pp.dout = t.dout.data;
    const TensorView* o[3] = {&t.o_cmp, &t.o_slc, &t.o_win};
    const void* g[3] = {t.g_cmp, t.g_slc, t.g_win};
    void* dg[3] = {t.dg_cmp, t.dg_slc, t.dg_win};
    const bool on[3] = {s.cmp, s.slc, s.win};
    for (int b = 0; b < 3; ++b) {
      pp.o[b] = on[b] ? o[b]->data : nullptr;
      pp.g[b] = g[b];
      pp.dg[b] = dg[b];
      pp.delta[b] = on[b] ? f32(ws.delta[b]) : nullptr;
      pp.o_sb[b] = o[b]->stride_b, pp.o_st[b] = o[b]->stride_t, pp.o_sh[b] = o[b]->stride_h;
    }
    pp.cu_seqlens = cu;
    pp.do_sb = t.dout.stride_b, pp.do_st = t.dout.stride_t, pp.do_sh = t.dout.stride_h;
    pp.gate_sb = t.gate_stride_b, pp.gate_st = t.gate_stride_t;
    pp.gate_sh = t.gate_stride_h == 0 ? 1 : t.gate_stride_h;
    pp.dg_sb = t.dg_stride_b, pp.dg_st = t.dg_stride_t;
    pp.T = grid.T;
    pp.HQ = p.HQ, pp.dv = p.dv;
    add_kernel([=] {
      return make_launch(find_family("bwd_pre"), p, launch, nullptr, pp,
                         {grid_x(cdiv(grid.T * p.HQ, 8), "bwd_pre"), 1, static_cast<unsigned>(grid.B)}, 256);
    });
  }

  bool dq_written = false;
  auto attn_params = [&](const TensorView& k, const TensorView& v, const void* gate, const float* lse, int br,
                         float* dk, float* dv) {
    AttnBwdParams a{};
    a.q = t.q.data, a.k = k.data, a.v = v.data, a.dout = t.dout.data, a.gate = gate, a.lse = lse;
    a.delta = f32(ws.delta[br]);
    a.dq = f32(ws.dq), a.dk = dk, a.dv = dv;
    a.cu_seqlens = cu;
    a.q_sb = t.q.stride_b, a.q_st = t.q.stride_t, a.q_sh = t.q.stride_h;
    a.k_sb = k.stride_b, a.k_st = k.stride_t, a.k_sh = k.stride_h;
    a.v_sb = v.stride_b, a.v_st = v.stride_t, a.v_sh = v.stride_h;
    a.do_sb = t.dout.stride_b, a.do_st = t.dout.stride_t, a.do_sh = t.dout.stride_h;
    a.lse_sb = t.lse_stride_b, a.lse_st = t.lse_stride_t;
    a.gate_sb = t.gate_stride_b, a.gate_st = t.gate_stride_t;
    a.gate_sh = t.gate_stride_h == 0 ? 1 : t.gate_stride_h;
    a.T = grid.T;
    a.H = p.H, a.w = p.w, a.l = p.l, a.d = p.d, a.n = p.n;
    a.scale = scale, a.scale_log2 = scale_log2;
    return a;
  };

  if (s.cmp) {
    AttnBwdParams a = attn_params(kc, vc, t.g_cmp, t.lse_cmp, 0, f32(ws.dkc), f32(ws.dvc));
    a.accumulate = dq_written ? 1 : 0;
    dq_written = true;
    group = "cmp_bwd_dq";
    add_kernel([=] { return make_launch(find_family("cmp_bwd_dq"), p, launch, cfg.cmp_dq, a); });
    if (s.ncmp > 0) {
      group = "cmp_bwd_dkv";
      const KernelFamily& dkv_family = find_family("cmp_bwd_dkv");
      TileConfig dkv_config = cfg.cmp_dkv ? *cfg.cmp_dkv : dkv_family.default_config(launch);
      if (prepare && cfg.cmp_dkv == nullptr) dkv_config = resolve_config(dkv_family, p, launch).config;
      AttnBwdParams c = a;
      c.qsplit = dkv_config.at("QSPLIT");
      c.nchunks = cdiv(grid.T, c.qsplit);
      c.cpart = f32(ws.cpart);
      c.cmp_rows = s.ncmp;
      add_kernel([=, &dkv_family] { return make_launch(dkv_family, p, launch, &dkv_config, c); });
      group = "cmp_bwd_reduce";
      ChunkReduceParams r{};
      r.part = c.cpart, r.dk = f32(ws.dkc), r.dv = f32(ws.dvc), r.rows = s.ncmp * p.H, r.nchunks = c.nchunks;
      add_kernel([=] {
        return make_launch(find_family("cmp_bwd_reduce"), p, launch, nullptr, r,
                           {grid_x(cdiv(r.rows * (p.dk + p.dv), 256), "cmp_bwd_reduce"), 1, 1}, 256);
      });
    }
  }

  if (s.slc) {
    const TensorView k = or_default(t.k_slc, t.k), v = or_default(t.v_slc, t.v);
    float* dk = s.sep_slc ? f32(ws.dk_slc) : f32(ws.dk);
    float* dv = s.sep_slc ? f32(ws.dv_slc) : f32(ws.dv);
    // The dkv config decides the work items, so resolve it first.
    const KernelFamily& dkv_family = find_family("slc_bwd_dkv");
    TileConfig dkv_config = cfg.slc_dkv ? *cfg.slc_dkv : dkv_family.default_config(launch);
    if (prepare && cfg.slc_dkv == nullptr) dkv_config = resolve_config(dkv_family, p, launch).config;
    const int qchunk = dkv_config.at("QCHUNK");

    SlcIndexParams ip{};
    ip.idx = t.idx, ip.cnt = t.cnt, ip.cu_seqlens = cu;
    ip.seq_blk_off = static_cast<nsa::i64*>(at(ws.seq_blk_off));
    ip.seq_mask_off = static_cast<nsa::i64*>(at(ws.seq_mask_off));
    ip.blk_seq = static_cast<int32_t*>(at(ws.blk_seq));
    ip.mask = static_cast<uint32_t*>(at(ws.mask));
    ip.count = static_cast<int32_t*>(at(ws.count));
    ip.list_off = static_cast<nsa::i64*>(at(ws.list_off));
    ip.item_off = static_cast<nsa::i64*>(at(ws.item_off));
    ip.slot_off = static_cast<nsa::i64*>(at(ws.slot_off));
    ip.list = static_cast<int32_t*>(at(ws.list));
    ip.T = grid.T, ip.N = s.N;
    ip.nblk = s.nblk, ip.mask_stride = s.mask_words, ip.list_stride = ws.list_stride;
    ip.H = p.H, ip.n = p.n, ip.qchunk = qchunk;
    const KernelFamily& index = find_family("slc_bwd_index");
    group = "slc_bwd_index";
    for (const auto& [b, e] : ws.index_zero) add_memset(b, e);
    for (int step = 0; step < 4; ++step) {
      SlcIndexParams q = ip;
      q.step = step;
      Dim3 g{1, 1, 1};
      unsigned block = 1024;
      if (step == 1) g = {grid_x(cdiv(grid.T * p.H, 256), "slc_bwd_index"), 1, static_cast<unsigned>(grid.B)}, block = 256;
      if (step == 2) g = {1, static_cast<unsigned>(p.H), 1};
      if (step == 3) g = {grid_x(s.nblk, "slc_bwd_index"), static_cast<unsigned>(p.H), 1}, block = 32;
      add_kernel([=, &index] { return make_launch(index, p, launch, nullptr, q, g, block); });
    }

    AttnBwdParams a = attn_params(k, v, t.g_slc, t.lse_slc, 1, dk, dv);
    a.idx = t.idx, a.cnt = t.cnt;
    a.list = ip.list, a.list_off = ip.list_off, a.count = ip.count, a.item_off = ip.item_off;
    a.slot_off = ip.slot_off, a.blk_seq = ip.blk_seq, a.seq_blk_off = ip.seq_blk_off;
    a.partial = f32(ws.partial);
    a.nblk = s.nblk, a.list_stride = ws.list_stride, a.slot_stride = ws.slot_stride;
    a.accumulate = dq_written ? 1 : 0;
    dq_written = true;
    group = "slc_bwd_dq";
    add_kernel([=] { return make_launch(find_family("slc_bwd_dq"), p, launch, cfg.slc_dq, a); });
    group = "slc_bwd_dkv";
    const int64_t items = s.nblk + cdiv(s.ntok * p.n, qchunk);
    add_kernel([=, &dkv_family] {
      return make_launch(dkv_family, p, launch, &dkv_config, a,
                         {grid_x(items, "slc_bwd_dkv"), static_cast<unsigned>(p.H), 1});
    });
    SlcReduceParams rp{};
    rp.partial = a.partial, rp.item_off = a.item_off, rp.slot_off = a.slot_off, rp.blk_seq = a.blk_seq;
    rp.seq_blk_off = a.seq_blk_off, rp.cu_seqlens = cu, rp.dk = dk, rp.dv = dv;
    rp.T = grid.T, rp.nblk = s.nblk, rp.slot_stride = ws.slot_stride, rp.H = p.H;
    group = "slc_bwd_reduce";
    add_kernel([=] {
      return make_launch(find_family("slc_bwd_reduce"), p, launch, nullptr, rp,
                         {grid_x(s.nblk, "slc_bwd_reduce"), static_cast<unsigned>(p.H), 1}, 256);
    });
  }

  if (s.win) {
    const TensorView k = or_default(t.k_win, t.k), v = or_default(t.v_win, t.v);
    float* dk = s.sep_win ? f32(ws.dk_win) : f32(ws.dk);
    float* dv = s.sep_win ? f32(ws.dv_win) : f32(ws.dv);
    AttnBwdParams a = attn_params(k, v, t.g_win, t.lse_win, 2, dk, dv);
    a.accumulate = dq_written ? 1 : 0;
    dq_written = true;
    group = "win_bwd_dq";
    add_kernel([=] { return make_launch(find_family("win_bwd_dq"), p, launch, cfg.win_dq, a); });
    group = "win_bwd_dkv";
    add_kernel([=] { return make_launch(find_family("win_bwd_dkv"), p, launch, cfg.win_dkv, a); });
  }

  if (!dq_written) {  // every branch off (g_win with w == 0 only): dq = 0
    group = "zero";
    add_memset(ws.dq, ws.dq + static_cast<size_t>(s.ntok) * p.HQ * p.dk * 4);
  }

  if (s.pool && s.ncmp > 0) {
    group = "pool_bwd";
    for (int kv = 0; kv < 2; ++kv) {
      PoolBwdParams pb{};
      pb.dx_cmp = f32(kv == 0 ? ws.dkc : ws.dvc);
      pb.dx = f32(kv == 0 ? ws.dk : ws.dv);
      pb.cu_seqlens = cu, pb.T = grid.T, pb.H = p.H, pb.dim = kv == 0 ? p.dk : p.dv, pb.l = p.l, pb.d = p.d;
      add_kernel([=] {
        return make_launch(find_family("pool_bwd"), p, launch, nullptr, pb,
                           {grid_x(cdiv(grid.T * p.H * (pb.dim / 4), 256), "pool_bwd"), 1,
                            static_cast<unsigned>(grid.B)},
                           256);
      });
    }
  }

  // The casts to the caller's tensors.
  group = "bwd_cast";
  auto cast = [&](size_t src, const TensorView& dst, int64_t rows_per_batch, int64_t rows, int heads, int dim) {
    if (dst.data == nullptr) return;
    BwdCastParams c{};
    c.src = f32(src), c.dst = const_cast<void*>(dst.data);
    c.dst_sb = dst.stride_b, c.dst_st = dst.stride_t, c.dst_sh = dst.stride_h;
    c.rows_per_batch = s.varlen ? 0 : rows_per_batch, c.rows = rows, c.heads = heads, c.dim = dim;
    add_kernel([=] {
      return make_launch(find_family("bwd_cast"), p, launch, nullptr, c,
                         {grid_x(cdiv(rows * heads * (dim / 8), 256), "bwd_cast"), 1, 1}, 256);
    });
  };
  cast(ws.dq, t.dq, p.T, s.ntok, p.HQ, p.dk);
  cast(ws.dk, t.dk, p.T, s.ntok, p.H, p.dk);
  cast(ws.dv, t.dv, p.T, s.ntok, p.H, p.dv);
  if (s.sep_slc) {
    cast(ws.dk_slc, t.dk_slc, p.T, s.ntok, p.H, p.dk);
    cast(ws.dv_slc, t.dv_slc, p.T, s.ntok, p.H, p.dv);
  }
  if (s.sep_win) {
    cast(ws.dk_win, t.dk_win, p.T, s.ntok, p.H, p.dk);
    cast(ws.dv_win, t.dv_win, p.T, s.ntok, p.H, p.dv);
  }
  if (s.given_cmp && s.ncmp > 0) {
    cast(ws.dkc, t.dk_cmp, num_cmp(p.T, p), s.ncmp, p.H, p.dk);
    cast(ws.dvc, t.dv_cmp, num_cmp(p.T, p), s.ncmp, p.H, p.dv);
  }
  return steps;
}

constexpr uintptr_t kScratchPlaceholder = uintptr_t{1} << 40;

}  // namespace

size_t backward_workspace_bytes(const Problem& problem, const BackwardTensors& tensors) {
  problem.validate();
  if (tensors.g_cmp == nullptr && tensors.g_slc == nullptr && tensors.g_win == nullptr)
    throw UsageError("backward: all three gates are null: give the gates the forward was given");
  return Workspace(problem, shape_of(problem, tensors)).total;
}

int64_t backward_cmp_rows(const Problem& problem, const BackwardTensors& tensors) {
  problem.validate();
  return shape_of(problem, tensors).ncmp;
}

size_t backward_workspace_bytes(const Problem& problem) {
  BackwardTensors t;
  int dummy = 0;
  t.g_cmp = t.g_slc = t.g_win = &dummy;
  return backward_workspace_bytes(problem, t);
}

void check_backward(const Problem& p, const BackwardTensors& t) {
  const Shape s = check_arguments(p, t);
  in_backward([&] {
    (void)plan(p, t, s, t.workspace ? reinterpret_cast<uintptr_t>(t.workspace) : kScratchPlaceholder, {}, false);
  });
}

static void run_steps(const std::vector<Step>& steps, size_t first, size_t last, CUstream stream) {
  for (size_t i = first; i < last; ++i) {
    const Step& st = steps[i];
    if (st.is_memset) {
      if (st.words > 0) check_cu(driver().cuMemsetD32Async_(st.ptr, 0u, st.words, stream), "cuMemsetD32Async");
    } else {
      st.launch.launch(stream);
    }
  }
}

std::vector<BackwardStage> backward_stages(const Problem& p, const BackwardTensors& t, const BackwardConfigs& configs) {
  if (t.workspace == nullptr) throw UsageError("backward_stages: needs a workspace");
  const Shape s = check_arguments(p, t);
  auto steps = std::make_shared<std::vector<Step>>(
      in_backward([&] { return plan(p, t, s, reinterpret_cast<uintptr_t>(t.workspace), configs, true); }));
  std::vector<BackwardStage> out;
  size_t i = 0;
  while (i < steps->size()) {
    size_t j = i;
    while (j < steps->size() && (*steps)[j].name == (*steps)[i].name) ++j;
    BackwardStage st;
    st.name = (*steps)[i].name;
    st.run = [steps, i, j](CUstream stream) { run_steps(*steps, i, j, stream); };
    out.push_back(std::move(st));
    i = j;
  }
  return out;
}

void backward(const Problem& p, const BackwardTensors& t, CUstream stream, const BackwardConfigs& configs) {
  const Shape s = check_arguments(p, t);
  in_backward([&] {
    (void)plan(p, t, s, t.workspace ? reinterpret_cast<uintptr_t>(t.workspace) : kScratchPlaceholder, configs, false);
  });
  const DeviceScope scope(t.q.data, "backward", "q");
  std::optional<DeviceBuffer> owned;
  uintptr_t scratch = reinterpret_cast<uintptr_t>(t.workspace);
  if (t.workspace == nullptr) {
    check_not_capturing(stream, "backward");
    owned.emplace(std::max<size_t>(Workspace(p, s).total, 256));
    scratch = static_cast<uintptr_t>(owned->ptr());
  }
  const std::vector<Step> steps = in_backward([&] { return plan(p, t, s, scratch, configs, true); });
  try {
    run_steps(steps, 0, steps.size(), stream);
  } catch (...) {
    if (owned) (void)driver().cuStreamSynchronize_(stream);
    throw;
  }
  if (owned) check_cu(driver().cuStreamSynchronize_(stream), "cuStreamSynchronize");
}

}  // namespace nsajit
