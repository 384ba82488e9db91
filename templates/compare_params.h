// The parameter block of the tuner's correctness gate (compare.cuh): the kernel's one by-value argument, defined
// once for both sides. The template reads it (codegen pastes this file into the generated source before the
// template); tuner/cases.cpp fills it. Plain C++ over nsa_types.h, which g++ and NVRTC both compile.
#ifndef NSA_COMPARE_PARAMS_H
#define NSA_COMPARE_PARAMS_H
#ifndef NSAJIT_GENERATED
#include "nsa_types.h"
#endif

namespace nsa {

// The element kinds of CompareParams::kind; int32 is compared exactly (mismatching elements are counted).
enum CompareKind { kCompareBf16 = 0, kCompareFp16 = 1, kCompareF32 = 2, kCompareI32 = 3 };

struct CompareParams {
  const void* a;    // candidate
  const void* ref;  // trusted
  i64 n;            // elements
  double* sums;     // [2]: sum (a - ref)^2, sum ref^2; zeroed by the caller
  u64* counts;      // [4]: non-finite values in a (where the trusted value is finite), mismatching int32 elements,
                    // values not -inf where the trusted value is -inf, trusted values that are NaN, +inf or
                    // (int32) the poison 0x7f7f7f7f; zeroed by the caller
  i32 kind;         // a CompareKind
  i32 unused;
};

}  // namespace nsa

#endif  // NSA_COMPARE_PARAMS_H
