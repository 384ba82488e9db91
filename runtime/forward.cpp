#include "runtime/forward.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <vector>

#include "base/error.h"
#include "runtime/attn_fwd_api.h"
#include "runtime/device.h"
#include "runtime/driver.h"
#include "runtime/pool_api.h"
#include "runtime/select_api.h"
#include "runtime/slc_fwd_api.h"
#include "runtime/validate.h"

namespace nsajit {
namespace {

// Size arithmetic that refuses (rather than wraps) a problem too large for 64 bits: a wrapped size would let a
// too-small caller workspace through, or allocate a too-small one.
size_t mul(size_t a, size_t b) {
  size_t r = 0;
  if (__builtin_mul_overflow(a, b, &r))
    throw UsageError("forward: the scratch this problem needs overflows 64 bits: no device can hold it");
  return r;
}
size_t add(size_t a, size_t b) {
  size_t r = 0;
  if (__builtin_add_overflow(a, b, &r))
    throw UsageError("forward: the scratch this problem needs overflows 64 bits: no device can hold it");
  return r;
}
size_t align256(size_t n) { return add(n, 255) / 256 * 256; }

int64_t num_cmp(int64_t len, const Problem& p) { return len >= p.l ? (len - p.l) / p.d + 1 : 0; }

// Runs a branch's check or prepare step, saying that the refusal comes from inside forward.
template <class F>
auto in_forward(F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const UsageError& e) {
    throw UsageError(fmt::format("forward: {}", e.what()));
  }
}

BatchLayout batch_of(const ForwardTensors& t) {
  BatchLayout b;
  b.cu_seqlens = t.cu_seqlens, b.cu_seqlens_host = t.cu_seqlens_host;
  b.num_seqs = t.num_seqs, b.max_seqlen = t.max_seqlen;
  return b;
}

// Compressed blocks of the whole batch (varlen: summed over the sequences, or their upper bound). The problem is
// valid (B, T >= 1) and so is the batch layout.
size_t total_cmp_blocks(const Problem& p, const BatchLayout& batch) {
  if (!batch.varlen()) return mul(static_cast<size_t>(p.B), static_cast<size_t>(num_cmp(p.T, p)));
  return static_cast<size_t>(in_forward([&] { return batch_sums(p, batch).cmp_blocks; }));
}

// The scratch layout: lse_cmp, idx, cnt, k_cmp, v_cmp, slc_fwd's overlap plan, each 256-byte aligned.
struct Workspace {
  size_t lse = 0, idx = 0, cnt = 0, k_cmp = 0, v_cmp = 0, plan = 0, total = 0;
  Workspace(const Problem& p, size_t cmp_blocks) {
    const size_t rows = mul(static_cast<size_t>(p.B), static_cast<size_t>(p.T));
    const size_t H = static_cast<size_t>(p.H);
    lse = 0;
    idx = add(lse, align256(mul(mul(rows, static_cast<size_t>(p.HQ)), 4)));
    cnt = add(idx, align256(mul(mul(mul(rows, H), static_cast<size_t>(p.n)), 4)));
    k_cmp = add(cnt, align256(mul(mul(rows, H), 4)));
    v_cmp = add(k_cmp, align256(mul(mul(mul(cmp_blocks, H), static_cast<size_t>(p.dk)), 2)));
    plan = add(v_cmp, align256(mul(mul(mul(cmp_blocks, H), static_cast<size_t>(p.dv)), 2)));
    total = add(plan, align256(mul(static_cast<size_t>(overlap_spans(static_cast<int64_t>(rows))), H)));
  }
};

TensorView or_default(const TensorView& t, const TensorView& fallback) { return t.data ? t : fallback; }
const char* name_or(const TensorView& t, const char* name, const char* fallback) { return t.data ? name : fallback; }

// The branch launches of one call, in order, with their arguments.
struct Plan {
  std::optional<PoolArgs> pool_k, pool_v;
  std::optional<AttnFwdArgs> cmp;
  std::optional<SelectArgs> select;
  std::optional<SlcFwdArgs> slc;
  std::optional<AttnFwdArgs> win;
};

// What a call needs, from its arguments alone.
struct Needs {
  bool varlen = false, selection = false, cmp = false, slc = false, win = false, pool = false;
  size_t cmp_blocks = 0;
};

// Every check that names the caller's own arguments (k_win, g_slc, lse_stride_t, ...), before any branch is
// looked at. No driver call.
Needs check_arguments(const Problem& p, const ForwardTensors& t) {
  p.validate();
  Needs n;
  if (t.g_cmp == nullptr && t.g_slc == nullptr && t.g_win == nullptr)
    throw UsageError("forward: all three gates are null: give at least one of g_cmp, g_slc, g_win");
  n.varlen = t.cu_seqlens != nullptr;
  // The sequence count and the offsets first: everything below may depend on them.
  const BatchLayout batch = batch_of(t);
  check_batch("forward", p, batch, true);
  if ((t.idx == nullptr) != (t.cnt == nullptr)) throw UsageError("forward: give both idx and cnt, or neither");
  if ((t.k_cmp.data == nullptr) != (t.v_cmp.data == nullptr))
    throw UsageError("forward: give both k_cmp and v_cmp, or neither (then they are the mean pool of k and v)");
  n.slc = t.g_slc != nullptr || t.o_slc.data != nullptr || t.lse_slc != nullptr;
  // The selected branch reads the selection: asking for o_slc or lse_slc alone (g_slc null, no idx) selects too
  // (the fuzz test found the selected branch reading a selection this call never wrote).
  n.selection = n.slc || t.idx != nullptr;
  n.cmp = t.g_cmp != nullptr || n.selection || t.o_cmp.data != nullptr || t.lse_cmp != nullptr;
  n.win = t.g_win != nullptr || t.o_win.data != nullptr || t.lse_win != nullptr;
  n.pool = n.cmp && t.k_cmp.data == nullptr;
  // The problem shapes each running branch supports, before any size is computed from them.
  in_forward([&] {
    if (n.pool) find_family("pool").check_problem(p);
    if (n.cmp) find_family("cmp_fwd").check_problem(p);
    if (n.selection) find_family("select").check_problem(p);
    if (n.slc) find_family("slc_fwd").check_problem(p);
    if (n.win) find_family("win_fwd").check_problem(p);
  });
  n.cmp_blocks = total_cmp_blocks(p, batch);

  const bool v = n.varlen;
  check_view("forward", "q", t.q, v);
  if (n.pool) {
    check_view("forward", "k", t.k, v);
    check_view("forward", "v", t.v, v);
  } else if (n.cmp) {
    check_view("forward", "k_cmp", t.k_cmp, v);
    check_view("forward", "v_cmp", t.v_cmp, v);
  }
  if (n.slc) {
    check_view("forward", name_or(t.k_slc, "k_slc", "k"), or_default(t.k_slc, t.k), v);
    check_view("forward", name_or(t.v_slc, "v_slc", "v"), or_default(t.v_slc, t.v), v);
  }
  if (n.win) {
    check_view("forward", name_or(t.k_win, "k_win", "k"), or_default(t.k_win, t.k), v);
    check_view("forward", name_or(t.v_win, "v_win", "v"), or_default(t.v_win, t.v), v);
  }
  check_view("forward", "o", t.o, v);
  if (t.o_cmp.data != nullptr) check_view("forward", "o_cmp", t.o_cmp, v);
  if (t.o_slc.data != nullptr) check_view("forward", "o_slc", t.o_slc, v);
  if (t.o_win.data != nullptr) check_view("forward", "o_win", t.o_win, v);
  check_aligned("forward", "g_cmp", t.g_cmp, 2);
  check_aligned("forward", "g_slc", t.g_slc, 2);
  check_aligned("forward", "g_win", t.g_win, 2);
  if ((!v && t.gate_stride_b < 0) || t.gate_stride_t < 0 || t.gate_stride_h < 0)
    throw UsageError(fmt::format("forward: gate_stride_b = {}, gate_stride_t = {} and gate_stride_h = {} must be "
                                 "non-negative (gate_stride_h 0 means 1)",
                                 t.gate_stride_b, t.gate_stride_t, t.gate_stride_h));
  check_aligned("forward", "lse_cmp", t.lse_cmp, 4);
  check_aligned("forward", "lse_slc", t.lse_slc, 4);
  check_aligned("forward", "lse_win", t.lse_win, 4);
  const bool any_lse = t.lse_cmp != nullptr || t.lse_slc != nullptr || t.lse_win != nullptr;
  if (any_lse && ((!v && t.lse_stride_b < 0) || t.lse_stride_t < 0))
    throw UsageError(fmt::format("forward: lse_stride_b = {} and lse_stride_t = {} must be non-negative",
                                 t.lse_stride_b, t.lse_stride_t));
  check_aligned("forward", "idx", t.idx, 4);
  check_aligned("forward", "cnt", t.cnt, 4);
  if (t.workspace != nullptr) {
    if (reinterpret_cast<uintptr_t>(t.workspace) % 256 != 0)
      throw UsageError("forward: workspace is not 256-byte aligned");
    const size_t need = Workspace(p, n.cmp_blocks).total;
    if (t.workspace_bytes < need)
      throw UsageError(
          fmt::format("forward: workspace of {} bytes is too small: this call needs {}", t.workspace_bytes, need));
  }
  return n;
}

// The branch arguments, with the scratch (what the caller did not give) at `scratch`.
Plan make_plan(const Problem& p, const ForwardTensors& t, const Needs& n, uintptr_t scratch) {
  const Workspace ws(p, n.cmp_blocks);
  auto at = [&](size_t offset) { return reinterpret_cast<void*>(scratch + offset); };
  const int64_t lse_sb = t.lse_cmp ? t.lse_stride_b : p.T * p.HQ, lse_st = t.lse_cmp ? t.lse_stride_t : p.HQ;
  float* lse_cmp = t.lse_cmp ? t.lse_cmp : static_cast<float*>(at(ws.lse));
  int32_t* idx = t.idx ? t.idx : static_cast<int32_t*>(at(ws.idx));
  int32_t* cnt = t.cnt ? t.cnt : static_cast<int32_t*>(at(ws.cnt));
  Plan plan;

  // Compressed keys: given, or the mean pool of k and v.
  TensorView k_cmp = t.k_cmp, v_cmp = t.v_cmp;
  if (n.pool) {
    const int64_t per_batch = n.varlen ? 0 : num_cmp(p.T, p);
    k_cmp = {at(ws.k_cmp), per_batch * p.H * p.dk, static_cast<int64_t>(p.H) * p.dk, p.dk};
    v_cmp = {at(ws.v_cmp), per_batch * p.H * p.dv, static_cast<int64_t>(p.H) * p.dv, p.dv};
    if (n.cmp_blocks > 0) {
      PoolArgs a;
      a.cu_seqlens = t.cu_seqlens, a.cu_seqlens_host = t.cu_seqlens_host;
      a.num_seqs = t.num_seqs, a.max_seqlen = t.max_seqlen;
      a.x = t.k, a.y = k_cmp, a.dim = p.dk;
      plan.pool_k = a;
      a.x = t.v, a.y = v_cmp, a.dim = p.dv;
      plan.pool_v = a;
    }
  }

  bool written = false;  // whether a branch has written o yet (the next ones accumulate)
  if (n.cmp) {
    AttnFwdArgs a;
    a.q = t.q, a.k = k_cmp, a.v = v_cmp, a.o = t.o_cmp;
    a.lse = lse_cmp, a.lse_stride_b = lse_sb, a.lse_stride_t = lse_st;
    if (t.g_cmp) {
      a.gate = t.g_cmp, a.gate_stride_b = t.gate_stride_b, a.gate_stride_t = t.gate_stride_t;
      a.gate_stride_h = t.gate_stride_h;
      a.out = t.o, a.accumulate = false;
      written = true;
    }
    a.cu_seqlens = t.cu_seqlens, a.cu_seqlens_host = t.cu_seqlens_host;
    a.num_seqs = t.num_seqs, a.max_seqlen = t.max_seqlen;
    plan.cmp = a;
  }
  if (n.selection) {
    SelectArgs a;
    a.q = t.q, a.k_cmp = k_cmp;
    a.lse_cmp = lse_cmp, a.lse_stride_b = lse_sb, a.lse_stride_t = lse_st;
    a.idx = idx, a.cnt = cnt;
    a.cu_seqlens = t.cu_seqlens, a.cu_seqlens_host = t.cu_seqlens_host;
    a.num_seqs = t.num_seqs, a.max_seqlen = t.max_seqlen;
    plan.select = a;
  }
  if (n.slc) {
    SlcFwdArgs a;
    a.q = t.q, a.k = or_default(t.k_slc, t.k), a.v = or_default(t.v_slc, t.v), a.o_slc = t.o_slc;
    a.lse = t.lse_slc, a.lse_stride_b = t.lse_stride_b, a.lse_stride_t = t.lse_stride_t;
    a.idx = idx, a.cnt = cnt;
    a.plan = static_cast<uint8_t*>(at(ws.plan)), a.plan_bytes = ws.total - ws.plan;
    if (t.g_slc) {
      a.gate = t.g_slc, a.gate_stride_b = t.gate_stride_b, a.gate_stride_t = t.gate_stride_t;
      a.gate_stride_h = t.gate_stride_h;
      a.out = t.o, a.accumulate = written;
      written = true;
    }
    a.cu_seqlens = t.cu_seqlens, a.cu_seqlens_host = t.cu_seqlens_host;
    a.num_seqs = t.num_seqs, a.max_seqlen = t.max_seqlen;
    plan.slc = a;
  }
  if (n.win) {
    AttnFwdArgs a;
    a.q = t.q, a.k = or_default(t.k_win, t.k), a.v = or_default(t.v_win, t.v), a.o = t.o_win;
    a.lse = t.lse_win, a.lse_stride_b = t.lse_stride_b, a.lse_stride_t = t.lse_stride_t;
    if (t.g_win) {
      a.gate = t.g_win, a.gate_stride_b = t.gate_stride_b, a.gate_stride_t = t.gate_stride_t;
      a.gate_stride_h = t.gate_stride_h;
      a.out = t.o, a.accumulate = written;
    }
    a.cu_seqlens = t.cu_seqlens, a.cu_seqlens_host = t.cu_seqlens_host;
    a.num_seqs = t.num_seqs, a.max_seqlen = t.max_seqlen;
    plan.win = a;
  }
  return plan;
}

// Every branch's own checks (problem support, a grid limit, ...), before anything is allocated or launched.
void check_plan(const Problem& p, const Plan& plan) {
  in_forward([&] {
    if (plan.pool_k) check_mean_pool(p, *plan.pool_k);
    if (plan.pool_v) check_mean_pool(p, *plan.pool_v);
    if (plan.cmp) check_cmp_fwd(p, *plan.cmp);
    if (plan.select) check_select_blocks(p, *plan.select);
    if (plan.slc) check_slc_fwd(p, *plan.slc);
    if (plan.win) check_win_fwd(p, *plan.win);
  });
}

// An address for checking the plan before the scratch exists: 256-byte aligned, never dereferenced.
constexpr uintptr_t kScratchPlaceholder = uintptr_t{1} << 40;

Needs check_all(const Problem& p, const ForwardTensors& t) {
  const Needs n = check_arguments(p, t);
  check_plan(p, make_plan(p, t, n, t.workspace ? reinterpret_cast<uintptr_t>(t.workspace) : kScratchPlaceholder));
  return n;
}

}  // namespace

