// Codegen: golden sources, determinism, what the generated source holds and depends on; the Problem presets and
// their validation; families, tile overrides and the search space; win_fwd's argument checks (all before any
// driver call, so they run without a GPU).
//
// Goldens live in tests/golden/<name>.cu. After an intended change to codegen or a template, regenerate them with
//   NSAJIT_UPDATE_GOLDENS=1 build/nsajit_tests -tc="golden*"
// and review the diff.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <limits>
#include <set>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "base/error.h"
#include "codegen/codegen.h"
#include "codegen/family.h"
#include "codegen/problem.h"
#include "runtime/attn_fwd_api.h"

namespace fs = std::filesystem;
using nsajit::Dtype;
using nsajit::KernelSpec;
using nsajit::Problem;
using nsajit::TileConfig;

namespace {

// The message of the UsageError `f` throws, or a marker saying what happened instead (never matches a check).
std::string usage_error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const nsajit::UsageError& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("<not a UsageError: ") + e.what() + ">";
  }
  return "<no exception thrown>";
}

bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

#define CHECK_CONTAINS(haystack, needle) \
  CHECK_MESSAGE(contains((haystack), (needle)), "expected \"" << (needle) << "\" in:\n" << (haystack))

KernelSpec make_spec(std::string_view family, const Problem& p, const std::string& overrides = "") {
  const nsajit::KernelFamily& f = nsajit::find_family(family);
  return KernelSpec{&f, p, nsajit::apply_overrides(f, f.default_config(p), overrides), "sm_90a"};
}

Problem with_group(Problem p, int G) {
  p.H = p.HQ / G;
  return p;
}

// The constexpr block codegen writes (between the specialization marker and the end of namespace spec), so
// checks cannot be satisfied by the defaults a template carries for editors.
std::string specialization(const std::string& source) {
  const size_t begin = source.find("// ---- specialization ----");
  if (begin == std::string::npos) return {};
  const size_t end = source.find("}  // namespace spec", begin);
  if (end == std::string::npos) return {};
  return source.substr(begin, end - begin);
}

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// "line N: golden `...` / generated `...`" for the first line that differs, to make a failure readable.
std::string first_difference(const std::string& golden, const std::string& generated) {
  std::istringstream a(golden), b(generated);
  std::string la, lb;
  for (int line = 1;; ++line) {
    const bool ha = static_cast<bool>(std::getline(a, la)), hb = static_cast<bool>(std::getline(b, lb));
    if (!ha && !hb) return "sizes differ only in trailing bytes";
    if (!ha || !hb || la != lb)
      return "first difference at line " + std::to_string(line) + ":\n  golden:    " + (ha ? la : "<end of file>") +
             "\n  generated: " + (hb ? lb : "<end of file>");
  }
}

bool update_goldens() {
  const char* v = std::getenv("NSAJIT_UPDATE_GOLDENS");
  return v != nullptr && std::string(v) == "1";
}

void check_golden(const std::string& name, const KernelSpec& spec) {
  const fs::path path = fs::path(NSAJIT_SOURCE_DIR) / "tests" / "golden" / (name + ".cu");
  const std::string generated = nsajit::generate_source(spec);
  if (update_goldens()) {
    fs::create_directories(path.parent_path());
    std::ofstream out(path, std::ios::binary);
    out << generated;
    out.close();
    REQUIRE_MESSAGE(out.good(), "cannot write " << path.string());
    MESSAGE("NSAJIT_UPDATE_GOLDENS=1: wrote " << path.string() << " (" << generated.size()
                                              << " bytes); review the diff");
    return;
  }
  INFO("golden ", path.string(), " for ", spec.describe(),
       "; after an intended change run with NSAJIT_UPDATE_GOLDENS=1 and review the diff");
  REQUIRE_MESSAGE(fs::exists(path), "missing golden file " << path.string());
  const std::string golden = read_file(path);
  const bool identical = golden == generated;  // a bool, so a failure prints the difference, not both files
  CHECK_MESSAGE(identical, first_difference(golden, generated));
}

}  // namespace

// ---- golden sources ----------------------------------------------------------------------------------------------

TEST_CASE("golden: win_fwd fla bf16 default config") {
  const KernelSpec spec = make_spec("win_fwd", nsajit::preset("fla"));
  // The warp-specialized Hopper kernel: two computing warpgroups and a copying one, 64-key tiles, Q from shared
  // memory, three stages.
  REQUIRE(spec.config == TileConfig{{"BM", 128}, {"BN", 64}, {"QREGS", 0}, {"IMPL", 2}, {"STAGES", 3}});
  check_golden("win_fwd_fla_bf16_default", spec);
}

TEST_CASE("golden: win_fwd paper fp16 G=4 BM=128 BN=32 QREGS=0") {
  Problem p = with_group(nsajit::preset("paper"), 4);
  p.dtype = Dtype::fp16;
  // The mma.sync kernel, named in full: the default is the Hopper one.
  const KernelSpec spec = make_spec("win_fwd", p, "BM=128,BN=32,QREGS=0,IMPL=0,STAGES=2");
  REQUIRE(spec.problem.G() == 4);
  REQUIRE(spec.config == TileConfig{{"BM", 128}, {"BN", 32}, {"QREGS", 0}, {"IMPL", 0}, {"STAGES", 2}});
  check_golden("win_fwd_paper_fp16_g4_bm128_bn32_qregs0", spec);
}

TEST_CASE("golden: win_fwd_ref fla bf16") {
  check_golden("win_fwd_ref_fla_bf16", make_spec("win_fwd_ref", nsajit::preset("fla")));
}

