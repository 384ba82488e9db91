// Standalone program of the tuner's test-only fault_test family: MODE 0 must write out[i] = 3 i + 1; MODE 1 (an
// out-of-bounds write) ends in a CUDA error, MODE 2 hangs, MODE 3 writes one wrong value (FAIL), as designed.
#ifndef NSA_HARNESS_FAULT_TEST_CUH
#define NSA_HARNESS_FAULT_TEST_CUH

int main(int argc, char** argv) {
  using namespace nsa::harness_spec;
  const uint64_t seed = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 1;
  harness::print_problem(seed);
  const long long n = kB * kT * kHQ;
  int* out = harness::device_array<int>(static_cast<size_t>(n), 0xff);
  int* never = harness::device_array<int>(1, 0);
  nsa::FaultTestParams p{};
  p.out = out, p.n = n, p.never_set = never;
  const dim3 grid(kGridX, kGridY, kGridZ), block(kThreads);
  harness::launch_entry(grid, block, kSmemBytes, p);
  HARNESS_CHECK(cudaDeviceSynchronize());
  const std::vector<int> h = harness::download(out, static_cast<size_t>(n));
  long long wrong = 0;
  for (long long i = 0; i < n; ++i) wrong += h[static_cast<size_t>(i)] != static_cast<int>(3 * i + 1);
  std::printf("MODE %d: %lld of %lld elements differ from 3 i + 1\n", nsa::spec::kMode, wrong, n);
  const float ms = harness::median_ms([&] { kEntry<<<grid, block, kSmemBytes>>>(p); });
  return harness::report(wrong == 0, ms);
}

#endif  // NSA_HARNESS_FAULT_TEST_CUH
