// The tuner's pieces that need no GPU: the measuring process's plumbing (replies, timeouts, crashes, restarts)
// driven with stand-in worker scripts, the whole orchestration (run_tune: outcomes, resume, several devices) driven
// with a stand-in worker that fakes a GPU, which trials a rerun reuses, the real worker without a GPU, the
// test-only family's registration, and `nsajit tune`'s argument checks.
#include <doctest/doctest.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "codegen/family.h"
#include "base/error.h"
#include "db/db.h"
#include "tuner/tuner.h"
#include "tuner/worker.h"
#include "tests/cpu/test_util.h"

namespace fs = std::filesystem;
namespace json = llvm::json;

namespace {

class TempDir {
public:
  TempDir() {
    std::string model = (fs::temp_directory_path() / "nsajit-tuner-test-XXXXXX").string();
    REQUIRE(mkdtemp(model.data()) != nullptr);
    dir_ = model;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  const fs::path& path() const { return dir_; }
  // An executable shell script standing in for `nsajit` (it gets `tune-worker --device N`; fd 3 in, fd 4 out).
  std::string script(const std::string& name, const std::string& body) const {
    const fs::path p = dir_ / name;
    std::ofstream(p) << "#!/bin/sh\n" << body << "\n";
    ::chmod(p.c_str(), 0755);
    return p.string();
  }

private:
  fs::path dir_;
};

Run run_cli(const std::string& args, const std::string& env = "") {
  return run_shell(env + " " + quoted(NSAJIT_CLI_PATH) + " " + args + " 2>&1");
}

const json::Object kHello{{"op", "hello"}};

}  // namespace

TEST_CASE("worker: a reply per request, over the protocol's descriptors") {
  TempDir t;
  // Echoes the request's op back, once per line; checks its arguments.
  const std::string exe = t.script("echo", R"(test "$1 $2 $3" = "tune-worker --device 5" || exit 9
while read -r line <&3; do
  case "$line" in *'"op":"hello"'*) echo '{"outcome":"ok","op":"hello"}' >&4 ;; *) echo '{"outcome":"ok","op":"other"}' >&4 ;; esac
done)");
  nsajit::WorkerProcess w(exe, 5);
  auto r = w.call(kHello, 10);
  REQUIRE(r.object);
  CHECK(r.object->getString("op").value_or("") == "hello");
  r = w.call(json::Object{{"op", "measure"}}, 10);
  REQUIRE(r.object);
  CHECK(r.object->getString("op").value_or("") == "other");
  CHECK(w.restarts() == 0);  // one process served both
}

TEST_CASE("worker: a hung worker is killed at the timeout and the next call starts a new one") {
  TempDir t;
  const std::string exe = t.script("hang", R"(read -r line <&3; case "$line" in *hello*) echo '{"outcome":"ok"}' >&4 ;; esac
read -r line <&3; exec sleep 60)");
  nsajit::WorkerProcess w(exe, 0);
  REQUIRE(w.call(kHello, 10).object);
  const auto start = std::chrono::steady_clock::now();
  auto r = w.call(json::Object{{"op", "measure"}}, 0.5);
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  CHECK_FALSE(r.object);
  CHECK(r.timed_out);
  CHECK_CONTAINS(r.failure, "no reply within");
  CHECK(took < 5.0);
  // A fresh process answers the next request.
  r = w.call(kHello, 10);
  REQUIRE(r.object);
  CHECK(w.restarts() == 1);
}

TEST_CASE("worker: a crash, an exit and a malformed reply are failures, not exceptions") {
  TempDir t;
  SUBCASE("crash") {
    nsajit::WorkerProcess w(t.script("segv", "read -r line <&3; kill -SEGV $$"), 0);
    const auto r = w.call(kHello, 10);
    CHECK_FALSE(r.object);
    CHECK_FALSE(r.timed_out);
    CHECK_CONTAINS(r.failure, "signal 11");
  }
  SUBCASE("exit") {
    nsajit::WorkerProcess w(t.script("exit", "read -r line <&3; exit 4"), 0);
    const auto r = w.call(kHello, 10);
    CHECK_FALSE(r.object);
    CHECK_CONTAINS(r.failure, "exited with status 4");
  }
  SUBCASE("malformed") {
    nsajit::WorkerProcess w(t.script("junk", "read -r line <&3; echo 'not json' >&4; exec sleep 60"), 0);
    const auto r = w.call(kHello, 10);
    CHECK_FALSE(r.object);
    CHECK_CONTAINS(r.failure, "malformed");
  }
  SUBCASE("missing executable") {
    nsajit::WorkerProcess w((t.path() / "nope").string(), 0);
    const auto r = w.call(kHello, 10);
    CHECK_FALSE(r.object);
    CHECK_CONTAINS(r.failure, "could not run");
  }
}

