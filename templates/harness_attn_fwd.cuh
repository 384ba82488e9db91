// Standalone check of one generated dense-attention kernel (win_fwd, cmp_fwd and their simple fp32 reference
// kernels win_fwd_ref, cmp_fwd_ref): random inputs, poisoned outputs,
// a float64 CPU reference on sampled rows (all rows when small), NSA.md's tolerance, and a median time over
// repeated launches.
#ifndef NSA_HARNESS_ATTN_FWD_CUH
#define NSA_HARNESS_ATTN_FWD_CUH

int main(int argc, char** argv) {
  using namespace nsa::harness_spec;
  constexpr bool kBf16 = kIsBf16;
  const uint64_t seed = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 1;
  const long long G = kHQ / kH;
  constexpr bool kWindow = nsa::spec::kMask == nsa::kMaskWindow;
  // Keys per sequence: every token (window) or the compressed blocks.
  const long long kKeys = kWindow ? kT : (kT >= kL ? (kT - kL) / kD + 1 : 0);
  harness::print_problem(seed);

  harness::Rng rng(seed);
  std::vector<uint16_t> hq, hk, hv;
  std::vector<float> fq, fk, fv;
  const size_t nq = static_cast<size_t>(kB * kT) * kHQ * kDK, nk = static_cast<size_t>(kB * kKeys) * kH * kDK + 8;
  const size_t nv = static_cast<size_t>(kB * kKeys) * kH * kDV + 8, no = static_cast<size_t>(kB * kT) * kHQ * kDV;
  const size_t nl = static_cast<size_t>(kB * kT) * kHQ;
  harness::random_tensor<kBf16>(rng, nq, hq, fq);
  harness::random_tensor<kBf16>(rng, nk, hk, fk);
  harness::random_tensor<kBf16>(rng, nv, hv, fv);

  void *dq, *dk, *dv, *dout;
  float* dlse;
  HARNESS_CHECK(cudaMalloc(&dq, nq * 2));
  HARNESS_CHECK(cudaMalloc(&dk, nk * 2));
  HARNESS_CHECK(cudaMalloc(&dv, nv * 2));
  HARNESS_CHECK(cudaMalloc(&dout, no * 2));
  HARNESS_CHECK(cudaMalloc(&dlse, nl * 4));
  HARNESS_CHECK(cudaMemcpy(dq, hq.data(), nq * 2, cudaMemcpyHostToDevice));
  HARNESS_CHECK(cudaMemcpy(dk, hk.data(), nk * 2, cudaMemcpyHostToDevice));
  HARNESS_CHECK(cudaMemcpy(dv, hv.data(), nv * 2, cudaMemcpyHostToDevice));
  HARNESS_CHECK(cudaMemset(dout, 0xff, no * 2));  // NaN in bf16 and fp16: unwritten elements fail
  HARNESS_CHECK(cudaMemset(dlse, 0xff, nl * 4));

  nsa::AttnFwdParams p{};
  p.q = dq, p.k = dk, p.v = dv, p.o = dout, p.lse = dlse;
  p.q_sh = kDK, p.q_st = kHQ * p.q_sh, p.q_sb = kT * p.q_st;
  p.k_sh = kDK, p.k_st = kH * p.k_sh, p.k_sb = kKeys * p.k_st;
  p.v_sh = kDV, p.v_st = kH * p.v_sh, p.v_sb = kKeys * p.v_st;
  p.o_sh = kDV, p.o_st = kHQ * p.o_sh, p.o_sb = kT * p.o_st;
  p.lse_st = kHQ, p.lse_sb = kT * kHQ;
  p.cu_seqlens = nullptr;
  p.T = kT, p.H = kH, p.w = kW, p.l = kL, p.d = kD;
  p.scale_log2 = static_cast<float>(kScale * 1.4426950408889634);

  HARNESS_CHECK(cudaFuncSetAttribute(kEntry, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes));
  const dim3 grid(kGridX, kGridY, kGridZ), block(kThreads);
  kEntry<<<grid, block, kSmemBytes>>>(p);
  HARNESS_CHECK(cudaGetLastError());
  HARNESS_CHECK(cudaDeviceSynchronize());

  std::vector<uint16_t> out(no);
  std::vector<float> lse(nl);
  HARNESS_CHECK(cudaMemcpy(out.data(), dout, no * 2, cudaMemcpyDeviceToHost));
  HARNESS_CHECK(cudaMemcpy(lse.data(), dlse, nl * 4, cudaMemcpyDeviceToHost));

  // Every element must be written and finite; the values are checked on up to 8192 rows spread evenly.
  long long unwritten = 0;
  for (size_t i = 0; i < no; ++i) unwritten += !std::isfinite(harness::from_bits<kBf16>(out[i]));
  for (size_t i = 0; i < nl; ++i) unwritten += std::isnan(lse[i]);
  const long long rows = kB * kT * kHQ;
  const long long step = std::max(1LL, rows / 8192);
  harness::ErrorNorm err_o, err_lse;
  std::vector<double> scores, acc(kDV);
  for (long long row = 0; row < rows; row += step) {
    const long long h = row % kHQ, t = (row / kHQ) % kT, b = row / (kHQ * kT), kvh = h / G;
    // The keys row t sees: [s_lo, s_hi].
    const long long s_lo = kWindow ? std::max(0LL, t - kW + 1) : 0;
    const long long s_hi = kWindow ? t : (t + 1 >= kL ? (t + 1 - kL) / kD : -1);
    const float* qrow = &fq[static_cast<size_t>(row) * kDK];
    double mx = -INFINITY;
    scores.clear();
    for (long long s = s_lo; s <= s_hi; ++s) {
      const float* krow = &fk[static_cast<size_t>(((b * kKeys + s) * kH + kvh) * kDK)];
      double dot = 0;
      for (int i = 0; i < kDK; ++i) dot += static_cast<double>(qrow[i]) * krow[i];
      scores.push_back(dot * kScale);
      mx = std::max(mx, scores.back());
    }
    double sum = 0;
    std::fill(acc.begin(), acc.end(), 0.0);
    for (long long s = s_lo; s <= s_hi; ++s) {
      const double e = std::exp(scores[static_cast<size_t>(s - s_lo)] - mx);
      sum += e;
      const float* vrow = &fv[static_cast<size_t>(((b * kKeys + s) * kH + kvh) * kDV)];
      for (int i = 0; i < kDV; ++i) acc[i] += e * vrow[i];
    }
    for (int i = 0; i < kDV; ++i)
      err_o.add(harness::from_bits<kBf16>(out[static_cast<size_t>(row) * kDV + i]), sum > 0 ? acc[i] / sum : 0.0);
    if (sum > 0)
      err_lse.add(lse[static_cast<size_t>(row)], mx + std::log(sum));
    else
      unwritten += !(std::isinf(lse[static_cast<size_t>(row)]) && lse[static_cast<size_t>(row)] < 0);  // -inf
  }

  const float ms = harness::median_ms([&] { kEntry<<<grid, block, kSmemBytes>>>(p); });

  const double tol = kBf16 ? 1e-2 : 2e-3;
  const bool pass = unwritten == 0 && err_o.bad == 0 && err_lse.bad == 0 && err_o.rel() <= tol &&
                    err_lse.rel() <= tol;
  std::printf("checked %lld rows: rel error o %.3e, lse %.3e (tolerance %.0e); unwritten or non-finite %lld\n",
              (rows + step - 1) / step, err_o.rel(), err_lse.rel(), tol, unwritten + err_o.bad + err_lse.bad);
  cudaFree(dq), cudaFree(dk), cudaFree(dv), cudaFree(dout), cudaFree(dlse);
  return harness::report(pass, ms);
}

#endif  // NSA_HARNESS_ATTN_FWD_CUH
