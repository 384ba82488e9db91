// The parameter block of the test-only fault_test family (fault_test.cuh): the kernel's one by-value argument,
// defined once for both sides. The template reads it (codegen pastes this file into the generated source before the
// template); tuner/cases.cpp fills it. Plain C++ over nsa_types.h, which g++ and NVRTC both compile.
#ifndef NSA_FAULT_TEST_PARAMS_H
#define NSA_FAULT_TEST_PARAMS_H
#ifndef NSAJIT_GENERATED
#include "nsa_types.h"
#endif

namespace nsa {

struct FaultTestParams {
  i32* out;
  i64 n;
  volatile i32* never_set;  // stays 0: MODE 2 waits for it
};

}  // namespace nsa

#endif  // NSA_FAULT_TEST_PARAMS_H
