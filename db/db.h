#pragma once
// The tuning database: every trial the autotuner ran, and the best tile config per (device model, family,
// problem key). SQLite, one file, WAL mode with a busy timeout so several tuner processes (one per GPU) can write
// it at once; every write is its own short transaction, so a process killed at any point (kill -9 included)
// loses at most the trial it was measuring and leaves a file that passes PRAGMA integrity_check.
//
// Identification: PRAGMA application_id = kDbApplicationId, PRAGMA user_version = schema version. Opening an
// older schema migrates it in place inside one transaction; a newer schema (written by a newer nsajit) is
// refused with a clear error rather than touched.
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "base/error.h"

struct sqlite3;

namespace nsajit {

constexpr int kDbSchemaVersion = 3;
constexpr int32_t kDbApplicationId = 0x4e53414a;  // "NSAJ"

// $NSAJIT_DB if set and not empty, else $XDG_DATA_HOME/nsajit/tuning.db, else ~/.local/share/nsajit/tuning.db.
std::filesystem::path default_db_path();

enum class Outcome { ok, pruned, compile_error, launch_error, wrong_result, timeout };
std::string_view outcome_name(Outcome o);                 // "ok", "pruned", ...
std::optional<Outcome> parse_outcome(std::string_view s);  // nullopt for an unknown name

// Where a measurement was made: the device model and the toolkit. Results from another driver or NVRTC are
// stale (kept, reported, never used).
struct Toolkit {
  std::string device;  // DeviceInfo::model_fingerprint(): name, compute capability, SMs, L2, memory
  int driver_version = 0;
  std::string nvrtc_version;
  bool operator==(const Toolkit&) const = default;
};

struct Trial {
  int64_t id = 0;  // assigned by add_trial
  Toolkit toolkit;
  std::string family;
  std::string shape;      // ProblemKey::shape
  int64_t t_bucket = 0;   // ProblemKey::t_bucket
  std::string problem;    // exact Problem::describe() of the measured problem
  std::string config;     // describe(TileConfig)
  std::string source_hash;
  int stage = 0;          // 0: brief measurement, 1: full, 2: interleaved final (higher is more precise)
  Outcome outcome = Outcome::ok;
  std::string detail;     // pruned / error reason; for ok what the gate accepted short of equality (select's
                          // near-tie swaps), else empty
  double median_ms = 0, p20_ms = 0, p80_ms = 0;
  int reps = 0;
  int registers = -1, spill_bytes = 0, smem_bytes = 0;
  double compile_seconds = 0;
  int64_t created = 0;        // unix seconds; add_trial writes the current time when 0
  std::string nsajit_version;  // add_trial writes NSAJIT_VERSION when empty
  std::string inputs = "coherent";  // the input kind measured on (tuner/inputs.h input_kind_name)
};

struct BestEntry {
  Toolkit toolkit;
  std::string family;
  std::string shape;
  int64_t t_bucket = 0;
  std::string problem;  // the exact problem it was tuned on
  std::string config;
  std::string source_hash;
  double median_ms = 0;
  double default_ms = 0;  // the family's default config in the same interleaved run; 0 when unknown
  int64_t updated = 0;    // unix seconds; set_best writes the current time when 0
  std::string nsajit_version;
  std::string inputs = "coherent";  // the input kind it was tuned on
  // Part of the key: for a data-dependent family (KernelFamily::overlap_dependent()) the selection-overlap bucket
  // (codegen/overlap.h) of the inputs it was tuned on, "low" or "high"; "" for every other family.
  std::string overlap;
};

// A result is stale when it was measured with another driver or NVRTC than `current`, for the same device.
// In `current`, an empty device matches every device and driver_version 0 means "unknown" (no GPU here: only the
// NVRTC version is compared). count_stale_trials and remove_trials_where_toolkit_not use this rule.
bool is_stale_toolkit(const Toolkit& measured, const Toolkit& current);

// The DDL (tables and indexes, no PRAGMAs) of each schema version. Version 1 is exposed so that tests can build an
// old file by hand and check that it migrates. Version 1 differs from 2: trials has no `stage` (v1 only made full
// measurements: migrated rows get stage 1) and no `nsajit_version`, and its outcome CHECK lacks 'timeout' (v1
// recorded timeouts as launch_error); best has no `default_ms` (migrated: 0, unknown) and no `nsajit_version`.
// The migration rebuilds both tables (rename, create, copy, drop) in one transaction, keeping trial ids.
// Version 2 differs from 3: trials and best have no `inputs` (versions 1 and 2 tuned on random inputs: migrated rows
// get 'random'), and best has no `overlap` in its key (the only data-dependent family then, slc_fwd, was tuned on
// random inputs, whose selections are low-overlap: its rows get 'low', every other family's ''). The migration adds
// the trials column (at the end, where a new file has it too) and rebuilds best, in one transaction.
extern const std::string_view kSchemaV1Sql;
std::string schema_sql(int version);  // 1, 2 or 3

struct RepairReport;

// Every database failure: `kind` says which, the message names the file and what to do.
class DbError : public Error {
public:
  enum class Kind { io, not_nsajit, corrupted, newer_schema, busy };
  DbError(Kind kind, const std::string& message) : Error(message), kind(kind) {}
  Kind kind;
};

// Every open classifies the file before writing anything to it (16-byte SQLite header, application_id, tables,
// user_version, PRAGMA quick_check). A read_only open never writes: on a version-1 (or zero-length) file it copies
// the file into memory (SQLite backup API) and migrates the copy, so every query works; schema_version() then still
// reports the file's version. Writes through a read_only TuningDb throw DbError (io).
class TuningDb {
public:
  enum class Mode { read_write, read_only };
  // read_write creates the file (and its parent directories) when absent. Throws DbError:
  //   not_nsajit   the file exists but is not SQLite, or is SQLite with another application_id / foreign tables;
  //   corrupted    SQLite reports damage (PRAGMA quick_check fails, or a read fails with SQLITE_CORRUPT);
  //                the message says to run `nsajit db verify --repair`;
  //   newer_schema user_version > kDbSchemaVersion;
  //   io           cannot open / create / read_only on a missing file.
  static TuningDb open(const std::filesystem::path& path, Mode mode = Mode::read_write);
  TuningDb(TuningDb&&) noexcept;
  TuningDb& operator=(TuningDb&&) noexcept;
  ~TuningDb();

