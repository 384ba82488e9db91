// Hopper (sm_90a) building blocks for the Hopper implementations of issue 11: thin inline-PTX wrappers for TMA bulk
// tensor copies, mbarriers, the async-proxy fence, warpgroup MMA (wgmma) with shared-memory descriptors, and register
// reconfiguration (setmaxnreg). Kept to what the kernels use so that NVRTC compiles a variant in about a second (no
// CuTe). Plain device code over nsa_types.h; compiled only for sm_90a (wgmma and setmaxnreg fail in ptxas for sm_90).
//
// Status: every wrapper assembles for sm_90a (tests/cpu/test_hopper.cpp compiles a kernel that uses each one, and
// checks that ptxas does not serialize the wgmma). On the H200: the mbarrier, cp.async-arrive, fence, wgmma and
// setmaxnreg wrappers run in the Hopper kernels (IMPL=1, IMPL=2); the TMA ones have not run yet.
#ifndef NSA_HOPPER_CUH
#define NSA_HOPPER_CUH
#ifndef NSAJIT_GENERATED
#include "nsa_types.h"
#include "common.cuh"
#endif

namespace nsa {
namespace hopper {

// A TMA descriptor as the driver encodes it (cuTensorMapEncodeTiled, 128 bytes); passed to a kernel by value inside
// its parameter struct (64-byte aligned) and addressed generically.
struct alignas(64) TmaDesc {
  u64 bits[16];
};

__device__ __forceinline__ u32 smem_u32(const void* p) { return static_cast<u32>(__cvta_generic_to_shared(p)); }

// ---- mbarrier (shared::cta, 64-bit) ----------------------------------------------------------------------------

__device__ __forceinline__ void mbar_init(u32 bar, u32 arrivals) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(arrivals) : "memory");
}
// Makes initialized barriers visible to the async proxy (TMA) and to the other threads.
__device__ __forceinline__ void mbar_init_fence() { asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory"); }
// One arrival that also announces `bytes` the TMA will complete on this barrier.
__device__ __forceinline__ void mbar_arrive_expect_tx(u32 bar, u32 bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_arrive(u32 bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(bar) : "memory");
}
// cp.async copies of this thread arrive on the barrier when they land (the barrier's count is not incremented).
__device__ __forceinline__ void mbar_arrive_cp_async(u32 bar) {
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];" ::"r"(bar) : "memory");
}
// Waits until the barrier's phase with parity `parity` has completed.
__device__ __forceinline__ void mbar_wait(u32 bar, u32 parity) {
  u32 done = 0;
  do {
    asm volatile(
        "{\n\t.reg .pred p;\n\t"
        "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n\t"
        "selp.u32 %0, 1, 0, p;\n\t}"
        : "=r"(done)
        : "r"(bar), "r"(parity)
        : "memory");
  } while (!done);
}

// Shared memory written by threads (st.shared) before the async proxy (wgmma, TMA store) reads it.
__device__ __forceinline__ void fence_async_shared() { asm volatile("fence.proxy.async.shared::cta;" ::: "memory"); }

// ---- TMA --------------------------------------------------------------------------------------------------------

__device__ __forceinline__ void tma_prefetch_desc(const TmaDesc* desc) {
  asm volatile("prefetch.tensormap [%0];" ::"l"(reinterpret_cast<u64>(desc)) : "memory");
}
// The box at coordinates (c0 innermost, c1) of the tensor `desc` describes, into shared memory at `dst`; its bytes
// complete on barrier `bar`.
__device__ __forceinline__ void tma_load_2d(u32 dst, const TmaDesc* desc, u32 bar, int c0, int c1) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];"
      ::"r"(dst), "l"(reinterpret_cast<u64>(desc)), "r"(c0), "r"(c1), "r"(bar)
      : "memory");
}
__device__ __forceinline__ void tma_load_3d(u32 dst, const TmaDesc* desc, u32 bar, int c0, int c1, int c2) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4}], "
      "[%5];" ::"r"(dst),
      "l"(reinterpret_cast<u64>(desc)), "r"(c0), "r"(c1), "r"(c2), "r"(bar)
      : "memory");
}

// ---- wgmma ------------------------------------------------------------------------------------------------------

// A shared-memory matrix descriptor: start address, leading and stride byte offsets (16-byte units), swizzle
// (1 = 128 B, 2 = 64 B, 3 = 32 B, 0 = none). For K-major bf16 tiles with 128-byte swizzle (rows of 64 elements,
// 8-row atoms of 1024 bytes, the layout a TMA box {64, rows} with CU_TENSOR_MAP_SWIZZLE_128B writes): lbo 16,
// sbo 1024, swizzle 1, the tile 1024-byte aligned.
__device__ __forceinline__ u64 smem_desc(u32 addr, u32 lbo_bytes, u32 sbo_bytes, u32 swizzle) {
  u64 d = static_cast<u64>((addr & 0x3FFFFu) >> 4);
  d |= static_cast<u64>((lbo_bytes & 0x3FFFFu) >> 4) << 16;
  d |= static_cast<u64>((sbo_bytes & 0x3FFFFu) >> 4) << 32;
  d |= static_cast<u64>(swizzle & 3u) << 62;
  return d;
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(N) : "memory");
}

