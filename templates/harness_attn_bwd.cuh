// Standalone check of one generated attention-backward kernel (cmp/slc/win _bwd_dq and _bwd_dkv): random q, k, v, do
// and gates in (0, 1); for the selected branch a random valid selection and (dkv) its inverted index, built on the
// host; each row's lse from a simple fp32 kernel in this file (so P = exp(S - lse) are the branch's probabilities);
// delta random (the kernel takes it as given). The gradient the kernel writes (dq, or dk/dv: added to zeros, summed
// over the compressed chunks or the selected partial slots as the runtime's reduce kernels would) on sampled rows
// or keys against float64 on the host from the same inputs:
//   P = exp(scale q.k - lse), dP = do.v, dS = P (g dP - delta);  dq = scale sum dS k,  dk = scale sum dS q,
//   dv = sum g P do.
#ifndef NSA_HARNESS_ATTN_BWD_CUH
#define NSA_HARNESS_ATTN_BWD_CUH

namespace harness {

constexpr int kBranch = nsa::spec::kMask;  // nsa::kMaskWindow, kMaskCompressed or kMaskSelected
constexpr bool kDq = nsa::spec::kPart == 0;

// Key rows of one sequence in k/v: its tokens, or its compressed blocks.
constexpr long long kKeyRows =
    kBranch != nsa::kMaskCompressed ? nsa::harness_spec::kT
    : nsa::harness_spec::kT >= nsa::harness_spec::kL ? (nsa::harness_spec::kT - nsa::harness_spec::kL) / nsa::harness_spec::kD + 1
                                                     : 0;

// Calls f(s) for every key s query t of KV head kvh sees in this branch (`sel`: that row's idx, `c` its cnt). Used
// by the lse kernel and by the host reference (with a host lambda: nvcc's check of that call is switched off).
#pragma nv_exec_check_disable
template <class F>
__host__ __device__ void for_each_key(long long t, const int* sel, int c, F f) {
  using namespace nsa::harness_spec;
  if (kBranch == nsa::kMaskWindow) {
    for (long long s = t - kW + 1 < 0 ? 0 : t - kW + 1; s <= t; ++s) f(s);
  } else if (kBranch == nsa::kMaskCompressed) {
    for (long long i = 0; i * kD + kL - 1 <= t; ++i) f(i);
  } else {
    for (int m = 0; m < c; ++m)
      for (long long s = static_cast<long long>(sel[m]) * kLSel; s < (sel[m] + 1LL) * kLSel && s <= t; ++s) f(s);
  }
}

// The branch's lse (natural log, -inf without keys), fp32, one thread per (token, query head).
__global__ void lse_kernel(const nsa::spec::elem* q, const nsa::spec::elem* k, const int* idx, const int* cnt,
                           float* lse) {
  using namespace nsa::harness_spec;
  const long long r = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= kB * kT * kHQ) return;
  const long long h = r % kHQ, t = (r / kHQ) % kT, b = r / (kHQ * kT), kvh = h / (kHQ / kH);
  const long long sel = (b * kT + t) * kH + kvh;
  float m = -INFINITY, s = 0.f;
  for_each_key(t, idx ? idx + sel * kN : nullptr, cnt ? cnt[sel] : 0, [&](long long key) {
    const nsa::spec::elem* kr = k + ((b * kKeyRows + key) * kH + kvh) * kDK;
    float dot = 0.f;
    for (int c = 0; c < kDK; ++c) dot += nsa::to_float(q[r * kDK + c]) * nsa::to_float(kr[c]);
    const float x = dot * static_cast<float>(kScale);
    if (x > m) {
      s = s * expf(m - x) + 1.f;
      m = x;
    } else {
      s += expf(x - m);
    }
  });
  lse[r] = s > 0.f ? m + logf(s) : -INFINITY;
}

}  // namespace harness

