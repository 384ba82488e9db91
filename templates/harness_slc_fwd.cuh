// Standalone check of the generated selected-attention kernel: random q, k, v and a random valid selection built
// here (the forced blocks 0, t/l' - 1, t/l' plus random others, ascending, -1 padded, cnt = min(n, t/l' + 1)),
// poisoned outputs, a float64 host reference on sampled rows (all rows when small), NSA.md's tolerance, and a
// median time.
#ifndef NSA_HARNESS_SLC_FWD_CUH
#define NSA_HARNESS_SLC_FWD_CUH

int main(int argc, char** argv) {
  using namespace nsa::harness_spec;
  constexpr bool kBf16 = kIsBf16;
  const uint64_t seed = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 1;
  harness::print_problem(seed);
  const long long G = kHQ / kH;

  harness::Rng rng(seed);
  std::vector<uint16_t> hq, hk, hv;
  std::vector<float> fq, fk, fv;
  const size_t nq = static_cast<size_t>(kB * kT) * kHQ * kDK, nk = static_cast<size_t>(kB * kT) * kH * kDK;
  const size_t nv = static_cast<size_t>(kB * kT) * kH * kDV, no = static_cast<size_t>(kB * kT) * kHQ * kDV;
  const size_t nl = static_cast<size_t>(kB * kT) * kHQ;
  harness::random_tensor<kBf16>(rng, nq, hq, fq);
  harness::random_tensor<kBf16>(rng, nk, hk, fk);
  harness::random_tensor<kBf16>(rng, nv, hv, fv);
  std::vector<int> idx, cnt;
  harness::random_selection(rng, kB, kT, kH, kLSel, kN, idx, cnt);
  uint16_t* dq = harness::upload(hq);
  uint16_t* dk = harness::upload(hk);
  uint16_t* dv = harness::upload(hv);
  int* didx = harness::upload(idx);
  int* dcnt = harness::upload(cnt);
  uint16_t* dout = harness::device_array<uint16_t>(no, 0xff);  // NaN: unwritten elements fail
  float* dlse = harness::device_array<float>(nl, 0xff);

  nsa::SlcFwdParams p{};
  p.q = dq, p.k = dk, p.v = dv, p.o = dout, p.lse = dlse, p.idx = didx, p.cnt = dcnt;
  p.gate = nullptr, p.out = nullptr;
  p.q_sh = kDK, p.q_st = kHQ * p.q_sh, p.q_sb = kT * p.q_st;
  p.k_sh = kDK, p.k_st = kH * p.k_sh, p.k_sb = kT * p.k_st;
  p.v_sh = kDV, p.v_st = kH * p.v_sh, p.v_sb = kT * p.v_st;
  p.o_sh = kDV, p.o_st = kHQ * p.o_sh, p.o_sb = kT * p.o_st;
  p.lse_st = kHQ, p.lse_sb = kT * kHQ;
  p.cu_seqlens = nullptr;
  p.T = kT, p.H = kH, p.n = kN, p.accumulate = 0;
  p.scale_log2 = static_cast<float>(kScale * 1.4426950408889634);
  const dim3 grid(kGridX, kGridY, kGridZ), block(kThreads);
  harness::launch_entry(grid, block, kSmemBytes, p);
  HARNESS_CHECK(cudaDeviceSynchronize());
  const std::vector<uint16_t> out = harness::download(dout, no);
  const std::vector<float> lse = harness::download(dlse, nl);

  long long unwritten = 0;
  for (size_t i = 0; i < no; ++i) unwritten += !std::isfinite(harness::from_bits<kBf16>(out[i]));
  for (size_t i = 0; i < nl; ++i) unwritten += !std::isfinite(lse[i]);  // every query sees its own block
  harness::ErrorNorm err_o, err_lse;
  const std::vector<long long> checked = harness::sample(kB * kT * kHQ, 2048);
  std::vector<double> scores, acc(kDV);
  for (long long row : checked) {
    const long long h = row % kHQ, t = (row / kHQ) % kT, b = row / (kHQ * kT), kvh = h / G;
    const size_t sel = static_cast<size_t>((b * kT + t) * kH + kvh);
    const float* qrow = &fq[static_cast<size_t>(row) * kDK];
    scores.clear();
    double mx = -INFINITY;
    for (int m = 0; m < cnt[sel]; ++m)
      for (long long s = idx[sel * kN + m] * static_cast<long long>(kLSel); s < (idx[sel * kN + m] + 1LL) * kLSel && s <= t; ++s) {
        const float* krow = &fk[static_cast<size_t>(((b * kT + s) * kH + kvh) * kDK)];
        double dot = 0;
        for (int i = 0; i < kDK; ++i) dot += static_cast<double>(qrow[i]) * krow[i];
        scores.push_back(dot * kScale);
        mx = std::max(mx, scores.back());
      }
    double sum = 0;
    std::fill(acc.begin(), acc.end(), 0.0);
    size_t e = 0;
    for (int m = 0; m < cnt[sel]; ++m)
      for (long long s = idx[sel * kN + m] * static_cast<long long>(kLSel); s < (idx[sel * kN + m] + 1LL) * kLSel && s <= t; ++s) {
        const double x = std::exp(scores[e++] - mx);
        sum += x;
        const float* vrow = &fv[static_cast<size_t>(((b * kT + s) * kH + kvh) * kDV)];
        for (int i = 0; i < kDV; ++i) acc[i] += x * vrow[i];
      }
    for (int i = 0; i < kDV; ++i) err_o.add(harness::from_bits<kBf16>(out[static_cast<size_t>(row) * kDV + i]), acc[i] / sum);
    err_lse.add(lse[static_cast<size_t>(row)], mx + std::log(sum));
  }
  const float ms = harness::median_ms([&] { kEntry<<<grid, block, kSmemBytes>>>(p); });
  const double tol = harness::tolerance();
  const bool pass = unwritten == 0 && err_o.bad == 0 && err_lse.bad == 0 && err_o.rel() <= tol && err_lse.rel() <= tol;
  std::printf("checked %zu rows: rel error o %.3e, lse %.3e (tolerance %.0e); unwritten or non-finite %lld\n",
              checked.size(), err_o.rel(), err_lse.rel(), tol, unwritten + err_o.bad + err_lse.bad);
  return harness::report(pass, ms);
}

#endif  // NSA_HARNESS_SLC_FWD_CUH