TEST_CASE("golden: the other forward families' default configs") {
  const KernelSpec cmp = make_spec("cmp_fwd", nsajit::preset("paper"));
  REQUIRE(cmp.config == TileConfig{{"BM", 128}, {"BN", 64}, {"QREGS", 0}, {"IMPL", 1}, {"STAGES", 3}});
  check_golden("cmp_fwd_paper_bf16_default", cmp);
  check_golden("pool_paper_bf16_default", make_spec("pool", nsajit::preset("paper")));
  check_golden("select_paper_bf16_default", make_spec("select", nsajit::preset("paper")));
  // G = 4: below the Hopper kernel's G >= 16, so the mma.sync kernel.
  const KernelSpec slc = make_spec("slc_fwd", with_group(nsajit::preset("fla"), 4));
  REQUIRE(slc.config == TileConfig{{"BM", 64}, {"BN", 64}, {"STAGES", 2}, {"QREGS", 0}, {"IMPL", 0}});
  check_golden("slc_fwd_fla_bf16_g4_default", slc);
}

// ---- properties of generated source ------------------------------------------------------------------------------

TEST_CASE("codegen: the same spec gives byte-identical source") {
  for (const char* family : {"win_fwd", "win_fwd_ref"}) {
    CAPTURE(family);
    const KernelSpec a = make_spec(family, nsajit::preset("paper"));
    const KernelSpec b = make_spec(family, nsajit::preset("paper"));
    const std::string first = nsajit::generate_source(a);
    CHECK(!first.empty());
    CHECK(first == nsajit::generate_source(a));
    CHECK(first == nsajit::generate_source(b));
    CHECK(nsajit::generate_standalone(a) == nsajit::generate_standalone(b));
  }
}

TEST_CASE("codegen: the source holds the spec's constexpr values and the extern \"C\" entry") {
  SUBCASE("win_fwd paper fp16 G=4 BM=128 BN=32 QREGS=0 IMPL=0") {
    Problem p = with_group(nsajit::preset("paper"), 4);
    p.dtype = Dtype::fp16;
    const std::string src = nsajit::generate_source(make_spec("win_fwd", p, "BM=128,BN=32,QREGS=0,IMPL=0,STAGES=2"));
    const std::string pre = specialization(src);
    REQUIRE(!pre.empty());
    CHECK_CONTAINS(pre, "typedef f16 elem;");
    CHECK_CONTAINS(pre, "kDK = 192");
    CHECK_CONTAINS(pre, "kDV = 128");
    CHECK_CONTAINS(pre, "kG = 4");
    CHECK_CONTAINS(pre, "kBM = 128");
    CHECK_CONTAINS(pre, "kBN = 32");
    CHECK_CONTAINS(pre, "kQInRegs = 0");
    CHECK_CONTAINS(pre, "kImpl = 0");
    CHECK_CONTAINS(pre, "kStages = 2");
    CHECK_CONTAINS(src, "#define NSAJIT_GENERATED 1");
    // 128 rows, 16 per warp: 8 warps.
    const nsajit::KernelFamily& f = nsajit::find_family("win_fwd");
    CHECK_CONTAINS(src, "extern \"C\" __global__ void __launch_bounds__(256) nsa_win_fwd(const " +
                            std::string(f.params_type()) + " p) { " + f.entry_body() + " }\n");
    // The header comment records the spec.
    CHECK_CONTAINS(src, "// family  win_fwd\n");
    CHECK_CONTAINS(src, "// config  BM=128 BN=32 IMPL=0 QREGS=0 STAGES=2\n");
    CHECK_CONTAINS(src, "// dtype fp16 G=4 dk=192 dv=128\n");
    CHECK_CONTAINS(src, "// arch    sm_90a\n");
  }
  SUBCASE("win_fwd fla bf16 default") {
    const std::string src = nsajit::generate_source(make_spec("win_fwd", nsajit::preset("fla")));
    const std::string pre = specialization(src);
    REQUIRE(!pre.empty());
    CHECK_CONTAINS(pre, "typedef bf16 elem;");
    CHECK_CONTAINS(pre, "kDK = 128, kDV = 128, kG = 16, kBM = 128, kBN = 64, kQInRegs = 0, kImpl = 2, kStages = 3;");
    // 128 rows: two computing warpgroups and the copying one, one CTA per SM (setmaxnreg needs both bounds).
    CHECK_CONTAINS(src, "extern \"C\" __global__ void __launch_bounds__(384, 1) nsa_win_fwd(");
    // nsa_types.h, common.cuh, then the support headers (the parameter struct among them) and the specialization,
    // then the template, then the entry.
    const nsajit::KernelFamily& f = nsajit::find_family("win_fwd");
    const size_t at_types = src.find("// ---- templates/nsa_types.h ----");
    const size_t at_common = src.find("// ---- templates/common.cuh ----");
    const size_t at_pre = src.find("// ---- specialization ----");
    const size_t at_template = src.find("// ---- " + std::string(f.template_path()) + " ----");
    const size_t at_entry = src.find("// ---- entry point ----");
    REQUIRE(at_types != std::string::npos);
    REQUIRE(at_common != std::string::npos);
    REQUIRE(at_pre != std::string::npos);
    REQUIRE(at_template != std::string::npos);
    REQUIRE(at_entry != std::string::npos);
    CHECK(at_types < at_common);
    CHECK(at_common < at_pre);
    CHECK(at_pre < at_template);
    CHECK(at_template < at_entry);
    for (std::string_view support : f.support_files()) {
      CAPTURE(support);
      const size_t at_support = src.find("// ---- " + std::string(support) + " ----");
      REQUIRE(at_support != std::string::npos);
      CHECK(at_common < at_support);
      CHECK(at_support < at_template);
    }
  }
  SUBCASE("win_fwd fla bf16 BM=64 BN=64 QREGS=1 IMPL=1 STAGES=3") {
    const std::string src =
        nsajit::generate_source(make_spec("win_fwd", nsajit::preset("fla"), "BM=64,BN=64,QREGS=1,IMPL=1,STAGES=3"));
    const std::string pre = specialization(src);
    REQUIRE(!pre.empty());
    CHECK_CONTAINS(pre, "kDK = 128, kDV = 128, kG = 16, kBM = 64, kBN = 64, kQInRegs = 1, kImpl = 1, kStages = 3;");
    CHECK_CONTAINS(src, "// config  BM=64 BN=64 IMPL=1 QREGS=1 STAGES=3\n");
    // 64 rows: one warpgroup, 128 threads (the same count as the mma.sync kernel's four warps).
    CHECK_CONTAINS(src, "extern \"C\" __global__ void __launch_bounds__(128) nsa_win_fwd(");
    CHECK_CONTAINS(src, "// ---- templates/attn_fwd_hopper.cuh ----");
  }
  SUBCASE("win_fwd_ref paper") {
    const std::string src = nsajit::generate_source(make_spec("win_fwd_ref", nsajit::preset("paper")));
    const std::string pre = specialization(src);
    REQUIRE(!pre.empty());
    CHECK_CONTAINS(pre, "kDK = 192, kDV = 128, kG = 16;");
    const nsajit::KernelFamily& f = nsajit::find_family("win_fwd_ref");
    CHECK_CONTAINS(src, "extern \"C\" __global__ void __launch_bounds__(128) nsa_win_fwd_ref(const " +
                            std::string(f.params_type()) + " p) { " + f.entry_body() + " }\n");
    CHECK_CONTAINS(src, "// ---- " + std::string(f.template_path()) + " ----");
    const std::string fast_template(nsajit::find_family("win_fwd").template_path());
    CHECK(!contains(src, "// ---- " + fast_template + " ----"));
  }
}

