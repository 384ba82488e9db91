#pragma once
// The one exception type of nsajit: every failure a user can cause or meet carries a message that says what
// is wrong and, where it helps, what to do.
#include <stdexcept>
#include <string>

namespace nsajit {

class Error : public std::runtime_error {
public:
  using std::runtime_error::runtime_error;
};

// Bad input from the caller (a usage error on the command line: exit code 2).
class UsageError : public Error {
public:
  using Error::Error;
};

}  // namespace nsajit
