#include "tuner/select_gate.h"

#include <fmt/format.h>

#include <cmath>

#include "runtime/driver.h"
#include "templates/selection_rule.h"
#include "tuner/inputs.h"

namespace nsajit {

std::vector<int64_t> differing_selection_rows(const int32_t* idx, const int32_t* cnt, const int32_t* ref_idx,
                                              const int32_t* ref_cnt, int64_t rows, int n) {
  std::vector<int64_t> out;
  for (int64_t r = 0; r < rows; ++r) {
    bool same = cnt[r] == ref_cnt[r];
    for (int m = 0; m < n && same; ++m) same = idx[r * n + m] == ref_idx[r * n + m];
    if (!same) out.push_back(r);
  }
  return out;
}

std::vector<double> selection_row_scores(const Problem& p, int64_t t, const float* q, const float* k_cmp,
                                         const float* lse) {
  const int64_t jt = t / p.lsel;
  const int64_t vis = t + 1 >= p.l ? (t + 1 - p.l) / p.d + 1 : 0;
  const double scale = p.softmax_scale();
  std::vector<double> score(static_cast<size_t>(jt + 1), 0.0);
  for (int g = 0; g < p.G(); ++g) {
    if (std::isinf(lse[g])) continue;  // no visible block: p_cmp is empty
    const float* qr = q + static_cast<int64_t>(g) * p.dk;
    for (int64_t i = 0; i < vis; ++i) {
      const float* kr = k_cmp + i * p.dk;
      double dot = 0;
      for (int c = 0; c < p.dk; ++c) dot += static_cast<double>(qr[c]) * kr[c];
      const double pc = std::exp(dot * scale - static_cast<double>(lse[g]));
      // Eq. 9: compressed block i covers tokens [i d, i d + l); selection block j gets |overlap| / d of it.
      const int64_t lo = i * p.d, hi = lo + p.l;
      for (int64_t j = lo / p.lsel; j * p.lsel < hi && j <= jt; ++j) {
        const int64_t a = std::max(lo, j * p.lsel), b = std::min(hi, (j + 1) * p.lsel);
        score[static_cast<size_t>(j)] += static_cast<double>(b - a) / p.d * pc;
      }
    }
  }
  return score;
}

SelectionVerdict judge_selection(const Problem& p, const std::vector<int64_t>& rows, const int32_t* idx,
                                 const int32_t* cnt, const int32_t* ref_idx, const int32_t* ref_cnt,
                                 const std::function<std::vector<double>(int64_t row)>& scores) {
  SelectionVerdict v;
  v.differing_rows = static_cast<int64_t>(rows.size());
  if (v.differing_rows > kMaxScoredSelectionRows) {
    v.wrong = fmt::format("{} rows (position, KV head) differ from the trusted selection: more than the {} whose "
                          "scores the gate computes to accept near ties",
                          v.differing_rows, kMaxScoredSelectionRows);
    return v;
  }
  for (int64_t r : rows) {
    const int64_t t = (r / p.H) % p.T, kvh = r % p.H;
    const std::vector<double> s = scores(r);
    const nsa_rule::RowVerdict rv =
        nsa_rule::judge_row(t, idx + r * p.n, cnt[r], ref_idx + r * p.n, ref_cnt[r], s.data(), p.lsel, p.n);
    if (!rv.error.empty()) {
      v.wrong = fmt::format("b={} t={} kv_head={}: {}", r / (static_cast<int64_t>(p.T) * p.H), t, kvh, rv.error);
      return v;
    }
    v.near_tie_swaps += rv.swaps;
  }
  return v;
}

std::string describe_near_ties(const SelectionVerdict& v) {
  if (v.differing_rows == 0) return {};
  return fmt::format("{} near-tie swap{} accepted in {} row{} (idx differs from the default config's there; each "
                     "swap is between blocks whose float64 scores differ by at most 1e-3 of the row's top score)",
                     v.near_tie_swaps, v.near_tie_swaps == 1 ? "" : "s", v.differing_rows,
                     v.differing_rows == 1 ? "" : "s");
}

namespace {

template <class T>
std::vector<T> download(const void* device, size_t n, size_t offset = 0) {
  std::vector<T> h(n);
  if (n > 0)
    check_cu(driver().cuMemcpyDtoH_(h.data(), reinterpret_cast<CUdeviceptr>(device) + offset * sizeof(T), n * sizeof(T)),
             "cuMemcpyDtoH");
  return h;
}

}  // namespace

SelectGate::SelectGate(const Problem& p, const void* q, const void* k_cmp, const float* lse, const int32_t* ref_idx,
                       const int32_t* ref_cnt)
    : p_(p), q_(q), k_cmp_(k_cmp), lse_(lse), ref_idx_(ref_idx), ref_cnt_(ref_cnt) {}

SelectionVerdict SelectGate::judge(const int32_t* idx, const int32_t* cnt, uint64_t differing_entries) {
  if (differing_entries == 0) return {};
  const int64_t rows = p_.B * p_.T * p_.H;
  const size_t nidx = static_cast<size_t>(rows * p_.n);
  if (ref_idx_host_.empty()) ref_idx_host_ = download<int32_t>(ref_idx_, nidx);
  if (ref_cnt_host_.empty()) ref_cnt_host_ = download<int32_t>(ref_cnt_, static_cast<size_t>(rows));
  const std::vector<int32_t> hi = download<int32_t>(idx, nidx), hc = download<int32_t>(cnt, static_cast<size_t>(rows));
  const std::vector<int64_t> diff =
      differing_selection_rows(hi.data(), hc.data(), ref_idx_host_.data(), ref_cnt_host_.data(), rows, p_.n);
  return judge_selection(p_, diff, hi.data(), hc.data(), ref_idx_host_.data(), ref_cnt_host_.data(),
                         [&](int64_t r) { return row_scores(r); });
}

std::vector<double> SelectGate::row_scores(int64_t r) {
  const Problem& p = p_;
  const int64_t nc = p.T >= p.l ? (p.T - p.l) / p.d + 1 : 0, G = p.G();
  const int64_t bt = r / p.H, kvh = r % p.H, b = bt / p.T;
  if (k_cmp_host_.empty()) {  // [B, Nc, H, dk], once
    const std::vector<uint16_t> bits = download<uint16_t>(k_cmp_, static_cast<size_t>(p.B * nc * p.H * p.dk));
    k_cmp_host_.resize(bits.size());
    for (size_t i = 0; i < bits.size(); ++i) k_cmp_host_[i] = bits_to_float(bits[i], p.dtype);
  }
  // The head's compressed keys, one row after another.
  std::vector<float> k(static_cast<size_t>(nc * p.dk));
  for (int64_t i = 0; i < nc; ++i)
    std::copy_n(&k_cmp_host_[static_cast<size_t>(((b * nc + i) * p.H + kvh) * p.dk)], p.dk,
                &k[static_cast<size_t>(i * p.dk)]);
  // The group's G query rows and lse values are contiguous: heads kvh * G .. kvh * G + G - 1 of token bt.
  const std::vector<uint16_t> qbits =
      download<uint16_t>(q_, static_cast<size_t>(G * p.dk), static_cast<size_t>((bt * p.HQ + kvh * G) * p.dk));
  std::vector<float> q(qbits.size());
  for (size_t i = 0; i < qbits.size(); ++i) q[i] = bits_to_float(qbits[i], p.dtype);
  const std::vector<float> lse = download<float>(lse_, static_cast<size_t>(G), static_cast<size_t>(bt * p.HQ + kvh * G));
  return selection_row_scores(p, bt % p.T, q.data(), k.data(), lse.data());
}

}  // namespace nsajit
