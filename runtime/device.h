#pragma once
// A GPU as nsajit sees it: its fingerprint, its primary context, memory, streams, events, and loaded modules.
#include <cuda.h>

#include <cstdint>
#include <string>
#include <vector>

#include "base/dim3.h"

namespace nsajit {

struct DeviceInfo {
  int ordinal = 0;
  std::string name;
  int cc_major = 0, cc_minor = 0;
  int sm_count = 0;
  int l2_bytes = 0;
  uint64_t memory_bytes = 0;
  int max_smem_optin = 0;  // per block, bytes, after cuFuncSetAttribute
  int driver_version = 0;  // e.g. 13000
  std::string nvrtc_version;

  std::string arch() const;         // "sm_90a" on compute capability 9.0, else "sm_XY"
  std::string fingerprint() const;  // one line identifying the GPU model and software stack
  // The GPU model alone (name, compute capability, SMs, L2, memory): what tuning results are keyed on; the
  // driver and NVRTC are kept beside them, and a change makes them stale.
  std::string model_fingerprint() const;
};

int device_count();                // throws nsajit::Error without a driver
DeviceInfo query_device(int ordinal);

// The device's primary context, made current on the calling thread for the object's lifetime.
class Context {
public:
  explicit Context(int ordinal = 0);
  ~Context();
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;
  const DeviceInfo& info() const { return info_; }
  void synchronize() const;

private:
  CUdevice device_ = 0;
  CUcontext ctx_ = nullptr;
  DeviceInfo info_;
};

// Makes a context of the device that `device_ptr` lives on (cuPointerGetAttribute's device ordinal) current on the
// calling thread for the object's lifetime, so that a call works from any thread (PyTorch's autograd runs the
// backward on a thread of its own, where no context is current):
//   - the current context already belongs to that device: nothing changes;
//   - no context is current: the device's primary context is made current and stays current afterwards (as cuBLAS
//     does; nsajit retains each primary context once, for the life of the process);
//   - another device's context is current: the device's primary context is made current, and the previous one is
//     restored on destruction.
// A pointer the driver cannot place: with a current context the call goes ahead in it; with none, on a machine with
// one GPU that GPU's primary context is made current, with several it is an error. `who` and `what` name the call
// and the pointer in errors.
class DeviceScope {
public:
  DeviceScope(const void* device_ptr, const char* who, const char* what);
  ~DeviceScope();
  DeviceScope(const DeviceScope&) = delete;
  DeviceScope& operator=(const DeviceScope&) = delete;

private:
  CUcontext previous_ = nullptr;
  bool restore_ = false;
};

// Throws UsageError when `stream` is being captured into a CUDA graph: `who` would allocate and synchronize, which
// a capture forbids (give it a workspace).
void check_not_capturing(CUstream stream, const char* who);

class DeviceBuffer {
public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t bytes);
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer&& o) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  CUdeviceptr ptr() const { return ptr_; }
  void* get() const { return reinterpret_cast<void*>(ptr_); }
  size_t bytes() const { return bytes_; }
  void upload(const void* host, size_t bytes, size_t offset = 0);
  void download(void* host, size_t bytes, size_t offset = 0) const;
  void fill_bytes(unsigned char value);
  void fill_u16(uint16_t value);

private:
  CUdeviceptr ptr_ = 0;
  size_t bytes_ = 0;
};

class Event {
public:
  Event();
  ~Event();
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
  void record(CUstream stream = nullptr);
  void synchronize();
  float ms_since(const Event& start) const;
  CUevent get() const { return ev_; }

private:
  CUevent ev_ = nullptr;
};

// A loaded CUBIN and one kernel function in it.
class Kernel {
public:
  Kernel(const std::vector<char>& cubin, const std::string& entry, int dynamic_smem_bytes);
  ~Kernel();
  Kernel(const Kernel&) = delete;
  Kernel& operator=(const Kernel&) = delete;
  // Launches with one argument passed by value: the family's parameter struct at `params`.
  void launch(Dim3 grid, Dim3 block, int smem_bytes, CUstream stream, const void* params) const;
  CUfunction function() const { return fn_; }

private:
  CUmodule module_ = nullptr;
  CUfunction fn_ = nullptr;
};

}  // namespace nsajit