// D[64 x 64] (+)= A[64 x 16] B[16 x 64], 16-bit floats in (bf16, or fp16 when !kBf16), fp32 accumulators (32 per
// thread of the warpgroup, in wgmma's fragment layout: per warp the m16n8 accumulator layout of mma.sync, n8 tile i
// in d[4 i .. 4 i + 3]). A and B from shared memory through descriptors (both K-major); accumulate = 0 overwrites D.
#define NSA_WGMMA_D32 \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, " \
  "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
#define NSA_WGMMA_D32_OPS \
  "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), \
      "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), \
      "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), \
      "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
template <bool kBf16 = true>
__device__ __forceinline__ void wgmma_m64n64k16_ss(float (&d)[32], u64 desc_a, u64 desc_b, int accumulate) {
  if constexpr (kBf16) {
    asm volatile("{\n\t.reg .pred p;\n\tsetp.ne.b32 p, %34, 0;\n\t"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " NSA_WGMMA_D32 "%32, %33, p, 1, 1, 0, 0;\n\t}"
                 : NSA_WGMMA_D32_OPS
                 : "l"(desc_a), "l"(desc_b), "r"(accumulate));
  } else {
    asm volatile("{\n\t.reg .pred p;\n\tsetp.ne.b32 p, %34, 0;\n\t"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 " NSA_WGMMA_D32 "%32, %33, p, 1, 1, 0, 0;\n\t}"
                 : NSA_WGMMA_D32_OPS
                 : "l"(desc_a), "l"(desc_b), "r"(accumulate));
  }
}

// The same with A from registers (4 x 32-bit per thread: for each warp of the warpgroup, its 16 rows in the A-fragment
// layout of mma.sync m16n8k16, e.g. P after the softmax) and B from shared memory; kTransB = 1 reads B as MN-major
// (V stored [keys][dv]).
template <int kTransB, bool kBf16 = true>
__device__ __forceinline__ void wgmma_m64n64k16_rs(float (&d)[32], const u32 (&a)[4], u64 desc_b, int accumulate) {
  if constexpr (kBf16) {
    asm volatile("{\n\t.reg .pred p;\n\tsetp.ne.b32 p, %37, 0;\n\t"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " NSA_WGMMA_D32
                 "{%32, %33, %34, %35}, %36, p, 1, 1, %38;\n\t}"
                 : NSA_WGMMA_D32_OPS
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(accumulate), "n"(kTransB));
  } else {
    asm volatile("{\n\t.reg .pred p;\n\tsetp.ne.b32 p, %37, 0;\n\t"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 " NSA_WGMMA_D32
                 "{%32, %33, %34, %35}, %36, p, 1, 1, %38;\n\t}"
                 : NSA_WGMMA_D32_OPS
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(accumulate), "n"(kTransB));
  }
}
#undef NSA_WGMMA_D32
#undef NSA_WGMMA_D32_OPS

