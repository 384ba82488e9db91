// Standalone check of the generated decode kernel: B sequences of T tokens in a paged cache (page size 128, pages
// in reverse order), their compressed cache pooled on the host, one query token per sequence (the last, t = T - 1).
// First with only the window gate, checked against the window attention computed on the host (double); then with
// all three gates, checking that every output is written and finite and that each selection row is ascending,
// causal, -1 padded and holds the forced blocks. With SPLIT > 1 a step is the five split-KV launches.
#ifndef NSA_HARNESS_DECODE_CUH
#define NSA_HARNESS_DECODE_CUH

int main(int argc, char** argv) {
  using namespace nsa::harness_spec;
  constexpr bool kBf16 = kIsBf16;
  const uint64_t seed = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 1;
  harness::print_problem(seed);
  constexpr int kPage = 128;
  const long long pps = (kT + kPage - 1) / kPage, num_pages = kB * pps;
  const long long nc = kT >= kL ? (kT - kL) / kD + 1 : 0;
  const int G = kHQ / kH;
  harness::Rng rng(seed);
  std::vector<uint16_t> hk, hv, hq, hg;
  std::vector<float> fk, fv, fq, fg;
  harness::random_tensor<kBf16>(rng, static_cast<size_t>(kB * kT) * kH * kDK, hk, fk);  // [B, T, H, dk]
  harness::random_tensor<kBf16>(rng, static_cast<size_t>(kB * kT) * kH * kDV, hv, fv);
  harness::random_tensor<kBf16>(rng, static_cast<size_t>(kB) * kHQ * kDK, hq, fq);       // [B, 1, HQ, dk]
  harness::random_gate<kBf16>(rng, static_cast<size_t>(kB) * kHQ, hg, fg);
  std::vector<int> table(static_cast<size_t>(num_pages)), lens(static_cast<size_t>(kB), static_cast<int>(kT));
  for (long long i = 0; i < num_pages; ++i) table[static_cast<size_t>(i)] = static_cast<int>(num_pages - 1 - i);
  std::vector<uint16_t> kpool(static_cast<size_t>(num_pages * kPage) * kH * kDK, 0),
      vpool(static_cast<size_t>(num_pages * kPage) * kH * kDV, 0);
  std::vector<uint16_t> kc(static_cast<size_t>(std::max(1LL, kB * nc)) * kH * kDK),
      vc(static_cast<size_t>(std::max(1LL, kB * nc)) * kH * kDV);
  for (long long b = 0; b < kB; ++b)
    for (long long s = 0; s < kT; ++s) {
      const long long phys = table[static_cast<size_t>(b * pps + s / kPage)] * kPage + s % kPage;
      for (int h = 0; h < kH; ++h) {
        for (int c = 0; c < kDK; ++c)
          kpool[static_cast<size_t>((phys * kH + h) * kDK + c)] = hk[static_cast<size_t>(((b * kT + s) * kH + h) * kDK + c)];
        for (int c = 0; c < kDV; ++c)
          vpool[static_cast<size_t>((phys * kH + h) * kDV + c)] = hv[static_cast<size_t>(((b * kT + s) * kH + h) * kDV + c)];
      }
    }
  for (long long b = 0; b < kB; ++b)
    for (long long i = 0; i < nc; ++i)
      for (int h = 0; h < kH; ++h) {
        for (int c = 0; c < kDK; ++c) {
          float s = 0;
          for (int r = 0; r < kL; ++r) s += fk[static_cast<size_t>(((b * kT + i * kD + r) * kH + h) * kDK + c)];
          kc[static_cast<size_t>(((b * nc + i) * kH + h) * kDK + c)] = harness::to_bits<kBf16>(s / kL);
        }
        for (int c = 0; c < kDV; ++c) {
          float s = 0;
          for (int r = 0; r < kL; ++r) s += fv[static_cast<size_t>(((b * kT + i * kD + r) * kH + h) * kDV + c)];
          vc[static_cast<size_t>(((b * nc + i) * kH + h) * kDV + c)] = harness::to_bits<kBf16>(s / kL);
        }
      }
  uint16_t *dq = harness::upload(hq), *dg = harness::upload(hg), *dkp = harness::upload(kpool),
           *dvp = harness::upload(vpool), *dkc = harness::upload(kc), *dvc = harness::upload(vc);
  int *dtable = harness::upload(table), *dlens = harness::upload(lens);
  const size_t no = static_cast<size_t>(kB) * kHQ * kDV;
  uint16_t* dout = harness::device_array<uint16_t>(no, 0xff);
  int* didx = harness::device_array<int>(static_cast<size_t>(kB) * kH * kN, 0xff);
  int* dcnt = harness::device_array<int>(static_cast<size_t>(kB) * kH, 0xff);

  nsa::DecodeParams p{};
  p.q = dq, p.q_sh = kDK, p.q_st = kHQ * kDK, p.q_sb = p.q_st;
  p.g_cmp = nullptr, p.g_slc = nullptr, p.g_win = dg;
  p.g_sh = 1, p.g_st = kHQ, p.g_sb = kHQ;
  p.o = dout, p.o_sh = kDV, p.o_st = kHQ * kDV, p.o_sb = p.o_st;
  p.k_slc = p.k_win = dkp, p.v_slc = p.v_win = dvp;
  p.page_table = dtable, p.pt_stride = pps, p.seqlens = dlens;
  p.k_cmp = dkc, p.v_cmp = dvc;
  p.kc_sh = kDK, p.kc_st = kH * kDK, p.kc_sb = nc * p.kc_st;
  p.vc_sh = kDV, p.vc_st = kH * kDV, p.vc_sb = nc * p.vc_st;
  p.idx = nullptr, p.cnt = nullptr;
  p.scale_log2 = static_cast<float>(kScale * 1.4426950408889634);
  p.Tq = 1, p.H = kH, p.page_size = kPage, p.l = kL, p.d = kD, p.lsel = kLSel, p.n = kN, p.w = kW;
  const dim3 grid(kGridX, kGridY, kGridZ), block(kThreads);
  // Split-KV (SPLIT > 1): five launches of the kernel (DecodeParams.phase 1 .. 5) through a workspace laid out as
  // runtime/decode_api.cpp lays it out.
#ifdef NSA_TILE_SPLIT
  constexpr int kSplit = NSA_TILE_SPLIT;
#else
  constexpr int kSplit = 1;
#endif
  p.split = kSplit;
  if (kSplit > 1) {
    const long long rows = kB * kH, pc_stride = (nc + 63) / 64 * 64;
    p.ws_part = harness::device_array<float>(static_cast<size_t>(rows * 3 * kSplit * G * kDV), 0);
    p.ws_ml = harness::device_array<float>(static_cast<size_t>(rows * 3 * kSplit * G * 2), 0);
    p.ws_pc = harness::device_array<float>(static_cast<size_t>(std::max(1LL, rows * pc_stride)), 0);
    p.ws_sel = harness::device_array<int>(static_cast<size_t>(rows * (nsa::kDecodeMaxSelected + 1)), 0);
    p.pc_stride = pc_stride;
  }
  auto step = [&](bool check) {
    if (kSplit == 1) {
      p.phase = 0;
      if (check)
        harness::launch_entry(grid, block, kSmemBytes, p);
      else
        kEntry<<<grid, block, kSmemBytes>>>(p);
      return;
    }
    for (int phase = 1; phase <= 5; ++phase) {
      if ((phase >= 2 && phase <= 4) && p.g_slc == nullptr) continue;
      p.phase = phase;
      const bool split_grid = phase != 3;
      const dim3 g(kGridX * (split_grid ? kSplit : 1), kGridY, kGridZ);
      if (check)
        harness::launch_entry(g, block, kSmemBytes, p);
      else
        kEntry<<<g, block, kSmemBytes>>>(p);
    }
  };
  step(true);
  HARNESS_CHECK(cudaDeviceSynchronize());
  std::vector<uint16_t> out = harness::download(dout, no);

  // The window branch of the last token, on the host.
  harness::ErrorNorm err;
  const long long t = kT - 1, s0 = kW > 0 ? std::max(0LL, t - kW + 1) : t + 1;
  for (long long b = 0; b < kB; ++b)
    for (int hq = 0; hq < kHQ; ++hq) {
      const int h = hq / G;
      std::vector<double> sc;
      double mx = -1e300;
      for (long long s = s0; s <= t; ++s) {
        double dot = 0;
        for (int c = 0; c < kDK; ++c)
          dot += static_cast<double>(fq[static_cast<size_t>((b * kHQ + hq) * kDK + c)]) *
                 fk[static_cast<size_t>(((b * kT + s) * kH + h) * kDK + c)];
        sc.push_back(dot * kScale);
        mx = std::max(mx, dot * kScale);
      }
      double sum = 0;
      for (double& x : sc) sum += (x = std::exp(x - mx));
      for (int c = 0; c < kDV; ++c) {
        double acc = 0;
        for (long long s = s0; s <= t; ++s)
          acc += sc[static_cast<size_t>(s - s0)] * fv[static_cast<size_t>(((b * kT + s) * kH + h) * kDV + c)];
        const double ref = sum > 0 ? fg[static_cast<size_t>(b * kHQ + hq)] * acc / sum : 0.0;
        err.add(harness::from_bits<kBf16>(out[static_cast<size_t>((b * kHQ + hq) * kDV + c)]), ref);
      }
    }
  std::printf("window only: %lld x %d rows against the host: rel error %.3e (tolerance %.0e); non-finite %lld\n",
              kB, kHQ, err.rel(), harness::tolerance(), err.bad);
  bool pass = err.bad == 0 && err.rel() <= harness::tolerance();

  // All three branches: every output written and finite, every selection row well formed.
  HARNESS_CHECK(cudaMemset(dout, 0xff, no * 2));
  p.g_cmp = dg, p.g_slc = dg, p.idx = didx, p.cnt = dcnt;
  step(true);
  HARNESS_CHECK(cudaDeviceSynchronize());
  out = harness::download(dout, no);
  long long bad = 0;
  for (uint16_t x : out) bad += !std::isfinite(harness::from_bits<kBf16>(x));
  const std::vector<int> idx = harness::download(didx, static_cast<size_t>(kB) * kH * kN),
                         cnt = harness::download(dcnt, static_cast<size_t>(kB) * kH);
  const long long jt = t / kLSel, want = std::min<long long>(kN, jt + 1);
  long long bad_rows = 0;
  for (long long r = 0; r < kB * kH; ++r) {
    const int* row = idx.data() + r * kN;
    bool ok = cnt[static_cast<size_t>(r)] == want;
    bool has0 = false, has_jt = false, has_jt1 = jt < 1;
    for (int m = 0; m < kN && ok; ++m) {
      if (m >= want) {
        ok = row[m] == -1;
        continue;
      }
      ok = row[m] >= 0 && row[m] <= jt && (m == 0 || row[m] > row[m - 1]);
      has0 |= row[m] == 0, has_jt |= row[m] == jt, has_jt1 |= row[m] == jt - 1;
    }
    bad_rows += !(ok && has0 && has_jt && has_jt1);
  }
  std::printf("all branches: non-finite outputs %lld of %zu; malformed selection rows %lld of %lld\n", bad, no,
              bad_rows, kB * kH);
  pass = pass && bad == 0 && bad_rows == 0;
  const float ms = harness::median_ms([&] { step(false); });
  return harness::report(pass, ms);
}

#endif  // NSA_HARNESS_DECODE_CUH
