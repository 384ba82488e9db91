// The layers point one way (README "Layout"): scripts/check_layers.sh reads every quoted include of every layer's
// sources and fails naming file:line for one of a layer above. Here it runs on the tree, and on a copy of the tree
// with upward includes planted, which it must name.
#include <doctest/doctest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <system_error>

#include "tests/cpu/test_util.h"

namespace fs = std::filesystem;

namespace {

const std::string kScript = std::string(NSAJIT_SOURCE_DIR) + "/scripts/check_layers.sh";
const char* const kLayers[] = {"templates", "base", "reference", "codegen", "cache", "db", "runtime", "tuner", "cli"};

int line_count(const fs::path& p) {
  std::ifstream in(p);
  int n = 0;
  for (std::string line; std::getline(in, line);) ++n;
  return n;
}

// Appends `text` as a new last line of `p`; returns its line number.
int append_line(const fs::path& p, const std::string& text) {
  const int n = line_count(p) + 1;
  std::ofstream(p, std::ios::app) << text << "\n";
  return n;
}

}  // namespace

TEST_CASE("layers: no source includes a header of a layer above its own (scripts/check_layers.sh)") {
  const Run r = run_shell("bash " + quoted(kScript) + " " + quoted(NSAJIT_SOURCE_DIR) + " 2>&1");
  CHECK_MESSAGE(r.code == 0, r.output);
  CHECK_CONTAINS(r.output, "none points up");
}

TEST_CASE("layers: the check names file:line of an include that points up, sideways or at another layer's library") {
  const fs::path root = fs::temp_directory_path() / ("nsajit-layers-" + std::to_string(::getpid()));
  fs::remove_all(root);
  for (const char* layer : kLayers) {
    fs::create_directories(root / layer);
    fs::copy(fs::path(NSAJIT_SOURCE_DIR) / layer, root / layer, fs::copy_options::recursive);
  }
  {
    const Run clean = run_shell("bash " + quoted(kScript) + " " + quoted(root.string()) + " 2>&1");
    CHECK_MESSAGE(clean.code == 0, clean.output);
  }
  const int up = append_line(root / "codegen/family.cpp", "#include \"runtime/tuned.h\"");
  const int db_up = append_line(root / "db/keys.h", "#include \"tuner/tuner.h\"");
  const int sideways = append_line(root / "cache/cubin_cache.cpp", "#include \"codegen/codegen.h\"");
  const int cuda = append_line(root / "codegen/emit.cpp", "#include <cuda.h>");
  const int sqlite = append_line(root / "runtime/tuned.cpp", "#include <sqlite3.h>");
  const Run r = run_shell("bash " + quoted(kScript) + " " + quoted(root.string()) + " 2>&1");
  CHECK(r.code == 1);
  CHECK_CONTAINS(r.output, "codegen/family.cpp:" + std::to_string(up) +
                               ": codegen includes \"runtime/tuned.h\" of layer runtime");
  CHECK_CONTAINS(r.output, "db/keys.h:" + std::to_string(db_up) + ": db includes \"tuner/tuner.h\" of layer tuner");
  CHECK_CONTAINS(r.output, "cache/cubin_cache.cpp:" + std::to_string(sideways) +
                               ": cache includes \"codegen/codegen.h\" of layer codegen");
  CHECK_CONTAINS(r.output, "codegen/emit.cpp:" + std::to_string(cuda) + ": codegen includes <cuda.h>");
  CHECK_CONTAINS(r.output, "runtime/tuned.cpp:" + std::to_string(sqlite) + ": runtime includes <sqlite3.h>");
  CHECK_CONTAINS(r.output, "check_layers: FAILED");
  std::error_code ec;
  fs::remove_all(root, ec);
}
