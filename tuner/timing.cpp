#include "tuner/timing.h"

#include <algorithm>
#include <vector>

#include "runtime/device.h"

namespace nsajit {

namespace {
DeviceBuffer& flush_buffer() {
  static DeviceBuffer flush(256u << 20);
  return flush;
}
TimingStats stats_of(std::vector<double> times) {
  std::sort(times.begin(), times.end());
  auto at = [&](double q) { return times[std::min(times.size() - 1, static_cast<size_t>(q * times.size()))]; };
  return {at(0.5), at(0.2), at(0.8), static_cast<int>(times.size())};
}
}  // namespace

std::vector<TimingStats> time_interleaved(const std::vector<std::function<void(CUstream)>>& launches, int rounds,
                                          double warmup_ms) {
  DeviceBuffer& flush = flush_buffer();
  Event start, stop;
  for (const auto& launch : launches) {
    start.record();
    int n = 0;
    while (true) {
      launch(nullptr);
      stop.record();
      stop.synchronize();
      if (++n >= 2 && stop.ms_since(start) >= warmup_ms / static_cast<double>(launches.size())) break;
    }
  }
  std::vector<std::vector<double>> times(launches.size());
  for (int r = 0; r < rounds; ++r)
    for (size_t i = 0; i < launches.size(); ++i) {
      flush.fill_bytes(static_cast<unsigned char>(r + i));
      start.record();
      launches[i](nullptr);
      stop.record();
      stop.synchronize();
      times[i].push_back(stop.ms_since(start));
    }
  std::vector<TimingStats> out;
  for (auto& t : times) out.push_back(stats_of(std::move(t)));
  return out;
}

TimingStats time_gpu(const std::function<void(CUstream)>& launch, int reps, double warmup_ms) {
  DeviceBuffer& flush = flush_buffer();
  Event start, stop;
  // Warm-up: module load, clocks, caches.
  start.record();
  int launches = 0;
  while (true) {
    launch(nullptr);
    ++launches;
    stop.record();
    stop.synchronize();
    if (launches >= 2 && stop.ms_since(start) >= warmup_ms) break;
  }
  std::vector<double> times;
  for (int i = 0; i < reps; ++i) {
    flush.fill_bytes(static_cast<unsigned char>(i));
    start.record();
    launch(nullptr);
    stop.record();
    stop.synchronize();
    times.push_back(stop.ms_since(start));
  }
  return stats_of(std::move(times));
}

}  // namespace nsajit
