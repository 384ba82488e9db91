// Standalone check of slc_bwd_reduce: the inverted index of a random valid selection built on the host with small
// work items (64 positions, so that many blocks have several), random partial sums in their slots, added to random
// dk/dv rows; against the same sums on the host.
#ifndef NSA_HARNESS_SLC_BWD_REDUCE_CUH
#define NSA_HARNESS_SLC_BWD_REDUCE_CUH

int main(int argc, char** argv) {
  using namespace nsa::harness_spec;
  const uint64_t seed = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 1;
  harness::print_problem(seed);
  constexpr int kRow = kDK + kDV;
  harness::Rng rng(seed);
  std::vector<int> idx, cnt;
  harness::random_selection(rng, kB, kT, kH, kLSel, kN, idx, cnt);
  const harness::HostIndex x = harness::build_index(idx, cnt, kB, kT, kH, kLSel, kN, 64);
  std::vector<float> partial(static_cast<size_t>(kH * x.slot_stride) * kLSel * kRow), dk(static_cast<size_t>(kB * kT) * kH * kDK),
      dv(static_cast<size_t>(kB * kT) * kH * kDV);
  for (float& v : partial) v = static_cast<float>(rng.normal());
  for (float& v : dk) v = static_cast<float>(rng.normal());
  for (float& v : dv) v = static_cast<float>(rng.normal());
  nsa::SlcReduceParams p{};
  p.partial = harness::upload(partial), p.item_off = harness::upload(x.item_off), p.slot_off = harness::upload(x.slot_off);
  p.blk_seq = harness::upload(x.blk_seq), p.seq_blk_off = harness::upload(x.seq_blk_off), p.cu_seqlens = nullptr;
  p.dk = harness::upload(dk), p.dv = harness::upload(dv);
  p.T = kT, p.nblk = x.nblk, p.slot_stride = x.slot_stride, p.H = kH;
  const dim3 grid(static_cast<unsigned>(x.nblk), static_cast<unsigned>(kH), 1), block(256);
  harness::launch_entry(grid, block, 0, p);
  HARNESS_CHECK(cudaDeviceSynchronize());
  std::vector<double> ek(dk.begin(), dk.end()), ev(dv.begin(), dv.end());
  long long reduced = 0;
  for (int h = 0; h < kH; ++h)
    for (long long g = 0; g < x.nblk; ++g) {
      const long long slot = x.slot_off[static_cast<size_t>(h * x.nblk + g)];
      if (slot < 0) continue;
      ++reduced;
      const long long items = x.item_off[static_cast<size_t>(h * (x.nblk + 1) + g + 1)] - x.item_off[static_cast<size_t>(h * (x.nblk + 1) + g)];
      const long long b = x.blk_seq[static_cast<size_t>(g)], j = g - x.seq_blk_off[static_cast<size_t>(b)];
      for (long long i = 0; i < items; ++i)
        for (int r = 0; r < kLSel; ++r) {
          const long long key = j * kLSel + r;
          if (key >= kT) continue;
          const float* part = &partial[static_cast<size_t>(((h * x.slot_stride + slot + i) * kLSel) * kRow)];
          for (int c = 0; c < kDK; ++c) ek[static_cast<size_t>(((b * kT + key) * kH + h) * kDK + c)] += part[r * kDK + c];
          for (int c = 0; c < kDV; ++c)
            ev[static_cast<size_t>(((b * kT + key) * kH + h) * kDV + c)] += part[kLSel * kDK + r * kDV + c];
        }
    }
  const std::vector<float> gk = harness::download(p.dk, dk.size()), gv = harness::download(p.dv, dv.size());
  harness::ErrorNorm err;
  for (size_t i = 0; i < gk.size(); ++i) err.add(gk[i], ek[i]);
  for (size_t i = 0; i < gv.size(); ++i) err.add(gv[i], ev[i]);
  std::printf("checked %lld multi-item blocks (of %lld x %d): rel error %.3e (tolerance 1e-6); non-finite %lld\n",
              reduced, x.nblk, kH, err.rel(), err.bad);
  const float ms = harness::median_ms([&] { kEntry<<<grid, block>>>(p); });  // adds again: not read afterwards
  return harness::report(err.bad == 0 && err.rel() <= 1e-6 && (reduced > 0 || kT <= 64), ms);
}

#endif  // NSA_HARNESS_SLC_BWD_REDUCE_CUH