TEST_CASE("worker: a fatal reply ends the process; the next call restarts it") {
  TempDir t;
  const std::string exe = t.script("fatal", R"(read -r line <&3
echo '{"outcome":"launch_error","detail":"CUDA_ERROR_ILLEGAL_ADDRESS","fatal":true}' >&4
exit 3)");
  nsajit::WorkerProcess w(exe, 0);
  auto r = w.call(json::Object{{"op", "measure"}}, 10);
  REQUIRE(r.object);
  CHECK(r.object->getString("outcome").value_or("") == "launch_error");
  r = w.call(json::Object{{"op", "measure"}}, 10);
  REQUIRE(r.object);
  CHECK(w.restarts() == 1);
}

TEST_CASE("worker: the real worker without a GPU answers that it cannot start, then exits") {
  nsajit::WorkerProcess w(NSAJIT_CLI_PATH, 0);
  const auto r = w.call(kHello, 30);
  if (r.object && !r.object->getString("outcome")) {
    MESSAGE("a GPU is present: the worker started; skipped");
    return;
  }
  REQUIRE(r.object);
  CHECK(r.object->getString("outcome").value_or("") == "launch_error");
  CHECK(r.object->getBoolean("fatal").value_or(false));
  CHECK_CONTAINS(r.object->getString("detail").value_or("").str(), "worker start:");
}

TEST_CASE("tune: the test-only family exists only with NSAJIT_TEST_FAMILIES=1") {
  CHECK_FALSE(contains(run_cli("families").output, "fault_test"));
  const Run with = run_cli("families", "NSAJIT_TEST_FAMILIES=1");
  CHECK(with.code == 0);
  CHECK_CONTAINS(with.output, "fault_test");
  CHECK_CONTAINS(with.output, "MODE");
  // The internal worker subcommand is not advertised.
  CHECK_FALSE(contains(run_cli("--help").output, "tune-worker"));
}

TEST_CASE("tune: bad arguments are usage errors (exit 2) before any GPU is needed") {
  struct Case {
    const char* args;
    const char* says;
  };
  const Case cases[] = {
      {"tune --preset fla --strategy greedy", "greedy"},
      {"tune --preset fla --budget 0", "budget"},
      {"tune --preset fla --budget 3x", "budget"},
      {"tune --preset fla --families nope", "'nope'"},
      {"tune --preset fla --seq 0", "--seq"},
      {"tune --preset nope", "nope"},
      {"tune --preset fla --timeout -1", "--timeout"},
  };
  for (const Case& c : cases) {
    CAPTURE(c.args);
    const Run r = run_cli(c.args);
    CHECK(r.code == 2);
    CHECK_CONTAINS(r.output, c.says);
  }
}

TEST_CASE("tune: without a GPU it says so and exits 1") {
  const Run devices = run_cli("devices");
  if (devices.code == 0) {
    MESSAGE("a GPU is present; skipped");
    return;
  }
  const Run r = run_cli("tune --preset fla --seq 1024 --families win_fwd");
  CHECK(r.code == 1);
  CHECK_CONTAINS(r.output, "needs a GPU");
  CHECK_CONTAINS(r.output, "compile --all-configs");
}

TEST_CASE("tune: pruning after the compile: spills, registers, shared memory") {
  const nsajit::KernelFamily& f = nsajit::find_family("win_fwd");
  nsajit::Problem p = nsajit::preset("fla");
  const nsajit::TileConfig c{{"BM", 64}, {"BN", 32}, {"QREGS", 1}, {"IMPL", 0}, {"STAGES", 2}};  // 128 threads
  nsajit::ResourceUsage u;
  u.registers = 128, u.parsed = true;
  CHECK_FALSE(nsajit::prune_after_compile(f, p, c, u, nsajit::kHopperMaxSmemOptin));
  nsajit::ResourceUsage spill = u;
  spill.spill_store_bytes = 8, spill.spill_load_bytes = 12;
  const nsajit::TileConfig other{{"BM", 128}, {"BN", 32}, {"QREGS", 1}, {"IMPL", 0}, {"STAGES", 2}};
  REQUIRE(other != f.default_config(p));
  const auto s = nsajit::prune_after_compile(f, p, other, spill, nsajit::kHopperMaxSmemOptin);
  REQUIRE(s);
  CHECK_CONTAINS(*s, "spills 12 B");
  // The default (the Hopper kernel) is the baseline: measured even when it spills; the same spill prunes the
  // mma.sync config, which is not the default.
  const nsajit::TileConfig d = f.default_config(p);
  REQUIRE(d == nsajit::TileConfig{{"BM", 128}, {"BN", 64}, {"QREGS", 0}, {"IMPL", 2}, {"STAGES", 3}});
  CHECK_FALSE(nsajit::prune_after_compile(f, p, d, spill, nsajit::kHopperMaxSmemOptin));
  const auto sc = nsajit::prune_after_compile(f, p, c, spill, nsajit::kHopperMaxSmemOptin);
  REQUIRE(sc);
  CHECK_CONTAINS(*sc, "spills 12 B");
  // 128 threads x 255 registers fit (4 warps x 8192); 512 threads x 255 would not.
  nsajit::ResourceUsage many = u;
  many.registers = 255;
  CHECK_FALSE(nsajit::prune_after_compile(f, p, c, many, nsajit::kHopperMaxSmemOptin));
  const nsajit::KernelFamily& pool = nsajit::find_family("pool");
  const auto r = nsajit::prune_after_compile(pool, p, {{"THREADS", 512}}, many, nsajit::kHopperMaxSmemOptin);
  REQUIRE(r);
  CHECK_CONTAINS(*r, "no CTA fits an SM");
  // Static shared memory counts with the dynamic part against the limit.
  nsajit::ResourceUsage big = u;
  big.static_smem_bytes = 40000;
  const int dyn = f.geometry(p, c).smem_bytes;
  CHECK_FALSE(nsajit::prune_after_compile(f, p, c, big, dyn + 40000));
  const auto m = nsajit::prune_after_compile(f, p, c, big, dyn + 39999);
  REQUIRE(m);
  CHECK_CONTAINS(*m, "shared memory");
}

