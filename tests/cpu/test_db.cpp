// The tuning database (db/db.h), its keys (db/keys.h) and the `nsajit db` command: schema, migration,
// classification of foreign / damaged / newer files, repair, concurrent writers, kill -9, export / import.
#include <doctest/doctest.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "codegen/codegen.h"
#include "codegen/family.h"
#include "codegen/problem.h"
#include "runtime/device.h"
#include "runtime/driver.h"
#include "base/error.h"
#include "runtime/nvrtc_compiler.h"
#include "db/db.h"
#include "db/keys.h"
#include "tests/cpu/test_util.h"

namespace fs = std::filesystem;
using nsajit::BestEntry;
using nsajit::DbError;
using nsajit::Outcome;
using nsajit::Problem;
using nsajit::Toolkit;
using nsajit::Trial;
using nsajit::TuningDb;

namespace {


// A fresh directory per test, removed afterwards.
struct TempDir {
  fs::path path;
  TempDir() {
    std::string model = (fs::temp_directory_path() / "nsajit-db-test-XXXXXX").string();
    REQUIRE(mkdtemp(model.data()) != nullptr);
    path = model;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
};

// The message of the UsageError `fn` throws, or a marker when it throws nothing or something else.
std::string usage_error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const nsajit::UsageError& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("<other exception: ") + e.what() + ">";
  }
  return "<no exception>";
}

// The DbError `fn` throws, if any.
std::optional<DbError> db_error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const DbError& e) {
    return e;
  }
  return std::nullopt;
}

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void write_file(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
  REQUIRE(out.good());
}

// A plain SQLite connection, to build and inspect files behind TuningDb's back.
class Raw {
public:
  explicit Raw(const fs::path& path, int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE) {
    REQUIRE(sqlite3_open_v2(path.string().c_str(), &db_, flags, nullptr) == SQLITE_OK);
    sqlite3_extended_result_codes(db_, 1);
  }
  ~Raw() { sqlite3_close_v2(db_); }
  Raw(const Raw&) = delete;
  Raw& operator=(const Raw&) = delete;
  int exec_rc(const std::string& sql) { return sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, nullptr); }
  void exec(const std::string& sql) {
    char* err = nullptr;
    const int rc = sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, &err);
    const std::string msg = err ? err : "";
    sqlite3_free(err);
    REQUIRE_MESSAGE(rc == SQLITE_OK, sql << ": " << msg);
  }
  int64_t scalar(const std::string& sql) {
    sqlite3_stmt* s = nullptr;
    REQUIRE(sqlite3_prepare_v2(db_, sql.c_str(), -1, &s, nullptr) == SQLITE_OK);
    const int rc = sqlite3_step(s);
    const int64_t v = rc == SQLITE_ROW ? sqlite3_column_int64(s, 0) : -1;
    sqlite3_finalize(s);
    REQUIRE_MESSAGE(rc == SQLITE_ROW, sql);
    return v;
  }
  std::string text(const std::string& sql) {
    sqlite3_stmt* s = nullptr;
    REQUIRE(sqlite3_prepare_v2(db_, sql.c_str(), -1, &s, nullptr) == SQLITE_OK);
    std::string v;
    if (sqlite3_step(s) == SQLITE_ROW && sqlite3_column_text(s, 0))
      v = reinterpret_cast<const char*>(sqlite3_column_text(s, 0));
    sqlite3_finalize(s);
    return v;
  }
  // Steps through every row of a query; the first error code met, or SQLITE_DONE.
  int scan(const std::string& sql) {
    sqlite3_stmt* s = nullptr;
    int rc = sqlite3_prepare_v2(db_, sql.c_str(), -1, &s, nullptr);
    if (rc == SQLITE_OK)
      while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
      }
    sqlite3_finalize(s);
    return rc;
  }
  sqlite3* get() { return db_; }

private:
  sqlite3* db_ = nullptr;
};

const Toolkit kToolkit{"NVIDIA H200|cc9.0|sm132|l2:62914560|mem:150754820096", 13000, "13.0"};

Trial make_trial(int i, const Toolkit& tk = kToolkit) {
  Trial t;
  t.toolkit = tk;
  t.family = "win_fwd";
  t.shape = "bf16 B=1 HQ=64 H=4 dk=128 dv=128 l=64 d=64 l'=64 n=16 w=512";
  t.t_bucket = 65536;
  t.problem = "bf16 B=1 T=65536 HQ=64 H=4 dk=128 dv=128 l=64 d=64 l'=64 n=16 w=512";
  t.config = "BM=64 BN=" + std::to_string(16 << (i % 3)) + " QREGS=1";
  t.source_hash = std::string(64, 'a');
  t.stage = i % 3;
  t.outcome = Outcome::ok;
  t.median_ms = 1.0 + i * 0.001;
  t.p20_ms = t.median_ms * 0.99;
  t.p80_ms = t.median_ms * 1.01;
  t.reps = 30;
  t.registers = 128 + i % 64;
  t.spill_bytes = i % 5;
  t.smem_bytes = 49152;
  t.compile_seconds = 1.5;
  t.created = 1700000000 + i;
  return t;
}

BestEntry make_best(const std::string& family, int64_t t_bucket, double median, const Toolkit& tk = kToolkit) {
  BestEntry e;
  e.toolkit = tk;
  e.family = family;
  e.shape = "bf16 B=1 HQ=64 H=4 dk=128 dv=128 l=64 d=64 l'=64 n=16 w=512";
  e.t_bucket = t_bucket;
  e.problem = "bf16 B=1 T=" + std::to_string(t_bucket) + " HQ=64 H=4 dk=128 dv=128 l=64 d=64 l'=64 n=16 w=512";
  e.config = "BM=64 BN=32 QREGS=1";
  e.source_hash = std::string(64, 'b');
  e.median_ms = median;
  e.default_ms = median * 1.5;
  e.updated = 1700000000;
  e.nsajit_version = "0.0.9";
  return e;
}

void check_same_trial(const Trial& a, const Trial& b) {
  CHECK(a.id == b.id);
  CHECK(a.toolkit == b.toolkit);
  CHECK(a.family == b.family);
  CHECK(a.shape == b.shape);
  CHECK(a.t_bucket == b.t_bucket);
  CHECK(a.problem == b.problem);
  CHECK(a.config == b.config);
  CHECK(a.source_hash == b.source_hash);
  CHECK(a.stage == b.stage);
  CHECK(a.outcome == b.outcome);
  CHECK(a.detail == b.detail);
  CHECK(a.median_ms == b.median_ms);
  CHECK(a.p20_ms == b.p20_ms);
  CHECK(a.p80_ms == b.p80_ms);
  CHECK(a.reps == b.reps);
  CHECK(a.registers == b.registers);
  CHECK(a.spill_bytes == b.spill_bytes);
  CHECK(a.smem_bytes == b.smem_bytes);
  CHECK(a.compile_seconds == b.compile_seconds);
  CHECK(a.created == b.created);
  CHECK(a.nsajit_version == b.nsajit_version);
  CHECK(a.inputs == b.inputs);
}

void check_same_best(const BestEntry& a, const BestEntry& b) {
  CHECK(a.toolkit == b.toolkit);
  CHECK(a.family == b.family);
  CHECK(a.shape == b.shape);
  CHECK(a.t_bucket == b.t_bucket);
  CHECK(a.problem == b.problem);
  CHECK(a.config == b.config);
  CHECK(a.source_hash == b.source_hash);
  CHECK(a.median_ms == b.median_ms);
  CHECK(a.default_ms == b.default_ms);
  CHECK(a.updated == b.updated);
  CHECK(a.nsajit_version == b.nsajit_version);
  CHECK(a.inputs == b.inputs);
  CHECK(a.overlap == b.overlap);
}

// A database with `best_n` best entries (written first, so their pages come first) and `trials_n` trials with a
// long detail each, so that the trials span many pages; closed, so that everything is checkpointed into the file.
void fill_db(const fs::path& path, int trials_n, int best_n) {
  TuningDb db = TuningDb::open(path);
  for (int i = 0; i < best_n; ++i) db.set_best(make_best("win_fwd", int64_t{1} << (i % 30), 1.0 + i, kToolkit));
  for (int i = 0; i < trials_n; ++i) {
    Trial t = make_trial(i);
    t.detail = std::string(300, static_cast<char>('a' + i % 26));
    db.add_trial(t);
  }
}

// Writes garbage over pages [first, first + count) of an SQLite file (page size from its header).
void smash_pages(const fs::path& path, int64_t first, int64_t count) {
  const std::string bytes = read_file(path);
  REQUIRE(bytes.size() > 100);
  int64_t page = (static_cast<unsigned char>(bytes[16]) << 8) | static_cast<unsigned char>(bytes[17]);
  if (page == 1) page = 65536;
  REQUIRE(static_cast<int64_t>(bytes.size()) >= (first + count) * page);
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekp(first * page);
  uint64_t x = 0x9e3779b97f4a7c15ull;
  for (int64_t i = 0; i < count * page; ++i) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    f.put(static_cast<char>(x >> 56));
  }
  REQUIRE(f.good());
}

// A file that is SQLite but whose trials b-tree is damaged: really SQLITE_CORRUPT when scanned.
void make_corrupted_db(const fs::path& path, int trials_n = 1500, int best_n = 20) {
  fill_db(path, trials_n, best_n);
  REQUIRE(!fs::exists(path.string() + "-wal"));
  const int64_t pages = static_cast<int64_t>(fs::file_size(path)) / 4096;
  REQUIRE(pages > 60);
  smash_pages(path, pages / 2, 8);
  Raw raw(path, SQLITE_OPEN_READONLY);
  const int rc = raw.scan("SELECT * FROM trials ORDER BY rowid");
  REQUIRE_MESSAGE((rc & 0xff) == SQLITE_CORRUPT, "scan returned " << rc);
}

// `n` best entries with distinct keys (B=1.. and t_bucket 1..2^19), in the order they are written.
std::vector<BestEntry> many_best(int n) {
  std::vector<BestEntry> out;
  for (int i = 0; i < n; ++i) {
    BestEntry e = make_best("win_fwd", int64_t{1} << (i % 20), 1.0 + i);
    const std::string b = "B=" + std::to_string(1 + i / 20);
    e.shape.replace(e.shape.find("B=1 "), 3, b);
    e.problem.replace(e.problem.find("B=1 "), 3, b);
    out.push_back(std::move(e));
  }
  return out;
}

// A database holding `entries` (one transaction), closed, so that everything is checkpointed into the file.
void fill_best(const fs::path& path, const std::vector<BestEntry>& entries) {
  {
    TuningDb db = TuningDb::open(path);
    REQUIRE(db.merge_best(entries).added == static_cast<int64_t>(entries.size()));
  }
  REQUIRE(!fs::exists(path.string() + "-wal"));
}

// XORs `mask` into the byte at `offset` of a file.
void flip_byte(const fs::path& path, int64_t offset, unsigned char mask) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(offset);
  const int c = f.get();
  REQUIRE(c != EOF);
  f.seekp(offset);
  f.put(static_cast<char>(c ^ mask));
  REQUIRE(f.good());
}

// The kinds of damage that SQLite meets before PRAGMA quick_check can run: the page count or page size in the
// header no longer matches the file.
struct HeaderDamage {
  const char* name;
  const char* file;
  void (*apply)(const fs::path&);
  const char* reason;  // what the error says, after "is damaged ("
};
const std::array<HeaderDamage, 3> kHeaderDamages = {{
    {"cut to half its size", "truncated",
     [](const fs::path& p) { fs::resize_file(p, fs::file_size(p) / 2); },
     "PRAGMA application_id: database disk image is malformed"},
    {"page size bytes flipped (4096 -> 0xefff, not a page size)", "bad-page-size",
     [](const fs::path& p) {
       flip_byte(p, 16, 0xff);
       flip_byte(p, 17, 0xff);
     },
     "PRAGMA application_id: file is not a database"},
    {"page size changed to another valid one (4096 -> 8192)", "other-page-size",
     [](const fs::path& p) { flip_byte(p, 16, 0x30); },
     "PRAGMA application_id: database disk image is malformed"},
}};

// A copy of `healthy` (page size 4096) named after the damage, with the damage applied.
fs::path damaged_copy(const fs::path& healthy, const HeaderDamage& d) {
  const std::string header = read_file(healthy).substr(0, 18);
  REQUIRE(header.size() == 18);
  REQUIRE(header[16] == 0x10);
  REQUIRE(header[17] == 0x00);
  const fs::path path = healthy.parent_path() / (std::string(d.file) + ".db");
  fs::copy_file(healthy, path);
  d.apply(path);
  return path;
}

