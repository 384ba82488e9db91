// Random test inputs (tuner/inputs.h) and test seeds (tests/test_seed.h): a seed gives the same tensor whatever the
// number of threads and the machine, and NSAJIT_TEST_SEED moves every seed in a way that can be replayed.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "tests/test_seed.h"
#include "tuner/inputs.h"

using nsajit::Dtype;
using nsajit::random_normal_bits;

TEST_CASE("inputs: a seed gives the same tensor with 1 thread and with N") {
  for (Dtype dt : {Dtype::bf16, Dtype::fp16}) {
    for (size_t n : {size_t{0}, size_t{1}, size_t{2}, size_t{7}, size_t{33}, size_t{1000}, size_t{100001}}) {
      CAPTURE(n);
      const std::vector<uint16_t> one = random_normal_bits(n, dt, 42, 1);
      for (unsigned threads : {2u, 3u, 5u, 16u, 64u}) {
        CAPTURE(threads);
        CHECK(random_normal_bits(n, dt, 42, threads) == one);
      }
      CHECK(random_normal_bits(n, dt, 42) == one);  // the machine's own count
    }
  }
}

TEST_CASE("inputs: element i depends on the seed and i alone") {
  const std::vector<uint16_t> longer = random_normal_bits(5000, Dtype::bf16, 7, 3);
  const std::vector<uint16_t> shorter = random_normal_bits(1001, Dtype::bf16, 7, 4);
  CHECK(std::vector<uint16_t>(longer.begin(), longer.begin() + 1001) == shorter);
  CHECK(random_normal_bits(1000, Dtype::bf16, 8, 1) != random_normal_bits(1000, Dtype::bf16, 7, 1));
  // The values themselves are fixed: the same on every machine and in every version (a change here changes every
  // test's data, which then must be said).
  const std::vector<uint16_t> first = random_normal_bits(6, Dtype::bf16, 1, 1);
  CHECK(first == std::vector<uint16_t>{16305, 16021, 16020, 48697, 49167, 16270});
}

TEST_CASE("inputs: the values are N(0, 1), finite and not zero") {
  const size_t n = 200000;
  const std::vector<uint16_t> bits = random_normal_bits(n, Dtype::fp16, 3);
  double sum = 0, sum2 = 0;
  size_t within1 = 0, zeros = 0, not_finite = 0;
  for (uint16_t b : bits) {
    const double v = nsajit::bits_to_float(b, Dtype::fp16);
    if (!std::isfinite(v)) ++not_finite;
    if (v == 0) ++zeros;
    sum += v, sum2 += v * v;
    within1 += std::abs(v) < 1 ? 1 : 0;
  }
  const double mean = sum / n, var = sum2 / n - mean * mean;
  CHECK(std::abs(mean) < 0.01);
  CHECK(std::abs(var - 1) < 0.02);
  CHECK(std::abs(static_cast<double>(within1) / n - 0.6827) < 0.005);
  CHECK(not_finite == 0);
  CHECK(zeros < 10);
  // Odd and even elements (the two halves of each Box-Muller pair) are not correlated.
  double cross = 0;
  for (size_t i = 0; i + 1 < n; i += 2)
    cross += nsajit::bits_to_float(bits[i], Dtype::fp16) * nsajit::bits_to_float(bits[i + 1], Dtype::fp16);
  CHECK(std::abs(cross / (n / 2)) < 0.01);
}

TEST_CASE("test seeds: NSAJIT_TEST_SEED values, and how they move a seed") {
  using nsajit::test::parse_test_seed;
  CHECK(parse_test_seed("0") == uint64_t{0});
  CHECK(parse_test_seed("17") == uint64_t{17});
  CHECK(parse_test_seed("18446744073709551615") == UINT64_MAX);
  for (const char* bad : {"", "-1", "+1", " 1", "1 ", "0x10", "abc", "18446744073709551616", "1.5"}) {
    CAPTURE(bad);
    CHECK_FALSE(parse_test_seed(bad));
  }
  using nsajit::test::shifted_seed;
  CHECK(shifted_seed(100, 0) == 100);  // unset: the seeds written in the tests
  CHECK(shifted_seed(100, 1) != 100);
  CHECK(shifted_seed(100, 1) == shifted_seed(100, 1));
  CHECK(shifted_seed(100, 1) != shifted_seed(100, 2));
  // Neighbouring seeds (q, k, v of one case) stay distinct and keep their spacing; another offset lands elsewhere.
  CHECK(shifted_seed(101, 5) - shifted_seed(100, 5) == 1);
  bool far = true;
  for (uint64_t s = 0; s < 1000; ++s) far = far && shifted_seed(s, 1) >= 1000;
  CHECK(far);
}