// ---- which recorded trials a rerun reuses ---------------------------------------------------------------------------

namespace {

nsajit::Trial trial(nsajit::Outcome outcome, const std::string& detail, int stage = 1, int64_t created = 100,
                    int64_t id = 1) {
  nsajit::Trial t;
  t.outcome = outcome, t.detail = detail, t.stage = stage, t.created = created, t.id = id;
  return t;
}

}  // namespace

TEST_CASE("tune resume: the kernel's results are reused, failures of the measuring process are not") {
  using nsajit::Outcome;
  using nsajit::reusable_trial;
  // The kernel's own results.
  CHECK(reusable_trial(trial(Outcome::ok, ""), 30));
  CHECK(reusable_trial(trial(Outcome::wrong_result, "rel 0.4 > 0.01"), 30));
  CHECK(reusable_trial(trial(Outcome::pruned, "spills 8 B"), 30));
  CHECK(reusable_trial(trial(Outcome::compile_error, "error: expected ;"), 30));
  CHECK(reusable_trial(trial(Outcome::launch_error, "CUDA_ERROR_ILLEGAL_ADDRESS: an illegal memory access"), 30));
  CHECK(reusable_trial(trial(Outcome::launch_error, "worker crashed: signal 11 (Segmentation fault)"), 30));
  // The measuring process's failures, as the tuner and the worker write them.
  CHECK_FALSE(
      reusable_trial(trial(Outcome::launch_error, "GPU 1: preparing inputs failed: CUDA_ERROR_OUT_OF_MEMORY"), 30));
  CHECK_FALSE(reusable_trial(trial(Outcome::launch_error, "could not send to the worker"), 30));
  CHECK_FALSE(reusable_trial(trial(Outcome::launch_error, "worker start: no CUDA device"), 30));
  CHECK_FALSE(reusable_trial(trial(Outcome::launch_error, "worker could not run /x/nsajit"), 30));
  // Timeouts: only under a limit at least as long as today's.
  const std::string t05 = nsajit::timeout_failure(0.5), t30 = nsajit::timeout_failure(30);
  CHECK(t05 == "no reply within 0.5 s (hung kernel?): worker killed");
  CHECK(nsajit::timeout_of_failure(t05) == 0.5);
  CHECK(nsajit::timeout_of_failure(t30) == 30.0);
  CHECK(nsajit::timeout_of_failure(nsajit::timeout_failure(2.25)) == 2.25);
  CHECK_FALSE(nsajit::timeout_of_failure("no reply within x s (hung kernel?): worker killed"));
  CHECK_FALSE(nsajit::timeout_of_failure("killed"));
  CHECK(reusable_trial(trial(Outcome::timeout, t05), 0.5));
  CHECK(reusable_trial(trial(Outcome::timeout, t30), 20));
  CHECK_FALSE(reusable_trial(trial(Outcome::timeout, t05), 0.6));
  CHECK_FALSE(reusable_trial(trial(Outcome::timeout, t30), 31));
  CHECK_FALSE(reusable_trial(trial(Outcome::timeout, "timed out"), 1));  // the limit cannot be read
}

TEST_CASE("tune resume: under a failure of the measuring process, the newest genuine result is found") {
  using nsajit::Outcome;
  const std::string prep = "GPU 0: preparing inputs failed: CUDA_ERROR_OUT_OF_MEMORY";
  std::vector<nsajit::Trial> recorded = {trial(Outcome::ok, "", 0, 100, 1), trial(Outcome::ok, "", 1, 100, 2),
                                         trial(Outcome::launch_error, prep, 1, 200, 3),
                                         trial(Outcome::ok, "", 1, 100, 4)};
  auto got = nsajit::pick_reusable(recorded, 1, 30);
  REQUIRE(got);
  CHECK(got->id == 4);  // the same stage and time: the last added; never the prepare failure
  got = nsajit::pick_reusable(recorded, 0, 30);
  REQUIRE(got);
  CHECK(got->stage == 1);  // the highest stage first
  recorded = {trial(Outcome::ok, "", 0, 100, 1), trial(Outcome::launch_error, prep, 1, 200, 2)};
  got = nsajit::pick_reusable(recorded, 0, 30);
  REQUIRE(got);
  CHECK(got->id == 1);
  CHECK_FALSE(nsajit::pick_reusable(recorded, 1, 30));  // a stage below the level does not count
  CHECK_FALSE(nsajit::pick_reusable({}, 0, 30));
}

