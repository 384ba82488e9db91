#include "db/db.h"

#include <fmt/format.h>
#include <llvm/Support/Error.h>
#include <llvm/Support/FormatVariadic.h>
#include <llvm/Support/JSON.h>
#include <llvm/Support/raw_ostream.h>
#include <pwd.h>
#include <sqlite3.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <set>
#include <thread>
#include <utility>

namespace nsajit {

namespace fs = std::filesystem;

// ---- schema ---------------------------------------------------------------------------------------------------

const std::string_view kSchemaV1Sql = R"sql(
CREATE TABLE trials (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  device TEXT NOT NULL,
  driver_version INTEGER NOT NULL,
  nvrtc_version TEXT NOT NULL,
  family TEXT NOT NULL,
  shape TEXT NOT NULL,
  t_bucket INTEGER NOT NULL,
  problem TEXT NOT NULL,
  config TEXT NOT NULL,
  source_hash TEXT NOT NULL,
  outcome TEXT NOT NULL CHECK (outcome IN ('ok', 'pruned', 'compile_error', 'launch_error', 'wrong_result')),
  detail TEXT NOT NULL DEFAULT '',
  median_ms REAL NOT NULL DEFAULT 0,
  p20_ms REAL NOT NULL DEFAULT 0,
  p80_ms REAL NOT NULL DEFAULT 0,
  reps INTEGER NOT NULL DEFAULT 0,
  registers INTEGER NOT NULL DEFAULT -1,
  spill_bytes INTEGER NOT NULL DEFAULT 0,
  smem_bytes INTEGER NOT NULL DEFAULT 0,
  compile_seconds REAL NOT NULL DEFAULT 0,
  created INTEGER NOT NULL
);
CREATE INDEX trials_key ON trials (family, problem, config, device);
CREATE TABLE best (
  device TEXT NOT NULL,
  driver_version INTEGER NOT NULL,
  nvrtc_version TEXT NOT NULL,
  family TEXT NOT NULL,
  shape TEXT NOT NULL,
  t_bucket INTEGER NOT NULL,
  problem TEXT NOT NULL,
  config TEXT NOT NULL,
  source_hash TEXT NOT NULL,
  median_ms REAL NOT NULL,
  updated INTEGER NOT NULL,
  PRIMARY KEY (device, family, shape, t_bucket)
);
)sql";

namespace {

constexpr std::string_view kTrialsV2Sql = R"sql(
CREATE TABLE trials (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  device TEXT NOT NULL,
  driver_version INTEGER NOT NULL,
  nvrtc_version TEXT NOT NULL,
  family TEXT NOT NULL,
  shape TEXT NOT NULL,
  t_bucket INTEGER NOT NULL CHECK (t_bucket >= 1),
  problem TEXT NOT NULL,
  config TEXT NOT NULL,
  source_hash TEXT NOT NULL,
  stage INTEGER NOT NULL DEFAULT 0 CHECK (stage >= 0),
  outcome TEXT NOT NULL
    CHECK (outcome IN ('ok', 'pruned', 'compile_error', 'launch_error', 'wrong_result', 'timeout')),
  detail TEXT NOT NULL DEFAULT '',
  median_ms REAL NOT NULL DEFAULT 0,
  p20_ms REAL NOT NULL DEFAULT 0,
  p80_ms REAL NOT NULL DEFAULT 0,
  reps INTEGER NOT NULL DEFAULT 0,
  registers INTEGER NOT NULL DEFAULT -1,
  spill_bytes INTEGER NOT NULL DEFAULT 0,
  smem_bytes INTEGER NOT NULL DEFAULT 0,
  compile_seconds REAL NOT NULL DEFAULT 0,
  created INTEGER NOT NULL,
  nsajit_version TEXT NOT NULL DEFAULT ''
);
CREATE INDEX trials_lookup
  ON trials (family, problem, config, device, source_hash, driver_version, nvrtc_version, stage);
)sql";

constexpr std::string_view kBestV2Sql = R"sql(
CREATE TABLE best (
  device TEXT NOT NULL,
  driver_version INTEGER NOT NULL,
  nvrtc_version TEXT NOT NULL,
  family TEXT NOT NULL,
  shape TEXT NOT NULL,
  t_bucket INTEGER NOT NULL CHECK (t_bucket >= 1),
  problem TEXT NOT NULL,
  config TEXT NOT NULL,
  source_hash TEXT NOT NULL,
  median_ms REAL NOT NULL,
  default_ms REAL NOT NULL DEFAULT 0,
  updated INTEGER NOT NULL,
  nsajit_version TEXT NOT NULL DEFAULT '',
  PRIMARY KEY (device, family, shape, t_bucket)
);
)sql";

// Version 3: trials gains `inputs` (at the end, where ALTER TABLE ADD COLUMN puts it in a migrated file) and the
// lookup index covers it; best gains `inputs` and `overlap`, which joins the key.
constexpr std::string_view kTrialsV3Sql = R"sql(
CREATE TABLE trials (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  device TEXT NOT NULL,
  driver_version INTEGER NOT NULL,
  nvrtc_version TEXT NOT NULL,
  family TEXT NOT NULL,
  shape TEXT NOT NULL,
  t_bucket INTEGER NOT NULL CHECK (t_bucket >= 1),
  problem TEXT NOT NULL,
  config TEXT NOT NULL,
  source_hash TEXT NOT NULL,
  stage INTEGER NOT NULL DEFAULT 0 CHECK (stage >= 0),
  outcome TEXT NOT NULL
    CHECK (outcome IN ('ok', 'pruned', 'compile_error', 'launch_error', 'wrong_result', 'timeout')),
  detail TEXT NOT NULL DEFAULT '',
  median_ms REAL NOT NULL DEFAULT 0,
  p20_ms REAL NOT NULL DEFAULT 0,
  p80_ms REAL NOT NULL DEFAULT 0,
  reps INTEGER NOT NULL DEFAULT 0,
  registers INTEGER NOT NULL DEFAULT -1,
  spill_bytes INTEGER NOT NULL DEFAULT 0,
  smem_bytes INTEGER NOT NULL DEFAULT 0,
  compile_seconds REAL NOT NULL DEFAULT 0,
  created INTEGER NOT NULL,
  nsajit_version TEXT NOT NULL DEFAULT '',
  inputs TEXT NOT NULL DEFAULT 'random' CHECK (inputs IN ('random', 'coherent'))
);
)sql";
constexpr std::string_view kTrialsIndexV3Sql = R"sql(
CREATE INDEX trials_lookup
  ON trials (family, problem, config, device, source_hash, driver_version, nvrtc_version, inputs, stage);
)sql";

constexpr std::string_view kBestV3Sql = R"sql(
CREATE TABLE best (
  device TEXT NOT NULL,
  driver_version INTEGER NOT NULL,
  nvrtc_version TEXT NOT NULL,
  family TEXT NOT NULL,
  shape TEXT NOT NULL,
  t_bucket INTEGER NOT NULL CHECK (t_bucket >= 1),
  problem TEXT NOT NULL,
  config TEXT NOT NULL,
  source_hash TEXT NOT NULL,
  median_ms REAL NOT NULL,
  default_ms REAL NOT NULL DEFAULT 0,
  updated INTEGER NOT NULL,
  nsajit_version TEXT NOT NULL DEFAULT '',
  inputs TEXT NOT NULL DEFAULT 'random' CHECK (inputs IN ('random', 'coherent')),
  overlap TEXT NOT NULL DEFAULT '' CHECK (overlap IN ('', 'low', 'high')),
  PRIMARY KEY (device, family, shape, t_bucket, overlap)
);
)sql";