// The control characters (other than newline) in `s`, described; empty when there are none.
std::string control_chars_in(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if ((c < 0x20 && c != '\n') || c == 0x7f) out += "byte " + std::to_string(c) + " at " + std::to_string(i) + "; ";
  }
  return out;
}

// The notes of a RepairReport, one per element; CHECKs that none repeats.
std::vector<std::string> notes_of(const std::string& note) {
  std::vector<std::string> out;
  for (size_t start = 0; start <= note.size();) {
    size_t end = note.find("; ", start);
    if (end == std::string::npos) end = note.size();
    out.push_back(note.substr(start, end - start));
    start = end + 2;
  }
  const std::set<std::string> unique(out.begin(), out.end());
  CHECK_MESSAGE(unique.size() == out.size(), "a note is repeated: " << note);
  return out;
}

// The files a crash leaves: the first `in_file` trials of make_trial checkpointed into `path`, the next `in_wal`
// committed (one transaction each) only in `path`-wal. Built in a work file and copied while it is still open.
void make_db_with_wal(const fs::path& path, int in_file, int in_wal) {
  const fs::path work = path.parent_path() / ("work-" + path.filename().string());
  {
    TuningDb db = TuningDb::open(work);
    for (int i = 0; i < in_file; ++i) db.add_trial(make_trial(i));
  }
  REQUIRE(!fs::exists(work.string() + "-wal"));
  TuningDb db = TuningDb::open(work);
  for (int i = in_file; i < in_file + in_wal; ++i) db.add_trial(make_trial(i));
  fs::copy_file(work, path);
  fs::copy_file(work.string() + "-wal", path.string() + "-wal");
}

// The frames of a WAL file: for each, whether it ends a transaction (its commit field, bytes 4-7 of the 24-byte
// frame header, is not 0). The page size is in bytes 8-11 of the 32-byte file header, big-endian.
struct WalLayout {
  int64_t page_size = 0;
  std::vector<bool> commit;
  int64_t frame_offset(size_t i) const { return 32 + static_cast<int64_t>(i) * (24 + page_size); }
};
WalLayout wal_layout(const fs::path& wal) {
  const std::string bytes = read_file(wal);
  REQUIRE(bytes.size() >= 32);
  auto be32 = [&](size_t at) {
    uint32_t v = 0;
    for (size_t i = 0; i < 4; ++i) v = v << 8 | static_cast<unsigned char>(bytes[at + i]);
    return v;
  };
  WalLayout w;
  w.page_size = be32(8);
  REQUIRE(w.page_size == 4096);
  for (size_t i = 0; w.frame_offset(i) + 24 + w.page_size <= static_cast<int64_t>(bytes.size()); ++i)
    w.commit.push_back(be32(static_cast<size_t>(w.frame_offset(i)) + 4) != 0);
  return w;
}

// `n` pseudo-random bytes.
std::string garbage(size_t n, uint64_t seed) {
  std::string out(n, '\0');
  for (char& c : out) {
    seed ^= seed << 13, seed ^= seed >> 7, seed ^= seed << 17;
    c = static_cast<char>(seed >> 56);
  }
  return out;
}

}  // namespace

// ---- keys -------------------------------------------------------------------------------------------------------

TEST_CASE("db keys: T is bucketed to the next power of two") {
  Problem p = nsajit::preset("fla");
  const std::vector<std::pair<int64_t, int64_t>> cases = {{0, 1},
                                                          {1, 1},
                                                          {2, 2},
                                                          {3, 4},
                                                          {4, 4},
                                                          {5, 8},
                                                          {1000, 1024},
                                                          {1024, 1024},
                                                          {1025, 2048},
                                                          {65535, 65536},
                                                          {65536, 65536},
                                                          {65537, 131072},
                                                          {(int64_t{1} << 31) - 1, int64_t{1} << 31}};
  for (const auto& [t, bucket] : cases) {
    p.T = t;
    CHECK_MESSAGE(nsajit::problem_key(p).t_bucket == bucket, "T = " << t);
  }
  p.T = 40000;
  const nsajit::ProblemKey a = nsajit::problem_key(p);
  p.T = 65536;
  const nsajit::ProblemKey b = nsajit::problem_key(p);
  CHECK(a == b);
  CHECK(a.shape == "bf16 B=1 HQ=64 H=4 dk=128 dv=128 l=64 d=64 l'=64 n=16 w=512");
  CHECK(a.str() == "bf16 B=1 T<=65536 HQ=64 H=4 dk=128 dv=128 l=64 d=64 l'=64 n=16 w=512");
  p.T = 65537;
  CHECK_FALSE(nsajit::problem_key(p) == b);
  p.B = 2;
  p.T = 65536;
  CHECK_FALSE(nsajit::problem_key(p) == b);  // every other field is exact
  p.B = 1;
  p.scale = 0.125;
  const nsajit::ProblemKey s = nsajit::problem_key(p);
  CHECK(s.shape == "bf16 B=1 HQ=64 H=4 dk=128 dv=128 l=64 d=64 l'=64 n=16 w=512 scale=0.125");
  CHECK(s.str() == "bf16 B=1 T<=65536 HQ=64 H=4 dk=128 dv=128 l=64 d=64 l'=64 n=16 w=512 scale=0.125");
}

TEST_CASE("db keys: parse_problem inverts describe") {
  std::vector<Problem> problems;
  for (const std::string& name : nsajit::preset_names()) {
    Problem p = nsajit::preset(name);
    problems.push_back(p);
    p.dtype = nsajit::Dtype::fp16, p.B = 3, p.T = 1000, p.HQ = 32, p.H = 2, p.n = 5, p.w = 0;
    problems.push_back(p);
    p.scale = 1.0 / std::sqrt(3.0);
    problems.push_back(p);
    p.scale = 0.1, p.dk = 64, p.dv = 64, p.T = 1;
    problems.push_back(p);
  }
  for (const Problem& p : problems) {
    const std::string text = p.describe();
    const Problem q = nsajit::parse_problem(text);
    CHECK(q.describe() == text);
    CHECK(q.dtype == p.dtype);
    CHECK(q.B == p.B);
    CHECK(q.T == p.T);
    CHECK(q.HQ == p.HQ);
    CHECK(q.H == p.H);
    CHECK(q.dk == p.dk);
    CHECK(q.dv == p.dv);
    CHECK(q.l == p.l);
    CHECK(q.d == p.d);
    CHECK(q.lsel == p.lsel);
    CHECK(q.n == p.n);
    CHECK(q.w == p.w);
    CHECK(q.scale == p.scale);  // exact: describe writes the shortest text that reads back the same double
  }
  CHECK(nsajit::parse_problem(problems[1].describe()).describe() != problems[0].describe());
}

TEST_CASE("db keys: bad problem and config strings name the field") {
  const std::string good = nsajit::preset("fla").describe();
  auto without = [&](const std::string& field) {
    std::string s = good;
    const size_t at = s.find(" " + field + "=");
    REQUIRE(at != std::string::npos);
    const size_t end = s.find(' ', at + 1);
    s.erase(at, end == std::string::npos ? std::string::npos : end - at);
    return s;
  };
  auto replaced = [&](const std::string& from, const std::string& to) {
    std::string s = good;
    const size_t at = s.find(from);
    REQUIRE(at != std::string::npos);
    return s.replace(at, from.size(), to);
  };
  CHECK_CONTAINS(usage_error_of([] { nsajit::parse_problem(""); }), "dtype");
  CHECK_CONTAINS(usage_error_of([&] { nsajit::parse_problem(replaced("bf16", "f32")); }), "dtype");
  CHECK_CONTAINS(usage_error_of([&] { nsajit::parse_problem(without("dv")); }), "missing field 'dv'");
  CHECK_CONTAINS(usage_error_of([&] { nsajit::parse_problem(without("T")); }), "missing field 'T'");
  CHECK_CONTAINS(usage_error_of([&] { nsajit::parse_problem(without("l'")); }), "missing field 'l''");
  CHECK_CONTAINS(usage_error_of([&] { nsajit::parse_problem(good + " x=1"); }), "unknown field 'x'");
  CHECK_CONTAINS(usage_error_of([&] { nsajit::parse_problem(good + " HQ=64"); }), "'HQ' given twice");
  CHECK_CONTAINS(usage_error_of([&] { nsajit::parse_problem(replaced("HQ=64", "HQ=six")); }), "field 'HQ'");
  CHECK_CONTAINS(usage_error_of([&] { nsajit::parse_problem(replaced("T=65536", "T=99999999999999999999")); }),
                 "field 'T'");
  CHECK_CONTAINS(usage_error_of([&] { nsajit::parse_problem(replaced("w=512", "w")); }), "'w' is not a NAME=VALUE");
  CHECK_CONTAINS(usage_error_of([&] { nsajit::parse_problem(good + " scale=-1"); }), "field 'scale'");
  CHECK_CONTAINS(usage_error_of([&] { nsajit::parse_problem(replaced("H=4", "H=5")); }), "HQ = 64");  // validate()
  CHECK(usage_error_of([&] { nsajit::parse_problem(good); }) == "<no exception>");

  CHECK(nsajit::parse_config("").empty());
  const nsajit::TileConfig c = nsajit::parse_config("BM=64 BN=32 QREGS=1");
  CHECK(c == nsajit::TileConfig{{"BM", 64}, {"BN", 32}, {"QREGS", 1}});
  CHECK(nsajit::describe(c) == "BM=64 BN=32 QREGS=1");
  CHECK_CONTAINS(usage_error_of([] { nsajit::parse_config("BM"); }), "'BM' is not a NAME=VALUE");
  CHECK_CONTAINS(usage_error_of([] { nsajit::parse_config("BM=x"); }), "field 'BM'");
  CHECK_CONTAINS(usage_error_of([] { nsajit::parse_config("BM=1 BM=2"); }), "'BM' given twice");
  CHECK_CONTAINS(usage_error_of([] { nsajit::parse_config("=3"); }), "'=3'");
}

TEST_CASE("db keys: source_hash is the BLAKE3 of the generated source") {
  const nsajit::KernelFamily& f = nsajit::find_family("win_fwd");
  const Problem p = nsajit::preset("fla");
  const nsajit::KernelSpec spec{&f, p, f.default_config(p), "sm_90a"};
  const std::string h = nsajit::source_hash(spec);
  CHECK(h.size() == 64);
  CHECK(h.find_first_not_of("0123456789abcdef") == std::string::npos);
  CHECK(nsajit::source_hash(spec) == h);
  std::optional<nsajit::TileConfig> other;
  for (const auto& pt : nsajit::enumerate_space(f, p, nsajit::kHopperMaxSmemOptin))
    if (!pt.rejected && pt.config != spec.config) other = pt.config;
  REQUIRE(other);
  CHECK(nsajit::source_hash({&f, p, *other, "sm_90a"}) != h);
  Problem q = p;
  q.dtype = nsajit::Dtype::fp16;
  CHECK(nsajit::source_hash({&f, q, spec.config, "sm_90a"}) != h);
  // T does not reach the kernel source (it is a run-time argument), so one hash serves a whole bucket.
  q = p;
  q.T = 40000;
  CHECK(nsajit::source_hash({&f, q, spec.config, "sm_90a"}) == h);
}

// ---- the database -----------------------------------------------------------------------------------------------

TEST_CASE("db schema: a new file gets our id, version, tables, WAL") {
  TempDir dir;
  const fs::path path = dir.path / "a" / "b" / "tuning.db";
  {
    TuningDb db = TuningDb::open(path);
    CHECK(db.schema_version() == nsajit::kDbSchemaVersion);
    CHECK(db.path() == path);
    CHECK(db.verify().empty());
    CHECK(db.trials().empty());
    CHECK(db.all_best().empty());
  }
  REQUIRE(fs::exists(path));
  Raw raw(path);
  CHECK(raw.scalar("PRAGMA application_id") == nsajit::kDbApplicationId);
  CHECK(raw.scalar("PRAGMA user_version") == nsajit::kDbSchemaVersion);
  CHECK(raw.text("PRAGMA journal_mode") == "wal");
  CHECK(raw.scalar("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN ('trials', 'best')") == 2);
  CHECK(raw.scalar("SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name = 'trials_lookup'") == 1);
  CHECK(raw.scalar("SELECT count(*) FROM pragma_table_info('best') WHERE name = 'default_ms'") == 1);
  CHECK(raw.scalar("SELECT count(*) FROM pragma_table_info('trials') WHERE name = 'stage'") == 1);
  // The outcome CHECK constraint holds the six names and nothing else.
  CHECK(raw.exec_rc(
            "INSERT INTO trials (device, driver_version, nvrtc_version, family, shape, t_bucket, problem, "
            "config, source_hash, outcome, created) VALUES ('d', 1, 'n', 'f', 's', 1, 'p', '', 'h', 'bogus', 1)") ==
        SQLITE_CONSTRAINT_CHECK);
  CHECK(raw.exec_rc(
            "INSERT INTO trials (device, driver_version, nvrtc_version, family, shape, t_bucket, problem, "
            "config, source_hash, outcome, created) VALUES ('d', 1, 'n', 'f', 's', 1, 'p', '', 'h', 'timeout', 1)") ==
        SQLITE_OK);

  CHECK(nsajit::outcome_name(Outcome::wrong_result) == "wrong_result");
  for (Outcome o : {Outcome::ok, Outcome::pruned, Outcome::compile_error, Outcome::launch_error, Outcome::wrong_result,
                    Outcome::timeout})
    CHECK(nsajit::parse_outcome(nsajit::outcome_name(o)) == o);
  CHECK_FALSE(nsajit::parse_outcome("OK"));
}

