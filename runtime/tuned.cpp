#include "runtime/tuned.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <map>
#include <memory>
#include <mutex>

#include "base/error.h"
#include "codegen/codegen.h"
#include "db/db.h"
#include "db/keys.h"
#include "runtime/device.h"
#include "runtime/driver.h"
#include "runtime/phase_times.h"

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

TunedDb& database() {
  static TunedDb h = [] {
    PhaseTimer timer(Phase::db_open);
    TunedDb out = open_tuned_db(std::getenv("NSAJIT_DB"));
    if (!out.warning.empty()) fmt::print(stderr, "nsajit: warning: {}\n", out.warning);
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

// Distance in powers of two between buckets; a bucket that is not positive (a damaged entry) is farthest.
double bucket_distance(int64_t a, int64_t b) {
  if (a < 1 || b < 1) return std::numeric_limits<double>::infinity();
  return std::abs(std::log2(static_cast<double>(a)) - std::log2(static_cast<double>(b)));
}

}  // namespace

TunedDb open_tuned_db(const char* nsajit_db) {
  TunedDb out;
  const std::string setting = nsajit_db ? nsajit_db : "";
  if (setting == "off" || setting == "none" || setting == "0") {
    out.unavailable = "NSAJIT_DB=off";
    return out;
  }
  try {
    const std::filesystem::path path = setting.empty() ? default_db_path() : std::filesystem::path(setting);
    std::error_code ec;
    if (!std::filesystem::exists(path, ec)) {
      out.unavailable = fmt::format("no tuning database at {}", path.string());
      return out;
    }
    out.db = std::make_unique<TuningDb>(TuningDb::open(path, TuningDb::Mode::read_only));
  } catch (const std::exception& e) {
    // A damaged database must not stop a training job: say so (always) and use the defaults.
    out.db.reset();
    out.unavailable = fmt::format("tuning database unusable: {}", e.what());
    out.warning = out.unavailable + "; using the default tile configs";
  }
  return out;
}

std::optional<std::string> unusable_entry(const KernelFamily& f, const BestEntry& e, const LookupTarget& target,
                                          const Problem& launch, TileConfig& cfg) {
  // The config first: the staleness check generates the kernel source, which needs a whole config.
  try {
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
  try {
    const Staleness st = staleness(e, target.toolkit, target.arch);
    if (st.stale()) return fmt::format("stale: {}", fmt::join(st.reasons, ", "));
  } catch (const std::exception& ex) {
    return fmt::format("unreadable entry: {}", ex.what());
  }
  if (auto why = f.reject(launch, cfg, target.max_smem > 0 ? target.max_smem : kHopperMaxSmemOptin))
    return fmt::format("[{}] does not fit this problem: {}", e.config, *why);
  return std::nullopt;
}

BucketChoice choose_bucket(const std::vector<BestEntry>& entries, int64_t t_bucket, const UsableCheck& unusable) {
  // Exact bucket first (distance 0), then by distance in powers of two, the larger bucket on a tie.
  std::vector<size_t> order(entries.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    const double da = bucket_distance(entries[a].t_bucket, t_bucket);
    const double db = bucket_distance(entries[b].t_bucket, t_bucket);
    return da != db ? da < db : entries[a].t_bucket > entries[b].t_bucket;
  });
  BucketChoice c;
  for (size_t i : order) {
    TileConfig cfg;
    if (auto why = unusable(entries[i], cfg)) {
      c.skipped += fmt::format("; skipped the T<={} entry: {}", entries[i].t_bucket, *why);
      continue;
    }
    c.index = i;
    c.config = std::move(cfg);
    return c;
  }
  return c;
}

ResolvedConfig resolve_from(const TunedDb& h, const KernelFamily& f, const Problem& problem, const Problem& launch,
                            const LookupTarget& target, OverlapBucket bucket) {
  ResolvedConfig r;
  const bool by_overlap = f.overlap_dependent();
  r.config = by_overlap ? f.bucket_default_config(launch, bucket) : f.default_config(launch);
  const std::string def = describe(r.config);
  // "the high-overlap bucket's default [...]" for a data-dependent family.
  const std::string which = by_overlap ? fmt::format(" ({}-overlap bucket)", overlap_bucket_name(bucket)) : "";
  if (!h.db) {
    r.why = fmt::format("default [{}]{}: {}", def, which, h.unavailable);
    return r;
  }
  const ProblemKey key = problem_key(problem);
  const std::string overlap = by_overlap ? std::string(overlap_bucket_name(bucket)) : "";
  std::vector<BestEntry> entries;
  try {
    entries = h.db->best_for_shape(target.toolkit.device, f.name(), key.shape);
  } catch (const std::exception& e) {
    r.why = fmt::format("default [{}]{}: reading {} failed: {}", def, which, h.db->path().string(), e.what());
    return r;
  }
  std::erase_if(entries, [&](const BestEntry& e) { return e.overlap != overlap; });
  if (entries.empty()) {
    r.why = fmt::format("default [{}]{}: no tuned entry for this GPU model and problem{} in {}", def, which,
                        by_overlap ? fmt::format(" and the {}-overlap bucket", overlap) : "", h.db->path().string());
    return r;
  }
  const BucketChoice c = choose_bucket(entries, key.t_bucket, [&](const BestEntry& e, TileConfig& cfg) {
    return unusable_entry(f, e, target, launch, cfg);
  });
  if (!c.index) {
    r.why = fmt::format("default [{}]{}: no usable tuned entry{}", def, which, c.skipped);
    return r;
  }
  const BestEntry& e = entries[*c.index];
  r.config = c.config;
  r.tuned = true;
  r.why = fmt::format("tuned [{}]{} from {} ({} bucket T<={}, {} inputs, {:.4f} ms{}){}", e.config, which,
                      h.db->path().string(), e.t_bucket == key.t_bucket ? "exact" : "nearest", e.t_bucket, e.inputs,
                      e.median_ms, e.default_ms > 0 ? fmt::format(", default [{}] {:.4f} ms", def, e.default_ms) : "",
                      c.skipped);
  return r;
}

namespace {

ResolvedConfig resolve(const KernelFamily& f, const Problem& problem, const Problem& launch, OverlapBucket bucket) {
  const TunedDb& h = database();
  if (!h.db) return resolve_from(h, f, problem, launch, LookupTarget{}, bucket);
  const DeviceInfo& dev = current_device();
  LookupTarget target;
  target.toolkit = Toolkit{dev.model_fingerprint(), dev.driver_version, dev.nvrtc_version};
  if (dev.max_smem_optin > 0) target.max_smem = dev.max_smem_optin;
  return resolve_from(h, f, problem, launch, target, bucket);
}

}  // namespace

const ResolvedConfig& resolve_config(const KernelFamily& f, const Problem& problem, const Problem& launch,
                                     OverlapBucket bucket) {
  // The reference and helper kernels have nothing to tune: no lookup, no key, on every launch.
  static const ResolvedConfig untunable{{}, false, "no tunable parameters"};
  if (f.params().empty()) return untunable;
  static std::mutex m;
  static std::map<std::string, std::unique_ptr<ResolvedConfig>> cache;
  CUdevice dev = 0;
  check_cu(driver().cuCtxGetDevice_(&dev), "cuCtxGetDevice");
  const std::string key = fmt::format("{}|{}|{}|dev{}|{}", f.name(), problem.describe(), launch.describe(),
                                      static_cast<int>(dev), f.overlap_dependent() ? overlap_bucket_name(bucket) : "");
  std::lock_guard<std::mutex> lock(m);
  auto& slot = cache[key];
  if (!slot) {
    {
      PhaseTimer timer(Phase::config_lookup);
      slot = std::make_unique<ResolvedConfig>(resolve(f, problem, launch, bucket));
    }
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
