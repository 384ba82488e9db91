// Standalone check of the generated mean-pool kernel: random k, poisoned output, every compressed block checked
// against the mean computed on the host (fp32 sums, as NSA.md's phi), NSA.md's tolerance, and a median time.
#ifndef NSA_HARNESS_POOL_CUH
#define NSA_HARNESS_POOL_CUH

int main(int argc, char** argv) {
  using namespace nsa::harness_spec;
  constexpr bool kBf16 = kIsBf16;
  constexpr int kDim = nsa::spec::kDim;  // the pooled head dim (dk)
  const uint64_t seed = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 1;
  harness::print_problem(seed);
  const long long nc = kT >= kL ? (kT - kL) / kD + 1 : 0;

  harness::Rng rng(seed);
  std::vector<uint16_t> hx;
  std::vector<float> fx;
  const size_t nx = static_cast<size_t>(kB * kT) * kH * kDim, ny = static_cast<size_t>(kB * nc) * kH * kDim;
  harness::random_tensor<kBf16>(rng, nx, hx, fx);
  uint16_t* dx = harness::upload(hx);
  uint16_t* dy = harness::device_array<uint16_t>(ny, 0xff);  // NaN: an unwritten element fails

  nsa::PoolParams p{};
  p.x = dx, p.y = dy;
  p.x_sh = kDim, p.x_st = kH * p.x_sh, p.x_sb = kT * p.x_st;
  p.y_sh = kDim, p.y_st = kH * p.y_sh, p.y_sb = nc * p.y_st;
  p.cu_seqlens = nullptr;
  p.T = kT, p.H = kH, p.l = kL, p.d = kD;
  const dim3 grid(kGridX, kGridY, kGridZ), block(kThreads);
  harness::launch_entry(grid, block, kSmemBytes, p);
  HARNESS_CHECK(cudaDeviceSynchronize());
  const std::vector<uint16_t> y = harness::download(dy, ny);

  harness::ErrorNorm err;
  for (long long b = 0; b < kB; ++b)
    for (long long i = 0; i < nc; ++i)
      for (int h = 0; h < kH; ++h)
        for (int c = 0; c < kDim; ++c) {
          double s = 0;
          for (int r = 0; r < kL; ++r) s += fx[static_cast<size_t>(((b * kT + i * kD + r) * kH + h) * kDim + c)];
          err.add(harness::from_bits<kBf16>(y[static_cast<size_t>(((b * nc + i) * kH + h) * kDim + c)]), s / kL);
        }
  const float ms = harness::median_ms([&] { kEntry<<<grid, block, kSmemBytes>>>(p); });
  const bool pass = err.bad == 0 && err.rel() <= harness::tolerance();
  std::printf("checked %lld compressed blocks x %d heads: rel error %.3e (tolerance %.0e); unwritten or non-finite %lld\n",
              kB * nc, kH, err.rel(), harness::tolerance(), err.bad);
  return harness::report(pass, ms);
}

#endif  // NSA_HARNESS_POOL_CUH