TEST_CASE("db default path: NSAJIT_DB, XDG_DATA_HOME, HOME") {
  const char* saved[3] = {std::getenv("NSAJIT_DB"), std::getenv("XDG_DATA_HOME"), std::getenv("HOME")};
  const std::string keep[3] = {saved[0] ? saved[0] : "", saved[1] ? saved[1] : "", saved[2] ? saved[2] : ""};
  setenv("NSAJIT_DB", "/x/y.db", 1);
  CHECK(nsajit::default_db_path() == fs::path("/x/y.db"));
  setenv("NSAJIT_DB", "", 1);
  setenv("XDG_DATA_HOME", "/data", 1);
  CHECK(nsajit::default_db_path() == fs::path("/data/nsajit/tuning.db"));
  unsetenv("XDG_DATA_HOME");
  setenv("HOME", "/home/u", 1);
  CHECK(nsajit::default_db_path() == fs::path("/home/u/.local/share/nsajit/tuning.db"));
  const char* names[3] = {"NSAJIT_DB", "XDG_DATA_HOME", "HOME"};
  for (int i = 0; i < 3; ++i) {
    if (saved[i])
      setenv(names[i], keep[i].c_str(), 1);
    else
      unsetenv(names[i]);
  }
}

TEST_CASE("db trials: add, find (stage, then newest), filters, stale toolkits") {
  TempDir dir;
  TuningDb db = TuningDb::open(dir.path / "tuning.db");
  const std::string problem = make_trial(0).problem, hash = make_trial(0).source_hash;

  Trial t0 = make_trial(0);
  t0.config = "BM=64 BN=64 QREGS=1";
  t0.stage = 0, t0.created = 100, t0.median_ms = 3.0;
  Trial t1 = t0;
  t1.stage = 1, t1.created = 50, t1.median_ms = 2.0;  // older but more precise
  Trial t2 = t0;
  t2.stage = 1, t2.created = 60, t2.median_ms = 2.5;  // as precise and newer: wins
  Trial t3 = t0;
  t3.stage = 0, t3.created = 500;
  t0.id = db.add_trial(t0);
  t1.id = db.add_trial(t1);
  t2.id = db.add_trial(t2);
  t3.id = db.add_trial(t3);
  CHECK(t0.id > 0);
  CHECK(t1.id > t0.id);
  CHECK(t2.id > t1.id);

  auto found = db.find_trial(kToolkit, "win_fwd", problem, t0.config, hash, "coherent");
  REQUIRE(found);
  CHECK(found->id == t2.id);
  CHECK(found->median_ms == 2.5);
  t2.nsajit_version = NSAJIT_VERSION;  // add_trial fills it in
  check_same_trial(*found, t2);
  CHECK(db.find_trial(kToolkit, "win_fwd", problem, t0.config, hash, "coherent", 1)->id == t2.id);
  CHECK_FALSE(db.find_trial(kToolkit, "win_fwd", problem, t0.config, hash, "coherent", 2));
  Trial t4 = t0;
  t4.stage = 2, t4.created = 10;
  t4.id = db.add_trial(t4);
  CHECK(db.find_trial(kToolkit, "win_fwd", problem, t0.config, hash, "coherent")->id == t4.id);
  CHECK(db.find_trial(kToolkit, "win_fwd", problem, t0.config, hash, "coherent", 2)->id == t4.id);

  // Anything else different: no match.
  Toolkit other = kToolkit;
  other.driver_version = 12080;
  CHECK_FALSE(db.find_trial(other, "win_fwd", problem, t0.config, hash, "coherent"));
  other = kToolkit;
  other.nvrtc_version = "12.8";
  CHECK_FALSE(db.find_trial(other, "win_fwd", problem, t0.config, hash, "coherent"));
  other = kToolkit;
  other.device = "NVIDIA H100|cc9.0";
  CHECK_FALSE(db.find_trial(other, "win_fwd", problem, t0.config, hash, "coherent"));
  CHECK_FALSE(db.find_trial(kToolkit, "win_fwd", problem, t0.config, std::string(64, 'c'), "coherent"));
  CHECK_FALSE(db.find_trial(kToolkit, "slc_fwd", problem, t0.config, hash, "coherent"));
  CHECK_FALSE(db.find_trial(kToolkit, "win_fwd", problem, "BM=64 BN=32 QREGS=1", hash, "coherent"));
  CHECK_FALSE(db.find_trial(kToolkit, "win_fwd", nsajit::preset("paper").describe(), t0.config, hash, "coherent"));
  // A measurement on the other input kind stands for nothing here.
  CHECK_FALSE(db.find_trial(kToolkit, "win_fwd", problem, t0.config, hash, "random"));

  // Failed outcomes keep their detail; created is filled in when 0.
  Trial bad = make_trial(7);
  bad.outcome = Outcome::timeout, bad.detail = "no result within 10 s", bad.created = 0;
  bad.family = "slc_fwd";
  bad.toolkit.nvrtc_version = "12.8";
  bad.id = db.add_trial(bad);
  const auto got = db.find_trial(bad.toolkit, "slc_fwd", bad.problem, bad.config, bad.source_hash, bad.inputs);
  REQUIRE(got);
  CHECK(got->outcome == Outcome::timeout);
  CHECK(got->detail == "no result within 10 s");
  CHECK(got->created > 1600000000);

  CHECK(db.trials().size() == 6);
  CHECK(db.trials("slc_fwd").size() == 1);
  CHECK(db.trials("win_fwd").size() == 5);
  CHECK(db.trials({}, kToolkit.device).size() == 6);
  CHECK(db.trials({}, "nope").empty());
  const auto all = db.trials();
  for (size_t i = 1; i < all.size(); ++i) CHECK(all[i - 1].id < all[i].id);
  const auto counts = db.count_trials_by_outcome();
  REQUIRE(counts.size() == 6);
  CHECK(counts[static_cast<size_t>(Outcome::ok)] == 5);
  CHECK(counts[static_cast<size_t>(Outcome::timeout)] == 1);

  // Staleness: same device, other driver or NVRTC; an empty device or driver 0 in `current` means unknown.
  CHECK(db.count_stale_trials(kToolkit) == 1);
  Toolkit no_gpu{"", 0, "13.0"};
  CHECK(db.count_stale_trials(no_gpu) == 1);
  CHECK(db.count_stale_trials(Toolkit{"another GPU", 13000, "12.8"}) == 0);
  CHECK(db.count_stale_trials(Toolkit{kToolkit.device, 12000, "13.0"}) == 6);
  CHECK(nsajit::is_stale_toolkit(bad.toolkit, kToolkit));
  CHECK_FALSE(nsajit::is_stale_toolkit(kToolkit, kToolkit));
  CHECK_FALSE(nsajit::is_stale_toolkit(Toolkit{"other", 1, "1.0"}, kToolkit));
  CHECK(db.remove_trials_where_toolkit_not(kToolkit) == 1);
  CHECK(db.trials().size() == 5);
  CHECK(db.count_stale_trials(kToolkit) == 0);
  CHECK(db.remove_trials({t0.id, t1.id, 999999}) == 2);
  CHECK(db.trials().size() == 3);
  CHECK(db.verify().empty());
}

TEST_CASE("db trials: the input kind is part of what a rerun reuses") {
  TempDir dir;
  TuningDb db = TuningDb::open(dir.path / "tuning.db");
  Trial coherent = make_trial(1), random = make_trial(1);
  random.inputs = "random", random.median_ms = 9.0;
  coherent.id = db.add_trial(coherent);
  CHECK_FALSE(db.find_trial(kToolkit, coherent.family, coherent.problem, coherent.config, coherent.source_hash,
                            "random"));
  random.id = db.add_trial(random);
  const auto a = db.find_trial(kToolkit, coherent.family, coherent.problem, coherent.config, coherent.source_hash,
                               "coherent");
  const auto b = db.find_trial(kToolkit, coherent.family, coherent.problem, coherent.config, coherent.source_hash,
                               "random");
  REQUIRE(a);
  REQUIRE(b);
  CHECK(a->id == coherent.id);
  CHECK(a->inputs == "coherent");
  CHECK(b->id == random.id);
  CHECK(b->median_ms == 9.0);
  // The schema accepts the two kinds only.
  Trial bad = make_trial(2);
  bad.inputs = "noise";
  CHECK(db_error_of([&] { db.add_trial(bad); }));
  CHECK(db.trials().size() == 2);
}

TEST_CASE("db best: the overlap bucket is part of the key") {
  TempDir dir;
  TuningDb db = TuningDb::open(dir.path / "tuning.db");
  BestEntry low = make_best("slc_fwd", 65536, 17.7), high = make_best("slc_fwd", 65536, 10.3);
  low.overlap = "low", low.inputs = "random", low.config = "BM=16 BN=16 IMPL=0 QREGS=1 STAGES=2";
  high.overlap = "high", high.config = "BM=64 BN=64 IMPL=1 QREGS=0 STAGES=2";
  db.set_best(low);
  db.set_best(high);
  CHECK(db.all_best().size() == 2);
  check_same_best(*db.best(kToolkit.device, "slc_fwd", low.shape, 65536, "low"), low);
  check_same_best(*db.best(kToolkit.device, "slc_fwd", low.shape, 65536, "high"), high);
  CHECK_FALSE(db.best(kToolkit.device, "slc_fwd", low.shape, 65536));  // no bucket-less entry
  const auto shape = db.best_for_shape(kToolkit.device, "slc_fwd", low.shape);
  REQUIRE(shape.size() == 2);
  CHECK(shape[0].overlap == "high");  // ordered by t_bucket, then overlap
  CHECK(shape[1].overlap == "low");
  // Re-tuning one bucket replaces that bucket only.
  BestEntry low2 = low;
  low2.median_ms = 16.0, low2.config = "BM=16 BN=32 IMPL=0 QREGS=1 STAGES=2";
  db.set_best(low2);
  CHECK(db.best(kToolkit.device, "slc_fwd", low.shape, 65536, "low")->config == low2.config);
  CHECK(db.best(kToolkit.device, "slc_fwd", low.shape, 65536, "high")->config == high.config);
  // Merge compares within a bucket: a faster high entry does not replace the low one.
  BestEntry faster_high = high;
  faster_high.median_ms = 1.0, faster_high.config = "BM=128 BN=64 IMPL=1 QREGS=0 STAGES=2";
  const TuningDb::MergeStats st = db.merge_best({faster_high});
  CHECK(st.replaced == 1);
  CHECK(db.best(kToolkit.device, "slc_fwd", low.shape, 65536, "low")->config == low2.config);
  CHECK(db.best(kToolkit.device, "slc_fwd", low.shape, 65536, "high")->config == faster_high.config);
  // Removal names the bucket.
  CHECK(db.remove_best(kToolkit.device, "slc_fwd", low.shape, 65536, "high") == 1);
  CHECK(db.best(kToolkit.device, "slc_fwd", low.shape, 65536, "low"));
  CHECK(db.all_best().size() == 1);
  // The schema accepts '', 'low' and 'high' only.
  BestEntry bad = low;
  bad.overlap = "medium";
  CHECK(db_error_of([&] { db.set_best(bad); }));
  CHECK(db.verify().empty());
}

