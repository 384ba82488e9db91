// templates/hopper.cuh (issue 11's building blocks) assembles for sm_90a: a probe kernel uses every wrapper (TMA 2D and
// 3D loads on an mbarrier, the async-proxy fence, wgmma from shared memory and from registers, setmaxnreg) the way a
// producer / consumer kernel would, and NVRTC must compile it for sm_90a without ptxas serializing the wgmma; for
// plain sm_90 the same source must be refused (wgmma and setmaxnreg exist only on sm_90a). Compile-only: nothing here
// runs the kernel (no GPU on the CPU machine).
#include <doctest/doctest.h>

#include <string>

#include "base/error.h"
#include "codegen/embedded.h"
#include "runtime/nvrtc_compiler.h"

namespace {

std::string probe_source() {
  std::string s = "#define NSAJIT_GENERATED 1\n";
  s += nsajit::embedded_template("templates/nsa_types.h");
  s += nsajit::embedded_template("templates/hopper.cuh");
  s += R"(
struct ProbeParams {
  nsa::hopper::TmaDesc desc;
  float* out;
};
extern "C" __global__ void __launch_bounds__(384, 1) nsa_hopper_probe(const __grid_constant__ ProbeParams p) {
  using namespace nsa::hopper;
  __shared__ alignas(1024) unsigned char tile[2 * 64 * 128];
  __shared__ alignas(8) nsa::u64 bar[2];
  const nsa::u32 full = smem_u32(&bar[0]), empty = smem_u32(&bar[1]), t = smem_u32(tile);
  if (threadIdx.x == 0) {
    mbar_init(full, 1);
    mbar_init(empty, 256);
    mbar_init_fence();
  }
  __syncthreads();
  if (threadIdx.x < 128) {  // producer warpgroup
    regs_dealloc<40>();
    if (threadIdx.x == 0) {
      tma_prefetch_desc(&p.desc);
      mbar_arrive_expect_tx(full, 2 * 64 * 128);
      tma_load_2d(t, &p.desc, full, 0, static_cast<int>(blockIdx.x) * 64);
      tma_load_3d(t + 64 * 128, &p.desc, full, 0, 0, static_cast<int>(blockIdx.x));
      mbar_wait(empty, 0);
    }
  } else {  // two consumer warpgroups
    regs_alloc<232>();
    mbar_wait(full, 0);
    float d[32];
    for (int i = 0; i < 32; ++i) d[i] = 0.f;
    const nsa::u64 da = smem_desc(t, 16, 1024, 1), db = smem_desc(t + 64 * 128, 16, 1024, 1);
    wgmma_fence();
    wgmma_m64n64k16_ss(d, da, db, 0);
    wgmma_commit();
    wgmma_wait<0>();
    nsa::u32 a[4];
    for (int i = 0; i < 4; ++i) a[i] = __float_as_uint(d[2 * i]) ^ __float_as_uint(d[2 * i + 1]);
    wgmma_fence();
    wgmma_m64n64k16_rs<1>(d, a, db, 1);
    wgmma_commit();
    wgmma_wait<0>();
    fence_async_shared();
    mbar_arrive(empty);
    for (int i = 0; i < 32; ++i) p.out[(blockIdx.x * 256 + threadIdx.x - 128) * 32 + i] = d[i];
  }
}
)";
  return s;
}

}  // namespace

TEST_CASE("hopper: the support header's TMA, mbarrier, wgmma and setmaxnreg wrappers assemble for sm_90a") {
  const std::string src = probe_source();
  nsajit::CompileResult r;
  REQUIRE_NOTHROW(r = nsajit::compile_cubin(src, "hopper_probe.cu", "sm_90a"));
  CHECK(!r.cubin.empty());
  CHECK(r.usage.parsed);
  MESSAGE("hopper probe: " << r.usage.registers << " registers, " << r.usage.spill_store_bytes << " B spilled, "
                           << r.seconds << " s to compile");
  // ptxas says so when it has to serialize wgmma (a wrong fence or a register dependency between the async ops).
  CHECK_MESSAGE(r.log.find("serialized") == std::string::npos, r.log);
  CHECK(r.seconds < 10.0);
  // The same source for plain sm_90: refused by ptxas (wgmma and setmaxnreg need the arch-specific target).
  CHECK_THROWS_AS((void)nsajit::compile_cubin(src, "hopper_probe.cu", "sm_90"), nsajit::Error);
}
