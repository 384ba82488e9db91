#pragma once
// The runtime's kernels: each spec compiled (or found in the disk cache) once and loaded once per CUDA context,
// then shared by every call. Thread-safe.
#include "codegen/codegen.h"
#include "runtime/device.h"

namespace nsajit {

// The kernel of `spec`, loaded into the calling thread's current context (which the caller must have made
// current). Compiles through the CUBIN cache at CubinCache::default_dir() on first use.
const Kernel& runtime_kernel(const KernelSpec& spec);

}  // namespace nsajit
