// `baton`: one binary, one subcommand per role (see AllCommands()).
#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "service/cli/commands.h"

namespace baton::cli {
namespace {

void PrintUsage(FILE* out) {
  std::fprintf(out,
               "baton: disaggregated inference for DeepSeek-V3-architecture models\n\n"
               "usage: baton SUBCOMMAND [flags]\n\nsubcommands:\n");
  for (const Command& c : AllCommands()) {
    std::fprintf(out, "%s", absl::StrFormat("  %-12s %s\n", c.name, c.summary).c_str());
  }
  std::fprintf(out, "\nRun `baton SUBCOMMAND --help` for the flags of one subcommand.\n");
}

int Main(int argc, char** argv) {
  if (argc < 2) {
    PrintUsage(stderr);
    return 2;
  }
  const std::string sub = argv[1];
  if (sub == "--help" || sub == "-h" || sub == "help") {
    PrintUsage(stdout);
    return 0;
  }
  if (sub == "--version") return RunVersion({});
  const Args args(argv + 2, argv + argc);
  for (const Command& c : AllCommands()) {
    if (sub != c.name) continue;
    if (c.run == nullptr) {
      std::fprintf(stderr, "baton %s: not built yet in this version of baton\n", c.name);
      return 2;
    }
    return c.run(args);
  }
  std::fprintf(stderr, "baton: unknown subcommand \"%s\"\n\n", sub.c_str());
  PrintUsage(stderr);
  return 2;
}

}  // namespace
}  // namespace baton::cli

int main(int argc, char** argv) { return baton::cli::Main(argc, argv); }
