#pragma once
// Measurement in a separate process. CUDA errors are sticky (an illegal address ruins the context for good), a
// hung kernel never returns, and a crash ends the process: so the tuner measures in a worker process (`nsajit
// tune-worker --device N`, one per GPU) that it talks to over two pipes, one JSON object per line, and restarts
// after a fault, a hang (killed past a timeout) or a crash. No recorded trial is ever lost to one.
//
// Requests (fd 3 in the worker) and replies (fd 4):
//   {"op":"hello"} -> {"device":model fingerprint,"name":..,"driver":int,"nvrtc":..,"max_smem":int,"arch":..}
//   {"op":"prepare","family":..,"problem":..,"inputs":..} -> {"seconds":..}   builds inputs and the trusted result;
//       a data-dependent family's reply adds "overlap" (the bucket most of its selection's spans are in) and
//       "high_share" (the share of high-overlap spans)
//   {"op":"measure","family":..,"problem":..,"inputs":..,"config":..,"reps":int,"warmup_ms":..}
//       -> {"outcome":"ok","median":..,"p20":..,"p80":..,"reps":..,"detail":..} or
//          {"outcome":"wrong_result","detail":..} (the first measurement of a config in a worker runs the correctness
//          gate first; an ok detail says what the gate accepted short of equality, e.g. select's near-tie swaps)
//   {"op":"interleave","family":..,"problem":..,"inputs":..,"configs":[..],"rounds":int}
//       -> {"outcome":"ok","results":[{"median":..,"p20":..,"p80":..,"reps":..,"detail":..}, ...]}
// Any reply may instead be {"outcome":"launch_error","detail":..,"fatal":true}: the worker exits after sending it.
#include <sys/types.h>

#include <llvm/Support/JSON.h>

#include <optional>
#include <string>
#include <string_view>

namespace nsajit {

// Texts of failures, shared by the process that writes them and the tuner that reads recorded trials back.
// A timeout: "no reply within 0.5 s (hung kernel?): worker killed", the limit written exactly (shortest form).
std::string timeout_failure(double timeout_s);
// The limit a timeout_failure() text was written with (also "{:.0f}"-rounded texts of older versions); nullopt for
// any other text.
std::optional<double> timeout_of_failure(std::string_view detail);
// The start of the detail of a worker that could not create its CUDA context, and of a process that could not be run.
inline constexpr std::string_view kWorkerStartFailure = "worker start: ";
inline constexpr std::string_view kCouldNotRun = "could not run ";

// The worker's main loop (the hidden `nsajit tune-worker` subcommand). Returns the process exit code.
int run_worker(int device_ordinal, int in_fd = 3, int out_fd = 4);

class WorkerProcess {
public:
  WorkerProcess(std::string exe, int device);
  ~WorkerProcess();
  WorkerProcess(const WorkerProcess&) = delete;
  WorkerProcess& operator=(const WorkerProcess&) = delete;

  struct Reply {
    std::optional<llvm::json::Object> object;  // the reply, when one came
    bool timed_out = false;                     // killed after the timeout
    std::string failure;                        // why there is no reply: "timed out after 20 s", "crashed: signal 11"
  };
  // Starts the process if it is not running, sends the request, waits for the reply. A timeout or a dead
  // process gives a Reply without object, and the process is gone (the next call starts a new one).
  Reply call(const llvm::json::Object& request, double timeout_s);
  void stop();  // kills the process if running
  int device() const { return device_; }
  int restarts() const { return starts_ > 0 ? starts_ - 1 : 0; }

  // Non-blocking use (several workers at once): send, then poll the descriptor, then receive.
  bool send(const llvm::json::Object& request);  // false when the process could not be started or written
  int reply_fd() const { return from_; }
  // Reads what is available; returns a reply when a whole line is in, or a failure when the process ended.
  std::optional<Reply> receive_available();
  void kill_for_timeout(double timeout_s, Reply& out);

private:
  void start();
  std::string reap();  // waits for the process and describes how it ended
  std::string exe_;
  int device_;
  pid_t pid_ = -1;
  int to_ = -1, from_ = -1;
  std::string buffer_;
  int starts_ = 0;
};

}  // namespace nsajit
