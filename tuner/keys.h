#pragma once
// How tuning results are keyed: the problem key (every field of the problem exact, except the sequence length,
// which is bucketed to the next power of two), the text forms of problems and tile configs stored in the
// database (and parsed back), and the hash of the generated source that makes a result stale when a template
// changes.
#include <cstdint>
#include <string>
#include <string_view>

#include "codegen/codegen.h"
#include "codegen/family.h"
#include "codegen/problem.h"

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

}  // namespace nsajit
