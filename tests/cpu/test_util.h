#pragma once
// Helpers shared by the CPU tests: substring checks and running a shell command (the nsajit binary) with its
// output and exit status.
#include <doctest/doctest.h>
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <string>

inline bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

#define CHECK_CONTAINS(haystack, needle) \
  CHECK_MESSAGE(contains((haystack), (needle)), "expected \"" << (needle) << "\" in:\n" << (haystack))
#define CHECK_NOT_CONTAINS(haystack, needle) \
  CHECK_MESSAGE(!contains((haystack), (needle)), "did not expect \"" << (needle) << "\" in:\n" << (haystack))

// `s` single-quoted for the shell.
inline std::string quoted(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

struct Run {
  int code = -1;  // the exit status, or -1 if the process did not exit normally
  std::string output;
};

// Runs a shell command line, stderr folded into the output when the command says 2>&1.
inline Run run_shell(const std::string& command) {
  Run r;
  FILE* pipe = popen(command.c_str(), "r");
  REQUIRE_MESSAGE(pipe != nullptr, "cannot run " << command);
  std::array<char, 4096> buffer{};
  for (size_t n; (n = fread(buffer.data(), 1, buffer.size(), pipe)) > 0;) r.output.append(buffer.data(), n);
  const int status = pclose(pipe);
  r.code = status != -1 && WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}
