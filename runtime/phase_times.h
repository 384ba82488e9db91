#pragma once
// Where a process's host time goes while kernels are made ready: a per-process ledger of the first calls' phases
// (NVRTC loaded, tuning database opened, configs looked up, sources generated, the CUBIN cache read, compiles,
// modules loaded). Timers nest; each phase counts only its own time (a nested phase's time is not its parent's).
// `nsajit bench` prints it after the first forward call, to say why a first call takes what it takes.
#include <array>
#include <chrono>
#include <string>

namespace nsajit {

enum class Phase { nvrtc_load, db_open, config_lookup, source_and_key, cache_read, compile, module_load, kCount };

struct PhaseTotals {
  std::array<double, static_cast<size_t>(Phase::kCount)> ms{};
  std::array<long, static_cast<size_t>(Phase::kCount)> count{};
};

// The totals since the process started (or since reset_phase_times()).
PhaseTotals phase_totals();
void reset_phase_times();
// "NVRTC loaded 12.1 ms, database opened 1.0 ms, ..." (phases with no time left out).
std::string describe_phases(const PhaseTotals& t);

// Times a scope as `phase`, exclusive of the phases timed inside it (on the same thread).
class PhaseTimer {
public:
  explicit PhaseTimer(Phase p);
  ~PhaseTimer();
  PhaseTimer(const PhaseTimer&) = delete;
  PhaseTimer& operator=(const PhaseTimer&) = delete;

private:
  void pause();
  void resume();
  Phase phase_;
  std::chrono::steady_clock::time_point start_;
  double own_ms_ = 0;
  PhaseTimer* parent_;
};

}  // namespace nsajit