size_t forward_workspace_bytes(const Problem& problem) {
  problem.validate();
  check_batch("forward", problem, nullptr, {}, true);
  return Workspace(problem, total_cmp_blocks(problem, BatchLayout{})).total;
}

void check_forward(const Problem& p, const ForwardTensors& t) { check_all(p, t); }

void forward(const Problem& p, const ForwardTensors& t, CUstream stream) {
  // 1. Every check of every branch: a refusal has touched nothing.
  const Needs n = check_all(p, t);
  // 2. The context, the scratch, every tile config and every kernel: a failure here (no GPU, a compile error, a
  //    config that does not fit) has launched nothing either.
  const DeviceScope scope(t.q.data, "forward", "q");
  std::optional<DeviceBuffer> owned;
  uintptr_t scratch = reinterpret_cast<uintptr_t>(t.workspace);
  if (t.workspace == nullptr) {
    check_not_capturing(stream, "forward");
    owned.emplace(Workspace(p, n.cmp_blocks).total);
    scratch = static_cast<uintptr_t>(owned->ptr());
  }
  const Plan plan = make_plan(p, t, n, scratch);
  std::vector<PreparedLaunch> launches;
  in_forward([&] {
    if (plan.pool_k) launches.push_back(prepare_mean_pool(p, *plan.pool_k));
    if (plan.pool_v) launches.push_back(prepare_mean_pool(p, *plan.pool_v));
    if (plan.cmp) launches.push_back(prepare_cmp_fwd(p, *plan.cmp));
    if (plan.select) launches.push_back(prepare_select_blocks(p, *plan.select));
    if (plan.slc)
      for (PreparedLaunch& l : prepare_slc_fwd(p, *plan.slc)) launches.push_back(l);
    if (plan.win) launches.push_back(prepare_win_fwd(p, *plan.win));
  });
  // 3. The launches. Our own scratch is freed only once the stream is done with it, whatever happens.
  try {
    for (const PreparedLaunch& l : launches) l.launch(stream);
  } catch (...) {
    if (owned) (void)driver().cuStreamSynchronize_(stream);
    throw;
  }
  if (owned) check_cu(driver().cuStreamSynchronize_(stream), "cuStreamSynchronize");
}

}  // namespace nsajit
