#include "codegen/problem.h"

#include <fmt/format.h>

#include <cmath>

#include "base/error.h"

namespace nsajit {

std::string_view dtype_name(Dtype d) { return d == Dtype::bf16 ? "bf16" : "fp16"; }

Dtype parse_dtype(std::string_view s) {
  if (s == "bf16") return Dtype::bf16;
  if (s == "fp16") return Dtype::fp16;
  throw UsageError(fmt::format("bad dtype '{}': supported are bf16, fp16", s));
}

double Problem::softmax_scale() const { return scale > 0.0 ? scale : 1.0 / std::sqrt(static_cast<double>(dk)); }

void Problem::validate() const {
  auto positive = [](const char* name, int64_t v) {
    if (v < 1) throw UsageError(fmt::format("bad {} = {}: must be >= 1", name, v));
  };
  positive("B", B);
  // T = 0 (an empty batch, or a varlen batch of empty sequences) is refused rather than run as a no-op: the
  // kernels' grids and the workspace layout assume at least one token, and the caller can skip the call.
  if (T < 1) throw UsageError(fmt::format("bad T = {}: must be >= 1 (T = 0, an empty batch, has nothing to compute: "
                                          "skip the call)", T));
  positive("HQ", HQ);
  positive("H", H);
  positive("dk", dk);
  positive("dv", dv);
  positive("l", l);
  positive("d", d);
  positive("l'", lsel);
  if (n < 3)
    throw UsageError(fmt::format("bad n = {}: must be >= 3 (block 0 and the two local blocks are always selected)", n));
  if (w < 0) throw UsageError(fmt::format("bad w = {}: must be >= 0 (0 disables the window branch)", w));
  if (HQ % H != 0)
    throw UsageError(fmt::format("bad heads: HQ = {} is not a multiple of H = {} (G = HQ / H must be whole)", HQ, H));
  if (l % d != 0) throw UsageError(fmt::format("bad d = {}: must divide l = {}", d, l));
  if (lsel % d != 0) throw UsageError(fmt::format("bad d = {}: must divide l' = {}", d, lsel));
  if (!(scale >= 0.0) || std::isinf(scale))
    throw UsageError(fmt::format("bad scale = {}: must be > 0 (or 0 for 1/sqrt(dk))", scale));
  if (T > (int64_t{1} << 31) - 1) throw UsageError(fmt::format("bad T = {}: must be < 2^31", T));
}

void check_head_dims(std::string_view who, const Problem& p, bool with_dv) {
  auto check = [&](const char* name, int v) {
    if (v % 8 != 0 || v < kMinHeadDim || v > kMaxHeadDim)
      throw UsageError(fmt::format("{} does not support {} = {}: head dims must be multiples of 8 from {} to {}", who,
                                   name, v, kMinHeadDim, kMaxHeadDim));
  };
  check("dk", p.dk);
  if (with_dv) check("dv", p.dv);
}

std::string Problem::describe() const {
  std::string s = fmt::format("{} B={} T={} HQ={} H={} dk={} dv={} l={} d={} l'={} n={} w={}", dtype_name(dtype), B,
                              T, HQ, H, dk, dv, l, d, lsel, n, w);
  if (scale > 0.0) s += fmt::format(" scale={}", scale);
  return s;
}

std::vector<std::string> preset_names() { return {"paper", "fla"}; }

Problem preset(std::string_view name) {
  Problem p;
  if (name == "paper") {
    p.dk = 192, p.dv = 128, p.l = 32, p.d = 16, p.lsel = 64;
  } else if (name == "fla") {
    p.dk = 128, p.dv = 128, p.l = 64, p.d = 64, p.lsel = 64;
  } else {
    throw UsageError(fmt::format("unknown preset '{}': available are paper, fla", name));
  }
  return p;
}

}  // namespace nsajit