TEST_CASE("db best: set, get, per shape, merge keeps the faster") {
  TempDir dir;
  TuningDb db = TuningDb::open(dir.path / "tuning.db");
  const BestEntry a = make_best("win_fwd", 65536, 2.0), b = make_best("win_fwd", 8192, 0.5),
                  c = make_best("win_fwd", 16384, 0.9), d = make_best("slc_fwd", 65536, 4.0);
  for (const BestEntry& e : {a, b, c, d}) db.set_best(e);
  const auto got = db.best(kToolkit.device, "win_fwd", a.shape, 65536);
  REQUIRE(got);
  check_same_best(*got, a);
  CHECK_FALSE(db.best(kToolkit.device, "win_fwd", a.shape, 32768));
  CHECK_FALSE(db.best("other", "win_fwd", a.shape, 65536));
  const auto shape = db.best_for_shape(kToolkit.device, "win_fwd", a.shape);
  REQUIRE(shape.size() == 3);
  CHECK(shape[0].t_bucket == 8192);
  CHECK(shape[1].t_bucket == 16384);
  CHECK(shape[2].t_bucket == 65536);
  CHECK(db.all_best().size() == 4);
  CHECK(db.all_best()[0].family == "slc_fwd");

  // set_best replaces; fills updated and nsajit_version when not given.
  BestEntry a2 = a;
  a2.config = "BM=128 BN=32 QREGS=1", a2.median_ms = 3.0, a2.updated = 0, a2.nsajit_version.clear();
  db.set_best(a2);
  const auto replaced = db.best(kToolkit.device, "win_fwd", a.shape, 65536);
  CHECK(replaced->config == a2.config);
  CHECK(replaced->updated > 1600000000);
  CHECK(replaced->nsajit_version == NSAJIT_VERSION);
  CHECK(db.all_best().size() == 4);

  // Merge: absent -> added, faster -> replaced, slower or equal -> kept.
  BestEntry faster = a;
  faster.median_ms = 1.0, faster.config = "BM=64 BN=16 QREGS=1";
  BestEntry slower = b;
  slower.median_ms = 0.7, slower.config = "BM=32 BN=16 QREGS=1";
  BestEntry equal = c;
  equal.config = "BM=32 BN=32 QREGS=1";
  BestEntry fresh = make_best("cmp_fwd", 1024, 0.1);
  const TuningDb::MergeStats s = db.merge_best({faster, slower, equal, fresh});
  CHECK(s.added == 1);
  CHECK(s.replaced == 1);
  CHECK(s.kept == 2);
  CHECK(db.best(kToolkit.device, "win_fwd", a.shape, 65536)->config == faster.config);
  CHECK(db.best(kToolkit.device, "win_fwd", a.shape, 8192)->config == b.config);
  CHECK(db.best(kToolkit.device, "win_fwd", a.shape, 16384)->config == c.config);
  CHECK(db.best(kToolkit.device, "cmp_fwd", a.shape, 1024));
  CHECK(db.all_best().size() == 5);

  CHECK(db.remove_best(kToolkit.device, "cmp_fwd", a.shape, 1024) == 1);
  CHECK(db.remove_best(kToolkit.device, "cmp_fwd", a.shape, 1024) == 0);
  CHECK(db.all_best().size() == 4);

  // Read-only: reads work, writes are refused.
  TuningDb ro = TuningDb::open(dir.path / "tuning.db", TuningDb::Mode::read_only);
  CHECK(ro.all_best().size() == 4);
  CHECK(db_error_of([&] { ro.set_best(fresh); }));
}