// ---- the orchestration with a stand-in worker that fakes a GPU ------------------------------------------------------

namespace {

// What the stand-in does per request. `measure` maps a pool config ("THREADS=128") to "ok <ms>", "wrong",
// "fatal" (a fatal launch error: it answers, then exits) or "hang"; "A|B" does A at level 0 (5 repetitions) and B
// at level 1; a config not in the map is "ok 9". The `fail_prepare`-th prepare request (counted over every process
// of the script) answers a non-fatal launch error. Every request is logged to <dir>/log as "<device> <op>", a
// measurement as "<device> measure <config> <reps>".
struct FakeGpu {
  std::map<std::string, std::string> measure;
  int fail_prepare = 0;
  double prepare_seconds = 0;  // how long a prepare takes
};

std::string stand_in_action(const std::string& what) {
  if (const size_t bar = what.find('|'); bar != std::string::npos)
    return "if [ \"$reps\" = 20 ]; then " + stand_in_action(what.substr(bar + 1)) + "; else " +
           stand_in_action(what.substr(0, bar)) + "; fi";
  if (what.rfind("ok ", 0) == 0) {
    const std::string ms = what.substr(3);
    return "echo '{\"outcome\":\"ok\",\"median\":" + ms + ",\"p20\":" + ms + ",\"p80\":" + ms + ",\"reps\":20}' >&4";
  }
  if (what == "wrong") return "echo '{\"outcome\":\"wrong_result\",\"detail\":\"rel 0.5 > 0.01 (stand-in)\"}' >&4";
  if (what == "fatal")
    return "echo '{\"outcome\":\"launch_error\",\"detail\":\"CUDA_ERROR_ILLEGAL_ADDRESS (stand-in)\",\"fatal\":true}' "
           ">&4; exit 3";
  if (what == "hang") return "exec sleep 30";
  FAIL("unknown stand-in behaviour " << what);
  return "";
}

std::string fake_worker(const TempDir& t, const std::string& name, const FakeGpu& g) {
  std::string measure_cases, ms_cases;
  for (const auto& [cfg, what] : g.measure) {
    measure_cases += "      " + cfg + ") " + stand_in_action(what) + " ;;\n";
    const std::string last = what.substr(what.find('|') == std::string::npos ? 0 : what.find('|') + 1);
    if (last.rfind("ok ", 0) == 0) ms_cases += "    " + cfg + ") echo " + last.substr(3) + " ;;\n";
  }
  const std::string log = quoted((t.path() / "log").string());
  const std::string body = "dev=$3\nlog=" + log + R"SH(
ms() {
  case "$1" in
)SH" + ms_cases + R"SH(    *) echo 9 ;;
  esac
}
while IFS= read -r line <&3; do
  case "$line" in
  *'"op":"hello"'*)
    echo "$dev hello" >> "$log"
    echo '{"arch":"sm_90a","device":"Stand-in GPU|sm_90|132 SMs","driver":13000,"max_smem":232448,'\
'"name":"Stand-in GPU","nvrtc":"13.0"}' >&4 ;;
  *'"op":"prepare"'*)
    echo "$dev prepare" >> "$log"
    sleep )SH" + std::to_string(g.prepare_seconds) + R"SH(
    if [ "$(grep -c ' prepare$' "$log")" = ")SH" +
                           std::to_string(g.fail_prepare) + R"SH(" ]; then
      echo '{"outcome":"launch_error","detail":"CUDA_ERROR_OUT_OF_MEMORY (stand-in)"}' >&4
    else
      echo '{"seconds":0}' >&4
    fi ;;
  *'"op":"measure"'*)
    cfg=${line#*'"config":"'}; cfg=${cfg%%'"'*}
    reps=${line#*'"reps":'}; reps=${reps%%,*}
    echo "$dev measure $cfg $reps" >> "$log"
    t=${line#*' T='}; echo "$dev problem T=${t%% *}" >> "$log"
    case "$cfg" in
)SH" + measure_cases + R"SH(      *) echo '{"outcome":"ok","median":9,"p20":9,"p80":9,"reps":20}' >&4 ;;
    esac ;;
  *'"op":"interleave"'*)
    echo "$dev interleave" >> "$log"
    t=${line#*' T='}; echo "$dev problem T=${t%% *}" >> "$log"
    list=${line#*'"configs":['}; list=${list%%']'*}
    out=""
    for c in $(echo "$list" | tr -d '"' | tr ',' ' '); do
      m=$(ms "$c"); out="$out${out:+,}{\"median\":$m,\"p20\":$m,\"p80\":$m,\"reps\":2}"
    done
    echo "{\"outcome\":\"ok\",\"results\":[$out]}" >&4 ;;
  *) echo '{"outcome":"launch_error","detail":"stand-in: unknown request"}' >&4 ;;
  esac
done)SH";
  return t.script(name, body);
}

// The log's lines since the last call (the log is emptied).
std::vector<std::string> take_log(const TempDir& t) {
  std::vector<std::string> lines;
  std::ifstream in(t.path() / "log");
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  std::ofstream(t.path() / "log", std::ios::trunc).flush();
  return lines;
}

