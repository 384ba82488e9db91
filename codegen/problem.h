#pragma once
// What the caller has: shapes, dtype and NSA hyperparameters (NSA.md). Validated once, at the boundary.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace nsajit {

enum class Dtype { bf16, fp16 };
std::string_view dtype_name(Dtype d);
Dtype parse_dtype(std::string_view s);  // "bf16" | "fp16"; throws UsageError otherwise

struct Problem {
  Dtype dtype = Dtype::bf16;
  int64_t B = 1;
  int64_t T = 65536;
  int HQ = 64, H = 4;
  int dk = 128, dv = 128;
  int l = 64, d = 64, lsel = 64;  // compression block length and stride, selection block length
  int n = 16;                     // selected blocks per query
  int w = 512;                    // sliding window (0 disables the branch)
  double scale = 0.0;             // 0 means 1/sqrt(dk)

  int G() const { return HQ / H; }
  double softmax_scale() const;
  // Throws UsageError naming the first bad field and what is allowed.
  void validate() const;
  // Every field, canonical ("bf16 B=1 T=65536 HQ=64 H=4 dk=128 dv=128 l=64 d=64 l'=64 n=16 w=512").
  std::string describe() const;
};

// Head dims of the attention kernels: dk and dv independently, any multiple of 8 from 32 to 256.
constexpr int kMinHeadDim = 32, kMaxHeadDim = 256;
// Throws UsageError naming `who`, the value and the rule when dk (and dv, when `with_dv`) is not a supported head dim.
void check_head_dims(std::string_view who, const Problem& p, bool with_dv = true);
// How the kernels lay a head dim out (templates/common.cuh): shared-memory rows padded to a multiple of 64 elements,
// MMA loops and accumulators to a multiple of 16; global memory holds the true dim.
constexpr int head_dim_smem(int d) { return (d + 63) / 64 * 64; }
constexpr int head_dim_mma(int d) { return (d + 15) / 16 * 16; }

// "paper" or "fla" (NSA.md); throws UsageError listing the presets for any other name.
Problem preset(std::string_view name);
std::vector<std::string> preset_names();

}  // namespace nsajit
