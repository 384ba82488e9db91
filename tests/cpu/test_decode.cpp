// NSA decode on the CPU: the row reference (reference/decode.cpp) equals row t of the prefill reference, the
// compressed entries an append completes, and the argument checks of decode / decode_append (fake pointers, never
// dereferenced: a call past its checks reaches the driver, reported as "<not a UsageError: ...>").
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "codegen/family.h"
#include "reference/reference.h"
#include "runtime/decode_api.h"
#include "runtime/driver.h"
#include "runtime/nsajit_c.h"
#include "base/error.h"

using namespace nsajit;

namespace {

std::vector<double> randn(std::mt19937_64& rng, size_t n) {
  std::normal_distribution<double> dist;
  std::vector<double> x(n);
  for (double& v : x) v = dist(rng);
  return x;
}

std::string refusal_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const UsageError& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("<not a UsageError: ") + e.what() + ">";
  }
  return "<no exception thrown>";
}

void* fake(uintptr_t address) { return reinterpret_cast<void*>(address); }

}  // namespace

TEST_CASE("decode reference: row t of decode_row equals row t of the prefill reference") {
  struct Case {
    int HQ, H, dk, dv, l, d, lsel, n, w;
    int64_t T;
  };
  const Case cases[] = {
      {4, 2, 16, 8, 32, 16, 64, 4, 40, 300},   // the paper's overlapping blocks, G = 2
      {3, 1, 8, 16, 16, 16, 16, 3, 0, 130},    // l = d = l', no window, G = 3
      {8, 2, 16, 16, 16, 8, 32, 5, 24, 257},   // d < l < l'
  };
  std::mt19937_64 rng(7);
  for (const Case& c : cases) {
    ref::Config cfg;
    cfg.T = c.T, cfg.HQ = c.HQ, cfg.H = c.H, cfg.dk = c.dk, cfg.dv = c.dv, cfg.l = c.l, cfg.d = c.d;
    cfg.lsel = c.lsel, cfg.n = c.n, cfg.w = c.w, cfg.scale = 1.0 / std::sqrt(static_cast<double>(c.dk));
    CAPTURE(c.T);
    CAPTURE(c.l);
    CAPTURE(c.lsel);
    CAPTURE(c.HQ);
    const auto q = randn(rng, static_cast<size_t>(c.T) * c.HQ * c.dk), k = randn(rng, static_cast<size_t>(c.T) * c.H * c.dk),
               v = randn(rng, static_cast<size_t>(c.T) * c.H * c.dv);
    std::vector<double> gc(static_cast<size_t>(c.T) * c.HQ), gs = gc, gw = gc;
    std::uniform_real_distribution<double> u(0.05, 0.95);
    for (auto* g : {&gc, &gs, &gw})
      for (double& x : *g) x = u(rng);
    ref::Inputs in;
    in.q = q.data(), in.k = k.data(), in.v = v.data(), in.g_cmp = gc.data(), in.g_slc = gs.data(), in.g_win = gw.data();
    const ref::Outputs full = ref::forward(cfg, in);
    for (int64_t t : {int64_t{0}, int64_t{1}, int64_t{c.l - 1}, int64_t{c.l}, int64_t{c.lsel}, c.T / 2, c.T - 2, c.T - 1}) {
      CAPTURE(t);
      ref::DecodeInputs d;
      d.q = q.data() + t * c.HQ * c.dk, d.k = k.data(), d.v = v.data();
      d.k_cmp = full.k_cmp.data(), d.v_cmp = full.v_cmp.data();
      d.g_cmp = gc.data() + t * c.HQ, d.g_slc = gs.data() + t * c.HQ, d.g_win = gw.data() + t * c.HQ;
      const ref::DecodeRow r = ref::decode_row(cfg, t, d);
      double worst = 0;
      for (int e = 0; e < c.HQ * c.dv; ++e)
        worst = std::max(worst, std::abs(r.o[static_cast<size_t>(e)] - full.o[static_cast<size_t>(t * c.HQ * c.dv + e)]));
      CHECK(worst < 1e-12);
      for (int h = 0; h < c.H; ++h) {
        CHECK(r.cnt[static_cast<size_t>(h)] == full.sel.cnt[static_cast<size_t>(t * c.H + h)]);
        for (int m = 0; m < c.n; ++m)
          CHECK(r.idx[static_cast<size_t>(h * c.n + m)] == full.sel.idx[static_cast<size_t>((t * c.H + h) * c.n + m)]);
        for (int64_t j = 0; j <= t / c.lsel; ++j)
          CHECK(std::abs(r.score[static_cast<size_t>(h * (t / c.lsel + 1) + j)] -
                         full.sel.score[static_cast<size_t>((t * c.H + h) * full.sel.num_sel + j)]) < 1e-12);
      }
    }
  }
}

