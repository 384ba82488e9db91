// Standalone check of the generated top-n selection kernel: random q and k_cmp, branch 1's lse from a simple fp32
// kernel in this file (the select kernel's input), poisoned idx/cnt; every row's structure (cnt, ascending causal
// blocks, -1 padding, the forced blocks), and on sampled positions the chosen sets against float64 block scores
// computed here from the definition (NSA.md: equal sets, or near-tie swaps within 1e-3 of the top score).
#ifndef NSA_HARNESS_SELECT_CUH
#define NSA_HARNESS_SELECT_CUH

namespace harness {

// lse of branch 1 (natural log, -inf without visible blocks), fp32, one thread per (token, query head).
__global__ void lse_cmp_kernel(const nsa::spec::elem* q, const nsa::spec::elem* k_cmp, float* lse, long long nc) {
  using namespace nsa::harness_spec;
  const long long r = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= kB * kT * kHQ) return;
  const long long h = r % kHQ, t = (r / kHQ) % kT, b = r / (kHQ * kT);
  const long long vis = t + 1 >= kL ? (t + 1 - kL) / kD + 1 : 0;
  const nsa::spec::elem* qr = q + r * kDK;
  float m = -INFINITY, s = 0.f;
  for (long long i = 0; i < vis; ++i) {
    const nsa::spec::elem* kr = k_cmp + ((b * nc + i) * kH + h / (kHQ / kH)) * kDK;
    float dot = 0.f;
    for (int c = 0; c < kDK; ++c) dot += nsa::to_float(qr[c]) * nsa::to_float(kr[c]);
    const float x = dot * static_cast<float>(kScale);
    if (x > m) {
      s = s * expf(m - x) + 1.f;
      m = x;
    } else {
      s += expf(x - m);
    }
  }
  lse[r] = vis > 0 ? m + logf(s) : -INFINITY;
}

}  // namespace harness

