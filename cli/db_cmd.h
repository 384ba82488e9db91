#pragma once
// `nsajit db list|show|export|import|verify|prune`: inspect and maintain the tuning database.
#include <CLI/CLI.hpp>
#include <memory>

namespace nsajit {

class DbCommand {
public:
  virtual ~DbCommand() = default;
  virtual bool parsed() const = 0;  // the subcommand was given on the command line
  virtual int run() = 0;            // exit code: 0 success, 1 failure; throws UsageError for bad input (-> 2)
};

// Adds the `db` subcommand (with its own --db option, default default_db_path()) to `app`.
std::unique_ptr<DbCommand> add_db_command(CLI::App& app);

}  // namespace nsajit
