#pragma once
// Random inputs for benchmarks and long-sequence checks: normal values (never zeros), generated on the host in
// parallel and uploaded.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "codegen/problem.h"
#include "runtime/device.h"

namespace nsajit {

// `n` values of `dtype` drawn from N(0, 1), as 16-bit patterns. Element i is a function of (seed, i) alone
// (counter-based: splitmix64 of the pair index, then Box-Muller), so a seed gives the same tensor on every machine,
// whatever the number of threads (`threads`; 0: the machine's cores, at most 16) and whatever `n` (a longer tensor
// starts with a shorter one).
std::vector<uint16_t> random_normal_bits(size_t n, Dtype dtype, uint64_t seed, unsigned threads = 0);

// A device buffer of `n` such values.
DeviceBuffer random_device_tensor(size_t n, Dtype dtype, uint64_t seed);

uint16_t float_to_bits(float f, Dtype dtype);
float bits_to_float(uint16_t b, Dtype dtype);

}  // namespace nsajit
