// Host-side helpers for nsajit's standalone programs (`nsajit emit`): built by nvcc together with one generated
// kernel. Plain CUDA runtime API; no nsajit library needed.
#ifndef NSA_HARNESS_COMMON_CUH
#define NSA_HARNESS_COMMON_CUH
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#define HARNESS_CHECK(call)                                                                           \
  do {                                                                                                \
    cudaError_t err_ = (call);                                                                        \
    if (err_ != cudaSuccess) {                                                                        \
      std::fprintf(stderr, "%s:%d: %s failed: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(err_)); \
      std::exit(1);                                                                                   \
    }                                                                                                 \
  } while (0)

namespace harness {

// splitmix64 + Box-Muller: fresh normal inputs, reproducible from the seed.
struct Rng {
  uint64_t state;
  explicit Rng(uint64_t seed) : state(seed * 0x9E3779B97F4A7C15ull + 1) {}
  uint64_t next() {
    uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  double uniform() { return (static_cast<double>(next() >> 11) + 0.5) * (1.0 / 9007199254740992.0); }
  double normal() { return std::sqrt(-2.0 * std::log(uniform())) * std::cos(6.283185307179586 * uniform()); }
};

inline uint16_t float_to_bf16_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even (inputs are finite)
  return static_cast<uint16_t>(u >> 16);
}
inline float bf16_bits_to_float(uint16_t b) {
  uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint16_t float_to_f16_bits(float f) {
  // Normal-range values only (random normal inputs): round to nearest even.
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const int exp = static_cast<int>((u >> 23) & 0xff) - 127 + 15;
  uint32_t mant = u & 0x7fffffu;
  if (exp <= 0) return static_cast<uint16_t>(sign);  // flush tiny values to zero
  if (exp >= 31) return static_cast<uint16_t>(sign | 0x7c00u);
  uint32_t h = sign | (static_cast<uint32_t>(exp) << 10) | (mant >> 13);
  const uint32_t rest = mant & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;
  return static_cast<uint16_t>(h);
}
inline float f16_bits_to_float(uint16_t h) {
  const uint32_t sign = (h & 0x8000u) << 16;
  const int exp = (h >> 10) & 0x1f;
  const uint32_t mant = h & 0x3ffu;
  float f;
  if (exp == 0) {
    f = std::ldexp(static_cast<float>(mant), -24);
  } else if (exp == 31) {
    f = mant ? NAN : INFINITY;
  } else {
    f = std::ldexp(static_cast<float>(mant | 0x400u), exp - 25);
  }
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u |= sign;
  std::memcpy(&f, &u, 4);
  return f;
}

template <bool kBf16>
inline uint16_t to_bits(float f) {
  return kBf16 ? float_to_bf16_bits(f) : float_to_f16_bits(f);
}
template <bool kBf16>
inline float from_bits(uint16_t b) {
  return kBf16 ? bf16_bits_to_float(b) : f16_bits_to_float(b);
}

// Fills `bits` with random normal values and `values` with what those bits hold.
template <bool kBf16>
void random_tensor(Rng& rng, size_t n, std::vector<uint16_t>& bits, std::vector<float>& values) {
  bits.resize(n);
  values.resize(n);
  for (size_t i = 0; i < n; ++i) {
    bits[i] = to_bits<kBf16>(static_cast<float>(rng.normal()));
    values[i] = from_bits<kBf16>(bits[i]);
  }
}

struct ErrorNorm {
  double diff2 = 0, ref2 = 0;
  long long bad = 0;  // NaN or Inf in the output
  void add(double out, double ref) {
    if (!std::isfinite(out)) {
      ++bad;
      return;
    }
    diff2 += (out - ref) * (out - ref);
    ref2 += ref * ref;
  }
  double rel() const { return ref2 > 0 ? std::sqrt(diff2 / ref2) : std::sqrt(diff2); }
};

}  // namespace harness

#endif  // NSA_HARNESS_COMMON_CUH
