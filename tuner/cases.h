#pragma once
// What the tuner measures for a family: inputs on the GPU, the launch of one candidate tile config, and the
// correctness gate that compares the candidate's outputs with a trusted result on the same random inputs (NSA.md
// tolerance: relative L2 error <= 1e-2 for bf16, <= 2e-3 for fp16, no NaN or Inf; selections equal).
//
// Trusted results: the backward families against the whole backward with every default config (gradients dq, dk,
// dv compared); win_fwd and cmp_fwd against the simple fp32 reference kernels (win_fwd_ref, cmp_fwd_ref, which
// the GPU tests check against the float64 CPU reference); pool against a CPU mean pool; select and slc_fwd against
// the family's default tile config (the configuration the GPU tests check against the float64 reference);
// fault_test against its known pattern. select's idx may differ from the trusted one by NSA.md's near-tie swaps
// only (tuner/select_gate.h): the differing rows are judged against float64 block scores. Outputs are poisoned (all bits set: NaN) before the checked launch, so a
// candidate that skips part of its output fails.
#include <cuda.h>

#include <memory>
#include <optional>
#include <string>

#include "codegen/family.h"
#include "codegen/overlap.h"
#include "codegen/problem.h"
#include "tuner/inputs.h"

namespace nsajit {

class TuneCase {
public:
  virtual ~TuneCase() = default;
  // Overwrites the outputs (never accumulates), so repeated launches time the same work.
  virtual void launch(const TileConfig& config, CUstream stream) = 0;
  // Poisons the outputs, launches `config` once, synchronizes, and compares with the trusted result: nullopt when
  // it passes, else what is wrong ("o: relative error 0.31 > 0.01"). CUDA errors throw nsajit::Error.
  virtual std::optional<std::string> check(const TileConfig& config) = 0;
  // What the last check that passed accepted short of equality with the trusted result, for the trial's record
  // ("3 near-tie swaps accepted in 2 rows ..." for select); empty when the outputs matched as compared.
  virtual std::string note() const { return {}; }
  // A data-dependent family's case: how its selection's (span, KV head) entries split between the overlap buckets.
  virtual std::optional<PlanShares> overlap_shares() const { return std::nullopt; }
};

// Builds the inputs (queries of the given kind, tuner/inputs.h) and the trusted result (synchronously). The current
// context must be set. Throws UsageError for a family the tuner cannot measure.
std::unique_ptr<TuneCase> make_tune_case(const KernelFamily& family, const Problem& problem, InputKind inputs);

// The gate's comparison itself, on device buffers of `n` elements (kind: 0 bf16, 1 fp16, 2 fp32, 3 int32), for
// the tests: nullopt when `candidate` matches `trusted`, else what is wrong. `nonzero`: the trusted tensor cannot
// legitimately be all zeros or -inf.
std::optional<std::string> gate_compare(const Problem& problem, const void* candidate, const void* trusted, int64_t n,
                                        int kind, double tolerance, bool nonzero = true);

// The families `nsajit tune` can sweep: the forward's (pool, cmp_fwd, select, slc_fwd, win_fwd: the default) and
// the backward's (cmp_bwd_dq, cmp_bwd_dkv, slc_bwd_dq, slc_bwd_dkv, win_bwd_dq, win_bwd_dkv: `--families bwd`).
bool is_tunable(const KernelFamily& family);
bool is_backward_family(const KernelFamily& family);

}  // namespace nsajit
