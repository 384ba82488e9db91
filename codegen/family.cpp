#include "codegen/family.h"

#include <cstdlib>

#include <fmt/format.h>

#include <algorithm>
#include <charconv>

#include "base/error.h"

namespace nsajit {

const KernelFamily& win_fwd_family();
const KernelFamily& win_fwd_ref_family();
const KernelFamily& slc_fwd_family();
const KernelFamily& slc_plan_family();
const KernelFamily& cmp_fwd_family();
const KernelFamily& cmp_fwd_ref_family();
const KernelFamily& pool_family();
const KernelFamily& select_family();
const KernelFamily& compare_family();
const KernelFamily& fault_test_family();
const KernelFamily& bwd_pre_family();
const KernelFamily& cmp_bwd_dq_family();
const KernelFamily& cmp_bwd_dkv_family();
const KernelFamily& cmp_bwd_reduce_family();
const KernelFamily& slc_bwd_index_family();
const KernelFamily& slc_bwd_dq_family();
const KernelFamily& slc_bwd_dkv_family();
const KernelFamily& slc_bwd_reduce_family();
const KernelFamily& win_bwd_dq_family();
const KernelFamily& win_bwd_dkv_family();
const KernelFamily& pool_bwd_family();
const KernelFamily& bwd_cast_family();
const KernelFamily& decode_family();
const KernelFamily& decode_append_family();

std::string describe(const TileConfig& c) {
  std::string s;
  for (const auto& [k, v] : c) s += fmt::format("{}{}={}", s.empty() ? "" : " ", k, v);
  return s;
}

const std::vector<const KernelFamily*>& families() {
  // The forward families in the order the forward runs them, then the simple reference kernels and the tuner's
  // compare kernel; the test-only family only with NSAJIT_TEST_FAMILIES=1.
  static const std::vector<const KernelFamily*> all = [] {
    std::vector<const KernelFamily*> v = {&pool_family(),        &cmp_fwd_family(),  &select_family(),
                                          &slc_plan_family(),    &slc_fwd_family(),  &win_fwd_family(),
                                          &win_fwd_ref_family(), &cmp_fwd_ref_family(), &compare_family()};
    // The backward families in the order the backward runs them.
    for (const KernelFamily* f :
         {&bwd_pre_family(), &cmp_bwd_dq_family(), &cmp_bwd_dkv_family(), &cmp_bwd_reduce_family(), &slc_bwd_index_family(),
          &slc_bwd_dq_family(), &slc_bwd_dkv_family(), &slc_bwd_reduce_family(), &win_bwd_dq_family(),
          &win_bwd_dkv_family(), &pool_bwd_family(), &bwd_cast_family()})
      v.push_back(f);
    // Decode: the cache append, then the attention step.
    v.push_back(&decode_append_family());
    v.push_back(&decode_family());
    const char* test = std::getenv("NSAJIT_TEST_FAMILIES");
    if (test != nullptr && std::string_view(test) == "1") v.push_back(&fault_test_family());
    return v;
  }();
  return all;
}

const KernelFamily& find_family(std::string_view name) {
  std::string names;
  for (const KernelFamily* f : families()) {
    if (f->name() == name) return *f;
    names += fmt::format("{}{}", names.empty() ? "" : ", ", f->name());
  }
  throw UsageError(fmt::format("unknown family '{}': available are {}", name, names));
}

std::optional<std::string> arch_reject(const TileConfig& c, std::string_view arch) {
  const auto it = c.find("IMPL");
  if (it != c.end() && it->second != 0 && arch != "sm_90a")
    return fmt::format("IMPL={} (wgmma) needs sm_90a; the target is {}", it->second, arch);
  return std::nullopt;
}

TileConfig default_config_for(const KernelFamily& f, const Problem& p, std::string_view arch) {
  TileConfig c = f.default_config(p);
  return arch_reject(c, arch) ? f.portable_default_config(p) : c;
}

std::vector<SpacePoint> enumerate_space(const KernelFamily& f, const Problem& p, int max_smem, std::string_view arch) {
  std::vector<SpacePoint> out;
  const auto& params = f.params();
  std::vector<size_t> idx(params.size(), 0);
  while (true) {
    TileConfig c;
    for (size_t i = 0; i < params.size(); ++i) c[params[i].name] = params[i].domain[idx[i]];
    std::optional<std::string> why = arch_reject(c, arch);
    if (!why) why = f.reject(p, c, max_smem);
    out.push_back({c, why});
    size_t i = 0;
    for (; i < params.size(); ++i) {
      if (++idx[i] < params[i].domain.size()) break;
      idx[i] = 0;
    }
    if (i == params.size()) break;
  }
  return out;
}

TileConfig apply_overrides(const KernelFamily& f, TileConfig base, std::string_view overrides) {
  while (!overrides.empty()) {
    const size_t comma = overrides.find(',');
    const std::string_view item = overrides.substr(0, comma);
    overrides = comma == std::string_view::npos ? std::string_view{} : overrides.substr(comma + 1);
    const size_t eq = item.find('=');
    if (eq == std::string_view::npos)
      throw UsageError(fmt::format("bad tile override '{}': expected NAME=VALUE", item));
    const std::string_view name = item.substr(0, eq), value = item.substr(eq + 1);
    const auto& params = f.params();
    const auto it = std::find_if(params.begin(), params.end(), [&](const ParamDecl& d) { return d.name == name; });
    if (it == params.end()) {
      std::string names;
      for (const auto& d : params) names += fmt::format("{}{}", names.empty() ? "" : ", ", d.name);
      throw UsageError(fmt::format("family {} has no parameter '{}': its parameters are {}", f.name(), name, names));
    }
    int v = 0;
    const auto [ptr, ec] = std::from_chars(value.data(), value.data() + value.size(), v);
    if (ec != std::errc() || ptr != value.data() + value.size())
      throw UsageError(fmt::format("bad value '{}' for {}: expected an integer", value, name));
    if (std::find(it->domain.begin(), it->domain.end(), v) == it->domain.end())
      throw UsageError(fmt::format("bad value {} for {}: allowed are {}", v, name, fmt::join(it->domain, ", ")));
    base[std::string(name)] = v;
  }
  return base;
}

}  // namespace nsajit
