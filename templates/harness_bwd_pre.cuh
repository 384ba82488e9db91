// Standalone check of bwd_pre: random do, branch outputs o_cmp, o_slc, o_win and gates; delta_b = g_b <do, o_b>
// (fp32) and dg_b = <do, o_b> (in the input dtype) of every (token, query head) against float64 on the host.
#ifndef NSA_HARNESS_BWD_PRE_CUH
#define NSA_HARNESS_BWD_PRE_CUH

int main(int argc, char** argv) {
  using namespace nsa::harness_spec;
  constexpr bool kBf16 = kIsBf16;
  const uint64_t seed = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 1;
  harness::print_problem(seed);
  const size_t rows = static_cast<size_t>(kB * kT) * kHQ, nd = rows * kDV;
  harness::Rng rng(seed);
  std::vector<uint16_t> hdo, ho[3], hg[3];
  std::vector<float> fdo, fo[3], fg[3];
  harness::random_tensor<kBf16>(rng, nd, hdo, fdo);
  nsa::BwdPreParams p{};
  p.dout = harness::upload(hdo);
  float* delta[3];
  uint16_t* dg[3];
  for (int br = 0; br < 3; ++br) {
    harness::random_tensor<kBf16>(rng, nd, ho[br], fo[br]);
    harness::random_gate<kBf16>(rng, rows, hg[br], fg[br]);
    p.o[br] = harness::upload(ho[br]);
    p.g[br] = harness::upload(hg[br]);
    p.dg[br] = dg[br] = harness::device_array<uint16_t>(rows, 0xff);
    p.delta[br] = delta[br] = harness::device_array<float>(rows, 0xff);
    p.o_sh[br] = kDV, p.o_st[br] = kHQ * kDV, p.o_sb[br] = kT * kHQ * kDV;
  }
  p.cu_seqlens = nullptr;
  p.do_sh = kDV, p.do_st = kHQ * kDV, p.do_sb = kT * kHQ * kDV;
  p.gate_sh = 1, p.gate_st = kHQ, p.gate_sb = kT * kHQ;
  p.dg_st = kHQ, p.dg_sb = kT * kHQ;
  p.T = kT, p.HQ = kHQ, p.dv = kDV, p.zero_dg_win = 0;
  const dim3 grid(static_cast<unsigned>((kT * kHQ + 7) / 8), 1, static_cast<unsigned>(kB)), block(256);
  harness::launch_entry(grid, block, 0, p);
  HARNESS_CHECK(cudaDeviceSynchronize());
  harness::ErrorNorm err_delta, err_dg;
  for (int br = 0; br < 3; ++br) {
    const std::vector<float> gd = harness::download(delta[br], rows);
    const std::vector<uint16_t> gg = harness::download(dg[br], rows);
    for (size_t r = 0; r < rows; ++r) {
      double dot = 0;
      for (int i = 0; i < kDV; ++i) dot += static_cast<double>(fdo[r * kDV + i]) * fo[br][r * kDV + i];
      err_delta.add(gd[r], fg[br][r] * dot);
      err_dg.add(harness::from_bits<kBf16>(gg[r]), dot);
    }
  }
  const double tol = harness::tolerance();
  std::printf("checked %zu rows x 3 branches: rel error delta %.3e, dg %.3e (tolerance %.0e); non-finite %lld\n", rows,
              err_delta.rel(), err_dg.rel(), tol, err_delta.bad + err_dg.bad);
  const float ms = harness::median_ms([&] { kEntry<<<grid, block>>>(p); });
  return harness::report(err_delta.bad + err_dg.bad == 0 && err_delta.rel() <= tol && err_dg.rel() <= tol, ms);
}

#endif  // NSA_HARNESS_BWD_PRE_CUH
