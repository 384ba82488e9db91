// Standalone check of the generated decode-append kernel: B sequences with T - 1 tokens in a paged cache (page size
// 128, pages in reverse order), one token appended to each: the new rows must land at position T - 1 through the
// page table, and the compressed entry they complete (if any: i with i*d + l - 1 = T - 1) must equal the mean of its
// tokens computed on the host; nothing else in the compressed cache may change.
#ifndef NSA_HARNESS_DECODE_APPEND_CUH
#define NSA_HARNESS_DECODE_APPEND_CUH

int main(int argc, char** argv) {
  using namespace nsa::harness_spec;
  constexpr bool kBf16 = kIsBf16;
  const uint64_t seed = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 1;
  harness::print_problem(seed);
  constexpr int kPage = 128;
  const long long pps = (kT + kPage - 1) / kPage, num_pages = kB * pps;
  const long long nc = kT >= kL ? (kT - kL) / kD + 1 : 0, cap = std::max(1LL, nc);
  harness::Rng rng(seed);
  std::vector<uint16_t> hk, hv;
  std::vector<float> fk, fv;
  harness::random_tensor<kBf16>(rng, static_cast<size_t>(kB * kT) * kH * kDK, hk, fk);
  harness::random_tensor<kBf16>(rng, static_cast<size_t>(kB * kT) * kH * kDV, hv, fv);
  std::vector<int> table(static_cast<size_t>(num_pages)), lens(static_cast<size_t>(kB), static_cast<int>(kT - 1));
  for (long long i = 0; i < num_pages; ++i) table[static_cast<size_t>(i)] = static_cast<int>(num_pages - 1 - i);
  std::vector<uint16_t> kpool(static_cast<size_t>(num_pages * kPage) * kH * kDK, 0),
      vpool(static_cast<size_t>(num_pages * kPage) * kH * kDV, 0), knew, vnew;
  auto phys = [&](long long b, long long s) { return table[static_cast<size_t>(b * pps + s / kPage)] * kPage + s % kPage; };
  for (long long b = 0; b < kB; ++b)
    for (long long s = 0; s < kT; ++s)
      for (int h = 0; h < kH; ++h) {
        for (int c = 0; c < kDK; ++c) {
          const uint16_t x = hk[static_cast<size_t>(((b * kT + s) * kH + h) * kDK + c)];
          if (s < kT - 1) kpool[static_cast<size_t>((phys(b, s) * kH + h) * kDK + c)] = x; else knew.push_back(x);
        }
        for (int c = 0; c < kDV; ++c) {
          const uint16_t x = hv[static_cast<size_t>(((b * kT + s) * kH + h) * kDV + c)];
          if (s < kT - 1) vpool[static_cast<size_t>((phys(b, s) * kH + h) * kDV + c)] = x; else vnew.push_back(x);
        }
      }
  uint16_t *dkp = harness::upload(kpool), *dvp = harness::upload(vpool), *dkn = harness::upload(knew),
           *dvn = harness::upload(vnew);
  uint16_t* dkc = harness::device_array<uint16_t>(static_cast<size_t>(kB * cap) * kH * kDK, 0x7b);
  uint16_t* dvc = harness::device_array<uint16_t>(static_cast<size_t>(kB * cap) * kH * kDV, 0x7b);
  int *dtable = harness::upload(table), *dlens = harness::upload(lens);

  nsa::DecodeAppendParams p{};
  p.k_new = dkn, p.v_new = dvn;
  p.kn_sh = kDK, p.kn_st = kH * kDK, p.kn_sb = p.kn_st;
  p.vn_sh = kDV, p.vn_st = kH * kDV, p.vn_sb = p.vn_st;
  p.k_pool = dkp, p.v_pool = dvp, p.page_table = dtable, p.pt_stride = pps, p.seqlens = dlens;
  p.k_cmp = dkc, p.v_cmp = dvc;
  p.kc_sh = kDK, p.kc_st = kH * kDK, p.kc_sb = cap * p.kc_st;
  p.vc_sh = kDV, p.vc_st = kH * kDV, p.vc_sb = cap * p.vc_st;
  p.Tn = 1, p.H = kH, p.page_size = kPage, p.l = kL, p.d = kD;
  const dim3 grid(kGridX, kGridY, kGridZ), block(kThreads);
  harness::launch_entry(grid, block, kSmemBytes, p);
  HARNESS_CHECK(cudaDeviceSynchronize());
  const std::vector<uint16_t> kp = harness::download(dkp, kpool.size()), vp = harness::download(dvp, vpool.size()),
                              kcs = harness::download(dkc, static_cast<size_t>(kB * cap) * kH * kDK),
                              vcs = harness::download(dvc, static_cast<size_t>(kB * cap) * kH * kDV);
  long long wrong_rows = 0;
  for (long long b = 0; b < kB; ++b)
    for (int h = 0; h < kH; ++h) {
      for (int c = 0; c < kDK; ++c)
        wrong_rows += kp[static_cast<size_t>((phys(b, kT - 1) * kH + h) * kDK + c)] != knew[static_cast<size_t>((b * kH + h) * kDK + c)];
      for (int c = 0; c < kDV; ++c)
        wrong_rows += vp[static_cast<size_t>((phys(b, kT - 1) * kH + h) * kDV + c)] != vnew[static_cast<size_t>((b * kH + h) * kDV + c)];
    }
  // The entry the new token completes, if any; every other entry keeps its fill.
  const long long done = (kT - kL) >= 0 && (kT - kL) % kD == 0 ? (kT - kL) / kD : -1;
  harness::ErrorNorm err;
  long long touched = 0;
  for (long long b = 0; b < kB; ++b)
    for (long long i = 0; i < cap; ++i)
      for (int h = 0; h < kH; ++h)
        for (int which = 0; which < 2; ++which) {
          const int dim = which == 0 ? kDK : kDV;
          const std::vector<uint16_t>& got = which == 0 ? kcs : vcs;
          const std::vector<float>& src = which == 0 ? fk : fv;
          for (int c = 0; c < dim; ++c) {
            const uint16_t x = got[static_cast<size_t>(((b * cap + i) * kH + h) * dim + c)];
            if (i != done) {
              touched += x != 0x7b7b;
              continue;
            }
            double s = 0;
            for (int r = 0; r < kL; ++r) s += src[static_cast<size_t>(((b * kT + i * kD + r) * kH + h) * dim + c)];
            err.add(harness::from_bits<kBf16>(x), s / kL);
          }
        }
  std::printf("appended rows: %lld elements differ; completed entry %lld: rel error %.3e (tolerance %.0e); other "
              "entries touched: %lld elements\n",
              wrong_rows, done, err.rel(), harness::tolerance(), touched);
  const bool pass = wrong_rows == 0 && touched == 0 && err.bad == 0 && err.rel() <= harness::tolerance();
  const float ms = harness::median_ms([&] { kEntry<<<grid, block, kSmemBytes>>>(p); });
  return harness::report(pass, ms);
}

#endif  // NSA_HARNESS_DECODE_APPEND_CUH
