// The tuned-config lookup (runtime/tuned.h) without a GPU: the bucket choice (exact, else nearest, the larger on a
// tie, passing over what cannot be used), why an entry cannot be used (stale, outside the space, incomplete, does not
// fit), the whole decision from a database file, and the fall back to the defaults, with a warning, when the database
// is damaged.
#include <doctest/doctest.h>
#include <stdlib.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "codegen/family.h"
#include "db/db.h"
#include "db/keys.h"
#include "runtime/tuned.h"
#include "tests/cpu/test_util.h"

namespace fs = std::filesystem;
using nsajit::BestEntry;
using nsajit::TileConfig;

namespace {

class TempDir {
public:
  TempDir() {
    std::string model = (fs::temp_directory_path() / "nsajit-tuned-test-XXXXXX").string();
    REQUIRE(mkdtemp(model.data()) != nullptr);
    dir_ = model;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  const fs::path& path() const { return dir_; }

private:
  fs::path dir_;
};

const nsajit::Toolkit kHere{"Stand-in GPU|sm_90|132 SMs", 13000, "13.0"};

nsajit::Problem problem_at(int64_t T) {
  nsajit::Problem p = nsajit::preset("fla");
  p.T = T;
  return p;
}

// A usable win_fwd entry for bucket `t_bucket`, tuned at T = t_bucket, as the tuner writes it.
BestEntry entry(int64_t t_bucket, const std::string& config = "BM=64 BN=32 IMPL=0 QREGS=1 STAGES=2",
                double ms = 1.0) {
  const nsajit::KernelFamily& f = nsajit::find_family("win_fwd");
  const nsajit::Problem p = problem_at(t_bucket);
  const nsajit::ProblemKey key = nsajit::problem_key(p);
  BestEntry e;
  e.toolkit = kHere;
  e.family = "win_fwd";
  e.shape = key.shape;
  e.t_bucket = key.t_bucket;
  e.problem = p.describe();
  e.config = config;
  try {
    e.source_hash = nsajit::source_hash(nsajit::KernelSpec{&f, p, nsajit::parse_config(config), "sm_90a"});
  } catch (const std::exception&) {
    e.source_hash = std::string(64, '0');  // a config the source cannot be made for
  }
  e.median_ms = ms;
  return e;
}

// The bucket choice with a check that rejects the buckets in `bad`.
nsajit::BucketChoice choose(const std::vector<int64_t>& buckets, int64_t target, std::vector<int64_t> bad = {}) {
  std::vector<BestEntry> entries;
  for (int64_t b : buckets) {
    BestEntry e;
    e.t_bucket = b;
    e.config = "B=" + std::to_string(b);
    entries.push_back(e);
  }
  return nsajit::choose_bucket(entries, target, [&](const BestEntry& e, TileConfig& cfg) -> std::optional<std::string> {
    if (std::find(bad.begin(), bad.end(), e.t_bucket) != bad.end()) return "stale: planted";
    cfg = {{"B", static_cast<int>(e.t_bucket)}};
    return std::nullopt;
  });
}

// The bucket chosen, or 0 for none.
int64_t chosen(const std::vector<int64_t>& buckets, int64_t target, std::vector<int64_t> bad = {}) {
  const nsajit::BucketChoice c = choose(buckets, target, std::move(bad));
  if (!c.index) return 0;
  CHECK(c.config.at("B") == buckets[*c.index]);  // the config is the chosen entry's
  return buckets[*c.index];
}

}  // namespace

TEST_CASE("tuned lookup: the exact bucket, else the nearest in powers of two, the larger on a tie") {
  CHECK(chosen({1024, 4096, 65536}, 4096) == 4096);
  CHECK(chosen({65536, 1024, 4096}, 4096) == 4096);  // the stored order does not matter
  CHECK(chosen({1024, 32768}, 4096) == 1024);        // 2 powers of two below against 3 above
  CHECK(chosen({32768, 1024}, 4096) == 1024);
  CHECK(chosen({1024, 131072}, 65536) == 131072);
  // Ties between equally near buckets: the larger, whatever the order.
  CHECK(chosen({2048, 8192}, 4096) == 8192);
  CHECK(chosen({8192, 2048}, 4096) == 8192);
  CHECK(chosen({1024, 16384, 2048}, 4096) == 2048);  // 2048 is nearer than the tie 1024/16384
  CHECK(chosen({16384, 1024}, 4096) == 16384);
  CHECK(chosen({1, 1 << 20}, 1024) == (1 << 20));
  CHECK(chosen({}, 4096) == 0);
  // A damaged bucket (not positive) is tried last.
  CHECK(chosen({0, -4, 1 << 30}, 4096) == (1 << 30));
  CHECK(chosen({0}, 4096) == 0);
}

TEST_CASE("tuned lookup: an entry that cannot be used is passed over for the next nearest, and said so") {
  CHECK(chosen({1024, 4096, 8192}, 4096, {4096}) == 8192);
  CHECK(chosen({2048, 4096, 8192}, 4096, {4096, 8192}) == 2048);  // the tie's other side
  CHECK(chosen({1024, 4096, 65536}, 4096, {4096, 1024}) == 65536);
  const nsajit::BucketChoice c = choose({1024, 4096, 8192}, 4096, {4096, 8192, 1024});
  CHECK_FALSE(c.index);
  CHECK(c.skipped ==
        "; skipped the T<=4096 entry: stale: planted; skipped the T<=8192 entry: stale: planted; skipped the "
        "T<=1024 entry: stale: planted");
}

TEST_CASE("tuned lookup: why an entry cannot be used") {
  const nsajit::KernelFamily& f = nsajit::find_family("win_fwd");
  const nsajit::Problem launch = problem_at(4096);
  nsajit::LookupTarget here;
  here.toolkit = kHere;
  TileConfig cfg;
  BestEntry e = entry(4096);
  CHECK_FALSE(nsajit::unusable_entry(f, e, here, launch, cfg));
  CHECK(cfg == TileConfig{{"BM", 64}, {"BN", 32}, {"QREGS", 1}, {"IMPL", 0}, {"STAGES", 2}});
  auto why = [&](const BestEntry& x, const nsajit::LookupTarget& t) {
    TileConfig c;
    return nsajit::unusable_entry(f, x, t, launch, c).value_or("usable");
  };
  BestEntry other = e;
  other.toolkit.driver_version = 12080;
  CHECK_CONTAINS(why(other, here), "stale: driver 12080 (now 13000)");
  other = e;
  other.toolkit.nvrtc_version = "12.8";
  CHECK_CONTAINS(why(other, here), "stale: NVRTC 12.8 (now 13.0)");
  other = e;
  other.source_hash = std::string(64, 'a');
  CHECK_CONTAINS(why(other, here), "stale: kernel source changed");
  // Without a driver to ask (driver 0), the driver is not compared.
  nsajit::LookupTarget no_driver = here;
  no_driver.toolkit.driver_version = 0;
  other = e;
  other.toolkit.driver_version = 12080;
  CHECK(why(other, no_driver) == "usable");
  // Outside the space, incomplete, unreadable.
  CHECK_CONTAINS(why(entry(4096, "BM=96 BN=32 IMPL=0 QREGS=1 STAGES=2"), here), "outside the family's space");
  CHECK_CONTAINS(why(entry(4096, "BM=64 BN=32 IMPL=0 QREGS=1 STAGES=4"), here), "outside the family's space");
  CHECK_CONTAINS(why(entry(4096, "BM=64 BN=32 IMPL=0 QREGS=1 STAGES=2 X=1"), here), "outside the family's space");
  CHECK_CONTAINS(why(entry(4096, "BM=64 BN=32"), here), "is incomplete");
  // An entry written before IMPL and STAGES existed is incomplete, not filled in with the defaults.
  CHECK_CONTAINS(why(entry(4096, "BM=64 BN=32 QREGS=1"), here), "is incomplete");
  // In the space but refused by the family's rules.
  CHECK_CONTAINS(why(entry(4096, "BM=64 BN=32 IMPL=0 QREGS=1 STAGES=3"), here), "STAGES=2 only");
  CHECK_CONTAINS(why(entry(4096, "BM=64 BN=32 IMPL=1 QREGS=1 STAGES=2"), here), "blocks of 64");
  CHECK(why(entry(4096, "BM=64 BN=64 IMPL=1 QREGS=1 STAGES=3"), here) == "usable");
  other = e;
  other.config = "BM=sixty-four";
  CHECK_CONTAINS(why(other, here), "unreadable entry");
  other = e;
  other.problem = "not a problem";
  CHECK_CONTAINS(why(other, here), "unreadable entry");
  // A config that does not fit the device's shared memory.
  nsajit::LookupTarget small = here;
  small.max_smem = 1024;
  CHECK_CONTAINS(why(e, small), "does not fit this problem");
}

TEST_CASE("tuned lookup: the whole decision from a database") {
  TempDir t;
  const fs::path path = t.path() / "tuning.db";
  const nsajit::KernelFamily& f = nsajit::find_family("win_fwd");
  {
    nsajit::TuningDb db = nsajit::TuningDb::open(path);
    db.set_best(entry(1024, "BM=64 BN=16 IMPL=0 QREGS=0 STAGES=2", 0.1));
    BestEntry stale = entry(4096, "BM=128 BN=64 IMPL=0 QREGS=1 STAGES=2", 0.4);
    stale.toolkit.nvrtc_version = "12.8";
    db.set_best(stale);
    db.set_best(entry(8192, "BM=64 BN=64 IMPL=1 QREGS=1 STAGES=3", 0.8));
    BestEntry elsewhere = entry(4096, "BM=128 BN=32 IMPL=0 QREGS=0 STAGES=2", 0.4);  // another GPU model
    elsewhere.toolkit.device = "Other GPU";
    db.set_best(elsewhere);
  }
  const nsajit::TunedDb h = nsajit::open_tuned_db(path.c_str());
  REQUIRE(h.db);
  CHECK(h.warning.empty());
  nsajit::LookupTarget here;
  here.toolkit = kHere;
  // The exact bucket is stale: the nearest usable one (8192, one power of two away; 1024 is two).
  nsajit::ResolvedConfig r = nsajit::resolve_from(h, f, problem_at(3000), problem_at(3000), here);
  CHECK(r.tuned);
  CHECK(r.config == TileConfig{{"BM", 64}, {"BN", 64}, {"QREGS", 1}, {"IMPL", 1}, {"STAGES", 3}});
  CHECK_CONTAINS(r.why, "nearest bucket T<=8192");
  CHECK_CONTAINS(r.why, "skipped the T<=4096 entry: stale: NVRTC 12.8 (now 13.0)");
  // Exact.
  r = nsajit::resolve_from(h, f, problem_at(1000), problem_at(1000), here);
  CHECK(r.tuned);
  CHECK(r.config == TileConfig{{"BM", 64}, {"BN", 16}, {"QREGS", 0}, {"IMPL", 0}, {"STAGES", 2}});
  CHECK_CONTAINS(r.why, "exact bucket T<=1024");
  // Another shape: the defaults.
  nsajit::Problem other = problem_at(1000);
  other.HQ = 32;
  r = nsajit::resolve_from(h, f, other, other, here);
  CHECK_FALSE(r.tuned);
  CHECK(r.config == f.default_config(other));
  CHECK_CONTAINS(r.why, "no tuned entry for this GPU model and problem");
  // Another GPU model sees only its own entry.
  nsajit::LookupTarget there = here;
  there.toolkit.device = "Other GPU";
  r = nsajit::resolve_from(h, f, problem_at(4096), problem_at(4096), there);
  CHECK(r.tuned);
  CHECK(r.config == TileConfig{{"BM", 128}, {"BN", 32}, {"QREGS", 0}, {"IMPL", 0}, {"STAGES", 2}});
  // Nothing usable: the defaults, with every reason.
  nsajit::LookupTarget tiny = here;
  tiny.max_smem = 1024;
  r = nsajit::resolve_from(h, f, problem_at(4096), problem_at(4096), tiny);
  CHECK_FALSE(r.tuned);
  CHECK(r.config == f.default_config(problem_at(4096)));
  CHECK_CONTAINS(r.why, "no usable tuned entry");
  CHECK_CONTAINS(r.why, "skipped the T<=1024 entry");
}

TEST_CASE("tuned lookup: NSAJIT_DB=off and a missing file are no database, silently") {
  for (const char* off : {"off", "none", "0"}) {
    const nsajit::TunedDb h = nsajit::open_tuned_db(off);
    CHECK_FALSE(h.db);
    CHECK(h.unavailable == "NSAJIT_DB=off");
    CHECK(h.warning.empty());
  }
  TempDir t;
  const std::string missing = (t.path() / "none.db").string();
  const nsajit::TunedDb h = nsajit::open_tuned_db(missing.c_str());
  CHECK_FALSE(h.db);
  CHECK_CONTAINS(h.unavailable, "no tuning database at");
  CHECK(h.warning.empty());
  CHECK_FALSE(fs::exists(missing));  // the lookup creates nothing
  const nsajit::ResolvedConfig r =
      nsajit::resolve_from(h, nsajit::find_family("win_fwd"), problem_at(4096), problem_at(4096), {});
  CHECK_FALSE(r.tuned);
  CHECK_CONTAINS(r.why, "no tuning database at");
}

namespace {

// Writes garbage over pages [first, first + count) of an SQLite file of 4096-byte pages.
void smash_pages(const fs::path& path, int64_t first, int64_t count) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekp(first * 4096);
  uint64_t x = 0x9e3779b97f4a7c15ull;
  for (int64_t i = 0; i < count * 4096; ++i) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    f.put(static_cast<char>(x >> 56));
  }
  REQUIRE(f.good());
}

}  // namespace