std::vector<std::string> with_op(const std::vector<std::string>& lines, const std::string& op) {
  std::vector<std::string> out;
  for (const std::string& l : lines)
    if (l.find(" " + op) != std::string::npos) out.push_back(l);
  return out;
}

// Tunes pool (3 configs: THREADS=128, 256 (the default), 512) on one problem, exhaustively: each is measured
// once at level 1, in the order 256, 128, 512 (the default first), then the ok ones are re-timed interleaved.
nsajit::SearchOptions exhaustive() {
  nsajit::SearchOptions so;
  so.strategy = nsajit::Strategy::exhaustive;
  return so;
}

nsajit::FamilyTuneResult tune_pool(const std::string& worker, const fs::path& db, double timeout_s,
                                   std::vector<int> devices = {0}, const nsajit::SearchOptions& so = exhaustive(),
                                   nsajit::InputKind inputs = nsajit::InputKind::coherent) {
  nsajit::TuneOptions o;
  o.inputs = inputs;
  nsajit::Problem p = nsajit::preset("fla");
  p.T = 1024;
  o.problems = {p};
  o.families = {"pool"};
  o.search = so;
  o.devices = std::move(devices);
  o.db_path = db;
  o.worker_exe = worker;
  o.timeout_s = timeout_s;
  o.interleave_rounds = 2;
  o.live_progress = false;
  const nsajit::TuneReport r = nsajit::run_tune(o);
  REQUIRE(r.results.size() == 1);
  return r.results.front();
}

// The level-1 trials (stage 1) recorded, by config.
std::map<std::string, std::vector<nsajit::Trial>> stage1(const fs::path& db) {
  std::map<std::string, std::vector<nsajit::Trial>> out;
  for (nsajit::Trial& t : nsajit::TuningDb::open(db, nsajit::TuningDb::Mode::read_only).trials("pool"))
    if (t.stage == 1) out[t.config].push_back(std::move(t));
  return out;
}

}  // namespace

TEST_CASE("tune (stand-in GPU): each outcome is recorded as what it was") {
  TempDir t;
  const fs::path db = t.path() / "tune.db";
  const std::string w =
      fake_worker(t, "w", {{{"THREADS=128", "wrong"}, {"THREADS=256", "ok 2.0"}, {"THREADS=512", "hang"}}, 0});
  const auto start = std::chrono::steady_clock::now();
  const nsajit::FamilyTuneResult r = tune_pool(w, db, 0.5);
  CHECK(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() < 60);
  CHECK(r.measured == 3);
  CHECK(r.reused == 0);
  CHECK(r.failed == 2);
  CHECK(r.best_config == "THREADS=256");
  CHECK(r.best_ms == doctest::Approx(2.0));
  const auto trials = stage1(db);
  REQUIRE(trials.size() == 3);
  REQUIRE(trials.at("THREADS=128").size() == 1);
  CHECK(trials.at("THREADS=128")[0].outcome == nsajit::Outcome::wrong_result);
  CHECK_CONTAINS(trials.at("THREADS=128")[0].detail, "rel 0.5 > 0.01 (stand-in)");
  REQUIRE(trials.at("THREADS=512").size() == 1);
  CHECK(trials.at("THREADS=512")[0].outcome == nsajit::Outcome::timeout);
  CHECK(trials.at("THREADS=512")[0].detail == nsajit::timeout_failure(0.5));
  REQUIRE(trials.at("THREADS=256").size() == 1);
  CHECK(trials.at("THREADS=256")[0].outcome == nsajit::Outcome::ok);
  CHECK(trials.at("THREADS=256")[0].median_ms == doctest::Approx(2.0));
  const auto best = nsajit::TuningDb::open(db, nsajit::TuningDb::Mode::read_only).all_best();
  REQUIRE(best.size() == 1);
  CHECK(best[0].config == "THREADS=256");
  // The hung worker was killed and a new one served the rest (it prepared again).
  CHECK(with_op(take_log(t), "prepare").size() == 2);
}

TEST_CASE("tune (stand-in GPU): a rerun reuses the kernel's results and timeouts under a limit as long") {
  TempDir t;
  const fs::path db = t.path() / "tune.db";
  const std::string bad =
      fake_worker(t, "bad", {{{"THREADS=128", "wrong"}, {"THREADS=256", "fatal"}, {"THREADS=512", "hang"}}, 0});
  const std::string good =
      fake_worker(t, "good", {{{"THREADS=128", "ok 1.5"}, {"THREADS=256", "ok 2.0"}, {"THREADS=512", "ok 1.0"}}, 0});
  nsajit::FamilyTuneResult r = tune_pool(bad, db, 0.5);
  CHECK(r.measured == 3);
  CHECK(r.failed == 3);
  CHECK(with_op(take_log(t), "measure").size() == 3);
  {
    const auto trials = stage1(db);
    REQUIRE(trials.size() == 3);
    CHECK(trials.at("THREADS=256")[0].outcome == nsajit::Outcome::launch_error);
  }
  // Now every config would pass: but a wrong result, a launch error of the kernel and a timeout under the same
  // limit are results, not measured again.
  r = tune_pool(good, db, 0.5);
  CHECK(r.measured == 0);
  CHECK(r.reused == 3);
  CHECK(r.failed == 3);
  CHECK(with_op(take_log(t), "measure").empty());
  // A longer limit measures the timed-out config again, and only that one.
  r = tune_pool(good, db, 2.0);
  CHECK(r.measured == 1);
  CHECK(r.reused == 2);
  CHECK(with_op(take_log(t), "measure") == std::vector<std::string>{"0 measure THREADS=512 20"});
  CHECK(r.best_config == "THREADS=512");
  // And then nothing is measured again.
  r = tune_pool(good, db, 2.0);
  CHECK(r.measured == 0);
  CHECK(r.reused == 3);
  CHECK(with_op(take_log(t), "measure").empty());
  CHECK(stage1(db).at("THREADS=512").size() == 2);  // the timeout and the ok, both kept
}

