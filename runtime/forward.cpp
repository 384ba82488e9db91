#include "runtime/forward.h"

#include <fmt/format.h>

#include <algorithm>
#include <optional>

#include "runtime/attn_fwd_api.h"
#include "runtime/device.h"
#include "runtime/driver.h"
#include "runtime/error.h"
#include "runtime/validate.h"
#include "runtime/pool_api.h"
#include "runtime/select_api.h"
#include "runtime/slc_fwd_api.h"

namespace nsajit {
namespace {

size_t align256(size_t n) { return (n + 255) / 256 * 256; }

int64_t num_cmp(int64_t len, const Problem& p) { return len >= p.l ? (len - p.l) / p.d + 1 : 0; }

// Compressed blocks of the whole batch (varlen: summed over the sequences).
int64_t total_cmp_blocks(const Problem& p, std::span<const int32_t> cu) {
  if (cu.empty()) return p.B * num_cmp(p.T, p);
  int64_t n = 0;
  for (size_t i = 0; i + 1 < cu.size(); ++i) n += num_cmp(cu[i + 1] - cu[i], p);
  return n;
}

// The scratch layout: lse_cmp, idx, cnt, k_cmp, v_cmp, each 256-byte aligned.
struct Workspace {
  size_t lse = 0, idx = 0, cnt = 0, k_cmp = 0, v_cmp = 0, total = 0;
  Workspace(const Problem& p, int64_t cmp_blocks) {
    const size_t rows = static_cast<size_t>(p.B * p.T);
    lse = 0;
    idx = lse + align256(rows * p.HQ * 4);
    cnt = idx + align256(rows * p.H * p.n * 4);
    k_cmp = cnt + align256(rows * p.H * 4);
    v_cmp = k_cmp + align256(static_cast<size_t>(cmp_blocks) * p.H * p.dk * 2);
    total = v_cmp + align256(static_cast<size_t>(cmp_blocks) * p.H * p.dv * 2);
  }
};

TensorView or_default(const TensorView& t, const TensorView& fallback) { return t.data ? t : fallback; }

}  // namespace

size_t forward_workspace_bytes(const Problem& problem) {
  problem.validate();
  return Workspace(problem, total_cmp_blocks(problem, {})).total;
}

void forward(const Problem& p, const ForwardTensors& t, CUstream stream) {
  p.validate();
  if (t.g_cmp == nullptr && t.g_slc == nullptr && t.g_win == nullptr)
    throw UsageError("forward: all three gates are null: give at least one of g_cmp, g_slc, g_win");
  if (t.o.data == nullptr) throw UsageError("forward: o is a null pointer");
  const bool varlen = t.cu_seqlens != nullptr;
  if (varlen) {
    if (p.B != 1) throw UsageError(fmt::format("forward: varlen needs B = 1 (got B = {})", p.B));
    check_cu_seqlens("forward", t.cu_seqlens_host, p.T);
  }
  const int64_t cmp_blocks = total_cmp_blocks(p, varlen ? t.cu_seqlens_host : std::span<const int32_t>{});
  const Workspace ws(p, cmp_blocks);
  // The variable-length case needs its own (larger or smaller) layout: forward_workspace_bytes is for B x T.
  std::optional<DeviceBuffer> owned;
  char* scratch = static_cast<char*>(t.workspace);
  if (scratch == nullptr) {
    owned.emplace(ws.total);
    scratch = static_cast<char*>(owned->get());
  } else {
    if (reinterpret_cast<uintptr_t>(scratch) % 256 != 0) throw UsageError("forward: workspace is not 256-byte aligned");
    if (t.workspace_bytes < ws.total)
      throw UsageError(fmt::format("forward: workspace of {} bytes is too small: this call needs {}", t.workspace_bytes,
                                   ws.total));
  }

  const bool need_selection = t.g_slc != nullptr || t.idx != nullptr;
  const bool need_cmp = t.g_cmp != nullptr || need_selection || t.o_cmp.data != nullptr || t.lse_cmp != nullptr;
  const int64_t lse_sb = t.lse_cmp ? t.lse_stride_b : p.T * p.HQ, lse_st = t.lse_cmp ? t.lse_stride_t : p.HQ;
  float* lse_cmp = t.lse_cmp ? t.lse_cmp : reinterpret_cast<float*>(scratch + ws.lse);
  int32_t* idx = t.idx ? t.idx : reinterpret_cast<int32_t*>(scratch + ws.idx);
  int32_t* cnt = t.cnt ? t.cnt : reinterpret_cast<int32_t*>(scratch + ws.cnt);
  if ((t.idx == nullptr) != (t.cnt == nullptr)) throw UsageError("forward: give both idx and cnt, or neither");

  // Compressed keys: given, or the mean pool of k and v.
  TensorView k_cmp = t.k_cmp, v_cmp = t.v_cmp;
  if ((k_cmp.data == nullptr) != (v_cmp.data == nullptr))
    throw UsageError("forward: give both k_cmp and v_cmp, or neither (then they are the mean pool of k and v)");
  if (need_cmp && k_cmp.data == nullptr) {
    const int64_t per_batch = varlen ? 0 : num_cmp(p.T, p);
    k_cmp = {scratch + ws.k_cmp, per_batch * p.H * p.dk, static_cast<int64_t>(p.H) * p.dk, p.dk};
    v_cmp = {scratch + ws.v_cmp, per_batch * p.H * p.dv, static_cast<int64_t>(p.H) * p.dv, p.dv};
    if (cmp_blocks > 0) {
      for (auto [src, dst, dim] : {std::tuple{t.k, k_cmp, p.dk}, std::tuple{t.v, v_cmp, p.dv}}) {
        PoolArgs a;
        a.x = src, a.y = dst, a.dim = dim;
        a.cu_seqlens = t.cu_seqlens, a.cu_seqlens_host = t.cu_seqlens_host;
        mean_pool(p, a, stream);
      }
    }
  }

  bool written = false;  // whether a branch has written o yet (the next ones accumulate)
  if (need_cmp) {
    AttnFwdArgs a;
    a.q = t.q, a.k = k_cmp, a.v = v_cmp, a.o = t.o_cmp;
    a.lse = lse_cmp, a.lse_stride_b = lse_sb, a.lse_stride_t = lse_st;
    if (t.g_cmp) {
      a.gate = t.g_cmp, a.gate_stride_b = t.gate_stride_b, a.gate_stride_t = t.gate_stride_t;
      a.out = t.o, a.accumulate = false;
      written = true;
    }
    a.cu_seqlens = t.cu_seqlens, a.cu_seqlens_host = t.cu_seqlens_host;
    cmp_fwd(p, a, stream);
  }
  if (need_selection) {
    SelectArgs a;
    a.q = t.q, a.k_cmp = k_cmp;
    a.lse_cmp = lse_cmp, a.lse_stride_b = lse_sb, a.lse_stride_t = lse_st;
    a.idx = idx, a.cnt = cnt;
    a.cu_seqlens = t.cu_seqlens, a.cu_seqlens_host = t.cu_seqlens_host;
    select_blocks(p, a, stream);
  }
  if (t.g_slc != nullptr || t.o_slc.data != nullptr || t.lse_slc != nullptr) {
    SlcFwdArgs a;
    a.q = t.q, a.k = or_default(t.k_slc, t.k), a.v = or_default(t.v_slc, t.v), a.o_slc = t.o_slc;
    a.lse = t.lse_slc, a.lse_stride_b = t.lse_stride_b, a.lse_stride_t = t.lse_stride_t;
    a.idx = idx, a.cnt = cnt;
    if (t.g_slc) {
      a.gate = t.g_slc, a.gate_stride_b = t.gate_stride_b, a.gate_stride_t = t.gate_stride_t;
      a.out = t.o, a.accumulate = written;
      written = true;
    }
    a.cu_seqlens = t.cu_seqlens, a.cu_seqlens_host = t.cu_seqlens_host;
    slc_fwd(p, a, stream);
  }
  if (t.g_win != nullptr || t.o_win.data != nullptr || t.lse_win != nullptr) {
    AttnFwdArgs a;
    a.q = t.q, a.k = or_default(t.k_win, t.k), a.v = or_default(t.v_win, t.v), a.o = t.o_win;
    a.lse = t.lse_win, a.lse_stride_b = t.lse_stride_b, a.lse_stride_t = t.lse_stride_t;
    if (t.g_win) {
      a.gate = t.g_win, a.gate_stride_b = t.gate_stride_b, a.gate_stride_t = t.gate_stride_t;
      a.out = t.o, a.accumulate = written;
    }
    a.cu_seqlens = t.cu_seqlens, a.cu_seqlens_host = t.cu_seqlens_host;
    win_fwd(p, a, stream);
  }
  if (owned) check_cu(driver().cuStreamSynchronize_(stream), "cuStreamSynchronize");
}

}  // namespace nsajit
