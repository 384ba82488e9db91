/* Compiled as C (C11) into libnsajit.so, so that the build fails when runtime/nsajit_c.h stops being a C header. */
#include "runtime/nsajit_c.h"

/* The ABI version a binding can compare with nsajit_abi_version() at run time. */
_Static_assert(NSAJIT_ABI_VERSION >= 1, "NSAJIT_ABI_VERSION must be positive");
_Static_assert(sizeof(nsajit_tensor) == 32, "nsajit_tensor is a pointer and three int64 strides");
