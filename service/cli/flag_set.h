// A small per-subcommand flag parser: each subcommand declares its flags with
// help text, so `baton SUB --help` documents exactly what SUB accepts. (absl
// flags are process-global, which does not fit one binary of subcommands.)
#ifndef BATON_SERVICE_CLI_FLAG_SET_H_
#define BATON_SERVICE_CLI_FLAG_SET_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace baton::cli {

class FlagSet {
 public:
  // `usage` is the synopsis line, e.g. "baton serve [flags]".
  FlagSet(std::string usage, std::string summary);

  // Each call binds a flag to a variable whose current value is the default.
  void String(const std::string& name, std::string* value, const std::string& help);
  void Int(const std::string& name, int64_t* value, const std::string& help);
  void Double(const std::string& name, double* value, const std::string& help);
  void Bool(const std::string& name, bool* value, const std::string& help);

  // Parses argv (without the program and subcommand names). Accepts
  // --name=value, --name value, and --flag / --no-flag for booleans.
  // Arguments that are not flags are collected in positional().
  absl::Status Parse(const std::vector<std::string>& args);

  bool help_requested() const { return help_requested_; }
  const std::vector<std::string>& positional() const { return positional_; }
  std::string HelpText() const;

 private:
  struct Flag {
    std::string name;
    std::string help;
    std::string default_text;
    bool is_bool = false;
    std::function<absl::Status(const std::string&)> set;
  };
  Flag* Find(const std::string& name);

  std::string usage_;
  std::string summary_;
  std::vector<Flag> flags_;
  std::vector<std::string> positional_;
  bool help_requested_ = false;
};

}  // namespace baton::cli

#endif  // BATON_SERVICE_CLI_FLAG_SET_H_
