#include "tuner/cases.h"

#include <fmt/format.h>

#include <cmath>
#include <map>
#include <vector>

#include "codegen/codegen.h"
#include "runtime/attn_fwd_api.h"
#include "runtime/backward.h"
#include "runtime/decode_api.h"
#include "runtime/forward.h"
#include "runtime/device.h"
#include "runtime/driver.h"
#include "base/error.h"
#include "runtime/kernels.h"
#include "runtime/pool_api.h"
#include "runtime/select_api.h"
#include "runtime/slc_fwd_api.h"
#include "tuner/inputs.h"
#include "tuner/select_gate.h"
#include "templates/compare_params.h"
#include "templates/fault_test_params.h"

namespace nsajit {
namespace {

using nsa::CompareParams;
using nsa::FaultTestParams;

int kind_of(Dtype d) { return d == Dtype::bf16 ? nsa::kCompareBf16 : nsa::kCompareFp16; }
double tolerance(Dtype d) { return d == Dtype::bf16 ? 1e-2 : 2e-3; }

// The relative-error kernel, compiled once per process through the CUBIN cache.
class Comparer {
public:
  explicit Comparer(const Problem& p) : sums_(16), counts_(32) {
    const KernelFamily& f = find_family("compare");
    spec_ = KernelSpec{&f, p, {}, "sm_90a"};
  }
  struct Diff {
    double rel = 0, ref2 = 0;
    uint64_t nonfinite = 0, mismatches = 0, wrong_inf = 0, ref_bad = 0;
  };
  Diff run(const void* a, const void* ref, int64_t n, int kind) {
    const Kernel& k = runtime_kernel(spec_);
    sums_.fill_bytes(0);
    counts_.fill_bytes(0);
    CompareParams p{a, ref, n, static_cast<double*>(sums_.get()), static_cast<nsa::u64*>(counts_.get()), kind, 0};
    const LaunchGeometry g = spec_.family->geometry(spec_.problem, spec_.config);
    k.launch(g.grid, g.block, 0, nullptr, &p);
    double s[2];
    uint64_t c[4];
    sums_.download(s, sizeof s);
    counts_.download(c, sizeof c);
    Diff d;
    d.rel = s[1] > 0 ? std::sqrt(s[0] / s[1]) : std::sqrt(s[0]);
    d.ref2 = s[1];
    d.nonfinite = c[0], d.mismatches = c[1], d.wrong_inf = c[2], d.ref_bad = c[3];
    return d;
  }
  // nullopt when `a` matches `ref` within the dtype's tolerance. `nonzero`: the trusted tensor cannot be all zeros
  // (a trusted result that is all zeros, NaN or unwritten would otherwise pass every candidate).
  std::optional<std::string> check(const char* what, const void* a, const void* ref, int64_t n, int kind,
                                   double tol, bool nonzero = true) {
    const Diff d = run(a, ref, n, kind);
    if (d.ref_bad)
      return fmt::format("{}: the trusted result holds {} NaN, +inf or unwritten values (the trusted computation is "
                         "broken, not necessarily this candidate)",
                         what, d.ref_bad);
    if (kind != nsa::kCompareI32 && nonzero && !(d.ref2 > 0))
      return fmt::format("{}: the trusted result is all zeros or -inf (the trusted computation is broken)", what);
    if (kind == nsa::kCompareI32) {
      if (d.mismatches) return fmt::format("{}: {} of {} entries differ from the trusted result", what, d.mismatches, n);
      return std::nullopt;
    }
    if (d.nonfinite) return fmt::format("{}: {} NaN/Inf values", what, d.nonfinite);
    if (d.wrong_inf)
      return fmt::format("{}: {} values are not -inf where the trusted result is -inf (no keys)", what, d.wrong_inf);
    if (!(d.rel <= tol)) return fmt::format("{}: relative error {:.3g} > {:.0e}", what, d.rel, tol);
    return std::nullopt;
  }

private:
  KernelSpec spec_;
  DeviceBuffer sums_, counts_;
};

size_t tokens(const Problem& p) { return static_cast<size_t>(p.B * p.T); }

// The queries [B, T, HQ, dk] of the given kind (seed: which sample), on the device.
DeviceBuffer query_tensor(const Problem& p, InputKind kind, uint64_t seed) {
  const std::vector<uint16_t> bits = query_bits(p, kind, seed);
  DeviceBuffer q(bits.size() * 2);
  q.upload(bits.data(), bits.size() * 2);
  return q;
}
int64_t num_cmp(const Problem& p) { return p.T >= p.l ? (p.T - p.l) / p.d + 1 : 0; }
size_t esize() { return 2; }

// Window and compressed attention against the fp32 reference kernels.
class AttnCase final : public TuneCase {
public:
  AttnCase(const Problem& p, bool compressed, InputKind inputs) : p_(p), compressed_(compressed), cmp_(p) {
    const size_t kv_rows = compressed ? static_cast<size_t>(std::max<int64_t>(num_cmp(p), 1)) * p.B : tokens(p);
    q_ = query_tensor(p, inputs, 11);
    k_ = random_device_tensor(kv_rows * p.H * p.dk, p.dtype, 12);
    v_ = random_device_tensor(kv_rows * p.H * p.dv, p.dtype, 13);
    o_ = DeviceBuffer(tokens(p) * p.HQ * p.dv * esize()), ref_o_ = DeviceBuffer(o_.bytes());
    lse_ = DeviceBuffer(tokens(p) * p.HQ * 4), ref_lse_ = DeviceBuffer(lse_.bytes());
    const int64_t kv_t = compressed ? num_cmp(p) : p.T;
    a_.q = contiguous(q_.get(), p.T, p.HQ, p.dk);
    a_.k = contiguous(k_.get(), kv_t, p.H, p.dk);
    a_.v = contiguous(v_.get(), kv_t, p.H, p.dv);
    a_.lse_stride_t = p.HQ, a_.lse_stride_b = p.T * p.HQ;
    ref_o_.fill_bytes(0xff), ref_lse_.fill_bytes(0xff);  // poisoned: an unwritten trusted value is caught
    AttnFwdArgs ref = args(ref_o_, ref_lse_);
    if (compressed)
      cmp_fwd_reference(p, ref, nullptr);
    else
      win_fwd_reference(p, ref, nullptr);
  }
  void launch(const TileConfig& c, CUstream s) override {
    const AttnFwdArgs a = args(o_, lse_);
    if (compressed_)
      cmp_fwd(p_, a, s, &c);
    else
      win_fwd(p_, a, s, &c);
  }
  std::optional<std::string> check(const TileConfig& c) override {
    o_.fill_bytes(0xff), lse_.fill_bytes(0xff);
    launch(c, nullptr);
    const int64_t rows = static_cast<int64_t>(tokens(p_)) * p_.HQ;
    // The compressed branch has no keys at all when T < l: then o is all zeros and lse all -inf.
    const bool nonzero = !compressed_ || num_cmp(p_) > 0;
    if (auto e = cmp_.check("o", o_.get(), ref_o_.get(), rows * p_.dv, kind_of(p_.dtype), tolerance(p_.dtype),
                            nonzero))
      return e;
    return cmp_.check("lse", lse_.get(), ref_lse_.get(), rows, nsa::kCompareF32, tolerance(p_.dtype), nonzero);
  }

private:
  AttnFwdArgs args(const DeviceBuffer& o, const DeviceBuffer& lse) const {
    AttnFwdArgs a = a_;
    a.o = contiguous(o.get(), p_.T, p_.HQ, p_.dv);
    a.o.stride_b = p_.T * p_.HQ * p_.dv;
    a.lse = static_cast<float*>(lse.get());
    return a;
  }
  Problem p_;
  bool compressed_;
  Comparer cmp_;
  DeviceBuffer q_, k_, v_, o_, ref_o_, lse_, ref_lse_;
  AttnFwdArgs a_;
};

// Mean pool of k against the same pool computed on the CPU (fp32 sums, one rounding, as NSA.md defines phi).
class PoolCase final : public TuneCase {
public:
  explicit PoolCase(const Problem& p) : p_(p), cmp_(p) {
    const int64_t nc = num_cmp(p);
    const size_t n = tokens(p) * p.H * p.dk;
    const std::vector<uint16_t> x = random_normal_bits(n, p.dtype, 21);
    x_ = DeviceBuffer(n * 2);
    x_.upload(x.data(), n * 2);
    const size_t ny = static_cast<size_t>(std::max<int64_t>(nc, 1) * p.B) * p.H * p.dk;
    y_ = DeviceBuffer(ny * 2), ref_y_ = DeviceBuffer(ny * 2);
    std::vector<uint16_t> ref(ny, 0);  // computed here on the CPU, every element written
    for (int64_t b = 0; b < p.B; ++b)
      for (int64_t i = 0; i < nc; ++i)
        for (int h = 0; h < p.H; ++h)
          for (int c = 0; c < p.dk; ++c) {
            float s = 0;
            for (int r = 0; r < p.l; ++r)
              s += bits_to_float(x[((b * p.T + i * p.d + r) * p.H + h) * p.dk + c], p.dtype);
            ref[((b * nc + i) * p.H + h) * p.dk + c] = float_to_bits(s / static_cast<float>(p.l), p.dtype);
          }
    ref_y_.upload(ref.data(), ny * 2);
    ny_ = static_cast<int64_t>(nc * p.B) * p.H * p.dk;
    a_.x = contiguous(x_.get(), p.T, p.H, p.dk);
    a_.y = contiguous(y_.get(), nc, p.H, p.dk);
    a_.dim = p.dk;
  }
  void launch(const TileConfig& c, CUstream s) override { mean_pool(p_, a_, s, &c); }
  std::optional<std::string> check(const TileConfig& c) override {
    y_.fill_bytes(0xff);
    launch(c, nullptr);
    if (ny_ == 0) return std::nullopt;
    return cmp_.check("k_cmp", y_.get(), ref_y_.get(), ny_, kind_of(p_.dtype), tolerance(p_.dtype));
  }

private:
  Problem p_;
  Comparer cmp_;
  DeviceBuffer x_, y_, ref_y_;
  int64_t ny_ = 0;
  PoolArgs a_;
};

// Block selection: q of the input kind, k_cmp random, lse from cmp_fwd; the trusted selection is the default config's.
class SelectCase final : public TuneCase {
public:
  SelectCase(const Problem& p, InputKind inputs) : p_(p), cmp_(p) {
    const int64_t nc = std::max<int64_t>(num_cmp(p), 1);
    q_ = query_tensor(p, inputs, 31);
    k_cmp_ = random_device_tensor(nc * p.B * p.H * p.dk, p.dtype, 32);
    v_cmp_ = random_device_tensor(nc * p.B * p.H * p.dv, p.dtype, 33);
    lse_ = DeviceBuffer(tokens(p) * p.HQ * 4);
    DeviceBuffer o(tokens(p) * p.HQ * p.dv * 2);
    AttnFwdArgs a;
    a.q = contiguous(q_.get(), p.T, p.HQ, p.dk), a.k = contiguous(k_cmp_.get(), num_cmp(p), p.H, p.dk);
    a.v = contiguous(v_cmp_.get(), num_cmp(p), p.H, p.dv), a.o = contiguous(o.get(), p.T, p.HQ, p.dv);
    a.lse = static_cast<float*>(lse_.get()), a.lse_stride_t = p.HQ, a.lse_stride_b = p.T * p.HQ;
    const TileConfig cmp_default = find_family("cmp_fwd").default_config(p);
    cmp_fwd(p, a, nullptr, &cmp_default);
    const size_t rows = tokens(p) * p.H;
    idx_ = DeviceBuffer(rows * p.n * 4), ref_idx_ = DeviceBuffer(rows * p.n * 4);
    cnt_ = DeviceBuffer(rows * 4), ref_cnt_ = DeviceBuffer(rows * 4);
    ref_idx_.fill_bytes(0x7f), ref_cnt_.fill_bytes(0x7f);  // poisoned (0x7f7f7f7f): an unwritten entry is caught
    s_.q = a.q, s_.k_cmp = a.k, s_.lse_cmp = a.lse, s_.lse_stride_b = a.lse_stride_b, s_.lse_stride_t = p.HQ;
    SelectArgs ref = s_;
    ref.idx = static_cast<int32_t*>(ref_idx_.get()), ref.cnt = static_cast<int32_t*>(ref_cnt_.get());
    const TileConfig def = find_family("select").default_config(p);
    select_blocks(p, ref, nullptr, &def);
    s_.idx = static_cast<int32_t*>(idx_.get()), s_.cnt = static_cast<int32_t*>(cnt_.get());
    gate_.emplace(p, q_.get(), k_cmp_.get(), static_cast<const float*>(lse_.get()),
                       static_cast<const int32_t*>(ref_idx_.get()), static_cast<const int32_t*>(ref_cnt_.get()));
  }
  void launch(const TileConfig& c, CUstream s) override { select_blocks(p_, s_, s, &c); }
  // Hands over the trusted selection (idx, cnt): real inputs for slc_fwd.
  void take_selection(DeviceBuffer& idx, DeviceBuffer& cnt) {
    check_cu(driver().cuCtxSynchronize_(), "cuCtxSynchronize");  // before this case's inputs are freed
    idx = std::move(ref_idx_);
    cnt = std::move(ref_cnt_);
  }
  std::optional<std::string> check(const TileConfig& c) override {
    note_.clear();
    idx_.fill_bytes(0xff), cnt_.fill_bytes(0xff);
    launch(c, nullptr);
    const int64_t rows = static_cast<int64_t>(tokens(p_)) * p_.H;
    if (auto e = cmp_.check("cnt", cnt_.get(), ref_cnt_.get(), rows, nsa::kCompareI32, 0)) return e;
    const Comparer::Diff d = cmp_.run(idx_.get(), ref_idx_.get(), rows * p_.n, nsa::kCompareI32);
    if (d.ref_bad)
      return fmt::format("idx: the trusted result holds {} unwritten values (the trusted computation is broken, not "
                         "necessarily this candidate)",
                         d.ref_bad);
    if (d.mismatches == 0) return std::nullopt;
    // Some entries differ: near-tie swaps are correct (NSA.md), anything else is not.
    const SelectionVerdict v = gate_->judge(static_cast<const int32_t*>(idx_.get()),
                                           static_cast<const int32_t*>(cnt_.get()), d.mismatches);
    if (v.wrong)
      return fmt::format("idx: {} of {} entries differ from the trusted result, not by near ties only: {}",
                         d.mismatches, rows * p_.n, *v.wrong);
    note_ = describe_near_ties(v);
    return std::nullopt;
  }
  std::string note() const override { return note_; }

private:
  Problem p_;
  Comparer cmp_;
  DeviceBuffer q_, k_cmp_, v_cmp_, lse_, idx_, ref_idx_, cnt_, ref_cnt_;
  SelectArgs s_;
  std::optional<SelectGate> gate_;  // over the inputs above and the trusted selection
  std::string note_;
};

// Selected attention on a real selection (the default select on q of the input kind and random k_cmp): the overlap
// of neighbouring positions' selections follows the queries' kind. Trusted: the default config (one config for every
// position: the case measures one variant on the whole selection).
class SlcCase final : public TuneCase {
public:
  SlcCase(const Problem& p, InputKind inputs) : p_(p), cmp_(p) {
    q_ = query_tensor(p, inputs, 41);
    k_ = random_device_tensor(tokens(p) * p.H * p.dk, p.dtype, 42);
    v_ = random_device_tensor(tokens(p) * p.H * p.dv, p.dtype, 43);
    SelectCase(p, inputs).take_selection(idx_, cnt_);  // the default select's output on its own q and k_cmp
    {
      const int64_t rows = static_cast<int64_t>(tokens(p));
      std::vector<int32_t> idx(static_cast<size_t>(rows * p.H * p.n)), cnt(static_cast<size_t>(rows * p.H));
      idx_.download(idx.data(), idx.size() * 4);
      cnt_.download(cnt.data(), cnt.size() * 4);
      shares_ = plan_shares(overlap_plan(idx.data(), cnt.data(), rows, p.H, p.n));
    }
    o_ = DeviceBuffer(tokens(p) * p.HQ * p.dv * 2), ref_o_ = DeviceBuffer(o_.bytes());
    lse_ = DeviceBuffer(tokens(p) * p.HQ * 4), ref_lse_ = DeviceBuffer(lse_.bytes());
    a_.q = contiguous(q_.get(), p.T, p.HQ, p.dk), a_.k = contiguous(k_.get(), p.T, p.H, p.dk);
    a_.v = contiguous(v_.get(), p.T, p.H, p.dv);
    a_.idx = static_cast<const int32_t*>(idx_.get()), a_.cnt = static_cast<const int32_t*>(cnt_.get());
    a_.lse_stride_t = p.HQ, a_.lse_stride_b = p.T * p.HQ;
    const TileConfig def = find_family("slc_fwd").default_config(p);
    ref_o_.fill_bytes(0xff), ref_lse_.fill_bytes(0xff);  // poisoned: an unwritten trusted value is caught
    slc_fwd(p, args(ref_o_, ref_lse_), nullptr, &def);
  }
  void launch(const TileConfig& c, CUstream s) override { slc_fwd(p_, args(o_, lse_), s, &c); }
  std::optional<PlanShares> overlap_shares() const override { return shares_; }
  std::optional<std::string> check(const TileConfig& c) override {
    o_.fill_bytes(0xff), lse_.fill_bytes(0xff);
    launch(c, nullptr);
    const int64_t rows = static_cast<int64_t>(tokens(p_)) * p_.HQ;
    if (auto e = cmp_.check("o", o_.get(), ref_o_.get(), rows * p_.dv, kind_of(p_.dtype), tolerance(p_.dtype)))
      return e;
    return cmp_.check("lse", lse_.get(), ref_lse_.get(), rows, nsa::kCompareF32, tolerance(p_.dtype));
  }

private:
  SlcFwdArgs args(const DeviceBuffer& o, const DeviceBuffer& lse) const {
    SlcFwdArgs a = a_;
    a.o_slc = contiguous(o.get(), p_.T, p_.HQ, p_.dv);
    a.lse = static_cast<float*>(lse.get());
    return a;
  }
  Problem p_;
  Comparer cmp_;
  DeviceBuffer q_, k_, v_, idx_, cnt_, o_, ref_o_, lse_, ref_lse_;
  SlcFwdArgs a_;
  PlanShares shares_;
};

// A backward family on the gradients of a real forward (random q, k, v, do, gates in (0, 1), every branch on):
// the trusted gradients are those of the whole backward with every family's default config; a candidate runs the
// whole backward with its config for this family (defaults for the others) and its dq, dk, dv must match at NSA.md's
// tolerance. Timing runs the family's stage alone, after one whole backward with the candidate config (so the
// selection's index matches its work items); the accumulating stages then add again: the values change, the work
// does not.
class BwdCase final : public TuneCase {
public:
  BwdCase(const KernelFamily& family, const Problem& p, InputKind inputs) : f_(family), p_(p), cmp_(p) {
    const size_t tok = tokens(p), ln = tok * p.HQ * 4, on = tok * p.HQ * p.dv * 2;
    q_ = query_tensor(p, inputs, 51);
    k_ = random_device_tensor(tok * p.H * p.dk, p.dtype, 52);
    v_ = random_device_tensor(tok * p.H * p.dv, p.dtype, 53);
    do_ = random_device_tensor(tok * p.HQ * p.dv, p.dtype, 54);
    std::vector<uint16_t> g = random_normal_bits(tok * p.HQ * 3, p.dtype, 55);
    for (auto& x : g) x = float_to_bits(1.f / (1.f + std::exp(-bits_to_float(x, p.dtype))), p.dtype);
    gate_ = DeviceBuffer(g.size() * 2);
    gate_.upload(g.data(), g.size() * 2);
    for (DeviceBuffer* b : {&o_, &oc_, &os_, &ow_}) *b = DeviceBuffer(on);
    for (DeviceBuffer* b : {&lc_, &ls_, &lw_}) *b = DeviceBuffer(ln);
    idx_ = DeviceBuffer(tok * p.H * p.n * 4), cnt_ = DeviceBuffer(tok * p.H * 4);
    ForwardTensors f;
    f.q = contiguous(q_.get(), p.T, p.HQ, p.dk), f.k = contiguous(k_.get(), p.T, p.H, p.dk);
    f.v = contiguous(v_.get(), p.T, p.H, p.dv), f.o = contiguous(o_.get(), p.T, p.HQ, p.dv);
    const char* g0 = static_cast<const char*>(gate_.get());
    f.g_cmp = g0, f.g_slc = g0 + tok * p.HQ * 2, f.g_win = g0 + 2 * tok * p.HQ * 2;
    f.gate_stride_b = p.T * p.HQ, f.gate_stride_t = p.HQ;
    f.o_cmp = contiguous(oc_.get(), p.T, p.HQ, p.dv), f.o_slc = contiguous(os_.get(), p.T, p.HQ, p.dv);
    f.o_win = contiguous(ow_.get(), p.T, p.HQ, p.dv);
    f.lse_cmp = static_cast<float*>(lc_.get()), f.lse_slc = static_cast<float*>(ls_.get());
    f.lse_win = static_cast<float*>(lw_.get()), f.lse_stride_b = p.T * p.HQ, f.lse_stride_t = p.HQ;
    f.idx = static_cast<int32_t*>(idx_.get()), f.cnt = static_cast<int32_t*>(cnt_.get());
    forward(p, f, nullptr);

    t_.q = f.q, t_.k = f.k, t_.v = f.v;
    t_.g_cmp = f.g_cmp, t_.g_slc = f.g_slc, t_.g_win = f.g_win;
    t_.gate_stride_b = f.gate_stride_b, t_.gate_stride_t = f.gate_stride_t;
    t_.o_cmp = f.o_cmp, t_.o_slc = f.o_slc, t_.o_win = f.o_win;
    t_.lse_cmp = f.lse_cmp, t_.lse_slc = f.lse_slc, t_.lse_win = f.lse_win;
    t_.lse_stride_b = f.lse_stride_b, t_.lse_stride_t = f.lse_stride_t;
    t_.idx = f.idx, t_.cnt = f.cnt;
    t_.dout = contiguous(do_.get(), p.T, p.HQ, p.dv);
    nq_ = static_cast<int64_t>(tok) * p.HQ * p.dk, nk_ = static_cast<int64_t>(tok) * p.H * p.dk;
    nv_ = static_cast<int64_t>(tok) * p.H * p.dv;
    for (DeviceBuffer* b : {&dq_, &ref_dq_}) *b = DeviceBuffer(nq_ * 2);
    for (DeviceBuffer* b : {&dk_, &ref_dk_}) *b = DeviceBuffer(nk_ * 2);
    for (DeviceBuffer* b : {&dv_, &ref_dv_}) *b = DeviceBuffer(nv_ * 2);
    ws_ = DeviceBuffer(backward_workspace_bytes(p, t_));
    t_.workspace = ws_.get(), t_.workspace_bytes = ws_.bytes();
    for (const char* n : {"cmp_bwd_dq", "cmp_bwd_dkv", "slc_bwd_dq", "slc_bwd_dkv", "win_bwd_dq", "win_bwd_dkv"})
      defaults_[n] = find_family(n).default_config(p);
    for (DeviceBuffer* b : {&ref_dq_, &ref_dk_, &ref_dv_}) b->fill_bytes(0xff);  // poisoned: unwritten is caught
    backward(p_, grads(ref_dq_, ref_dk_, ref_dv_), nullptr, configs(nullptr));
  }
  void launch(const TileConfig& c, CUstream s) override {
    auto it = stages_.find(c);
    if (it == stages_.end()) {
      it = stages_.emplace(c, backward_stages(p_, grads(dq_, dk_, dv_), configs(&c))).first;
      for (const BackwardStage& st : it->second) st.run(s);
    }
    for (const BackwardStage& st : it->second)
      if (st.name == f_.name()) st.run(s);
  }
  std::optional<std::string> check(const TileConfig& c) override {
    for (DeviceBuffer* b : {&dq_, &dk_, &dv_}) b->fill_bytes(0xff);
    backward(p_, grads(dq_, dk_, dv_), nullptr, configs(&c));
    const int kind = kind_of(p_.dtype);
    if (auto e = cmp_.check("dq", dq_.get(), ref_dq_.get(), nq_, kind, tolerance(p_.dtype))) return e;
    if (auto e = cmp_.check("dk", dk_.get(), ref_dk_.get(), nk_, kind, tolerance(p_.dtype))) return e;
    return cmp_.check("dv", dv_.get(), ref_dv_.get(), nv_, kind, tolerance(p_.dtype));
  }

private:
  BackwardTensors grads(const DeviceBuffer& dq, const DeviceBuffer& dk, const DeviceBuffer& dv) const {
    BackwardTensors t = t_;
    t.dq = contiguous(dq.get(), p_.T, p_.HQ, p_.dk), t.dk = contiguous(dk.get(), p_.T, p_.H, p_.dk);
    t.dv = contiguous(dv.get(), p_.T, p_.H, p_.dv);
    return t;
  }
  // Every family's default, and `c` for this one (null: the defaults only).
  BackwardConfigs configs(const TileConfig* c) {
    cur_ = defaults_;
    if (c != nullptr) cur_[std::string(f_.name())] = *c;
    BackwardConfigs b;
    b.cmp_dq = &cur_.at("cmp_bwd_dq"), b.cmp_dkv = &cur_.at("cmp_bwd_dkv");
    b.slc_dq = &cur_.at("slc_bwd_dq"), b.slc_dkv = &cur_.at("slc_bwd_dkv");
    b.win_dq = &cur_.at("win_bwd_dq"), b.win_dkv = &cur_.at("win_bwd_dkv");
    return b;
  }
  const KernelFamily& f_;
  Problem p_;
  Comparer cmp_;
  DeviceBuffer q_, k_, v_, do_, gate_, o_, oc_, os_, ow_, lc_, ls_, lw_, idx_, cnt_;
  DeviceBuffer dq_, dk_, dv_, ref_dq_, ref_dk_, ref_dv_, ws_;
  BackwardTensors t_;
  int64_t nq_ = 0, nk_ = 0, nv_ = 0;
  std::map<std::string, TileConfig> defaults_, cur_;
  std::map<TileConfig, std::vector<BackwardStage>> stages_;
};

// One decode step (Tq = 1) of B sequences filled to the problem's T (the cache's capacity: pages of 128 tokens,
// identity page tables; every sequence holds the same random tokens, appended once with the compressed entries
// completed by decode_append). Trusted: the CUDA-core kernel in one launch (MMA=0, SPLIT=1), an implementation
// independent of the tensor-core and split-KV paths; a candidate's output must match it at NSA.md's tolerance.
class DecodeCase final : public TuneCase {
public:
  explicit DecodeCase(const Problem& p) : p_(p), cmp_(p) {
    constexpr int kPage = 128;
    const int64_t max_pages = (p.T + kPage - 1) / kPage, pages = p.B * max_pages;
    if (max_pages * kPage != p.T)
      throw UsageError(fmt::format("decode tuning: T = {} must be a multiple of the tuning cache's page of {} tokens",
                                   p.T, kPage));
    max_cmp_ = std::max<int64_t>(num_cmp(p), 1);
    std::vector<int32_t> table(static_cast<size_t>(pages)), lens(static_cast<size_t>(p.B), static_cast<int32_t>(p.T)),
        zeros(static_cast<size_t>(p.B), 0);
    for (int64_t i = 0; i < pages; ++i) table[static_cast<size_t>(i)] = static_cast<int32_t>(i);
    table_ = DeviceBuffer(table.size() * 4), lens_ = DeviceBuffer(lens.size() * 4);
    DeviceBuffer zero(zeros.size() * 4);
    table_.upload(table.data(), table.size() * 4), lens_.upload(lens.data(), lens.size() * 4);
    zero.upload(zeros.data(), zeros.size() * 4);
    kpool_ = DeviceBuffer(static_cast<size_t>(pages * kPage) * p.H * p.dk * 2);
    vpool_ = DeviceBuffer(static_cast<size_t>(pages * kPage) * p.H * p.dv * 2);
    kcmp_ = DeviceBuffer(static_cast<size_t>(p.B * max_cmp_) * p.H * p.dk * 2);
    vcmp_ = DeviceBuffer(static_cast<size_t>(p.B * max_cmp_) * p.H * p.dv * 2);
    PageTable pt;
    pt.pages = static_cast<const int32_t*>(table_.get()), pt.stride = max_pages, pt.page_size = kPage;
    {
      DeviceBuffer k = random_device_tensor(static_cast<size_t>(p.T) * p.H * p.dk, p.dtype, 61);
      DeviceBuffer v = random_device_tensor(static_cast<size_t>(p.T) * p.H * p.dv, p.dtype, 62);
      AppendTensors a;
      a.k_new = {k.get(), 0, static_cast<int64_t>(p.H) * p.dk, p.dk};  // batch stride 0: the same tokens for all
      a.v_new = {v.get(), 0, static_cast<int64_t>(p.H) * p.dv, p.dv};
      a.k_pool = kpool_.get(), a.v_pool = vpool_.get(), a.num_pages = pages, a.table = pt;
      a.seqlens = static_cast<const int32_t*>(zero.get());
      a.k_cmp = contiguous(kcmp_.get(), max_cmp_, p.H, p.dk), a.v_cmp = contiguous(vcmp_.get(), max_cmp_, p.H, p.dv);
      a.max_cmp = max_cmp_;
      decode_append(p, static_cast<int>(p.T), a, nullptr);
    }
    q_ = random_device_tensor(static_cast<size_t>(p.B) * p.HQ * p.dk, p.dtype, 63);
    std::vector<uint16_t> gbits = random_normal_bits(static_cast<size_t>(p.B) * p.HQ, p.dtype, 64);
    for (auto& g : gbits) g &= 0x7fff;  // positive gates
    gate_ = DeviceBuffer(gbits.size() * 2);
    gate_.upload(gbits.data(), gbits.size() * 2);
    o_ = DeviceBuffer(static_cast<size_t>(p.B) * p.HQ * p.dv * 2), ref_o_ = DeviceBuffer(o_.bytes());
    t_.q = contiguous(q_.get(), 1, p.HQ, p.dk);
    t_.g_cmp = t_.g_slc = t_.g_win = gate_.get();
    t_.gate_stride_b = p.HQ, t_.gate_stride_t = p.HQ;
    t_.cache = {kpool_.get(), vpool_.get(), pages}, t_.table = pt;
    t_.seqlens = static_cast<const int32_t*>(lens_.get());
    t_.k_cmp = contiguous(kcmp_.get(), max_cmp_, p.H, p.dk), t_.v_cmp = contiguous(vcmp_.get(), max_cmp_, p.H, p.dv);
    t_.max_cmp = max_cmp_;
    // One workspace for every candidate: the largest split's.
    const KernelFamily& f = find_family("decode");
    TileConfig widest = f.default_config(p);
    widest["SPLIT"] = 64;
    ws_bytes_ = decode_workspace_bytes(p, 1, &widest);
    ws_ = DeviceBuffer(std::max<size_t>(ws_bytes_, 256));
    TileConfig trusted = f.default_config(p);
    trusted["MMA"] = 0, trusted["SPLIT"] = 1;
    int threads = 128;
    while (threads < 512 && (p.HQ / p.H * p.dv + threads - 1) / threads > 32) threads *= 2;
    trusted["THREADS"] = threads, trusted["KT"] = 32;
    ref_o_.fill_bytes(0xff);  // poisoned: an unwritten trusted value is caught
    decode(p, 1, tensors(ref_o_), nullptr, &trusted);
  }
  void launch(const TileConfig& c, CUstream s) override { decode(p_, 1, tensors(o_), s, &c); }
  std::optional<std::string> check(const TileConfig& c) override {
    o_.fill_bytes(0xff);
    launch(c, nullptr);
    return cmp_.check("o", o_.get(), ref_o_.get(), p_.B * p_.HQ * p_.dv, kind_of(p_.dtype), tolerance(p_.dtype));
  }

private:
  DecodeTensors tensors(const DeviceBuffer& o) const {
    DecodeTensors t = t_;
    t.o = contiguous(o.get(), 1, p_.HQ, p_.dv);
    t.workspace = ws_.get(), t.workspace_bytes = ws_bytes_;
    return t;
  }
  Problem p_;
  Comparer cmp_;
  int64_t max_cmp_ = 0;
  size_t ws_bytes_ = 0;
  DeviceBuffer table_, lens_, kpool_, vpool_, kcmp_, vcmp_, q_, gate_, o_, ref_o_, ws_;
  DecodeTensors t_;
};

class FaultCase final : public TuneCase {
public:
  explicit FaultCase(const Problem& p) : p_(p), cmp_(p) {
    n_ = static_cast<int64_t>(tokens(p)) * p.HQ;
    out_ = DeviceBuffer(n_ * 4), ref_ = DeviceBuffer(n_ * 4), never_ = DeviceBuffer(4);
    never_.fill_bytes(0);
    std::vector<int32_t> r(n_);
    for (int64_t i = 0; i < n_; ++i) r[i] = static_cast<int32_t>(3 * i + 1);
    ref_.upload(r.data(), n_ * 4);
  }
  void launch(const TileConfig& c, CUstream s) override {
    const KernelFamily& f = find_family("fault_test");
    const Kernel& k = runtime_kernel(KernelSpec{&f, p_, c, "sm_90a"});
    const LaunchGeometry g = f.geometry(p_, c);
    FaultTestParams prm{static_cast<int32_t*>(out_.get()), n_, static_cast<volatile nsa::i32*>(never_.get())};
    k.launch(g.grid, g.block, 0, s, &prm);
  }
  std::optional<std::string> check(const TileConfig& c) override {
    out_.fill_bytes(0xff);
    launch(c, nullptr);
    return cmp_.check("out", out_.get(), ref_.get(), n_, nsa::kCompareI32, 0);
  }

private:
  Problem p_;
  Comparer cmp_;
  int64_t n_ = 0;
  DeviceBuffer out_, ref_, never_;
};

}  // namespace

std::optional<std::string> gate_compare(const Problem& problem, const void* candidate, const void* trusted, int64_t n,
                                        int kind, double tolerance, bool nonzero) {
  Comparer c(problem);
  return c.check("t", candidate, trusted, n, kind, tolerance, nonzero);
}

bool is_backward_family(const KernelFamily& f) {
  const std::string_view n = f.name();
  return n == "cmp_bwd_dq" || n == "cmp_bwd_dkv" || n == "slc_bwd_dq" || n == "slc_bwd_dkv" || n == "win_bwd_dq" ||
         n == "win_bwd_dkv";
}

bool is_tunable(const KernelFamily& f) {
  const std::string_view n = f.name();
  return n == "pool" || n == "cmp_fwd" || n == "select" || n == "slc_fwd" || n == "win_fwd" || n == "fault_test" ||
         n == "decode" || is_backward_family(f);
}

std::unique_ptr<TuneCase> make_tune_case(const KernelFamily& f, const Problem& p, InputKind inputs) {
  const std::string_view n = f.name();
  if (n == "win_fwd") return std::make_unique<AttnCase>(p, false, inputs);
  if (n == "cmp_fwd") return std::make_unique<AttnCase>(p, true, inputs);
  if (n == "pool") return std::make_unique<PoolCase>(p);
  if (n == "select") return std::make_unique<SelectCase>(p, inputs);
  if (n == "slc_fwd") return std::make_unique<SlcCase>(p, inputs);
  if (n == "fault_test") return std::make_unique<FaultCase>(p);
  if (n == "decode") return std::make_unique<DecodeCase>(p);
  if (is_backward_family(f)) return std::make_unique<BwdCase>(f, p, inputs);
  throw UsageError(fmt::format("the tuner cannot measure family {}: tunable are pool, cmp_fwd, select, slc_fwd, "
                               "win_fwd, decode and the backward's cmp_bwd_dq, cmp_bwd_dkv, slc_bwd_dq, "
                               "slc_bwd_dkv, win_bwd_dq, win_bwd_dkv",
                               n));
}

}  // namespace nsajit
