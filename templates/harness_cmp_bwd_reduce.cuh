// Standalone check of cmp_bwd_reduce: random per-chunk partial sums of the compressed dk/dv (two chunks), added to
// random dk/dv, against the same sums on the host.
#ifndef NSA_HARNESS_CMP_BWD_REDUCE_CUH
#define NSA_HARNESS_CMP_BWD_REDUCE_CUH

int main(int argc, char** argv) {
  using namespace nsa::harness_spec;
  const uint64_t seed = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 1;
  harness::print_problem(seed);
  const long long nc = kT >= kL ? (kT - kL) / kD + 1 : 0, rows = kB * nc * kH, nchunks = 2;
  const size_t nk = static_cast<size_t>(rows) * kDK, nv = static_cast<size_t>(rows) * kDV;
  harness::Rng rng(seed);
  std::vector<float> part((nk + nv) * nchunks), dk(nk), dv(nv);
  for (float& x : part) x = static_cast<float>(rng.normal());
  for (float& x : dk) x = static_cast<float>(rng.normal());
  for (float& x : dv) x = static_cast<float>(rng.normal());
  nsa::ChunkReduceParams p{};
  p.part = harness::upload(part), p.dk = harness::upload(dk), p.dv = harness::upload(dv);
  p.rows = rows, p.nchunks = nchunks;
  const dim3 grid(static_cast<unsigned>(std::max<long long>(1, (rows * (kDK + kDV) + 255) / 256))), block(256);
  harness::launch_entry(grid, block, 0, p);
  HARNESS_CHECK(cudaDeviceSynchronize());
  const std::vector<float> gk = harness::download(p.dk, nk), gv = harness::download(p.dv, nv);
  harness::ErrorNorm err;
  // Layout: part[c][rows][dk] for every chunk c, then part[c][rows][dv].
  for (size_t i = 0; i < nk; ++i) err.add(gk[i], static_cast<double>(dk[i]) + part[i] + part[nk + i]);
  for (size_t i = 0; i < nv; ++i)
    err.add(gv[i], static_cast<double>(dv[i]) + part[2 * nk + i] + part[2 * nk + nv + i]);
  std::printf("checked %lld compressed rows: rel error %.3e (tolerance 1e-6); non-finite %lld\n", rows, err.rel(),
              err.bad);
  const float ms = harness::median_ms([&] { kEntry<<<grid, block>>>(p); });  // adds again: not read afterwards
  return harness::report(err.bad == 0 && err.rel() <= 1e-6, ms);
}

#endif  // NSA_HARNESS_CMP_BWD_REDUCE_CUH
