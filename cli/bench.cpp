#include "cli/bench.h"

#include <fmt/format.h>
#include <llvm/Support/JSON.h>
#include <llvm/Support/raw_ostream.h>

#include <chrono>
#include <functional>
#include <system_error>

#include "base/error.h"
#include "codegen/family.h"
#include "runtime/attn_fwd_api.h"
#include "runtime/backward.h"
#include "runtime/decode_api.h"
#include "runtime/device.h"
#include "runtime/driver.h"
#include "runtime/forward.h"
#include "runtime/phase_times.h"
#include "runtime/pool_api.h"
#include "runtime/select_api.h"
#include "runtime/slc_fwd_api.h"
#include "runtime/tuned.h"
#include "tuner/inputs.h"
#include "tuner/timing.h"

namespace nsajit {
namespace {

struct Row {
  std::string what;
  double ms = 0, p20 = 0, p80 = 0, flops = 0, bytes = 0;
};

// The table of timed rows (the first column `label`, `width` wide), each also added to `json` under `label`.
void print_rows(const std::vector<Row>& rows, const char* label, int width, const Problem& p, int64_t T,
                InputKind inputs, llvm::json::Array& json) {
  fmt::print("{:<{}} {:>10} {:>9} {:>9} {:>8} {:>8}\n", label, width, "median ms", "TFLOP/s", "GB/s", "%matrix",
             "%copy");
  for (const Row& r : rows) {
    const double tf = r.flops / (r.ms * 1e-3) / 1e12, gb = r.bytes / (r.ms * 1e-3) / 1e9;
    fmt::print("{:<{}} {:>10.3f} {:>9.1f} {:>9.0f} {:>7.1f}% {:>7.1f}%   p20 {:.3f} p80 {:.3f}\n", r.what, width, r.ms,
               tf, gb, 100 * tf / kH200MatrixTflops, 100 * gb / kH200CopyGBs, r.p20, r.p80);
    json.push_back(llvm::json::Object{{"problem", p.describe()},
                                      {"T", T},
                                      {"inputs", std::string(input_kind_name(inputs))},
                                      {label, r.what},
                                      {"median_ms", r.ms},
                                      {"p20_ms", r.p20},
                                      {"p80_ms", r.p80},
                                      {"tflops", tf},
                                      {"gbs", gb}});
  }
}

void write_json(const std::string& path, const Context& ctx, llvm::json::Array rows) {
  if (path.empty()) return;
  std::error_code ec;
  llvm::raw_fd_ostream os(path, ec);
  if (ec) throw Error(fmt::format("cannot write {}: {}", path, ec.message()));
  os << llvm::formatv("{0:2}", llvm::json::Value(llvm::json::Object{{"device", ctx.info().fingerprint()},
                                                                    {"rows", std::move(rows)}}));
}

}  // namespace

// Queries of the kind asked for, on the device.
static DeviceBuffer queries(const Problem& p, InputKind kind) {
  const std::vector<uint16_t> bits = query_bits(p, kind, 1);
  DeviceBuffer q(bits.size() * 2);
  q.upload(bits.data(), bits.size() * 2);
  return q;
}

// The selection's overlap statistic, from the device's idx/cnt.
static std::string overlap_line(const Problem& p, InputKind kind, const DeviceBuffer& idx, const DeviceBuffer& cnt) {
  std::vector<int32_t> i(static_cast<size_t>(p.B * p.T * p.H * p.n)), c(static_cast<size_t>(p.B * p.T * p.H));
  idx.download(i.data(), i.size() * 4);
  cnt.download(c.data(), c.size() * 4);
  const SelectionOverlap o = selection_overlap(i.data(), c.data(), p.B, p.T, p.H, p.n);
  const PlanShares shares = plan_shares(overlap_plan(i.data(), c.data(), p.B * p.T, p.H, p.n));
  return fmt::format("inputs {}: neighbour overlap (Jaccard) {:.2f}, distinct blocks per 64 positions {:.1f}; "
                     "{:.0f}% of the (64-position span, KV head) entries in the high-overlap bucket",
                     input_kind_name(kind), o.jaccard, o.distinct, 100 * shares.high);
}

int run_forward_bench(const Problem& base, const std::vector<int64_t>& seqs, const std::string& json_path,
                      InputKind inputs) {
  std::string why;
  if (!driver_available(&why)) {
    fmt::print(stderr, "nsajit bench needs a GPU: {}\n", why);
    return 1;
  }
  Context ctx(0);
  fmt::print("{}\n{}\n", ctx.info().name, ctx.info().fingerprint());
  bool first = true;
  llvm::json::Array json_rows;
  for (int64_t T : seqs) {
    Problem p = base;
    p.T = T;
    p.validate();
    const size_t tokens = static_cast<size_t>(p.B * p.T);
    const int64_t nc = p.T >= p.l ? (p.T - p.l) / p.d + 1 : 0;
    DeviceBuffer q = queries(p, inputs);
    DeviceBuffer k = random_device_tensor(tokens * p.H * p.dk, p.dtype, 2);
    DeviceBuffer v = random_device_tensor(tokens * p.H * p.dv, p.dtype, 3);
    // Gates: random bits of a normal sample are fine for timing; keep them in (0, 1) anyway via the sign bit.
    std::vector<uint16_t> gbits = random_normal_bits(tokens * p.HQ, p.dtype, 4);
    for (auto& g : gbits) g &= 0x7fff;
    DeviceBuffer gate(tokens * p.HQ * 2);
    gate.upload(gbits.data(), gbits.size() * 2);
    DeviceBuffer o(tokens * p.HQ * p.dv * 2), k_cmp(std::max<int64_t>(nc, 1) * p.H * p.dk * 2),
        v_cmp(std::max<int64_t>(nc, 1) * p.H * p.dv * 2), lse(tokens * p.HQ * 4), idx(tokens * p.H * p.n * 4),
        cnt(tokens * p.H * 4), ws(forward_workspace_bytes(p)), plan(slc_plan_bytes(p));

    ForwardTensors f;
    f.q = contiguous(q.get(), p.T, p.HQ, p.dk), f.k = contiguous(k.get(), p.T, p.H, p.dk);
    f.v = contiguous(v.get(), p.T, p.H, p.dv), f.o = contiguous(o.get(), p.T, p.HQ, p.dv);
    f.g_cmp = f.g_slc = f.g_win = gate.get();
    f.gate_stride_b = p.T * p.HQ, f.gate_stride_t = p.HQ;
    f.workspace = ws.get(), f.workspace_bytes = ws.bytes();
    // One forward with the intermediates kept, so each kernel can then be timed on real inputs.
    ForwardTensors keep = f;
    keep.k_cmp = contiguous(k_cmp.get(), nc, p.H, p.dk), keep.v_cmp = contiguous(v_cmp.get(), nc, p.H, p.dv);
    keep.lse_cmp = static_cast<float*>(lse.get()), keep.lse_stride_b = p.T * p.HQ, keep.lse_stride_t = p.HQ;
    keep.idx = static_cast<int32_t*>(idx.get()), keep.cnt = static_cast<int32_t*>(cnt.get());
    PoolArgs pk;
    pk.x = f.k, pk.y = keep.k_cmp, pk.dim = p.dk;
    PoolArgs pv = pk;
    pv.x = f.v, pv.y = keep.v_cmp, pv.dim = p.dv;
    // The first calls of the process: tile configs looked up, kernels loaded (from the CUBIN cache when warm).
    const PhaseTotals before = phase_totals();  // the context's creation and device query, earlier rows
    if (first) reset_phase_times();
    const auto t0 = std::chrono::steady_clock::now();
    mean_pool(p, pk, nullptr);
    mean_pool(p, pv, nullptr);
    forward(p, keep, nullptr);
    const double startup_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    ctx.synchronize();
    if (first) {
      const PhaseTotals phases = phase_totals();
      double accounted = 0;
      for (double ms : phases.ms) accounted += ms;
      fmt::print("start-up: the first forward call (config lookup, kernel load, launch) took {:.1f} ms on the host: "
                 "{}; the rest (argument checks, launches) {:.1f} ms. Before it, with the context: {}\n",
                 startup_ms, describe_phases(phases), startup_ms - accounted, describe_phases(before));
    }
    first = false;

    AttnFwdArgs cmp;
    cmp.q = f.q, cmp.k = keep.k_cmp, cmp.v = keep.v_cmp;
    cmp.lse = keep.lse_cmp, cmp.lse_stride_b = keep.lse_stride_b, cmp.lse_stride_t = keep.lse_stride_t;
    cmp.gate = gate.get(), cmp.gate_stride_b = f.gate_stride_b, cmp.gate_stride_t = f.gate_stride_t, cmp.out = f.o;
    SelectArgs sel;
    sel.q = f.q, sel.k_cmp = keep.k_cmp, sel.lse_cmp = keep.lse_cmp;
    sel.lse_stride_b = keep.lse_stride_b, sel.lse_stride_t = keep.lse_stride_t, sel.idx = keep.idx, sel.cnt = keep.cnt;
    SlcFwdArgs slc;
    slc.q = f.q, slc.k = f.k, slc.v = f.v, slc.idx = keep.idx, slc.cnt = keep.cnt;
    slc.gate = gate.get(), slc.gate_stride_b = f.gate_stride_b, slc.gate_stride_t = f.gate_stride_t, slc.out = f.o;
    slc.accumulate = true;
    slc.plan = static_cast<uint8_t*>(plan.get()), slc.plan_bytes = plan.bytes();  // the forward's overlap dispatch
    AttnFwdArgs win;
    win.q = f.q, win.k = f.k, win.v = f.v;
    win.gate = gate.get(), win.gate_stride_b = f.gate_stride_b, win.gate_stride_t = f.gate_stride_t, win.out = f.o;
    win.accumulate = true;

    Problem pool_k = p, pool_v = p;
    pool_v.dk = p.dv;
    std::vector<Row> rows;
    auto add = [&](const std::string& what, const std::function<void(CUstream)>& launch, double flops, double bytes) {
      const TimingStats t = time_gpu(launch);
      rows.push_back({what, t.median_ms, t.p20_ms, t.p80_ms, flops, bytes});
    };
    const KernelFamily &fpool = find_family("pool"), &fcmp = find_family("cmp_fwd"), &fsel = find_family("select"),
                       &fslc = find_family("slc_fwd"), &fwin = find_family("win_fwd");
    add("pool (k and v)", [&](CUstream s) { mean_pool(p, pk, s), mean_pool(p, pv, s); },
        fpool.flops(pool_k) + fpool.flops(pool_v), fpool.min_bytes(pool_k) + fpool.min_bytes(pool_v));
    add("cmp_fwd", [&](CUstream s) { cmp_fwd(p, cmp, s); }, fcmp.flops(p), fcmp.min_bytes(p));
    add("select", [&](CUstream s) { select_blocks(p, sel, s); }, fsel.flops(p), fsel.min_bytes(p));
    add("slc_fwd", [&](CUstream s) { slc_fwd(p, slc, s); }, fslc.flops(p), fslc.min_bytes(p));
    if (p.w > 0) add("win_fwd", [&](CUstream s) { win_fwd(p, win, s); }, fwin.flops(p), fwin.min_bytes(p));
    double total_flops = 0, total_bytes = 0;
    for (const Row& r : rows) total_flops += r.flops, total_bytes += r.bytes;
    add("whole forward", [&](CUstream s) { forward(p, f, s); }, total_flops, total_bytes);

    fmt::print("\n{}\n{}\n", p.describe(), overlap_line(p, inputs, idx, cnt));
    for (const KernelFamily* fam : {&fpool, &fcmp, &fsel, &fslc, &fwin}) {
      if (fam == &fwin && p.w == 0) continue;
      if (fam->overlap_dependent())
        for (OverlapBucket b : kAllOverlapBuckets)
          fmt::print("  {:<8} {}\n", fam->name(), resolve_config(*fam, p, p, b).why);
      else
        fmt::print("  {:<8} {}\n", fam->name(), resolve_config(*fam, p, p).why);
    }
    print_rows(rows, "kernel", 16, p, T, inputs, json_rows);
  }
  write_json(json_path, ctx, std::move(json_rows));
  return 0;
}

int run_backward_bench(const Problem& base, const std::vector<int64_t>& seqs, const std::string& json_path,
                       bool with_forward, InputKind inputs) {
  std::string why;
  if (!driver_available(&why)) {
    fmt::print(stderr, "nsajit bench needs a GPU: {}\n", why);
    return 1;
  }
  Context ctx(0);
  fmt::print("{}\n{}\n", ctx.info().name, ctx.info().fingerprint());
  llvm::json::Array json_rows;
  for (int64_t T : seqs) {
    Problem p = base;
    p.T = T;
    p.validate();
    const size_t tokens = static_cast<size_t>(p.B * p.T);
    DeviceBuffer q = queries(p, inputs);
    DeviceBuffer k = random_device_tensor(tokens * p.H * p.dk, p.dtype, 2);
    DeviceBuffer v = random_device_tensor(tokens * p.H * p.dv, p.dtype, 3);
    DeviceBuffer dout = random_device_tensor(tokens * p.HQ * p.dv, p.dtype, 5);
    std::vector<uint16_t> gbits = random_normal_bits(tokens * p.HQ, p.dtype, 4);
    for (auto& g : gbits) g &= 0x7fff;
    DeviceBuffer gate(tokens * p.HQ * 2);
    gate.upload(gbits.data(), gbits.size() * 2);
    const size_t on = tokens * p.HQ * p.dv * 2, ln = tokens * p.HQ * 4;
    DeviceBuffer o(on), oc(on), os(on), ow(on), lc(ln), ls(ln), lw(ln), idx(tokens * p.H * p.n * 4),
        cnt(tokens * p.H * 4), fws(forward_workspace_bytes(p));
    DeviceBuffer dq(tokens * p.HQ * p.dk * 2), dk(tokens * p.H * p.dk * 2), dv(tokens * p.H * p.dv * 2);
    DeviceBuffer dg(3 * ln / 2);

    ForwardTensors f;
    f.q = contiguous(q.get(), p.T, p.HQ, p.dk), f.k = contiguous(k.get(), p.T, p.H, p.dk);
    f.v = contiguous(v.get(), p.T, p.H, p.dv), f.o = contiguous(o.get(), p.T, p.HQ, p.dv);
    f.g_cmp = f.g_slc = f.g_win = gate.get();
    f.gate_stride_b = p.T * p.HQ, f.gate_stride_t = p.HQ;
    f.o_cmp = contiguous(oc.get(), p.T, p.HQ, p.dv), f.o_slc = contiguous(os.get(), p.T, p.HQ, p.dv);
    f.o_win = contiguous(ow.get(), p.T, p.HQ, p.dv);
    f.lse_cmp = static_cast<float*>(lc.get()), f.lse_slc = static_cast<float*>(ls.get());
    f.lse_win = static_cast<float*>(lw.get()), f.lse_stride_b = p.T * p.HQ, f.lse_stride_t = p.HQ;
    f.idx = static_cast<int32_t*>(idx.get()), f.cnt = static_cast<int32_t*>(cnt.get());
    f.workspace = fws.get(), f.workspace_bytes = fws.bytes();

    BackwardTensors b;
    b.q = f.q, b.k = f.k, b.v = f.v;
    b.g_cmp = b.g_slc = b.g_win = gate.get();
    b.gate_stride_b = f.gate_stride_b, b.gate_stride_t = f.gate_stride_t;
    b.o_cmp = f.o_cmp, b.o_slc = f.o_slc, b.o_win = f.o_win;
    b.lse_cmp = f.lse_cmp, b.lse_slc = f.lse_slc, b.lse_win = f.lse_win;
    b.lse_stride_b = f.lse_stride_b, b.lse_stride_t = f.lse_stride_t;
    b.idx = f.idx, b.cnt = f.cnt;
    b.dout = contiguous(dout.get(), p.T, p.HQ, p.dv);
    b.dq = contiguous(dq.get(), p.T, p.HQ, p.dk), b.dk = contiguous(dk.get(), p.T, p.H, p.dk);
    b.dv = contiguous(dv.get(), p.T, p.H, p.dv);
    b.dg_cmp = dg.get(), b.dg_slc = static_cast<char*>(dg.get()) + tokens * p.HQ * 2;
    b.dg_win = static_cast<char*>(dg.get()) + 2 * tokens * p.HQ * 2;
    b.dg_stride_b = p.T * p.HQ, b.dg_stride_t = p.HQ;
    DeviceBuffer bws(backward_workspace_bytes(p, b));
    b.workspace = bws.get(), b.workspace_bytes = bws.bytes();

    const auto t0 = std::chrono::steady_clock::now();
    forward(p, f, nullptr);
    backward(p, b, nullptr);
    ctx.synchronize();
    const double startup_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();

    std::vector<Row> rows;
    auto add = [&](const std::string& what, const std::function<void(CUstream)>& launch, double flops, double bytes) {
      const TimingStats t = time_gpu(launch);
      rows.push_back({what, t.median_ms, t.p20_ms, t.p80_ms, flops, bytes});
    };
    double bwd_flops = 0, bwd_bytes = 0;
    for (const BackwardStage& st : backward_stages(p, b)) {
      double fl = 0, by = 0;
      if (st.name != "zero" && st.name != "pool") {
        const KernelFamily& fam = find_family(st.name);
        fl = fam.flops(p), by = fam.min_bytes(p);
      }
      bwd_flops += fl, bwd_bytes += by;
      add(st.name, st.run, fl, by);
    }
    add("whole backward", [&](CUstream s) { backward(p, b, s); }, bwd_flops, bwd_bytes);
    if (with_forward) {
      double fwd_flops = 0;
      for (const char* n : {"cmp_fwd", "select", "slc_fwd", "win_fwd"})
        if (std::string(n) != "win_fwd" || p.w > 0) fwd_flops += find_family(n).flops(p);
      add("whole forward (saving)", [&](CUstream s) { forward(p, f, s); }, fwd_flops, 0);
      add("forward + backward", [&](CUstream s) { forward(p, f, s), backward(p, b, s); }, fwd_flops + bwd_flops, 0);
    }

    fmt::print("\n{}  (backward workspace {:.1f} MiB; first forward + backward call {:.0f} ms on the host)\n{}\n",
               p.describe(), bws.bytes() / 1048576.0, startup_ms, overlap_line(p, inputs, idx, cnt));
    for (const char* n : {"cmp_bwd_dq", "cmp_bwd_dkv", "slc_bwd_dq", "slc_bwd_dkv", "win_bwd_dq", "win_bwd_dkv"})
      fmt::print("  {:<12} {}\n", n, resolve_config(find_family(n), p, p).why);
    print_rows(rows, "stage", 24, p, T, inputs, json_rows);
  }
  write_json(json_path, ctx, std::move(json_rows));
  return 0;
}

}  // namespace nsajit