// Version 2 -> 3, inside the caller's transaction. slc_fwd is the one data-dependent family of version 2.
constexpr std::string_view kMigrateV2ToV3Sql = R"sql(
ALTER TABLE trials ADD COLUMN inputs TEXT NOT NULL DEFAULT 'random' CHECK (inputs IN ('random', 'coherent'));
DROP INDEX IF EXISTS trials_lookup;
ALTER TABLE best RENAME TO best_v2;
)sql";
constexpr std::string_view kMigrateV2ToV3CopySql = R"sql(
INSERT INTO best (device, driver_version, nvrtc_version, family, shape, t_bucket, problem, config, source_hash,
                  median_ms, default_ms, updated, nsajit_version, inputs, overlap)
  SELECT device, driver_version, nvrtc_version, family, shape, t_bucket, problem, config, source_hash,
         median_ms, default_ms, updated, nsajit_version, 'random',
         CASE WHEN family = 'slc_fwd' THEN 'low' ELSE '' END FROM best_v2;
DROP TABLE best_v2;
)sql";

// Version 1 -> 2, inside the caller's transaction. Both tables are rebuilt so that a migrated file has exactly the
// layout of a new one; trial ids and the AUTOINCREMENT counter are kept.
constexpr std::string_view kMigrateV1ToV2Sql = R"sql(
ALTER TABLE trials RENAME TO trials_v1;
DROP INDEX IF EXISTS trials_key;
ALTER TABLE best RENAME TO best_v1;
)sql";
constexpr std::string_view kMigrateV1ToV2CopySql = R"sql(
INSERT INTO trials (id, device, driver_version, nvrtc_version, family, shape, t_bucket, problem, config, source_hash,
                    stage, outcome, detail, median_ms, p20_ms, p80_ms, reps, registers, spill_bytes, smem_bytes,
                    compile_seconds, created, nsajit_version)
  SELECT id, device, driver_version, nvrtc_version, family, shape, t_bucket, problem, config, source_hash,
         1, outcome, detail, median_ms, p20_ms, p80_ms, reps, registers, spill_bytes, smem_bytes,
         compile_seconds, created, '' FROM trials_v1 ORDER BY id;
DELETE FROM sqlite_sequence WHERE name = 'trials';
INSERT INTO sqlite_sequence (name, seq) SELECT 'trials', seq FROM sqlite_sequence WHERE name = 'trials_v1';
DROP TABLE trials_v1;
INSERT INTO best (device, driver_version, nvrtc_version, family, shape, t_bucket, problem, config, source_hash,
                  median_ms, default_ms, updated, nsajit_version)
  SELECT device, driver_version, nvrtc_version, family, shape, t_bucket, problem, config, source_hash,
         median_ms, 0, updated, '' FROM best_v1;
DROP TABLE best_v1;
)sql";

const std::array<std::string_view, 24> kTrialColumns = {
    "id",          "device",     "driver_version",  "nvrtc_version", "family",         "shape",
    "t_bucket",    "problem",    "config",          "source_hash",   "stage",          "outcome",
    "detail",      "median_ms",  "p20_ms",          "p80_ms",        "reps",           "registers",
    "spill_bytes", "smem_bytes", "compile_seconds", "created",       "nsajit_version", "inputs"};
const std::array<std::string_view, 15> kBestColumns = {
    "device",      "driver_version", "nvrtc_version", "family",  "shape",          "t_bucket", "problem", "config",
    "source_hash", "median_ms",      "default_ms",    "updated", "nsajit_version", "inputs",   "overlap"};

constexpr std::array<std::string_view, 6> kOutcomeNames = {"ok",           "pruned",       "compile_error",
                                                           "launch_error", "wrong_result", "timeout"};

constexpr int kBusyTimeoutMs = 15000;

int64_t now_unix() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string repair_hint() { return "run `nsajit db verify --repair` to keep a copy and recover what can be read"; }

bool is_corruption(int rc) {
  const int primary = rc & 0xff;
  return primary == SQLITE_CORRUPT || primary == SQLITE_NOTADB;
}

// Turns an SQLite failure into a DbError naming the file.
[[noreturn]] void fail(sqlite3* db, int rc, const fs::path& path, std::string_view what) {
  const std::string msg = db ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
  const int primary = rc & 0xff;
  if (is_corruption(rc))
    throw DbError(DbError::Kind::corrupted,
                  fmt::format("tuning database {} is damaged ({}: {}); {}", path.string(), what, msg, repair_hint()));
  if (primary == SQLITE_BUSY || primary == SQLITE_LOCKED)
    throw DbError(DbError::Kind::busy,
                  fmt::format("tuning database {} stayed locked by another process for more than {} s ({}: {})",
                              path.string(), kBusyTimeoutMs / 1000, what, msg));
  throw DbError(DbError::Kind::io, fmt::format("tuning database {}: {} failed: {}", path.string(), what, msg));
}

// One prepared statement with bound parameters; columns read by index. It keeps its own copy of the SQL text (often
// a temporary built by fmt::format) for the messages of later failures.
class Stmt {
public:
  Stmt(sqlite3* db, const fs::path& path, std::string_view sql) : db_(db), path_(path), sql_(sql) {
    const int rc = sqlite3_prepare_v2(db, sql_.data(), static_cast<int>(sql_.size()), &s_, nullptr);
    if (rc != SQLITE_OK) fail(db, rc, path, fmt::format("preparing '{}'", first_words()));
  }
  ~Stmt() { sqlite3_finalize(s_); }
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;

  Stmt& bind(int i, int64_t v) { return check(sqlite3_bind_int64(s_, i, v)); }
  Stmt& bind(int i, int v) { return check(sqlite3_bind_int64(s_, i, v)); }
  Stmt& bind(int i, double v) { return check(sqlite3_bind_double(s_, i, v)); }
  Stmt& bind(int i, std::string_view v) {
    // A null data pointer would bind NULL; an empty string_view is the empty text.
    return check(sqlite3_bind_text64(s_, i, v.data() ? v.data() : "", v.size(), SQLITE_TRANSIENT, SQLITE_UTF8));
  }
  Stmt& bind(int i, const std::string& v) { return bind(i, std::string_view(v)); }
  Stmt& bind(int i, const char* v) { return bind(i, std::string_view(v)); }

  // True while there is a row; throws DbError on failure.
  bool step() {
    const int rc = sqlite3_step(s_);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    fail(db_, rc, path_, first_words());
  }
  // The raw result code, for callers that handle failures themselves (repair).
  int step_rc() { return sqlite3_step(s_); }
  void reset() {
    sqlite3_reset(s_);
    sqlite3_clear_bindings(s_);
  }

  int64_t i64(int c) const { return sqlite3_column_int64(s_, c); }
  int i32(int c) const { return static_cast<int>(sqlite3_column_int64(s_, c)); }
  double f64(int c) const { return sqlite3_column_double(s_, c); }
  std::string text(int c) const {
    const auto* p = reinterpret_cast<const char*>(sqlite3_column_text(s_, c));
    return p ? std::string(p, static_cast<size_t>(sqlite3_column_bytes(s_, c))) : std::string();
  }
  int type(int c) const { return sqlite3_column_type(s_, c); }

private:
  Stmt& check(int rc) {
    if (rc != SQLITE_OK) fail(db_, rc, path_, fmt::format("binding a parameter of '{}'", first_words()));
    return *this;
  }
  std::string first_words() const {
    std::string s;
    for (char c : sql_) {
      if (s.size() >= 60) break;
      const bool space = c == '\n' || c == ' ';
      if (space && (s.empty() || s.back() == ' ')) continue;
      s += space ? ' ' : c;
    }
    return s;
  }
  sqlite3* db_;
  const fs::path& path_;
  std::string sql_;
  sqlite3_stmt* s_ = nullptr;
};

void exec(sqlite3* db, const fs::path& path, std::string_view sql, std::string_view what) {
  char* err = nullptr;
  const std::string text(sql);
  const int rc = sqlite3_exec(db, text.c_str(), nullptr, nullptr, &err);
  sqlite3_free(err);
  if (rc != SQLITE_OK) fail(db, rc, path, what);
}

