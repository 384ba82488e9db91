#pragma once
// NVRTC, straight to CUBIN, with one fixed option set per arch and the ptxas resource report parsed.
#include <string>
#include <vector>

namespace nsajit {

struct ResourceUsage {
  int registers = -1;
  int spill_store_bytes = 0;
  int spill_load_bytes = 0;
  int stack_bytes = 0;
  int static_smem_bytes = 0;
  bool parsed = false;  // false when the report held no "Used N registers" line
};

struct CompileResult {
  std::vector<char> cubin;
  std::string log;  // NVRTC's program log (holds the ptxas report)
  ResourceUsage usage;
  double seconds = 0.0;
};

// "13.0" for the NVRTC this binary loaded (dlopen'ed on first use: see nvrtc_compiler.cpp for where it is looked
// for); throws nsajit::Error saying where it looked when none is found.
std::string nvrtc_version();
// The file of the NVRTC loaded, as the dynamic loader names it.
std::string nvrtc_library();

// The option set for an arch such as "sm_90a" or "sm_86". Throws nsajit::UsageError for an arch NVRTC does not
// target as a real GPU (nsajit emits CUBIN, never PTX).
std::vector<std::string> nvrtc_options(const std::string& arch);

// Compiles `source` (named `name` in messages). Throws nsajit::Error on failure with the options, the log and the
// numbered source lines around each error.
CompileResult compile_cubin(const std::string& source, const std::string& name, const std::string& arch);

// Parses ptxas -v output (exposed for tests).
ResourceUsage parse_ptxas_report(const std::string& log);

// The message compile_cubin throws for a failed compile (exposed for tests).
std::string format_compile_error(const std::string& name, const std::vector<std::string>& options,
                                 const std::string& log, const std::string& source);

}  // namespace nsajit
