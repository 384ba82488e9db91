#pragma once
// A kernel family declares, in one place, what codegen, the tuner, emit, the benchmark and the runtime need:
// its tunable parameters with their domains and constraints, launch geometry and shared memory, and its FLOP
// and minimum-byte counts.
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "base/dim3.h"
#include "codegen/overlap.h"
#include "codegen/problem.h"

namespace nsajit {

struct ParamDecl {
  std::string name;
  std::vector<int> domain;
  std::string help;
};

// One point of a family's space: parameter name -> value (ordered, so printing and hashing are stable).
using TileConfig = std::map<std::string, int>;
std::string describe(const TileConfig& c);  // "BM=64 BN=64 QREGS=1"

struct LaunchGeometry {
  Dim3 grid, block;
  int smem_bytes = 0;  // dynamic shared memory
};

class KernelFamily {
public:
  virtual ~KernelFamily() = default;
  virtual std::string_view name() const = 0;
  virtual std::string_view description() const = 0;
  // The template file (embedded) and the support headers it needs after nsa_types.h and common.cuh, in order:
  // among them the header that defines its parameter struct (templates/<x>_params.h, included by the host too).
  virtual std::string_view template_path() const = 0;
  virtual std::vector<std::string_view> support_files() const { return {}; }
  // The family's standalone program for `nsajit emit`: a harness (embedded; it follows the kernel source, the
  // harness constants and templates/harness_common.cuh, and defines `main`) that launches the kernel on random
  // inputs, checks what it can against a simple reference inside the file and prints PASS/FAIL; and the host
  // headers it needs first. Every family declares one: emit refuses a family whose path is empty, and the CPU
  // test "emit: every family" fails for it.
  virtual std::string_view harness_path() const = 0;
  virtual std::vector<std::string_view> harness_support_files() const { return {}; }
  std::string entry_name() const { return "nsa_" + std::string(name()); }
  virtual const std::vector<ParamDecl>& params() const = 0;

  // Throws UsageError naming the parameter and the supported values when the family cannot serve `p`.
  virtual void check_problem(const Problem& p) const = 0;
  // Why `c` is not a valid point for `p` (threads, shared memory, divisibility), or nullopt if it is.
  // `max_smem` is the device's opt-in shared memory per block.
  virtual std::optional<std::string> reject(const Problem& p, const TileConfig& c, int max_smem) const = 0;
  virtual TileConfig default_config(const Problem& p) const = 0;
  // The default among the configs every target runs (IMPL=0 where the family has Hopper implementations): what
  // default_config_for gives a target other than sm_90a.
  virtual TileConfig portable_default_config(const Problem& p) const { return default_config(p); }
  // Data-dependent families (slc_fwd): the fastest config depends on how much neighbouring positions' selections
  // overlap (codegen/overlap.h), so the tuning database keys their results by overlap bucket too, and the runtime
  // runs the config of each bucket on the positions in that bucket. Each bucket has its own default;
  // default_config() is the high-overlap one.
  virtual bool overlap_dependent() const { return false; }
  virtual TileConfig bucket_default_config(const Problem& p, OverlapBucket) const { return default_config(p); }
  virtual LaunchGeometry geometry(const Problem& p, const TileConfig& c) const = 0;
  // The config as far as it reaches the generated source: parameters the kernel takes at run time (decode's SPLIT)
  // are left out, so that variants differing only there share one source and one CUBIN.
  virtual TileConfig source_config(const TileConfig& c) const { return c; }
  // `constexpr` declarations (inside namespace nsa::spec) that specialize the template.
  virtual std::string preamble(const Problem& p, const TileConfig& c) const = 0;
  // The body of the extern "C" entry, e.g. "nsa::win_fwd::run(p);", the parameter struct and the launch bounds.
  virtual std::string_view params_type() const = 0;
  virtual std::string entry_body() const = 0;
  virtual std::string launch_bounds(const Problem& p, const TileConfig& c) const = 0;

  virtual double flops(const Problem& p) const = 0;
  virtual double min_bytes(const Problem& p) const = 0;
};

const std::vector<const KernelFamily*>& families();
// Throws UsageError listing the families for an unknown name.
const KernelFamily& find_family(std::string_view name);

// Every point of the family's space (the cartesian product of the domains), with the reason for each rejected one.
struct SpacePoint {
  TileConfig config;
  std::optional<std::string> rejected;
};
// `arch` prunes what the target cannot run: IMPL=1 (the Hopper implementations: wgmma, setmaxnreg) needs sm_90a.
std::vector<SpacePoint> enumerate_space(const KernelFamily& f, const Problem& p, int max_smem,
                                        std::string_view arch = "sm_90a");
// Why `c` cannot run on `arch` (IMPL=1 off sm_90a), or nullopt.
std::optional<std::string> arch_reject(const TileConfig& c, std::string_view arch);
// The family's default config for `p` on `arch`: default_config, or portable_default_config where `arch` cannot run
// that (the Hopper defaults off sm_90a).
TileConfig default_config_for(const KernelFamily& f, const Problem& p, std::string_view arch);

// Parses "BM=128,BN=32" into overrides of a config; throws UsageError on an unknown name or a value outside the
// declared domain.
TileConfig apply_overrides(const KernelFamily& f, TileConfig base, std::string_view overrides);

// H100/H200 opt-in shared memory per block; used when no device is present to ask.
constexpr int kHopperMaxSmemOptin = 232448;

// Floats per query position of the select kernel's shared-memory score array for sequences of up to T tokens:
// ceil(T / l') rounded up to a multiple of 4. Shared by the family's geometry (codegen/families/select.cpp) and the
// launch (runtime/select_api.cpp).
int select_score_row_floats(int64_t T, int lsel);

}  // namespace nsajit
