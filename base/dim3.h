#pragma once
// A launch's grid or block extent: what code generation says about a launch (codegen/family.h LaunchGeometry) and
// what the runtime passes to the driver (runtime/device.h Kernel::launch), with no CUDA header.

namespace nsajit {

struct Dim3 {
  unsigned x = 1, y = 1, z = 1;
};

}  // namespace nsajit