int main(int argc, char** argv) {
  using namespace nsa::harness_spec;
  using harness::kBranch;
  constexpr bool kBf16 = kIsBf16;
  const uint64_t seed = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 1;
  harness::print_problem(seed);
  const long long G = kHQ / kH, keys = harness::kKeyRows, tok = kB * kT;

  harness::Rng rng(seed);
  std::vector<uint16_t> hq, hk, hv, hdo, hg;
  std::vector<float> fq, fk, fv, fdo, fg, delta(static_cast<size_t>(tok * kHQ));
  harness::random_tensor<kBf16>(rng, static_cast<size_t>(tok * kHQ) * kDK, hq, fq);
  harness::random_tensor<kBf16>(rng, static_cast<size_t>(kB * keys) * kH * kDK + 8, hk, fk);
  harness::random_tensor<kBf16>(rng, static_cast<size_t>(kB * keys) * kH * kDV + 8, hv, fv);
  harness::random_tensor<kBf16>(rng, static_cast<size_t>(tok * kHQ) * kDV, hdo, fdo);
  harness::random_gate<kBf16>(rng, static_cast<size_t>(tok * kHQ), hg, fg);
  for (float& x : delta) x = static_cast<float>(0.5 * rng.normal());
  std::vector<int> idx, cnt;
  if (kBranch == nsa::kMaskSelected) harness::random_selection(rng, kB, kT, kH, kLSel, kN, idx, cnt);
  const harness::HostIndex index = kBranch == nsa::kMaskSelected && !harness::kDq
                                       ? harness::build_index(idx, cnt, kB, kT, kH, kLSel, kN, nsa::spec::kQChunk)
                                       : harness::HostIndex{};

  nsa::AttnBwdParams p{};
  p.q = harness::upload(hq), p.k = harness::upload(hk), p.v = harness::upload(hv), p.dout = harness::upload(hdo);
  p.gate = harness::upload(hg), p.delta = harness::upload(delta);
  const int* didx = idx.empty() ? nullptr : harness::upload(idx);
  const int* dcnt = cnt.empty() ? nullptr : harness::upload(cnt);
  p.idx = didx, p.cnt = dcnt;
  float* dlse = harness::device_array<float>(static_cast<size_t>(tok * kHQ), 0xff);
  harness::lse_kernel<<<static_cast<unsigned>((tok * kHQ + 127) / 128), 128>>>(
      static_cast<const nsa::spec::elem*>(p.q), static_cast<const nsa::spec::elem*>(p.k), didx, dcnt, dlse);
  HARNESS_CHECK(cudaGetLastError());
  p.lse = dlse;
  p.cu_seqlens = nullptr;
  p.q_sh = kDK, p.q_st = kHQ * kDK, p.q_sb = kT * kHQ * kDK;
  p.k_sh = kDK, p.k_st = kH * kDK, p.k_sb = keys * kH * kDK;
  p.v_sh = kDV, p.v_st = kH * kDV, p.v_sb = keys * kH * kDV;
  p.do_sh = kDV, p.do_st = kHQ * kDV, p.do_sb = kT * kHQ * kDV;
  p.lse_st = kHQ, p.lse_sb = kT * kHQ;
  p.gate_sh = 1, p.gate_st = kHQ, p.gate_sb = kT * kHQ;
  p.T = kT, p.H = kH, p.w = kW, p.l = kL, p.d = kD, p.n = kN, p.accumulate = 0;
  p.scale = static_cast<float>(kScale), p.scale_log2 = static_cast<float>(kScale * 1.4426950408889634);
  const size_t nk = static_cast<size_t>(kB * keys) * kH * kDK, nv = static_cast<size_t>(kB * keys) * kH * kDV;
  dim3 grid(kGridX, kGridY, kGridZ);
  if (harness::kDq) {
    p.dq = harness::device_array<float>(static_cast<size_t>(tok * kHQ) * kDK, 0xff);  // NaN: every row is written
  } else {
    p.dk = harness::device_array<float>(nk, 0), p.dv = harness::device_array<float>(nv, 0);  // added to
  }
  if (kBranch == nsa::kMaskCompressed && !harness::kDq) {
#ifdef NSA_TILE_QSPLIT
    p.qsplit = NSA_TILE_QSPLIT;  // the config's query chunk (a run-time parameter of the kernel)
#else
    p.qsplit = kT;
#endif
    p.nchunks = (kT + p.qsplit - 1) / p.qsplit;
    p.cmp_rows = kB * keys;
    p.cpart = harness::device_array<float>(static_cast<size_t>(p.nchunks) * (nk + nv), 0);
  }
  if (kBranch == nsa::kMaskSelected && !harness::kDq) {
    p.list = harness::upload(index.list), p.list_off = harness::upload(index.list_off);
    p.count = harness::upload(index.count), p.item_off = harness::upload(index.item_off);
    p.slot_off = harness::upload(index.slot_off), p.blk_seq = harness::upload(index.blk_seq);
    p.seq_blk_off = harness::upload(index.seq_blk_off);
    p.nblk = index.nblk, p.list_stride = index.list_stride, p.slot_stride = index.slot_stride;
    p.partial = harness::device_array<float>(static_cast<size_t>(kH * index.slot_stride) * kLSel * (kDK + kDV), 0);
    grid.x = static_cast<unsigned>(std::max(1LL, index.max_items));  // the runtime's x is an upper bound on it
  }
  const dim3 block(kThreads);
  harness::launch_entry(grid, block, kSmemBytes, p);
  HARNESS_CHECK(cudaDeviceSynchronize());
  const std::vector<float> lse = harness::download(dlse, static_cast<size_t>(tok * kHQ));

  // float64 terms of one (query row, key) pair: P, and dS.
  auto terms = [&](long long row, long long b, long long s, long long kvh, double* P, double* dS) {
    const float* qr = &fq[static_cast<size_t>(row * kDK)];
    const float* kr = &fk[static_cast<size_t>(((b * keys + s) * kH + kvh) * kDK)];
    const float* vr = &fv[static_cast<size_t>(((b * keys + s) * kH + kvh) * kDV)];
    const float* dr = &fdo[static_cast<size_t>(row * kDV)];
    double dot = 0, dp = 0;
    for (int c = 0; c < kDK; ++c) dot += static_cast<double>(qr[c]) * kr[c];
    for (int c = 0; c < kDV; ++c) dp += static_cast<double>(dr[c]) * vr[c];
    *P = std::exp(dot * kScale - lse[static_cast<size_t>(row)]);
    *dS = *P * (fg[static_cast<size_t>(row)] * dp - delta[static_cast<size_t>(row)]);
  };
  harness::ErrorNorm err_a, err_b;
  long long checked = 0;
  if (harness::kDq) {
    const std::vector<float> dq = harness::download(p.dq, static_cast<size_t>(tok * kHQ) * kDK);
    for (float x : dq) err_a.bad += !std::isfinite(x);
    std::vector<double> acc(kDK);
    for (long long row : harness::sample(tok * kHQ, 256)) {
      const long long h = row % kHQ, t = (row / kHQ) % kT, b = row / (kHQ * kT), kvh = h / G;
      const long long sel = (b * kT + t) * kH + kvh;
      std::fill(acc.begin(), acc.end(), 0.0);
      harness::for_each_key(t, idx.empty() ? nullptr : &idx[static_cast<size_t>(sel * kN)],
                            cnt.empty() ? 0 : cnt[static_cast<size_t>(sel)], [&](long long s) {
                              double P, dS;
                              terms(row, b, s, kvh, &P, &dS);
                              const float* kr = &fk[static_cast<size_t>(((b * keys + s) * kH + kvh) * kDK)];
                              for (int c = 0; c < kDK; ++c) acc[c] += kScale * dS * kr[c];
                            });
      for (int c = 0; c < kDK; ++c) err_a.add(dq[static_cast<size_t>(row * kDK + c)], acc[c]);
      ++checked;
    }
  } else {
    // The kernel's sums per key: dk/dv rows, plus (compressed) every chunk's, plus (selected) every partial slot's.
    std::vector<float> dk = harness::download(p.dk, nk), dv = harness::download(p.dv, nv);
    if (kBranch == nsa::kMaskCompressed) {
      const std::vector<float> part = harness::download(p.cpart, static_cast<size_t>(p.nchunks) * (nk + nv));
      for (long long c = 0; c < p.nchunks; ++c) {
        for (size_t i = 0; i < nk; ++i) dk[i] += part[static_cast<size_t>(c) * nk + i];
        for (size_t i = 0; i < nv; ++i) dv[i] += part[static_cast<size_t>(p.nchunks) * nk + static_cast<size_t>(c) * nv + i];
      }
    }
    if (kBranch == nsa::kMaskSelected) {
      const std::vector<float> part =
          harness::download(p.partial, static_cast<size_t>(kH * index.slot_stride) * kLSel * (kDK + kDV));
      for (int h = 0; h < kH; ++h)
        for (long long g = 0; g < index.nblk; ++g) {
          const long long slot = index.slot_off[static_cast<size_t>(h * index.nblk + g)];
          if (slot < 0) continue;
          const long long items = index.item_off[static_cast<size_t>(h * (index.nblk + 1) + g + 1)] -
                                  index.item_off[static_cast<size_t>(h * (index.nblk + 1) + g)];
          const long long b = index.blk_seq[static_cast<size_t>(g)], j = g - index.seq_blk_off[static_cast<size_t>(b)];
          for (long long i = 0; i < items; ++i)
            for (int r = 0; r < kLSel && j * kLSel + r < kT; ++r) {
              const float* src = &part[static_cast<size_t>((h * index.slot_stride + slot + i) * kLSel * (kDK + kDV))];
              const size_t key = static_cast<size_t>((b * kT + j * kLSel + r) * kH + h);
              for (int c = 0; c < kDK; ++c) dk[key * kDK + c] += src[r * kDK + c];
              for (int c = 0; c < kDV; ++c) dv[key * kDV + c] += src[kLSel * kDK + r * kDV + c];
            }
        }
    }
    for (float x : dk) err_a.bad += !std::isfinite(x);
    for (float x : dv) err_b.bad += !std::isfinite(x);
    // Sampled keys; the compressed keys are seen by every later query, so fewer of them.
    std::vector<double> ak(kDK), av(kDV);
    for (long long key_row : harness::sample(kB * keys * kH, kBranch == nsa::kMaskCompressed ? 12 : 64)) {
      const long long kvh = key_row % kH, s = (key_row / kH) % keys, b = key_row / (kH * keys);
      std::fill(ak.begin(), ak.end(), 0.0);
      std::fill(av.begin(), av.end(), 0.0);
      for (long long t = 0; t < kT; ++t) {
        const long long sel = (b * kT + t) * kH + kvh;
        bool sees = false;
        harness::for_each_key(t, idx.empty() ? nullptr : &idx[static_cast<size_t>(sel * kN)],
                              cnt.empty() ? 0 : cnt[static_cast<size_t>(sel)], [&](long long x) { sees |= x == s; });
        if (!sees) continue;
        for (long long g = 0; g < G; ++g) {
          const long long row = (b * kT + t) * kHQ + kvh * G + g;
          double P, dS;
          terms(row, b, s, kvh, &P, &dS);
          for (int c = 0; c < kDK; ++c) ak[c] += kScale * dS * fq[static_cast<size_t>(row * kDK + c)];
          for (int c = 0; c < kDV; ++c) av[c] += fg[static_cast<size_t>(row)] * P * fdo[static_cast<size_t>(row * kDV + c)];
        }
      }
      for (int c = 0; c < kDK; ++c) err_a.add(dk[static_cast<size_t>(key_row * kDK + c)], ak[c]);
      for (int c = 0; c < kDV; ++c) err_b.add(dv[static_cast<size_t>(key_row * kDV + c)], av[c]);
      ++checked;
    }
  }
  const double tol = harness::tolerance();
  const bool pass = err_a.bad + err_b.bad == 0 && err_a.rel() <= tol && (harness::kDq || err_b.rel() <= tol);
  if (harness::kDq)
    std::printf("checked %lld query rows: rel error dq %.3e (tolerance %.0e); non-finite %lld\n", checked,
                err_a.rel(), tol, err_a.bad);
  else
    std::printf("checked %lld keys: rel error dk %.3e, dv %.3e (tolerance %.0e); non-finite %lld\n", checked,
                err_a.rel(), err_b.rel(), tol, err_a.bad + err_b.bad);
  // Timing: the dkv kernels add to dk/dv again (the work does not change; the values are not read afterwards).
  const float ms = harness::median_ms([&] { kEntry<<<grid, block, kSmemBytes>>>(p); });
  return harness::report(pass, ms);
}

#endif  // NSA_HARNESS_ATTN_BWD_CUH
