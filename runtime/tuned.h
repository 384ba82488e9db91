#pragma once
// Which tile config a call uses when its caller gives none: the tuning database's best for the current GPU model
// and the problem (the exact sequence-length bucket, else the nearest bucket), else the family's documented
// default. A data-dependent family (KernelFamily::overlap_dependent()) is looked up per overlap bucket: the entries
// tuned for that bucket only, else that bucket's default. Results measured with another driver or NVRTC, or for a source that has changed since, are stale:
// skipped and said so. NSAJIT_LOG=info prints each decision once, with its reason; NSAJIT_DB picks the database
// (default: default_db_path()), NSAJIT_DB=off uses the defaults only.
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "codegen/family.h"
#include "codegen/problem.h"
#include "db/db.h"

namespace nsajit {

struct ResolvedConfig {
  TileConfig config;
  bool tuned = false;
  std::string why;  // "tuned: exact bucket T<=65536 in /path/tuning.db (4.99 ms; default 5.29 ms)" / "default: ..."
};

// `problem` is the caller's problem (the key); `launch` the problem the kernel is built for (the same, except
// where an API specializes it, e.g. pool's head dim), used to check the config is valid there; `bucket` the overlap
// bucket (ignored by families that are not data-dependent). Needs a current CUDA context. Thread-safe; cached per
// process.
const ResolvedConfig& resolve_config(const KernelFamily& family, const Problem& problem, const Problem& launch,
                                     OverlapBucket bucket = OverlapBucket::high);

// True when NSAJIT_LOG asks for info (or debug) messages.
bool log_info_enabled();

// ---- the lookup's parts, which need no GPU (tested in tests/cpu/test_tuned.cpp) --------------------------------

// The database the lookup reads. `nsajit_db` is NSAJIT_DB's value (null when unset): "off", "none" or "0" for none,
// else default_db_path(). Never throws: no file is no database, silently; a file that cannot be used (damaged, not a
// tuning database, a newer schema) is no database, with a `warning` that the caller prints (a training job must
// not stop for it, nor silently lose its tuned configs).
struct TunedDb {
  std::unique_ptr<TuningDb> db;
  std::string unavailable;  // why there is none
  std::string warning;      // non-empty when the user must be told
};
TunedDb open_tuned_db(const char* nsajit_db);

// Where the lookup runs: the GPU model and toolkit (another driver or NVRTC makes an entry stale), the shared memory
// a config may use, and the architecture the runtime builds for (a changed kernel source makes an entry stale).
struct LookupTarget {
  Toolkit toolkit;
  int max_smem = kHopperMaxSmemOptin;
  std::string arch = "sm_90a";
};

// Why a stored best entry cannot serve `launch` on `target` (stale, unreadable, outside the family's space,
// incomplete, rejected for the problem), or nullopt, with the entry's config in `config`.
std::optional<std::string> unusable_entry(const KernelFamily& family, const BestEntry& e, const LookupTarget& target,
                                          const Problem& launch, TileConfig& config);

// The bucket choice among the entries of one (device, family, shape): the exact bucket `t_bucket`, else the nearest
// in powers of two, the larger bucket of two equally near; an entry `unusable` rejects is passed over for the next.
struct BucketChoice {
  std::optional<size_t> index;  // into the entries; nullopt when none is usable
  TileConfig config;            // the chosen entry's config
  std::string skipped;          // "; skipped the T<=4096 entry: <why>" for each one passed over, in the order tried
};
using UsableCheck = std::function<std::optional<std::string>(const BestEntry&, TileConfig&)>;
BucketChoice choose_bucket(const std::vector<BestEntry>& entries, int64_t t_bucket, const UsableCheck& unusable);

// The whole decision for one call, given the database: what resolve_config() computes once and caches.
ResolvedConfig resolve_from(const TunedDb& db, const KernelFamily& family, const Problem& problem,
                            const Problem& launch, const LookupTarget& target,
                            OverlapBucket bucket = OverlapBucket::high);

}  // namespace nsajit
