// Standalone check of slc_plan: a random valid selection in which every other span of 64 positions is made
// coherent (all its positions take the list of the span's last position, so it selects at most n blocks), and the
// plan (1 high overlap, 0 low, per span and KV head) against the host's count of each span's distinct blocks.
#ifndef NSA_HARNESS_SLC_PLAN_CUH
#define NSA_HARNESS_SLC_PLAN_CUH

int main(int argc, char** argv) {
  using namespace nsa::harness_spec;
  const uint64_t seed = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 1;
  harness::print_problem(seed);
  // codegen/overlap.h: kOverlapSpan; the runtime's threshold is high_overlap_max_distinct = 4n, but at the small T
  // of an emitted program (T / l' <= 4n blocks) every span would pass it, so this check uses n: the coherent spans
  // select at most n blocks, the random ones far more, and both buckets are exercised.
  constexpr int kSpan = 64, kMaxDistinct = kN;
  harness::Rng rng(seed);
  std::vector<int> idx, cnt;
  harness::random_selection(rng, kB, kT, kH, kLSel, kN, idx, cnt);
  const long long rows = kB * kT, spans = (rows + kSpan - 1) / kSpan;
  for (long long s = 0; s < spans; s += 2) {  // even spans: one list for all their positions
    const long long last = std::min(rows, (s + 1) * kSpan) - 1;
    for (long long r = s * kSpan; r < last; ++r)
      for (int h = 0; h < kH; ++h) {
        cnt[r * kH + h] = cnt[last * kH + h];
        for (int i = 0; i < kN; ++i) idx[(r * kH + h) * kN + i] = idx[(last * kH + h) * kN + i];
      }
  }
  std::vector<unsigned char> want(static_cast<size_t>(spans * kH));
  long long high = 0;
  std::vector<int> seen;
  for (long long s = 0; s < spans; ++s)
    for (int h = 0; h < kH; ++h) {
      seen.clear();
      for (long long r = s * kSpan; r < std::min(rows, (s + 1) * kSpan); ++r)
        for (int i = 0; i < cnt[r * kH + h]; ++i)
          if (idx[(r * kH + h) * kN + i] >= 0) seen.push_back(idx[(r * kH + h) * kN + i]);
      std::sort(seen.begin(), seen.end());
      const long long distinct = std::unique(seen.begin(), seen.end()) - seen.begin();
      want[static_cast<size_t>(s * kH + h)] = distinct <= kMaxDistinct ? 1 : 0;
      high += distinct <= kMaxDistinct;
    }
  nsa::SlcPlanParams p{};
  p.idx = harness::upload(idx), p.cnt = harness::upload(cnt);
  p.plan = harness::device_array<unsigned char>(want.size(), 0xff);
  p.rows = rows, p.H = kH, p.n = kN, p.span = kSpan, p.max_distinct = kMaxDistinct;
  const dim3 grid(kGridX, kGridY, kGridZ), block(kThreads);
  harness::launch_entry(grid, block, 0, p);
  HARNESS_CHECK(cudaDeviceSynchronize());
  const std::vector<unsigned char> got = harness::download(p.plan, want.size());
  long long wrong = 0;
  for (size_t i = 0; i < want.size(); ++i) wrong += got[i] != want[i];
  std::printf("checked the plan of %lld spans x %d KV heads (%lld high-overlap on the host): %lld differ\n", spans, kH,
              high, wrong);
  const float ms = harness::median_ms([&] { kEntry<<<grid, block>>>(p); });
  return harness::report(wrong == 0 && high > 0 && high < spans * kH, ms);
}

#endif  // NSA_HARNESS_SLC_PLAN_CUH