namespace {

// A version-1 row, written the way an nsajit of schema 1 wrote it.
void v1_insert_trial(Raw& raw, const Trial& t) {
  sqlite3_stmt* s = nullptr;
  REQUIRE(
      sqlite3_prepare_v2(raw.get(),
                         "INSERT INTO trials (id, device, driver_version, nvrtc_version, family, shape, t_bucket, "
                         "problem, config, source_hash, outcome, detail, median_ms, p20_ms, p80_ms, reps, registers, "
                         "spill_bytes, smem_bytes, compile_seconds, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
                         "?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         -1, &s, nullptr) == SQLITE_OK);
  int i = 0;
  auto text = [&](const std::string& v) { sqlite3_bind_text(s, ++i, v.c_str(), -1, SQLITE_TRANSIENT); };
  auto integer = [&](int64_t v) { sqlite3_bind_int64(s, ++i, v); };
  auto real = [&](double v) { sqlite3_bind_double(s, ++i, v); };
  integer(t.id), text(t.toolkit.device), integer(t.toolkit.driver_version), text(t.toolkit.nvrtc_version);
  text(t.family), text(t.shape), integer(t.t_bucket), text(t.problem), text(t.config), text(t.source_hash);
  text(std::string(nsajit::outcome_name(t.outcome))), text(t.detail), real(t.median_ms), real(t.p20_ms);
  real(t.p80_ms), integer(t.reps), integer(t.registers), integer(t.spill_bytes), integer(t.smem_bytes);
  real(t.compile_seconds), integer(t.created);
  const int rc = sqlite3_step(s);
  sqlite3_finalize(s);
  REQUIRE(rc == SQLITE_DONE);
}

}  // namespace

TEST_CASE("db migration: a version-1 file migrates with its rows intact") {
  TempDir dir;
  const fs::path path = dir.path / "old.db";
  std::vector<Trial> v1_trials;
  {
    Raw raw(path);
    raw.exec(std::string(nsajit::kSchemaV1Sql));
    raw.exec("PRAGMA application_id = " + std::to_string(nsajit::kDbApplicationId));
    raw.exec("PRAGMA user_version = 1");
    // Version 1 knew no 'timeout' outcome.
    CHECK(raw.exec_rc("INSERT INTO trials (device, driver_version, nvrtc_version, family, shape, t_bucket, problem, "
                      "config, source_hash, outcome, created) VALUES ('d', 1, 'n', 'f', 's', 1, 'p', '', 'h', "
                      "'timeout', 1)") == SQLITE_CONSTRAINT_CHECK);
    for (int id : {1, 2, 5, 7}) {
      Trial t = make_trial(id);
      t.id = id;
      t.stage = 1;  // what the migration gives every version-1 trial
      t.inputs = "random";
      if (id == 2) t.outcome = Outcome::compile_error, t.detail = "error: 'x' undeclared";
      v1_insert_trial(raw, t);
      if (id != 7) v1_trials.push_back(t);
    }
    raw.exec("DELETE FROM trials WHERE id = 7");  // the AUTOINCREMENT counter stays at 7
    raw.exec(
        "INSERT INTO best (device, driver_version, nvrtc_version, family, shape, t_bucket, problem, config, "
        "source_hash, median_ms, updated) VALUES ('dev', 13000, '13.0', 'win_fwd', 'shape l''=64', 65536, "
        "'problem', 'BM=64', 'hash', 0.75, 1700000001), ('dev', 13000, '13.0', 'slc_fwd', 'shape', 1024, "
        "'problem', '', 'hash2', 0.25, 1700000002)");
  }

  // Read-only: a migrated copy in memory; the file is not touched.
  {
    const TuningDb ro = TuningDb::open(path, TuningDb::Mode::read_only);
    CHECK(ro.migrated_in_memory());
    CHECK(ro.schema_version() == 1);
    const auto trials = ro.trials();
    REQUIRE(trials.size() == 3);
    for (size_t i = 0; i < trials.size(); ++i) check_same_trial(trials[i], v1_trials[i]);
    CHECK(ro.all_best().size() == 2);
    CHECK(ro.verify().empty());
    Raw raw(path, SQLITE_OPEN_READONLY);
    CHECK(raw.scalar("PRAGMA user_version") == 1);
    CHECK(raw.scalar("SELECT count(*) FROM pragma_table_info('trials') WHERE name = 'stage'") == 0);
  }

  // Read-write: migrated in place.
  {
    TuningDb db = TuningDb::open(path);
    CHECK_FALSE(db.migrated_in_memory());
    CHECK(db.schema_version() == 3);
    const auto trials = db.trials();
    REQUIRE(trials.size() == 3);
    for (size_t i = 0; i < trials.size(); ++i) check_same_trial(trials[i], v1_trials[i]);
    CHECK(trials[1].outcome == Outcome::compile_error);
    CHECK(trials[1].detail == "error: 'x' undeclared");
    const auto best = db.all_best();
    REQUIRE(best.size() == 2);
    CHECK(best[0].family == "slc_fwd");
    CHECK(best[0].config.empty());
    CHECK(best[1].shape == "shape l'=64");
    CHECK(best[1].median_ms == 0.75);
    CHECK(best[1].default_ms == 0);
    CHECK(best[1].updated == 1700000001);
    CHECK(best[1].nsajit_version.empty());
    CHECK(db.verify().empty());
    // New ids continue after the highest ever given (7), and the new outcome is accepted.
    Trial t = make_trial(9);
    t.outcome = Outcome::timeout;
    CHECK(db.add_trial(t) == 8);
    CHECK(db.find_trial(t.toolkit, t.family, t.problem, t.config, t.source_hash, t.inputs)->outcome == Outcome::timeout);
  }
  Raw raw(path, SQLITE_OPEN_READONLY);
  CHECK(raw.scalar("PRAGMA user_version") == 3);
  CHECK(raw.scalar("PRAGMA application_id") == nsajit::kDbApplicationId);
  CHECK(raw.scalar("SELECT count(*) FROM sqlite_master WHERE name IN ('trials_v1', 'best_v1', 'trials_key')") == 0);
  CHECK(raw.scalar("SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name = 'trials_lookup'") == 1);
  CHECK(raw.text("PRAGMA integrity_check") == "ok");
  // Opening again changes nothing.
  TuningDb again = TuningDb::open(path);
  CHECK(again.trials().size() == 4);
  CHECK(again.all_best().size() == 2);
}

TEST_CASE("db migration: a version-2 file migrates with its rows intact, slc_fwd's results into the low bucket") {
  TempDir dir;
  const fs::path path = dir.path / "v2.db";
  {
    Raw raw(path);
    raw.exec(nsajit::schema_sql(2));
    raw.exec("PRAGMA application_id = " + std::to_string(nsajit::kDbApplicationId));
    raw.exec("PRAGMA user_version = 2");
    raw.exec(
        "INSERT INTO trials (id, device, driver_version, nvrtc_version, family, shape, t_bucket, problem, config, "
        "source_hash, stage, outcome, detail, median_ms, created, nsajit_version) VALUES "
        "(3, 'dev', 13000, '13.0', 'slc_fwd', 'shape', 65536, 'problem', 'BM=16', 'h', 2, 'ok', '', 17.7, 1700000003, "
        "'0.1.0'), (4, 'dev', 13000, '13.0', 'win_fwd', 'shape', 65536, 'problem', 'BM=64', 'h', 1, 'wrong_result', "
        "'o: relative error 0.3', 0, 1700000004, '0.1.0')");
    raw.exec(
        "INSERT INTO best (device, driver_version, nvrtc_version, family, shape, t_bucket, problem, config, "
        "source_hash, median_ms, default_ms, updated, nsajit_version) VALUES ('dev', 13000, '13.0', 'slc_fwd', "
        "'shape', 65536, 'problem', 'BM=16 BN=16', 'h1', 17.7, 22.2, 1700000001, '0.1.0'), ('dev', 13000, '13.0', "
        "'win_fwd', 'shape', 65536, 'problem', 'BM=64', 'h2', 5.0, 5.5, 1700000002, '0.1.0')");
  }
  auto check_rows = [](const TuningDb& db) {
    const auto trials = db.trials();
    REQUIRE(trials.size() == 2);
    CHECK(trials[0].id == 3);
    CHECK(trials[0].stage == 2);
    CHECK(trials[0].median_ms == 17.7);
    CHECK(trials[0].inputs == "random");
    CHECK(trials[1].outcome == Outcome::wrong_result);
    CHECK(trials[1].detail == "o: relative error 0.3");
    CHECK(trials[1].inputs == "random");
    const auto best = db.all_best();
    REQUIRE(best.size() == 2);
    CHECK(best[0].family == "slc_fwd");
    CHECK(best[0].overlap == "low");
    CHECK(best[0].inputs == "random");
    CHECK(best[0].config == "BM=16 BN=16");
    CHECK(best[0].default_ms == 22.2);
    CHECK(best[0].nsajit_version == "0.1.0");
    CHECK(best[1].family == "win_fwd");
    CHECK(best[1].overlap.empty());
    CHECK(best[1].median_ms == 5.0);
    CHECK(best[1].updated == 1700000002);
    CHECK(db.verify().empty());
  };
  {
    const TuningDb ro = TuningDb::open(path, TuningDb::Mode::read_only);
    CHECK(ro.migrated_in_memory());
    CHECK(ro.schema_version() == 2);
    check_rows(ro);
    Raw raw(path, SQLITE_OPEN_READONLY);
    CHECK(raw.scalar("PRAGMA user_version") == 2);
    CHECK(raw.scalar("SELECT count(*) FROM pragma_table_info('best') WHERE name = 'overlap'") == 0);
  }
  {
    TuningDb db = TuningDb::open(path);
    CHECK(db.schema_version() == 3);
    check_rows(db);
    // The high bucket now sits beside the migrated low one; new trial ids continue after 4.
    BestEntry high = db.all_best()[0];
    high.overlap = "high", high.inputs = "coherent", high.config = "BM=64 BN=64";
    db.set_best(high);
    CHECK(db.best("dev", "slc_fwd", "shape", 65536, "low")->config == "BM=16 BN=16");
    CHECK(db.best("dev", "slc_fwd", "shape", 65536, "high")->config == "BM=64 BN=64");
    CHECK(db.add_trial(make_trial(9)) == 5);
  }
  Raw raw(path, SQLITE_OPEN_READONLY);
  CHECK(raw.scalar("PRAGMA user_version") == 3);
  CHECK(raw.scalar("SELECT count(*) FROM sqlite_master WHERE name = 'best_v2'") == 0);
  CHECK(raw.scalar("SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name = 'trials_lookup'") == 1);
  CHECK(raw.text("PRAGMA integrity_check") == "ok");
  // A migrated file has the columns of a new one, in the same order.
  TuningDb::open(dir.path / "new.db");
  Raw fresh(dir.path / "new.db", SQLITE_OPEN_READONLY);
  for (const char* table : {"trials", "best"}) {
    const std::string q = std::string("SELECT group_concat(name, ',') FROM pragma_table_info('") + table + "')";
    CHECK(raw.text(q) == fresh.text(q));
  }
}

TEST_CASE("db classification: newer schema, foreign files, missing file") {
  TempDir dir;
  SUBCASE("newer schema is refused, untouched") {
    const fs::path path = dir.path / "newer.db";
    { TuningDb::open(path).add_trial(make_trial(1)); }
    { Raw(path).exec("PRAGMA user_version = 4"); }
    for (auto mode : {TuningDb::Mode::read_write, TuningDb::Mode::read_only}) {
      const auto err = db_error_of([&] { TuningDb::open(path, mode); });
      REQUIRE(err);
      CHECK(err->kind == DbError::Kind::newer_schema);
      CHECK_CONTAINS(std::string(err->what()), path.string());
      CHECK_CONTAINS(std::string(err->what()), "schema version 4, written by a newer nsajit");
    }
    Raw raw(path, SQLITE_OPEN_READONLY);
    CHECK(raw.scalar("PRAGMA user_version") == 4);
    CHECK(raw.scalar("SELECT count(*) FROM trials") == 1);
  }
  SUBCASE("a file that is not SQLite") {
    const fs::path path = dir.path / "notes.txt";
    const std::string text = "these are my notes, not a database, but long enough to have a header\n";
    write_file(path, text);
    for (auto mode : {TuningDb::Mode::read_write, TuningDb::Mode::read_only}) {
      const auto err = db_error_of([&] { TuningDb::open(path, mode); });
      REQUIRE(err);
      CHECK(err->kind == DbError::Kind::not_nsajit);
      CHECK_CONTAINS(std::string(err->what()), path.string());
      CHECK_CONTAINS(std::string(err->what()), "not an SQLite file");
    }
    write_file(dir.path / "short", "SQLite");
    CHECK(db_error_of([&] { TuningDb::open(dir.path / "short"); })->kind == DbError::Kind::not_nsajit);
    CHECK(read_file(path) == text);
    CHECK_FALSE(fs::exists(path.string() + "-wal"));
  }
  SUBCASE("an SQLite file of another application") {
    const fs::path tables = dir.path / "app.db", id = dir.path / "other-id.db";
    {
      Raw raw(tables);
      raw.exec("CREATE TABLE users (name TEXT); INSERT INTO users VALUES ('ann')");
      Raw raw2(id);
      raw2.exec("PRAGMA application_id = 305419896");  // 0x12345678
    }
    const std::string before = read_file(tables);
    auto err = db_error_of([&] { TuningDb::open(tables); });
    REQUIRE(err);
    CHECK(err->kind == DbError::Kind::not_nsajit);
    CHECK_CONTAINS(std::string(err->what()), tables.string());
    CHECK_CONTAINS(std::string(err->what()), "other tables (users)");
    CHECK(read_file(tables) == before);
    err = db_error_of([&] { TuningDb::open(id, TuningDb::Mode::read_only); });
    REQUIRE(err);
    CHECK(err->kind == DbError::Kind::not_nsajit);
    CHECK_CONTAINS(std::string(err->what()), "application_id 0x12345678");
    CHECK(db_error_of([&] { TuningDb::open(id); })->kind == DbError::Kind::not_nsajit);
  }
  SUBCASE("a zero-length file is initialized") {
    const fs::path path = dir.path / "empty.db", ro_path = dir.path / "empty-ro.db";
    write_file(path, "");
    write_file(ro_path, "");
    {
      const TuningDb ro = TuningDb::open(ro_path, TuningDb::Mode::read_only);
      CHECK(ro.trials().empty());
    }
    CHECK(fs::file_size(ro_path) == 0);  // read-only never writes
    TuningDb db = TuningDb::open(path);
    db.add_trial(make_trial(1));
    CHECK(db.trials().size() == 1);
    CHECK(db.verify().empty());
  }
  SUBCASE("read_only on a missing file") {
    const fs::path path = dir.path / "sub" / "missing.db";
    const auto err = db_error_of([&] { TuningDb::open(path, TuningDb::Mode::read_only); });
    REQUIRE(err);
    CHECK(err->kind == DbError::Kind::io);
    CHECK_CONTAINS(std::string(err->what()), "no tuning database at " + path.string());
    CHECK_FALSE(fs::exists(path));
    CHECK_FALSE(fs::exists(path.parent_path()));
  }
}

TEST_CASE("db corrupted: detected, then repaired keeping the damaged copy") {
  TempDir dir;
  const fs::path path = dir.path / "tuning.db";
  const int trials_n = 1500, best_n = 20;
  make_corrupted_db(path, trials_n, best_n);
  const std::string damaged = read_file(path);
  for (auto mode : {TuningDb::Mode::read_write, TuningDb::Mode::read_only}) {
    const auto err = db_error_of([&] { TuningDb::open(path, mode); });
    REQUIRE(err);
    CHECK(err->kind == DbError::Kind::corrupted);
    // PRAGMA quick_check itself stops on the damaged b-tree page.
    CHECK_CONTAINS(std::string(err->what()),
                   "tuning database " + path.string() +
                       " is damaged (PRAGMA quick_check: database disk image is malformed); run `nsajit db verify "
                       "--repair` to keep a copy and recover what can be read");
    CHECK(control_chars_in(err->what()).empty());
  }
  CHECK(read_file(path) == damaged);

  const nsajit::RepairReport r = nsajit::repair_db(path);
  CHECK(r.kept_as.parent_path() == dir.path);
  CHECK(r.kept_as.filename().string().rfind("tuning.db.damaged-", 0) == 0);
  REQUIRE(fs::exists(r.kept_as));
  CHECK(read_file(r.kept_as) == damaged);  // kept, byte for byte
  CHECK(r.best_recovered == best_n);       // their pages come before the damage
  CHECK(r.trials_recovered < trials_n);    // the damaged pages held trials
  CHECK(r.trials_recovered > trials_n * 8 / 10);
  CHECK_CONTAINS(r.note, "read errors in trials");

  TuningDb db = TuningDb::open(path);
  CHECK(db.verify().empty());
  const auto trials = db.trials();
  CHECK(static_cast<int64_t>(trials.size()) == r.trials_recovered);
  for (const Trial& t : trials) {  // the rows recovered are the rows written, ids kept
    Trial want = make_trial(static_cast<int>(t.id - 1));
    want.id = t.id;
    want.detail = std::string(300, static_cast<char>('a' + (t.id - 1) % 26));
    want.nsajit_version = NSAJIT_VERSION;
    CHECK(t.config == want.config);
    CHECK(t.detail == want.detail);
    CHECK(t.median_ms == want.median_ms);
    CHECK(t.created == want.created);
  }
  CHECK(db.all_best().size() == static_cast<size_t>(best_n));
  CHECK(db.add_trial(make_trial(1)) > trials.back().id);

  // A file that is not SQLite at all: moved aside, nothing recovered, nothing lost.
  const fs::path junk = dir.path / "junk.db";
  write_file(junk, std::string(5000, 'x'));
  const nsajit::RepairReport j = nsajit::repair_db(junk);
  CHECK(j.trials_recovered == 0);
  CHECK(j.best_recovered == 0);
  CHECK_FALSE(j.note.empty());
  CHECK(read_file(j.kept_as) == std::string(5000, 'x'));
  CHECK(TuningDb::open(junk).verify().empty());
}

TEST_CASE("db damaged header or truncated file: the error gives SQLite's reason, the file stays untouched") {
  TempDir dir;
  const fs::path healthy = dir.path / "healthy.db";
  fill_best(healthy, many_best(3000));
  for (const HeaderDamage& d : kHeaderDamages) {
    INFO("damage: ", std::string(d.name));
    const fs::path path = damaged_copy(healthy, d);
    const std::string damaged = read_file(path);
    for (auto mode : {TuningDb::Mode::read_write, TuningDb::Mode::read_only}) {
      const auto err = db_error_of([&] { TuningDb::open(path, mode); });
      REQUIRE(err);
      CHECK(err->kind == DbError::Kind::corrupted);
      const std::string what = err->what();
      CHECK_CONTAINS(what, "tuning database " + path.string() + " is damaged (" + d.reason +
                               "); run `nsajit db verify --repair` to keep a copy and recover what can be read");
      CHECK_MESSAGE(control_chars_in(what).empty(), control_chars_in(what) << " in: " << what);
    }
    CHECK(read_file(path) == damaged);
  }
}

TEST_CASE("db repair: a truncated file gives back the rows before the cut, the damaged copy is kept") {
  TempDir dir;
  const fs::path path = dir.path / "tuning.db";
  constexpr int kRows = 3000;
  SUBCASE("best entries") {
    const std::vector<BestEntry> written = many_best(kRows);
    fill_best(path, written);
    fs::resize_file(path, fs::file_size(path) / 2);
    const std::string damaged = read_file(path);
    REQUIRE(db_error_of([&] { TuningDb::open(path, TuningDb::Mode::read_only); }));

    const nsajit::RepairReport r = nsajit::repair_db(path);
    INFO("note: ", r.note);
    REQUIRE(fs::exists(r.kept_as));
    CHECK(read_file(r.kept_as) == damaged);
    CHECK(r.trials_recovered == 0);
    CHECK(r.best_recovered >= kRows * 3 / 10);  // about half the pages are left
    CHECK(r.best_recovered < kRows);
    notes_of(r.note);
    CHECK_CONTAINS(r.note, "read errors in best (unreadable pages skipped)");
    CHECK_NOT_CONTAINS(r.note, "cannot be read");

    TuningDb db = TuningDb::open(path);
    CHECK(db.verify().empty());
    const std::vector<BestEntry> back = db.all_best();
    CHECK(static_cast<int64_t>(back.size()) == r.best_recovered);
    std::map<std::pair<std::string, int64_t>, const BestEntry*> by_key;
    for (const BestEntry& e : written) by_key[{e.shape, e.t_bucket}] = &e;
    for (const BestEntry& e : back) {  // every row that comes back is a row that was written, intact
      const auto it = by_key.find({e.shape, e.t_bucket});
      REQUIRE(it != by_key.end());
      check_same_best(e, *it->second);
    }
  }
  SUBCASE("trials") {
    fill_db(path, kRows, 0);
    REQUIRE(!fs::exists(path.string() + "-wal"));
    fs::resize_file(path, fs::file_size(path) / 2);
    const std::string damaged = read_file(path);
    REQUIRE(db_error_of([&] { TuningDb::open(path, TuningDb::Mode::read_only); }));

    const nsajit::RepairReport r = nsajit::repair_db(path);
    INFO("note: ", r.note);
    CHECK(read_file(r.kept_as) == damaged);
    CHECK(r.trials_recovered >= kRows * 3 / 10);
    CHECK(r.trials_recovered < kRows);
    CHECK(r.best_recovered == 0);
    notes_of(r.note);
    CHECK_CONTAINS(r.note, "read errors in trials (unreadable pages skipped)");

    TuningDb db = TuningDb::open(path);
    CHECK(db.verify().empty());
    const std::vector<Trial> back = db.trials();
    CHECK(static_cast<int64_t>(back.size()) == r.trials_recovered);
    for (const Trial& t : back) {  // the rows recovered are the rows written, ids kept
      Trial want = make_trial(static_cast<int>(t.id - 1));
      want.id = t.id;
      want.detail = std::string(300, static_cast<char>('a' + (t.id - 1) % 26));
      want.nsajit_version = NSAJIT_VERSION;
      check_same_trial(t, want);
    }
  }
}

TEST_CASE("db repair: a cut file or a damaged header: the note says what is wrong, each table once; rows intact") {
  TempDir dir;
  const fs::path healthy = dir.path / "healthy.db";
  const std::vector<BestEntry> written = many_best(3000);
  fill_best(healthy, written);
  std::map<std::pair<std::string, int64_t>, const BestEntry*> by_key;
  for (const BestEntry& e : written) by_key[{e.shape, e.t_bucket}] = &e;
  const std::string size = std::to_string(fs::file_size(healthy)), half = std::to_string(fs::file_size(healthy) / 2),
                    pages = std::to_string(fs::file_size(healthy) / 4096),
                    doubled = std::to_string(fs::file_size(healthy) * 2);
  for (const HeaderDamage& d : kHeaderDamages) {
    INFO("damage: ", std::string(d.name));
    const fs::path path = damaged_copy(healthy, d);
    const std::string damaged = read_file(path);
    const nsajit::RepairReport r = nsajit::repair_db(path);
    INFO("note: ", r.note);
    CHECK(read_file(r.kept_as) == damaged);
    notes_of(r.note);
    CHECK(r.trials_recovered == 0);
    const TuningDb db = TuningDb::open(path, TuningDb::Mode::read_only);
    CHECK(db.verify().empty());
    const std::vector<BestEntry> back = db.all_best();
    CHECK(static_cast<int64_t>(back.size()) == r.best_recovered);
    for (const BestEntry& e : back) {  // whatever comes back is a row that was written, intact
      const auto it = by_key.find({e.shape, e.t_bucket});
      REQUIRE(it != by_key.end());
      check_same_best(e, *it->second);
    }
    const std::string file = d.file;
    if (file == "truncated") {
      CHECK_CONTAINS(r.note, "the header says " + pages + " pages of 4096 bytes (" + size + " bytes) but the file has " +
                                 half + " bytes: the file was cut short or its header is damaged");
      CHECK(r.best_recovered >= 900);
    } else if (file == "bad-page-size") {
      // SQLite reads nothing without a valid page size.
      CHECK(r.best_recovered == 0);
      CHECK_CONTAINS(r.note, "the header's page size 61439 is not a valid SQLite page size");
      CHECK_CONTAINS(r.note, "table trials: the damaged copy's schema cannot be read (file is not a database)");
      CHECK_CONTAINS(r.note, "table best: the damaged copy's schema cannot be read (file is not a database)");
    } else {
      // SQLite reads the file as half as many pages of twice the size: only what happens to lie at the start of
      // such a page comes back.
      CHECK_CONTAINS(r.note, "the header says " + pages + " pages of 8192 bytes (" + doubled +
                                 " bytes) but the file has " + size + " bytes");
      MESSAGE("page size 8192 instead of 4096: ", r.best_recovered, " of 3000 best entries recovered");
    }
  }
}

// SQLite checks a WAL frame by frame (salts and a running checksum) and silently stops at the first frame that does
// not check out; a -shm file is only a cache, rebuilt when its header does not check out. None of these is
// damage that SQLite (or nsajit) can see: these tests record what happens, so that a change shows.
TEST_CASE("db damaged WAL or -shm: what SQLite makes of them (undetected; the main file's rows survive)") {
  TempDir dir;
  const fs::path path = dir.path / "tuning.db", wal = path.string() + "-wal", shm = path.string() + "-shm";
  constexpr int kInFile = 5, kInWal = 10;
  make_db_with_wal(path, kInFile, kInWal);
  const WalLayout layout = wal_layout(wal);
  REQUIRE(std::count(layout.commit.begin(), layout.commit.end(), true) == kInWal);
  int64_t expected = 0;
  std::string damaged_wal;

  SUBCASE("intact WAL (the baseline: every commit is read)") { expected = kInFile + kInWal; }
  SUBCASE("garbage in place of the WAL: the commits in it are lost, those in the main file survive") {
    write_file(wal, garbage(20000, 7));
    expected = kInFile;
  }
  SUBCASE("one bit flipped in a committed WAL frame: the commits from that frame on are lost") {
    // The first frame of the sixth transaction in the WAL.
    size_t frame = 0;
    for (int commits = 0; commits < 5; ++frame) commits += layout.commit[frame] ? 1 : 0;
    flip_byte(wal, layout.frame_offset(frame) + 24 + 200, 0x01);
    expected = kInFile + 5;
  }
  SUBCASE("garbage -shm next to an intact WAL: rebuilt, nothing lost") {
    write_file(shm, garbage(32768, 11));
    expected = kInFile + kInWal;
  }
  const std::string main_bytes = read_file(path);
  damaged_wal = read_file(wal);

  {
    const TuningDb db = TuningDb::open(path, TuningDb::Mode::read_only);
    CHECK(db.verify().empty());  // not detected
    const std::vector<Trial> trials = db.trials();
    REQUIRE(static_cast<int64_t>(trials.size()) == expected);
    for (int64_t i = 0; i < expected; ++i) {  // the rows that survive are the first ones written, intact
      Trial want = make_trial(static_cast<int>(i));
      want.id = i + 1;
      want.nsajit_version = NSAJIT_VERSION;
      check_same_trial(trials[static_cast<size_t>(i)], want);
    }
  }
  CHECK(read_file(path) == main_bytes);  // a read-only open changes neither file
  CHECK(read_file(wal) == damaged_wal);

  // A read_write open agrees; repair (which keeps the file and its WAL) recovers exactly the rows SQLite reads.
  CHECK(static_cast<int64_t>(TuningDb::open(path).trials().size()) == expected);
  const nsajit::RepairReport r = nsajit::repair_db(path);
  INFO("note: ", r.note);
  CHECK(r.trials_recovered == expected);
  CHECK(r.note == "every row of the damaged copy was read");
  CHECK(TuningDb::open(path, TuningDb::Mode::read_only).verify().empty());
}

TEST_CASE("db concurrency: four processes writing at once lose nothing") {
  TempDir dir;
  const fs::path path = dir.path / "tuning.db";  // not created beforehand: the children race to create it
  constexpr int kChildren = 4, kEach = 200;
  std::vector<pid_t> kids;
  for (int k = 0; k < kChildren; ++k) {
    const pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      int code = 0;
      try {
        TuningDb db = TuningDb::open(path);
        for (int i = 0; i < kEach; ++i) {
          Trial t = make_trial(i);
          t.family = "child" + std::to_string(k);
          t.detail = std::to_string(i);
          db.add_trial(t);
          if (i % 50 == 0) db.set_best(make_best(t.family, int64_t{1} << (i / 50), 1.0));
        }
      } catch (const std::exception& e) {
        std::fprintf(stderr, "child %d: %s\n", k, e.what());
        code = 1;
      }
      _exit(code);
    }
    kids.push_back(pid);
  }
  for (pid_t pid : kids) {
    int status = 0;
    REQUIRE(waitpid(pid, &status, 0) == pid);
    CHECK(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
  }
  TuningDb db = TuningDb::open(path);
  const auto all = db.trials();
  CHECK(all.size() == kChildren * kEach);
  std::set<int64_t> ids;
  for (const Trial& t : all) ids.insert(t.id);
  CHECK(ids.size() == all.size());
  for (int k = 0; k < kChildren; ++k) {
    const auto mine = db.trials("child" + std::to_string(k));
    REQUIRE(mine.size() == kEach);
    for (int i = 0; i < kEach; ++i) CHECK(mine[i].detail == std::to_string(i));  // each child's order kept
  }
  CHECK(db.all_best().size() == kChildren * 4);
  CHECK(db.verify().empty());
  Raw raw(path);
  CHECK(raw.text("PRAGMA integrity_check") == "ok");
}

TEST_CASE("db kill -9 in the middle of writing leaves a healthy file") {
  TempDir dir;
  for (int round = 0; round < 3; ++round) {
    const fs::path path = dir.path / ("kill" + std::to_string(round) + ".db");
    { TuningDb::open(path); }
    const pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      try {
        TuningDb db = TuningDb::open(path);
        for (int i = 0;; ++i) {
          Trial t = make_trial(i);
          t.detail = std::string(2000, static_cast<char>('a' + i % 26));
          db.add_trial(t);
          if (i % 10 == 0) db.set_best(make_best("win_fwd", int64_t{1} << (i / 10 % 31), 1.0 + i));
        }
      } catch (...) {
      }
      _exit(3);
    }
    // Wait until it has written a while, then kill it wherever it is.
    const size_t enough = 50 + 100 * round;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    size_t seen = 0;
    while (seen < enough && std::chrono::steady_clock::now() < deadline) {
      try {
        seen = TuningDb::open(path, TuningDb::Mode::read_only).trials().size();
      } catch (const DbError&) {
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    std::this_thread::sleep_for(std::chrono::microseconds(700 * round));
    REQUIRE(kill(pid, SIGKILL) == 0);
    int status = 0;
    REQUIRE(waitpid(pid, &status, 0) == pid);
    CHECK(WIFSIGNALED(status));
    CHECK(WTERMSIG(status) == SIGKILL);
    CHECK(seen >= enough);

    TuningDb db = TuningDb::open(path);
    CHECK(db.verify().empty());
    const auto trials = db.trials();
    CHECK(trials.size() >= enough);
    for (size_t i = 0; i < trials.size(); ++i) {  // every committed trial is whole, none missing in between
      CHECK(trials[i].id == static_cast<int64_t>(i + 1));
      CHECK(trials[i].detail == std::string(2000, static_cast<char>('a' + i % 26)));
    }
    CHECK(db.add_trial(make_trial(0)) == static_cast<int64_t>(trials.size() + 1));
  }
}

TEST_CASE("db export and import: JSON round trip") {
  std::vector<BestEntry> entries = {make_best("win_fwd", 65536, 0.123456789012345), make_best("slc_fwd", 1, 1e-3),
                                    make_best("pool", 1024, 3.0)};
  entries[1].toolkit.device = "GPU \"quoted\" | back\\slash \xc3\xbcnicode\ttab";
  entries[1].default_ms = 0;
  entries[2].config = "";
  entries[2].updated = 1;
  const std::string json = nsajit::export_json(entries);
  CHECK_CONTAINS(json, "\"format\": \"nsajit-tuning\"");
  CHECK_CONTAINS(json, "\"nsajit_version\": \"" NSAJIT_VERSION "\"");
  const std::vector<BestEntry> back = nsajit::parse_export(json);
  REQUIRE(back.size() == entries.size());
  for (size_t i = 0; i < entries.size(); ++i) check_same_best(back[i], entries[i]);
  CHECK(nsajit::parse_export(nsajit::export_json({})).empty());

  TempDir dir;
  TuningDb db = TuningDb::open(dir.path / "tuning.db");
  const auto s = db.merge_best(back);
  CHECK(s.added == 3);
  const auto stored = db.all_best();
  REQUIRE(stored.size() == 3);
  CHECK(nsajit::parse_export(nsajit::export_json(stored)).size() == 3);
  CHECK(db.merge_best(back).kept == 3);
}

TEST_CASE("db export: parse_export names what is wrong") {
  CHECK_CONTAINS(usage_error_of([] { nsajit::parse_export("{not json"); }), "not JSON");
  CHECK_CONTAINS(usage_error_of([] { nsajit::parse_export("[]"); }), "not a JSON object");
  CHECK_CONTAINS(usage_error_of([] { nsajit::parse_export(R"({"format": "other", "version": 1, "best": []})"); }),
                 "\"format\" is \"other\"");
  CHECK_CONTAINS(usage_error_of([] { nsajit::parse_export(R"({"version": 1, "best": []})"); }), "\"format\"");
  CHECK_CONTAINS(
      usage_error_of([] { nsajit::parse_export(R"({"format": "nsajit-tuning", "version": 3, "best": []})"); }),
      "\"version\" 3");
  CHECK_CONTAINS(usage_error_of([] { nsajit::parse_export(R"({"format": "nsajit-tuning", "version": 1})"); }),
                 "\"best\"");
  const std::string good = nsajit::export_json({make_best("win_fwd", 1024, 1.0), make_best("win_fwd", 2048, 1.0)});
  auto edited = [&](const std::string& from, const std::string& to, int occurrence) {
    std::string s = good;
    size_t at = 0;
    for (int i = 0; i <= occurrence; ++i) {
      at = s.find(from, i ? at + 1 : 0);
      REQUIRE(at != std::string::npos);
    }
    return s.replace(at, from.size(), to);
  };
  CHECK(usage_error_of([&] { nsajit::parse_export(good); }) == "<no exception>");
  const std::string missing = usage_error_of([&] { nsajit::parse_export(edited("\"median_ms\"", "\"median\"", 1)); });
  CHECK_CONTAINS(missing, "best[1]");
  CHECK_CONTAINS(missing, "\"median_ms\"");
  CHECK_CONTAINS(usage_error_of([&] { nsajit::parse_export(edited("\"t_bucket\": 1024", "\"t_bucket\": \"x\"", 0)); }),
                 "best[0].t_bucket: expected an integer");
  CHECK_CONTAINS(usage_error_of([&] { nsajit::parse_export(edited("\"t_bucket\": 2048", "\"t_bucket\": 2000", 0)); }),
                 "best[1].t_bucket: 2000 is not a power of two");
  CHECK_CONTAINS(usage_error_of([&] { nsajit::parse_export(edited("\"family\": \"win_fwd\"", "\"family\": 5", 1)); }),
                 "best[1].family: expected a string");
  CHECK_CONTAINS(usage_error_of([&] { nsajit::parse_export(edited("\"median_ms\": 1", "\"median_ms\": -1", 0)); }),
                 "best[0].median_ms");
  CHECK_CONTAINS(
      usage_error_of([] { nsajit::parse_export(R"({"format": "nsajit-tuning", "version": 1, "best": [7]})"); }),
      "best[0] is not an object");
  CHECK_CONTAINS(usage_error_of([&] { nsajit::parse_export(edited("\"inputs\": \"coherent\"", "\"inputs\": \"noise\"", 1)); }),
                 "best[1].inputs: \"noise\" is not");
  CHECK_CONTAINS(usage_error_of([&] { nsajit::parse_export(edited("\"overlap\": \"\"", "\"overlap\": \"mid\"", 0)); }),
                 "best[0].overlap: \"mid\" is not");
  CHECK_CONTAINS(usage_error_of([&] { nsajit::parse_export(edited("\"overlap\": \"\"", "\"overlap_\": \"\"", 0)); }),
                 "best[0]: missing field \"overlap\"");
}

TEST_CASE("db export: version 2 carries the input kind and overlap bucket; version 1 reads as the migration does") {
  BestEntry low = make_best("slc_fwd", 65536, 17.7), high = make_best("slc_fwd", 65536, 10.3);
  low.overlap = "low", low.inputs = "random";
  high.overlap = "high";
  const std::vector<BestEntry> back = nsajit::parse_export(nsajit::export_json({low, high}));
  REQUIRE(back.size() == 2);
  check_same_best(back[0], low);
  check_same_best(back[1], high);
  const std::string entry = R"({"device": "dev", "driver_version": 13000, "nvrtc_version": "13.0", "family": "F",
      "shape": "s", "t_bucket": 1024, "problem": "p", "config": "BM=16", "source_hash": "h", "median_ms": 1.5,
      "default_ms": 2, "updated": 1700000000, "nsajit_version": "0.1.0"})";
  auto v1 = [&](const std::string& family) {
    std::string e = entry;
    e.replace(e.find("\"F\""), 3, "\"" + family + "\"");
    return nsajit::parse_export(R"({"format": "nsajit-tuning", "version": 1, "best": [)" + e + "]}");
  };
  const auto slc = v1("slc_fwd"), win = v1("win_fwd");
  REQUIRE(slc.size() == 1);
  REQUIRE(win.size() == 1);
  CHECK(slc[0].inputs == "random");
  CHECK(slc[0].overlap == "low");
  CHECK(slc[0].median_ms == 1.5);
  CHECK(win[0].inputs == "random");
  CHECK(win[0].overlap.empty());
  // Version 2 needs both fields.
  CHECK_CONTAINS(usage_error_of([&] {
                   nsajit::parse_export(R"({"format": "nsajit-tuning", "version": 2, "best": [)" + entry + "]}");
                 }),
                 "missing field \"inputs\"");
}

// ---- the command ------------------------------------------------------------------------------------------------

namespace {

// Runs `nsajit ARGS` with its own cache directory and NSAJIT_DB = DIR/default.db, stderr folded in.
Run nsajit_cli(const TempDir& dir, const std::string& args) {
  const std::string command = "NSAJIT_CACHE_DIR=" + quoted((dir.path / "cache").string()) +
                              " NSAJIT_DB=" + quoted((dir.path / "default.db").string()) + " " +
                              quoted(NSAJIT_CLI_PATH) + " " + args + " 2>&1";
  return run_shell(command);
}

#define CHECK_EXIT(run, expected)                                                                                \
  do {                                                                                                           \
    const Run& run_once_ = (run);                                                                                \
    CHECK_MESSAGE(run_once_.code == (expected), "exit " << run_once_.code << ", output:\n" << run_once_.output); \
  } while (false)

std::vector<std::string> lines_with(const std::string& text, const std::string& needle) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    const std::string line = text.substr(start, end - start);
    if (contains(line, needle)) out.push_back(line);
    start = end + 1;
  }
  return out;
}

