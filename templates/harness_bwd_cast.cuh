// Standalone check of bwd_cast: a random fp32 packed dq [B * T, HQ, dk] cast into a bf16/fp16 tensor with batch
// stride, against the host's rounding of the same values.
#ifndef NSA_HARNESS_BWD_CAST_CUH
#define NSA_HARNESS_BWD_CAST_CUH

int main(int argc, char** argv) {
  using namespace nsa::harness_spec;
  constexpr bool kBf16 = kIsBf16;
  const uint64_t seed = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 1;
  harness::print_problem(seed);
  const size_t n = static_cast<size_t>(kB * kT) * kHQ * kDK;
  harness::Rng rng(seed);
  std::vector<float> src(n);
  // Values below 1e-3 become 0.5: the host's fp16 rounding flushes subnormals, the kernel's does not.
  for (float& x : src) {
    x = static_cast<float>(rng.normal());
    if (std::fabs(x) < 1e-3f) x = 0.5f;
  }
  uint16_t* dst = harness::device_array<uint16_t>(n, 0xff);
  nsa::BwdCastParams p{};
  p.src = harness::upload(src), p.dst = dst;
  p.dst_sh = kDK, p.dst_st = kHQ * p.dst_sh, p.dst_sb = kT * p.dst_st;
  p.rows_per_batch = kT, p.rows = kB * kT, p.heads = kHQ, p.dim = kDK;
  const dim3 grid(static_cast<unsigned>((p.rows * kHQ * (kDK / 8) + 255) / 256)), block(256);
  harness::launch_entry(grid, block, 0, p);
  HARNESS_CHECK(cudaDeviceSynchronize());
  const std::vector<uint16_t> got = harness::download(dst, n);
  long long wrong = 0;
  for (size_t i = 0; i < n; ++i) wrong += got[i] != harness::to_bits<kBf16>(src[i]);
  std::printf("checked %zu elements: %lld differ from the host's round-to-nearest-even\n", n, wrong);
  const float ms = harness::median_ms([&] { kEntry<<<grid, block>>>(p); });
  return harness::report(wrong == 0, ms);
}

#endif  // NSA_HARNESS_BWD_CAST_CUH
