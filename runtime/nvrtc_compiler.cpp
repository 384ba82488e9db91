#include "runtime/nvrtc_compiler.h"

#include <fmt/format.h>
#include <nvrtc.h>

#include <algorithm>
#include <chrono>
#include <regex>
#include <sstream>

#include "runtime/error.h"

namespace nsajit {
namespace {

void check_nvrtc(nvrtcResult r, const char* what) {
  if (r != NVRTC_SUCCESS) throw Error(fmt::format("{} failed: {}", what, nvrtcGetErrorString(r)));
}

struct Program {
  nvrtcProgram prog = nullptr;
  ~Program() {
    if (prog != nullptr) nvrtcDestroyProgram(&prog);
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
  check_nvrtc(nvrtcVersion(&major, &minor), "nvrtcVersion");
  return fmt::format("{}.{}", major, minor);
}

std::vector<std::string> nvrtc_options(const std::string& arch) {
  static const std::regex real_arch(R"(sm_(\d+)(a|f)?)");
  std::smatch m;
  if (!std::regex_match(arch, m, real_arch))
    throw UsageError(fmt::format("bad arch '{}': expected a real GPU target such as sm_90a, sm_80, sm_86, sm_89",
                                 arch));
  int n = 0;
  const nvrtcResult r = nvrtcGetNumSupportedArchs(&n);
  check_nvrtc(r, "nvrtcGetNumSupportedArchs");
  std::vector<int> archs(static_cast<size_t>(n));
  check_nvrtc(nvrtcGetSupportedArchs(archs.data()), "nvrtcGetSupportedArchs");
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
  check_nvrtc(nvrtcCreateProgram(&p.prog, source.c_str(), name.c_str(), 0, nullptr, nullptr),
              "nvrtcCreateProgram");
  std::vector<const char*> opts;
  for (const auto& o : options) opts.push_back(o.c_str());
  const nvrtcResult result = nvrtcCompileProgram(p.prog, static_cast<int>(opts.size()), opts.data());
  CompileResult out;
  size_t log_size = 0;
  check_nvrtc(nvrtcGetProgramLogSize(p.prog, &log_size), "nvrtcGetProgramLogSize");
  out.log.resize(log_size);
  if (log_size > 0) check_nvrtc(nvrtcGetProgramLog(p.prog, out.log.data()), "nvrtcGetProgramLog");
  while (!out.log.empty() && out.log.back() == '\0') out.log.pop_back();
  if (result != NVRTC_SUCCESS) throw Error(format_compile_error(name, options, out.log, source));
  size_t cubin_size = 0;
  check_nvrtc(nvrtcGetCUBINSize(p.prog, &cubin_size), "nvrtcGetCUBINSize");
  out.cubin.resize(cubin_size);
  check_nvrtc(nvrtcGetCUBIN(p.prog, out.cubin.data()), "nvrtcGetCUBIN");
  out.usage = parse_ptxas_report(out.log);
  out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return out;
}

}  // namespace nsajit