TEST_CASE("tuned lookup: a damaged database falls back to the defaults, with a warning") {
  TempDir t;
  const nsajit::KernelFamily& f = nsajit::find_family("win_fwd");
  const fs::path path = t.path() / "tuning.db";
  std::string expect;
  SUBCASE("damaged pages") {
    {
      nsajit::TuningDb db = nsajit::TuningDb::open(path);
      std::vector<BestEntry> many;
      const BestEntry base = entry(4096);
      for (int i = 0; i < 3000; ++i) {
        BestEntry e = base;
        e.shape += " #" + std::to_string(i);  // one row each
        many.push_back(e);
      }
      db.merge_best(many);
      db.set_best(entry(4096));
    }
    const int64_t pages = static_cast<int64_t>(fs::file_size(path)) / 4096;
    REQUIRE(pages > 40);
    smash_pages(path, pages / 2, 8);
    expect = "is damaged";
  }
  SUBCASE("not an SQLite file") {
    std::ofstream(path) << std::string(8192, 'x');
    expect = "not an SQLite file";
  }
  const std::string before = [&] {
    std::ifstream in(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }();
  const nsajit::TunedDb h = nsajit::open_tuned_db(path.c_str());
  CHECK_FALSE(h.db);
  CHECK_CONTAINS(h.warning, "tuning database unusable");
  CHECK_CONTAINS(h.warning, expect);
  CHECK_CONTAINS(h.warning, "using the default tile configs");
  nsajit::LookupTarget here;
  here.toolkit = kHere;
  const nsajit::ResolvedConfig r = nsajit::resolve_from(h, f, problem_at(4096), problem_at(4096), here);
  CHECK_FALSE(r.tuned);
  CHECK(r.config == f.default_config(problem_at(4096)));
  CHECK_CONTAINS(r.why, "tuning database unusable");
  const std::string after = [&] {
    std::ifstream in(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }();
  CHECK(before == after);  // read only: the damaged file is left as it was
}

namespace {

// A usable slc_fwd entry of overlap bucket `overlap` for fla at T = 65536, as the tuner writes it.
BestEntry slc_entry(const std::string& overlap, const std::string& config, const std::string& inputs) {
  const nsajit::KernelFamily& f = nsajit::find_family("slc_fwd");
  const nsajit::Problem p = problem_at(65536);
  const nsajit::ProblemKey key = nsajit::problem_key(p);
  BestEntry e;
  e.toolkit = kHere;
  e.family = "slc_fwd";
  e.shape = key.shape, e.t_bucket = key.t_bucket, e.problem = p.describe();
  e.config = config;
  e.source_hash = nsajit::source_hash(nsajit::KernelSpec{&f, p, nsajit::parse_config(config), "sm_90a"});
  e.median_ms = 10.0, e.default_ms = 12.0;
  e.inputs = inputs, e.overlap = overlap;
  return e;
}

}  // namespace

TEST_CASE("tuned lookup: a data-dependent family per overlap bucket, else that bucket's default") {
  const nsajit::KernelFamily& slc = nsajit::find_family("slc_fwd");
  const nsajit::KernelFamily& win = nsajit::find_family("win_fwd");
  REQUIRE(slc.overlap_dependent());
  REQUIRE_FALSE(win.overlap_dependent());
  const nsajit::Problem p = problem_at(65536);
  const TileConfig low_default = slc.bucket_default_config(p, nsajit::OverlapBucket::low);
  const TileConfig high_default = slc.bucket_default_config(p, nsajit::OverlapBucket::high);
  CHECK(high_default == slc.default_config(p));
  CHECK(low_default == TileConfig{{"BM", 16}, {"BN", 16}, {"QREGS", 1}, {"STAGES", 2}, {"IMPL", 0}});
  CHECK(high_default == TileConfig{{"BM", 64}, {"BN", 64}, {"QREGS", 0}, {"STAGES", 2}, {"IMPL", 1}});
  nsajit::LookupTarget here;
  here.toolkit = kHere;
  TempDir t;
  const fs::path path = t.path() / "tuning.db";
  auto resolve = [&](const nsajit::KernelFamily& f, nsajit::OverlapBucket b) {
    const nsajit::TunedDb h = nsajit::open_tuned_db(path.c_str());
    REQUIRE(h.db);
    return nsajit::resolve_from(h, f, p, p, here, b);
  };
  {
    nsajit::TuningDb db = nsajit::TuningDb::open(path);
    db.set_best(slc_entry("low", "BM=16 BN=32 IMPL=0 QREGS=1 STAGES=3", "random"));
    db.set_best(entry(65536, "BM=128 BN=64 IMPL=0 QREGS=1 STAGES=2"));
  }
  // Only the low bucket is tuned: the high one keeps its own default, not the low bucket's config.
  nsajit::ResolvedConfig r = resolve(slc, nsajit::OverlapBucket::low);
  CHECK(r.tuned);
  CHECK(r.config == TileConfig{{"BM", 16}, {"BN", 32}, {"QREGS", 1}, {"STAGES", 3}, {"IMPL", 0}});
  CHECK_CONTAINS(r.why, "(low-overlap bucket)");
  CHECK_CONTAINS(r.why, "random inputs");
  r = resolve(slc, nsajit::OverlapBucket::high);
  CHECK_FALSE(r.tuned);
  CHECK(r.config == high_default);
  CHECK_CONTAINS(r.why, "no tuned entry for this GPU model and problem and the high-overlap bucket");
  {
    nsajit::TuningDb db = nsajit::TuningDb::open(path);
    db.set_best(slc_entry("high", "BM=128 BN=64 IMPL=1 QREGS=0 STAGES=2", "coherent"));
  }
  r = resolve(slc, nsajit::OverlapBucket::high);
  CHECK(r.tuned);
  CHECK(r.config == TileConfig{{"BM", 128}, {"BN", 64}, {"QREGS", 0}, {"STAGES", 2}, {"IMPL", 1}});
  CHECK_CONTAINS(r.why, "coherent inputs");
  CHECK(resolve(slc, nsajit::OverlapBucket::low).config ==
        TileConfig{{"BM", 16}, {"BN", 32}, {"QREGS", 1}, {"STAGES", 3}, {"IMPL", 0}});
  // A family that is not data-dependent reads its bucket-less entry whatever bucket is asked for.
  for (nsajit::OverlapBucket b : nsajit::kAllOverlapBuckets)
    CHECK(resolve(win, b).config == TileConfig{{"BM", 128}, {"BN", 64}, {"QREGS", 1}, {"IMPL", 0}, {"STAGES", 2}});
  // Without a database, each bucket's default.
  const nsajit::TunedDb off = nsajit::open_tuned_db("off");
  CHECK(nsajit::resolve_from(off, slc, p, p, here, nsajit::OverlapBucket::low).config == low_default);
  CHECK(nsajit::resolve_from(off, slc, p, p, here, nsajit::OverlapBucket::high).config == high_default);
}

TEST_CASE("tuned lookup: each overlap bucket's default is valid, and differs wherever it can, for every G") {
  const nsajit::KernelFamily& slc = nsajit::find_family("slc_fwd");
  for (int G : {1, 2, 3, 4, 8, 16, 32, 48, 64, 128})
    for (auto [dk, dv] : {std::pair{64, 64}, {128, 128}, {192, 128}, {256, 256}}) {
      nsajit::Problem p = problem_at(65536);
      p.H = G > 16 ? 1 : 4, p.HQ = G * p.H, p.dk = dk, p.dv = dv;
      const TileConfig low = slc.bucket_default_config(p, nsajit::OverlapBucket::low);
      const TileConfig high = slc.bucket_default_config(p, nsajit::OverlapBucket::high);
      INFO("G = ", G, " dk = ", dk, " dv = ", dv, ": low [", nsajit::describe(low), "], high [",
           nsajit::describe(high), "]");
      CHECK_FALSE(slc.reject(p, low, nsajit::kHopperMaxSmemOptin));
      CHECK_FALSE(slc.reject(p, high, nsajit::kHopperMaxSmemOptin));
      // They coincide only where the high-overlap default already holds one position per CTA with BN = 16 (G > 16
      // with dv = 256): then the runtime launches one variant and computes no plan.
      if (low == high) CHECK((G > 16 && dv == 256));
      // Low overlap: the fewest positions per CTA (one warp for G <= 16, one position's warps above).
      CHECK(low.at("BM") == (G <= 16 ? 16 : std::min(128, 16 * (G <= 32 ? 2 : G <= 64 ? 4 : 8))));
    }
}
