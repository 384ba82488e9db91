// `nsajit db list|show|export|import|verify|prune`: inspect and maintain the tuning database.
#include "cli/db_cmd.h"

#include <fmt/chrono.h>
#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <ctime>
#include <fstream>
#include <iostream>
#include <iterator>
#include <map>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "base/error.h"
#include "codegen/codegen.h"
#include "codegen/family.h"
#include "db/db.h"
#include "db/keys.h"
#include "runtime/device.h"
#include "runtime/driver.h"
#include "runtime/nvrtc_compiler.h"

namespace nsajit {
namespace {

namespace fs = std::filesystem;

// What this machine would measure with now. Without a GPU the driver is unknown: only NVRTC is compared.
struct Current {
  Toolkit toolkit;  // device left empty: staleness is judged for every device in the file
  bool gpu = false;
  std::string gpu_arch;
};

Current current_toolkit() {
  Current c;
  c.toolkit.nvrtc_version = nvrtc_version();
  if (driver_available()) {
    const DeviceInfo d = query_device(0);
    c.gpu = true;
    c.toolkit.driver_version = d.driver_version;
    c.gpu_arch = d.arch();
  }
  return c;
}

std::string describe_current(const Current& c) {
  if (c.gpu) return fmt::format("NVRTC {}, driver {}", c.toolkit.nvrtc_version, c.toolkit.driver_version);
  return fmt::format("NVRTC {}; no GPU here, so driver versions are not compared", c.toolkit.nvrtc_version);
}

// "NVIDIA H200|cc9.0|sm132|..." -> "H200".
std::string short_device(const std::string& device) {
  std::string s = device.substr(0, device.find_first_of("|,"));
  if (s.rfind("NVIDIA ", 0) == 0) s = s.substr(7);
  return s.empty() ? device : s;
}

// The arch a device string was measured on: its compute capability ("cc9.0") when it records one, else the GPU's
// here, else sm_90a (what nsajit targets without a GPU).
std::string arch_of(const std::string& device, const Current& c) {
  for (size_t i = device.find("cc"); i != std::string::npos; i = device.find("cc", i + 1)) {
    size_t j = i + 2;
    int major = 0, minor = 0;
    if (j >= device.size() || !std::isdigit(static_cast<unsigned char>(device[j]))) continue;
    while (j < device.size() && std::isdigit(static_cast<unsigned char>(device[j])))
      major = major * 10 + (device[j++] - '0');
    if (j + 1 >= device.size() || device[j] != '.' || !std::isdigit(static_cast<unsigned char>(device[j + 1])))
      continue;
    ++j;
    while (j < device.size() && std::isdigit(static_cast<unsigned char>(device[j])))
      minor = minor * 10 + (device[j++] - '0');
    if (major == 9 && minor == 0) return "sm_90a";
    return fmt::format("sm_{}{}", major, minor);
  }
  return c.gpu ? c.gpu_arch : "sm_90a";
}

std::string key_str(const std::string& shape, int64_t t_bucket) { return ProblemKey{shape, t_bucket}.str(); }
// A best entry's key: the problem key, and the overlap bucket of a data-dependent family.
std::string key_str(const BestEntry& e) {
  return key_str(e.shape, e.t_bucket) + (e.overlap.empty() ? "" : fmt::format(" overlap={}", e.overlap));
}

// A line of stored text made safe for a terminal: control bytes (a damaged file's text may hold any) as \xNN.
std::string printable(std::string_view s) {
  std::string out;
  for (const char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if (u < 0x20 || u == 0x7f)
      out += fmt::format("\\x{:02x}", u);
    else
      out += c;
  }
  return out;
}

std::string when(int64_t unix_seconds) {
  const std::time_t t = static_cast<std::time_t>(unix_seconds);
  return fmt::format("{:%Y-%m-%d %H:%M:%S} UTC", fmt::gmtime(t));
}

// Why a best entry is stale (empty: current), or why it cannot be judged.
struct Judgement {
  std::vector<std::string> stale;      // other driver / NVRTC, changed source
  std::optional<std::string> unknown;  // unknown family, unparseable problem or config
  bool toolkit_stale = false, source_stale = false;
};

class Judge {
public:
  explicit Judge(const Current& c) : c_(c) {}
  Judgement operator()(const BestEntry& e) const {
    Judgement j;
    Toolkit now = c_.toolkit;
    if (!c_.gpu) now.driver_version = 0;  // no GPU: the driver cannot be judged
    try {
      const Staleness st = staleness(e, now, arch_of(e.toolkit.device, c_));
      j.stale = st.reasons;
      j.toolkit_stale = st.toolkit, j.source_stale = st.source;
    } catch (const std::exception& ex) {
      j.unknown = ex.what();
    }
    return j;
  }

private:
  const Current& c_;
};

std::string outcome_counts(const TuningDb& db) {
  const std::vector<int64_t> counts = db.count_trials_by_outcome();
  int64_t total = 0;
  std::string parts;
  for (size_t i = 0; i < counts.size(); ++i) {
    total += counts[i];
    parts += fmt::format("{}{} {}", parts.empty() ? "" : ", ", outcome_name(static_cast<Outcome>(i)), counts[i]);
  }
  return fmt::format("{} trials ({})", total, parts);
}

class DbCmd : public DbCommand {
public:
  explicit DbCmd(CLI::App& app) {
    db_ = app.add_subcommand("db", "Inspect and maintain the tuning database");
    db_->fallthrough();  // `nsajit db list --db X` as well as `nsajit db --db X list`
    db_->add_option("--db", path_,
                    "The tuning database (default: $NSAJIT_DB, else $XDG_DATA_HOME/nsajit/tuning.db, else "
                    "~/.local/share/nsajit/tuning.db)");
    db_->require_subcommand(1);
    list_ = db_->add_subcommand("list", "The best config per device, family and problem key, and trial counts");
    show_ = db_->add_subcommand("show", "The trials, one line each");
    show_->add_option("--family", show_family_, "Only this kernel family");
    show_->add_option("--outcome", show_outcome_,
                      "Only this outcome: ok, pruned, compile_error, launch_error, "
                      "wrong_result, timeout");
    show_->add_option("--limit", show_limit_, "Only the last N trials (0: all)")->check(CLI::NonNegativeNumber);
    export_ = db_->add_subcommand("export", "Write the best entries as JSON");
    export_->add_option("-o,--output", export_out_, "Output file (default: standard output)");
    import_ = db_->add_subcommand("import", "Merge best entries from an export (the faster of two wins)");
    import_->add_option("file", import_file_, "A file written by `nsajit db export`")->required();
    verify_ = db_->add_subcommand("verify", "Check the database (integrity, schema, stale entries)");
    verify_->add_flag("--repair", repair_,
                      "If damaged: keep the file as <db>.damaged-<time> and rebuild from what can be read");
    prune_ = db_->add_subcommand("prune", "Remove stale results (dry run unless --yes)");
    prune_->add_flag("--stale", prune_stale_,
                     "Trials of another driver/NVRTC; best entries of another driver/NVRTC or changed kernel source");
    prune_->add_option("--family", prune_family_, "Only this family (alone: every row of the family)");
    prune_->add_flag("--yes", prune_yes_, "Remove them (without it, only print what would be removed)");
  }