int64_t pragma_int(sqlite3* db, const fs::path& path, std::string_view pragma) {
  Stmt s(db, path, fmt::format("PRAGMA {}", pragma));
  return s.step() ? s.i64(0) : 0;
}

// A write transaction: BEGIN IMMEDIATE takes the write lock up front, so concurrent writers queue on the busy
// timeout instead of failing on a lock upgrade. Rolled back unless committed.
class WriteTxn {
public:
  WriteTxn(sqlite3* db, const fs::path& path) : db_(db), path_(path) { exec(db, path, "BEGIN IMMEDIATE", "BEGIN"); }
  ~WriteTxn() {
    if (!done_) sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
  }
  WriteTxn(const WriteTxn&) = delete;
  WriteTxn& operator=(const WriteTxn&) = delete;
  void commit() {
    exec(db_, path_, "COMMIT", "COMMIT");
    done_ = true;
  }

private:
  sqlite3* db_;
  const fs::path& path_;
  bool done_ = false;
};

std::vector<std::string> table_names(sqlite3* db, const fs::path& path) {
  Stmt s(db, path,
         "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' "
         "ORDER BY name");
  std::vector<std::string> out;
  while (s.step()) out.push_back(s.text(0));
  return out;
}

std::vector<std::string> column_names(sqlite3* db, const fs::path& path, std::string_view table) {
  Stmt s(db, path, fmt::format("PRAGMA table_info({})", table));
  std::vector<std::string> out;
  while (s.step()) out.push_back(s.text(1));
  return out;
}

std::string trial_select_list() {
  std::string s;
  for (std::string_view c : kTrialColumns) s += fmt::format("{}{}", s.empty() ? "" : ", ", c);
  return s;
}
std::string best_select_list() {
  std::string s;
  for (std::string_view c : kBestColumns) s += fmt::format("{}{}", s.empty() ? "" : ", ", c);
  return s;
}

// Reads a row selected with trial_select_list(); nullopt when a value is not what the schema promises (a row of
// a damaged file).
std::optional<Trial> read_trial(const Stmt& s) {
  Trial t;
  for (int c : {1, 3, 4, 5, 7, 8, 9, 11, 23})
    if (s.type(c) != SQLITE_TEXT) return std::nullopt;
  t.id = s.i64(0);
  t.toolkit.device = s.text(1);
  t.toolkit.driver_version = s.i32(2);
  t.toolkit.nvrtc_version = s.text(3);
  t.family = s.text(4);
  t.shape = s.text(5);
  t.t_bucket = s.i64(6);
  t.problem = s.text(7);
  t.config = s.text(8);
  t.source_hash = s.text(9);
  t.stage = s.i32(10);
  const auto outcome = parse_outcome(s.text(11));
  if (!outcome) return std::nullopt;
  t.outcome = *outcome;
  t.detail = s.text(12);
  t.median_ms = s.f64(13);
  t.p20_ms = s.f64(14);
  t.p80_ms = s.f64(15);
  t.reps = s.i32(16);
  t.registers = s.i32(17);
  t.spill_bytes = s.i32(18);
  t.smem_bytes = s.i32(19);
  t.compile_seconds = s.f64(20);
  t.created = s.i64(21);
  t.nsajit_version = s.text(22);
  t.inputs = s.text(23);
  return t;
}

std::optional<BestEntry> read_best(const Stmt& s) {
  for (int c : {0, 2, 3, 4, 6, 7, 8, 13, 14})
    if (s.type(c) != SQLITE_TEXT) return std::nullopt;
  BestEntry e;
  e.toolkit.device = s.text(0);
  e.toolkit.driver_version = s.i32(1);
  e.toolkit.nvrtc_version = s.text(2);
  e.family = s.text(3);
  e.shape = s.text(4);
  e.t_bucket = s.i64(5);
  e.problem = s.text(6);
  e.config = s.text(7);
  e.source_hash = s.text(8);
  e.median_ms = s.f64(9);
  e.default_ms = s.f64(10);
  e.updated = s.i64(11);
  e.nsajit_version = s.text(12);
  e.inputs = s.text(13);
  e.overlap = s.text(14);
  return e;
}

// Inserts a trial; with keep_id the row keeps t.id (repair), else a new id is assigned.
int64_t insert_trial(sqlite3* db, const fs::path& path, const Trial& t, bool keep_id) {
  std::string columns, params;
  int n = 0;
  for (size_t i = keep_id ? 0 : 1; i < kTrialColumns.size(); ++i) {
    columns += fmt::format("{}{}", columns.empty() ? "" : ", ", kTrialColumns[i]);
    params += fmt::format("{}?{}", params.empty() ? "" : ", ", ++n);
  }
  Stmt s(db, path, fmt::format("INSERT {}INTO trials ({}) VALUES ({})", keep_id ? "OR IGNORE " : "", columns, params));
  int i = 0;
  auto put = [&](const auto& v) { s.bind(++i, v); };
  if (keep_id) put(t.id);
  put(t.toolkit.device), put(t.toolkit.driver_version), put(t.toolkit.nvrtc_version);
  put(t.family), put(t.shape), put(t.t_bucket), put(t.problem), put(t.config);
  put(t.source_hash), put(t.stage), put(outcome_name(t.outcome)), put(t.detail);
  put(t.median_ms), put(t.p20_ms), put(t.p80_ms), put(t.reps), put(t.registers);
  put(t.spill_bytes), put(t.smem_bytes), put(t.compile_seconds);
  put(t.created ? t.created : now_unix());
  put(t.nsajit_version.empty() ? std::string_view(NSAJIT_VERSION) : std::string_view(t.nsajit_version));
  put(t.inputs);
  s.step();
  return sqlite3_last_insert_rowid(db);
}

void upsert_best(sqlite3* db, const fs::path& path, const BestEntry& e) {
  std::string params;
  for (size_t i = 0; i < kBestColumns.size(); ++i) params += fmt::format("{}?{}", i ? ", " : "", i + 1);
  Stmt s(db, path, fmt::format("INSERT OR REPLACE INTO best ({}) VALUES ({})", best_select_list(), params));
  s.bind(1, e.toolkit.device).bind(2, e.toolkit.driver_version).bind(3, e.toolkit.nvrtc_version);
  s.bind(4, e.family).bind(5, e.shape).bind(6, e.t_bucket).bind(7, e.problem).bind(8, e.config);
  s.bind(9, e.source_hash).bind(10, e.median_ms).bind(11, e.default_ms);
  s.bind(12, e.updated ? e.updated : now_unix());
  s.bind(13, e.nsajit_version.empty() ? std::string_view(NSAJIT_VERSION) : std::string_view(e.nsajit_version));
  s.bind(14, e.inputs).bind(15, e.overlap);
  s.step();
}

void create_schema(sqlite3* db, const fs::path& path) {
  exec(db, path, schema_sql(kDbSchemaVersion), "creating the schema");
  exec(db, path, fmt::format("PRAGMA application_id = {}", kDbApplicationId), "setting application_id");
  exec(db, path, fmt::format("PRAGMA user_version = {}", kDbSchemaVersion), "setting user_version");
}

void migrate(sqlite3* db, const fs::path& path, int from) {
  if (from == 1) {
    exec(db, path, kMigrateV1ToV2Sql, "migrating schema 1 -> 2 (renaming the old tables)");
    exec(db, path, schema_sql(2), "migrating schema 1 -> 2 (creating the new tables)");
    exec(db, path, kMigrateV1ToV2CopySql, "migrating schema 1 -> 2 (copying the rows)");
    from = 2;
  }
  if (from == 2) {
    exec(db, path, kMigrateV2ToV3Sql, "migrating schema 2 -> 3 (adding trials.inputs, renaming best)");
    exec(db, path, std::string(kTrialsIndexV3Sql) + std::string(kBestV3Sql),
         "migrating schema 2 -> 3 (creating the new index and best table)");
    exec(db, path, kMigrateV2ToV3CopySql, "migrating schema 2 -> 3 (copying the best rows)");
    from = 3;
  }
  exec(db, path, fmt::format("PRAGMA application_id = {}", kDbApplicationId), "setting application_id");
  exec(db, path, fmt::format("PRAGMA user_version = {}", from), "setting user_version");
}