TEST_CASE("codegen: different configs give different sources") {
  const nsajit::KernelFamily& f = nsajit::find_family("win_fwd");
  const Problem p = nsajit::preset("fla");
  std::set<std::string> sources;
  size_t n = 0;
  for (const nsajit::SpacePoint& pt : nsajit::enumerate_space(f, p, std::numeric_limits<int>::max())) {
    sources.insert(nsajit::generate_source(KernelSpec{&f, p, pt.config, "sm_90a"}));
    ++n;
  }
  CHECK(n > 1);
  CHECK(sources.size() == n);
  // The arch is recorded too (it is also in the cache key through the options).
  const KernelSpec a = make_spec("win_fwd", p);
  KernelSpec b = a;
  b.arch = "sm_100a";
  CHECK(nsajit::generate_source(a) != nsajit::generate_source(b));
}

TEST_CASE("codegen: the source does not depend on runtime values (T, B) but does on G, dk, dv and dtype") {
  const Problem base = nsajit::preset("fla");
  const std::string ref = nsajit::generate_source(make_spec("win_fwd", base));
  const std::string ref_ref = nsajit::generate_source(make_spec("win_fwd_ref", base));

  Problem runtime_only = base;
  runtime_only.T = 1000;
  runtime_only.B = 7;
  CHECK(nsajit::generate_source(make_spec("win_fwd", runtime_only)) == ref);
  CHECK(nsajit::generate_source(make_spec("win_fwd_ref", runtime_only)) == ref_ref);

  // The same G from other head counts is the same kernel.
  Problem same_group = base;
  same_group.HQ = 32, same_group.H = 2;
  CHECK(nsajit::generate_source(make_spec("win_fwd", same_group)) == ref);

  Problem g8 = with_group(base, 8);
  CHECK(nsajit::generate_source(make_spec("win_fwd", g8)) != ref);
  CHECK(nsajit::generate_source(make_spec("win_fwd_ref", g8)) != ref_ref);

  Problem fp16 = base;
  fp16.dtype = Dtype::fp16;
  CHECK(nsajit::generate_source(make_spec("win_fwd", fp16)) != ref);
  CHECK(nsajit::generate_source(make_spec("win_fwd_ref", fp16)) != ref_ref);

  Problem dims = base;
  dims.dk = 192;  // (192, 128)
  CHECK(nsajit::generate_source(make_spec("win_fwd", dims)) != ref);
  CHECK(nsajit::generate_source(make_spec("win_fwd_ref", dims)) != ref_ref);

  Problem dv = base;
  dv.dk = 256, dv.dv = 256;
  Problem dv_only = dv;
  dv_only.dv = 128;  // not a supported pair, but codegen alone must still tell dv apart
  const KernelSpec s256 = make_spec("win_fwd", dv);
  KernelSpec s256_128 = s256;
  s256_128.problem = dv_only;
  CHECK(nsajit::generate_source(s256) != nsajit::generate_source(s256_128));
}

TEST_CASE("codegen: generate_standalone is the kernel plus the harness main and a build line") {
  const KernelSpec spec = make_spec("win_fwd", nsajit::preset("fla"));
  const std::string s = nsajit::generate_standalone(spec);
  CHECK_CONTAINS(s, nsajit::generate_source(spec));
  CHECK_CONTAINS(s, "int main(");
  CHECK_CONTAINS(s, "//   build: nvcc ");
  CHECK_CONTAINS(s, "-gencode=arch=compute_90a,code=sm_90a win_fwd.cu -o win_fwd");
  CHECK_CONTAINS(s, "//   spec:  " + spec.describe());
  CHECK_CONTAINS(s, "// ---- templates/harness_common.cuh ----");
  CHECK_CONTAINS(s, "// ---- " + std::string(spec.family->harness_path()) + " ----");
  // The harness constants carry the runtime values and the launch geometry.
  CHECK_CONTAINS(s, "constexpr bool kIsBf16 = true;");
  CHECK_CONTAINS(s, "constexpr long long kB = 1, kT = 65536;");
  CHECK_CONTAINS(s, "constexpr int kHQ = 64, kH = 4, kDK = 128, kDV = 128, kW = 512");
  // The default is the warp-specialized Hopper kernel with BM = 128: 65536 * 16 / 128 CTAs of three warpgroups (two
  // compute, one copies); Q, three K/V stages, the 1 KB alignment and two mbarriers per stage in shared memory.
  REQUIRE(spec.config == TileConfig{{"BM", 128}, {"BN", 64}, {"QREGS", 0}, {"IMPL", 2}, {"STAGES", 3}});
  CHECK_CONTAINS(s, "kGridX = 8192, kGridY = 4, kGridZ = 1, kThreads = 384;");
  CHECK_CONTAINS(s, "constexpr int kSmemBytes = " +
                        std::to_string(128 * 128 * 2 + 3 * 64 * (128 + 128) * 2 + 1024 + 3 * 16) + ";");
  // main comes after the kernel it launches.
  CHECK(s.find("int main(") > s.find("nsa_win_fwd("));
  // The mma.sync kernel at BM = 64: twice the CTAs, four warps, Q and two K/V tiles without the alignment.
  const std::string m = nsajit::generate_standalone(make_spec("win_fwd", nsajit::preset("fla"), "BM=64,BN=32,IMPL=0,STAGES=2"));
  CHECK_CONTAINS(m, "kGridX = 16384, kGridY = 4, kGridZ = 1, kThreads = 128;");
  CHECK_CONTAINS(m, "constexpr int kSmemBytes = 49152;");
}

