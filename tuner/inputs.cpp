#include "tuner/inputs.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <thread>
#include <unordered_set>

#include <fmt/format.h>

#include "base/error.h"

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

InputKind parse_input_kind(std::string_view s) {
  if (s == "random") return InputKind::random;
  if (s == "coherent") return InputKind::coherent;
  throw UsageError(fmt::format("bad input kind '{}': expected random or coherent", s));
}

std::string_view input_kind_name(InputKind k) { return k == InputKind::random ? "random" : "coherent"; }

std::vector<uint16_t> query_bits(const Problem& p, InputKind kind, uint64_t seed) {
  const size_t row = static_cast<size_t>(p.HQ) * p.dk;
  const size_t n = static_cast<size_t>(p.B * p.T) * row;
  if (kind == InputKind::random) return random_normal_bits(n, p.dtype, seed);
  const int64_t spans = (p.T + p.lsel - 1) / p.lsel;
  const std::vector<uint16_t> noise = random_normal_bits(n, p.dtype, seed);
  const std::vector<uint16_t> base = random_normal_bits(static_cast<size_t>(p.B * spans) * row, p.dtype, seed + 0x5eed);
  std::vector<uint16_t> out(n);
  for (int64_t b = 0; b < p.B; ++b)
    for (int64_t t = 0; t < p.T; ++t) {
      const size_t o = static_cast<size_t>(b * p.T + t) * row, s = static_cast<size_t>(b * spans + t / p.lsel) * row;
      for (size_t i = 0; i < row; ++i)
        out[o + i] = float_to_bits(bits_to_float(base[s + i], p.dtype) + 0.25f * bits_to_float(noise[o + i], p.dtype),
                                   p.dtype);
    }
  return out;
}

SelectionOverlap selection_overlap(const int32_t* idx, const int32_t* cnt, int64_t B, int64_t T, int H, int n,
                                   int span) {
  SelectionOverlap r;
  double jsum = 0, dsum = 0;
  std::vector<int32_t> a, c;
  auto set_of = [&](int64_t row, int h, std::vector<int32_t>& out) {
    out.assign(idx + (row * H + h) * n, idx + (row * H + h) * n + std::clamp(cnt[row * H + h], 0, n));
    std::sort(out.begin(), out.end());
    out.erase(std::unique(out.begin(), out.end()), out.end());
  };
  std::unordered_set<int32_t> seen;
  for (int64_t b = 0; b < B; ++b)
    for (int h = 0; h < H; ++h) {
      for (int64_t t = 0; t + 1 < T; ++t) {
        set_of(b * T + t, h, a);
        set_of(b * T + t + 1, h, c);
        std::vector<int32_t> both;
        std::set_intersection(a.begin(), a.end(), c.begin(), c.end(), std::back_inserter(both));
        const size_t uni = a.size() + c.size() - both.size();
        jsum += uni ? static_cast<double>(both.size()) / static_cast<double>(uni) : 1.0;
        ++r.pairs;
      }
      for (int64_t t0 = 0; t0 < T; t0 += span) {
        seen.clear();
        for (int64_t t = t0; t < std::min(T, t0 + span); ++t) {
          set_of(b * T + t, h, a);
          seen.insert(a.begin(), a.end());
        }
        dsum += static_cast<double>(seen.size());
        ++r.spans;
      }
    }
  r.jaccard = r.pairs ? jsum / static_cast<double>(r.pairs) : 0;
  r.distinct = r.spans ? dsum / static_cast<double>(r.spans) : 0;
  return r;
}

}  // namespace nsajit
