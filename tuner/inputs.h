#pragma once
// Random inputs for benchmarks and long-sequence checks: normal values (never zeros), generated on the host in
// parallel and uploaded.
#include <cstddef>
#include <cstdint>
#include <string_view>
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

// What the queries look like. `random`: every element N(0, 1) (the convention of fla's benchmark): neighbouring
// positions select almost unrelated blocks. `coherent` (span-coherent, the default of `nsajit bench`): the queries
// of each l'-token span share a base vector, q = base(span) + 0.25 * noise(t) per head, so that neighbouring positions
// select mostly the same blocks, as a trained model's do (adjacent queries of trained NSA/InfLLM-V2 models share
// most of their top-k blocks: shared/notes/backward-and-hopper.md, finding 10). Keys and values stay N(0, 1). With
// the reference selection at T = 8192 (fla blocking, n = 16), neighbours' Jaccard is 0.77 and a 64-position span
// selects 26 distinct blocks, against 0.36 and 64 for random queries (tests/cpu/test_inputs.cpp).
enum class InputKind { random, coherent };
InputKind parse_input_kind(std::string_view s);  // "random" | "coherent"; throws UsageError otherwise
std::string_view input_kind_name(InputKind k);
// The queries [B, T, HQ, dk] (contiguous) of that kind: bits on the host. Deterministic in (seed, shape).
std::vector<uint16_t> query_bits(const Problem& p, InputKind kind, uint64_t seed);

// How much neighbouring positions' selections agree, per KV head, over idx [rows, H, n] / cnt [rows, H] of
// `rows` = B * T positions (batch entries of T positions each; a pair never spans two entries):
// jaccard: the mean over (t, t + 1) pairs of |A n B| / |A u B|; distinct: the mean number of distinct blocks
// selected by the positions of each span of `span` positions (the blocks a CTA of that many positions loads).
struct SelectionOverlap {
  double jaccard = 0, distinct = 0;
  int64_t pairs = 0, spans = 0;
};
SelectionOverlap selection_overlap(const int32_t* idx, const int32_t* cnt, int64_t B, int64_t T, int H, int n,
                                   int span = 64);

uint16_t float_to_bits(float f, Dtype dtype);
float bits_to_float(uint16_t b, Dtype dtype);

}  // namespace nsajit