TEST_CASE("decode: the compressed entries an append completes") {
  Problem p = preset("paper");  // l = 32, d = 16
  for (int64_t old_len : {0, 1, 31, 32, 33, 47, 48, 100}) {
    for (int64_t add : {1, 2, 15, 16, 17, 64}) {
      const auto [first, count] = completed_cmp_entries(p, old_len, old_len + add);
      CAPTURE(old_len);
      CAPTURE(add);
      CHECK(first == ref::visible_cmp_blocks(old_len - 1, p.l, p.d));
      CHECK(first + count == ref::visible_cmp_blocks(old_len + add - 1, p.l, p.d));
    }
  }
}

namespace {

Problem decode_problem() {
  Problem p = preset("fla");  // l = d = l' = 64
  p.B = 2, p.HQ = 16, p.H = 4, p.T = 1024;
  return p;
}

DecodeTensors decode_tensors(const Problem& p, int Tq) {
  DecodeTensors t;
  t.q = contiguous(fake(0x100000), Tq, p.HQ, p.dk);
  t.o = contiguous(fake(0x200000), Tq, p.HQ, p.dv);
  t.g_cmp = fake(0x300000), t.g_slc = fake(0x310000), t.g_win = fake(0x320000);
  t.gate_stride_b = Tq * p.HQ, t.gate_stride_t = p.HQ;
  t.cache.k = fake(0x400000), t.cache.v = fake(0x500000), t.cache.num_pages = 16;
  t.table.pages = static_cast<const int32_t*>(fake(0x600000)), t.table.stride = 8, t.table.page_size = 128;
  t.seqlens = static_cast<const int32_t*>(fake(0x700000));
  t.max_cmp = 16;
  t.k_cmp = contiguous(fake(0x800000), t.max_cmp, p.H, p.dk);
  t.v_cmp = contiguous(fake(0x900000), t.max_cmp, p.H, p.dv);
  return t;
}

}  // namespace