// ---- Problem ---------------------------------------------------------------------------------------------------

TEST_CASE("problem: presets hold NSA.md's values") {
  const Problem paper = nsajit::preset("paper");
  CHECK(paper.dtype == Dtype::bf16);
  CHECK(paper.HQ == 64);
  CHECK(paper.H == 4);
  CHECK(paper.G() == 16);
  CHECK(paper.dk == 192);
  CHECK(paper.dv == 128);
  CHECK(paper.l == 32);
  CHECK(paper.d == 16);
  CHECK(paper.lsel == 64);
  CHECK(paper.n == 16);
  CHECK(paper.w == 512);
  CHECK(paper.softmax_scale() == doctest::Approx(1.0 / std::sqrt(192.0)).epsilon(1e-15));
  CHECK_NOTHROW(paper.validate());

  const Problem fla = nsajit::preset("fla");
  CHECK(fla.HQ == 64);
  CHECK(fla.H == 4);
  CHECK(fla.G() == 16);
  CHECK(fla.dk == 128);
  CHECK(fla.dv == 128);
  CHECK(fla.l == 64);
  CHECK(fla.d == 64);
  CHECK(fla.lsel == 64);
  CHECK(fla.n == 16);
  CHECK(fla.w == 512);
  CHECK_NOTHROW(fla.validate());
  CHECK(fla.describe() == "bf16 B=1 T=65536 HQ=64 H=4 dk=128 dv=128 l=64 d=64 l'=64 n=16 w=512");

  Problem scaled = fla;
  scaled.scale = 0.5;
  CHECK(scaled.softmax_scale() == 0.5);
  CHECK_CONTAINS(scaled.describe(), " scale=0.5");

  const std::vector<std::string> names = nsajit::preset_names();
  CHECK(names == std::vector<std::string>{"paper", "fla"});
  for (const std::string& name : names) CHECK_NOTHROW(nsajit::preset(name));
}

TEST_CASE("problem: validate names the bad field") {
  const Problem ok = nsajit::preset("paper");
  auto error = [&](const std::function<void(Problem&)>& edit) {
    Problem p = ok;
    edit(p);
    return usage_error_of([&] { p.validate(); });
  };
  SUBCASE("non-positive fields") {
    CHECK_CONTAINS(error([](Problem& p) { p.B = 0; }), "bad B = 0");
    CHECK_CONTAINS(error([](Problem& p) { p.T = -3; }), "bad T = -3");
    CHECK_CONTAINS(error([](Problem& p) { p.HQ = 0; }), "bad HQ = 0");
    CHECK_CONTAINS(error([](Problem& p) { p.H = 0; }), "bad H = 0");
    CHECK_CONTAINS(error([](Problem& p) { p.dk = 0; }), "bad dk = 0");
    CHECK_CONTAINS(error([](Problem& p) { p.dv = -1; }), "bad dv = -1");
    CHECK_CONTAINS(error([](Problem& p) { p.l = 0; }), "bad l = 0");
    CHECK_CONTAINS(error([](Problem& p) { p.d = 0; }), "bad d = 0");
    CHECK_CONTAINS(error([](Problem& p) { p.lsel = 0; }), "bad l' = 0");
    CHECK_CONTAINS(error([](Problem& p) { p.n = 0; }), "bad n = 0");
    CHECK_CONTAINS(error([](Problem& p) { p.w = -1; }), "bad w = -1");
    CHECK_CONTAINS(error([](Problem& p) { p.scale = -1.0; }), "bad scale");
    CHECK_CONTAINS(error([](Problem& p) { p.scale = std::nan(""); }), "bad scale");
    CHECK_CONTAINS(error([](Problem& p) { p.scale = std::numeric_limits<double>::infinity(); }), "bad scale");
  }
  SUBCASE("HQ not a multiple of H") {
    const std::string e = error([](Problem& p) { p.HQ = 64, p.H = 5; });
    CHECK_CONTAINS(e, "HQ = 64 is not a multiple of H = 5");
  }
  SUBCASE("d must divide l and l'") {
    CHECK_CONTAINS(error([](Problem& p) { p.l = 32, p.d = 24, p.lsel = 48; }), "bad d = 24: must divide l = 32");
    CHECK_CONTAINS(error([](Problem& p) { p.l = 32, p.d = 16, p.lsel = 40; }), "bad d = 16: must divide l' = 40");
  }
  SUBCASE("T beyond int32") {
    CHECK_CONTAINS(error([](Problem& p) { p.T = int64_t{1} << 31; }), "bad T");
  }
  SUBCASE("valid edge values pass") {
    Problem p = ok;
    p.w = 0;  // disables the window branch
    p.HQ = 3, p.H = 3;
    p.T = 1;
    CHECK_NOTHROW(p.validate());
  }
}

