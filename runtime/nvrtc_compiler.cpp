#include "runtime/nvrtc_compiler.h"

#include <dlfcn.h>
#include <fmt/format.h>
#include <nvrtc.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <regex>
#include <sstream>

#include "base/error.h"
#include "runtime/phase_times.h"

namespace nsajit {
namespace {

// NVRTC through one dlopen'ed table, as the driver is (runtime/driver.h): nothing links libnvrtc, so the same
// library runs against the toolkit's NVRTC, or the one a PyTorch wheel ships (nvidia/cu13/lib), with no toolkit.
#define NSAJIT_NVRTC_FUNCTIONS(X) \
  X(nvrtcGetErrorString)          \
  X(nvrtcVersion)                 \
  X(nvrtcGetNumSupportedArchs)    \
  X(nvrtcGetSupportedArchs)       \
  X(nvrtcCreateProgram)           \
  X(nvrtcDestroyProgram)          \
  X(nvrtcCompileProgram)          \
  X(nvrtcGetProgramLogSize)       \
  X(nvrtcGetProgramLog)           \
  X(nvrtcGetCUBINSize)            \
  X(nvrtcGetCUBIN)

struct NvrtcApi {
#define NSAJIT_DECLARE_FN(fn) decltype(&fn) fn##_ = nullptr;
  NSAJIT_NVRTC_FUNCTIONS(NSAJIT_DECLARE_FN)
#undef NSAJIT_DECLARE_FN
  std::string path;   // the file loaded
  std::string error;  // empty when usable
};

#define NSAJIT_STR2(x) #x
#define NSAJIT_STR(x) NSAJIT_STR2(x)

// The names and paths tried, in order: $NSAJIT_NVRTC alone when set; else the sonames (an NVRTC already in the
// process, such as the one `import torch` loads, then this library's RUNPATH, LD_LIBRARY_PATH and the system's
// search), then the toolkit's lib64 under $CUDA_HOME, $CUDA_PATH and the build's CUDA root.
std::vector<std::string> nvrtc_candidates() {
  if (const char* forced = std::getenv("NSAJIT_NVRTC"); forced != nullptr && *forced != '\0') return {forced};
  std::vector<std::string> names = {"libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"};
  std::vector<std::string> roots;
  for (const char* var : {"CUDA_HOME", "CUDA_PATH"})
    if (const char* v = std::getenv(var); v != nullptr && *v != '\0') roots.emplace_back(v);
#ifdef NSAJIT_DEFAULT_CUDA_ROOT
  roots.emplace_back(NSAJIT_DEFAULT_CUDA_ROOT);
#endif
  for (const std::string& root : roots)
    for (const char* so : {"libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"})
      names.push_back(root + "/lib64/" + so);
  return names;
}

NvrtcApi load_nvrtc() {
  NvrtcApi api;
  std::string tried;
  void* lib = nullptr;
  for (const std::string& name : nvrtc_candidates()) {
    lib = dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (lib != nullptr) break;
    const char* why = dlerror();
    tried += fmt::format("\n  {}: {}", name, why ? why : "not found");
  }
  if (lib == nullptr) {
    api.error = fmt::format(
        "NVRTC (libnvrtc.so.13) was not found, and nsajit compiles its kernels with it. Tried:{}\nInstall the CUDA "
        "toolkit (or set CUDA_HOME), or `import torch` first (its CUDA wheels ship libnvrtc), or set NSAJIT_NVRTC to "
        "the library's path",
        tried);
    return api;
  }
#define NSAJIT_LOAD_FN(fn)                                                                          \
  api.fn##_ = reinterpret_cast<decltype(&fn)>(dlsym(lib, NSAJIT_STR(fn)));                          \
  if (api.fn##_ == nullptr) {                                                                       \
    api.error = fmt::format("the NVRTC library loaded lacks {}: it is too old", NSAJIT_STR(fn)); \
    return api;                                                                                     \
  }
  NSAJIT_NVRTC_FUNCTIONS(NSAJIT_LOAD_FN)
#undef NSAJIT_LOAD_FN
  Dl_info info{};
  if (dladdr(reinterpret_cast<void*>(api.nvrtcVersion_), &info) != 0 && info.dli_fname != nullptr)
    api.path = info.dli_fname;
  return api;
}

const NvrtcApi& nvrtc() {
  static const NvrtcApi api = [] {
    PhaseTimer timer(Phase::nvrtc_load);
    return load_nvrtc();
  }();
  if (!api.error.empty()) throw Error(api.error);
  return api;
}

void check_nvrtc(nvrtcResult r, const char* what) {
  if (r != NVRTC_SUCCESS) throw Error(fmt::format("{} failed: {}", what, nvrtc().nvrtcGetErrorString_(r)));
}

struct Program {
  nvrtcProgram prog = nullptr;
  ~Program() {
    if (prog != nullptr) nvrtc().nvrtcDestroyProgram_(&prog);
  }
};

std::vector<std::string> split_lines(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

}  // namespace

std::string nvrtc_version() {
  int major = 0, minor = 0;
  check_nvrtc(nvrtc().nvrtcVersion_(&major, &minor), "nvrtcVersion");
  return fmt::format("{}.{}", major, minor);
}

std::string nvrtc_library() { return nvrtc().path; }

std::vector<std::string> nvrtc_options(const std::string& arch) {
  static const std::regex real_arch(R"(sm_(\d+)(a|f)?)");
  std::smatch m;
  if (!std::regex_match(arch, m, real_arch))
    throw UsageError(fmt::format("bad arch '{}': expected a real GPU target such as sm_90a, sm_80, sm_86, sm_89",
                                 arch));
  int n = 0;
  const nvrtcResult r = nvrtc().nvrtcGetNumSupportedArchs_(&n);
  check_nvrtc(r, "nvrtcGetNumSupportedArchs");
  std::vector<int> archs(static_cast<size_t>(n));
  check_nvrtc(nvrtc().nvrtcGetSupportedArchs_(archs.data()), "nvrtcGetSupportedArchs");
  const int cc = std::stoi(m[1].str());
  if (std::find(archs.begin(), archs.end(), cc) == archs.end()) {
    std::string list;
    for (int a : archs) list += fmt::format("{}sm_{}", list.empty() ? "" : ", ", a);
    throw UsageError(fmt::format("bad arch '{}': this NVRTC ({}) targets {}", arch, nvrtc_version(), list));
  }
  if (cc < 80)
    throw UsageError(fmt::format("bad arch '{}': nsajit kernels need sm_80 or newer (bf16 tensor cores)", arch));
  return {
      "--gpu-architecture=" + arch,
      "--std=c++17",
      "-default-device",
      "--ptxas-options=-v",
      "-DNSAJIT_GENERATED=1",
  };
}

ResourceUsage parse_ptxas_report(const std::string& log) {
  ResourceUsage u;
  static const std::regex regs(R"(Used (\d+) registers)");
  static const std::regex smem(R"((\d+) bytes smem)");
  static const std::regex frame(R"((\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads)");
  std::smatch m;
  if (std::regex_search(log, m, regs)) {
    u.registers = std::stoi(m[1].str());
    u.parsed = true;
  }
  if (std::regex_search(log, m, smem)) u.static_smem_bytes = std::stoi(m[1].str());
  if (std::regex_search(log, m, frame)) {
    u.stack_bytes = std::stoi(m[1].str());
    u.spill_store_bytes = std::stoi(m[2].str());
    u.spill_load_bytes = std::stoi(m[3].str());
  }
  return u;
}

std::string format_compile_error(const std::string& name, const std::vector<std::string>& options,
                                 const std::string& log, const std::string& source) {
  std::string out = fmt::format("NVRTC could not compile {}\n  options:", name);
  for (const auto& o : options) out += " " + o;
  out += "\n" + log;
  // "name(LINE): error: ..." -> show the source around LINE.
  const std::vector<std::string> src = split_lines(source);
  static const std::regex where(R"(\((\d+)\): (?:catastrophic )?error)");
  std::vector<int> shown;
  for (auto it = std::sregex_iterator(log.begin(), log.end(), where); it != std::sregex_iterator(); ++it) {
    const int line = std::stoi((*it)[1].str());
    if (std::find(shown.begin(), shown.end(), line) != shown.end() || shown.size() >= 5) continue;
    shown.push_back(line);
    out += fmt::format("\n  source around line {}:\n", line);
    for (int l = std::max(1, line - 3); l <= std::min<int>(static_cast<int>(src.size()), line + 3); ++l)
      out += fmt::format("  {}{:5} | {}\n", l == line ? '>' : ' ', l, src[static_cast<size_t>(l - 1)]);
  }
  return out;
}

CompileResult compile_cubin(const std::string& source, const std::string& name, const std::string& arch) {
  const std::vector<std::string> options = nvrtc_options(arch);
  const auto start = std::chrono::steady_clock::now();
  Program p;
  check_nvrtc(nvrtc().nvrtcCreateProgram_(&p.prog, source.c_str(), name.c_str(), 0, nullptr, nullptr),
              "nvrtcCreateProgram");
  std::vector<const char*> opts;
  for (const auto& o : options) opts.push_back(o.c_str());
  const nvrtcResult result = nvrtc().nvrtcCompileProgram_(p.prog, static_cast<int>(opts.size()), opts.data());
  CompileResult out;
  size_t log_size = 0;
  check_nvrtc(nvrtc().nvrtcGetProgramLogSize_(p.prog, &log_size), "nvrtcGetProgramLogSize");
  out.log.resize(log_size);
  if (log_size > 0) check_nvrtc(nvrtc().nvrtcGetProgramLog_(p.prog, out.log.data()), "nvrtcGetProgramLog");
  while (!out.log.empty() && out.log.back() == '\0') out.log.pop_back();
  if (result != NVRTC_SUCCESS) throw Error(format_compile_error(name, options, out.log, source));
  size_t cubin_size = 0;
  check_nvrtc(nvrtc().nvrtcGetCUBINSize_(p.prog, &cubin_size), "nvrtcGetCUBINSize");
  out.cubin.resize(cubin_size);
  check_nvrtc(nvrtc().nvrtcGetCUBIN_(p.prog, out.cubin.data()), "nvrtcGetCUBIN");
  out.usage = parse_ptxas_report(out.log);
  out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return out;
}

}  // namespace nsajit
