#include "runtime/device.h"

#include <fmt/format.h>

#include <map>
#include <mutex>
#include <utility>

#include "base/error.h"
#include "runtime/driver.h"
#include "runtime/nvrtc_compiler.h"

namespace nsajit {

std::string DeviceInfo::arch() const {
  // wgmma and setmaxnreg need the arch-specific target on Hopper.
  if (cc_major == 9 && cc_minor == 0) return "sm_90a";
  return fmt::format("sm_{}{}", cc_major, cc_minor);
}

std::string DeviceInfo::model_fingerprint() const {
  return fmt::format("{}|cc{}.{}|sm{}|l2:{}|mem:{}", name, cc_major, cc_minor, sm_count, l2_bytes, memory_bytes);
}

std::string DeviceInfo::fingerprint() const {
  return fmt::format("{}|cc{}.{}|sm{}|l2:{}|mem:{}|driver:{}|nvrtc:{}", name, cc_major, cc_minor, sm_count,
                     l2_bytes, memory_bytes, driver_version, nvrtc_version);
}

int device_count() {
  int n = 0;
  check_cu(driver().cuDeviceGetCount_(&n), "cuDeviceGetCount");
  return n;
}

DeviceInfo query_device(int ordinal) {
  const DriverApi& d = driver();
  const int n = device_count();
  if (ordinal < 0 || ordinal >= n)
    throw UsageError(fmt::format("device {} does not exist: this machine has {} GPU(s), 0..{}", ordinal, n, n - 1));
  CUdevice dev = 0;
  check_cu(d.cuDeviceGet_(&dev, ordinal), "cuDeviceGet");
  DeviceInfo info;
  info.ordinal = ordinal;
  char name[256] = {};
  check_cu(d.cuDeviceGetName_(name, sizeof(name) - 1, dev), "cuDeviceGetName");
  info.name = name;
  auto attr = [&](CUdevice_attribute a, const char* what) {
    int v = 0;
    check_cu(d.cuDeviceGetAttribute_(&v, a, dev), what);
    return v;
  };
  info.cc_major = attr(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, "cuDeviceGetAttribute(cc major)");
  info.cc_minor = attr(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, "cuDeviceGetAttribute(cc minor)");
  info.sm_count = attr(CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, "cuDeviceGetAttribute(SM count)");
  info.l2_bytes = attr(CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE, "cuDeviceGetAttribute(L2 size)");
  info.max_smem_optin =
      attr(CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN, "cuDeviceGetAttribute(smem opt-in)");
  size_t mem = 0;
  check_cu(d.cuDeviceTotalMem_(&mem, dev), "cuDeviceTotalMem");
  info.memory_bytes = mem;
  check_cu(d.cuDriverGetVersion_(&info.driver_version), "cuDriverGetVersion");
  info.nvrtc_version = nvrtc_version();
  return info;
}

Context::Context(int ordinal) {
  info_ = query_device(ordinal);
  const DriverApi& d = driver();
  check_cu(d.cuDeviceGet_(&device_, ordinal), "cuDeviceGet");
  check_cu(d.cuDevicePrimaryCtxRetain_(&ctx_, device_), "cuDevicePrimaryCtxRetain");
  check_cu(d.cuCtxSetCurrent_(ctx_), "cuCtxSetCurrent");
}

Context::~Context() {
  if (ctx_ != nullptr) driver().cuDevicePrimaryCtxRelease_(device_);
}

void Context::synchronize() const { check_cu(driver().cuCtxSynchronize_(), "cuCtxSynchronize"); }

namespace {

// The primary context of device `ordinal`, retained once for the life of the process.
CUcontext primary_context(int ordinal) {
  static std::mutex mutex;
  static std::map<int, CUcontext> retained;
  std::lock_guard<std::mutex> lock(mutex);
  auto it = retained.find(ordinal);
  if (it != retained.end()) return it->second;
  const DriverApi& d = driver();
  CUdevice dev = 0;
  check_cu(d.cuDeviceGet_(&dev, ordinal), "cuDeviceGet");
  CUcontext ctx = nullptr;
  check_cu(d.cuDevicePrimaryCtxRetain_(&ctx, dev), "cuDevicePrimaryCtxRetain");
  retained.emplace(ordinal, ctx);
  return ctx;
}

}  // namespace

DeviceScope::DeviceScope(const void* device_ptr, const char* who, const char* what) {
  const DriverApi& d = driver();
  CUcontext current = nullptr;
  check_cu(d.cuCtxGetCurrent_(&current), "cuCtxGetCurrent");
  const CUdeviceptr address = static_cast<CUdeviceptr>(reinterpret_cast<uintptr_t>(device_ptr));
  int ordinal = -1;
  CUresult r = d.cuPointerGetAttribute_(&ordinal, CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL, address);
  if (r != CUDA_SUCCESS && current == nullptr) {
    // Should the driver want a context for the query, ask again from each device's primary context in turn.
    int count = 0;
    check_cu(d.cuDeviceGetCount_(&count), "cuDeviceGetCount");
    for (int i = 0; i < count && r != CUDA_SUCCESS; ++i) {
      check_cu(d.cuCtxSetCurrent_(primary_context(i)), "cuCtxSetCurrent");
      r = d.cuPointerGetAttribute_(&ordinal, CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL, address);
    }
    // Memory the query does not know (some virtual-memory mappings): with one GPU there is one answer.
    if (r != CUDA_SUCCESS && count == 1) ordinal = 0, r = CUDA_SUCCESS;
    if (r != CUDA_SUCCESS) (void)d.cuCtxSetCurrent_(nullptr);
  }
  if (r != CUDA_SUCCESS) {
    if (current != nullptr) return;
    throw Error(fmt::format("{}: no CUDA context is current and {} is not device memory the driver knows "
                            "(cuPointerGetAttribute: {}), so its device cannot be found: pass device pointers, or "
                            "make a context current first",
                            who, what, cu_error_name(r)));
  }
  if (current != nullptr) {
    CUdevice have = 0, want = 0;
    check_cu(d.cuCtxGetDevice_(&have), "cuCtxGetDevice");
    check_cu(d.cuDeviceGet_(&want, ordinal), "cuDeviceGet");
    if (have == want) return;
  }
  check_cu(d.cuCtxSetCurrent_(primary_context(ordinal)), "cuCtxSetCurrent");
  if (current != nullptr) previous_ = current, restore_ = true;
}

DeviceScope::~DeviceScope() {
  if (restore_) (void)driver().cuCtxSetCurrent_(previous_);
}

void check_not_capturing(CUstream stream, const char* who) {
  CUstreamCaptureStatus status = CU_STREAM_CAPTURE_STATUS_NONE;
  check_cu(driver().cuStreamIsCapturing_(stream, &status), "cuStreamIsCapturing");
  if (status != CU_STREAM_CAPTURE_STATUS_NONE)
    throw UsageError(fmt::format("{}: the stream is being captured into a CUDA graph, and without a workspace this "
                                 "call would allocate and synchronize: pass a workspace",
                                 who));
}

DeviceBuffer::DeviceBuffer(size_t bytes) : bytes_(bytes) {
  if (bytes > 0) {
    const CUresult r = driver().cuMemAlloc_(&ptr_, bytes);
    if (r != CUDA_SUCCESS)
      throw Error(fmt::format("cuMemAlloc of {} bytes failed: {}", bytes, cu_error_name(r)));
  }
}

DeviceBuffer::~DeviceBuffer() {
  if (ptr_ != 0) driver().cuMemFree_(ptr_);
}

DeviceBuffer::DeviceBuffer(DeviceBuffer&& o) noexcept
    : ptr_(std::exchange(o.ptr_, 0)), bytes_(std::exchange(o.bytes_, 0)) {}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& o) noexcept {
  if (this != &o) {
    if (ptr_ != 0) driver().cuMemFree_(ptr_);
    ptr_ = std::exchange(o.ptr_, 0);
    bytes_ = std::exchange(o.bytes_, 0);
  }
  return *this;
}