// What is in a file: read before anything is written to it.
struct Classified {
  int version = 0;  // 0: empty, to be initialized
};

Classified classify(sqlite3* db, const fs::path& path) {
  const std::string p = path.string();
  const int64_t app = pragma_int(db, path, "application_id");
  if (app != 0 && app != kDbApplicationId)
    throw DbError(DbError::Kind::not_nsajit,
                  fmt::format("{} is an SQLite database of another application (application_id 0x{:08x}), not an "
                              "nsajit tuning database; give another path with --db or NSAJIT_DB",
                              p, static_cast<uint32_t>(app)));
  const std::vector<std::string> tables = table_names(db, path);
  const int64_t version = pragma_int(db, path, "user_version");
  const bool ours_tables = tables == std::vector<std::string>{"best", "trials"};
  if (app == 0) {
    // An SQLite file that never got our application_id: an empty one is initialized; one with exactly our tables
    // and a version we know is ours (the id is written on the next read_write open); anything else is foreign.
    if (tables.empty() && version == 0) return {0};
    if (!ours_tables || version < 1 || version > kDbSchemaVersion)
      throw DbError(DbError::Kind::not_nsajit,
                    fmt::format("{} is an SQLite database with other tables ({}), not an nsajit tuning database; give "
                                "another path with --db or NSAJIT_DB",
                                p, tables.empty() ? std::string("none") : fmt::format("{}", fmt::join(tables, ", "))));
  }
  if (version > kDbSchemaVersion)
    throw DbError(DbError::Kind::newer_schema,
                  fmt::format("{} has tuning database schema version {}, written by a newer nsajit; this nsajit ({}) "
                              "reads versions up to {} and leaves the file untouched: use the newer nsajit, or "
                              "another file with --db or NSAJIT_DB",
                              p, version, NSAJIT_VERSION, kDbSchemaVersion));
  if (version == 0 && tables.empty()) return {0};
  if (!ours_tables || version < 1)
    throw DbError(
        DbError::Kind::corrupted,
        fmt::format("tuning database {} has a damaged schema (version {}, tables: {}); {}", p, version,
                    tables.empty() ? std::string("none") : fmt::format("{}", fmt::join(tables, ", ")), repair_hint()));
  Stmt check(db, path, "PRAGMA quick_check");
  std::vector<std::string> problems;
  while (check.step()) {
    std::string row = check.text(0);
    if (row != "ok" && problems.size() < 3) problems.push_back(std::move(row));
  }
  if (!problems.empty())
    throw DbError(DbError::Kind::corrupted, fmt::format("tuning database {} is damaged (quick_check: {}); {}", p,
                                                        fmt::join(problems, "; "), repair_hint()));
  return {static_cast<int>(version)};
}

// Sets journal_mode=WAL; the change needs an exclusive lock that the busy handler does not always wait for.
void set_wal(sqlite3* db, const fs::path& path) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(kBusyTimeoutMs);
  while (true) {
    sqlite3_stmt* s = nullptr;
    int rc = sqlite3_prepare_v2(db, "PRAGMA journal_mode = WAL", -1, &s, nullptr);
    if (rc == SQLITE_OK) rc = sqlite3_step(s);
    std::string mode = rc == SQLITE_ROW ? reinterpret_cast<const char*>(sqlite3_column_text(s, 0)) : "";
    sqlite3_finalize(s);
    if (rc == SQLITE_ROW) {
      if (mode != "wal")
        throw DbError(DbError::Kind::io, fmt::format("tuning database {}: cannot switch to WAL journal mode (got '{}')",
                                                     path.string(), mode));
      return;
    }
    if ((rc & 0xff) != SQLITE_BUSY || std::chrono::steady_clock::now() > deadline)
      fail(db, rc, path, "PRAGMA journal_mode = WAL");
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

bool has_sqlite_header(const fs::path& path, uintmax_t size) {
  if (size < 16) return false;
  std::ifstream in(path, std::ios::binary);
  std::array<char, 16> header{};
  if (!in.read(header.data(), header.size())) return false;
  return std::memcmp(header.data(), "SQLite format 3\0", 16) == 0;
}

}  // namespace

std::string schema_sql(int version) {
  if (version == 1) return std::string(kSchemaV1Sql);
  if (version == 2) return std::string(kTrialsV2Sql) + std::string(kBestV2Sql);
  if (version == 3) return std::string(kTrialsV3Sql) + std::string(kTrialsIndexV3Sql) + std::string(kBestV3Sql);
  throw Error(fmt::format("internal error: no tuning database schema version {}", version));
}

fs::path default_db_path() {
  if (const char* env = std::getenv("NSAJIT_DB"); env && *env) return env;
  if (const char* xdg = std::getenv("XDG_DATA_HOME"); xdg && *xdg) return fs::path(xdg) / "nsajit" / "tuning.db";
  const char* home = std::getenv("HOME");
  if (!home || !*home) {
    const passwd* pw = getpwuid(getuid());
    home = pw ? pw->pw_dir : nullptr;
  }
  if (!home || !*home)
    throw DbError(DbError::Kind::io, "cannot find a home directory for the tuning database: set NSAJIT_DB");
  return fs::path(home) / ".local" / "share" / "nsajit" / "tuning.db";
}

std::string_view outcome_name(Outcome o) { return kOutcomeNames.at(static_cast<size_t>(o)); }

std::optional<Outcome> parse_outcome(std::string_view s) {
  for (size_t i = 0; i < kOutcomeNames.size(); ++i)
    if (kOutcomeNames[i] == s) return static_cast<Outcome>(i);
  return std::nullopt;
}

bool is_stale_toolkit(const Toolkit& measured, const Toolkit& current) {
  if (!current.device.empty() && measured.device != current.device) return false;
  if (current.driver_version != 0 && measured.driver_version != current.driver_version) return true;
  return !current.nvrtc_version.empty() && measured.nvrtc_version != current.nvrtc_version;
}

// ---- TuningDb ---------------------------------------------------------------------------------------------------

void TuningDb::close() noexcept {
  if (db_) sqlite3_close_v2(db_);
  db_ = nullptr;
}

TuningDb::~TuningDb() { close(); }

TuningDb::TuningDb(TuningDb&& o) noexcept
    : path_(std::move(o.path_)),
      db_(std::exchange(o.db_, nullptr)),
      file_version_(o.file_version_),
      read_only_(o.read_only_),
      in_memory_(o.in_memory_) {}

TuningDb& TuningDb::operator=(TuningDb&& o) noexcept {
  if (this != &o) {
    close();
    path_ = std::move(o.path_);
    db_ = std::exchange(o.db_, nullptr);
    file_version_ = o.file_version_;
    read_only_ = o.read_only_;
    in_memory_ = o.in_memory_;
  }
  return *this;
}