TEST_CASE("problem, families, dtypes: unknown names list the valid ones") {
  const std::string preset = usage_error_of([] { (void)nsajit::preset("nope"); });
  CHECK_CONTAINS(preset, "'nope'");
  CHECK_CONTAINS(preset, "paper");
  CHECK_CONTAINS(preset, "fla");

  const std::string family = usage_error_of([] { (void)nsajit::find_family("nope"); });
  CHECK_CONTAINS(family, "'nope'");
  REQUIRE(nsajit::families().size() >= 2);
  for (const nsajit::KernelFamily* f : nsajit::families()) CHECK_CONTAINS(family, std::string(f->name()));
  CHECK_CONTAINS(family, "win_fwd, win_fwd_ref");

  const std::string dtype = usage_error_of([] { (void)nsajit::parse_dtype("fp32"); });
  CHECK_CONTAINS(dtype, "'fp32'");
  CHECK_CONTAINS(dtype, "bf16, fp16");
  CHECK(nsajit::parse_dtype("bf16") == Dtype::bf16);
  CHECK(nsajit::parse_dtype("fp16") == Dtype::fp16);
  CHECK(nsajit::dtype_name(Dtype::fp16) == "fp16");

  CHECK(nsajit::find_family("win_fwd").name() == "win_fwd");
  CHECK(nsajit::find_family("win_fwd").entry_name() == "nsa_win_fwd");
  CHECK(nsajit::find_family("win_fwd_ref").name() == "win_fwd_ref");
}

// ---- families, tile configs, space ---------------------------------------------------------------------------

TEST_CASE("family: apply_overrides") {
  const nsajit::KernelFamily& f = nsajit::find_family("win_fwd");
  const TileConfig base = f.default_config(nsajit::preset("fla"));
  CHECK(nsajit::apply_overrides(f, base, "") == base);
  CHECK(base == TileConfig{{"BM", 128}, {"BN", 64}, {"QREGS", 0}, {"IMPL", 2}, {"STAGES", 3}});
  // Overrides replace the named parameters and keep the others.
  CHECK(nsajit::apply_overrides(f, base, "BM=64,BN=128") ==
        TileConfig{{"BM", 64}, {"BN", 128}, {"QREGS", 0}, {"IMPL", 2}, {"STAGES", 3}});
  CHECK(nsajit::apply_overrides(f, base, "QREGS=1") ==
        TileConfig{{"BM", 128}, {"BN", 64}, {"QREGS", 1}, {"IMPL", 2}, {"STAGES", 3}});
  CHECK(nsajit::describe(nsajit::apply_overrides(f, base, "BN=128")) == "BM=128 BN=128 IMPL=2 QREGS=0 STAGES=3");
  CHECK(nsajit::apply_overrides(f, base, "IMPL=0,STAGES=2") ==
        TileConfig{{"BM", 128}, {"BN", 64}, {"QREGS", 0}, {"IMPL", 0}, {"STAGES", 2}});
  // From an mma.sync base to the Hopper kernel and back.
  const TileConfig mma{{"BM", 64}, {"BN", 32}, {"QREGS", 1}, {"IMPL", 0}, {"STAGES", 2}};
  CHECK(nsajit::apply_overrides(f, mma, "BM=128,BN=32") ==
        TileConfig{{"BM", 128}, {"BN", 32}, {"QREGS", 1}, {"IMPL", 0}, {"STAGES", 2}});
  CHECK(nsajit::apply_overrides(f, mma, "IMPL=1,BN=64,STAGES=3") ==
        TileConfig{{"BM", 64}, {"BN", 64}, {"QREGS", 1}, {"IMPL", 1}, {"STAGES", 3}});
  CHECK(nsajit::apply_overrides(f, base, "BM=64,BN=32,QREGS=1,IMPL=0,STAGES=2") == mma);

  const std::string unknown = usage_error_of([&] { (void)nsajit::apply_overrides(f, base, "BK=64"); });
  CHECK_CONTAINS(unknown, "'BK'");
  CHECK_CONTAINS(unknown, "BM, BN, QREGS, IMPL, STAGES");

  const std::string not_int = usage_error_of([&] { (void)nsajit::apply_overrides(f, base, "BM=abc"); });
  CHECK_CONTAINS(not_int, "'abc'");
  CHECK_CONTAINS(not_int, "integer");
  CHECK_CONTAINS(usage_error_of([&] { (void)nsajit::apply_overrides(f, base, "BM=64x"); }), "integer");
  CHECK_CONTAINS(usage_error_of([&] { (void)nsajit::apply_overrides(f, base, "BM="); }), "integer");

  const std::string outside = usage_error_of([&] { (void)nsajit::apply_overrides(f, base, "BM=7"); });
  CHECK_CONTAINS(outside, "bad value 7 for BM");
  CHECK_CONTAINS(outside, "64, 128, 192");
  CHECK_CONTAINS(usage_error_of([&] { (void)nsajit::apply_overrides(f, base, "BN=64,QREGS=2"); }), "0, 1");
  const std::string stages = usage_error_of([&] { (void)nsajit::apply_overrides(f, base, "IMPL=1,STAGES=4"); });
  CHECK_CONTAINS(stages, "bad value 4 for STAGES");
  CHECK_CONTAINS(stages, "2, 3");
  CHECK_CONTAINS(usage_error_of([&] { (void)nsajit::apply_overrides(f, base, "IMPL=3"); }), "bad value 3 for IMPL");

  CHECK_CONTAINS(usage_error_of([&] { (void)nsajit::apply_overrides(f, base, "BM"); }), "NAME=VALUE");

  // A family without parameters accepts no override.
  const nsajit::KernelFamily& ref = nsajit::find_family("win_fwd_ref");
  CHECK(nsajit::apply_overrides(ref, {}, "").empty());
  CHECK_CONTAINS(usage_error_of([&] { (void)nsajit::apply_overrides(ref, {}, "BM=64"); }), "'BM'");
}

