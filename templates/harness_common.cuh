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

// Random gates in (0, 1), as the caller's sigmoid would give them.
template <bool kBf16>
void random_gate(Rng& rng, size_t n, std::vector<uint16_t>& bits, std::vector<float>& values) {
  bits.resize(n);
  values.resize(n);
  for (size_t i = 0; i < n; ++i) {
    bits[i] = to_bits<kBf16>(static_cast<float>(0.05 + 0.9 * rng.uniform()));
    values[i] = from_bits<kBf16>(bits[i]);
  }
}

// Device copies; the programs are short-lived, so nothing is freed before exit.
template <class T>
T* upload(const std::vector<T>& host) {
  void* d = nullptr;
  HARNESS_CHECK(cudaMalloc(&d, std::max<size_t>(host.size(), 1) * sizeof(T)));
  if (!host.empty()) HARNESS_CHECK(cudaMemcpy(d, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
  return static_cast<T*>(d);
}
// n elements, every byte set to `fill` (0xff: NaN in bf16, fp16 and fp32, so an unwritten output fails).
template <class T>
T* device_array(size_t n, int fill) {
  void* d = nullptr;
  HARNESS_CHECK(cudaMalloc(&d, std::max<size_t>(n, 1) * sizeof(T)));
  HARNESS_CHECK(cudaMemset(d, fill, std::max<size_t>(n, 1) * sizeof(T)));
  return static_cast<T*>(d);
}
template <class T>
std::vector<T> download(const T* d, size_t n) {
  std::vector<T> h(n);
  if (n > 0) HARNESS_CHECK(cudaMemcpy(h.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost));
  return h;
}

// The first line every program prints: what was generated and on which problem.
inline void print_problem(uint64_t seed) {
  using namespace nsa::harness_spec;
  std::printf("nsajit standalone %s: %s B=%lld T=%lld HQ=%d H=%d dk=%d dv=%d w=%d l=%d d=%d l'=%d n=%d, seed %llu\n",
              kFamily, kIsBf16 ? "bf16" : "fp16", kB, kT, kHQ, kH, kDK, kDV, kW, kL, kD, kLSel, kN,
              static_cast<unsigned long long>(seed));
}

// Launches the generated kernel once with dynamic shared memory `smem` (opted in when above 48 KB).
template <class P>
void launch_entry(dim3 grid, dim3 block, int smem, const P& params) {
  if (smem > 0) HARNESS_CHECK(cudaFuncSetAttribute(kEntry, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  kEntry<<<grid, block, smem>>>(params);
  HARNESS_CHECK(cudaGetLastError());
}

// The median time of `launch()` over 20 launches after 3 warm-up launches, in milliseconds. `launch` must leave
// the outputs it is timed on as they were (or the program must not read them afterwards).
template <class F>
float median_ms(F launch) {
  cudaEvent_t start, stop;
  HARNESS_CHECK(cudaEventCreate(&start));
  HARNESS_CHECK(cudaEventCreate(&stop));
  std::vector<float> times;
  for (int i = 0; i < 23; ++i) {
    HARNESS_CHECK(cudaEventRecord(start));
    launch();
    HARNESS_CHECK(cudaEventRecord(stop));
    HARNESS_CHECK(cudaEventSynchronize(stop));
    float ms = 0;
    HARNESS_CHECK(cudaEventElapsedTime(&ms, start, stop));
    if (i >= 3) times.push_back(ms);
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

// Prints the time and PASS or FAIL; the program's exit code.
inline int report(bool pass, float ms) {
  std::printf("median time %.3f ms over 20 launches\n", ms);
  std::printf("%s\n", pass ? "PASS" : "FAIL");
  return pass ? 0 : 1;
}

// NSA.md's tolerance for the dtype.
constexpr double tolerance() { return nsa::harness_spec::kIsBf16 ? 1e-2 : 2e-3; }

// Query rows (or keys) to check: all of them when few, else `most` spread evenly, the last one included.
inline std::vector<long long> sample(long long count, long long most) {
  std::vector<long long> out;
  if (count <= 0) return out;
  const long long step = std::max(1LL, count / most);
  for (long long i = 0; i < count; i += step) out.push_back(i);
  if (out.back() != count - 1) out.push_back(count - 1);
  return out;
}

}  // namespace harness

#endif  // NSA_HARNESS_COMMON_CUH
