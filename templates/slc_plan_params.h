// The parameter block of the selection overlap plan (slc_plan.cuh): the kernel's one by-value argument, defined
// once for both sides. The template reads it (codegen pastes this file into the generated source before the
// template); runtime/slc_fwd_api.cpp fills it. Plain C++ over nsa_types.h, which g++ and NVRTC both compile.
#ifndef NSA_SLC_PLAN_PARAMS_H
#define NSA_SLC_PLAN_PARAMS_H
#ifndef NSAJIT_GENERATED
#include "nsa_types.h"
#endif

namespace nsa {

struct SlcPlanParams {
  const i32* idx;  // [rows, H, n] contiguous: selected block indices, ascending, -1 padded
  const i32* cnt;  // [rows, H] contiguous: valid entries of idx
  u8* plan;        // [ceil(rows / span), H]: 1 high overlap, 0 low
  i64 rows;        // B * T positions (varlen: the packed total)
  i32 H;           // KV heads
  i32 n;           // entries per idx row
  i32 span;        // positions per span, 1 .. 64
  i32 max_distinct;
};

}  // namespace nsa

#endif  // NSA_SLC_PLAN_PARAMS_H