  bool parsed() const override { return db_->parsed(); }

  int run() override {
    path_resolved_ = path_.empty() ? default_db_path() : fs::path(path_);
    if (*list_) return cmd_list();
    if (*show_) return cmd_show();
    if (*export_) return cmd_export();
    if (*import_) return cmd_import();
    if (*verify_) return cmd_verify();
    if (*prune_) return cmd_prune();
    throw UsageError("nsajit db: give one of list, show, export, import, verify, prune");
  }

private:
  TuningDb open_existing() const { return TuningDb::open(path_resolved_, TuningDb::Mode::read_only); }

  std::string schema_note(const TuningDb& db) const {
    if (db.migrated_in_memory())
      return fmt::format(" (schema {}: migrates to {} on the next write)", db.schema_version(), kDbSchemaVersion);
    return fmt::format(" (schema {})", db.schema_version());
  }

  int cmd_list() {
    const TuningDb db = open_existing();
    const Current cur = current_toolkit();
    Judge judge(cur);
    const std::vector<BestEntry> best = db.all_best();
    fmt::print("tuning database {}{}\nnow: {}\n", db.path().string(), schema_note(db), describe_current(cur));
    fmt::print("{} best entries\n", best.size());
    int64_t stale = 0;
    for (const BestEntry& e : best) {
      std::string line = fmt::format("  {:<10} {:<10} {}  [{}]  {:.4f} ms", short_device(e.toolkit.device), e.family,
                                     key_str(e), e.config, e.median_ms);
      if (e.default_ms > 0 && e.median_ms > 0)
        line += fmt::format("  default {:.4f} ms  speed-up {:.2f}x", e.default_ms, e.default_ms / e.median_ms);
      else
        line += "  default unknown";
      line += fmt::format("  ({} inputs)", e.inputs);
      const Judgement j = judge(e);
      if (!j.stale.empty()) {
        ++stale;
        line += fmt::format("  STALE: {}", fmt::join(j.stale, ", "));
      }
      if (j.unknown) line += fmt::format("  (cannot check the source: {})", *j.unknown);
      fmt::print("{}\n", printable(line));
    }
    fmt::print("{}\n", outcome_counts(db));
    if (stale) fmt::print("{} stale best entries: `nsajit db prune --stale` removes them\n", stale);
    return 0;
  }

