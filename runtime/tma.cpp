#include "runtime/tma.h"

#include <cuda.h>
#include <fmt/format.h>

#include <cstring>

#include "base/error.h"
#include "runtime/driver.h"

namespace nsajit {

void check_tma_tensor(const char* who, const TmaTensor& t) {
  if (t.rank != 2 && t.rank != 3) throw UsageError(fmt::format("{}: TMA tensor rank {}: must be 2 or 3", who, t.rank));
  if (t.base == nullptr) throw UsageError(fmt::format("{}: TMA tensor base is a null pointer", who));
  if (reinterpret_cast<uintptr_t>(t.base) % 16 != 0)
    throw UsageError(fmt::format("{}: TMA tensor base {} is not 16-byte aligned", who, t.base));
  for (int i = 0; i < t.rank; ++i) {
    if (t.dims[i] == 0 || t.dims[i] > (uint64_t{1} << 32))
      throw UsageError(fmt::format("{}: TMA tensor dims[{}] = {}: must be in 1 .. 2^32", who, i, t.dims[i]));
    if (t.box[i] == 0 || t.box[i] > 256)
      throw UsageError(fmt::format("{}: TMA box[{}] = {}: must be in 1 .. 256", who, i, t.box[i]));
  }
  for (int i = 0; i + 1 < t.rank; ++i) {
    const uint64_t s = t.strides[i];
    if (s % 16 != 0 || s == 0 || s >= (uint64_t{1} << 40))
      throw UsageError(fmt::format("{}: TMA tensor strides[{}] = {} bytes: must be a positive multiple of 16 below 2^40",
                                   who, i, s));
  }
  if (t.strides[0] < t.dims[0] * 2)
    throw UsageError(fmt::format("{}: TMA tensor strides[0] = {} bytes is shorter than a row of {} elements", who,
                                 t.strides[0], t.dims[0]));
  const uint64_t inner = uint64_t{t.box[0]} * 2;
  if (inner % 16 != 0)
    throw UsageError(fmt::format("{}: TMA box[0] = {} elements = {} bytes: must be a multiple of 16 bytes", who,
                                 t.box[0], inner));
  if (t.swizzle_128b && inner > 128)
    throw UsageError(fmt::format("{}: TMA box[0] = {} elements = {} bytes: at most 128 bytes with the 128-byte "
                                 "swizzle (load wider rows as several boxes)",
                                 who, t.box[0], inner));
}

std::array<uint64_t, 16> encode_tma_tensor(const char* who, const TmaTensor& t) {
  check_tma_tensor(who, t);
  const DriverApi& d = driver();
  CUtensorMap map;
  cuuint64_t dims[3], strides[2];
  cuuint32_t box[3], elem[3] = {1, 1, 1};
  for (int i = 0; i < t.rank; ++i) dims[i] = t.dims[i], box[i] = t.box[i];
  for (int i = 0; i + 1 < t.rank; ++i) strides[i] = t.strides[i];
  const CUresult r = d.cuTensorMapEncodeTiled_(
      &map, t.fp16 ? CU_TENSOR_MAP_DATA_TYPE_FLOAT16 : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, static_cast<cuuint32_t>(t.rank), const_cast<void*>(t.base), dims,
      strides, box, elem, CU_TENSOR_MAP_INTERLEAVE_NONE,
      t.swizzle_128b ? CU_TENSOR_MAP_SWIZZLE_128B : CU_TENSOR_MAP_SWIZZLE_NONE, CU_TENSOR_MAP_L2_PROMOTION_L2_128B,
      t.zero_fill ? CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE : CU_TENSOR_MAP_FLOAT_OOB_FILL_NAN_REQUEST_ZERO_FMA);
  check_cu(r, fmt::format("{}: cuTensorMapEncodeTiled", who).c_str());
  std::array<uint64_t, 16> out{};
  static_assert(sizeof(map) == sizeof(out), "CUtensorMap is 128 bytes");
  std::memcpy(out.data(), &map, sizeof(out));
  return out;
}

}  // namespace nsajit