int main(int argc, char** argv) {
  using namespace nsa::harness_spec;
  constexpr bool kBf16 = kIsBf16;
  const uint64_t seed = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 1;
  harness::print_problem(seed);
  const long long G = kHQ / kH, nc = kT >= kL ? (kT - kL) / kD + 1 : 0, ns = (kT + kLSel - 1) / kLSel;

  harness::Rng rng(seed);
  std::vector<uint16_t> hq, hk;
  std::vector<float> fq, fk;
  const size_t nq = static_cast<size_t>(kB * kT) * kHQ * kDK, nk = static_cast<size_t>(kB * nc) * kH * kDK;
  const size_t rows = static_cast<size_t>(kB * kT) * kH;
  harness::random_tensor<kBf16>(rng, nq, hq, fq);
  harness::random_tensor<kBf16>(rng, nk, hk, fk);
  uint16_t* dq = harness::upload(hq);
  uint16_t* dk = harness::upload(hk);
  float* dlse = harness::device_array<float>(static_cast<size_t>(kB * kT) * kHQ, 0xff);
  int* didx = harness::device_array<int>(rows * kN, 0x7f);
  int* dcnt = harness::device_array<int>(rows, 0x7f);
  const long long lse_rows = kB * kT * kHQ;
  harness::lse_cmp_kernel<<<static_cast<unsigned>((lse_rows + 127) / 128), 128>>>(
      reinterpret_cast<const nsa::spec::elem*>(dq), reinterpret_cast<const nsa::spec::elem*>(dk), dlse, nc);
  HARNESS_CHECK(cudaGetLastError());

  nsa::SelectParams p{};
  p.q = dq, p.k_cmp = dk, p.lse = dlse, p.idx = didx, p.cnt = dcnt;
  p.q_sh = kDK, p.q_st = kHQ * p.q_sh, p.q_sb = kT * p.q_st;
  p.k_sh = kDK, p.k_st = kH * p.k_sh, p.k_sb = nc * p.k_st;
  p.lse_st = kHQ, p.lse_sb = kT * kHQ;
  p.cu_seqlens = nullptr;
  p.T = kT, p.H = kH;
  p.ns_row = static_cast<int>((ns + 3) / 4 * 4);
  p.scale_log2 = static_cast<float>(kScale * 1.4426950408889634);
  const dim3 grid(kGridX, kGridY, kGridZ), block(kThreads);
  harness::launch_entry(grid, block, kSmemBytes, p);
  HARNESS_CHECK(cudaDeviceSynchronize());
  const std::vector<int> idx = harness::download(didx, rows * kN), cnt = harness::download(dcnt, rows);
  const std::vector<float> lse = harness::download(dlse, static_cast<size_t>(lse_rows));

  // Every row's structure (the row judged against its own set reads no scores).
  long long bad = 0;
  std::string first;
  for (size_t r = 0; r < rows; ++r) {
    const long long t = static_cast<long long>(r / kH) % kT;
    const int* row = &idx[r * kN];
    const nsa_rule::RowVerdict v = nsa_rule::judge_row(t, row, cnt[r], row, cnt[r], nullptr, kLSel, kN);
    if (!v.error.empty() && bad++ == 0) first = "t=" + std::to_string(t) + " kv_head=" + std::to_string(r % kH) + ": " + v.error;
  }
  // Sampled positions: the chosen sets against float64 scores from the definition, with the lse the kernel saw.
  long long checked = 0, near_ties = 0;
  std::vector<double> score;
  for (long long pos : harness::sample(kB * kT, 48)) {
    const long long b = pos / kT, t = pos % kT, jt = t / kLSel;
    const long long vis = t + 1 >= kL ? (t + 1 - kL) / kD + 1 : 0;
    for (int kvh = 0; kvh < kH; ++kvh) {
      score.assign(static_cast<size_t>(jt + 1), 0.0);
      for (long long g = 0; g < G; ++g) {
        const long long h = kvh * G + g;
        const double l = lse[static_cast<size_t>(pos * kHQ + h)];
        const float* qr = &fq[static_cast<size_t>((pos * kHQ + h) * kDK)];
        for (long long i = 0; i < vis; ++i) {
          const float* kr = &fk[static_cast<size_t>(((b * nc + i) * kH + kvh) * kDK)];
          double dot = 0;
          for (int c = 0; c < kDK; ++c) dot += static_cast<double>(qr[c]) * kr[c];
          const double pc = std::exp(dot * kScale - l);
          // Eq. 9: block i covers tokens [i d, i d + l); selection block j gets |overlap| / d of it.
          for (long long j = (i * kD) / kLSel; j * kLSel < i * kD + kL && j <= jt; ++j) {
            const long long lo = std::max(i * kD, j * kLSel), hi = std::min(i * kD + kL, (j + 1) * kLSel);
            score[static_cast<size_t>(j)] += static_cast<double>(hi - lo) / kD * pc;
          }
        }
      }
      const size_t r = static_cast<size_t>(pos * kH + kvh);
      const nsa_rule::RowVerdict v = nsa_rule::judge_row(t, &idx[r * kN], cnt[r], nullptr, 0, score.data(), kLSel, kN);
      ++checked;
      near_ties += v.error.empty() && v.swaps > 0;
      if (!v.error.empty() && bad++ == 0) first = "t=" + std::to_string(t) + " kv_head=" + std::to_string(kvh) + ": " + v.error;
    }
  }
  const float ms = harness::median_ms([&] { kEntry<<<grid, block, kSmemBytes>>>(p); });
  std::printf("checked the structure of %zu rows and %lld sampled (position, KV head) sets against float64 scores "
              "(%lld accepted near ties); wrong: %lld%s%s\n",
              rows, checked, near_ties, bad, bad ? "; first: " : "", first.c_str());
  return harness::report(bad == 0, ms);
}

#endif  // NSA_HARNESS_SELECT_CUH
