// Standalone check of the tuner's compare kernel: a random tensor against a perturbed copy of it (one element made
// NaN), the kernel's sums and counts against the same sums taken on the host, and a median time.
#ifndef NSA_HARNESS_COMPARE_CUH
#define NSA_HARNESS_COMPARE_CUH

int main(int argc, char** argv) {
  using namespace nsa::harness_spec;
  constexpr bool kBf16 = kIsBf16;
  const uint64_t seed = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 1;
  harness::print_problem(seed);
  // One output tensor of the problem: [B, T, HQ, dv].
  const size_t n = static_cast<size_t>(kB * kT) * kHQ * kDV;
  harness::Rng rng(seed);
  std::vector<uint16_t> ref_bits, a_bits(n);
  std::vector<float> ref;
  harness::random_tensor<kBf16>(rng, n, ref_bits, ref);
  double d2 = 0, r2 = 0;
  for (size_t i = 0; i < n; ++i) {
    a_bits[i] = harness::to_bits<kBf16>(ref[i] * static_cast<float>(1.0 + 0.01 * rng.normal()));
    const double a = harness::from_bits<kBf16>(a_bits[i]);
    if (i == n / 2) continue;
    d2 += (a - ref[i]) * (a - ref[i]);
    r2 += static_cast<double>(ref[i]) * ref[i];
  }
  a_bits[n / 2] = 0x7fff;  // NaN in bf16 and fp16: counted as non-finite
  const uint16_t* da = harness::upload(a_bits);
  const uint16_t* dref = harness::upload(ref_bits);
  double* sums = harness::device_array<double>(2, 0);
  unsigned long long* counts = harness::device_array<unsigned long long>(4, 0);
  nsa::CompareParams p{};
  p.a = da, p.ref = dref, p.n = static_cast<long long>(n), p.sums = sums, p.counts = counts;
  p.kind = kBf16 ? nsa::kCompareBf16 : nsa::kCompareFp16;
  const dim3 grid(kGridX, kGridY, kGridZ), block(kThreads);
  harness::launch_entry(grid, block, kSmemBytes, p);
  HARNESS_CHECK(cudaDeviceSynchronize());
  const std::vector<double> s = harness::download(sums, 2);
  const std::vector<unsigned long long> c = harness::download(counts, 4);
  const double rel_kernel = std::sqrt(s[0] / s[1]), rel_host = std::sqrt(d2 / r2);
  const bool pass = std::fabs(rel_kernel - rel_host) <= 1e-9 * rel_host && c[0] == 1 && c[1] == 0 && c[2] == 0 &&
                    c[3] == 0;
  std::printf("relative difference %.9e (host %.9e); non-finite %llu (expected 1), mismatches %llu, wrong -inf "
              "%llu, bad trusted values %llu (expected 0)\n",
              rel_kernel, rel_host, c[0], c[1], c[2], c[3]);
  const float ms = harness::median_ms([&] { kEntry<<<grid, block, kSmemBytes>>>(p); });  // sums grow: not read again
  return harness::report(pass, ms);
}

#endif  // NSA_HARNESS_COMPARE_CUH