TuningDb TuningDb::open(const fs::path& path, Mode mode) {
  TuningDb db;
  db.path_ = path;
  db.read_only_ = mode == Mode::read_only;
  const std::string p = path.string();
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  if (!fs::exists(st)) {
    if (db.read_only_)
      throw DbError(DbError::Kind::io, fmt::format("no tuning database at {} (run `nsajit tune` to create one)", p));
    if (path.has_parent_path()) {
      fs::create_directories(path.parent_path(), ec);
      if (ec)
        throw DbError(DbError::Kind::io,
                      fmt::format("cannot create the directory of the tuning database {}: {}", p, ec.message()));
    }
  } else {
    if (!fs::is_regular_file(st))
      throw DbError(DbError::Kind::not_nsajit,
                    fmt::format("{} is not a regular file, not an nsajit tuning database", p));
    const uintmax_t size = fs::file_size(path, ec);
    if (ec) throw DbError(DbError::Kind::io, fmt::format("cannot read {}: {}", p, ec.message()));
    if (size != 0 && !has_sqlite_header(path, size))
      throw DbError(DbError::Kind::not_nsajit,
                    fmt::format("{} is not an nsajit tuning database (not an SQLite file); give another path with --db "
                                "or NSAJIT_DB, or run `nsajit db verify --repair` to move it aside and start anew",
                                p));
  }

  const int flags = db.read_only_ ? SQLITE_OPEN_READONLY : (SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE);
  const int rc = sqlite3_open_v2(p.c_str(), &db.db_, flags, nullptr);
  if (rc != SQLITE_OK) {
    const std::string msg = db.db_ ? sqlite3_errmsg(db.db_) : sqlite3_errstr(rc);
    throw DbError(DbError::Kind::io, fmt::format("cannot open the tuning database {}: {}", p, msg));
  }
  sqlite3_extended_result_codes(db.db_, 1);
  sqlite3_busy_timeout(db.db_, kBusyTimeoutMs);

  // One read transaction, so the application id, the tables and the version are read from one snapshot even
  // while another process is creating or migrating the file.
  Classified c;
  exec(db.db_, path, "BEGIN", "starting a read transaction");
  try {
    c = classify(db.db_, path);
  } catch (...) {
    sqlite3_exec(db.db_, "ROLLBACK", nullptr, nullptr, nullptr);
    throw;
  }
  exec(db.db_, path, "COMMIT", "ending a read transaction");
  if (!db.read_only_) {
    set_wal(db.db_, path);
    exec(db.db_, path, "PRAGMA synchronous = NORMAL", "PRAGMA synchronous");
    exec(db.db_, path, "PRAGMA foreign_keys = ON", "PRAGMA foreign_keys");
    if (c.version < kDbSchemaVersion) {
      WriteTxn txn(db.db_, path);
      // Another process may have initialized or migrated the file since it was classified.
      c = classify(db.db_, path);
      if (c.version == 0)
        create_schema(db.db_, path);
      else if (c.version < kDbSchemaVersion)
        migrate(db.db_, path, c.version);
      txn.commit();
    } else if (pragma_int(db.db_, path, "application_id") == 0) {
      exec(db.db_, path, fmt::format("PRAGMA application_id = {}", kDbApplicationId), "setting application_id");
    }
    db.file_version_ = kDbSchemaVersion;
    return db;
  }

  db.file_version_ = c.version;
  if (c.version < kDbSchemaVersion) {
    // Read-only on an empty or older file: work on a migrated copy in memory and leave the file as it is.
    sqlite3* mem = nullptr;
    if (sqlite3_open(":memory:", &mem) != SQLITE_OK) {
      sqlite3_close(mem);
      throw DbError(DbError::Kind::io, fmt::format("tuning database {}: cannot open an in-memory copy", p));
    }
    sqlite3_extended_result_codes(mem, 1);
    sqlite3_backup* b = sqlite3_backup_init(mem, "main", db.db_, "main");
    int brc = b ? sqlite3_backup_step(b, -1) : sqlite3_errcode(mem);
    if (b) sqlite3_backup_finish(b);
    if (brc != SQLITE_DONE) {
      sqlite3_close(mem);
      fail(nullptr, brc, path, "copying the older schema into memory");
    }
    db.close();
    db.db_ = mem;
    db.in_memory_ = true;
    WriteTxn txn(mem, path);
    if (c.version == 0)
      create_schema(mem, path);
    else
      migrate(mem, path, c.version);
    txn.commit();
  }
  return db;
}

int TuningDb::schema_version() const { return file_version_; }

namespace {
void require_writable(bool read_only, bool in_memory, const fs::path& path) {
  if (read_only || in_memory)
    throw DbError(
        DbError::Kind::io,
        fmt::format("tuning database {} was opened read-only; open it read_write to change it", path.string()));
}
}  // namespace

int64_t TuningDb::add_trial(const Trial& t) {
  require_writable(read_only_, in_memory_, path_);
  WriteTxn txn(db_, path_);
  const int64_t id = insert_trial(db_, path_, t, false);
  txn.commit();
  return id;
}

std::optional<Trial> TuningDb::find_trial(const Toolkit& tk, std::string_view family, std::string_view problem,
                                          std::string_view config, std::string_view source_hash,
                                          std::string_view inputs, int min_stage) const {
  Stmt s(db_, path_,
         fmt::format("SELECT {} FROM trials WHERE family = ?1 AND problem = ?2 AND config = ?3 AND device = ?4 AND "
                     "source_hash = ?5 AND driver_version = ?6 AND nvrtc_version = ?7 AND inputs = ?9 AND "
                     "stage >= ?8 ORDER BY stage DESC, created DESC, id DESC LIMIT 1",
                     trial_select_list()));
  s.bind(1, family).bind(2, problem).bind(3, config).bind(4, tk.device).bind(5, source_hash);
  s.bind(6, tk.driver_version).bind(7, tk.nvrtc_version).bind(8, min_stage).bind(9, inputs);
  if (!s.step()) return std::nullopt;
  return read_trial(s);
}

std::vector<Trial> TuningDb::trials(std::string_view family, std::string_view device) const {
  Stmt s(db_, path_,
         fmt::format("SELECT {} FROM trials WHERE (?1 = '' OR family = ?1) AND (?2 = '' OR device = ?2) ORDER BY id",
                     trial_select_list()));
  s.bind(1, family).bind(2, device);
  std::vector<Trial> out;
  while (s.step())
    if (auto t = read_trial(s)) out.push_back(std::move(*t));
  return out;
}

namespace {
constexpr std::string_view kStaleWhere =
    "(?1 = '' OR device = ?1) AND ((?2 != 0 AND driver_version != ?2) OR (?3 != '' AND nvrtc_version != ?3))";
}

int64_t TuningDb::count_stale_trials(const Toolkit& current) const {
  Stmt s(db_, path_, fmt::format("SELECT count(*) FROM trials WHERE {}", kStaleWhere));
  s.bind(1, current.device).bind(2, current.driver_version).bind(3, current.nvrtc_version);
  return s.step() ? s.i64(0) : 0;
}

int64_t TuningDb::remove_trials_where_toolkit_not(const Toolkit& current) {
  require_writable(read_only_, in_memory_, path_);
  WriteTxn txn(db_, path_);
  Stmt s(db_, path_, fmt::format("DELETE FROM trials WHERE {}", kStaleWhere));
  s.bind(1, current.device).bind(2, current.driver_version).bind(3, current.nvrtc_version);
  s.step();
  const int64_t n = sqlite3_changes64(db_);
  txn.commit();
  return n;
}

int64_t TuningDb::remove_trials(const std::vector<int64_t>& ids) {
  require_writable(read_only_, in_memory_, path_);
  WriteTxn txn(db_, path_);
  Stmt s(db_, path_, "DELETE FROM trials WHERE id = ?1");
  int64_t n = 0;
  for (int64_t id : ids) {
    s.reset();
    s.bind(1, id);
    s.step();
    n += sqlite3_changes64(db_);
  }
  txn.commit();
  return n;
}

std::vector<int64_t> TuningDb::count_trials_by_outcome() const {
  std::vector<int64_t> out(kOutcomeNames.size(), 0);
  Stmt s(db_, path_, "SELECT outcome, count(*) FROM trials GROUP BY outcome");
  while (s.step())
    if (auto o = parse_outcome(s.text(0))) out[static_cast<size_t>(*o)] = s.i64(1);
  return out;
}

void TuningDb::set_best(const BestEntry& e) {
  require_writable(read_only_, in_memory_, path_);
  WriteTxn txn(db_, path_);
  upsert_best(db_, path_, e);
  txn.commit();
}

