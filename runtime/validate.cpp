#include "runtime/validate.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>

#include "runtime/error.h"

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

void check_aligned(const char* who, const char* name, const void* p, size_t alignment) {
  if (p != nullptr && reinterpret_cast<uintptr_t>(p) % alignment != 0)
    throw UsageError(fmt::format("{}: {} is not {}-byte aligned", who, name, alignment));
}

void check_gated_out(const char* who, const void* gate, int64_t gate_stride_b, int64_t gate_stride_t,
                     const TensorView& out, bool accumulate, bool varlen) {
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
  GridShape g{p.B, p.T};
  if (cu_seqlens != nullptr) {
    if (p.B != 1) throw UsageError(fmt::format("{}: varlen needs B = 1 (got B = {})", who, p.B));
    if (cu_seqlens_host.size() > static_cast<size_t>(kMaxGridYZ) + 1)
      throw UsageError(fmt::format("{}: cu_seqlens holds {} sequences: at most {} (the grid's z dimension)", who,
                                   cu_seqlens_host.size() - 1, kMaxGridYZ));
    g.T = std::max<int64_t>(check_cu_seqlens(who, cu_seqlens_host, p.T), 1);
    g.B = static_cast<int64_t>(cu_seqlens_host.size()) - 1;
  } else {
    if (!cu_seqlens_host.empty())
      throw UsageError(fmt::format("{}: cu_seqlens_host given without the device cu_seqlens (varlen needs both; otherwise give neither)", who));
    if (p.B > kMaxGridYZ)
      throw UsageError(fmt::format("{}: B = {} exceeds {} (the grid's z dimension)", who, p.B, kMaxGridYZ));
  }
  if (heads_in_grid && p.H > kMaxGridYZ)
    throw UsageError(fmt::format("{}: H = {} KV heads exceed {} (the grid's y dimension)", who, p.H, kMaxGridYZ));
  return g;
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