// What this machine measures with, as the command sees it.
Toolkit current_toolkit() {
  Toolkit tk{kToolkit.device, 13000, nsajit::nvrtc_version()};
  if (nsajit::driver_available()) tk.driver_version = nsajit::query_device(0).driver_version;
  return tk;
}

// Four best entries (current; NVRTC 11.8; changed source; unknown family) and five trials (three ok, a timeout,
// a compile error of NVRTC 11.8).
void fill_cli_db(const fs::path& path) {
  const nsajit::KernelFamily& f = nsajit::find_family("win_fwd");
  const Toolkit now = current_toolkit();
  Toolkit old = now;
  old.nvrtc_version = "11.8";
  TuningDb db = TuningDb::open(path);
  auto entry = [&](int64_t t, const Toolkit& tk, const std::string& family, bool right_hash) {
    Problem p = nsajit::preset("fla");
    p.T = t;
    const nsajit::TileConfig cfg = f.default_config(p);
    BestEntry e;
    e.toolkit = tk;
    e.family = family;
    e.shape = nsajit::problem_key(p).shape;
    e.t_bucket = nsajit::problem_key(p).t_bucket;
    e.problem = p.describe();
    e.config = nsajit::describe(cfg);
    e.source_hash = right_hash ? nsajit::source_hash({&f, p, cfg, "sm_90a"}) : std::string(64, '0');
    e.median_ms = 0.8;
    e.default_ms = 1.0;
    db.set_best(e);
  };
  entry(65536, now, "win_fwd", true);
  entry(8192, old, "win_fwd", true);
  entry(16384, now, "win_fwd", false);
  entry(4096, now, "future_fwd", true);
  for (int i = 0; i < 5; ++i) {
    Trial t = make_trial(i, now);
    if (i == 3) t.outcome = Outcome::timeout, t.detail = "no result within 10 s";
    if (i == 4) t.outcome = Outcome::compile_error, t.detail = "error: boom", t.toolkit = old;
    db.add_trial(t);
  }
}

}  // namespace