std::optional<BestEntry> TuningDb::best(std::string_view device, std::string_view family, std::string_view shape,
                                        int64_t t_bucket, std::string_view overlap) const {
  Stmt s(db_, path_,
         fmt::format("SELECT {} FROM best WHERE device = ?1 AND family = ?2 AND shape = ?3 AND t_bucket = ?4 AND "
                     "overlap = ?5",
                     best_select_list()));
  s.bind(1, device).bind(2, family).bind(3, shape).bind(4, t_bucket).bind(5, overlap);
  if (!s.step()) return std::nullopt;
  return read_best(s);
}

std::vector<BestEntry> TuningDb::best_for_shape(std::string_view device, std::string_view family,
                                                std::string_view shape) const {
  Stmt s(db_, path_,
         fmt::format("SELECT {} FROM best WHERE device = ?1 AND family = ?2 AND shape = ?3 ORDER BY t_bucket, overlap",
                     best_select_list()));
  s.bind(1, device).bind(2, family).bind(3, shape);
  std::vector<BestEntry> out;
  while (s.step())
    if (auto e = read_best(s)) out.push_back(std::move(*e));
  return out;
}

std::vector<BestEntry> TuningDb::all_best() const {
  Stmt s(db_, path_,
         fmt::format("SELECT {} FROM best ORDER BY device, family, shape, t_bucket, overlap", best_select_list()));
  std::vector<BestEntry> out;
  while (s.step())
    if (auto e = read_best(s)) out.push_back(std::move(*e));
  return out;
}

TuningDb::MergeStats TuningDb::merge_best(const std::vector<BestEntry>& entries) {
  require_writable(read_only_, in_memory_, path_);
  MergeStats stats;
  WriteTxn txn(db_, path_);
  Stmt find(db_, path_,
            "SELECT median_ms FROM best WHERE device = ?1 AND family = ?2 AND shape = ?3 AND t_bucket = ?4 AND "
            "overlap = ?5");
  for (const BestEntry& e : entries) {
    find.reset();
    find.bind(1, e.toolkit.device).bind(2, e.family).bind(3, e.shape).bind(4, e.t_bucket).bind(5, e.overlap);
    if (!find.step()) {
      upsert_best(db_, path_, e);
      ++stats.added;
    } else if (e.median_ms < find.f64(0)) {
      upsert_best(db_, path_, e);
      ++stats.replaced;
    } else {
      ++stats.kept;
    }
  }
  txn.commit();
  return stats;
}

int64_t TuningDb::remove_best(std::string_view device, std::string_view family, std::string_view shape,
                              int64_t t_bucket, std::string_view overlap) {
  require_writable(read_only_, in_memory_, path_);
  WriteTxn txn(db_, path_);
  Stmt s(db_, path_,
         "DELETE FROM best WHERE device = ?1 AND family = ?2 AND shape = ?3 AND t_bucket = ?4 AND overlap = ?5");
  s.bind(1, device).bind(2, family).bind(3, shape).bind(4, t_bucket).bind(5, overlap);
  s.step();
  const int64_t n = sqlite3_changes64(db_);
  txn.commit();
  return n;
}

std::vector<std::string> TuningDb::verify() const {
  std::vector<std::string> problems;
  const std::string p = path_.string();
  try {
    Stmt check(db_, path_, "PRAGMA integrity_check(20)");
    while (check.step()) {
      const std::string row = check.text(0);
      if (row != "ok") problems.push_back(fmt::format("integrity_check: {}", row));
    }
  } catch (const DbError& e) {
    problems.push_back(e.what());
    return problems;
  }
  try {
    const int64_t app = pragma_int(db_, path_, "application_id");
    if (app != kDbApplicationId)
      problems.push_back(fmt::format("application_id is 0x{:08x}, expected 0x{:08x}", static_cast<uint32_t>(app),
                                     static_cast<uint32_t>(kDbApplicationId)));
    const int64_t version = pragma_int(db_, path_, "user_version");
    if (version != kDbSchemaVersion)
      problems.push_back(fmt::format("user_version (schema version) is {}, expected {}", version, kDbSchemaVersion));
    auto check_columns = [&](std::string_view table, const auto& expected) {
      const std::vector<std::string> have = column_names(db_, path_, table);
      if (have.empty()) {
        problems.push_back(fmt::format("table {} is missing", table));
        return;
      }
      const std::set<std::string> have_set(have.begin(), have.end());
      for (std::string_view c : expected)
        if (!have_set.count(std::string(c))) problems.push_back(fmt::format("table {} lacks column {}", table, c));
    };
    check_columns("trials", kTrialColumns);
    check_columns("best", kBestColumns);
    {
      Stmt s(db_, path_, "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name = 'trials_lookup'");
      if (s.step() && s.i64(0) == 0) problems.push_back("index trials_lookup (for resuming sweeps) is missing");
    }
    if (problems.empty()) {
      for (std::string_view table : {"trials", "best"}) {
        Stmt s(db_, path_,
               fmt::format("SELECT count(*) FROM {} WHERE t_bucket < 1 OR (t_bucket & (t_bucket - 1)) != 0", table));
        if (s.step() && s.i64(0) > 0)
          problems.push_back(fmt::format("{} rows of {} have a t_bucket that is not a power of two", s.i64(0), table));
      }
    }
  } catch (const DbError& e) {
    problems.push_back(e.what());
  }
  return problems;
}

// ---- export / import -----------------------------------------------------------------------------------------

std::string export_json(const std::vector<BestEntry>& entries) {
  llvm::json::Array best;
  for (const BestEntry& e : entries) {
    best.push_back(llvm::json::Object{{"device", e.toolkit.device},
                                      {"driver_version", e.toolkit.driver_version},
                                      {"nvrtc_version", e.toolkit.nvrtc_version},
                                      {"family", e.family},
                                      {"shape", e.shape},
                                      {"t_bucket", e.t_bucket},
                                      {"problem", e.problem},
                                      {"config", e.config},
                                      {"source_hash", e.source_hash},
                                      {"median_ms", e.median_ms},
                                      {"default_ms", e.default_ms},
                                      {"updated", e.updated},
                                      {"nsajit_version", e.nsajit_version},
                                      {"inputs", e.inputs},
                                      {"overlap", e.overlap}});
  }
  llvm::json::Object doc{
      {"format", "nsajit-tuning"}, {"version", 2}, {"nsajit_version", NSAJIT_VERSION}, {"best", std::move(best)}};
  std::string out;
  llvm::raw_string_ostream os(out);
  os << llvm::formatv("{0:2}", llvm::json::Value(std::move(doc))) << "\n";
  os.flush();
  return out;
}