TEST_CASE("family: enumerate_space covers the cartesian product and says why points are rejected") {
  const nsajit::KernelFamily& f = nsajit::find_family("win_fwd");
  const Problem fla = nsajit::preset("fla");

  SUBCASE("every combination once, every value from its domain") {
    const auto space = nsajit::enumerate_space(f, fla, nsajit::kHopperMaxSmemOptin);
    size_t expected = 1;
    for (const auto& decl : f.params()) expected *= decl.domain.size();
    CHECK(f.params().size() == 5);
    CHECK(expected == 3 * 4 * 2 * 3 * 2);  // BM x BN x QREGS x IMPL x STAGES
    CHECK(space.size() == expected);
    std::set<TileConfig> seen;
    for (const auto& pt : space) {
      CAPTURE(nsajit::describe(pt.config));
      CHECK(pt.config.size() == f.params().size());
      for (const auto& decl : f.params()) {
        REQUIRE(pt.config.count(decl.name) == 1);
        CHECK(std::find(decl.domain.begin(), decl.domain.end(), pt.config.at(decl.name)) != decl.domain.end());
      }
      seen.insert(pt.config);
    }
    CHECK(seen.size() == expected);
    // The rules in the order reject() applies them, each point counted under the first that refuses it:
    //   shared memory: BM=192, BN=128 with three stages (Hopper kernels; 246784 B and more);
    //   IMPL=0 double-buffers (STAGES=3);
    //   BM=192 is IMPL=1's only;
    //   IMPL=2 at BM=64 needs two CTAs' shared memory per SM (<= 115712 B each): BN=64 with three stages, BN=128;
    //   the Hopper kernels take keys in blocks of 64;
    //   their fragment registers: O 64 + S and P BN * 3 / 4 + Q 32 when held + 16 > 180 (BN=128 with Q held,
    //   208), or + 40 over the per-thread share (168 at BM=64 for IMPL=2 and at BM=192; 232 at BM=128 for IMPL=2):
    //   BN=128 at 64 and 192 rows, Q held at 64 and 192 rows.
    size_t smem = 0, single_buffered = 0, bm192 = 0, two_ctas = 0, narrow_wgmma = 0, over_180 = 0, over_share = 0;
    size_t accepted_mma = 0, accepted_hopper = 0;
    for (const auto& pt : space) {
      CAPTURE(nsajit::describe(pt.config));
      const int impl = pt.config.at("IMPL"), stages = pt.config.at("STAGES"), bn = pt.config.at("BN");
      const int bm = pt.config.at("BM"), qregs = pt.config.at("QREGS");
      if (impl != 0 && bm == 192 && bn == 128 && stages == 3) {
        REQUIRE(pt.rejected);
        CHECK_CONTAINS(*pt.rejected, "shared memory");
        ++smem;
      } else if (impl == 0 && stages != 2) {
        REQUIRE(pt.rejected);
        CHECK(*pt.rejected == "IMPL=0 double-buffers: STAGES=2 only");
        ++single_buffered;
      } else if (bm == 192 && impl != 1) {
        REQUIRE(pt.rejected);
        CHECK_CONTAINS(*pt.rejected, "BM=192");
        ++bm192;
      } else if (impl == 2 && bm == 64 && (bn == 128 || (bn == 64 && stages == 3))) {
        REQUIRE(pt.rejected);
        CHECK_CONTAINS(*pt.rejected, "IMPL=2 at BM=64 runs two CTAs per SM");
        ++two_ctas;
      } else if (impl != 0 && bn % 64 != 0) {
        REQUIRE(pt.rejected);
        CHECK_CONTAINS(*pt.rejected, "IMPL=" + std::to_string(impl) + " takes keys in blocks of 64");
        CHECK_CONTAINS(*pt.rejected, "BN=" + std::to_string(bn));
        ++narrow_wgmma;
      } else if (impl != 0 && bn == 128 && qregs == 1) {
        REQUIRE(pt.rejected);
        CHECK(*pt.rejected == "fragment registers 208 > 180: would spill");
        ++over_180;
      } else if ((impl == 2 && bm == 64 && (bn == 128 || qregs == 1)) || (bm == 192 && (bn == 128 || qregs == 1))) {
        REQUIRE(pt.rejected);
        CHECK_CONTAINS(*pt.rejected, "+ 40 > 168");
        ++over_share;
      } else {
        CHECK_MESSAGE(!pt.rejected, *pt.rejected);
        ++(impl == 0 ? accepted_mma : accepted_hopper);
      }
    }
    CHECK(smem == 4);                // IMPL=1 at BM=192 BN=128 STAGES=3, both QREGS (IMPL=2 at 192 counts as such)
    CHECK(single_buffered == 3 * 4 * 2);     // IMPL=0 STAGES=3: every BM, BN, QREGS
    CHECK(bm192 == 4 * 2 * 2 - 2 + 4 * 2);   // BM=192 with IMPL=2 (but the 2 above) or IMPL=0 STAGES=2
    CHECK(narrow_wgmma == 2 * 2 * 2 * 2 * 2 + 2 * 2 * 2);  // Hopper BN in {16, 32}: BM 64 and 128 both IMPLs, 192 IMPL=1
    CHECK(two_ctas == 6);            // IMPL=2 BM=64: BN=64 STAGES=3 and BN=128, both QREGS
    CHECK(over_180 == 7);            // BN=128 QREGS=1: IMPL=1 at 64, 128 (2 stages each) and 192 (STAGES=2); IMPL=2 at 128
    CHECK(over_share == 4);          // IMPL=2 BM=64 BN=64 STAGES=2 QREGS=1; BM=192: BN=64 QREGS=1 (2 stages), BN=128 S=2
    CHECK(accepted_mma == 16);       // IMPL=0 STAGES=2 at BM 64 and 128
    CHECK(accepted_hopper == 21);
  }

  SUBCASE("dk = dv = 256 with BN = 128 exceeds shared memory; Q in registers with BN = 64 would spill") {
    Problem p = fla;
    p.dk = 256, p.dv = 256;
    size_t accepted = 0, hopper_accepted = 0, register_rejections = 0;
    for (const auto& pt : nsajit::enumerate_space(f, p, nsajit::kHopperMaxSmemOptin)) {
      CAPTURE(nsajit::describe(pt.config));
      const int bn = pt.config.at("BN"), qregs = pt.config.at("QREGS"), impl = pt.config.at("IMPL");
      if (bn == 128) {
        // BM * 256 * 2 + 2 * 128 * 512 * 2 >= 294912 B, whatever the kernel and stages.
        REQUIRE(pt.rejected);
        CHECK_CONTAINS(*pt.rejected, "shared memory");
        CHECK_CONTAINS(*pt.rejected, std::to_string(nsajit::kHopperMaxSmemOptin));
      }
      if (!pt.rejected) {
        ++accepted;
        hopper_accepted += impl != 0;
        // The mma.sync kernel at BN <= 32, or BN = 64 without Q held.
        CHECK(impl == 0);
        CHECK((bn <= 32 || qregs == 0));
      } else if (pt.rejected->find("registers") != std::string::npos) {
        ++register_rejections;
      }
    }
    CHECK(hopper_accepted == 0);  // O alone is 128 registers a thread: no Hopper point serves dk = dv = 256
    CHECK(accepted == 8);  // IMPL=0 STAGES=2 at BM 64 and 128: BN=16 both QREGS, BN=32 and BN=64 without Q held
    CHECK(register_rejections == 14);
  }

  SUBCASE("the device limit passed in is the one applied") {
    for (const auto& pt : nsajit::enumerate_space(f, fla, 0)) {
      CAPTURE(nsajit::describe(pt.config));
      REQUIRE(pt.rejected);
      CHECK_CONTAINS(*pt.rejected, "device limit 0 B");
    }
    // BM=64 BN=32 needs 64 * 128 * 2 + 2 * 32 * 256 * 2 = 49152 B: at the limit is allowed, one byte less is not.
    const TileConfig c{{"BM", 64}, {"BN", 32}, {"QREGS", 0}, {"IMPL", 0}, {"STAGES", 2}};
    CHECK(!f.reject(fla, c, 49152));
    const auto why = f.reject(fla, c, 49151);
    REQUIRE(why);
    CHECK_CONTAINS(*why, "shared memory 49152 B > device limit 49151 B");
    // IMPL=1: a third stage costs one more K and V tile, BN * (dk + dv) * 2 B, and the limit applies to it too.
    const TileConfig two{{"BM", 64}, {"BN", 64}, {"QREGS", 0}, {"IMPL", 1}, {"STAGES", 2}};
    TileConfig three = two;
    three["STAGES"] = 3;
    const int smem3 = f.geometry(fla, three).smem_bytes;
    CHECK(smem3 - f.geometry(fla, two).smem_bytes == 64 * (128 + 128) * 2);
    CHECK(!f.reject(fla, three, smem3));
    const auto why3 = f.reject(fla, three, smem3 - 1);
    REQUIRE(why3);
    CHECK_CONTAINS(*why3, "shared memory " + std::to_string(smem3) + " B > device limit");
  }

  SUBCASE("a family without parameters has one point") {
    const auto space = nsajit::enumerate_space(nsajit::find_family("win_fwd_ref"), fla, nsajit::kHopperMaxSmemOptin);
    REQUIRE(space.size() == 1);
    CHECK(space[0].config.empty());
    CHECK(!space[0].rejected);
  }
}

