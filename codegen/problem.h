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

// "paper" or "fla" (NSA.md); throws UsageError listing the presets for any other name.
Problem preset(std::string_view name);
std::vector<std::string> preset_names();

}  // namespace nsajit
