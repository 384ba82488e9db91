// The GPU tests' main. The tests are hermetic: NSAJIT_DB=off is forced before any test runs, so every kernel uses
// its family's default config whatever a tuning database on the machine holds (a test that wants tuned configs must
// pass them). NSAJIT_TEST_SEED (tests/test_seed.h) is checked here, and printed when a test fails.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>
#include <fmt/format.h>
#include <stdlib.h>

#include <string>

#include "runtime/tuned.h"
#include "tests/test_seed.h"

int main(int argc, char** argv) {
  ::setenv("NSAJIT_DB", "off", 1);
  const char* seed = std::getenv("NSAJIT_TEST_SEED");
  if (seed != nullptr && !nsajit::test::parse_test_seed(seed)) {
    fmt::print(stderr, "NSAJIT_TEST_SEED='{}' is not a decimal unsigned 64-bit integer\n", seed);
    return 2;
  }
  if (nsajit::test::seed_offset() != 0)
    fmt::print(stderr, "NSAJIT_TEST_SEED={}: the seeds drawn through nsajit::test::test_seed() are shifted\n",
               nsajit::test::seed_offset());
  doctest::Context context(argc, argv);
  const int rc = context.run();
  if (rc != 0 && !context.shouldExit())
    fmt::print(stderr, "a test failed with NSAJIT_TEST_SEED={} ({}); set it to the same value to replay\n",
               nsajit::test::seed_offset(), nsajit::test::seed_offset() == 0 ? "the fixed seeds" : "shifted seeds");
  return rc;
}

// Needs no GPU: `nsajit_gpu_tests -tc='hermetic*'` runs anywhere.
TEST_CASE("hermetic: the GPU tests read no tuning database, whatever NSAJIT_DB the caller set") {
  const char* env = std::getenv("NSAJIT_DB");
  CHECK(std::string(env ? env : "(unset)") == "off");
  const nsajit::TunedDb db = nsajit::open_tuned_db(env);
  CHECK_FALSE(db.db);
  CHECK(db.unavailable == "NSAJIT_DB=off");
}
