// Standalone check of pool_bwd: random gradients of the compressed keys (fp32), spread back to the tokens (each
// token gets dk_cmp[i] / l of every block i covering it) and added to a random dk, against the host's sums.
#ifndef NSA_HARNESS_POOL_BWD_CUH
#define NSA_HARNESS_POOL_BWD_CUH

int main(int argc, char** argv) {
  using namespace nsa::harness_spec;
  const uint64_t seed = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 1;
  harness::print_problem(seed);
  const long long nc = kT >= kL ? (kT - kL) / kD + 1 : 0;
  const int dim = kDK;
  harness::Rng rng(seed);
  std::vector<float> dx_cmp(static_cast<size_t>(kB * nc) * kH * dim), dx(static_cast<size_t>(kB * kT) * kH * dim);
  for (float& x : dx_cmp) x = static_cast<float>(rng.normal());
  for (float& x : dx) x = static_cast<float>(rng.normal());
  nsa::PoolBwdParams p{};
  p.dx_cmp = harness::upload(dx_cmp), p.dx = harness::upload(dx), p.cu_seqlens = nullptr;
  p.T = kT, p.H = kH, p.dim = dim, p.l = kL, p.d = kD;
  const dim3 grid(static_cast<unsigned>((kT * kH * (dim / 4) + 255) / 256), 1, static_cast<unsigned>(kB)), block(256);
  harness::launch_entry(grid, block, 0, p);
  HARNESS_CHECK(cudaDeviceSynchronize());
  const std::vector<float> got = harness::download(p.dx, dx.size());
  harness::ErrorNorm err;
  for (long long b = 0; b < kB; ++b)
    for (long long t = 0; t < kT; ++t)
      for (int h = 0; h < kH; ++h)
        for (int c = 0; c < dim; ++c) {
          double s = 0;
          for (long long i = 0; i < nc; ++i)
            if (i * kD <= t && t < i * kD + kL) s += dx_cmp[static_cast<size_t>(((b * nc + i) * kH + h) * dim + c)];
          const size_t at = static_cast<size_t>(((b * kT + t) * kH + h) * dim + c);
          err.add(got[at], dx[at] + s / kL);
        }
  std::printf("checked %lld tokens x %d heads: rel error %.3e (tolerance 1e-6); non-finite %lld\n", kB * kT, kH,
              err.rel(), err.bad);
  const float ms = harness::median_ms([&] { kEntry<<<grid, block>>>(p); });  // adds again: not read afterwards
  return harness::report(err.bad == 0 && err.rel() <= 1e-6, ms);
}

#endif  // NSA_HARNESS_POOL_BWD_CUH