std::vector<BestEntry> parse_export(std::string_view json) {
  auto bad = [](const std::string& what) { return UsageError(fmt::format("bad tuning export: {}", what)); };
  llvm::Expected<llvm::json::Value> parsed = llvm::json::parse(llvm::StringRef(json.data(), json.size()));
  if (!parsed) throw bad(fmt::format("not JSON: {}", llvm::toString(parsed.takeError())));
  const llvm::json::Object* doc = parsed->getAsObject();
  if (!doc) throw bad("the document is not a JSON object");
  const auto format = doc->getString("format");
  if (!format || *format != "nsajit-tuning")
    throw bad(format ? fmt::format("\"format\" is \"{}\", expected \"nsajit-tuning\"", format->str())
                     : std::string("missing \"format\": \"nsajit-tuning\""));
  const auto version = doc->getInteger("version");
  if (!version) throw bad("missing integer \"version\"");
  if (*version != 1 && *version != 2)
    throw bad(fmt::format("\"version\" {} is not supported (this nsajit reads versions 1 and 2)", *version));
  const llvm::json::Array* best = doc->getArray("best");
  if (!best) throw bad("missing array \"best\"");

  std::vector<BestEntry> out;
  for (size_t i = 0; i < best->size(); ++i) {
    const llvm::json::Object* o = (*best)[i].getAsObject();
    if (!o) throw bad(fmt::format("best[{}] is not an object", i));
    auto field = [&](const char* name) -> const llvm::json::Value& {
      const llvm::json::Value* v = o->get(name);
      if (!v) throw bad(fmt::format("best[{}]: missing field \"{}\"", i, name));
      return *v;
    };
    auto text = [&](const char* name) {
      const auto s = field(name).getAsString();
      if (!s) throw bad(fmt::format("best[{}].{}: expected a string", i, name));
      return s->str();
    };
    auto integer = [&](const char* name) {
      const auto v = field(name).getAsInteger();
      if (!v) throw bad(fmt::format("best[{}].{}: expected an integer", i, name));
      return *v;
    };
    auto number = [&](const char* name) {
      const auto v = field(name).getAsNumber();
      if (!v || !std::isfinite(*v) || *v < 0) throw bad(fmt::format("best[{}].{}: expected a number >= 0", i, name));
      return *v;
    };
    BestEntry e;
    e.toolkit.device = text("device");
    const int64_t driver = integer("driver_version");
    if (driver < 0 || driver > INT32_MAX) throw bad(fmt::format("best[{}].driver_version: out of range", i));
    e.toolkit.driver_version = static_cast<int>(driver);
    e.toolkit.nvrtc_version = text("nvrtc_version");
    e.family = text("family");
    e.shape = text("shape");
    e.t_bucket = integer("t_bucket");
    if (e.t_bucket < 1 || (e.t_bucket & (e.t_bucket - 1)) != 0)
      throw bad(fmt::format("best[{}].t_bucket: {} is not a power of two", i, e.t_bucket));
    e.problem = text("problem");
    e.config = text("config");
    e.source_hash = text("source_hash");
    e.median_ms = number("median_ms");
    e.default_ms = number("default_ms");
    e.updated = integer("updated");
    e.nsajit_version = text("nsajit_version");
    if (*version == 1) {
      // Written before input kinds and overlap buckets: what the schema migration gives such rows.
      e.inputs = "random";
      e.overlap = e.family == "slc_fwd" ? "low" : "";
    } else {
      e.inputs = text("inputs");
      if (e.inputs != "random" && e.inputs != "coherent")
        throw bad(fmt::format("best[{}].inputs: \"{}\" is not \"random\" or \"coherent\"", i, e.inputs));
      e.overlap = text("overlap");
      if (!e.overlap.empty() && e.overlap != "low" && e.overlap != "high")
        throw bad(fmt::format("best[{}].overlap: \"{}\" is not \"\", \"low\" or \"high\"", i, e.overlap));
    }
    for (const auto& [name, value] : {std::pair{"device", &e.toolkit.device}, std::pair{"family", &e.family},
                                      std::pair{"shape", &e.shape}, std::pair{"problem", &e.problem}})
      if (value->empty()) throw bad(fmt::format("best[{}].{}: must not be empty", i, name));
    out.push_back(std::move(e));
  }
  return out;
}

// ---- repair ---------------------------------------------------------------------------------------------------

namespace {

// Reads every row of `table` from a damaged database, one at a time, skipping what cannot be read: after an error
// the scan restarts past the failing rowid, probing forward (doubling, then bisecting back) for the first rowid
// that can be reached again. `select` is the column list; `on_row` gets each row. Returns the read errors met.
template <typename OnRow>
int64_t salvage_rows(sqlite3* db, std::string_view table, const std::string& select, OnRow on_row) {
  const std::string sql = fmt::format("SELECT rowid, {} FROM {} WHERE rowid >= ?1 ORDER BY rowid", select, table);
  sqlite3_stmt* s = nullptr;
  if (sqlite3_prepare_v2(db, sql.c_str(), -1, &s, nullptr) != SQLITE_OK) {
    sqlite3_finalize(s);
    return 1;
  }
  int64_t errors = 0;
  // Whether a scan from `start` can return its first step without an error.
  auto reachable = [&](int64_t start) {
    sqlite3_reset(s);
    sqlite3_bind_int64(s, 1, start);
    const int rc = sqlite3_step(s);
    return rc == SQLITE_ROW || rc == SQLITE_DONE;
  };
  int64_t start = INT64_MIN;
  while (true) {
    sqlite3_reset(s);
    sqlite3_bind_int64(s, 1, start);
    std::optional<int64_t> last;
    int rc;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
      last = sqlite3_column_int64(s, 0);
      on_row(s);
    }
    if (rc == SQLITE_DONE) break;
    ++errors;
    if (last == INT64_MAX || errors > 10000) break;
    // Find the first reachable rowid after the failure: double the step until one is reachable, then bisect.
    int64_t bad_at = last ? *last + 1 : start, step = 1, good_at = 0;
    bool found = false;
    while (true) {
      const int64_t probe = bad_at > INT64_MAX - step ? INT64_MAX : bad_at + step;
      if (reachable(probe)) {
        good_at = probe;
        found = true;
        break;
      }
      if (probe == INT64_MAX) break;
      bad_at = probe;
      step = step > INT64_MAX / 2 ? INT64_MAX : step * 2;
    }
    if (!found) break;
    while (good_at - bad_at > 1) {
      const int64_t mid = bad_at + (good_at - bad_at) / 2;
      (reachable(mid) ? good_at : bad_at) = mid;
    }
    start = good_at;
  }
  sqlite3_finalize(s);
  return errors;
}

// The values of one row read from a damaged file. Every column of both tables is NOT NULL, so a value of another
// type than the schema's marks the row as damaged, and so does text holding a NUL byte: that is what the part of a
// page beyond the end of a cut file reads as (zeros).
class RowValues {
public:
  explicit RowValues(sqlite3_stmt* s) : s_(s) {}
  std::string text(int c) {
    if (sqlite3_column_type(s_, c) != SQLITE_TEXT) return damaged(std::string());
    std::string v(reinterpret_cast<const char*>(sqlite3_column_text(s_, c)),
                  static_cast<size_t>(sqlite3_column_bytes(s_, c)));
    return v.find('\0') != std::string::npos ? damaged(std::string()) : v;
  }
  int64_t i64(int c) { return number(c) ? sqlite3_column_int64(s_, c) : 0; }
  double f64(int c) { return number(c) ? sqlite3_column_double(s_, c) : 0.0; }
  bool bad = false;

private:
  bool number(int c) {
    const int type = sqlite3_column_type(s_, c);
    return type == SQLITE_INTEGER || type == SQLITE_FLOAT || damaged(false);
  }
  template <typename T>
  T damaged(T v) {
    bad = true;
    return v;
  }
  sqlite3_stmt* s_;
};

// What the 100-byte header of an SQLite file says against the file's size; empty when they agree or the header
// cannot tell. The page count at offset 28 counts only while valid: the version-valid-for number (offset 92)
// equals the change counter (offset 24), SQLite's own rule.
std::string header_mismatch(const fs::path& path) {
  std::error_code ec;
  const uintmax_t size = fs::file_size(path, ec);
  if (ec || size < 100) return {};
  std::ifstream in(path, std::ios::binary);
  std::array<char, 100> h{};
  if (!in.read(h.data(), h.size()) || std::memcmp(h.data(), "SQLite format 3\0", 16) != 0) return {};
  const auto be = [&](size_t at, size_t n) {
    uint64_t v = 0;
    for (size_t i = 0; i < n; ++i) v = v << 8 | static_cast<unsigned char>(h[at + i]);
    return v;
  };
  const uint64_t page = be(16, 2) == 1 ? 65536 : be(16, 2), pages = be(28, 4);
  if (page < 512 || page > 65536 || (page & (page - 1)) != 0)
    return fmt::format("the header's page size {} is not a valid SQLite page size", page);
  if (pages != 0 && be(24, 4) == be(92, 4) && pages * page != size)
    return fmt::format("the header says {} pages of {} bytes ({} bytes) but the file has {} bytes: the file was cut "
                       "short or its header is damaged",
                       pages, page, pages * page, size);
  return {};
}

}  // namespace