TEST_CASE("tune (stand-in GPU): a config that failed only because its worker could not prepare is measured again") {
  TempDir t;
  const fs::path db = t.path() / "tune.db";
  // 256 kills the worker (a fatal launch error); the new worker's prepare fails once (memory still held, say), so
  // 128 is recorded as a launch error that says nothing about 128; 512 then finds the worker prepared again.
  const std::string bad =
      fake_worker(t, "bad", {{{"THREADS=128", "ok 1.5"}, {"THREADS=256", "fatal"}, {"THREADS=512", "ok 1.0"}}, 2});
  const std::string good =
      fake_worker(t, "good", {{{"THREADS=128", "ok 1.5"}, {"THREADS=256", "ok 2.0"}, {"THREADS=512", "ok 1.0"}}, 0});
  nsajit::FamilyTuneResult r = tune_pool(bad, db, 5);
  CHECK(r.measured == 3);
  CHECK(r.failed == 2);
  CHECK(with_op(take_log(t), "measure") ==
        std::vector<std::string>{"0 measure THREADS=256 20", "0 measure THREADS=512 20"});
  {
    const auto trials = stage1(db);
    REQUIRE(trials.at("THREADS=128").size() == 1);
    CHECK(trials.at("THREADS=128")[0].outcome == nsajit::Outcome::launch_error);
    CHECK_CONTAINS(trials.at("THREADS=128")[0].detail, "GPU 0: preparing inputs failed: CUDA_ERROR_OUT_OF_MEMORY");
  }
  r = tune_pool(good, db, 5);
  CHECK(with_op(take_log(t), "measure") == std::vector<std::string>{"0 measure THREADS=128 20"});
  CHECK(r.measured == 1);
  CHECK(r.reused == 2);
  CHECK(r.failed == 1);  // 256's launch error stands
  CHECK(r.best_config == "THREADS=512");
  const auto trials = stage1(db);
  REQUIRE(trials.at("THREADS=128").size() == 2);
  CHECK(trials.at("THREADS=128")[1].outcome == nsajit::Outcome::ok);
  // The third run reuses everything.
  r = tune_pool(good, db, 5);
  CHECK(r.measured == 0);
  CHECK(with_op(take_log(t), "measure").empty());
}

TEST_CASE("tune (stand-in GPU): N shards, merged with db export / import, find what one whole sweep finds") {
  // A synthetic cost per config (the stand-in's fixed times), rotated so that the best lands in each shard in
  // turn; pool's space is THREADS = 128, 256 (the default), 512, on two problems (two best entries).
  const std::vector<std::map<std::string, std::string>> costs = {
      {{"THREADS=128", "ok 1.5"}, {"THREADS=256", "ok 2.0"}, {"THREADS=512", "ok 1.0"}},
      {{"THREADS=128", "ok 0.5"}, {"THREADS=256", "ok 2.0"}, {"THREADS=512", "ok 1.0"}},
      {{"THREADS=128", "ok 1.5"}, {"THREADS=256", "ok 0.7"}, {"THREADS=512", "ok 1.0"}},
  };
  auto sweep = [](const std::string& worker, const fs::path& db, int index, int count) {
    nsajit::TuneOptions o;
    for (int64_t T : {1024, 4096}) {
      nsajit::Problem p = nsajit::preset("fla");
      p.T = T;
      o.problems.push_back(p);
    }
    o.families = {"pool"};
    o.search = exhaustive();
    o.db_path = db;
    o.worker_exe = worker;
    o.timeout_s = 5;
    o.interleave_rounds = 2;
    o.live_progress = false;
    o.shard_index = index, o.shard_count = count;
    return nsajit::run_tune(o);
  };
  auto best_of = [](const fs::path& db) {
    std::map<std::string, std::string> out;  // problem -> config
    for (const nsajit::BestEntry& e : nsajit::TuningDb::open(db, nsajit::TuningDb::Mode::read_only).all_best())
      out[e.family + " " + e.problem] = e.config;
    return out;
  };
  for (size_t k = 0; k < costs.size(); ++k) {
    CAPTURE(k);
    TempDir t;
    const std::string w = fake_worker(t, "w", {costs[k], 0});
    sweep(w, t.path() / "whole.db", 0, 1);
    const auto whole = best_of(t.path() / "whole.db");
    REQUIRE(whole.size() == 2);
    take_log(t);
    for (int n : {2, 3}) {
      CAPTURE(n);
      const fs::path merged = t.path() / ("merged" + std::to_string(n) + ".db");
      size_t measured = 0;
      for (int i = 0; i < n; ++i) {
        const fs::path db = t.path() / ("shard" + std::to_string(n) + "_" + std::to_string(i) + ".db");
        const nsajit::TuneReport r = sweep(w, db, i, n);
        for (const auto& res : r.results) measured += res.measured;
        // Shard i measured its points (index i mod n) and the default, nothing else.
        for (const std::string& line : with_op(take_log(t), "measure")) {
          const bool default_cfg = line.find("THREADS=256") != std::string::npos;
          const bool mine = (i == 0 % n && line.find("THREADS=128") != std::string::npos) ||
                            (i == 1 % n && line.find("THREADS=256") != std::string::npos) ||
                            (i == 2 % n && line.find("THREADS=512") != std::string::npos);
          CHECK_MESSAGE((default_cfg || mine), line);
        }
        const std::string json =
            nsajit::export_json(nsajit::TuningDb::open(db, nsajit::TuningDb::Mode::read_only).all_best());
        nsajit::TuningDb::open(merged, nsajit::TuningDb::Mode::read_write).merge_best(nsajit::parse_export(json));
      }
      // Every point measured somewhere (the default in every shard).
      CHECK(measured == 2 * (3 + static_cast<size_t>(n) - 1));
      CHECK(best_of(merged) == whole);
    }
  }
}