// Pins registers in place around the asynchronous MMAs (CUTLASS's warpgroup_fence_operand): an empty asm that reads
// and writes each one, so that the compiler neither hoists their uses above a wgmma_wait nor sinks their definitions
// below a wgmma_fence (ptxas serializes the wgmmas, C7514/C7515, when it sees accumulators touched inside the
// pipeline). In the kernels here a branch between wgmma_fence and the wgmma did that (the loops are peeled so that
// none remains); with these fences removed the kernels still compile unserialized, so they are a guard, not a fix.
template <int N>
__device__ __forceinline__ void fence_regs(float (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(r[i])::"memory");
}
template <int N>
__device__ __forceinline__ void fence_regs(u32 (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+r"(r[i])::"memory");
}

// ---- shared tiles in the 128-byte-swizzled K-major layout the wgmma descriptors describe ------------------------
// A tile of R rows and D columns (16-bit) is dim_smem(D) / 64 column blocks of R rows x 128 bytes; 16-byte chunk c
// of row r sits at chunk c ^ (r % 8) of its block's row; every block 1024-byte aligned (R a multiple of 8).

// Byte offset of 16-byte chunk `chunk` of row `row` in such a tile of kRows rows.
template <int kRows>
__device__ __forceinline__ u32 sw128(int row, int chunk) {
  return static_cast<u32>((chunk >> 3) * (kRows * 128) + row * 128 + (((chunk & 7) ^ (row & 7)) << 4));
}

// One 16-byte chunk of a tile copy below: chunk `linear` of the tile's kRows * dim_smem(D) / 8, row-major.
template <int kRows, int D, class RowPtr>
__device__ __forceinline__ void copy_chunk_sw128(u32 tile, RowPtr& row_ptr, const void* any_valid, int linear) {
  static_assert(D % 8 == 0, "rows are copied in 16-byte chunks");
  constexpr int kCopy = dim_smem(D) / 8;
  const int row = linear / kCopy;
  const int chunk = linear % kCopy;
  const char* src = static_cast<const char*>(row_ptr(row));
  const bool ok = src != nullptr && (kCopy == D / 8 || chunk < D / 8);
  cp_async_16(tile + sw128<kRows>(row, chunk), ok ? src + chunk * 16 : any_valid, ok);
}
// Copies kRows rows of D elements into a sw128 tile of dim_smem(D) columns with cp.async. row_ptr(r) gives row r's
// start, or nullptr for a row to zero-fill (nothing read; `any_valid` stands in); columns D .. dim_smem(D) are
// zero-filled too, so that no MMA ever reads an unwritten value.
// `tid` is the copying thread's index among kThreads (threadIdx.x unless a warpgroup of a larger CTA copies).
template <int kThreads, int kRows, int D, class RowPtr>
__device__ __forceinline__ void load_tile_sw128(u32 tile, RowPtr row_ptr, const void* any_valid, int tid) {
  constexpr int kTotal = kRows * (dim_smem(D) / 8);
#pragma unroll
  for (int i = 0; i < (kTotal + kThreads - 1) / kThreads; ++i) {
    const int linear = i * kThreads + tid;
    if (kTotal % kThreads != 0 && linear >= kTotal) break;
    copy_chunk_sw128<kRows, D>(tile, row_ptr, any_valid, linear);
  }
}
// The same as a rolled loop, for a copying warpgroup that runs on few registers (the unrolled copies keep every
// address live at once).
template <int kThreads, int kRows, int D, class RowPtr>
__device__ __forceinline__ void load_tile_sw128_lean(u32 tile, RowPtr row_ptr, const void* any_valid, int tid) {
  constexpr int kTotal = kRows * (dim_smem(D) / 8);
#pragma unroll 1
  for (int linear = tid; linear < kTotal; linear += kThreads)
    copy_chunk_sw128<kRows, D>(tile, row_ptr, any_valid, linear);
}
// The same for a tile of consecutive rows at a constant stride (a K or V tile): row r starts at row0 + r * stride
// (elements), rows r >= n_valid are zero-filled. Each thread copies the same column chunk of rows kThreads / kCopy
// apart, so its addresses are one pointer and one shared offset plus multiples of a step (a few instructions a copy
// instead of the row arithmetic per copy); the generic loader serves the shapes where that split does not fit (its
// rolled form with kLean, for a copying warpgroup on few registers).
template <int kThreads, int kRows, int D, bool kLean = false, class E>
__device__ __forceinline__ void load_rows_sw128(u32 tile, const E* row0, i64 stride, int n_valid, const void* any_valid,
                                                int tid) {
  constexpr int kCopy = dim_smem(D) / 8;
  constexpr int kTotal = kRows * kCopy;
  if constexpr (kThreads % kCopy == 0 && (kThreads / kCopy) % 8 == 0 && kTotal % kThreads == 0) {
    constexpr int kRowStep = kThreads / kCopy;
    const int r0 = tid / kCopy, c = tid % kCopy;
    const bool col_ok = kCopy == D / 8 || c < D / 8;
    const char* src0 = reinterpret_cast<const char*>(row0 + r0 * stride) + c * 16;
    const i64 step = static_cast<i64>(kRowStep) * stride * static_cast<i64>(sizeof(E));
    const u32 dst0 = tile + sw128<kRows>(r0, c);  // rows r0 + i kRowStep keep r0's swizzle (kRowStep % 8 == 0)
#pragma unroll
    for (int i = 0; i < kTotal / kThreads; ++i) {
      const bool ok = col_ok && r0 + i * kRowStep < n_valid;
      cp_async_16(dst0 + static_cast<u32>(i * kRowStep * 128), ok ? src0 + i * step : any_valid, ok);
    }
  } else if constexpr (kLean) {
    load_tile_sw128_lean<kThreads, kRows, D>(
        tile, [&](int r) -> const void* { return r < n_valid ? row0 + r * stride : nullptr; }, any_valid, tid);
  } else {
    load_tile_sw128<kThreads, kRows, D>(
        tile, [&](int r) -> const void* { return r < n_valid ? row0 + r * stride : nullptr; }, any_valid, tid);
  }
}

template <int kThreads, int kRows, int D, class RowPtr>
__device__ __forceinline__ void load_tile_sw128(u32 tile, RowPtr row_ptr, const void* any_valid) {
  load_tile_sw128<kThreads, kRows, D>(tile, row_ptr, any_valid, static_cast<int>(threadIdx.x));
}

// ---- register reconfiguration (per warpgroup) ---------------------------------------------------------------------

template <int kRegs>
__device__ __forceinline__ void regs_alloc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;" ::"n"(kRegs));
}
template <int kRegs>
__device__ __forceinline__ void regs_dealloc() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;" ::"n"(kRegs));
}

}  // namespace hopper
}  // namespace nsa

#endif  // NSA_HOPPER_CUH
