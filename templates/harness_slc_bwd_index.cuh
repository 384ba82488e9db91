// Standalone check of slc_bwd_index: its four steps (prep, mark, scan, fill) on a random valid selection, with the
// grids the runtime uses, and every array of the inverted index against the same index built on the host.
#ifndef NSA_HARNESS_SLC_BWD_INDEX_CUH
#define NSA_HARNESS_SLC_BWD_INDEX_CUH

int main(int argc, char** argv) {
  using namespace nsa::harness_spec;
  const uint64_t seed = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 1;
  harness::print_problem(seed);
  constexpr int kQChunk = 1024;
  harness::Rng rng(seed);
  std::vector<int> idx, cnt;
  harness::random_selection(rng, kB, kT, kH, kLSel, kN, idx, cnt);
  const harness::HostIndex want = harness::build_index(idx, cnt, kB, kT, kH, kLSel, kN, kQChunk);
  const long long nb = (kT + kLSel - 1) / kLSel, words = (kT + 31) / 32, mask_stride = kB * nb * words;

  nsa::SlcIndexParams p{};
  p.idx = harness::upload(idx), p.cnt = harness::upload(cnt), p.cu_seqlens = nullptr;
  p.seq_blk_off = harness::device_array<long long>(kB + 1, 0xff);
  p.seq_mask_off = harness::device_array<long long>(kB + 1, 0xff);
  p.blk_seq = harness::device_array<int>(want.nblk, 0xff);
  p.mask = harness::device_array<unsigned>(static_cast<size_t>(kH * mask_stride), 0);  // zeroed, as the runtime does
  p.count = harness::device_array<int>(static_cast<size_t>(kH * want.nblk), 0);
  p.list_off = harness::device_array<long long>(static_cast<size_t>(kH * want.nblk), 0xff);
  p.item_off = harness::device_array<long long>(static_cast<size_t>(kH * (want.nblk + 1)), 0xff);
  p.slot_off = harness::device_array<long long>(static_cast<size_t>(kH * want.nblk), 0xff);
  p.list = harness::device_array<int>(static_cast<size_t>(kH * want.list_stride), 0xff);
  p.T = kT, p.N = kB, p.nblk = want.nblk, p.mask_stride = mask_stride, p.list_stride = want.list_stride;
  p.H = kH, p.n = kN, p.qchunk = kQChunk;
  auto run = [&] {
    for (int step = 0; step < 4; ++step) {
      nsa::SlcIndexParams q = p;
      q.step = step;
      dim3 grid(1, 1, 1), block(1024);
      if (step == 1) grid = dim3(static_cast<unsigned>((kT * kH + 255) / 256), 1, static_cast<unsigned>(kB)), block = dim3(256);
      if (step == 2) grid = dim3(1, static_cast<unsigned>(kH), 1);
      if (step == 3) grid = dim3(static_cast<unsigned>(want.nblk), static_cast<unsigned>(kH), 1), block = dim3(32);
      harness::launch_entry(grid, block, 0, q);
    }
  };
  run();
  HARNESS_CHECK(cudaDeviceSynchronize());
  long long wrong = 0;
  auto same = [&](const char* what, auto got, const auto& expected) {
    long long d = 0;
    for (size_t i = 0; i < expected.size(); ++i) d += got[i] != expected[i];
    if (d) std::printf("%s: %lld of %zu entries differ from the host's index\n", what, d, expected.size());
    wrong += d;
  };
  same("seq_blk_off", harness::download(p.seq_blk_off, kB + 1), want.seq_blk_off);
  same("blk_seq", harness::download(p.blk_seq, want.nblk), want.blk_seq);
  same("count", harness::download(p.count, want.count.size()), want.count);
  same("list_off", harness::download(p.list_off, want.list_off.size()), want.list_off);
  same("item_off", harness::download(p.item_off, want.item_off.size()), want.item_off);
  same("slot_off", harness::download(p.slot_off, want.slot_off.size()), want.slot_off);
  // The lists themselves: each block's range (the rest of list is scratch).
  const std::vector<int> list = harness::download(p.list, want.list.size());
  std::vector<int> got_lists, want_lists;
  for (int h = 0; h < kH; ++h)
    for (long long g = 0; g < want.nblk; ++g)
      for (int i = 0; i < want.count[static_cast<size_t>(h * want.nblk + g)]; ++i) {
        const size_t at = static_cast<size_t>(h * want.list_stride + want.list_off[static_cast<size_t>(h * want.nblk + g)] + i);
        got_lists.push_back(list[at]), want_lists.push_back(want.list[at]);
      }
  same("list", got_lists, want_lists);
  std::printf("checked the inverted index of %lld blocks x %d KV heads (%zu selecting positions in all)\n", want.nblk,
              kH, want_lists.size());
  // Timing rebuilds the index each time from a zeroed mask and count.
  const float ms = harness::median_ms([&] {
    HARNESS_CHECK(cudaMemsetAsync(p.mask, 0, static_cast<size_t>(kH * mask_stride) * 4));
    HARNESS_CHECK(cudaMemsetAsync(p.count, 0, static_cast<size_t>(kH * want.nblk) * 4));
    run();
  });
  return harness::report(wrong == 0, ms);
}

#endif  // NSA_HARNESS_SLC_BWD_INDEX_CUH