TEST_CASE("tune: --shard takes I/N with 0 <= I < N") {
  CHECK(nsajit::parse_shard("0/1") == std::pair{0, 1});
  CHECK(nsajit::parse_shard("3/4") == std::pair{3, 4});
  for (const char* bad : {"4/4", "-1/2", "1", "a/b", "1/0", "/2", "1/", "1/2/3"}) {
    CAPTURE(bad);
    CHECK_THROWS_AS(nsajit::parse_shard(bad), nsajit::UsageError);
  }
}

TEST_CASE("tune (stand-in GPU): two devices share the trials, each measured once") {
  TempDir t;
  const fs::path db = t.path() / "tune.db";
  const std::string good =
      fake_worker(t, "good", {{{"THREADS=128", "ok 1.5"}, {"THREADS=256", "ok 2.0"}, {"THREADS=512", "ok 1.0"}}, 0});
  const nsajit::FamilyTuneResult r = tune_pool(good, db, 5, {0, 1});
  CHECK(r.measured == 3);
  CHECK(r.failed == 0);
  CHECK(r.best_config == "THREADS=512");
  CHECK(r.default_ms == doctest::Approx(2.0));
  const std::vector<std::string> log = take_log(t);
  CHECK(with_op(log, "hello").size() == 2);
  std::vector<std::string> measured = with_op(log, "measure");
  CAPTURE(measured.size());
  size_t on0 = 0, on1 = 0;
  std::vector<std::string> configs;
  for (const std::string& l : measured) {
    (l[0] == '0' ? on0 : on1) += 1;
    configs.push_back(l.substr(l.find("THREADS"), l.rfind(' ') - l.find("THREADS")));
  }
  std::sort(configs.begin(), configs.end());
  CHECK(configs == std::vector<std::string>{"THREADS=128", "THREADS=256", "THREADS=512"});
  CHECK(on0 >= 1);
  CHECK(on1 >= 1);
  CHECK(with_op(log, "interleave") == std::vector<std::string>{"0 interleave"});  // re-timed on one GPU
  const auto trials = stage1(db);
  REQUIRE(trials.size() == 3);
  for (const auto& [cfg, list] : trials) {
    CAPTURE(cfg);
    CHECK(list.size() == 1);
  }
}