RepairReport repair_db(const fs::path& path) {
  RepairReport report;
  const std::string p = path.string();
  std::error_code ec;
  if (!fs::exists(path, ec)) {
    TuningDb::open(path, TuningDb::Mode::read_write);
    report.note = fmt::format("there was no file at {}: created a new tuning database", p);
    return report;
  }
  // Keep the damaged file (and its WAL, which may hold committed rows) under a new name; never delete it.
  fs::path kept = fs::path(fmt::format("{}.damaged-{}", p, now_unix()));
  for (int i = 1; fs::exists(kept, ec); ++i) kept = fs::path(fmt::format("{}.damaged-{}.{}", p, now_unix(), i));
  fs::rename(path, kept, ec);
  if (ec)
    throw DbError(DbError::Kind::io,
                  fmt::format("cannot rename {} to {}: {}; nothing was changed", p, kept.string(), ec.message()));
  for (const char* suffix : {"-wal", "-shm"}) {
    const fs::path side = p + suffix;
    if (fs::exists(side, ec)) {
      fs::rename(side, kept.string() + suffix, ec);
      if (ec)
        throw DbError(DbError::Kind::io, fmt::format("moved {} to {} but cannot move {}: {}", p, kept.string(),
                                                     side.string(), ec.message()));
    }
  }
  report.kept_as = kept;

  TuningDb fresh = TuningDb::open(path, TuningDb::Mode::read_write);

  // What could not be read, each said once.
  std::vector<std::string> notes;
  auto note = [&](std::string n) {
    if (std::find(notes.begin(), notes.end(), n) == notes.end()) notes.push_back(std::move(n));
  };
  sqlite3* old = nullptr;
  if (sqlite3_open_v2(kept.string().c_str(), &old, SQLITE_OPEN_READONLY, nullptr) != SQLITE_OK) {
    note(fmt::format("cannot open the damaged copy: {}", old ? sqlite3_errmsg(old) : "out of memory"));
    sqlite3_close(old);
    report.note = fmt::format("{}", fmt::join(notes, "; "));
    return report;
  }
  sqlite3_extended_result_codes(old, 1);
  sqlite3_busy_timeout(old, kBusyTimeoutMs);
  if (std::string mismatch = header_mismatch(kept); !mismatch.empty()) note(std::move(mismatch));
  // writable_schema makes SQLite read past damage it otherwise refuses outright: a page count in the header larger
  // than the file (a truncated file), or a root page beyond the end of the file. The connection is read-only, so
  // nothing is written.
  if (sqlite3_exec(old, "PRAGMA writable_schema = ON", nullptr, nullptr, nullptr) != SQLITE_OK)
    note(fmt::format("cannot set writable_schema on the damaged copy ({})", sqlite3_errmsg(old)));

  // The columns each table has in the damaged copy (version 1 or 2); missing ones get their migration defaults.
  auto columns_of = [&](std::string_view table) -> std::optional<std::set<std::string>> {
    sqlite3_stmt* s = nullptr;
    const std::string sql = fmt::format("PRAGMA table_info({})", table);
    if (sqlite3_prepare_v2(old, sql.c_str(), -1, &s, nullptr) != SQLITE_OK) {
      note(fmt::format("table {}: the damaged copy's schema cannot be read ({})", table, sqlite3_errmsg(old)));
      sqlite3_finalize(s);
      return std::nullopt;
    }
    std::set<std::string> out;
    int rc;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) out.insert(reinterpret_cast<const char*>(sqlite3_column_text(s, 1)));
    if (rc != SQLITE_DONE) {
      note(fmt::format("table {}: the damaged copy's schema cannot be read ({})", table, sqlite3_errmsg(old)));
      out.clear();
    }
    sqlite3_finalize(s);
    if (out.empty()) {
      if (rc == SQLITE_DONE) note(fmt::format("the damaged copy has no table {}", table));
      return std::nullopt;
    }
    return out;
  };
  auto select_list = [](const auto& wanted, const std::set<std::string>& have) {
    std::string s;
    for (std::string_view c : wanted) {
      std::string expr(c);
      if (!have.count(expr)) {
        if (c == "stage")
          expr = "1";
        else if (c == "nsajit_version")
          expr = "''";
        else if (c == "inputs")
          expr = "'random'";
        else if (c == "overlap")
          expr = "CASE WHEN family = 'slc_fwd' THEN 'low' ELSE '' END";
        else
          expr = "0";
      }
      s += fmt::format("{}{}", s.empty() ? "" : ", ", expr);
    }
    return s;
  };

  WriteTxn txn(fresh.db_, path);
  int64_t skipped = 0;
  if (auto cols = columns_of("trials")) {
    const int64_t errors = salvage_rows(old, "trials", select_list(kTrialColumns, *cols), [&](sqlite3_stmt* s) {
      // Column 0 is the rowid; the trial's columns start at 1.
      RowValues v(s);
      Trial t;
      t.id = v.i64(1);
      t.toolkit = {v.text(2), static_cast<int>(v.i64(3)), v.text(4)};
      t.family = v.text(5), t.shape = v.text(6), t.t_bucket = v.i64(7), t.problem = v.text(8), t.config = v.text(9);
      t.source_hash = v.text(10), t.stage = static_cast<int>(v.i64(11));
      const auto outcome = parse_outcome(v.text(12));
      t.detail = v.text(13), t.median_ms = v.f64(14), t.p20_ms = v.f64(15), t.p80_ms = v.f64(16);
      t.reps = static_cast<int>(v.i64(17)), t.registers = static_cast<int>(v.i64(18));
      t.spill_bytes = static_cast<int>(v.i64(19)), t.smem_bytes = static_cast<int>(v.i64(20));
      t.compile_seconds = v.f64(21), t.created = v.i64(22), t.nsajit_version = v.text(23), t.inputs = v.text(24);
      // add_trial never writes a creation time of 0: a 0 is what a page cut short reads as.
      if (v.bad || !outcome || t.t_bucket < 1 || t.created <= 0 || (t.inputs != "random" && t.inputs != "coherent")) {
        ++skipped;
        return;
      }
      t.outcome = *outcome;
      if (t.stage < 0) t.stage = 0;
      insert_trial(fresh.db_, path, t, true);
      ++report.trials_recovered;
    });
    if (errors) note(fmt::format("{} read errors in trials (unreadable pages skipped)", errors));
  }
  if (auto cols = columns_of("best")) {
    const int64_t errors = salvage_rows(old, "best", select_list(kBestColumns, *cols), [&](sqlite3_stmt* s) {
      RowValues v(s);
      BestEntry e;
      e.toolkit = {v.text(1), static_cast<int>(v.i64(2)), v.text(3)};
      e.family = v.text(4), e.shape = v.text(5), e.t_bucket = v.i64(6), e.problem = v.text(7), e.config = v.text(8);
      e.source_hash = v.text(9), e.median_ms = v.f64(10), e.default_ms = v.f64(11);
      e.updated = v.i64(12), e.nsajit_version = v.text(13), e.inputs = v.text(14), e.overlap = v.text(15);
      // set_best never writes an update time of 0: a 0 is what a page cut short reads as.
      const bool known = (e.inputs == "random" || e.inputs == "coherent") &&
                         (e.overlap.empty() || e.overlap == "low" || e.overlap == "high");
      if (v.bad || e.t_bucket < 1 || e.updated <= 0 || !known) {
        ++skipped;
        return;
      }
      upsert_best(fresh.db_, path, e);
      ++report.best_recovered;
    });
    if (errors) note(fmt::format("{} read errors in best (unreadable pages skipped)", errors));
  }
  txn.commit();
  sqlite3_close(old);
  if (skipped) note(fmt::format("{} rows with unreadable values skipped", skipped));
  if (notes.empty()) note("every row of the damaged copy was read");
  report.note = fmt::format("{}", fmt::join(notes, "; "));
  return report;
}

}  // namespace nsajit
