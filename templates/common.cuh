// nsajit kernel support: self-contained (NVRTC has no host standard library), thin inline-PTX wrappers in the
// DeepGEMM style. Shared by every kernel template; embedded into the binary and into emitted .cu files.
#ifndef NSA_COMMON_CUH
#define NSA_COMMON_CUH
#ifndef NSAJIT_GENERATED
#include "nsa_types.h"
#endif

namespace nsa {

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

// Head dims. The kernels take any multiple of 8 from 32 to 256 for dk and dv. A shared-memory tile's rows are
// padded to a multiple of 64 elements (dim_smem: the swizzle's rows of 128-byte multiples) and the MMA loops run over
// the dim rounded up to 16 (dim_mma: whole k steps of m16n8k16, whole pairs of n8 tiles); the columns between the
// true dim and dim_mma are zero-filled in every tile, never read from global memory, so that Q K^T and dO V^T are
// exact and the extra output columns (never stored) are finite. Global memory holds the true dim only: no copy of
// the caller's tensors, no padding in them. For multiples of 64 the three are one and the code is what it was.
__host__ __device__ constexpr int dim_smem(int d) { return (d + 63) / 64 * 64; }
__host__ __device__ constexpr int dim_mma(int d) { return (d + 15) / 16 * 16; }

// Copy kRows rows of D 16-bit elements from global memory into a swizzled shared tile (rows of dim_smem(D)). row_ptr(r)
// gives the start of row r, or nullptr for a row that is to be zero-filled (nothing is read for it; `any_valid` is a
// readable address handed to the copy instead). Chunks D / 8 .. dim_mma(D) / 8 of every row are zero-filled too.
template <int kThreads, int kRows, int D, class RowPtr>
__device__ __forceinline__ void load_tile_async(u32 tile, RowPtr row_ptr, const void* any_valid) {
  static_assert(D % 8 == 0, "rows are copied in 16-byte chunks");
  constexpr int kChunks = dim_smem(D) / 8;  // the tile's row pitch, in chunks
  constexpr int kCopy = dim_mma(D) / 8;     // chunks written per row (the MMA loops read no further)
  constexpr int kTotal = kRows * kCopy;
#pragma unroll
  for (int i = 0; i < (kTotal + kThreads - 1) / kThreads; ++i) {
    const int linear = i * kThreads + static_cast<int>(threadIdx.x);
    if (kTotal % kThreads != 0 && linear >= kTotal) break;
    const int row = linear / kCopy;
    const int chunk = linear % kCopy;
    const char* src = static_cast<const char*>(row_ptr(row));
    if constexpr (kCopy == D / 8) {
      cp_async_16(tile + swz<kChunks>(row, chunk), src ? src + chunk * 16 : any_valid, src != nullptr);
    } else {
      const bool ok = src != nullptr && chunk < D / 8;
      cp_async_16(tile + swz<kChunks>(row, chunk), ok ? src + chunk * 16 : any_valid, ok);
    }
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

// ---- the flash-attention inner step, shared by the attention kernels --------------------------------------------
// A warp owns 16 rows; this thread holds two of them (lane / 4 and lane / 4 + 8). s holds the warp's S = Q K^T tile
// as m16n8 accumulators (kBN / 8 of them, masked entries -inf), acc the O accumulators (dim_mma(kDV) / 8 m16n8 tiles).

// S = Q K^T for this warp's 16 rows against a kBN x kDK tile of K in swizzled shared memory at sK (kDK the true
// head dim: the tiles' rows are dim_smem(kDK) wide, the loop runs to dim_mma(kDK)). Q comes from qf (its A
// fragments, when kQInRegs) or from the swizzled Q tile at sQ, rows warp * 16 ...
template <class T, int kBN, int kDK, bool kQInRegs>
__device__ __forceinline__ void qk_tile(float (&s)[kBN / 8][4], const u32 (&qf)[kQInRegs ? dim_mma(kDK) / 16 : 1][4],
                                        u32 sQ, u32 sK, int warp, int lane) {
#pragma unroll
  for (int i = 0; i < kBN / 8; ++i) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.f;
#pragma unroll
  for (int kk = 0; kk < dim_mma(kDK) / 16; ++kk) {
    u32 a[4];
    if constexpr (kQInRegs) {
      a[0] = qf[kk][0], a[1] = qf[kk][1], a[2] = qf[kk][2], a[3] = qf[kk][3];
    } else {
      ldmatrix_x4(sQ + swz<dim_smem(kDK) / 8>(warp * 16 + lane % 16, kk * 2 + lane / 16), a[0], a[1], a[2], a[3]);
    }
#pragma unroll
    for (int nn = 0; nn < kBN / 16; ++nn) {
      u32 b0, b1, b2, b3;
      ldmatrix_x4(sK + swz<dim_smem(kDK) / 8>(nn * 16 + (lane / 16) * 8 + lane % 8, kk * 2 + ((lane / 8) & 1)), b0,
                  b1, b2, b3);
      mma_16816<T>(s[2 * nn], a, b0, b1);
      mma_16816<T>(s[2 * nn + 1], a, b2, b3);
    }
  }
}

// Online softmax in base 2: rescales acc (dim_mma(kDV) columns) and the running (max, sum) of both rows, turns s
// into P.
template <int kBN, int kDV>
__device__ __forceinline__ void online_softmax(float (&s)[kBN / 8][4], float (&acc)[dim_mma(kDV) / 8][4],
                                               float (&row_max)[2], float (&row_sum)[2], float scale_log2) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float mx = neg_inf();
#pragma unroll
    for (int nt = 0; nt < kBN / 8; ++nt) mx = fmaxf(mx, fmaxf(s[nt][2 * r], s[nt][2 * r + 1]));
    mx = warp_quad_max(mx) * scale_log2;
    const float m_new = fmaxf(row_max[r], mx);
    const float m_use = m_new == neg_inf() ? 0.f : m_new;
    const float alpha = fast_exp2(row_max[r] - m_use);
    row_max[r] = m_new;
    float sum = 0.f;
#pragma unroll
    for (int nt = 0; nt < kBN / 8; ++nt) {
      s[nt][2 * r] = fast_exp2(s[nt][2 * r] * scale_log2 - m_use);
      s[nt][2 * r + 1] = fast_exp2(s[nt][2 * r + 1] * scale_log2 - m_use);
      sum += s[nt][2 * r] + s[nt][2 * r + 1];
    }
    row_sum[r] = row_sum[r] * alpha + sum;
#pragma unroll
    for (int dn = 0; dn < dim_mma(kDV) / 8; ++dn) {
      acc[dn][2 * r] *= alpha;
      acc[dn][2 * r + 1] *= alpha;
    }
  }
}

// acc += P V for a kBN x kDV tile of V in swizzled shared memory at sV (dim_mma(kDV) columns); P straight from the
// S accumulators (their layout is the A-fragment layout).
template <class T, int kBN, int kDV>
__device__ __forceinline__ void accumulate_pv(const float (&s)[kBN / 8][4], float (&acc)[dim_mma(kDV) / 8][4], u32 sV,
                                              int lane) {
#pragma unroll
  for (int kk = 0; kk < kBN / 16; ++kk) {
    const u32 a[4] = {pack2<T>(s[2 * kk][0], s[2 * kk][1]), pack2<T>(s[2 * kk][2], s[2 * kk][3]),
                      pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]), pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
    for (int dn = 0; dn < dim_mma(kDV) / 16; ++dn) {
      u32 b0, b1, b2, b3;
      ldmatrix_x4_trans(sV + swz<dim_smem(kDV) / 8>(kk * 16 + ((lane / 8) & 1) * 8 + lane % 8, dn * 2 + lane / 16),
                        b0, b1, b2, b3);
      mma_16816<T>(acc[2 * dn], a, b0, b1);
      mma_16816<T>(acc[2 * dn + 1], a, b2, b3);
    }
  }
}

}  // namespace nsa


#endif  // NSA_COMMON_CUH