TEST_CASE("tune (stand-in GPU): with several GPUs and tasks, each GPU takes whole tasks; the results are one GPU's") {
  // Four tasks (pool on four lengths), two GPUs: every measurement and the re-timing of a task happen on one GPU,
  // both GPUs work, and the best entries equal those of the same sweep on one GPU.
  auto sweep = [](const std::string& worker, const fs::path& db, std::vector<int> devices) {
    nsajit::TuneOptions o;
    for (int64_t T : {1024, 2048, 4096, 8192}) {
      nsajit::Problem p = nsajit::preset("fla");
      p.T = T;
      o.problems.push_back(p);
    }
    o.families = {"pool"};
    o.search = exhaustive();
    o.devices = std::move(devices);
    o.db_path = db;
    o.worker_exe = worker;
    o.timeout_s = 5;
    o.interleave_rounds = 2;
    o.live_progress = false;
    return nsajit::run_tune(o);
  };
  auto best_of = [](const fs::path& db) {
    std::map<std::string, std::string> out;  // problem -> config
    for (const nsajit::BestEntry& e : nsajit::TuningDb::open(db, nsajit::TuningDb::Mode::read_only).all_best())
      out[e.family + " " + e.problem] = e.config;
    return out;
  };
  TempDir t;
  FakeGpu g{{{"THREADS=128", "ok 1.5"}, {"THREADS=256", "ok 2.0"}, {"THREADS=512", "ok 1.0"}}, 0, 0.2};
  const std::string w = fake_worker(t, "w", g);
  const nsajit::TuneReport one = sweep(w, t.path() / "one.db", {0});
  take_log(t);
  const nsajit::TuneReport two = sweep(w, t.path() / "two.db", {0, 1});
  const std::vector<std::string> log = take_log(t);
  REQUIRE(two.results.size() == 4);
  for (size_t i = 0; i < 4; ++i) {
    CAPTURE(i);
    CHECK(two.results[i].problem == one.results[i].problem);  // in the order of the tasks
    CHECK(two.results[i].best_config == "THREADS=512");
    CHECK(two.results[i].measured == 3);
  }
  std::map<std::string, std::set<char>> devices_of;  // T=... -> the GPUs that measured it
  for (const std::string& l : with_op(log, "problem")) devices_of[l.substr(l.find("T="))].insert(l[0]);
  REQUIRE(devices_of.size() == 4);
  std::set<char> used;
  for (const auto& [task, devs] : devices_of) {
    CAPTURE(task);
    CHECK(devs.size() == 1);
    used.insert(devs.begin(), devs.end());
  }
  CHECK(used == std::set<char>{'0', '1'});
  CHECK(with_op(log, "interleave").size() == 4);
  CHECK(best_of(t.path() / "two.db") == best_of(t.path() / "one.db"));
}

TEST_CASE("tune (stand-in GPU): halving reuses a brief result recorded under a later prepare failure") {
  TempDir t;
  const fs::path db = t.path() / "tune.db";
  nsajit::SearchOptions halving;
  halving.strategy = nsajit::Strategy::halving;
  halving.eta = 2;
  halving.finalists = 1;
  // Round 0 (brief, level 0) measures all three; round 1 (level 1) the best two, best first: 512, which kills its
  // worker, then 128, whose new worker fails to prepare once.
  const std::string bad = fake_worker(
      t, "bad", {{{"THREADS=128", "ok 1.5"}, {"THREADS=256", "ok 2.0"}, {"THREADS=512", "ok 1.0|fatal"}}, 2});
  const std::string good =
      fake_worker(t, "good", {{{"THREADS=128", "ok 1.5"}, {"THREADS=256", "ok 2.0"}, {"THREADS=512", "ok 1.0"}}, 0});
  tune_pool(bad, db, 5, {0}, halving);
  CHECK(with_op(take_log(t), "measure") ==
        std::vector<std::string>{"0 measure THREADS=256 5", "0 measure THREADS=128 5", "0 measure THREADS=512 5",
                                 "0 measure THREADS=512 20"});
  // The rerun reuses round 0 whole (128's brief result lies under its level-1 prepare failure; 512's level-1
  // launch error is its result at level 0 too) and measures at level 1 the two configs still in the race.
  const nsajit::FamilyTuneResult r = tune_pool(good, db, 5, {0}, halving);
  CHECK(with_op(take_log(t), "measure") ==
        std::vector<std::string>{"0 measure THREADS=128 20", "0 measure THREADS=256 20"});
  CHECK(r.best_config == "THREADS=128");
}

TEST_CASE("tune (stand-in GPU): the input kind is recorded, and a rerun on the other kind measures again") {
  TempDir t;
  const fs::path db = t.path() / "tune.db";
  const std::string w =
      fake_worker(t, "w", {{{"THREADS=128", "ok 1.5"}, {"THREADS=256", "ok 2.0"}, {"THREADS=512", "ok 1.0"}}, 0});
  nsajit::FamilyTuneResult r = tune_pool(w, db, 5, {0}, exhaustive(), nsajit::InputKind::random);
  CHECK(r.inputs == "random");
  CHECK(r.overlap.empty());  // pool is not data-dependent
  CHECK(r.measured == 3);
  CHECK(r.best_config == "THREADS=512");
  CHECK(r.default_ms == 2.0);
  {
    const nsajit::TuningDb d = nsajit::TuningDb::open(db, nsajit::TuningDb::Mode::read_only);
    for (const nsajit::Trial& tr : d.trials("pool")) CHECK(tr.inputs == "random");
    const auto best = d.all_best();
    REQUIRE(best.size() == 1);
    CHECK(best[0].inputs == "random");
    CHECK(best[0].overlap.empty());
  }
  // Coherent queries: nothing of the random run stands for them.
  r = tune_pool(w, db, 5, {0}, exhaustive(), nsajit::InputKind::coherent);
  CHECK(r.inputs == "coherent");
  CHECK(r.reused == 0);
  CHECK(r.measured == 3);
  // Again on coherent queries: everything reused.
  r = tune_pool(w, db, 5, {0}, exhaustive(), nsajit::InputKind::coherent);
  CHECK(r.reused == 3);
  CHECK(r.measured == 0);
  const nsajit::TuningDb d = nsajit::TuningDb::open(db, nsajit::TuningDb::Mode::read_only);
  const auto best = d.all_best();
  REQUIRE(best.size() == 1);  // one key for a family that is not data-dependent: the last run's
  CHECK(best[0].inputs == "coherent");
}
