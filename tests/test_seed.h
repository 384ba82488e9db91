#pragma once
// NSAJIT_TEST_SEED: varies the data of the tests that draw their inputs from fixed seeds. Unset (or 0), every seed
// is the one written in the test, so a run is reproducible; set to N, every seed `s` becomes test_seed(s), the same
// for the same N, so a failure found with N is replayed by setting N again. The test binary's main checks the value
// (a value that is not a decimal unsigned 64-bit integer is a usage error) and prints it when a test fails.
//
// Usage in a test: random_normal_bits(n, dtype, nsajit::test::test_seed(seed)).
#include <charconv>
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <string_view>

namespace nsajit::test {

// A NSAJIT_TEST_SEED value: decimal digits only, within 64 bits; nullopt for anything else (empty, a sign, spaces).
inline std::optional<uint64_t> parse_test_seed(std::string_view text) {
  uint64_t v = 0;
  if (text.empty()) return std::nullopt;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v, 10);
  if (ec != std::errc() || end != text.data() + text.size()) return std::nullopt;
  return v;
}

// The offset NSAJIT_TEST_SEED asks for: 0 when unset or unreadable (main refuses an unreadable value first).
inline uint64_t seed_offset() {
  static const uint64_t offset = [] {
    const char* env = std::getenv("NSAJIT_TEST_SEED");
    return env ? parse_test_seed(env).value_or(0) : 0;
  }();
  return offset;
}

// `base` moved by `offset` (0: `base` itself). Seeds that differ by a small step (s, s + 1, s + 2 for q, k, v) still
// differ after the move, and each offset moves them far from the seeds written in the tests.
constexpr uint64_t shifted_seed(uint64_t base, uint64_t offset) { return base + offset * 0x9E3779B97F4A7C15ull; }

inline uint64_t test_seed(uint64_t base) { return shifted_seed(base, seed_offset()); }

}  // namespace nsajit::test