TEST_CASE("db cli: list and show") {
  TempDir dir;
  const fs::path path = dir.path / "filled.db";
  fill_cli_db(path);
  const std::string db = " --db " + quoted(path.string());

  const Run list = nsajit_cli(dir, "db list" + db);
  CHECK_EXIT(list, 0);
  CHECK_CONTAINS(list.output, path.string());
  CHECK_CONTAINS(list.output, "4 best entries");
  const auto current = lines_with(list.output, "T<=65536");
  REQUIRE(current.size() == 1);
  CHECK_CONTAINS(current[0], "H200");
  CHECK_NOT_CONTAINS(current[0], "|cc9.0");  // the short device name
  CHECK_CONTAINS(current[0], "win_fwd");
  CHECK_CONTAINS(current[0], "bf16 B=1 T<=65536 HQ=64 H=4 dk=128");
  CHECK_CONTAINS(current[0], "0.8000 ms");
  CHECK_CONTAINS(current[0], "speed-up 1.25x");
  CHECK_NOT_CONTAINS(current[0], "STALE");
  const auto old = lines_with(list.output, "T<=8192");
  REQUIRE(old.size() == 1);
  CHECK_CONTAINS(old[0], "STALE: NVRTC 11.8 (now " + nsajit::nvrtc_version() + ")");
  const auto changed = lines_with(list.output, "T<=16384");
  REQUIRE(changed.size() == 1);
  CHECK_CONTAINS(changed[0], "STALE: kernel source changed");
  const auto unknown = lines_with(list.output, "future_fwd");
  REQUIRE(unknown.size() == 1);
  CHECK_CONTAINS(unknown[0], "cannot check the source: unknown family 'future_fwd'");
  CHECK_NOT_CONTAINS(unknown[0], "STALE");
  CHECK_CONTAINS(list.output, "5 trials (ok 3, pruned 0, compile_error 1, launch_error 0, wrong_result 0, timeout 1)");
  CHECK_CONTAINS(list.output, "2 stale best entries");

  const Run show = nsajit_cli(dir, "db show" + db);
  CHECK_EXIT(show, 0);
  CHECK(lines_with(show.output, "stage").size() == 5);
  CHECK_CONTAINS(show.output, "#1 H200 win_fwd bf16 B=1 T<=65536");
  CHECK_CONTAINS(show.output, "median 1.0000 ms (p20 0.9900, p80 1.0100, 30 reps)");
  CHECK_CONTAINS(show.output, "timeout: no result within 10 s");
  CHECK_CONTAINS(show.output, "compile_error: error: boom");
  CHECK_CONTAINS(show.output, "regs 128 spill 0 B smem 49152 B");
  CHECK_CONTAINS(show.output, "2023-11-14 22:13:20 UTC");
  CHECK_CONTAINS(show.output, "5 of 5 matching trials");

  const Run timeouts = nsajit_cli(dir, "db show --outcome timeout" + db);
  CHECK_EXIT(timeouts, 0);
  CHECK(lines_with(timeouts.output, "stage").size() == 1);
  CHECK_CONTAINS(timeouts.output, "#4 ");
  CHECK_CONTAINS(timeouts.output, "1 of 1 matching");
  const Run limited = nsajit_cli(dir, "db show --limit 2" + db);
  CHECK(lines_with(limited.output, "stage").size() == 2);
  CHECK_CONTAINS(limited.output, "#5 ");
  CHECK_NOT_CONTAINS(limited.output, "#1 ");
  CHECK_CONTAINS(nsajit_cli(dir, "db show --family slc_fwd" + db).output, "0 of 0 matching");
  const Run bad = nsajit_cli(dir, "db show --outcome bogus" + db);
  CHECK_EXIT(bad, 2);
  CHECK_CONTAINS(bad.output, "unknown outcome 'bogus'");
  // --db after the subcommand works too, and NSAJIT_DB is the default.
  CHECK_EXIT(nsajit_cli(dir, "db --db " + quoted(path.string()) + " list"), 0);
  fs::copy_file(path, dir.path / "default.db");
  CHECK_CONTAINS(nsajit_cli(dir, "db list").output, "4 best entries");
}

TEST_CASE("db cli: export, then import into another database") {
  TempDir dir;
  const fs::path path = dir.path / "filled.db", other = dir.path / "new" / "other.db", out = dir.path / "best.json";
  fill_cli_db(path);
  const Run exp = nsajit_cli(dir, "db export -o " + quoted(out.string()) + " --db " + quoted(path.string()));
  CHECK_EXIT(exp, 0);
  CHECK_CONTAINS(exp.output, "exported 4 best entries");
  const auto entries = nsajit::parse_export(read_file(out));
  CHECK(entries.size() == 4);
  const Run to_stdout = nsajit_cli(dir, "db export --db " + quoted(path.string()));
  CHECK_EXIT(to_stdout, 0);
  CHECK(nsajit::parse_export(to_stdout.output).size() == 4);

  const Run imp = nsajit_cli(dir, "db import " + quoted(out.string()) + " --db " + quoted(other.string()));
  CHECK_EXIT(imp, 0);
  CHECK_CONTAINS(imp.output, "4 added, 0 replaced (faster), 0 kept");
  const Run again = nsajit_cli(dir, "db import " + quoted(out.string()) + " --db " + quoted(other.string()));
  CHECK_CONTAINS(again.output, "0 added, 0 replaced (faster), 4 kept");
  const auto stored = TuningDb::open(other, TuningDb::Mode::read_only).all_best();
  const auto original = TuningDb::open(path, TuningDb::Mode::read_only).all_best();
  REQUIRE(stored.size() == original.size());
  for (size_t i = 0; i < stored.size(); ++i) check_same_best(stored[i], original[i]);
  CHECK_CONTAINS(nsajit_cli(dir, "db list --db " + quoted(other.string())).output, "speed-up 1.25x");

  write_file(dir.path / "bad.json", "{\"format\": \"nsajit-tuning\", \"version\": 1, \"best\": [{}]}");
  const Run bad =
      nsajit_cli(dir, "db import " + quoted((dir.path / "bad.json").string()) + " --db " + quoted(other.string()));
  CHECK_EXIT(bad, 2);
  CHECK_CONTAINS(bad.output, "best[0]: missing field \"device\"");
  CHECK_EXIT(nsajit_cli(dir, "db import " + quoted((dir.path / "none.json").string())), 2);
}

