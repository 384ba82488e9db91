#include "runtime/validate.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>

#include "base/error.h"

namespace nsajit {

void check_view(const char* who, const char* name, const TensorView& t, bool varlen) {
  if (t.data == nullptr) throw UsageError(fmt::format("{}: {} is a null pointer", who, name));
  if (reinterpret_cast<uintptr_t>(t.data) % 16 != 0)
    throw UsageError(fmt::format("{}: {} is not 16-byte aligned (the kernels copy 16-byte chunks)", who, name));
  const int64_t strides[] = {t.stride_b, t.stride_t, t.stride_h};
  const char* names[] = {"batch", "sequence", "head"};
  for (int i = varlen ? 1 : 0; i < 3; ++i) {
    if (strides[i] < 0 || strides[i] % 8 != 0)
      throw UsageError(fmt::format("{}: {}'s {} stride {} must be a non-negative multiple of 8 elements (16 bytes)",
                                   who, name, names[i], strides[i]));
  }
}

void check_row_strides(const char* who, const char* name, int64_t stride_b, int64_t stride_t, bool varlen) {
  if ((!varlen && stride_b < 0) || stride_t < 0)
    throw UsageError(fmt::format("{}: {}'s batch and sequence strides ({}, {}) must be non-negative", who, name,
                                 stride_b, stride_t));
}

int64_t gate_head_stride(const char* who, const char* name, int64_t stride_h) {
  if (stride_h < 0)
    throw UsageError(fmt::format("{}: {}'s head stride {} must be non-negative (0 means 1, a contiguous gate)", who,
                                 name, stride_h));
  return stride_h == 0 ? 1 : stride_h;
}

void check_aligned(const char* who, const char* name, const void* p, size_t alignment) {
  if (p != nullptr && reinterpret_cast<uintptr_t>(p) % alignment != 0)
    throw UsageError(fmt::format("{}: {} is not {}-byte aligned", who, name, alignment));
}

void check_gated_out(const char* who, const void* gate, int64_t gate_stride_b, int64_t gate_stride_t,
                     int64_t gate_stride_h, const TensorView& out, bool accumulate, bool varlen) {
  const bool gated = gate != nullptr;
  if (out.data != nullptr && !gated)
    throw UsageError(fmt::format("{}: out is given without gate (the gated epilogue needs both)", who));
  if (accumulate && !gated)
    throw UsageError(fmt::format("{}: accumulate is set but no gate and out are given", who));
  if (!gated) return;
  if (out.data == nullptr)
    throw UsageError(fmt::format("{}: gate is given without out (the gated epilogue needs both)", who));
  check_view(who, "out", out, varlen);
  check_aligned(who, "gate", gate, 2);
  check_row_strides(who, "gate", gate_stride_b, gate_stride_t, varlen);
  gate_head_stride(who, "gate", gate_stride_h);
}

int64_t check_cu_seqlens(const char* who, std::span<const int32_t> cu, int64_t total) {
  if (cu.size() < 2)
    throw UsageError(fmt::format("{}: cu_seqlens_host must hold N + 1 >= 2 offsets (the device copy's values)", who));
  if (cu[0] != 0) throw UsageError(fmt::format("{}: cu_seqlens[0] = {} must be 0", who, cu[0]));
  int64_t longest = 0;
  for (size_t i = 1; i < cu.size(); ++i) {
    if (cu[i] < cu[i - 1])
      throw UsageError(fmt::format("{}: cu_seqlens is not non-decreasing: cu_seqlens[{}] = {} < cu_seqlens[{}] = {}",
                                   who, i, cu[i], i - 1, cu[i - 1]));
    longest = std::max<int64_t>(longest, cu[i] - cu[i - 1]);
  }
  if (cu.back() != total)
    throw UsageError(fmt::format("{}: cu_seqlens ends at {} but T = {} tokens", who, cu.back(), total));
  return longest;
}

GridShape check_batch(const char* who, const Problem& p, const int32_t* cu_seqlens,
                      std::span<const int32_t> cu_seqlens_host, bool heads_in_grid) {
  BatchLayout batch;
  batch.cu_seqlens = cu_seqlens, batch.cu_seqlens_host = cu_seqlens_host;
  return check_batch(who, p, batch, heads_in_grid);
}

GridShape check_batch(const char* who, const Problem& p, const BatchLayout& batch, bool heads_in_grid) {
  GridShape g{p.B, p.T};
  const std::span<const int32_t> host = batch.cu_seqlens_host;
  if (batch.cu_seqlens != nullptr) {
    if (p.B != 1) throw UsageError(fmt::format("{}: varlen needs B = 1 (got B = {})", who, p.B));
    if (!host.empty()) {
      if (batch.max_seqlen != 0 || batch.num_seqs != 0)
        throw UsageError(fmt::format("{}: varlen: give either cu_seqlens_host or num_seqs = {} and max_seqlen = {}, "
                                     "not both",
                                     who, batch.num_seqs, batch.max_seqlen));
      if (host.size() > static_cast<size_t>(kMaxGridYZ) + 1)
        throw UsageError(fmt::format("{}: cu_seqlens holds {} sequences: at most {} (the grid's z dimension)", who,
                                     host.size() - 1, kMaxGridYZ));
      g.T = std::max<int64_t>(check_cu_seqlens(who, host, p.T), 1);
      g.B = static_cast<int64_t>(host.size()) - 1;
    } else {
      if (batch.max_seqlen == 0)
        throw UsageError(fmt::format("{}: varlen: cu_seqlens_host is empty and max_seqlen is 0: give the host offsets, "
                                     "or num_seqs and max_seqlen",
                                     who));
      if (batch.max_seqlen < 0 || batch.max_seqlen > (int64_t{1} << 31) - 1)
        throw UsageError(fmt::format("{}: varlen: max_seqlen = {} must be in 1 .. 2^31 - 1", who, batch.max_seqlen));
      if (batch.num_seqs < 1)
        throw UsageError(fmt::format("{}: varlen: num_seqs = {} must be >= 1", who, batch.num_seqs));
      if (batch.num_seqs > kMaxGridYZ)
        throw UsageError(fmt::format("{}: varlen: num_seqs = {} sequences: at most {} (the grid's z dimension)", who,
                                     batch.num_seqs, kMaxGridYZ));
      const int64_t longest = std::min(batch.max_seqlen, p.T);
      if (p.T > batch.num_seqs * longest)
        throw UsageError(fmt::format("{}: varlen: T = {} tokens do not fit num_seqs = {} sequences of at most "
                                     "max_seqlen = {}",
                                     who, p.T, batch.num_seqs, batch.max_seqlen));
      g.T = longest;
      g.B = batch.num_seqs;
    }
  } else {
    if (!host.empty())
      throw UsageError(fmt::format("{}: cu_seqlens_host given without the device cu_seqlens (varlen needs both; otherwise give neither)", who));
    if (batch.num_seqs != 0 || batch.max_seqlen != 0)
      throw UsageError(fmt::format("{}: num_seqs = {} or max_seqlen = {} is given but cu_seqlens is null (they "
                                   "describe a varlen batch; without varlen leave both 0)",
                                   who, batch.num_seqs, batch.max_seqlen));
    if (p.B > kMaxGridYZ)
      throw UsageError(fmt::format("{}: B = {} exceeds {} (the grid's z dimension)", who, p.B, kMaxGridYZ));
  }
  if (heads_in_grid && p.H > kMaxGridYZ)
    throw UsageError(fmt::format("{}: H = {} KV heads exceed {} (the grid's y dimension)", who, p.H, kMaxGridYZ));
  return g;
}

namespace {

// Checked 64-bit arithmetic for the bounds: a problem whose bound overflows cannot be held by any device.
int64_t mul64(int64_t a, int64_t b) {
  int64_t r = 0;
  if (__builtin_mul_overflow(a, b, &r)) throw UsageError("varlen: the scratch bound overflows 64 bits");
  return r;
}
int64_t add64(int64_t a, int64_t b) {
  int64_t r = 0;
  if (__builtin_add_overflow(a, b, &r)) throw UsageError("varlen: the scratch bound overflows 64 bits");
  return r;
}
int64_t cdiv64(int64_t a, int64_t b) { return (a + b - 1) / b; }
int64_t num_cmp(int64_t len, const Problem& p) { return len >= p.l ? (len - p.l) / p.d + 1 : 0; }

}  // namespace

BatchSums batch_sums(const Problem& p, const BatchLayout& batch) {
  BatchSums s;
  auto add_sequence = [&](int64_t len) {
    s.tokens += len;
    s.cmp_blocks += num_cmp(len, p);
    const int64_t nb = cdiv64(len, p.lsel);
    s.sel_blocks += nb;
    s.mask_words += nb * cdiv64(len, 32);
  };
  if (!batch.varlen()) {
    for (int64_t b = 0; b < p.B; ++b) add_sequence(p.T);
    return s;
  }
  if (!batch.bounded()) {
    for (size_t i = 0; i + 1 < batch.cu_seqlens_host.size(); ++i)
      add_sequence(batch.cu_seqlens_host[i + 1] - batch.cu_seqlens_host[i]);
    return s;
  }
  // Upper bounds from T tokens in N sequences of at most M each. Each sum is over a function of the length that is
  // at most a convex one, f(len) <= h(len), so the sum is at most h's largest sum over lengths in [0, M] adding up to
  // T, which is at a vertex of that polytope: k = floor(T / M) sequences of M, one of r = T mod M, the rest empty.
  // (For the mask words h(0) > 0 where f(0) = 0: the at most min(N, T) non-empty sequences count, the vertex's
  // empty ones as h(1) each.)
  if (batch.max_seqlen < 1 || batch.num_seqs < 1)
    throw UsageError(fmt::format("varlen: max_seqlen = {} and num_seqs = {} must be >= 1 when the host offsets are "
                                 "not given",
                                 batch.max_seqlen, batch.num_seqs));
  const int64_t T = p.T, N = batch.num_seqs, M = std::min(batch.max_seqlen, p.T);
  const int64_t k = T / M, r = T % M;
  const int64_t nonempty = std::min(N, T);
  const int64_t rest = std::max<int64_t>(nonempty - k - (r > 0 ? 1 : 0), 0);  // the vertex's other non-empty ones
  s.tokens = T;
  // Nc(len) = floor(max(0, len - l + d) / d).
  const auto hc = [&](int64_t len) { return std::max<int64_t>(len - p.l + p.d, 0); };
  s.cmp_blocks = std::min(add64(mul64(k, hc(M)), hc(r)) / p.d, mul64(N, num_cmp(M, p)));
  // ceil(len / l') <= (len + l' - 1) / l' for a non-empty sequence, 0 for an empty one.
  s.sel_blocks = std::min(add64(T, mul64(nonempty, p.lsel - 1)) / p.lsel, mul64(N, cdiv64(M, p.lsel)));
  // ceil(len / l') ceil(len / 32) <= (len + l' - 1)(len + 31) / (32 l') for a non-empty sequence.
  const auto hm = [&](int64_t len) { return mul64(len + p.lsel - 1, len + 31); };
  const int64_t tail = r > 0 ? hm(r) : 0;
  const int64_t vertex = add64(add64(mul64(k, hm(M)), tail), mul64(rest, hm(1)));
  s.mask_words = std::min(vertex / (32 * int64_t{p.lsel}), mul64(s.sel_blocks, cdiv64(M, 32)));
  return s;
}

void check_config(const char* who, const KernelFamily& family, const TileConfig& config) {
  for (const ParamDecl& d : family.params()) {
    const auto it = config.find(d.name);
    if (it == config.end() || std::find(d.domain.begin(), d.domain.end(), it->second) == d.domain.end())
      throw UsageError(fmt::format("{}: tile config [{}] needs {} in {{{}}}", who, describe(config), d.name,
                                   fmt::join(d.domain, ", ")));
  }
  if (config.size() != family.params().size())
    throw UsageError(fmt::format("{}: tile config [{}] has parameters the family does not know", who,
                                 describe(config)));
}

}  // namespace nsajit
