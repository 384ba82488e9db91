#include "runtime/tuned.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cmath>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>

#include "codegen/codegen.h"
#include "runtime/device.h"
#include "runtime/driver.h"
#include "runtime/error.h"
#include "tuner/db.h"
#include "tuner/keys.h"

namespace nsajit {

bool log_info_enabled() {
  static const bool on = [] {
    const char* v = std::getenv("NSAJIT_LOG");
    if (v == nullptr) return false;
    const std::string s(v);
    return s == "info" || s == "debug" || s == "INFO" || s == "DEBUG";
  }();
  return on;
}

namespace {

void log_info(const std::string& msg) {
  if (log_info_enabled()) fmt::print(stderr, "nsajit: {}\n", msg);
}

struct DbHandle {
  std::unique_ptr<TuningDb> db;
  std::string unavailable;  // why there is none
};

DbHandle& database() {
  static DbHandle h = [] {
    DbHandle out;
    const char* env = std::getenv("NSAJIT_DB");
    if (env != nullptr && (std::string(env) == "off" || std::string(env) == "none" || std::string(env) == "0")) {
      out.unavailable = "NSAJIT_DB=off";
      return out;
    }
    const std::filesystem::path path = default_db_path();
    std::error_code ec;
    if (!std::filesystem::exists(path, ec)) {
      out.unavailable = fmt::format("no tuning database at {}", path.string());
      return out;
    }
    try {
      out.db = std::make_unique<TuningDb>(TuningDb::open(path, TuningDb::Mode::read_only));
    } catch (const std::exception& e) {
      // A damaged database must not stop a training job: say so (always) and use the defaults.
      out.unavailable = fmt::format("tuning database unusable: {}", e.what());
      fmt::print(stderr, "nsajit: warning: {}; using the default tile configs\n", out.unavailable);
    }
    return out;
  }();
  return h;
}

const DeviceInfo& current_device() {
  static std::mutex m;
  static std::map<int, DeviceInfo> infos;
  CUdevice dev = 0;
  check_cu(driver().cuCtxGetDevice_(&dev), "cuCtxGetDevice");
  std::lock_guard<std::mutex> lock(m);
  auto it = infos.find(static_cast<int>(dev));
  if (it == infos.end()) it = infos.emplace(static_cast<int>(dev), query_device(static_cast<int>(dev))).first;
  return it->second;
}

// Why a stored best entry cannot be used here, or nullopt.
std::optional<std::string> unusable(const KernelFamily& f, const BestEntry& e, const DeviceInfo& dev,
                                    const Problem& launch, TileConfig& cfg) {
  try {
    const Staleness st = staleness(e, Toolkit{dev.model_fingerprint(), dev.driver_version, dev.nvrtc_version}, "sm_90a");
    if (st.stale()) return fmt::format("stale: {}", fmt::join(st.reasons, ", "));
    cfg = parse_config(e.config);
  } catch (const std::exception& ex) {
    return fmt::format("unreadable entry: {}", ex.what());
  }
  for (const auto& [name, value] : cfg) {
    const auto& ps = f.params();
    const auto it = std::find_if(ps.begin(), ps.end(), [&](const ParamDecl& d) { return d.name == name; });
    if (it == ps.end() || std::find(it->domain.begin(), it->domain.end(), value) == it->domain.end())
      return fmt::format("config [{}] is outside the family's space", e.config);
  }
  if (cfg.size() != f.params().size()) return fmt::format("config [{}] is incomplete", e.config);
  if (auto why = f.reject(launch, cfg, dev.max_smem_optin > 0 ? dev.max_smem_optin : kHopperMaxSmemOptin))
    return fmt::format("[{}] does not fit this problem: {}", e.config, *why);
  return std::nullopt;
}

ResolvedConfig resolve(const KernelFamily& f, const Problem& problem, const Problem& launch) {
  ResolvedConfig r;
  r.config = f.default_config(launch);
  const std::string def = describe(r.config);
  DbHandle& h = database();
  if (!h.db) {
    r.why = fmt::format("default [{}]: {}", def, h.unavailable);
    return r;
  }
  const DeviceInfo& dev = current_device();
  const ProblemKey key = problem_key(problem);
  std::vector<BestEntry> entries;
  try {
    entries = h.db->best_for_shape(dev.model_fingerprint(), f.name(), key.shape);
  } catch (const std::exception& e) {
    r.why = fmt::format("default [{}]: reading {} failed: {}", def, h.db->path().string(), e.what());
    return r;
  }
  if (entries.empty()) {
    r.why = fmt::format("default [{}]: no tuned entry for this GPU model and problem in {}", def, h.db->path().string());
    return r;
  }
  // Exact bucket first, then by distance in powers of two (the larger bucket on a tie).
  const double target = std::log2(static_cast<double>(key.t_bucket));
  std::stable_sort(entries.begin(), entries.end(), [&](const BestEntry& a, const BestEntry& b) {
    const double da = std::abs(std::log2(static_cast<double>(a.t_bucket)) - target);
    const double db = std::abs(std::log2(static_cast<double>(b.t_bucket)) - target);
    return da != db ? da < db : a.t_bucket > b.t_bucket;
  });
  std::string skipped;
  for (const BestEntry& e : entries) {
    TileConfig cfg;
    if (auto why = unusable(f, e, dev, launch, cfg)) {
      skipped += fmt::format("; skipped the T<={} entry: {}", e.t_bucket, *why);
      continue;
    }
    r.config = cfg;
    r.tuned = true;
    r.why = fmt::format("tuned [{}] from {} ({} bucket T<={}, {:.4f} ms{}){}", e.config, h.db->path().string(),
                        e.t_bucket == key.t_bucket ? "exact" : "nearest", e.t_bucket, e.median_ms,
                        e.default_ms > 0 ? fmt::format(", default [{}] {:.4f} ms", def, e.default_ms) : "", skipped);
    return r;
  }
  r.why = fmt::format("default [{}]: no usable tuned entry{}", def, skipped);
  return r;
}

}  // namespace

const ResolvedConfig& resolve_config(const KernelFamily& f, const Problem& problem, const Problem& launch) {
  // The reference and helper kernels have nothing to tune: no lookup, no key, on every launch.
  static const ResolvedConfig untunable{{}, false, "no tunable parameters"};
  if (f.params().empty()) return untunable;
  static std::mutex m;
  static std::map<std::string, std::unique_ptr<ResolvedConfig>> cache;
  CUdevice dev = 0;
  check_cu(driver().cuCtxGetDevice_(&dev), "cuCtxGetDevice");
  const std::string key =
      fmt::format("{}|{}|{}|dev{}", f.name(), problem.describe(), launch.describe(), static_cast<int>(dev));
  std::lock_guard<std::mutex> lock(m);
  auto& slot = cache[key];
  if (!slot) {
    slot = std::make_unique<ResolvedConfig>(resolve(f, problem, launch));
    const std::string line = fmt::format("{} for {}: {}", f.name(), problem.describe(), slot->why);
    // Stale tuning results are never used silently: that is said even without NSAJIT_LOG.
    if (slot->why.find("stale:") != std::string::npos && !log_info_enabled())
      fmt::print(stderr, "nsajit: warning: {} (re-run `nsajit tune`)\n", line);
    else
      log_info(line);
  }
  return *slot;
}

}  // namespace nsajit
