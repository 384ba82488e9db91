#pragma once
// How tuning results are keyed: the problem key (every field of the problem exact, except the sequence length,
// which is bucketed to the next power of two), the text forms of problems and tile configs stored in the
// database (and parsed back), and the hash of the generated source that makes a result stale when a template
// changes.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "codegen/codegen.h"
#include "codegen/family.h"
#include "codegen/problem.h"
#include "db/db.h"

namespace nsajit {

struct ProblemKey {
  std::string shape;     // Problem::describe() with the "T=..." field removed
  int64_t t_bucket = 0;  // the smallest power of two >= T (T = 0 or 1 -> 1)
  std::string str() const;  // shape with "T<=<bucket>" in T's place
  bool operator==(const ProblemKey&) const = default;
};
ProblemKey problem_key(const Problem& p);

// Inverse of Problem::describe(); throws UsageError naming the field that does not parse or is missing.
Problem parse_problem(std::string_view description);
// Inverse of describe(TileConfig) ("BM=64 BN=32 QREGS=1"; "" is the empty config); throws UsageError.
TileConfig parse_config(std::string_view description);

// BLAKE3-256 (64 lowercase hex chars) of generate_source(spec): changes whenever anything that reaches the
// compiled kernel changes (template, support headers, preamble, codegen).
std::string source_hash(const KernelSpec& spec);

// Why a stored best entry is stale against the current toolkit and codegen: another NVRTC, another driver (not
// compared when current.driver_version is 0: no GPU to ask), a kernel source whose hash has changed for `arch`.
// Throws UsageError when the entry's family, problem or config cannot be read.
struct Staleness {
  std::vector<std::string> reasons;  // "NVRTC 12.8 (now 13.0)", "driver 12080 (now 13000)", "kernel source changed"
  bool toolkit = false, source = false;
  bool stale() const { return toolkit || source; }
};
Staleness staleness(const BestEntry& e, const Toolkit& current, const std::string& arch);

}  // namespace nsajit