  int cmd_show() {
    std::optional<Outcome> outcome;
    if (!show_outcome_.empty()) {
      outcome = parse_outcome(show_outcome_);
      if (!outcome)
        throw UsageError(
            fmt::format("unknown outcome '{}': the outcomes are ok, pruned, compile_error, "
                        "launch_error, wrong_result, timeout",
                        show_outcome_));
    }
    const TuningDb db = open_existing();
    std::vector<Trial> trials = db.trials(show_family_);
    if (outcome)
      trials.erase(std::remove_if(trials.begin(), trials.end(), [&](const Trial& t) { return t.outcome != *outcome; }),
                   trials.end());
    const size_t matching = trials.size();
    if (show_limit_ > 0 && trials.size() > static_cast<size_t>(show_limit_))
      trials.erase(trials.begin(), trials.end() - show_limit_);
    for (const Trial& t : trials) {
      std::string result = t.outcome == Outcome::ok ? fmt::format("median {:.4f} ms (p20 {:.4f}, p80 {:.4f}, {} reps)",
                                                                  t.median_ms, t.p20_ms, t.p80_ms, t.reps)
                                                    : t.detail;
      fmt::print("{}\n", printable(fmt::format("#{} {} {} {} [{}] {} inputs stage {} {}: {}  regs {} spill {} B smem {} B  {}",
                                             t.id, short_device(t.toolkit.device), t.family,
                                             key_str(t.shape, t.t_bucket), t.config, t.inputs, t.stage,
                                             outcome_name(t.outcome), result, t.registers, t.spill_bytes,
                                             t.smem_bytes, when(t.created))));
    }
    fmt::print("{} of {} matching trials shown ({})\n", trials.size(), matching, db.path().string());
    return 0;
  }

  int cmd_export() {
    const TuningDb db = open_existing();
    const std::vector<BestEntry> best = db.all_best();
    const std::string text = export_json(best);
    if (export_out_.empty() || export_out_ == "-") {
      std::cout << text;
      std::cout.flush();
      return std::cout ? 0 : 1;
    }
    std::ofstream f(export_out_, std::ios::binary);
    if (!f || !(f << text) || !f.flush()) throw Error(fmt::format("cannot write {}", export_out_));
    fmt::print(stderr, "exported {} best entries from {} to {}\n", best.size(), db.path().string(), export_out_);
    return 0;
  }

  int cmd_import() {
    std::ifstream in(import_file_, std::ios::binary);
    if (!in) throw UsageError(fmt::format("cannot read {}", import_file_));
    const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::vector<BestEntry> entries;
    try {
      entries = parse_export(text);
    } catch (const UsageError& e) {
      throw UsageError(fmt::format("{}: {}", import_file_, e.what()));
    }
    TuningDb db = TuningDb::open(path_resolved_, TuningDb::Mode::read_write);
    const TuningDb::MergeStats s = db.merge_best(entries);
    fmt::print(
        "imported {} entries from {} into {}: {} added, {} replaced (faster), {} kept (already as fast or "
        "faster)\n",
        entries.size(), import_file_, db.path().string(), s.added, s.replaced, s.kept);
    return 0;
  }

  int repair() {
    const RepairReport r = repair_db(path_resolved_);
    fmt::print(
        "repaired {}:\n  the damaged file is kept as {}\n  recovered {} trials and {} best entries into a new "
        "database at {}\n  {}\n",
        path_resolved_.string(), r.kept_as.string(), r.trials_recovered, r.best_recovered, path_resolved_.string(),
        r.note);
    return 0;
  }

