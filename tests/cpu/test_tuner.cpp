// The tuner's pieces that need no GPU: the measuring process's plumbing (replies, timeouts, crashes, restarts)
// driven with stand-in worker scripts, which trials a rerun reuses, the real worker without a GPU, the test-only
// family's registration, and `nsajit tune`'s argument checks.
#include <doctest/doctest.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "codegen/family.h"
#include "tuner/db.h"
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
  const nsajit::TileConfig c{{"BM", 64}, {"BN", 32}, {"QREGS", 1}};  // 128 threads
  nsajit::ResourceUsage u;
  u.registers = 128, u.parsed = true;
  CHECK_FALSE(nsajit::prune_after_compile(f, p, c, u, nsajit::kHopperMaxSmemOptin));
  nsajit::ResourceUsage spill = u;
  spill.spill_store_bytes = 8, spill.spill_load_bytes = 12;
  const auto s = nsajit::prune_after_compile(f, p, c, spill, nsajit::kHopperMaxSmemOptin);
  REQUIRE(s);
  CHECK_CONTAINS(*s, "spills 12 B");
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