TEST_CASE("family: default configs are valid points for a sample of supported head dims") {
  for (const char* name : {"win_fwd", "win_fwd_ref"}) {
    const nsajit::KernelFamily& f = nsajit::find_family(name);
    for (auto [dk, dv] : std::vector<std::pair<int, int>>{
             {64, 64}, {128, 128}, {192, 128}, {256, 256}, {32, 32}, {80, 80}, {96, 64}, {200, 120}, {248, 40}}) {
      Problem p = nsajit::preset("fla");
      p.dk = dk, p.dv = dv;
      CAPTURE(name);
      CAPTURE(dk);
      CAPTURE(dv);
      CHECK_NOTHROW(f.check_problem(p));
      const TileConfig c = f.default_config(p);
      const auto why = f.reject(p, c, nsajit::kHopperMaxSmemOptin);
      CHECK_MESSAGE(!why, nsajit::describe(c) << ": " << *why);
    }
  }
}

TEST_CASE("family: win_fwd geometry") {
  const nsajit::KernelFamily& f = nsajit::find_family("win_fwd");
  Problem p = nsajit::preset("fla");
  p.B = 3, p.T = 1000;
  const nsajit::LaunchGeometry g = f.geometry(p, {{"BM", 128}, {"BN", 32}, {"QREGS", 0}, {"IMPL", 0}, {"STAGES", 2}});
  CHECK(g.grid.x == (1000 * 16 + 127) / 128);
  CHECK(g.grid.y == 4);
  CHECK(g.grid.z == 3);
  CHECK(g.block.x == 256);
  CHECK(g.smem_bytes == 128 * 128 * 2 + 2 * 32 * (128 + 128) * 2);
  // IMPL=1: the same grid; BM / 64 warpgroups are as many threads as BM / 16 warps.
  const nsajit::LaunchGeometry h = f.geometry(p, {{"BM", 128}, {"BN", 64}, {"QREGS", 0}, {"IMPL", 1}, {"STAGES", 3}});
  CHECK(h.grid.x == g.grid.x);
  CHECK(h.grid.y == 4);
  CHECK(h.grid.z == 3);
  CHECK(h.block.x == 256);
  CHECK(h.smem_bytes >= 128 * 128 * 2 + 3 * 64 * (128 + 128) * 2);
}

TEST_CASE("family: check_problem refuses unsupported head dims and names the rule") {
  for (const char* name : {"win_fwd", "win_fwd_ref"}) {
    CAPTURE(name);
    Problem p = nsajit::preset("fla");
    p.dk = 96, p.dv = 100;
    const std::string e = usage_error_of([&] { nsajit::find_family(name).check_problem(p); });
    CHECK_CONTAINS(e, std::string(name) + " does not support dv = 100: head dims must be multiples of 8 from 32 to 256");
    p.dv = 96;
    CHECK_NOTHROW(nsajit::find_family(name).check_problem(p));
    // It validates the problem as well.
    Problem bad = nsajit::preset("fla");
    bad.H = 5;
    CHECK_CONTAINS(usage_error_of([&] { nsajit::find_family(name).check_problem(bad); }), "not a multiple of H");
  }
}

// ---- win_fwd argument checks (before any driver call) --------------------------------------------------------