TEST_CASE("decode: every bad argument is refused with a message naming it, before any driver call") {
  const Problem p = decode_problem();
  auto refused = [&](const Problem& pp, int Tq, const DecodeTensors& t) {
    return refusal_of([&] { check_decode(pp, Tq, t); });
  };
  CHECK(refused(p, 1, decode_tensors(p, 1)) == "<no exception thrown>");
  CHECK(refused(p, 0, decode_tensors(p, 1)).find("Tq = 0") != std::string::npos);
  CHECK(refused(p, 17, decode_tensors(p, 1)).find("Tq = 17") != std::string::npos);
  {
    Problem bad = p;
    bad.dk = 12;
    CHECK(refused(bad, 1, decode_tensors(bad, 1)).find("dk = 12") != std::string::npos);
  }
  {
    Problem bad = p;
    bad.T = 512;  // less than the table's 8 x 128
    CHECK(refused(bad, 1, decode_tensors(bad, 1)).find("capacity") != std::string::npos);
  }
  auto with = [&](auto edit) {
    DecodeTensors t = decode_tensors(p, 2);
    edit(t);
    return refused(p, 2, t);
  };
  CHECK(with([](DecodeTensors& t) { t.g_cmp = t.g_slc = t.g_win = nullptr; }).find("every gate is null") != std::string::npos);
  CHECK(with([](DecodeTensors& t) { t.seqlens = nullptr; }).find("seqlens") != std::string::npos);
  CHECK(with([](DecodeTensors& t) { t.table.pages = nullptr; }).find("page_table") != std::string::npos);
  CHECK(with([](DecodeTensors& t) { t.table.page_size = 96; }).find("page_size = 96") != std::string::npos);
  CHECK(with([](DecodeTensors& t) { t.cache.k = nullptr; }).find("cache.k") != std::string::npos);
  CHECK(with([](DecodeTensors& t) { t.cache.v = fake(0x500004); }).find("cache.v") != std::string::npos);
  CHECK(with([](DecodeTensors& t) { t.cache_slc.k = fake(0xa00000); }).find("cache_slc") != std::string::npos);
  CHECK(with([](DecodeTensors& t) { t.max_cmp = 15; }).find("max_cmp = 15") != std::string::npos);
  CHECK(with([](DecodeTensors& t) { t.idx = static_cast<int32_t*>(fake(0xb00000)); }).find("idx and cnt") != std::string::npos);
  CHECK(with([](DecodeTensors& t) { t.q.stride_t = 3; }).find("q") != std::string::npos);
  // Host copies are checked in full: a length past the capacity, fewer tokens than queries, a page outside the pool.
  const int32_t too_long[2] = {100, 1025}, too_short[2] = {1, 100}, ok_lens[2] = {100, 200};
  std::vector<int32_t> pages(16, 0);
  CHECK(with([&](DecodeTensors& t) { t.seqlens_host = too_long; }).find("seqlens[1] = 1025") != std::string::npos);
  CHECK(with([&](DecodeTensors& t) { t.seqlens_host = too_short; }).find("seqlens[0] = 1") != std::string::npos);
  pages[8 + 1] = 16;  // sequence 1's second page: outside the 16-page pool
  CHECK(with([&](DecodeTensors& t) {
          t.seqlens_host = ok_lens;
          t.table.pages_host = pages.data();
        }).find("page_table[1][1] = 16") != std::string::npos);
  pages[8 + 1] = 3;
  CHECK(with([&](DecodeTensors& t) {
          t.seqlens_host = ok_lens;
          t.table.pages_host = pages.data();
        }) == "<no exception thrown>");
}

TEST_CASE("decode_append: every bad argument is refused with a message naming it") {
  const Problem p = decode_problem();
  auto tensors = [&] {
    AppendTensors t;
    t.k_new = contiguous(fake(0x100000), 1, p.H, p.dk);
    t.v_new = contiguous(fake(0x200000), 1, p.H, p.dv);
    t.k_pool = fake(0x300000), t.v_pool = fake(0x400000), t.num_pages = 16;
    t.table.pages = static_cast<const int32_t*>(fake(0x600000)), t.table.stride = 8, t.table.page_size = 128;
    t.seqlens = static_cast<const int32_t*>(fake(0x700000));
    return t;
  };
  auto refused = [&](int Tn, const AppendTensors& t) { return refusal_of([&] { check_decode_append(p, Tn, t); }); };
  CHECK(refused(1, tensors()) == "<no exception thrown>");
  CHECK(refused(0, tensors()).find("Tn = 0") != std::string::npos);
  CHECK(refused(1025, tensors()).find("Tn = 1025") != std::string::npos);
  AppendTensors t = tensors();
  t.k_cmp = contiguous(fake(0x800000), 16, p.H, p.dk);
  CHECK(refused(1, t).find("k_cmp and v_cmp") != std::string::npos);
  t.v_cmp = contiguous(fake(0x900000), 16, p.H, p.dv);
  t.max_cmp = 16;
  CHECK(refused(1, t) == "<no exception thrown>");
  const int32_t full[2] = {1024, 0};
  t.seqlens_host = full;
  CHECK(refused(1, t).find("seqlens[0] = 1024 (+ 1 appended)") != std::string::npos);
}

