// A test-only family (registered when NSAJIT_TEST_FAMILIES=1) that proves the tuner survives faulting variants:
// MODE 0 writes out[i] = 3 i + 1 correctly, MODE 1 also writes far out of bounds (an illegal address), MODE 2 spins
// forever (a hang), MODE 3 writes a wrong value (a wrong result).
#ifndef NSA_FAULT_TEST_CUH
#define NSA_FAULT_TEST_CUH
#ifndef NSAJIT_GENERATED
#include "common.cuh"
#include "fault_test_params.h"
namespace nsa::spec {
constexpr int kMode = 0, kThreads = 128;
}  // namespace nsa::spec
#endif

namespace nsa {

namespace fault_test {

using namespace spec;

__device__ __forceinline__ void run(const FaultTestParams& p) {
  const i64 i = static_cast<i64>(blockIdx.x) * kThreads + threadIdx.x;
  if (i < p.n) p.out[i] = static_cast<i32>(3 * i + 1) + (kMode == 3 && i == p.n / 2 ? 1 : 0);
  if (kMode == 1 && i == 0) p.out[p.n + (1ll << 40)] = 7;  // 4 TiB past the end: not mapped
  if (kMode == 2 && i == 0)
    while (*p.never_set == 0) {
    }
}

}  // namespace fault_test
}  // namespace nsa

#endif  // NSA_FAULT_TEST_CUH
