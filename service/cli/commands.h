// The subcommands of the `baton` binary. Each takes its arguments (after the
// subcommand name) and returns the process exit code.
#ifndef BATON_SERVICE_CLI_COMMANDS_H_
#define BATON_SERVICE_CLI_COMMANDS_H_

#include <string>
#include <vector>

namespace baton::cli {

using Args = std::vector<std::string>;

struct Command {
  const char* name;
  const char* summary;
  // Null while the subcommand is not built yet.
  int (*run)(const Args& args);
};

// All subcommands, in the order `baton --help` lists them.
const std::vector<Command>& AllCommands();

int RunVersion(const Args& args);
int RunServe(const Args& args);
int RunPrefill(const Args& args);
int RunDecode(const Args& args);
int RunRouter(const Args& args);
int RunGenerate(const Args& args);
int RunBench(const Args& args);
int RunPerplexity(const Args& args);

// The embedded default model's directory.
std::string DefaultModelDir();

}  // namespace baton::cli

#endif  // BATON_SERVICE_CLI_COMMANDS_H_
