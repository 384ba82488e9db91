#include "tuner/timing.h"

#include <algorithm>
#include <vector>

#include "runtime/device.h"

namespace nsajit {

TimingStats time_gpu(const std::function<void(CUstream)>& launch, int reps, double warmup_ms) {
  static DeviceBuffer flush(256u << 20);
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
  std::sort(times.begin(), times.end());
  auto at = [&](double q) { return times[std::min(times.size() - 1, static_cast<size_t>(q * times.size()))]; };
  return {at(0.5), at(0.2), at(0.8), reps};
}

}  // namespace nsajit