namespace nsajit {

// NSA decode (runtime/decode_api.h): B sequences of T tokens each in a paged cache (identity page table, pages of
// 128 tokens), the compressed cache filled by decode_append (one append of all T tokens; every sequence holds the
// same random tokens, which changes no byte count), then one decode step of Tq query tokens per sequence timed
// (L2 flushed before each repetition). Bytes: NSA.md's decode model, the K/V rows the three branches read.
int run_decode_bench(const Problem& base, const std::vector<int64_t>& seqs, int Tq, const std::string& json_path,
                     const TileConfig* config) {
  std::string why;
  if (!driver_available(&why)) {
    fmt::print(stderr, "nsajit bench needs a GPU: {}\n", why);
    return 1;
  }
  Context ctx(0);
  fmt::print("{}\n{}\n", ctx.info().name, ctx.info().fingerprint());
  llvm::json::Array json_rows;
  for (int64_t T : seqs) {
    Problem p = base;
    const int page = 128;
    const int64_t max_pages = (T + page - 1) / page;
    p.T = max_pages * page;
    p.validate();
    const int64_t pages = p.B * max_pages, max_cmp = std::max<int64_t>(p.T >= p.l ? (p.T - p.l) / p.d + 1 : 0, 1);
    std::vector<int32_t> table(static_cast<size_t>(pages)), lens(static_cast<size_t>(p.B), static_cast<int32_t>(T)),
        zeros(static_cast<size_t>(p.B), 0);
    for (int64_t i = 0; i < pages; ++i) table[static_cast<size_t>(i)] = static_cast<int32_t>(i);
    DeviceBuffer dtable(table.size() * 4), dlens(lens.size() * 4), dzero(zeros.size() * 4);
    dtable.upload(table.data(), table.size() * 4), dlens.upload(lens.data(), lens.size() * 4);
    dzero.upload(zeros.data(), zeros.size() * 4);
    DeviceBuffer kpool(static_cast<size_t>(pages * page) * p.H * p.dk * 2),
        vpool(static_cast<size_t>(pages * page) * p.H * p.dv * 2),
        kcmp(static_cast<size_t>(p.B * max_cmp) * p.H * p.dk * 2), vcmp(static_cast<size_t>(p.B * max_cmp) * p.H * p.dv * 2);
    {
      DeviceBuffer k = random_device_tensor(static_cast<size_t>(T) * p.H * p.dk, p.dtype, 2);
      DeviceBuffer v = random_device_tensor(static_cast<size_t>(T) * p.H * p.dv, p.dtype, 3);
      AppendTensors a;
      a.k_new = {k.get(), 0, static_cast<int64_t>(p.H) * p.dk, p.dk};  // batch stride 0: one sequence's tokens for all
      a.v_new = {v.get(), 0, static_cast<int64_t>(p.H) * p.dv, p.dv};
      a.k_pool = kpool.get(), a.v_pool = vpool.get(), a.num_pages = pages;
      a.table.pages = static_cast<const int32_t*>(dtable.get()), a.table.stride = max_pages, a.table.page_size = page;
      a.seqlens = static_cast<const int32_t*>(dzero.get());
      a.k_cmp = contiguous(kcmp.get(), max_cmp, p.H, p.dk), a.v_cmp = contiguous(vcmp.get(), max_cmp, p.H, p.dv);
      a.max_cmp = max_cmp;
      decode_append(p, static_cast<int>(T), a, nullptr);
      ctx.synchronize();
    }
    DeviceBuffer q = random_device_tensor(static_cast<size_t>(p.B * Tq) * p.HQ * p.dk, p.dtype, 4);
    std::vector<uint16_t> gbits = random_normal_bits(static_cast<size_t>(p.B * Tq) * p.HQ, p.dtype, 5);
    for (auto& g : gbits) g &= 0x7fff;
    DeviceBuffer gate(gbits.size() * 2), o(static_cast<size_t>(p.B * Tq) * p.HQ * p.dv * 2);
    gate.upload(gbits.data(), gbits.size() * 2);
    DecodeTensors t;
    t.q = contiguous(q.get(), Tq, p.HQ, p.dk), t.o = contiguous(o.get(), Tq, p.HQ, p.dv);
    t.g_cmp = t.g_slc = t.g_win = gate.get();
    t.gate_stride_b = static_cast<int64_t>(Tq) * p.HQ, t.gate_stride_t = p.HQ;
    t.cache = {kpool.get(), vpool.get(), pages};
    t.table.pages = static_cast<const int32_t*>(dtable.get()), t.table.stride = max_pages, t.table.page_size = page;
    t.seqlens = static_cast<const int32_t*>(dlens.get());
    t.k_cmp = contiguous(kcmp.get(), max_cmp, p.H, p.dk), t.v_cmp = contiguous(vcmp.get(), max_cmp, p.H, p.dv);
    t.max_cmp = max_cmp;
    const size_t ws_bytes = decode_workspace_bytes(p, Tq, config);
    DeviceBuffer ws(std::max<size_t>(ws_bytes, 256));
    t.workspace = ws.get(), t.workspace_bytes = ws_bytes;
    decode(p, Tq, t, nullptr, config);
    ctx.synchronize();
    const TimingStats s = time_gpu([&](CUstream st) { decode(p, Tq, t, st, config); });
    // The same step captured in a CUDA graph and replayed (what a serving loop does): launch gaps are gone.
    const DriverApi& d = driver();
    CUstream cs = nullptr;
    check_cu(d.cuStreamCreate_(&cs, CU_STREAM_NON_BLOCKING), "cuStreamCreate");
    check_cu(d.cuStreamBeginCapture_(cs, CU_STREAM_CAPTURE_MODE_GLOBAL), "cuStreamBeginCapture");
    std::string capture_error;
    try {
      decode(p, Tq, t, cs, config);
    } catch (const std::exception& e) {
      capture_error = e.what();
    }
    CUgraph graph = nullptr;
    const CUresult ended = d.cuStreamEndCapture_(cs, &graph);
    if (!capture_error.empty()) throw Error("decode bench: capturing a step failed: " + capture_error);
    check_cu(ended, "cuStreamEndCapture");
    CUgraphExec exec = nullptr;
    check_cu(d.cuGraphInstantiate_(&exec, graph, 0), "cuGraphInstantiate");
    const TimingStats sg = time_gpu([&](CUstream st) { check_cu(d.cuGraphLaunch_(exec, st), "cuGraphLaunch"); });
    (void)d.cuGraphExecDestroy_(exec);
    (void)d.cuGraphDestroy_(graph);
    (void)d.cuStreamDestroy_(cs);
    // NSA.md's decode model: the compressed keys (K and V; the selection's second pass re-reads K), n l' selected and
    // w window tokens per (sequence, KV head), for each query token.
    const double nc = static_cast<double>(T >= p.l ? (T - p.l) / p.d + 1 : 0);
    const double model = static_cast<double>(p.B) * p.H * Tq *
                         ((nc + static_cast<double>(p.n) * p.lsel + p.w) * (p.dk + p.dv) * 2.0);
    const double read = model + static_cast<double>(p.B) * p.H * Tq * nc * p.dk * 2.0;
    fmt::print("\n{} Tq={}  decode [{}]\n", p.describe(), Tq,
               config ? "given: " + describe(*config) : resolve_config(find_family("decode"), p, p).why);
    fmt::print("  decode step: median {:.1f} us (p20 {:.1f}, p80 {:.1f}); the model's bytes {:.1f} MB -> {:.0f} GB/s; "
               "read with the second pass over K_cmp {:.1f} MB -> {:.0f} GB/s\n",
               s.median_ms * 1e3, s.p20_ms * 1e3, s.p80_ms * 1e3, model / 1e6, model / (s.median_ms * 1e6),
               read / 1e6, read / (s.median_ms * 1e6));
    // 4.55 TB/s: the H200's measured HBM read rate (PERFORMANCE.md).
    fmt::print("  decode step in a CUDA graph: median {:.1f} us (p20 {:.1f}, p80 {:.1f}); the model's bytes -> {:.0f} GB/s "
               "= {:.0f}% of 4.55 TB/s; workspace {} B\n",
               sg.median_ms * 1e3, sg.p20_ms * 1e3, sg.p80_ms * 1e3, model / (sg.median_ms * 1e6),
               100.0 * model / (sg.median_ms * 1e-3) / 4.55e12, ws_bytes);
    json_rows.push_back(llvm::json::Object{{"problem", p.describe()},
                                           {"Tq", Tq},
                                           {"T", T},
                                           {"median_us", s.median_ms * 1e3},
                                           {"p20_us", s.p20_ms * 1e3},
                                           {"p80_us", s.p80_ms * 1e3},
                                           {"graph_median_us", sg.median_ms * 1e3},
                                           {"model_bytes", model}});
  }
  write_json(json_path, ctx, std::move(json_rows));
  return 0;
}

}  // namespace nsajit
