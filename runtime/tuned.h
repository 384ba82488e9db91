#pragma once
// Which tile config a call uses when its caller gives none: the tuning database's best for the current GPU model
// and the problem (the exact sequence-length bucket, else the nearest bucket), else the family's documented
// default. Results measured with another driver or NVRTC, or for a source that has changed since, are stale:
// skipped and said so. NSAJIT_LOG=info prints each decision once, with its reason; NSAJIT_DB picks the database
// (default: default_db_path()), NSAJIT_DB=off uses the defaults only.
#include <string>

#include "codegen/family.h"
#include "codegen/problem.h"

namespace nsajit {

struct ResolvedConfig {
  TileConfig config;
  bool tuned = false;
  std::string why;  // "tuned: exact bucket T<=65536 in /path/tuning.db (4.99 ms; default 5.29 ms)" / "default: ..."
};

// `problem` is the caller's problem (the key); `launch` the problem the kernel is built for (the same, except
// where an API specializes it, e.g. pool's head dim), used to check the config is valid there. Needs a current
// CUDA context. Thread-safe; cached per process.
const ResolvedConfig& resolve_config(const KernelFamily& family, const Problem& problem, const Problem& launch);

// True when NSAJIT_LOG asks for info (or debug) messages.
bool log_info_enabled();

}  // namespace nsajit