void DeviceBuffer::upload(const void* host, size_t bytes, size_t offset) {
  if (offset + bytes > bytes_) throw Error("DeviceBuffer::upload past the end of the buffer");
  check_cu(driver().cuMemcpyHtoD_(ptr_ + offset, host, bytes), "cuMemcpyHtoD");
}

void DeviceBuffer::download(void* host, size_t bytes, size_t offset) const {
  if (offset + bytes > bytes_) throw Error("DeviceBuffer::download past the end of the buffer");
  check_cu(driver().cuMemcpyDtoH_(host, ptr_ + offset, bytes), "cuMemcpyDtoH");
}

void DeviceBuffer::fill_bytes(unsigned char value) {
  check_cu(driver().cuMemsetD8_(ptr_, value, bytes_), "cuMemsetD8");
}

void DeviceBuffer::fill_u16(uint16_t value) {
  check_cu(driver().cuMemsetD16_(ptr_, value, bytes_ / 2), "cuMemsetD16");
}

Event::Event() { check_cu(driver().cuEventCreate_(&ev_, CU_EVENT_DEFAULT), "cuEventCreate"); }
Event::~Event() {
  if (ev_ != nullptr) driver().cuEventDestroy_(ev_);
}
void Event::record(CUstream stream) { check_cu(driver().cuEventRecord_(ev_, stream), "cuEventRecord"); }
void Event::synchronize() { check_cu(driver().cuEventSynchronize_(ev_), "cuEventSynchronize"); }
float Event::ms_since(const Event& start) const {
  float ms = 0.f;
  check_cu(driver().cuEventElapsedTime_(&ms, start.ev_, ev_), "cuEventElapsedTime");
  return ms;
}

Kernel::Kernel(const std::vector<char>& cubin, const std::string& entry, int dynamic_smem_bytes) {
  const DriverApi& d = driver();
  check_cu(d.cuModuleLoadData_(&module_, cubin.data()), "cuModuleLoadData");
  const CUresult r = d.cuModuleGetFunction_(&fn_, module_, entry.c_str());
  if (r != CUDA_SUCCESS) {
    d.cuModuleUnload_(module_);
    module_ = nullptr;
    check_cu(r, ("cuModuleGetFunction(" + entry + ")").c_str());
  }
  if (dynamic_smem_bytes > 48 * 1024) {
    check_cu(d.cuFuncSetAttribute_(fn_, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, dynamic_smem_bytes),
             "cuFuncSetAttribute(max dynamic shared memory)");
  }
}

Kernel::~Kernel() {
  if (module_ != nullptr) driver().cuModuleUnload_(module_);
}

void Kernel::launch(Dim3 grid, Dim3 block, int smem_bytes, CUstream stream, const void* params) const {
  void* args[] = {const_cast<void*>(params)};
  check_cu(driver().cuLaunchKernel_(fn_, grid.x, grid.y, grid.z, block.x, block.y, block.z,
                                    static_cast<unsigned>(smem_bytes), stream, args, nullptr),
           "cuLaunchKernel");
}

}  // namespace nsajit
