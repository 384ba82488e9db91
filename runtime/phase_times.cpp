#include "runtime/phase_times.h"

#include <fmt/format.h>

#include <atomic>
#include <mutex>

namespace nsajit {
namespace {

std::mutex g_mutex;
PhaseTotals g_totals;
thread_local PhaseTimer* t_top = nullptr;

constexpr const char* kNames[] = {"NVRTC loaded",     "tuning database opened", "configs looked up",
                                  "sources and keys", "CUBIN cache read",       "compiled",
                                  "modules loaded"};
static_assert(sizeof(kNames) / sizeof(kNames[0]) == static_cast<size_t>(Phase::kCount));

double ms_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t).count();
}

}  // namespace

PhaseTotals phase_totals() {
  std::lock_guard<std::mutex> lock(g_mutex);
  return g_totals;
}

void reset_phase_times() {
  std::lock_guard<std::mutex> lock(g_mutex);
  g_totals = {};
}

std::string describe_phases(const PhaseTotals& t) {
  std::string s;
  for (size_t i = 0; i < t.ms.size(); ++i) {
    if (t.count[i] == 0) continue;
    s += fmt::format("{}{} {:.1f} ms", s.empty() ? "" : ", ", kNames[i], t.ms[i]);
    if (t.count[i] > 1) s += fmt::format(" ({})", t.count[i]);
  }
  return s.empty() ? "nothing made ready" : s;
}

PhaseTimer::PhaseTimer(Phase p) : phase_(p), parent_(t_top) {
  if (parent_ != nullptr) parent_->pause();
  t_top = this;
  start_ = std::chrono::steady_clock::now();
}

PhaseTimer::~PhaseTimer() {
  own_ms_ += ms_since(start_);
  t_top = parent_;
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    g_totals.ms[static_cast<size_t>(phase_)] += own_ms_;
    g_totals.count[static_cast<size_t>(phase_)] += 1;
  }
  if (parent_ != nullptr) parent_->resume();
}

void PhaseTimer::pause() { own_ms_ += ms_since(start_); }
void PhaseTimer::resume() { start_ = std::chrono::steady_clock::now(); }

}  // namespace nsajit
