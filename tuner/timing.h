#pragma once
// Event timing of GPU work (GPU.md, METHOD.md): warm-up by time, L2 flushed before every repetition, median and
// p20/p80 over the repetitions.
#include <cuda.h>

#include <functional>
#include <vector>

namespace nsajit {

struct TimingStats {
  double median_ms = 0, p20_ms = 0, p80_ms = 0;
  int reps = 0;
};

// Times `launch(stream)`; the current context must be set. Warms up for `warmup_ms` (at least 2 launches), then
// `reps` timed launches, each after a write of 256 MB that evicts the inputs from L2.
TimingStats time_gpu(const std::function<void(CUstream)>& launch, int reps = 20, double warmup_ms = 100.0);

// Times several launches interleaved (A B C A B C ...), each repetition after the same L2 flush, so clock drift
// and thermal state affect them alike: the way the tuner decides between its finalists.
std::vector<TimingStats> time_interleaved(const std::vector<std::function<void(CUstream)>>& launches, int rounds,
                                          double warmup_ms = 50.0);

// Measured on the H200 (PERFORMANCE.md): dense bf16 matrix product and device copy (read + write) ceilings.
constexpr double kH200MatrixTflops = 780.0;
constexpr double kH200CopyGBs = 4300.0;

}  // namespace nsajit
