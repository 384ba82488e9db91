#pragma once
// `nsajit bench`: the forward per kernel family and whole, on the GPU.
#include <string>
#include <vector>

#include "codegen/family.h"
#include "codegen/problem.h"
#include "tuner/inputs.h"

namespace nsajit {

// Times every forward kernel and the whole forward for each sequence length on queries of the given kind, and
// prints how much neighbouring positions' selections overlap; prints a table (and writes JSON to `json_path`
// when not empty). Returns the process exit code.
int run_forward_bench(const Problem& base, const std::vector<int64_t>& seqs, const std::string& json_path,
                      InputKind inputs = InputKind::coherent);

// The backward per stage (kernel family) and whole, on a forward's saved outputs; with `with_forward`, also the
// forward (saving o_b, lse_b, idx, cnt) and a whole training step (forward then backward).
int run_backward_bench(const Problem& base, const std::vector<int64_t>& seqs, const std::string& json_path,
                       bool with_forward, InputKind inputs = InputKind::coherent);

// NSA decode: one step of Tq query tokens per sequence over B sequences of each length in `seqs`.
int run_decode_bench(const Problem& base, const std::vector<int64_t>& seqs, int Tq, const std::string& json_path,
                     const TileConfig* config = nullptr);

}  // namespace nsajit