  int cmd_verify() {
    std::optional<TuningDb> db;
    try {
      db = open_existing();
    } catch (const DbError& e) {
      if (e.kind != DbError::Kind::corrupted && e.kind != DbError::Kind::not_nsajit) throw;
      if (!repair_) {
        fmt::print(stderr, "nsajit: {}\n", e.what());
        return 1;
      }
      fmt::print("{}\n", e.what());
      return repair();
    }
    const std::vector<std::string> problems = db->verify();
    for (const std::string& p : problems) fmt::print("problem: {}\n", p);
    const Current cur = current_toolkit();
    Judge judge(cur);
    int64_t stale = 0, unknown = 0;
    for (const BestEntry& e : db->all_best()) {
      const Judgement j = judge(e);
      if (!j.stale.empty()) {
        ++stale;
        fmt::print("{}\n", printable(fmt::format("stale: {} {} {} [{}]: {}", short_device(e.toolkit.device), e.family,
                                                 key_str(e), e.config, fmt::join(j.stale, ", "))));
      }
      if (j.unknown) {
        ++unknown;
        fmt::print("{}\n", printable(fmt::format("cannot check: {} {} {}: {}", short_device(e.toolkit.device), e.family,
                                                 key_str(e), *j.unknown)));
      }
    }
    const int64_t stale_trials = db->count_stale_trials(cur.toolkit);
    fmt::print("{}{}: {}, {} best entries; {} stale best entries, {} stale trials (now: {})\n", db->path().string(),
               schema_note(*db), outcome_counts(*db), db->all_best().size(), stale, stale_trials,
               describe_current(cur));
    if (stale || stale_trials) fmt::print("`nsajit db prune --stale` removes the stale results\n");
    if (problems.empty()) {
      fmt::print("ok: no problems\n");
      return 0;
    }
    if (!repair_) {
      fmt::print("{} problems: run `nsajit db verify --repair` to keep a copy and recover what can be read\n",
                 problems.size());
      return 1;
    }
    db.reset();
    return repair();
  }

  int cmd_prune() {
    if (!prune_stale_ && prune_family_.empty())
      throw UsageError(
          "nsajit db prune: say what to prune: --stale (results of another driver/NVRTC or of changed "
          "kernel source) and/or --family F");
    // Existence first, so that a dry run never creates a file.
    TuningDb db = prune_yes_ ? (fs::exists(path_resolved_) ? TuningDb::open(path_resolved_)
                                                           : TuningDb::open(path_resolved_, TuningDb::Mode::read_only))
                             : open_existing();
    const Current cur = current_toolkit();
    Judge judge(cur);
    std::vector<int64_t> trial_ids;
    for (const Trial& t : db.trials(prune_family_))
      if (!prune_stale_ || is_stale_toolkit(t.toolkit, cur.toolkit)) trial_ids.push_back(t.id);
    std::vector<BestEntry> best;
    int64_t by_toolkit = 0, by_source = 0;
    for (const BestEntry& e : db.all_best()) {
      if (!prune_family_.empty() && e.family != prune_family_) continue;
      if (prune_stale_) {
        const Judgement j = judge(e);
        if (j.stale.empty()) continue;
        by_toolkit += j.toolkit_stale;
        by_source += j.source_stale && !j.toolkit_stale;
      }
      best.push_back(e);
    }
    const std::string what =
        prune_stale_ ? fmt::format(
                           "{} stale trials (another driver/NVRTC) and {} stale best entries ({} of another "
                           "driver/NVRTC, {} of changed kernel source)",
                           trial_ids.size(), best.size(), by_toolkit, by_source)
                     : fmt::format("{} trials and {} best entries", trial_ids.size(), best.size());
    const std::string scope = prune_family_.empty() ? "" : fmt::format(" of family {}", prune_family_);
    if (!prune_yes_) {
      for (const BestEntry& e : best)
        fmt::print("{}\n", printable(fmt::format("  would remove best {} {} {} [{}]", short_device(e.toolkit.device),
                                                 e.family, key_str(e), e.config)));
      fmt::print("dry run: would remove {}{} from {} (now: {}); run again with --yes to remove them\n", what, scope,
                 db.path().string(), describe_current(cur));
      return 0;
    }
    const int64_t removed_trials = db.remove_trials(trial_ids);
    int64_t removed_best = 0;
    for (const BestEntry& e : best)
      removed_best += db.remove_best(e.toolkit.device, e.family, e.shape, e.t_bucket, e.overlap);
    fmt::print("removed {} trials and {} best entries{} from {} (selected: {})\n", removed_trials, removed_best, scope,
               db.path().string(), what);
    return 0;
  }

  CLI::App* db_ = nullptr;
  CLI::App *list_ = nullptr, *show_ = nullptr, *export_ = nullptr, *import_ = nullptr, *verify_ = nullptr,
           *prune_ = nullptr;
  std::string path_;
  fs::path path_resolved_;
  std::string show_family_, show_outcome_;
  int64_t show_limit_ = 0;
  std::string export_out_, import_file_;
  bool repair_ = false;
  bool prune_stale_ = false, prune_yes_ = false;
  std::string prune_family_;
};

}  // namespace

std::unique_ptr<DbCommand> add_db_command(CLI::App& app) { return std::make_unique<DbCmd>(app); }

}  // namespace nsajit
