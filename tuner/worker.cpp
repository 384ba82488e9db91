#include "tuner/worker.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstring>
#include <map>
#include <memory>
#include <set>

#include "base/error.h"
#include "codegen/family.h"
#include "db/keys.h"
#include "runtime/device.h"
#include "tuner/cases.h"
#include "tuner/inputs.h"
#include "tuner/timing.h"

namespace nsajit {
namespace json = llvm::json;

// ---- the worker process -------------------------------------------------------------------------------------------

namespace {

bool write_all(int fd, const std::string& s) {
  size_t done = 0;
  while (done < s.size()) {
    const ssize_t n = ::write(fd, s.data() + done, s.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    done += static_cast<size_t>(n);
  }
  return true;
}

std::string to_line(const json::Object& o) {
  std::string s;
  llvm::raw_string_ostream os(s);
  os << json::Value(json::Object(o));
  os.flush();
  return s + "\n";
}

std::string str_field(const json::Object& o, const char* key) {
  if (auto v = o.getString(key)) return v->str();
  throw UsageError(fmt::format("worker request without string field '{}'", key));
}

class WorkerState {
public:
  explicit WorkerState(int device) : ctx_(device) {}

  json::Object handle(const json::Object& req) {
    const std::string op = str_field(req, "op");
    if (op == "hello") {
      const DeviceInfo& d = ctx_.info();
      return json::Object{{"device", d.model_fingerprint()}, {"name", d.name},
                          {"driver", d.driver_version},      {"nvrtc", d.nvrtc_version},
                          {"max_smem", d.max_smem_optin},    {"arch", d.arch()}};
    }
    const KernelFamily& f = find_family(str_field(req, "family"));
    const Problem p = parse_problem(str_field(req, "problem"));
    const InputKind inputs = parse_input_kind(str_field(req, "inputs"));
    const auto t0 = std::chrono::steady_clock::now();
    TuneCase& c = tune_case(f, p, inputs);
    if (op == "prepare") {
      json::Object reply{{"seconds", std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count()}};
      if (const std::optional<PlanShares> shares = c.overlap_shares()) {
        reply["overlap"] = std::string(overlap_bucket_name(shares->majority));
        reply["high_share"] = shares->high;
      }
      return reply;
    }
    if (op == "measure") {
      const std::string cfg_text = str_field(req, "config");
      const TileConfig cfg = parse_config(cfg_text);
      if (!checked_.count(cfg_text)) {
        if (auto wrong = c.check(cfg)) return json::Object{{"outcome", "wrong_result"}, {"detail", *wrong}};
        checked_[cfg_text] = c.note();
      }
      const int reps = static_cast<int>(req.getInteger("reps").value_or(20));
      const double warmup = req.getNumber("warmup_ms").value_or(50.0);
      const TimingStats t = time_gpu([&](CUstream s) { c.launch(cfg, s); }, reps, warmup);
      // detail: what the gate accepted short of equality (select's near-tie swaps), else empty.
      return json::Object{{"outcome", "ok"}, {"median", t.median_ms}, {"p20", t.p20_ms}, {"p80", t.p80_ms},
                          {"reps", t.reps},  {"detail", checked_[cfg_text]}};
    }
    if (op == "interleave") {
      const json::Array* list = req.getArray("configs");
      if (list == nullptr) throw UsageError("interleave request without configs");
      std::vector<TileConfig> cfgs;
      for (const json::Value& v : *list) {
        auto s = v.getAsString();
        if (!s) throw UsageError("interleave: a config that is not a string");
        if (!checked_.count(s->str())) {
          if (auto wrong = c.check(parse_config(*s)))
            return json::Object{{"outcome", "wrong_result"}, {"detail", fmt::format("[{}] {}", s->str(), *wrong)}};
          checked_[s->str()] = c.note();
        }
        cfgs.push_back(parse_config(*s));
      }
      std::vector<std::function<void(CUstream)>> launches;
      for (const TileConfig& cfg : cfgs) launches.push_back([&c, cfg](CUstream s) { c.launch(cfg, s); });
      const int rounds = static_cast<int>(req.getInteger("rounds").value_or(10));
      const auto stats = time_interleaved(launches, rounds);
      json::Array results;
      for (size_t k = 0; k < stats.size(); ++k) {
        const TimingStats& t = stats[k];
        results.push_back(json::Object{{"median", t.median_ms}, {"p20", t.p20_ms}, {"p80", t.p80_ms}, {"reps", t.reps},
                                       {"detail", checked_[(*list)[k].getAsString()->str()]}});
      }
      return json::Object{{"outcome", "ok"}, {"results", std::move(results)}};
    }
    throw UsageError(fmt::format("unknown worker op '{}'", op));
  }

private:
  TuneCase& tune_case(const KernelFamily& f, const Problem& p, InputKind inputs) {
    const std::string key = std::string(f.name()) + "|" + p.describe() + "|" + std::string(input_kind_name(inputs));
    if (key != case_key_) {
      case_.reset();  // free the previous inputs first
      checked_.clear();
      case_ = make_tune_case(f, p, inputs);
      case_key_ = key;
    }
    return *case_;
  }
  Context ctx_;
  std::string case_key_;
  std::unique_ptr<TuneCase> case_;
  std::map<std::string, std::string> checked_;  // configs that passed the gate -> what it accepted (note())
};

}  // namespace

int run_worker(int device, int in_fd, int out_fd) {
  std::unique_ptr<WorkerState> state;
  std::string fatal_startup;
  try {
    state = std::make_unique<WorkerState>(device);
  } catch (const std::exception& e) {
    fatal_startup = e.what();
  }
  std::string buf;
  char chunk[4096];
  while (true) {
    const size_t nl = buf.find('\n');
    if (nl == std::string::npos) {
      const ssize_t n = ::read(in_fd, chunk, sizeof chunk);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return 0;  // the tuner went away
      buf.append(chunk, static_cast<size_t>(n));
      continue;
    }
    const std::string line = buf.substr(0, nl);
    buf.erase(0, nl + 1);
    json::Object reply;
    bool fatal = false;
    if (!fatal_startup.empty()) {
      reply = json::Object{
          {"outcome", "launch_error"}, {"detail", std::string(kWorkerStartFailure) + fatal_startup}, {"fatal", true}};
      fatal = true;
    } else {
      auto parsed = json::parse(line);
      if (!parsed) {
        reply = json::Object{{"outcome", "launch_error"}, {"detail", "bad request: " + llvm::toString(parsed.takeError())}};
      } else if (const json::Object* req = parsed->getAsObject()) {
        try {
          reply = state->handle(*req);
        } catch (const UsageError& e) {
          reply = json::Object{{"outcome", "launch_error"}, {"detail", e.what()}};
        } catch (const std::exception& e) {
          // A CUDA error (or anything else thrown mid-launch): the context may be unusable, so this worker ends.
          reply = json::Object{{"outcome", "launch_error"}, {"detail", e.what()}, {"fatal", true}};
          fatal = true;
        }
      } else {
        reply = json::Object{{"outcome", "launch_error"}, {"detail", "bad request: not an object"}};
      }
    }
    if (!write_all(out_fd, to_line(reply))) return 1;
    if (fatal) _exit(3);  // skip destructors: the context is broken
  }
}

// ---- the tuner's side ---------------------------------------------------------------------------------------------

namespace {
constexpr std::string_view kTimeoutStart = "no reply within ", kTimeoutEnd = " s (hung kernel?): worker killed";
}

std::string timeout_failure(double timeout_s) { return fmt::format("{}{}{}", kTimeoutStart, timeout_s, kTimeoutEnd); }

std::optional<double> timeout_of_failure(std::string_view detail) {
  if (!detail.starts_with(kTimeoutStart) || !detail.ends_with(kTimeoutEnd)) return std::nullopt;
  const std::string_view number =
      detail.substr(kTimeoutStart.size(), detail.size() - kTimeoutStart.size() - kTimeoutEnd.size());
  double v = 0;
  const auto [end, ec] = std::from_chars(number.data(), number.data() + number.size(), v);
  if (ec != std::errc() || end != number.data() + number.size() || !(v >= 0)) return std::nullopt;
  return v;
}

WorkerProcess::WorkerProcess(std::string exe, int device) : exe_(std::move(exe)), device_(device) {}
WorkerProcess::~WorkerProcess() { stop(); }

void WorkerProcess::start() {
  ::signal(SIGPIPE, SIG_IGN);  // a worker that died must not take the tuner with it on the next write
  int req[2], resp[2];
  if (::pipe2(req, O_CLOEXEC) != 0 || ::pipe2(resp, O_CLOEXEC) != 0)
    throw Error(fmt::format("cannot create pipes for a tuner worker: {}", std::strerror(errno)));
  const std::string dev = std::to_string(device_);
  const pid_t pid = ::fork();
  if (pid < 0) throw Error(fmt::format("cannot start a tuner worker: fork: {}", std::strerror(errno)));
  if (pid == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);  // a tuner killed with -9 takes its workers along
    const int in = ::fcntl(req[0], F_DUPFD, 10), out = ::fcntl(resp[1], F_DUPFD, 10);
    ::dup2(in, 3);
    ::dup2(out, 4);
    ::dup2(2, 1);  // anything printed goes to the tuner's stderr, never into the protocol
    const char* argv[] = {exe_.c_str(), "tune-worker", "--device", dev.c_str(), nullptr};
    ::execv(exe_.c_str(), const_cast<char* const*>(argv));
    _exit(127);
  }
  ::close(req[0]);
  ::close(resp[1]);
  pid_ = pid, to_ = req[1], from_ = resp[0];
  buffer_.clear();
  ++starts_;
}

std::string WorkerProcess::reap() {
  if (to_ >= 0) ::close(to_);
  if (from_ >= 0) ::close(from_);
  to_ = from_ = -1;
  std::string how = "ended";
  if (pid_ > 0) {
    int status = 0;
    while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
    if (WIFSIGNALED(status))
      how = fmt::format("crashed: signal {} ({})", WTERMSIG(status), strsignal(WTERMSIG(status)));
    else if (WIFEXITED(status))
      how = WEXITSTATUS(status) == 127 ? fmt::format("{}{}", kCouldNotRun, exe_)
                                       : fmt::format("exited with status {}", WEXITSTATUS(status));
  }
  pid_ = -1;
  return how;
}

void WorkerProcess::stop() {
  if (pid_ > 0) ::kill(pid_, SIGKILL);
  if (pid_ > 0 || to_ >= 0) reap();
}

bool WorkerProcess::send(const json::Object& request) {
  if (pid_ <= 0) start();
  return write_all(to_, to_line(request));
}

std::optional<WorkerProcess::Reply> WorkerProcess::receive_available() {
  char chunk[4096];
  const ssize_t n = ::read(from_, chunk, sizeof chunk);
  if (n < 0 && (errno == EINTR || errno == EAGAIN)) return std::nullopt;
  if (n <= 0) {
    Reply r;
    r.failure = "worker " + reap();
    return r;
  }
  buffer_.append(chunk, static_cast<size_t>(n));
  const size_t nl = buffer_.find('\n');
  if (nl == std::string::npos) return std::nullopt;
  const std::string line = buffer_.substr(0, nl);
  buffer_.erase(0, nl + 1);
  Reply r;
  auto parsed = json::parse(line);
  if (!parsed || parsed->getAsObject() == nullptr) {
    if (!parsed) llvm::consumeError(parsed.takeError());
    stop();
    r.failure = "worker sent a malformed reply";
    return r;
  }
  r.object = std::move(*parsed->getAsObject());
  if (r.object->getBoolean("fatal").value_or(false)) reap();  // it exits after a fatal reply
  return r;
}

void WorkerProcess::kill_for_timeout(double timeout_s, Reply& out) {
  stop();
  out.timed_out = true;
  out.failure = timeout_failure(timeout_s);
}

WorkerProcess::Reply WorkerProcess::call(const json::Object& request, double timeout_s) {
  Reply r;
  if (!send(request)) {
    r.failure = "worker " + reap();
    return r;
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
  while (true) {
    const double left = std::chrono::duration<double>(deadline - std::chrono::steady_clock::now()).count();
    if (left <= 0) {
      kill_for_timeout(timeout_s, r);
      return r;
    }
    pollfd pfd{from_, POLLIN, 0};
    const int k = ::poll(&pfd, 1, static_cast<int>(std::min(left * 1000.0, 1000.0)) + 1);
    if (k < 0 && errno != EINTR) throw Error(fmt::format("poll on a tuner worker: {}", std::strerror(errno)));
    if (k <= 0) continue;
    if (auto got = receive_available()) return *got;
  }
}

}  // namespace nsajit