TEST_CASE("win_fwd: bad arguments are refused before any driver call") {
  Problem p = nsajit::preset("fla");
  p.B = 1, p.T = 64;
  // Never dereferenced: every case below fails validation first.
  auto fake = [](uintptr_t address) { return reinterpret_cast<void*>(address); };
  nsajit::AttnFwdArgs a;
  a.q = nsajit::contiguous(fake(0x10000), p.T, p.HQ, p.dk);
  a.k = nsajit::contiguous(fake(0x20000), p.T, p.H, p.dk);
  a.v = nsajit::contiguous(fake(0x30000), p.T, p.H, p.dv);
  a.o = nsajit::contiguous(fake(0x40000), p.T, p.HQ, p.dv);
  CHECK(a.q.stride_h == 128);
  CHECK(a.q.stride_t == 64 * 128);
  CHECK(a.q.stride_b == 64 * 64 * 128);
  auto error = [&](const Problem& prob, const nsajit::AttnFwdArgs& args, const TileConfig* config = nullptr) {
    return usage_error_of([&] { nsajit::win_fwd(prob, args, nullptr, config); });
  };

  SUBCASE("null pointer") {
    nsajit::AttnFwdArgs b = a;
    b.k.data = nullptr;
    CHECK_CONTAINS(error(p, b), "win_fwd: k is a null pointer");
  }
  SUBCASE("misaligned pointer") {
    nsajit::AttnFwdArgs b = a;
    b.v.data = fake(0x30008);
    CHECK_CONTAINS(error(p, b), "v is not 16-byte aligned");
  }
  SUBCASE("stride not a multiple of 8 elements") {
    nsajit::AttnFwdArgs b = a;
    b.o.stride_t = 12;
    CHECK_CONTAINS(error(p, b), "o's sequence stride 12");
  }
  SUBCASE("misaligned lse") {
    nsajit::AttnFwdArgs b = a;
    b.lse = static_cast<float*>(fake(0x50002));
    CHECK_CONTAINS(error(p, b), "lse is not 4-byte aligned");
  }
  SUBCASE("unsupported head dims and invalid problems") {
    Problem q = p;
    q.dk = 24, q.dv = 96;
    CHECK_CONTAINS(error(q, a), "dk = 24: head dims must be multiples of 8 from 32 to 256");
    Problem r = p;
    r.H = 5;
    CHECK_CONTAINS(error(r, a), "not a multiple of H");
  }
  SUBCASE("an invalid tile config") {
    Problem q = p;
    q.dk = 256, q.dv = 256;
    nsajit::AttnFwdArgs b = a;
    b.q = nsajit::contiguous(fake(0x10000), q.T, q.HQ, q.dk);
    b.k = nsajit::contiguous(fake(0x20000), q.T, q.H, q.dk);
    b.v = nsajit::contiguous(fake(0x30000), q.T, q.H, q.dv);
    b.o = nsajit::contiguous(fake(0x40000), q.T, q.HQ, q.dv);
    const TileConfig c{{"BM", 64}, {"BN", 128}, {"QREGS", 0}, {"IMPL", 0}, {"STAGES", 2}};
    const std::string e = error(q, b, &c);
    CHECK_CONTAINS(e, "tile config [BM=64 BN=128 IMPL=0 QREGS=0 STAGES=2] is not valid");
    CHECK_CONTAINS(e, "shared memory");
    // In the space but refused by the family's rules: the mma.sync kernel has exactly two stages.
    const TileConfig triple{{"BM", 64}, {"BN", 32}, {"QREGS", 0}, {"IMPL", 0}, {"STAGES", 3}};
    const std::string e3 = error(p, a, &triple);
    CHECK_CONTAINS(e3, "tile config [BM=64 BN=32 IMPL=0 QREGS=0 STAGES=3] is not valid");
    CHECK_CONTAINS(e3, "STAGES=2 only");
  }
  SUBCASE("varlen") {
    const int32_t device_stub = 0;
    nsajit::AttnFwdArgs b = a;
    b.cu_seqlens = &device_stub;
    const std::vector<int32_t> good{0, 20, 64};
    const std::vector<int32_t> one{0};
    const std::vector<int32_t> nonzero{4, 20, 64};
    const std::vector<int32_t> decreasing{0, 30, 20, 64};
    const std::vector<int32_t> short_total{0, 20, 60};
    Problem batched = p;
    batched.B = 2;
    b.cu_seqlens_host = good;
    CHECK_CONTAINS(error(batched, b), "varlen needs B = 1");
    b.cu_seqlens_host = one;
    CHECK_CONTAINS(error(p, b), "N + 1 >= 2");
    b.cu_seqlens_host = nonzero;
    CHECK_CONTAINS(error(p, b), "cu_seqlens[0] = 4 must be 0");
    b.cu_seqlens_host = decreasing;
    CHECK_CONTAINS(error(p, b), "cu_seqlens[2] = 20 < cu_seqlens[1] = 30");
    b.cu_seqlens_host = short_total;
    CHECK_CONTAINS(error(p, b), "ends at 60 but T = 64");
  }
  SUBCASE("nothing to write, or cu_seqlens on the host only") {
    nsajit::AttnFwdArgs b = a;
    b.o.data = nullptr;
    CHECK_CONTAINS(error(p, b), "nothing to write");
    const std::vector<int32_t> cu{0, 64};
    nsajit::AttnFwdArgs c = a;
    c.cu_seqlens_host = cu;
    CHECK_CONTAINS(error(p, c), "cu_seqlens_host given without the device cu_seqlens");
  }
  SUBCASE("the reference kernel checks the same way") {
    nsajit::AttnFwdArgs b = a;
    b.q.data = nullptr;
    CHECK_CONTAINS(usage_error_of([&] { nsajit::win_fwd_reference(p, b, nullptr); }),
                   "win_fwd_ref: q is a null pointer");
    nsajit::AttnFwdArgs c = a;
    c.o.data = nullptr;
    CHECK_CONTAINS(usage_error_of([&] { nsajit::win_fwd_reference(p, c, nullptr); }), "needs o");
  }
}