  const std::filesystem::path& path() const { return path_; }
  int schema_version() const;  // of the file: after a read_write open always kDbSchemaVersion

  int64_t add_trial(const Trial& t);  // returns the new id
  // The most precise (highest stage, then newest) trial of exactly this toolkit, family, problem, config, source
  // hash and input kind with stage >= min_stage, if any: what a resumed sweep reuses instead of measuring again.
  std::optional<Trial> find_trial(const Toolkit& tk, std::string_view family, std::string_view problem,
                                  std::string_view config, std::string_view source_hash, std::string_view inputs,
                                  int min_stage = 0) const;
  // Filters are ignored when empty. Ordered by id.
  std::vector<Trial> trials(std::string_view family = {}, std::string_view device = {}) const;
  // Trials whose toolkit differs from `current` in driver or NVRTC for the same device (stale), count only.
  int64_t count_stale_trials(const Toolkit& current) const;

  void set_best(const BestEntry& e);  // insert or replace (device, family, shape, t_bucket, overlap)
  std::optional<BestEntry> best(std::string_view device, std::string_view family, std::string_view shape,
                                int64_t t_bucket, std::string_view overlap = {}) const;
  // Every bucket (sequence length and overlap) of one (device, family, shape), ordered by t_bucket, then overlap:
  // for the nearest-bucket lookup.
  std::vector<BestEntry> best_for_shape(std::string_view device, std::string_view family,
                                        std::string_view shape) const;
  std::vector<BestEntry> all_best() const;  // ordered by device, family, shape, t_bucket

  // Merge: for each entry, insert when absent (its key: device, family, shape, t_bucket, overlap); when present keep
  // the one with the smaller median_ms.
  struct MergeStats {
    int64_t added = 0, replaced = 0, kept = 0;
  };
  MergeStats merge_best(const std::vector<BestEntry>& entries);

  // Removals say what they removed (the counts); the CLI prints them.
  int64_t remove_trials_where_toolkit_not(const Toolkit& current);  // same device, other driver/NVRTC
  int64_t remove_best(std::string_view device, std::string_view family, std::string_view shape, int64_t t_bucket,
                      std::string_view overlap = {});

  // PRAGMA integrity_check plus schema checks; empty when healthy.
  std::vector<std::string> verify() const;

  // ---- additions (used by `nsajit db`) ----
  // Removes the trials with these ids, in one transaction; returns how many rows it removed.
  int64_t remove_trials(const std::vector<int64_t>& ids);
  // Number of trials per outcome, indexed by the Outcome's value (6 entries).
  std::vector<int64_t> count_trials_by_outcome() const;
  bool read_only() const { return read_only_; }
  // True when the file has an older schema and was opened read_only: its content was copied into memory and
  // migrated there; the file itself is untouched (a read_write open migrates it in place).
  bool migrated_in_memory() const { return in_memory_; }

private:
  friend RepairReport repair_db(const std::filesystem::path& path);
  TuningDb() = default;
  void close() noexcept;
  std::filesystem::path path_;
  sqlite3* db_ = nullptr;
  int file_version_ = 0;
  bool read_only_ = false;
  bool in_memory_ = false;
};

// Export: a JSON document {"format": "nsajit-tuning", "version": 2, "nsajit_version": ..., "best": [...]}, each
// entry every BestEntry field under its own name (toolkit fields flattened: device, driver_version,
// nvrtc_version). parse_export throws UsageError naming the entry and field that are wrong. It also reads version 1
// (written before `inputs` and `overlap` existed), whose entries get the values the schema migration gives.
std::string export_json(const std::vector<BestEntry>& entries);
std::vector<BestEntry> parse_export(std::string_view json);

// Repair of a damaged or foreign file, never deleting anything: the file (and its -wal/-shm) is renamed to
// <path>.damaged-<unix time>, a new database is created at <path>, and every trial and best row that can still
// be read from the damaged copy is copied into it.
struct RepairReport {
  std::filesystem::path kept_as;
  int64_t trials_recovered = 0, best_recovered = 0;
  std::string note;  // what could not be read, if anything
};
RepairReport repair_db(const std::filesystem::path& path);

}  // namespace nsajit
