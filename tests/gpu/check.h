// Error measures shared by the GPU tests. NSA.md's measure is one relative L2 norm over a whole tensor; alone it
// dilutes a local error (one wrong row of 65536 x 64 gives 0.004), so every check also bounds each (t, h) row's own
// relative error and lse's absolute error, and reports where the worst one is.
//
// Planted faults: NSAJIT_TEST_PLANT=row zeroes one output row after download (and flips one byte of an integer
// result), =lse shifts one lse value by 0.01,
// so that a run of the tests with it set shows that the checks catch them (scripts/gpu_check.sh runs it and
// expects failures).
#ifndef NSAJIT_TESTS_GPU_CHECK_H
#define NSAJIT_TESTS_GPU_CHECK_H

#include <fmt/format.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace nsajit::test {

// Row bound: a multiple of NSA.md's whole-tensor tolerance (a row's rounding error is of the same size as the
// tensor's; a wrong or missing row gives about 1).
inline double row_tolerance(double tensor_tolerance) { return 3 * tensor_tolerance; }
// lse is computed in fp32 from the same rounded inputs as the reference: its absolute error is about 1e-5.
constexpr double kLseAbsTolerance = 1e-3;

// Relative L2 over the whole tensor, and per row (call end_row(t, h) after each row's elements).
struct ErrorMeter {
  double diff2 = 0, ref2 = 0;
  int64_t non_finite = 0;
  double row_d2 = 0, row_r2 = 0;
  double worst_row = 0;  // the largest per-row relative error
  int64_t worst_t = -1;
  int worst_h = -1;

  void add(double out, double ref) {
    if (!std::isfinite(out)) {
      ++non_finite;
      row_d2 = INFINITY;
      return;
    }
    const double d = (out - ref) * (out - ref);
    diff2 += d, ref2 += ref * ref;
    row_d2 += d, row_r2 += ref * ref;
  }
  void end_row(int64_t t, int h) {
    const double e = row_r2 > 0 ? std::sqrt(row_d2 / row_r2) : std::sqrt(row_d2);
    if (!(e <= worst_row)) worst_row = e, worst_t = t, worst_h = h;
    row_d2 = row_r2 = 0;
  }
  void merge(const ErrorMeter& o) {
    diff2 += o.diff2, ref2 += o.ref2, non_finite += o.non_finite;
    if (!(o.worst_row <= worst_row)) worst_row = o.worst_row, worst_t = o.worst_t, worst_h = o.worst_h;
  }
  double rel() const { return ref2 > 0 ? std::sqrt(diff2 / ref2) : std::sqrt(diff2); }
  std::string describe() const {
    return fmt::format("rel {:.3e}, worst row {:.3e} at (t {}, h {}), non-finite {}", rel(), worst_row, worst_t,
                       worst_h, non_finite);
  }
  // Whole tensor within `tol`, every row within row_tolerance(tol), nothing non-finite. An all-zero reference
  // (no keys anywhere) falls back to absolute errors; callers that expect a non-zero result also check ref2 > 0.
  bool ok(double tol) const {
    return non_finite == 0 && rel() <= tol && worst_row <= row_tolerance(tol);
  }
};

// lse: relative L2 (NSA.md), the largest absolute error, and -inf exactly where the reference is -inf (no keys).
struct LseMeter {
  double diff2 = 0, ref2 = 0, worst_abs = 0;
  int64_t bad = 0, worst_t = -1, values = 0;
  int worst_h = -1;
  void add(double out, double ref, int64_t t, int h) {
    ++values;
    if (std::isinf(ref) && ref < 0) {
      bad += !(std::isinf(out) && out < 0);
      return;
    }
    if (!std::isfinite(out)) {
      ++bad;
      return;
    }
    diff2 += (out - ref) * (out - ref), ref2 += ref * ref;
    const double a = std::fabs(out - ref);
    if (!(a <= worst_abs)) worst_abs = a, worst_t = t, worst_h = h;
  }
  void merge(const LseMeter& o) {
    diff2 += o.diff2, ref2 += o.ref2, bad += o.bad, values += o.values;
    if (!(o.worst_abs <= worst_abs)) worst_abs = o.worst_abs, worst_t = o.worst_t, worst_h = o.worst_h;
  }
  double rel() const { return ref2 > 0 ? std::sqrt(diff2 / ref2) : std::sqrt(diff2); }
  std::string describe() const {
    return fmt::format("rel {:.3e}, worst abs {:.3e} at (t {}, h {}), wrong or non-finite {}", rel(), worst_abs,
                       worst_t, worst_h, bad);
  }
  bool ok(double tol) const { return bad == 0 && rel() <= tol && worst_abs <= kLseAbsTolerance; }
};

inline std::string planted() {
  const char* e = std::getenv("NSAJIT_TEST_PLANT");
  return e ? e : "";
}

// Zeroes `count` 16-bit elements from `first` (one output row) when NSAJIT_TEST_PLANT=row.
inline void plant_row(std::vector<uint16_t>& bits, size_t first, size_t count) {
  if (planted() != "row" || first + count > bits.size()) return;
  std::memset(bits.data() + first, 0, count * 2);
}

// Flips one byte (a wrong entry of an integer result such as the overlap plan) when NSAJIT_TEST_PLANT=row.
inline void plant_byte(std::vector<uint8_t>& bytes, size_t at) {
  if (planted() != "row" || at >= bytes.size()) return;
  bytes[at] ^= 1;
}

// Shifts one lse value by 0.01 when NSAJIT_TEST_PLANT=lse (a finite one, so that only the bound can catch it).
inline void plant_lse(std::vector<float>& lse, size_t at) {
  if (planted() != "lse") return;
  for (size_t i = at; i < lse.size(); ++i)
    if (std::isfinite(lse[i])) {
      lse[i] += 0.01f;
      return;
    }
}

}  // namespace nsajit::test

#endif  // NSAJIT_TESTS_GPU_CHECK_H
