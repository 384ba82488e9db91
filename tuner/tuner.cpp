#include "tuner/tuner.h"

#include <fmt/format.h>
#include <llvm/Support/ThreadPool.h>
#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <charconv>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <set>
#include <thread>
#include <memory>
#include <mutex>
#include <tuple>

#include "base/error.h"
#include "cache/cubin_cache.h"
#include "codegen/codegen.h"
#include "codegen/family.h"
#include "db/db.h"
#include "db/keys.h"
#include "runtime/jit.h"
#include "tuner/cases.h"
#include "tuner/worker.h"

namespace nsajit {
namespace json = llvm::json;
namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// Repetitions per precision level: brief, full.
struct LevelPlan {
  int reps;
  double warmup_ms;
};
constexpr LevelPlan kLevels[2] = {{5, 15.0}, {20, 50.0}};

// Compiles run on a thread pool from the start of the sweep; a family's search waits only for its own.
class CompileQueue {
public:
  explicit CompileQueue(const CubinCache& cache) : cache_(cache), pool_(llvm::hardware_concurrency()) {}
  size_t add(const KernelSpec& spec) {
    const size_t id = results_.size();
    results_.emplace_back();
    pool_.async([this, spec, id] {
      JitOutcome out;
      try {
        out.result = jit_compile(spec, cache_);
      } catch (const std::exception& e) {
        out.error = e.what();
      }
      std::lock_guard<std::mutex> lock(mutex_);
      results_[id] = std::move(out);
      ++done_;
      cv_.notify_all();
    });
    return id;
  }
  const JitOutcome& wait(size_t id) {
    std::unique_lock<std::mutex> lock(mutex_);
    cv_.wait(lock, [&] { return results_[id].has_value(); });
    return *results_[id];
  }
  size_t done() {
    std::lock_guard<std::mutex> lock(mutex_);
    return done_;
  }
  ~CompileQueue() { pool_.wait(); }

private:
  const CubinCache& cache_;
  std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<std::optional<JitOutcome>> results_;  // deque: stable under emplace_back from this thread
  size_t done_ = 0;
  llvm::DefaultThreadPool pool_;
};

struct Candidate {
  KernelSpec spec;
  std::string config;  // describe(spec.config)
  std::string hash;
  size_t compile_id = 0;
  const JitResult* jit = nullptr;  // after compile
};

struct Task {
  const KernelFamily* family;
  Problem problem;
  ProblemKey key;
  std::vector<SpacePoint> rejected;
  std::vector<Candidate> cands;
};

// Failures of the measuring process, not of the kernel: recorded, never reused (reusable_trial()).
constexpr std::string_view kPrepareFailed = ": preparing inputs failed: ";
constexpr std::string_view kCouldNotSend = "could not send to the worker";

std::string compact(const std::string& s, size_t max = 160) {
  std::string one = s;
  std::replace(one.begin(), one.end(), '\n', ' ');
  return one.size() > max ? one.substr(0, max) + "..." : one;
}

class Tuner {
public:
  explicit Tuner(const TuneOptions& o) : o_(o), db_(TuningDb::open(o.db_path)) {}