// The C ABI's decode calls given random bad inputs (fixed seed): every call returns NSAJIT_USAGE with a message, or
// (when the mutation left the call valid) NSAJIT_ERROR from the missing driver, never a crash.
TEST_CASE("decode C ABI: randomized bad inputs are refused with a message, never a crash") {
  if (nsajit::driver_available()) {
    MESSAGE("skipped: a GPU is present, and a mutation that stays valid would launch on fake pointers");
    return;
  }
  std::mt19937_64 rng(20261130);
  auto pick = [&](uint64_t n) { return static_cast<int64_t>(rng() % n); };
  auto any64 = [&]() -> int64_t {
    switch (pick(6)) {
      case 0: return static_cast<int64_t>(rng());
      case 1: return -pick(100000) - 1;
      case 2: return pick(1000);
      case 3: return std::numeric_limits<int64_t>::min();
      case 4: return std::numeric_limits<int64_t>::max();
      default: return 0;
    }
  };
  auto anyptr = [&]() -> void* {
    switch (pick(3)) {
      case 0: return nullptr;
      case 1: return fake(0x100000 + 1 + static_cast<uintptr_t>(pick(15)));
      default: return fake(static_cast<uintptr_t>(rng()) & ~uintptr_t{255});
    }
  };
  nsajit_problem base{};
  REQUIRE(nsajit_preset("fla", &base) == NSAJIT_OK);
  base.B = 2, base.HQ = 16, base.H = 4, base.T = 1024;
  auto valid = [&] {
    nsajit_decode_tensors t{};
    t.q = {fake(0x100000), 16 * 128, 16 * 128, 128};
    t.o = {fake(0x200000), 16 * 128, 16 * 128, 128};
    t.g_cmp = t.g_slc = t.g_win = fake(0x300000);
    t.gate_stride_b = 16, t.gate_stride_t = 16;
    t.k_pool = fake(0x400000), t.v_pool = fake(0x500000), t.num_pages = 16;
    t.page_table = static_cast<const int32_t*>(fake(0x600000)), t.page_table_stride = 8, t.page_size = 128;
    t.seqlens = static_cast<const int32_t*>(fake(0x700000));
    t.k_cmp = {fake(0x800000), 16 * 4 * 128, 4 * 128, 128}, t.v_cmp = {fake(0x900000), 16 * 4 * 128, 4 * 128, 128};
    t.max_cmp = 16;
    return t;
  };
  int usage = 0, errors = 0;
  for (int trial = 0; trial < 400; ++trial) {
    nsajit_problem p = base;
    nsajit_decode_tensors t = valid();
    int Tq = 1;
    for (int m = 0, count = 1 + static_cast<int>(pick(3)); m < count; ++m) {
      switch (pick(9)) {
        case 0: t.q.data = anyptr(); break;
        case 1: (pick(2) ? t.q.stride_t : t.o.stride_h) = any64(); break;
        case 2: t.page_size = any64(); break;
        case 3: t.page_table_stride = any64(); break;
        case 4: (pick(2) ? t.num_pages : t.max_cmp) = any64(); break;
        case 5: (pick(2) ? t.k_pool : t.v_pool) = anyptr(); break;
        case 6: Tq = static_cast<int>(any64()); break;
        case 7: t.seqlens = static_cast<const int32_t*>(anyptr()); break;
        default: (pick(2) ? p.B : p.T) = any64(); break;
      }
    }
    const int rc = nsajit_decode(&p, Tq, &t, nullptr);
    CAPTURE(trial);
    CHECK((rc == NSAJIT_USAGE || rc == NSAJIT_ERROR));
    CHECK(std::string(nsajit_last_error()).size() > 0);
    (rc == NSAJIT_USAGE ? usage : errors) += 1;
    nsajit_decode_append_tensors a{};
    a.k_new = {anyptr(), any64(), 4 * 128, 128}, a.v_new = {fake(0x200000), 0, 4 * 128, 128};
    a.k_pool = fake(0x400000), a.v_pool = fake(0x500000), a.num_pages = any64();
    a.page_table = static_cast<const int32_t*>(fake(0x600000)), a.page_table_stride = any64(), a.page_size = any64();
    a.seqlens = static_cast<const int32_t*>(anyptr());
    const int rc2 = nsajit_decode_append(&p, static_cast<int>(any64()), &a, nullptr);
    CHECK((rc2 == NSAJIT_USAGE || rc2 == NSAJIT_ERROR));
    CHECK(std::string(nsajit_last_error()).size() > 0);
  }
  MESSAGE("400 random decode calls: " << usage << " usage errors, " << errors << " driver errors (valid calls)");
  CHECK(usage > 300);
}
