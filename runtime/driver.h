#pragma once
// The CUDA Driver API through one dlopen'ed table. libcuda is never linked, so the same binary starts, compiles
// and emits kernels on machines without a driver, and says plainly that no GPU is present where one is needed.
#include <cuda.h>

#include <string>

namespace nsajit {

// Every entry point nsajit uses. The names are cuda.h's (which maps e.g. cuMemAlloc to cuMemAlloc_v2); the
// table resolves the versioned symbol that the macro names.
#define NSAJIT_DRIVER_FUNCTIONS(X) \
  X(cuInit)                        \
  X(cuDriverGetVersion)            \
  X(cuGetErrorName)                \
  X(cuGetErrorString)              \
  X(cuDeviceGetCount)              \
  X(cuDeviceGet)                   \
  X(cuDeviceGetName)               \
  X(cuDeviceGetAttribute)          \
  X(cuDeviceTotalMem)              \
  X(cuDevicePrimaryCtxRetain)      \
  X(cuDevicePrimaryCtxRelease)     \
  X(cuCtxSetCurrent)               \
  X(cuCtxGetCurrent)               \
  X(cuCtxGetDevice)                \
  X(cuCtxSynchronize)              \
  X(cuPointerGetAttribute)         \
  X(cuModuleLoadData)              \
  X(cuModuleUnload)                \
  X(cuModuleGetFunction)           \
  X(cuFuncSetAttribute)            \
  X(cuFuncGetAttribute)            \
  X(cuLaunchKernel)                \
  X(cuMemAlloc)                    \
  X(cuMemFree)                     \
  X(cuMemGetInfo)                  \
  X(cuMemcpyHtoD)                  \
  X(cuMemcpyDtoH)                  \
  X(cuMemcpyDtoD)                  \
  X(cuMemsetD8)                    \
  X(cuMemsetD16)                   \
  X(cuMemsetD32)                   \
  X(cuMemsetD32Async)              \
  X(cuStreamCreate)                \
  X(cuStreamDestroy)               \
  X(cuStreamSynchronize)           \
  X(cuStreamIsCapturing)           \
  X(cuEventCreate)                 \
  X(cuEventDestroy)                \
  X(cuEventRecord)                 \
  X(cuEventSynchronize)            \
  X(cuEventElapsedTime)            \
  X(cuStreamBeginCapture)          \
  X(cuStreamEndCapture)            \
  X(cuGraphInstantiate)            \
  X(cuGraphLaunch)                 \
  X(cuGraphExecDestroy)            \
  X(cuGraphDestroy)                \
  X(cuTensorMapEncodeTiled)

struct DriverApi {
#define NSAJIT_DECLARE_FN(fn) decltype(&fn) fn##_ = nullptr;
  NSAJIT_DRIVER_FUNCTIONS(NSAJIT_DECLARE_FN)
#undef NSAJIT_DECLARE_FN
};

// The loaded table; throws nsajit::Error saying why when libcuda cannot be loaded or initialised.
const DriverApi& driver();

// Whether a usable driver with at least one GPU is present; `why` gets the reason when not.
bool driver_available(std::string* why = nullptr);

// Throws nsajit::Error naming the call and the driver's error name and text unless result is CUDA_SUCCESS.
void check_cu(CUresult result, const char* what);

// The driver's name for an error code ("CUDA_ERROR_ILLEGAL_ADDRESS"), or a number if the driver is absent.
std::string cu_error_name(CUresult result);

}  // namespace nsajit
