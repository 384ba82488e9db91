#include "tuner/inputs.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <thread>

namespace nsajit {

uint16_t float_to_bits(float f, Dtype dtype) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if (dtype == Dtype::bf16) {
    if (std::isnan(f)) return 0x7fc0;
    u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even
    return static_cast<uint16_t>(u >> 16);
  }
  const uint32_t sign = (u >> 16) & 0x8000u;
  const int exp = static_cast<int>((u >> 23) & 0xff) - 127 + 15;
  const uint32_t mant = u & 0x7fffffu;
  if (std::isnan(f)) return 0x7e00;
  if (exp >= 31) return static_cast<uint16_t>(sign | 0x7c00u);
  if (exp <= 0) {  // subnormal half (or zero)
    if (exp < -10) return static_cast<uint16_t>(sign);
    const uint32_t m = mant | 0x800000u;
    const int shift = 14 - exp;
    uint32_t h = m >> shift;
    const uint32_t rest = m & ((1u << shift) - 1), halfway = 1u << (shift - 1);
    if (rest > halfway || (rest == halfway && (h & 1u))) ++h;
    return static_cast<uint16_t>(sign | h);
  }
  uint32_t h = sign | (static_cast<uint32_t>(exp) << 10) | (mant >> 13);
  const uint32_t rest = mant & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;  // may carry into the exponent: still correct
  return static_cast<uint16_t>(h);
}

float bits_to_float(uint16_t b, Dtype dtype) {
  if (dtype == Dtype::bf16) {
    const uint32_t u = static_cast<uint32_t>(b) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
  const int exp = (b >> 10) & 0x1f;
  const uint32_t mant = b & 0x3ffu;
  float f;
  if (exp == 0)
    f = std::ldexp(static_cast<float>(mant), -24);
  else if (exp == 31)
    f = mant ? NAN : INFINITY;
  else
    f = std::ldexp(static_cast<float>(mant | 0x400u), exp - 25);
  return (b & 0x8000u) ? -f : f;
}

namespace {

// splitmix64's output function: a bijective mix of 64 bits.
uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Elements [begin, end) of the tensor, begin even. Element 2j and 2j+1 are the two Box-Muller values of the j-th
// word of splitmix64 seeded with mix64(seed): a function of (seed, index) alone.
void fill_normal(uint16_t* out, size_t begin, size_t end, Dtype dtype, uint64_t seed) {
  const uint64_t key = mix64(seed + 0x9E3779B97F4A7C15ull);
  for (size_t i = begin; i < end; i += 2) {
    const uint64_t r = mix64(key + (static_cast<uint64_t>(i / 2) + 1) * 0x9E3779B97F4A7C15ull);
    const float u1 = (static_cast<float>(r >> 40) + 0.5f) * (1.0f / 16777216.0f);
    const float u2 = static_cast<float>((r >> 16) & 0xffffff) * (1.0f / 16777216.0f);
    const float rad = std::sqrt(-2.0f * std::log(u1));
    out[i] = float_to_bits(rad * std::cos(6.2831853f * u2), dtype);
    if (i + 1 < end) out[i + 1] = float_to_bits(rad * std::sin(6.2831853f * u2), dtype);
  }
}

}  // namespace

std::vector<uint16_t> random_normal_bits(size_t n, Dtype dtype, uint64_t seed, unsigned threads) {
  std::vector<uint16_t> out(n);
  if (threads == 0) threads = std::max(1u, std::min(16u, std::thread::hardware_concurrency()));
  // Chunks of an even size, so that no Box-Muller pair straddles two threads; the values do not depend on them.
  const size_t chunk = std::max<size_t>(2, ((n + threads - 1) / threads + 1) / 2 * 2);
  std::vector<std::thread> pool;
  for (size_t begin = 0; begin < n; begin += chunk) {
    const size_t end = std::min(n, begin + chunk);
    if (end == n && pool.empty()) {  // one chunk: no thread
      fill_normal(out.data(), begin, end, dtype, seed);
      break;
    }
    pool.emplace_back(fill_normal, out.data(), begin, end, dtype, seed);
  }
  for (auto& t : pool) t.join();
  return out;
}

DeviceBuffer random_device_tensor(size_t n, Dtype dtype, uint64_t seed) {
  const std::vector<uint16_t> host = random_normal_bits(n, dtype, seed);
  DeviceBuffer buf(n * 2);
  buf.upload(host.data(), n * 2);
  return buf;
}

}  // namespace nsajit