  TuneReport run() {
    const auto t0 = Clock::now();
    start_workers();
    TuneReport report;
    report.stale_trials = db_.count_stale_trials(tk_);
    if (report.stale_trials)
      fmt::print("note: {} trials in {} were measured with another driver or NVRTC on this GPU model: stale, not "
                 "reused (`nsajit db prune --stale` removes them)\n",
                 report.stale_trials, o_.db_path.string());
    std::vector<Task> tasks = plan();
    const CubinCache cache(CubinCache::default_dir());
    // The order the tasks are measured in: as planned, or with several GPUs taking tasks of their own, the
    // longest first (so that no GPU is left with a long task at the end). Compiles are queued in that order.
    const bool parallel = workers_.size() > 1 && tasks.size() > 1;
    std::vector<size_t> order(tasks.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    if (parallel)
      std::stable_sort(order.begin(), order.end(),
                       [&](size_t a, size_t b) { return task_cost(tasks[a]) > task_cost(tasks[b]); });
    CompileQueue compiles(cache);
    size_t total_compiles = 0;
    for (size_t i : order)
      for (Candidate& c : tasks[i].cands) c.compile_id = compiles.add(c.spec), ++total_compiles;
    fmt::print("{} kernel variants compiling on {} threads (cache {})\n", total_compiles, llvm::hardware_concurrency().compute_thread_count(),
               cache.dir().string());
    const double budget_s = o_.search.budget.minutes ? *o_.search.budget.minutes * 60.0 : 0.0;
    report.results.resize(tasks.size());
    if (parallel) {
      // Several GPUs and several tasks: each GPU takes whole tasks (its own inputs, search and interleaved
      // re-timing), so no GPU waits at a task's barriers (inputs, halving rounds, the re-timing on one GPU) for
      // another. One task at a time per GPU; the database and the output are shared.
      parallel_ = true;
      fmt::print("{} tasks on {} GPUs, one task per GPU at a time, the largest first\n", tasks.size(),
                 workers_.size());
      std::atomic<size_t> next{0};
      std::vector<std::thread> threads;
      for (size_t wi = 0; wi < workers_.size(); ++wi)
        threads.emplace_back([&, wi] {
          tl_worker = static_cast<int>(workers_[wi]->device());
          for (size_t j; (j = next++) < order.size();) {
            const size_t i = order[j];
            std::optional<double> share;
            if (o_.search.budget.minutes)
              share = std::max(0.0, budget_s - since(t0)) * static_cast<double>(workers_.size()) /
                      static_cast<double>(order.size() - j);
            report.results[i] = tune_task(tasks[i], compiles, i, tasks.size(), share, {wi});
          }
        });
      for (std::thread& th : threads) th.join();
      parallel_ = false;
    } else {
      std::vector<size_t> all(workers_.size());
      for (size_t wi = 0; wi < all.size(); ++wi) all[wi] = wi;
      for (size_t i = 0; i < tasks.size(); ++i) {
        std::optional<double> share;
        if (o_.search.budget.minutes)
          share = std::max(0.0, budget_s - since(t0)) / static_cast<double>(tasks.size() - i);
        report.results[i] = tune_task(tasks[i], compiles, i, tasks.size(), share, all);
      }
    }
    for (auto& w : workers_) w->stop();
    report.seconds = since(t0);
    return report;
  }

private:
  // ---- workers ----
  void start_workers() {
    for (int d : o_.devices) workers_.push_back(std::make_unique<WorkerProcess>(o_.worker_exe, d));
    // Per-worker state, made here so that threads of their own workers never insert into a shared map.
    prepared_.resize(workers_.size());
    prepare_failure_.resize(workers_.size());
    for (auto& w : workers_) {
      WorkerProcess::Reply r = w->call(json::Object{{"op", "hello"}}, 120);
      if (!r.object || r.object->getString("outcome"))
        throw Error(fmt::format("the measuring process for GPU {} did not start: {}", w->device(),
                                r.object ? r.object->getString("detail").value_or("").str() : r.failure));
      Toolkit tk{r.object->getString("device").value_or("").str(),
                 static_cast<int>(r.object->getInteger("driver").value_or(0)),
                 r.object->getString("nvrtc").value_or("").str()};
      if (w.get() == workers_.front().get()) {
        tk_ = tk;
        arch_ = r.object->getString("arch").value_or("sm_90a").str();
        max_smem_ = static_cast<int>(r.object->getInteger("max_smem").value_or(kHopperMaxSmemOptin));
        fmt::print("GPU {}: {} (driver {}, NVRTC {})\n", w->device(), r.object->getString("name").value_or("").str(),
                   tk.driver_version, tk.nvrtc_version);
      } else if (!(tk == tk_)) {
        throw UsageError(fmt::format("GPU {} ({}) differs from GPU {} ({}): tune one GPU model per run", w->device(),
                                     tk.device, workers_.front()->device(), tk_.device));
      }
    }
  }

  // ---- planning ----
  std::vector<Task> plan() {
    std::vector<const KernelFamily*> fams;
    if (o_.families.empty()) {
      for (const KernelFamily* f : families())
        if (is_tunable(*f) && f->name() != "fault_test" && f->name() != "decode" && !is_backward_family(*f))
          fams.push_back(f);
    } else {
      for (const std::string& n : o_.families) {
        if (n == "fwd" || n == "bwd") {  // shorthands: every forward or every backward family
          for (const KernelFamily* f : families())
            if (is_tunable(*f) && f->name() != "fault_test" && f->name() != "decode" &&
                is_backward_family(*f) == (n == "bwd"))
              fams.push_back(f);
          continue;
        }
        const KernelFamily& f = find_family(n);
        if (!is_tunable(f))
          throw UsageError(fmt::format("family {} is not tunable: tunable are pool, cmp_fwd, select, slc_fwd, win_fwd "
                                       "(fwd), cmp_bwd_dq, cmp_bwd_dkv, slc_bwd_dq, slc_bwd_dkv, win_bwd_dq, "
                                       "win_bwd_dkv (bwd), decode (with --batch: the batch and the cache's "
                                       "capacity --seq key its configs)",
                                       n));
        fams.push_back(&f);
      }
    }
    std::vector<Task> tasks;
    for (const Problem& p : o_.problems)
      for (const KernelFamily* f : fams) {
        f->check_problem(p);
        Task t{f, p, problem_key(p), {}, {}};
        const std::vector<TileConfig> defs = default_configs(*f, p);
        size_t index = 0;
        for (SpacePoint& pt : enumerate_space(*f, p, max_smem_, arch_)) {
          const bool mine = o_.shard_count <= 1 ||
                            static_cast<int>(index++ % static_cast<size_t>(o_.shard_count)) == o_.shard_index ||
                            std::find(defs.begin(), defs.end(), pt.config) != defs.end();
          if (!mine) continue;
          if (pt.rejected) {
            t.rejected.push_back(pt);
            continue;
          }
          Candidate c;
          c.spec = KernelSpec{f, p, pt.config, arch_};
          c.config = describe(pt.config);
          c.hash = source_hash(c.spec);
          t.cands.push_back(std::move(c));
        }
        tasks.push_back(std::move(t));
      }
    return tasks;
  }

  Trial trial_for(const Task& t, const Candidate& c, int stage) const {
    Trial tr;
    tr.toolkit = tk_;
    tr.family = std::string(t.family->name());
    tr.shape = t.key.shape, tr.t_bucket = t.key.t_bucket;
    tr.problem = t.problem.describe();
    tr.config = c.config;
    tr.source_hash = c.hash;
    tr.stage = stage;
    tr.inputs = inputs_name();
    if (c.jit) {
      tr.registers = c.jit->usage.registers;
      tr.spill_bytes = c.jit->usage.spill_store_bytes;
      tr.smem_bytes = c.spec.family->geometry(t.problem, c.spec.config).smem_bytes + c.jit->usage.static_smem_bytes;
      tr.compile_seconds = c.jit->compile_seconds;
    }
    return tr;
  }

  // The trial an earlier run (or this one) recorded for `c` that stands for a measurement at `level`, if any.
  std::optional<Trial> recorded(const Task& t, const Candidate& c, int level) const {
    std::lock_guard<std::recursive_mutex> lock(db_mutex_);
    std::optional<Trial> latest =
        db_.find_trial(tk_, t.family->name(), t.problem.describe(), c.config, c.hash, inputs_name(), level);
    if (!latest || reusable_trial(*latest, o_.timeout_s)) return latest;
    // The latest is a failure of the measuring process: an older genuine result may lie under it.
    std::vector<Trial> same;
    for (Trial& tr : db_.trials(t.family->name(), tk_.device))
      if (tr.toolkit == tk_ && tr.problem == latest->problem && tr.config == c.config && tr.source_hash == c.hash &&
          tr.inputs == inputs_name())
        same.push_back(std::move(tr));
    return pick_reusable(same, level, o_.timeout_s);
  }

  // Records a non-measured outcome once (a rerun finds it and does not add another).
  void record_once(const Task& t, const Candidate& c, Outcome outcome, const std::string& detail) {
    std::lock_guard<std::recursive_mutex> lock(db_mutex_);
    if (db_.find_trial(tk_, t.family->name(), t.problem.describe(), c.config, c.hash, inputs_name(), 0)) return;
    Trial tr = trial_for(t, c, 0);
    tr.outcome = outcome, tr.detail = detail;
    db_.add_trial(tr);
  }

  // ---- one family on one problem ----
  // Tunes one task on the workers `ws` (indices into workers_): all of them when tasks run one after another, one
  // when each GPU takes tasks of its own.
  FamilyTuneResult tune_task(Task& t, CompileQueue& compiles, size_t index, size_t count, std::optional<double> share_s,
                             const std::vector<size_t>& ws) {
    FamilyTuneResult res;
    res.family = std::string(t.family->name());
    res.problem = t.problem.describe();
    res.space = t.rejected.size() + t.cands.size();
    res.inputs = inputs_name();
    TileConfig def_cfg = t.family->default_config(t.problem);
    res.default_config = describe(def_cfg);
    say("\n[{}/{}] {} on {}, {} inputs\n", index + 1, count, t.family->name(), t.problem.describe(),
               inputs_name());
    for (const SpacePoint& pt : t.rejected) {
      Candidate c;
      c.spec = KernelSpec{t.family, t.problem, pt.config, arch_};
      c.config = describe(pt.config);
      c.hash = source_hash(c.spec);
      record_once(t, c, Outcome::pruned, *pt.rejected);
      ++res.pruned;
    }
    // Wait for this family's compiles; prune on what the compiler reports.
    const auto wait_start = Clock::now();
    std::vector<size_t> alive;  // indices into t.cands
    for (size_t i = 0; i < t.cands.size(); ++i) {
      Candidate& c = t.cands[i];
      const JitOutcome& out = compiles.wait(c.compile_id);
      if (!out.result) {
        record_once(t, c, Outcome::compile_error, compact(out.error, 2000));
        ++res.compile_errors;
        continue;
      }
      c.jit = &*out.result;
      const std::optional<std::string> why =
          prune_after_compile(*t.family, t.problem, c.spec.config, c.jit->usage, max_smem_);
      if (why) {
        record_once(t, c, Outcome::pruned, *why);
        ++res.pruned;
        continue;
      }
      alive.push_back(i);
    }
    say("  {} points: {} pruned, {} compile errors, {} to measure (waited {:.1f} s for compiles)\n", res.space,
               res.pruned, res.compile_errors, alive.size(), since(wait_start));
    if (alive.empty()) {
      res.note = "nothing left to measure";
      return res;
    }
    // Every worker builds the inputs and the trusted result once.
    for (size_t wi : ws)
      if (!prepare(wi, t)) {
        res.note = prepare_failure_[wi];
        say("  cannot measure: {}\n", res.note);
        return res;
      }
    // A data-dependent family: the bucket of the tuning selection decides where the result goes and which default
    // is the baseline.
    if (t.family->overlap_dependent()) {
      std::optional<std::pair<OverlapBucket, double>> found;
      {
        std::lock_guard<std::mutex> lock(overlap_mutex_);
        if (const auto it = overlap_of_.find(prepare_key(t)); it != overlap_of_.end()) found = it->second;
      }
      if (!found) {
        res.note = "the measuring process did not report the selection's overlap";
        say("  cannot measure: {}\n", res.note);
        return res;
      }
      const OverlapBucket bucket = found->first;
      res.overlap = std::string(overlap_bucket_name(bucket));
      res.high_overlap_share = found->second;
      def_cfg = t.family->bucket_default_config(t.problem, bucket);
      res.default_config = describe(def_cfg);
      say("  selection: {:.0f}% of the (span, KV head) entries high-overlap: tuning the {}-overlap bucket "
                 "(default [{}])\n",
                 100 * res.high_overlap_share, res.overlap, res.default_config);
    }

    std::optional<size_t> def_idx;
    for (size_t k = 0; k < alive.size(); ++k)
      if (t.cands[alive[k]].spec.config == def_cfg) def_idx = k;

    // Progress.
    const auto search_start = Clock::now();
    size_t done = 0;
    const size_t n = alive.size();
    size_t estimate = n;
    if (o_.search.strategy == Strategy::random && o_.search.budget.trials)
      estimate = std::min<size_t>(n, static_cast<size_t>(*o_.search.budget.trials));
    if (o_.search.strategy == Strategy::halving) {
      estimate = n;
      for (size_t k = n; k > static_cast<size_t>(o_.search.finalists);) {
        k = std::max<size_t>((k + o_.search.eta - 1) / o_.search.eta, o_.search.finalists);
        estimate += k;
        if (k <= static_cast<size_t>(o_.search.finalists)) break;
      }
    }
    if (o_.search.budget.trials) estimate = std::min<size_t>(estimate, static_cast<size_t>(*o_.search.budget.trials));
    double best_ms = 0;
    std::string best_cfg;
    size_t last_line_quarter = 0;
    auto progress = [&] {
      const double s = since(search_start);
      const double rate = s > 0 ? static_cast<double>(done) / s : 0;
      const size_t total = std::max(estimate, done);
      const double eta = rate > 0 ? static_cast<double>(total - done) / rate : 0;
      const std::string line = fmt::format("  {}/{} trials  {:.1f}/s  ETA {:.0f} s  best {}", done, total, rate, eta,
                                           best_cfg.empty() ? "-" : fmt::format("{:.4f} ms [{}]", best_ms, best_cfg));
      if (live()) {
        fmt::print(stderr, "\r{:<110}", line);
      } else if (done * 4 / std::max<size_t>(total, 1) > last_line_quarter || done == total) {
        last_line_quarter = done * 4 / std::max<size_t>(total, 1);
        if (parallel_)
          say_err("  {}: {}\n", t.family->name(), line.substr(2));
        else
          say_err("{}\n", line);
      }
    };

    std::set<std::string> noted;  // configs whose gate note was printed
    MeasureBatch measure = [&](const std::vector<size_t>& idx, int level) {
      std::vector<Measured> out(idx.size());
      std::vector<size_t> todo;
      for (size_t k = 0; k < idx.size(); ++k) {
        const Candidate& c = t.cands[alive[idx[k]]];
        if (auto prev = recorded(t, c, level)) {
          out[k] = {prev->outcome == Outcome::ok, prev->median_ms};
          ++res.reused, ++done;
          if (prev->outcome == Outcome::ok && (best_cfg.empty() || prev->median_ms < best_ms))
            best_ms = prev->median_ms, best_cfg = c.config;
          if (prev->outcome != Outcome::ok) ++res.failed;
          progress();
          continue;
        }
        todo.push_back(k);
      }
      dispatch(t, ws, todo, [&](size_t k) -> const Candidate& { return t.cands[alive[idx[k]]]; }, level,
               [&](size_t k, const Trial& tr) {
                 out[k] = {tr.outcome == Outcome::ok, tr.median_ms};
                 ++res.measured, ++done;
                 if (tr.outcome != Outcome::ok) {
                   ++res.failed;
                   if (live()) fmt::print(stderr, "\r{:<110}\r", "");
                   say("  [{}] {}: {}\n", tr.config, outcome_name(tr.outcome), compact(tr.detail));
                 } else {
                   if (!tr.detail.empty()) {  // passed the gate short of equality: say so once
                     if (live()) fmt::print(stderr, "\r{:<110}\r", "");
                     if (noted.insert(tr.config).second) say("  [{}] ok: {}\n", tr.config, tr.detail);
                   }
                   if (best_cfg.empty() || tr.median_ms < best_ms) best_ms = tr.median_ms, best_cfg = tr.config;
                 }
                 progress();
               });
      return out;
    };

    SearchOptions so = o_.search;
    if (share_s) {
      so.budget.minutes = *share_s / 60.0;
      so.elapsed_seconds = [search_start] { return since(search_start); };
    }
    const SearchResult sr = run_search(alive.size(), measure, so, def_idx);
    if (live()) fmt::print(stderr, "\n");
    if (sr.budget_exhausted) say("  stopped by the budget after {} trials\n", sr.trials);
    if (sr.finalists.empty()) {
      res.note = "no variant measured correctly";
      return res;
    }
    // Finalists and the default, re-timed interleaved.
    std::vector<size_t> finals = sr.finalists;
    if (def_idx && std::find(finals.begin(), finals.end(), *def_idx) == finals.end()) {
      const Candidate& dc = t.cands[alive[*def_idx]];
      auto prev = recorded(t, dc, 0);
      if (prev && prev->outcome == Outcome::ok) finals.push_back(*def_idx);
    }
    json::Array cfgs;
    for (size_t k : finals) cfgs.push_back(t.cands[alive[k]].config);
    // Re-timed together on one GPU, so that the finalists are compared under the same conditions.
    const size_t w0 = ws.front();
    WorkerProcess& w = *workers_[w0];
    if (!prepare(w0, t)) {
      res.note = prepare_failure_[w0];
      return res;
    }
    const double timeout = o_.timeout_s * static_cast<double>(finals.size()) * 2;
    WorkerProcess::Reply r = w.call(json::Object{{"op", "interleave"},
                                                 {"family", std::string(t.family->name())},
                                                 {"problem", t.problem.describe()},
                                                 {"inputs", inputs_name()},
                                                 {"configs", std::move(cfgs)},
                                                 {"rounds", o_.interleave_rounds}},
                                    timeout);
    const json::Array* results = r.object ? r.object->getArray("results") : nullptr;
    if (results == nullptr || results->size() != finals.size()) {
      const std::string why =
          r.object ? r.object->getString("detail").value_or("malformed reply").str() : r.failure;
      res.note = "interleaved re-timing failed: " + compact(why);
      say("  {}\n", res.note);
      return res;
    }
    size_t win = 0;
    std::vector<double> med(finals.size());
    for (size_t k = 0; k < finals.size(); ++k) {
      const json::Object* s = (*results)[k].getAsObject();
      Trial tr = trial_for(t, t.cands[alive[finals[k]]], 2);
      tr.median_ms = med[k] = s->getNumber("median").value_or(0);
      tr.p20_ms = s->getNumber("p20").value_or(0), tr.p80_ms = s->getNumber("p80").value_or(0);
      tr.reps = static_cast<int>(s->getInteger("reps").value_or(0));
      tr.detail = s->getString("detail").value_or("").str();
      add_trial(tr);
      if (med[k] < med[win]) win = k;
      if (def_idx && finals[k] == *def_idx) res.default_ms = med[k];
    }
    const Candidate& best = t.cands[alive[finals[win]]];
    res.best_config = best.config;
    res.best_ms = med[win];
    BestEntry e;
    e.toolkit = tk_;
    e.family = res.family;
    e.shape = t.key.shape, e.t_bucket = t.key.t_bucket;
    e.problem = res.problem;
    e.config = best.config;
    e.source_hash = best.hash;
    e.median_ms = res.best_ms;
    e.default_ms = res.default_ms;
    e.inputs = res.inputs;
    e.overlap = res.overlap;
    {
      std::lock_guard<std::recursive_mutex> lock(db_mutex_);
      db_.set_best(e);
    }
    std::string line = fmt::format("  best [{}] {:.4f} ms", res.best_config, res.best_ms);
    if (res.default_ms > 0)
      line += fmt::format("; default [{}] {:.4f} ms: {:.2f}x on {} inputs", res.default_config, res.default_ms,
                          res.default_ms / res.best_ms, res.inputs);
    say("{}  ({} measured, {} found already recorded, {} failed)\n", line, res.measured, res.reused, res.failed);
    return res;
  }

  std::string inputs_name() const { return std::string(input_kind_name(o_.inputs)); }
  std::string prepare_key(const Task& t) const {
    return std::string(t.family->name()) + "|" + t.problem.describe() + "|" + inputs_name();
  }

  bool prepare(size_t wi, const Task& t) {
    WorkerProcess& w = *workers_[wi];
    std::string& failure = prepare_failure_[wi];
    const std::string key = prepare_key(t);
    auto& st = prepared_[wi];
    if (st.first == key && st.second == w.restarts() && w.reply_fd() >= 0) return true;
    WorkerProcess::Reply r = w.call(json::Object{{"op", "prepare"},
                                                 {"family", std::string(t.family->name())},
                                                 {"problem", t.problem.describe()},
                                                 {"inputs", inputs_name()}},
                                    600);
    if (!r.object || r.object->getString("outcome")) {
      failure = fmt::format("GPU {}{}{}", w.device(), kPrepareFailed,
                                     compact(r.object ? r.object->getString("detail").value_or("").str() : r.failure));
      st = {};
      return false;
    }
    if (auto bucket = r.object->getString("overlap")) {
      const std::optional<OverlapBucket> b = parse_overlap_bucket(*bucket);
      if (!b) {
        failure = fmt::format("GPU {}{}unknown overlap bucket '{}'", w.device(), kPrepareFailed, bucket->str());
        st = {};
        return false;
      }
      std::lock_guard<std::mutex> lock(overlap_mutex_);
      overlap_of_[key] = {*b, r.object->getNumber("high_share").value_or(-1)};
    }
    st = {key, w.restarts()};
    return true;
  }

  // Measures candidates on the workers (one request in flight per worker), recording every trial as it ends.
  template <class Get, class Done>
  void dispatch(const Task& t, const std::vector<size_t>& ws, const std::vector<size_t>& todo, Get get, int level,
                Done on_done) {
    size_t next = 0;
    struct InFlight {
      size_t k;
      Clock::time_point sent;
    };
    std::vector<std::optional<InFlight>> busy(workers_.size());  // by worker index; only those in ws are used
    auto finish = [&](size_t wi, Outcome outcome, const std::string& detail, const json::Object* ok) {
      const size_t k = busy[wi]->k;
      busy[wi].reset();
      Trial tr = trial_for(t, get(k), level);
      tr.outcome = outcome, tr.detail = detail;
      if (ok) {
        tr.median_ms = ok->getNumber("median").value_or(0);
        tr.p20_ms = ok->getNumber("p20").value_or(0), tr.p80_ms = ok->getNumber("p80").value_or(0);
        tr.reps = static_cast<int>(ok->getInteger("reps").value_or(0));
      }
      add_trial(tr);
      on_done(k, tr);
    };
    while (true) {
      for (size_t wi : ws) {
        if (next >= todo.size()) break;
        if (busy[wi]) continue;
        WorkerProcess& w = *workers_[wi];
        const size_t k = todo[next++];
        busy[wi] = InFlight{k, Clock::now()};
        if (!prepare(wi, t)) {
          finish(wi, Outcome::launch_error, prepare_failure_[wi], nullptr);
          continue;
        }
        const json::Object req{{"op", "measure"},
                               {"family", std::string(t.family->name())},
                               {"problem", t.problem.describe()},
                               {"inputs", inputs_name()},
                               {"config", get(k).config},
                               {"reps", kLevels[level].reps},
                               {"warmup_ms", kLevels[level].warmup_ms}};
        busy[wi]->sent = Clock::now();
        if (!w.send(req)) {
          w.stop();
          finish(wi, Outcome::launch_error, std::string(kCouldNotSend), nullptr);
        }
      }
      std::vector<pollfd> fds;
      std::vector<size_t> who;
      for (size_t wi : ws)
        if (busy[wi]) fds.push_back({workers_[wi]->reply_fd(), POLLIN, 0}), who.push_back(wi);
      if (fds.empty()) {
        if (next >= todo.size()) return;
        continue;
      }
      ::poll(fds.data(), fds.size(), 200);
      for (size_t j = 0; j < fds.size(); ++j) {
        const size_t wi = who[j];
        WorkerProcess& w = *workers_[wi];
        if (fds[j].revents != 0) {
          auto r = w.receive_available();
          if (!r) continue;
          if (!r->object) {
            finish(wi, Outcome::launch_error, r->failure, nullptr);
            continue;
          }
          const std::string outcome = r->object->getString("outcome").value_or("launch_error").str();
          const std::string detail = r->object->getString("detail").value_or("").str();
          if (outcome == "ok")
            finish(wi, Outcome::ok, detail, &*r->object);  // detail: the gate's note, e.g. near-tie swaps
          else
            finish(wi, parse_outcome(outcome).value_or(Outcome::launch_error), detail, nullptr);
        } else if (since(busy[wi]->sent) > o_.timeout_s) {
          WorkerProcess::Reply r;
          w.kill_for_timeout(o_.timeout_s, r);
          finish(wi, Outcome::timeout, r.failure, nullptr);
        }
      }
    }
  }

  const TuneOptions& o_;
  TuningDb db_;
  std::vector<std::unique_ptr<WorkerProcess>> workers_;
  Toolkit tk_;
  std::string arch_ = "sm_90a";
  int max_smem_ = kHopperMaxSmemOptin;
  std::vector<std::pair<std::string, int>> prepared_;  // by worker index: the prepared task's key, at which restart
  std::mutex overlap_mutex_;
  std::map<std::string, std::pair<OverlapBucket, double>> overlap_of_;  // by prepare_key: bucket, high share
  std::vector<std::string> prepare_failure_;  // by worker index: why its last prepare failed
  // Several GPUs working on tasks of their own (run()): the database and the output are shared under these locks,
  // and each line a task prints says which GPU it is from.
  bool parallel_ = false;
  mutable std::recursive_mutex db_mutex_;
  std::mutex print_mutex_;
  static thread_local int tl_worker;

  void add_trial(const Trial& tr) {
    std::lock_guard<std::recursive_mutex> lock(db_mutex_);
    db_.add_trial(tr);
  }
  // Live progress (one line redrawn on the terminal) only when one task runs at a time.
  bool live() const { return o_.live_progress && !parallel_; }
  std::string tagged(std::string s) const {
    if (!parallel_ || tl_worker < 0) return s;
    const std::string tag = fmt::format("[GPU {}] ", tl_worker);
    std::string out;
    size_t start = 0;
    while (start < s.size()) {
      size_t end = s.find('\n', start);
      end = end == std::string::npos ? s.size() : end + 1;
      if (end - start > 1) out += tag;  // not on empty lines
      out.append(s, start, end - start);
      start = end;
    }
    return out;
  }
  template <class... A>
  void say(fmt::format_string<A...> f, A&&... a) {
    const std::string s = tagged(fmt::format(f, std::forward<A>(a)...));
    std::lock_guard<std::mutex> lock(print_mutex_);
    fmt::print("{}", s);
    std::fflush(stdout);
  }
  template <class... A>
  void say_err(fmt::format_string<A...> f, A&&... a) {
    const std::string s = tagged(fmt::format(f, std::forward<A>(a)...));
    std::lock_guard<std::mutex> lock(print_mutex_);
    fmt::print(stderr, "{}", s);
  }
  // A task's expected measuring time, to hand out the long ones first: its candidates times its tokens.
  static double task_cost(const Task& t) {
    return static_cast<double>(t.cands.size()) * static_cast<double>(t.problem.B) * static_cast<double>(t.problem.T);
  }
};

thread_local int Tuner::tl_worker = -1;

}  // namespace

bool reusable_trial(const Trial& trial, double timeout_s) {
  const std::string& d = trial.detail;
  switch (trial.outcome) {
    case Outcome::timeout: {
      const std::optional<double> limit = timeout_of_failure(d);
      return limit && *limit >= timeout_s;
    }
    case Outcome::launch_error:
      return !(d.find(kPrepareFailed) != std::string::npos || d == kCouldNotSend ||
               d.starts_with(kWorkerStartFailure) || d.starts_with(std::string("worker ") + std::string(kCouldNotRun)));
    default:
      return true;
  }
}

std::optional<Trial> pick_reusable(const std::vector<Trial>& recorded, int level, double timeout_s) {
  const Trial* best = nullptr;
  for (const Trial& t : recorded) {
    if (t.stage < level || !reusable_trial(t, timeout_s)) continue;
    if (best == nullptr || std::tie(t.stage, t.created, t.id) > std::tie(best->stage, best->created, best->id))
      best = &t;
  }
  return best ? std::optional<Trial>(*best) : std::nullopt;
}

std::optional<std::string> prune_after_compile(const KernelFamily& family, const Problem& problem,
                                               const TileConfig& config, const ResourceUsage& u, int max_smem) {
  const LaunchGeometry g = family.geometry(problem, config);
  const int64_t threads = static_cast<int64_t>(g.block.x) * g.block.y * g.block.z;
  // A spilling variant is not worth measuring, except a default of the family: it is the baseline the speed-up is
  // reported against and the config the runtime uses without a database, so the winner must beat it as measured.
  const std::vector<TileConfig> defaults = default_configs(family, problem);
  if ((u.spill_store_bytes > 0 || u.spill_load_bytes > 0) &&
      std::find(defaults.begin(), defaults.end(), config) == defaults.end())
    return fmt::format("spills {} B to local memory ({} registers)", std::max(u.spill_store_bytes, u.spill_load_bytes),
                       u.registers);
  // 64 K registers per SM, allocated per warp in units of 256.
  const int64_t regs_per_warp = (static_cast<int64_t>(std::max(u.registers, 0)) * 32 + 255) / 256 * 256;
  if (regs_per_warp * ((threads + 31) / 32) > 65536)
    return fmt::format("no CTA fits an SM: {} registers x {} threads > 65536", u.registers, threads);
  if (g.smem_bytes + u.static_smem_bytes > max_smem)
    return fmt::format("shared memory {} B > device limit {} B", g.smem_bytes + u.static_smem_bytes, max_smem);
  return std::nullopt;
}

std::vector<TileConfig> default_configs(const KernelFamily& family, const Problem& problem) {
  std::vector<TileConfig> out = {family.default_config(problem)};
  if (family.overlap_dependent())
    for (OverlapBucket b : kAllOverlapBuckets) {
      TileConfig c = family.bucket_default_config(problem, b);
      if (std::find(out.begin(), out.end(), c) == out.end()) out.push_back(std::move(c));
    }
  return out;
}

std::pair<int, int> parse_shard(const std::string& s) {
  const size_t slash = s.find('/');
  auto number = [&](std::string_view v, int& out) {
    const auto [ptr, ec] = std::from_chars(v.data(), v.data() + v.size(), out);
    return ec == std::errc() && ptr == v.data() + v.size() && !v.empty();
  };
  int i = 0, n = 0;
  if (slash == std::string::npos || !number(std::string_view(s).substr(0, slash), i) ||
      !number(std::string_view(s).substr(slash + 1), n))
    throw UsageError(fmt::format("bad --shard '{}': expected I/N, e.g. 0/4 (shard I of N, counted from 0)", s));
  if (n < 1 || i < 0 || i >= n)
    throw UsageError(fmt::format("bad --shard '{}': need 0 <= I < N (shard I of N, counted from 0)", s));
  return {i, n};
}

TuneReport run_tune(const TuneOptions& options) {
  if (options.problems.empty()) throw UsageError("nothing to tune: no problem given");
  if (options.devices.empty()) throw UsageError("nothing to tune on: no GPU given");
  Tuner tuner(options);
  return tuner.run();
}

}  // namespace nsajit
