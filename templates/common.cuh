// nsajit kernel support: self-contained (NVRTC has no host standard library), thin inline-PTX wrappers in the
// DeepGEMM style. Shared by every kernel template; embedded into the binary and into emitted .cu files.
#ifndef NSA_COMMON_CUH
#define NSA_COMMON_CUH

namespace nsa {

typedef signed char i8;
typedef unsigned char u8;
typedef int i32;
typedef unsigned int u32;
typedef long long i64;
typedef unsigned long long u64;

// 16-bit storage types. The arithmetic is done in fp32; these only carry bits.
struct __align__(2) bf16 {
  unsigned short bits;
};
struct __align__(2) f16 {
  unsigned short bits;
};

template <class T>
struct DtypeTraits;
template <>
struct DtypeTraits<bf16> {
  static constexpr bool is_bf16 = true;
};
template <>
struct DtypeTraits<f16> {
  static constexpr bool is_bf16 = false;
};

// Two fp32 values to one packed pair of 16-bit floats (round to nearest even); lo goes to the low half.
template <class T>
__device__ __forceinline__ u32 pack2(float lo, float hi) {
  u32 r;
  if constexpr (DtypeTraits<T>::is_bf16) {
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  } else {
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  }
  return r;
}

template <class T>
__device__ __forceinline__ float to_float(T v) {
  if constexpr (DtypeTraits<T>::is_bf16) {
    return __uint_as_float(static_cast<u32>(v.bits) << 16);
  } else {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(v.bits));
    return f;
  }
}

template <class T>
__device__ __forceinline__ T from_float(float f) {
  u32 p = pack2<T>(f, 0.f);
  T r;
  r.bits = static_cast<unsigned short>(p & 0xffffu);
  return r;
}

__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ float fast_log2(float x) {
  float y;
  asm("lg2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ float neg_inf() { return __int_as_float(0xff800000); }

// ---- shared memory and asynchronous copies --------------------------------------------------------------------

__device__ __forceinline__ u32 smem_addr(const void* p) {
  return static_cast<u32>(__cvta_generic_to_shared(p));
}

// 16-byte global -> shared copy; when !valid the destination is zero-filled and nothing is read.
__device__ __forceinline__ void cp_async_16(u32 dst, const void* src, bool valid) {
  const int src_bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldmatrix_x4(u32 addr, u32& r0, u32& r1, u32& r2, u32& r3) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4_trans(u32 addr, u32& r0, u32& r1, u32& r2, u32& r3) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(addr));
}

// D += A * B for one m16n8k16 tile, fp32 accumulators.
template <class T>
__device__ __forceinline__ void mma_16816(float (&d)[4], const u32 (&a)[4], u32 b0, u32 b1) {
  if constexpr (DtypeTraits<T>::is_bf16) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// Byte offset of 16-byte chunk `chunk` of row `row` in a shared tile whose rows hold `kChunks` chunks
// (kChunks >= 8). XOR-swizzled so that the 8 rows an ldmatrix reads land in 8 different bank groups.
template <int kChunks>
__device__ __forceinline__ u32 swz(int row, int chunk) {
  static_assert(kChunks >= 8 && kChunks % 8 == 0, "rows must hold a multiple of 128 bytes");
  return static_cast<u32>((row * kChunks + (chunk ^ (row & 7))) * 16);
}

// Copy kRows rows of D 16-bit elements from global memory into a swizzled shared tile. row_ptr(r) gives the
// start of row r, or nullptr for a row that is to be zero-filled (nothing is read for it; `any_valid` is a
// readable address handed to the copy instead).
template <int kThreads, int kRows, int D, class RowPtr>
__device__ __forceinline__ void load_tile_async(u32 tile, RowPtr row_ptr, const void* any_valid) {
  constexpr int kChunks = D / 8;
  constexpr int kTotal = kRows * kChunks;
#pragma unroll
  for (int i = 0; i < (kTotal + kThreads - 1) / kThreads; ++i) {
    const int linear = i * kThreads + static_cast<int>(threadIdx.x);
    if (kTotal % kThreads != 0 && linear >= kTotal) break;
    const int row = linear / kChunks;
    const int chunk = linear % kChunks;
    const char* src = static_cast<const char*>(row_ptr(row));
    cp_async_16(tile + swz<kChunks>(row, chunk), src ? src + chunk * 16 : any_valid, src != nullptr);
  }
}

__device__ __forceinline__ float warp_quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
  return v;
}
__device__ __forceinline__ float warp_quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  v += __shfl_xor_sync(0xffffffffu, v, 2);
  return v;
}

}  // namespace nsa

#endif  // NSA_COMMON_CUH
