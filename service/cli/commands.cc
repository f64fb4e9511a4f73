#include "service/cli/commands.h"

#include <cstdio>

#include "service/cli/flag_set.h"

namespace baton::cli {

int RunVersion(const Args& args) {
  FlagSet flags("baton version", "Prints the version of baton.");
  if (absl::Status s = flags.Parse(args); !s.ok()) {
    std::fprintf(stderr, "baton version: %s\n", std::string(s.message()).c_str());
    return 2;
  }
  if (flags.help_requested()) {
    std::fputs(flags.HelpText().c_str(), stdout);
    return 0;
  }
  std::printf("baton %s\n", BATON_VERSION);
  return 0;
}

const std::vector<Command>& AllCommands() {
  static const std::vector<Command> kCommands = {
      {"serve", "serve a model over gRPC: prefill and decode in one process", &RunServe},
      {"prefill", "run a prefill worker that pushes KV to decode workers", &RunPrefill},
      {"decode", "run a decode worker that receives KV and streams tokens", &RunDecode},
      {"router", "the public endpoint in front of prefill and decode pools", &RunRouter},
      {"generate", "stream a completion from a running server to stdout", &RunGenerate},
      {"bench", "measure latency and throughput of a running server", &RunBench},
      {"perplexity", "bits per byte of a text under a model (engine only, no server)",
       &RunPerplexity},
      {"version", "print the version", &RunVersion},
  };
  return kCommands;
}

}  // namespace baton::cli
