// The nsajit command, run as a process (NSAJIT_CLI_PATH) with its own temporary cache directory: exit codes
// (0 success, 1 failure, 2 usage error) and what it prints, stderr included.
#include <doctest/doctest.h>
#include <stdlib.h>
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <regex>
#include <string>
#include <vector>

#include "codegen/family.h"
#include "codegen/problem.h"
#include "tests/cpu/test_util.h"

namespace fs = std::filesystem;

namespace {

// A fresh directory (removed afterwards) used as the command's NSAJIT_CACHE_DIR and for its files.
class Cli {
public:
  Cli() {
    std::string model = (fs::temp_directory_path() / "nsajit-cli-test-XXXXXX").string();
    REQUIRE(mkdtemp(model.data()) != nullptr);
    dir_ = model;
    cache_ = dir_ / "cache";
  }
  ~Cli() {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  Cli(const Cli&) = delete;
  Cli& operator=(const Cli&) = delete;

  const fs::path& dir() const { return dir_; }
  const fs::path& cache() const { return cache_; }

  // Runs `nsajit ARGS` with stderr folded into the output.
  Run operator()(const std::string& args) const {
    const std::string command =
        "NSAJIT_CACHE_DIR=" + quoted(cache_.string()) + " " + quoted(NSAJIT_CLI_PATH) + " " + args + " 2>&1";
    return run_shell(command);
  }

  // Every cache entry file.
  std::vector<fs::path> entries() const {
    std::vector<fs::path> out;
    std::error_code ec;
    if (!fs::exists(cache_, ec)) return out;
    for (const auto& e : fs::recursive_directory_iterator(cache_))
      if (e.is_regular_file() && e.path().extension() == ".nsajitcb") out.push_back(e.path());
    return out;
  }

private:
  fs::path dir_, cache_;
};

// Evaluates `run` once (it may be a command to run).
#define CHECK_EXIT(run, expected)                                                                                \
  do {                                                                                                           \
    const Run& run_once_ = (run);                                                                                \
    CHECK_MESSAGE(run_once_.code == (expected), "exit " << run_once_.code << ", output:\n" << run_once_.output); \
  } while (false)

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void flip_last_byte(const fs::path& path) {
  std::fstream file(path, std::ios::in | std::ios::out | std::ios::binary);
  file.seekg(-1, std::ios::end);
  char c = 0;
  file.get(c);
  file.seekp(-1, std::ios::end);
  file.put(static_cast<char>(c ^ 0x5a));
  REQUIRE(file.good());
}

const std::vector<std::string> kCommands = {"devices", "families", "emit", "compile", "tune", "bench", "cache"};

}  // namespace

TEST_CASE("cli: help and version") {
  Cli cli;
  const Run help = cli("--help");
  CHECK_EXIT(help, 0);
  for (const std::string& cmd : kCommands) CHECK_CONTAINS(help.output, "  " + cmd + " ");

  for (const std::string& cmd : kCommands) {
    CAPTURE(cmd);
    const Run r = cli(cmd + " --help");
    CHECK_EXIT(r, 0);
    CHECK_CONTAINS(r.output, "Usage:");
    CHECK_CONTAINS(r.output, " " + cmd + " ");
    if (cmd == "emit" || cmd == "compile" || cmd == "tune" || cmd == "bench") {
      CHECK_CONTAINS(r.output, "--preset");
      CHECK_CONTAINS(r.output, "--seq");
    }
  }
  CHECK_CONTAINS(cli("cache --help").output, "list | verify | clear");

  const Run version = cli("--version");
  CHECK_EXIT(version, 0);
  CHECK_CONTAINS(version.output, NSAJIT_VERSION);
}

TEST_CASE("cli: usage errors exit 2 and say what is wrong") {
  Cli cli;
  SUBCASE("no subcommand") {
    const Run r = cli("");
    CHECK_EXIT(r, 2);
    CHECK_CONTAINS(r.output, "subcommand");
  }
  SUBCASE("unknown subcommand") { CHECK_EXIT(cli("frobnicate"), 2); }
  SUBCASE("unknown family lists the families") {
    const Run r = cli("compile --family nope --preset fla");
    CHECK_EXIT(r, 2);
    CHECK_CONTAINS(r.output, "'nope'");
    CHECK_CONTAINS(r.output, "win_fwd");
    CHECK_CONTAINS(r.output, "win_fwd_ref");
  }
  SUBCASE("unknown preset lists the presets") {
    const Run r = cli("compile --family win_fwd --preset nope");
    CHECK_EXIT(r, 2);
    CHECK_CONTAINS(r.output, "'nope'");
    CHECK_CONTAINS(r.output, "paper, fla");
  }
  SUBCASE("bad sequence lengths") {
    for (const char* seq : {"-5", "abc", "0"}) {
      CAPTURE(seq);
      const Run r = cli(std::string("compile --family win_fwd --preset fla --seq ") + seq);
      CHECK_EXIT(r, 2);
      CHECK_CONTAINS(r.output, "--seq");
    }
  }
  SUBCASE("bad dtype") {
    const Run r = cli("compile --family win_fwd --preset fla --dtype fp32");
    CHECK_EXIT(r, 2);
    CHECK_CONTAINS(r.output, "bf16, fp16");
  }
  SUBCASE("tile value outside the domain lists the allowed values") {
    const Run r = cli("compile --family win_fwd --preset fla --tile BM=7");
    CHECK_EXIT(r, 2);
    CHECK_CONTAINS(r.output, "BM");
    CHECK_CONTAINS(r.output, "64, 128");
  }
  SUBCASE("a config the family's rules prune is refused with the rule, for compile and emit alike") {
    for (const char* cmd : {"compile", "emit"}) {
      CAPTURE(cmd);
      Run r = cli(std::string(cmd) + " --family win_fwd --preset fla --arch sm_90a --tile BM=192,IMPL=2");
      CHECK_EXIT(r, 2);
      CHECK_CONTAINS(r.output, "BM=192 (three warpgroups) is IMPL=1's only");
      r = cli(std::string(cmd) + " --family win_fwd --preset fla --arch sm_90a --tile BN=16,IMPL=1");
      CHECK_EXIT(r, 2);
      CHECK_CONTAINS(r.output, "BN=16 is not");
    }
  }
  SUBCASE("unknown tile parameter") {
    const Run r = cli("compile --family win_fwd --preset fla --tile BK=64");
    CHECK_EXIT(r, 2);
    CHECK_CONTAINS(r.output, "'BK'");
  }
  SUBCASE("unsupported head dims") {
    const Run r = cli("compile --dk 100 --dv 96 --family win_fwd");
    CHECK_EXIT(r, 2);
    CHECK_CONTAINS(r.output, "dk = 100");
    CHECK_CONTAINS(r.output, "multiples of 8 from 32 to 256");
  }
  SUBCASE("HQ not a multiple of H") {
    const Run r = cli("compile --family win_fwd --heads 64 --kv-heads 5");
    CHECK_EXIT(r, 2);
    CHECK_CONTAINS(r.output, "HQ = 64 is not a multiple of H = 5");
  }
  SUBCASE("--group") {
    const Run r = cli("compile --family win_fwd --heads 64 --group 3");
    CHECK_EXIT(r, 2);
    CHECK_CONTAINS(r.output, "--group 3");
    CHECK_EXIT(cli("compile --family win_fwd --group 4 --kv-heads 16"), 2);
  }
  SUBCASE("d must divide l") {
    const Run r = cli("compile --family win_fwd --preset paper --l 32 --d 24");
    CHECK_EXIT(r, 2);
    CHECK_CONTAINS(r.output, "must divide l");
  }
  SUBCASE("bad arch") {
    const Run r = cli("compile --family win_fwd --preset fla --arch banana");
    CHECK_EXIT(r, 2);
    CHECK_CONTAINS(r.output, "'banana'");
  }
  SUBCASE("missing or bad arguments") {
    CHECK_EXIT(cli("emit --preset fla"), 2);  // --family is required
    CHECK_EXIT(cli("cache"), 2);
    const Run r = cli("cache frob");
    CHECK_EXIT(r, 2);
    CHECK_CONTAINS(r.output, "frob");
  }
  // Nothing above compiled anything.
  CHECK(cli.entries().empty());
}

TEST_CASE("cli: families lists the families and their parameters") {
  Cli cli;
  const Run r = cli("families");
  CHECK_EXIT(r, 0);
  CHECK_CONTAINS(r.output, "win_fwd\n");
  CHECK_CONTAINS(r.output, "win_fwd_ref\n");
  for (const nsajit::KernelFamily* f : nsajit::families()) {
    CHECK_CONTAINS(r.output, std::string(f->name()) + "\n  " + std::string(f->description()) + "\n");
    for (const nsajit::ParamDecl& decl : f->params()) {
      std::string domain;
      for (int v : decl.domain) domain += (domain.empty() ? "" : ", ") + std::to_string(v);
      CHECK_CONTAINS(r.output, "  " + decl.name);
      CHECK_CONTAINS(r.output, "{" + domain + "}  " + decl.help + "\n");
    }
  }
  CHECK_CONTAINS(r.output, "BM");
  CHECK_CONTAINS(r.output, "{64, 128}");
  CHECK_CONTAINS(r.output, "QREGS");
  CHECK_CONTAINS(r.output, "(no tunable parameters)");
}

TEST_CASE("cli: devices and bench without a GPU") {
  Cli cli;
  const Run r = cli("devices");
  CHECK_CONTAINS(r.output, "NVRTC ");
  if (contains(r.output, "device 0")) {
    MESSAGE("a GPU is present: the no-GPU checks are skipped");
    CHECK_EXIT(r, 0);
    return;
  }
  CHECK_EXIT(r, 1);
  CHECK_CONTAINS(r.output, "no GPU");
  const Run bench = cli("bench --preset fla --seq 1024");
  CHECK_EXIT(bench, 1);
  CHECK_CONTAINS(bench.output, "needs a GPU");
}

TEST_CASE("cli: compile, then the cache commands") {
  Cli cli;
  const Run compile = cli("compile --family win_fwd --preset fla");
  CHECK_EXIT(compile, 0);
  std::smatch m;
  REQUIRE_MESSAGE(std::regex_search(compile.output, m, std::regex(R"(regs +(\d+) .* key ([0-9a-f]{16}))")),
                  compile.output);
  CHECK(std::stoi(m[1].str()) > 0);
  const std::string key16 = m[2].str();
  CHECK(!contains(compile.output, " B  cached "));

  const auto files = cli.entries();
  REQUIRE(files.size() == 1);
  const fs::path entry = files[0];
  CHECK(entry.filename().string().starts_with(key16));

  const Run list = cli("cache list");
  CHECK_EXIT(list, 0);
  CHECK_CONTAINS(list.output, "1 entries");
  CHECK_CONTAINS(list.output, key16);
  CHECK_CONTAINS(list.output, "win_fwd [BM=128 BN=64 IMPL=2 QREGS=0 STAGES=3]");  // the default config

  const Run verify = cli("cache verify");
  CHECK_EXIT(verify, 0);
  CHECK_CONTAINS(verify.output, "0 bad entries");

  // The same compile again is a cache hit.
  const Run again = cli("compile --family win_fwd --preset fla");
  CHECK_EXIT(again, 0);
  CHECK_CONTAINS(again.output, " B  cached ");
  CHECK_CONTAINS(again.output, key16);

  SUBCASE("a corrupted entry: verify names it, --repair removes it") {
    flip_last_byte(entry);
    const Run bad = cli("cache verify");
    CHECK_EXIT(bad, 1);
    CHECK_CONTAINS(bad.output, entry.string());
    CHECK_CONTAINS(bad.output, "checksum mismatch");
    CHECK_CONTAINS(bad.output, "1 bad entries");
    CHECK_CONTAINS(bad.output, "--repair");
    CHECK(fs::exists(entry));  // verify alone changes nothing

    const Run repair = cli("cache verify --repair");
    CHECK_CONTAINS(repair.output, entry.string());
    CHECK_CONTAINS(repair.output, "(removed)");
    CHECK(!fs::exists(entry));
    CHECK_EXIT(cli("cache verify"), 0);
    CHECK_CONTAINS(cli("cache list").output, "0 entries");
  }
  SUBCASE("a corrupted entry met by compile is replaced") {
    flip_last_byte(entry);
    const Run redo = cli("compile --family win_fwd --preset fla");
    CHECK_EXIT(redo, 0);
    CHECK_CONTAINS(redo.output, "replaced a bad cache entry");
    CHECK_CONTAINS(redo.output, "checksum mismatch");
    CHECK(!contains(redo.output, " B  cached "));
    CHECK_EXIT(cli("cache verify"), 0);
  }
  SUBCASE("clear reports the count") {
    const Run other = cli("compile --family win_fwd_ref --preset fla");
    CHECK_EXIT(other, 0);
    CHECK(cli.entries().size() == 2);
    const Run clear = cli("cache clear");
    CHECK_EXIT(clear, 0);
    CHECK_CONTAINS(clear.output, "removed 2 entries");
    CHECK(cli.entries().empty());
    CHECK_CONTAINS(cli("cache list").output, "0 entries");
  }
}

TEST_CASE("cli: emit writes a standalone program") {
  Cli cli;
  const fs::path out = cli.dir() / "x.cu";
  const Run r = cli("emit --family win_fwd --preset fla -o " + quoted(out.string()));
  CHECK_EXIT(r, 0);
  CHECK_CONTAINS(r.output, "wrote " + out.string());
  REQUIRE(fs::exists(out));
  const std::string text = read_file(out);
  CHECK_CONTAINS(text, "int main(");
  CHECK_CONTAINS(text, "//   build: nvcc ");
  CHECK_CONTAINS(text, "-gencode=arch=compute_90a,code=sm_90a");
  CHECK_CONTAINS(text, "nsa_win_fwd(");
  // Without -o the same text goes to standard output.
  const Run stdout_run = cli("emit --family win_fwd --preset fla");
  CHECK_EXIT(stdout_run, 0);
  CHECK(stdout_run.output == text);
  // emit compiles nothing.
  CHECK(cli.entries().empty());
}

TEST_CASE("cli: tune refuses an unknown family name") {
  Cli cli;
  const Run r = cli("tune --preset fla --seq 1024 --families nope");
  CHECK_EXIT(r, 2);
  CHECK_CONTAINS(r.output, "'nope'");
  CHECK(cli.entries().empty());
}

TEST_CASE("cli fuzzed: random problem flags and values: exit 0, 1 or 2 with a message, never a crash") {
  Cli cli;
  uint64_t state = 1130;  // splitmix64: the same cases on every machine
  auto next = [&state] {
    uint64_t z = (state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  };
  const std::vector<std::string> flags = {"--preset", "--dtype", "--batch", "--seq", "--heads", "--kv-heads",
                                          "--group", "--dk", "--dv", "--l", "--d", "--lsel", "--n", "--w", "--scale",
                                          "--tile", "--family", "--bogus"};
  const std::vector<std::string> values = {"0", "1", "-1", "3", "16", "64", "96", "128", "192", "256", "4097",
                                           "65536", "2147483648", "99999999999999999999", "abc", "1e3", "nan",
                                           "inf", "0.5", "bf16", "fp8", "paper", "fla", "BM=64", "BM=7",
                                           "win_fwd", "slc_bwd_dkv", "''", "1,2"};
  // emit validates the problem and the family and writes a file (no compile); bench and tune validate, then need a
  // GPU (exit 1 here).
  const std::vector<std::string> commands = {"emit -o " + quoted((cli.dir() / "fuzz.cu").string()), "bench", "tune"};
  int cases = 0, usage = 0, ok = 0, failed = 0;
  for (int i = 0; i < 90; ++i) {
    std::string args = commands[next() % commands.size()];
    const int nflags = 1 + static_cast<int>(next() % 3);
    for (int f = 0; f < nflags; ++f)
      args += " " + flags[next() % flags.size()] + " " + values[next() % values.size()];
    if (args.rfind("emit", 0) == 0 && args.find("--family") == std::string::npos) args += " --family win_fwd";
    INFO(args);
    const Run r = cli(args);
    ++cases;
    INFO(r.output);
    CHECK((r.code == 0 || r.code == 1 || r.code == 2));
    if (r.code == 2) {
      ++usage;
      CHECK(!r.output.empty());
    } else if (r.code == 1) {
      ++failed;
      CHECK(!r.output.empty());
    } else {
      ++ok;
    }
    for (char c : r.output) CHECK_MESSAGE((c == '\n' || c == '\t' || c == '\r' || static_cast<unsigned char>(c) >= 0x20), args);
  }
  MESSAGE(cases << " fuzzed command lines: " << usage << " usage errors (exit 2), " << failed << " failures (exit 1), "
                << ok << " ran");
  CHECK(usage > cases / 3);
}