TEST_CASE("db cli: verify on healthy and corrupted files, and --repair") {
  TempDir dir;
  const fs::path path = dir.path / "filled.db";
  fill_cli_db(path);
  const Run healthy = nsajit_cli(dir, "db verify --db " + quoted(path.string()));
  CHECK_EXIT(healthy, 0);
  CHECK_CONTAINS(healthy.output, "ok: no problems");
  CHECK_CONTAINS(healthy.output, "2 stale best entries, 1 stale trials");
  CHECK_CONTAINS(healthy.output, "stale: H200 win_fwd bf16 B=1 T<=8192");

  const fs::path bad = dir.path / "bad.db";
  make_corrupted_db(bad, 1000, 5);
  const std::string damaged = read_file(bad);
  const Run corrupted = nsajit_cli(dir, "db verify --db " + quoted(bad.string()));
  CHECK_EXIT(corrupted, 1);
  CHECK_CONTAINS(corrupted.output, bad.string());
  CHECK_CONTAINS(corrupted.output, "run `nsajit db verify --repair` to keep a copy and recover what can be read");
  const Run list = nsajit_cli(dir, "db list --db " + quoted(bad.string()));
  CHECK_EXIT(list, 1);
  CHECK_CONTAINS(list.output, "is damaged (PRAGMA quick_check: database disk image is malformed); run");
  CHECK(control_chars_in(list.output).empty());
  CHECK(read_file(bad) == damaged);

  const Run repaired = nsajit_cli(dir, "db verify --repair --db " + quoted(bad.string()));
  CHECK_EXIT(repaired, 0);
  CHECK_CONTAINS(repaired.output, "the damaged file is kept as " + bad.string() + ".damaged-");
  CHECK_CONTAINS(repaired.output, "best entries into a new database at " + bad.string());
  std::vector<fs::path> kept;
  for (const auto& e : fs::directory_iterator(dir.path))
    if (contains(e.path().filename().string(), "bad.db.damaged-") && !contains(e.path().filename().string(), "-wal") &&
        !contains(e.path().filename().string(), "-shm"))
      kept.push_back(e.path());
  REQUIRE(kept.size() == 1);
  CHECK(read_file(kept[0]) == damaged);
  const TuningDb db = TuningDb::open(bad, TuningDb::Mode::read_only);
  CHECK(db.trials().size() > 800);
  CHECK(db.all_best().size() == 5);
  CHECK_EXIT(nsajit_cli(dir, "db verify --db " + quoted(bad.string())), 0);
}

TEST_CASE("db cli: a truncated or header-damaged file: every command says why, --repair recovers the rows") {
  TempDir dir;
  const fs::path healthy = dir.path / "healthy.db";
  fill_best(healthy, many_best(3000));
  for (const HeaderDamage& d : kHeaderDamages) {
    INFO("damage: ", std::string(d.name));
    const fs::path path = damaged_copy(healthy, d);
    const std::string damaged = read_file(path);
    const std::string db = " --db " + quoted(path.string());
    for (const std::string cmd : {"list", "show", "export", "verify", "prune --stale --yes"}) {
      INFO("command: db ", cmd);
      const Run r = nsajit_cli(dir, "db " + cmd + db);
      CHECK_EXIT(r, 1);
      CHECK_CONTAINS(r.output, "nsajit: tuning database " + path.string() + " is damaged (" + d.reason +
                                   "); run `nsajit db verify --repair` to keep a copy and recover what can be read\n");
      CHECK_MESSAGE(control_chars_in(r.output).empty(), control_chars_in(r.output) << " in:\n" << r.output);
    }
    CHECK(read_file(path) == damaged);
  }

  // The truncated file, repaired: about half of the rows come back.
  const fs::path path = dir.path / "truncated.db";
  const std::string damaged = read_file(path);
  const Run repaired = nsajit_cli(dir, "db verify --repair --db " + quoted(path.string()));
  CHECK_EXIT(repaired, 0);
  CHECK_MESSAGE(control_chars_in(repaired.output).empty(), repaired.output);
  CHECK_CONTAINS(repaired.output, "is damaged (PRAGMA application_id: database disk image is malformed)");
  const std::string marker = "recovered 0 trials and ";
  const size_t at = repaired.output.find(marker);
  REQUIRE_MESSAGE(at != std::string::npos, repaired.output);
  const long long recovered = std::stoll(repaired.output.substr(at + marker.size()));
  CHECK(recovered >= 900);
  CHECK(recovered < 3000);
  CHECK_CONTAINS(repaired.output, "read errors in best (unreadable pages skipped)");
  CHECK_NOT_CONTAINS(repaired.output, "cannot be read");
  std::vector<fs::path> kept;
  for (const auto& e : fs::directory_iterator(dir.path)) {
    const std::string name = e.path().filename().string();
    if (contains(name, "truncated.db.damaged-") && !contains(name, "-wal") && !contains(name, "-shm"))
      kept.push_back(e.path());
  }
  REQUIRE(kept.size() == 1);
  CHECK(read_file(kept[0]) == damaged);
  CHECK_EXIT(nsajit_cli(dir, "db verify --db " + quoted(path.string())), 0);
  CHECK_CONTAINS(nsajit_cli(dir, "db list --db " + quoted(path.string())).output,
                 std::to_string(recovered) + " best entries");
}

TEST_CASE("db cli: prune is a dry run without --yes") {
  TempDir dir;
  const fs::path path = dir.path / "filled.db";
  fill_cli_db(path);
  const std::string db = " --db " + quoted(path.string());
  const Run dry = nsajit_cli(dir, "db prune --stale" + db);
  CHECK_EXIT(dry, 0);
  CHECK_CONTAINS(dry.output,
                 "dry run: would remove 1 stale trials (another driver/NVRTC) and 2 stale best entries "
                 "(1 of another driver/NVRTC, 1 of changed kernel source)");
  CHECK(lines_with(dry.output, "would remove best").size() == 2);
  CHECK(TuningDb::open(path, TuningDb::Mode::read_only).trials().size() == 5);
  CHECK(TuningDb::open(path, TuningDb::Mode::read_only).all_best().size() == 4);

  const Run yes = nsajit_cli(dir, "db prune --stale --yes" + db);
  CHECK_EXIT(yes, 0);
  CHECK_CONTAINS(yes.output, "removed 1 trials and 2 best entries from");
  {
    const TuningDb after = TuningDb::open(path, TuningDb::Mode::read_only);
    CHECK(after.trials().size() == 4);
    const auto best = after.all_best();
    REQUIRE(best.size() == 2);  // the current entry and the one that cannot be judged stay
    CHECK(best[0].family == "future_fwd");
    CHECK(best[1].t_bucket == 65536);
  }
  CHECK_NOT_CONTAINS(nsajit_cli(dir, "db list" + db).output, "STALE");
  CHECK_CONTAINS(nsajit_cli(dir, "db prune --stale" + db).output, "would remove 0 stale trials");

  const Run family = nsajit_cli(dir, "db prune --family future_fwd --yes" + db);
  CHECK_EXIT(family, 0);
  CHECK_CONTAINS(family.output, "removed 0 trials and 1 best entries of family future_fwd");
  const Run nothing = nsajit_cli(dir, "db prune" + db);
  CHECK_EXIT(nothing, 2);
  CHECK_CONTAINS(nothing.output, "--stale");
}

TEST_CASE("db cli: missing database, foreign and newer files") {
  TempDir dir;
  const fs::path missing = dir.path / "none" / "tuning.db";
  for (const std::string cmd : {"list", "show", "export", "verify", "prune --stale", "prune --stale --yes"}) {
    const Run r = nsajit_cli(dir, "db " + cmd + " --db " + quoted(missing.string()));
    CHECK_EXIT(r, 1);
    CHECK_CONTAINS(r.output, "no tuning database at " + missing.string() + " (run `nsajit tune` to create one)");
  }
  CHECK_FALSE(fs::exists(missing.parent_path()));
  CHECK_CONTAINS(nsajit_cli(dir, "db list").output, "no tuning database at " + (dir.path / "default.db").string());

  const fs::path text = dir.path / "notes.db";
  write_file(text, "my notes, not a database at all.\n");
  const Run list = nsajit_cli(dir, "db list --db " + quoted(text.string()));
  CHECK_EXIT(list, 1);
  CHECK_CONTAINS(list.output, text.string() + " is not an nsajit tuning database");
  CHECK_EXIT(nsajit_cli(dir, "db import " + quoted(text.string()) + " --db " + quoted(text.string())), 2);
  const Run verify = nsajit_cli(dir, "db verify --db " + quoted(text.string()));
  CHECK_EXIT(verify, 1);
  CHECK(read_file(text) == "my notes, not a database at all.\n");
  const Run repair = nsajit_cli(dir, "db verify --repair --db " + quoted(text.string()));
  CHECK_EXIT(repair, 0);
  CHECK_CONTAINS(repair.output, "recovered 0 trials and 0 best entries");
  CHECK(TuningDb::open(text, TuningDb::Mode::read_only).verify().empty());

  const fs::path newer = dir.path / "newer.db";
  { TuningDb::open(newer); }
  { Raw(newer).exec("PRAGMA user_version = 9"); }
  const Run n = nsajit_cli(dir, "db verify --repair --db " + quoted(newer.string()));
  CHECK_EXIT(n, 1);
  CHECK_CONTAINS(n.output, "written by a newer nsajit");
  CHECK(Raw(newer, SQLITE_OPEN_READONLY).scalar("PRAGMA user_version") == 9);
}

TEST_CASE("db cli fuzzed: random bytes, cuts and bit flips of a healthy file: a clear answer, never a crash, the "
          "file untouched") {
  TempDir dir;
  const fs::path healthy = dir.path / "healthy.db";
  fill_best(healthy, many_best(400));
  const std::string good = read_file(healthy);
  REQUIRE(good.size() > 4096);
  uint64_t state = 20261130;  // splitmix64: the cases are the same on every machine
  auto next = [&state] {
    uint64_t z = (state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  };
  int cases = 0, refused = 0, read_ok = 0;
  for (int i = 0; i < 45; ++i) {
    std::string bytes;
    const int kind = i % 3;
    if (kind == 0) {  // random bytes, sometimes behind SQLite's own header
      bytes.resize(static_cast<size_t>(next() % 8192));
      for (char& c : bytes) c = static_cast<char>(next());
      if (next() % 2 && bytes.size() >= 16) std::memcpy(bytes.data(), "SQLite format 3", 16);
    } else if (kind == 1) {  // the healthy file cut anywhere
      bytes = good.substr(0, static_cast<size_t>(next() % good.size()));
    } else {  // 1 to 16 flipped bits anywhere
      bytes = good;
      const int flips = 1 + static_cast<int>(next() % 16);
      for (int f = 0; f < flips; ++f) bytes[static_cast<size_t>(next() % bytes.size())] ^= static_cast<char>(1 << (next() % 8));
    }
    const fs::path path = dir.path / ("fuzz" + std::to_string(i) + ".db");
    std::ofstream(path, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    for (const char* cmd : {"list", "show", "verify"}) {
      INFO("case ", i, " (kind ", kind, ", ", bytes.size(), " bytes): db ", std::string(cmd));
      const Run r = nsajit_cli(dir, std::string("db ") + cmd + " --db " + quoted(path.string()));
      ++cases;
      INFO(r.output);
      CHECK((r.code == 0 || r.code == 1));  // never a signal (-1), never a usage error for a file
      if (r.code == 1) {
        ++refused;
        // Refused on opening ("nsajit: ... is damaged (reason)"), or verify's list of the problems it found.
        CHECK((contains(r.output, "nsajit: ") || contains(r.output, "problems: run `nsajit db verify --repair`")));
        CHECK_CONTAINS(r.output, path.string());
      } else {
        ++read_ok;
      }
      CHECK(control_chars_in(r.output).empty());
      CHECK(read_file(path) == bytes);  // the file itself untouched
    }
  }
  MESSAGE(cases << " fuzzed db commands: " << refused << " refused with a message, " << read_ok
                << " read the file (a flip in unused space)");
  CHECK(refused > cases / 2);
}
