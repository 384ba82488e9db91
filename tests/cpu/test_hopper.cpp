// templates/hopper.cuh (issue 11's building blocks) assembles for sm_90a: a probe kernel uses every wrapper (TMA 2D and
// 3D loads on an mbarrier, the async-proxy fence, wgmma from shared memory and from registers, setmaxnreg) the way a
// producer / consumer kernel would, and NVRTC must compile it for sm_90a without ptxas serializing the wgmma; for
// plain sm_90 the same source must be refused (wgmma and setmaxnreg exist only on sm_90a). Compile-only: nothing here
// runs the kernel (no GPU on the CPU machine).
#include <doctest/doctest.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "base/error.h"
#include "codegen/codegen.h"
#include "codegen/embedded.h"
#include "codegen/family.h"
#include "codegen/problem.h"
#include "runtime/driver.h"
#include "runtime/nvrtc_compiler.h"
#include "runtime/tma.h"

namespace {

std::string probe_source() {
  std::string s = "#define NSAJIT_GENERATED 1\n";
  s += nsajit::embedded_template("templates/nsa_types.h");
  s += nsajit::embedded_template("templates/common.cuh");
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

// A K tile of a [T, H, 128] bf16 tensor as the Hopper kernels would load it: rank 3 (dim, head, token), boxes of
// 64 x 1 x 64 (128 bytes per row, the 128-byte swizzle's widest).
nsajit::TmaTensor valid_tma() {
  nsajit::TmaTensor t;
  t.base = reinterpret_cast<const void*>(uintptr_t{0x100000});
  t.rank = 3;
  t.dims[0] = 128, t.dims[1] = 4, t.dims[2] = 65536;
  t.strides[0] = 128 * 2, t.strides[1] = 4 * 128 * 2;
  t.box[0] = 64, t.box[1] = 1, t.box[2] = 64;
  return t;
}

std::string tma_refusal(const nsajit::TmaTensor& t) {
  try {
    nsajit::check_tma_tensor("probe", t);
  } catch (const nsajit::UsageError& e) {
    return e.what();
  }
  return "";
}

TEST_CASE("hopper: TMA tensors breaking the driver's rules are refused with the field named") {
  CHECK(tma_refusal(valid_tma()).empty());
  struct Bad {
    const char* expected;
    std::function<void(nsajit::TmaTensor&)> mutate;
  };
  const std::vector<Bad> bad = {
      {"rank 4", [](nsajit::TmaTensor& t) { t.rank = 4; }},
      {"base is a null pointer", [](nsajit::TmaTensor& t) { t.base = nullptr; }},
      {"not 16-byte aligned", [](nsajit::TmaTensor& t) { t.base = reinterpret_cast<const void*>(uintptr_t{0x100008}); }},
      {"dims[2] = 0", [](nsajit::TmaTensor& t) { t.dims[2] = 0; }},
      {"box[1] = 0", [](nsajit::TmaTensor& t) { t.box[1] = 0; }},
      {"box[2] = 257", [](nsajit::TmaTensor& t) { t.box[2] = 257; }},
      {"strides[1] = 1000", [](nsajit::TmaTensor& t) { t.strides[1] = 1000; }},
      {"strides[0] = 0", [](nsajit::TmaTensor& t) { t.strides[0] = 0; }},
      {"strides[1] = 1099511627776", [](nsajit::TmaTensor& t) { t.strides[1] = uint64_t{1} << 40; }},
      {"shorter than a row", [](nsajit::TmaTensor& t) { t.strides[0] = 128; }},
      {"box[0] = 12 elements = 24 bytes: must be a multiple of 16", [](nsajit::TmaTensor& t) { t.box[0] = 12; }},
      {"at most 128 bytes with the 128-byte swizzle", [](nsajit::TmaTensor& t) { t.box[0] = 128; }},
  };
  for (const Bad& b : bad) {
    CAPTURE(b.expected);
    nsajit::TmaTensor t = valid_tma();
    b.mutate(t);
    const std::string why = tma_refusal(t);
    CHECK_MESSAGE(why.find(b.expected) != std::string::npos, why);
  }
  // Without the swizzle a 256-byte inner box is allowed.
  nsajit::TmaTensor wide = valid_tma();
  wide.box[0] = 128, wide.swizzle_128b = false;
  CHECK(tma_refusal(wide).empty());
  if (!nsajit::driver_available()) {  // no driver: the encode says so (the checks still ran first)
    CHECK_THROWS_AS((void)nsajit::encode_tma_tensor("probe", valid_tma()), nsajit::Error);
    nsajit::TmaTensor t = valid_tma();
    t.box[0] = 128;
    CHECK_THROWS_AS((void)nsajit::encode_tma_tensor("probe", t), nsajit::UsageError);
  }
}

// The Hopper implementations (IMPL=1 of win_fwd, cmp_fwd and slc_fwd, and the warp-specialized IMPL=2 of win_fwd and
// cmp_fwd) as the families generate them: every valid Hopper point of the fla problem and the Hopper defaults of
// paper and fp16 with odd head dims compile for sm_90a without ptxas serializing their wgmma (C7515: an accumulator
// touched by other instructions inside the pipeline, which the register fences in templates/hopper.cuh prevent; the
// kernels stay correct but lose the overlap; C7512: too few registers) or ignoring setmaxnreg (C7508: the launch
// bounds do not fix the registers at entry), and without spilling at the defaults and at IMPL=2 (whose copying
// warpgroup runs on 40 registers); and a target other than sm_90a prunes them with the reason.
TEST_CASE("hopper: the Hopper kernels compile for sm_90a without serialized wgmma; other targets prune them") {
  using namespace nsajit;
  std::vector<KernelSpec> specs;
  Problem fla = preset("fla");
  fla.T = 4096;
  for (const char* name : {"win_fwd", "cmp_fwd", "slc_fwd"}) {
    const KernelFamily& f = find_family(name);
    for (const SpacePoint& pt : enumerate_space(f, fla, kHopperMaxSmemOptin))
      if (!pt.rejected && pt.config.at("IMPL") != 0 && pt.config.at("STAGES") == 2)
        specs.push_back({&f, fla, pt.config, "sm_90a"});
    Problem paper = preset("paper");
    Problem odd = fla;
    odd.dtype = Dtype::fp16, odd.dk = 80, odd.dv = 48;
    for (const Problem& p : {paper, odd}) {
      const TileConfig d = f.default_config(p);
      if (d.at("IMPL") != 0) specs.push_back({&f, p, d, "sm_90a"});
    }
    // Off sm_90a the space holds no Hopper point that is not pruned, and says why.
    int pruned = 0;
    for (const SpacePoint& pt : enumerate_space(f, fla, kHopperMaxSmemOptin, "sm_86"))
      if (pt.config.at("IMPL") != 0) {
        REQUIRE(pt.rejected);
        pruned += pt.rejected->find("needs sm_90a") != std::string::npos;
      }
    CHECK(pruned > 0);
  }
  CHECK(specs.size() >= 12);
  for (const KernelSpec& s : specs) {
    CompileResult r;
    REQUIRE_NOTHROW(r = compile_cubin(generate_source(s), "hopper_kernel.cu", "sm_90a"));
    INFO(s.describe());
    CHECK_MESSAGE(r.log.find("serialized") == std::string::npos, r.log);
    CHECK_MESSAGE(r.log.find("setmaxnreg' ignored") == std::string::npos, r.log);
    if (s.config == s.family->default_config(s.problem) || s.config.at("IMPL") == 2)
      CHECK(r.usage.spill_store_bytes == 0);
  }
}

// Off sm_90a (an emitted program for an A100, `nsajit compile --arch sm_86`) the families' defaults are their portable
// mma.sync configs; on sm_90a the Hopper ones; an explicit IMPL=1 for another target is refused by the command line
// (cli/main.cpp's make_spec, through arch_reject).
TEST_CASE("hopper: the defaults per target: IMPL=1 on sm_90a, the portable config elsewhere") {
  using namespace nsajit;
  Problem fla = preset("fla");
  for (const char* name : {"win_fwd", "cmp_fwd", "slc_fwd"}) {
    INFO(name);
    const KernelFamily& f = find_family(name);
    CHECK(default_config_for(f, fla, "sm_90a") == f.default_config(fla));
    CHECK(f.default_config(fla).at("IMPL") == (std::string_view(name) == "slc_fwd" ? 1 : 2));
    for (const char* arch : {"sm_80", "sm_86", "sm_89"}) {
      const TileConfig c = default_config_for(f, fla, arch);
      CHECK(c.at("IMPL") == 0);
      CHECK_FALSE(arch_reject(c, arch));
      CHECK_FALSE(f.reject(fla, c, kHopperMaxSmemOptin));
    }
  }
  TileConfig h = find_family("win_fwd").default_config(fla);
  REQUIRE(arch_reject(h, "sm_86"));
  CHECK(arch_reject(h, "sm_86")->find("needs sm_90a") != std::string::npos);
}
