// The fixed-width integer names of the kernels and of their parameter structs (templates/*_params.h). Plain C++
// that both g++ and NVRTC compile: the host reaches it through the parameter headers, and codegen pastes it first
// into every generated source.
#ifndef NSA_TYPES_H
#define NSA_TYPES_H

namespace nsa {

typedef signed char i8;
typedef unsigned char u8;
typedef int i32;
typedef unsigned int u32;
typedef long long i64;
typedef unsigned long long u64;

// The parameter structs cross from the host to the device as raw bytes: both compilers must agree on these.
static_assert(sizeof(i32) == 4 && sizeof(i64) == 8 && sizeof(void*) == 8,
              "nsajit assumes 32-bit int and 64-bit long long and pointers");

}  // namespace nsa

#endif  // NSA_TYPES_H
