// Host helpers of the standalone programs that need a selection: a random valid one, and the inverted index the
// selected backward reads (what slc_bwd_index builds on the GPU), built here for B sequences of T tokens.
#ifndef NSA_HARNESS_SELECTION_H
#define NSA_HARNESS_SELECTION_H

namespace harness {

// idx [B * T, H, n] and cnt [B * T, H] as NSA.md shapes them: cnt = min(n, t/l' + 1) blocks, ascending, -1 padded,
// holding the forced blocks 0, t/l' - 1, t/l' and random others.
inline void random_selection(Rng& rng, long long B, long long T, int H, int lsel, int n, std::vector<int>& idx,
                             std::vector<int>& cnt) {
  const size_t rows = static_cast<size_t>(B * T) * H;
  idx.assign(rows * n, -1);
  cnt.assign(rows, 0);
  std::vector<char> taken;
  for (size_t r = 0; r < rows; ++r) {
    const long long t = static_cast<long long>(r / H) % T, jt = t / lsel;
    const int c = static_cast<int>(std::min<long long>(n, jt + 1));
    taken.assign(static_cast<size_t>(jt + 1), 0);
    int have = 0;
    for (long long j : {0LL, jt - 1, jt})
      if (j >= 0 && !taken[static_cast<size_t>(j)]) taken[static_cast<size_t>(j)] = 1, ++have;
    while (have < c) {  // jt + 1 > n >= 3 here, so blocks 1 .. jt - 2 exist
      const long long j = 1 + static_cast<long long>(rng.next() % static_cast<uint64_t>(jt - 2));
      if (!taken[static_cast<size_t>(j)]) taken[static_cast<size_t>(j)] = 1, ++have;
    }
    int m = 0;
    for (long long j = 0; j <= jt; ++j)
      if (taken[static_cast<size_t>(j)]) idx[r * n + m++] = static_cast<int>(j);
    cnt[r] = c;
  }
}

// The selection's inverted index (bwd_params.h AttnBwdParams / SlcIndexParams): per KV head h and block g of the
// batch (g = b * ceil(T / l') + j), the ascending positions t that selected it, cut into work items of at most
// qchunk positions; a block of several items gets that many partial slots.
struct HostIndex {
  long long nblk = 0, list_stride = 0, slot_stride = 1, max_items = 0;
  std::vector<long long> seq_blk_off, list_off, item_off, slot_off;
  std::vector<int> blk_seq, count, list;
};

inline HostIndex build_index(const std::vector<int>& idx, const std::vector<int>& cnt, long long B, long long T, int H,
                             int lsel, int n, int qchunk) {
  HostIndex x;
  const long long nb = (T + lsel - 1) / lsel;
  x.nblk = B * nb;
  x.list_stride = B * T * n;
  for (long long b = 0; b <= B; ++b) x.seq_blk_off.push_back(b * nb);
  for (long long g = 0; g < x.nblk; ++g) x.blk_seq.push_back(static_cast<int>(g / nb));
  std::vector<std::vector<int>> sel(static_cast<size_t>(H * x.nblk));
  for (long long b = 0; b < B; ++b)
    for (long long t = 0; t < T; ++t)
      for (int h = 0; h < H; ++h) {
        const size_t r = static_cast<size_t>((b * T + t) * H + h);
        for (int m = 0; m < cnt[r] && m < n; ++m) {
          const long long j = idx[r * n + m];
          if (j >= 0 && j <= t / lsel) sel[static_cast<size_t>(h * x.nblk + b * nb + j)].push_back(static_cast<int>(t));
        }
      }
  x.count.assign(static_cast<size_t>(H * x.nblk), 0);
  x.list_off.assign(static_cast<size_t>(H * x.nblk), 0);
  x.slot_off.assign(static_cast<size_t>(H * x.nblk), -1);
  x.item_off.assign(static_cast<size_t>(H * (x.nblk + 1)), 0);
  x.list.assign(static_cast<size_t>(H * x.list_stride), 0);
  long long slots_max = 0;
  for (int h = 0; h < H; ++h) {
    long long list = 0, items = 0, slots = 0;
    for (long long g = 0; g < x.nblk; ++g) {
      const std::vector<int>& s = sel[static_cast<size_t>(h * x.nblk + g)];
      const long long c = static_cast<long long>(s.size()), it = (c + qchunk - 1) / qchunk;
      x.count[static_cast<size_t>(h * x.nblk + g)] = static_cast<int>(c);
      x.list_off[static_cast<size_t>(h * x.nblk + g)] = list;
      x.item_off[static_cast<size_t>(h * (x.nblk + 1) + g)] = items;
      if (it > 1) x.slot_off[static_cast<size_t>(h * x.nblk + g)] = slots, slots += it;
      std::copy(s.begin(), s.end(), x.list.begin() + h * x.list_stride + list);
      list += c, items += it;
    }
    x.item_off[static_cast<size_t>(h * (x.nblk + 1) + x.nblk)] = items;
    x.max_items = std::max(x.max_items, items);
    slots_max = std::max(slots_max, slots);
  }
  x.slot_stride = std::max(1LL, slots_max);
  return x;
}

}  // namespace harness

#endif  // NSA_HARNESS_SELECTION_H
