#include "runtime/driver.h"

#include <dlfcn.h>
#include <fmt/format.h>

#include <mutex>

#include "base/error.h"

namespace nsajit {
namespace {

#define NSAJIT_STR2(x) #x
#define NSAJIT_STR(x) NSAJIT_STR2(x)

struct Loaded {
  DriverApi api;
  std::string error;  // empty when usable
};

Loaded load_driver() {
  Loaded out;
  void* lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (lib == nullptr) {
    const char* why = dlerror();
    out.error = fmt::format(
        "no NVIDIA driver found (dlopen libcuda.so.1: {}); nsajit can still compile and emit kernels here, but "
        "running or timing them needs a GPU",
        why ? why : "unknown error");
    return out;
  }
#define NSAJIT_LOAD_FN(fn)                                                                            \
  out.api.fn##_ = reinterpret_cast<decltype(&fn)>(dlsym(lib, NSAJIT_STR(fn)));                        \
  if (out.api.fn##_ == nullptr) {                                                                     \
    out.error = fmt::format("the NVIDIA driver is too old: libcuda.so.1 lacks {}", NSAJIT_STR(fn)); \
    return out;                                                                                       \
  }
  NSAJIT_DRIVER_FUNCTIONS(NSAJIT_LOAD_FN)
#undef NSAJIT_LOAD_FN
  const CUresult init = out.api.cuInit_(0);
  if (init != CUDA_SUCCESS) {
    const char* name = nullptr;
    out.api.cuGetErrorName_(init, &name);
    out.error = fmt::format("the NVIDIA driver is present but cuInit failed ({}): no usable GPU",
                            name ? name : std::to_string(static_cast<int>(init)));
    return out;
  }
  int count = 0;
  if (out.api.cuDeviceGetCount_(&count) != CUDA_SUCCESS || count == 0) {
    out.error = "the NVIDIA driver is present but reports no GPU";
  }
  return out;
}

const Loaded& loaded() {
  static const Loaded instance = load_driver();
  return instance;
}

}  // namespace

const DriverApi& driver() {
  const Loaded& l = loaded();
  if (!l.error.empty()) throw Error(l.error);
  return l.api;
}

bool driver_available(std::string* why) {
  const Loaded& l = loaded();
  if (why != nullptr) *why = l.error;
  return l.error.empty();
}

std::string cu_error_name(CUresult result) {
  const Loaded& l = loaded();
  const char* name = nullptr;
  if (l.api.cuGetErrorName_ != nullptr) l.api.cuGetErrorName_(result, &name);
  return name ? std::string(name) : fmt::format("CUresult {}", static_cast<int>(result));
}

void check_cu(CUresult result, const char* what) {
  if (result == CUDA_SUCCESS) return;
  const Loaded& l = loaded();
  const char* text = nullptr;
  if (l.api.cuGetErrorString_ != nullptr) l.api.cuGetErrorString_(result, &text);
  throw Error(fmt::format("{} failed: {} ({})", what, cu_error_name(result), text ? text : "no description"));
}

}  // namespace nsajit
