#pragma once
// Spec -> CUDA source, deterministically: the same spec gives byte-identical source.
#include <string>

#include "codegen/family.h"
#include "codegen/problem.h"

namespace nsajit {

struct KernelSpec {
  const KernelFamily* family = nullptr;
  Problem problem;
  TileConfig config;
  std::string arch = "sm_90a";

  std::string describe() const;  // "win_fwd [BM=64 BN=64 QREGS=1] bf16 ... on sm_90a"
};

// The translation unit NVRTC compiles: a header comment recording the spec, the shared support header, the
// family's constexpr preamble, the family's template and an extern "C" entry point.
std::string generate_source(const KernelSpec& spec);

// A standalone program for `nvcc -gencode=arch=compute_90a,code=sm_90a x.cu -o x`: the kernel source plus the
// family's harness, which runs it on random inputs, checks it against a simple reference and prints PASS/FAIL.
std::string generate_standalone(const KernelSpec& spec);

}  // namespace nsajit
