// Runs the real `baton` binary and checks what a user sees.
#include <sys/wait.h>

#include <cstdio>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace {

using ::testing::HasSubstr;

struct Result {
  int exit_code;
  std::string output;  // stdout and stderr together.
};

Result RunBaton(const std::string& args) {
  std::string command = std::string(BATON_BIN) + " " + args + " 2>&1";
  FILE* pipe = popen(command.c_str(), "r");
  Result result{-1, ""};
  if (pipe == nullptr) return result;
  char buffer[4096];
  size_t n;
  while ((n = fread(buffer, 1, sizeof(buffer), pipe)) > 0) result.output.append(buffer, n);
  int status = pclose(pipe);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

TEST(CliTest, HelpListsEverySubcommand) {
  Result r = RunBaton("--help");
  EXPECT_EQ(r.exit_code, 0);
  for (const char* sub : {"serve", "prefill", "decode", "router", "generate", "bench", "version"}) {
    EXPECT_THAT(r.output, HasSubstr(std::string("  ") + sub)) << sub;
  }
}

TEST(CliTest, VersionPrints) {
  Result r = RunBaton("version");
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_THAT(r.output, HasSubstr("baton "));
}

TEST(CliTest, UnknownSubcommandFails) {
  Result r = RunBaton("frobnicate");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.output, HasSubstr("unknown subcommand"));
}

TEST(CliTest, UnknownFlagFails) {
  Result r = RunBaton("version --bogus");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.output, HasSubstr("--bogus"));
}

TEST(CliTest, ANameThatIsNoDeviceIsRefusedBeforeLoading) {
  for (const char* sub : {"serve --port 0 --metrics-port 0", "prefill --port 0 --metrics-port 0",
                          "decode --port 0 --metrics-port 0", "perplexity --text /dev/null"}) {
    Result r = RunBaton(std::string(sub) + " --device tpu:0");
    EXPECT_NE(r.exit_code, 0) << sub;
    EXPECT_THAT(r.output, HasSubstr("--device: 'tpu:0' is not a device")) << sub;
  }
}

TEST(CliTest, NoArgumentsPrintsUsageAndFails) {
  Result r = RunBaton("");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.output, HasSubstr("usage: baton SUBCOMMAND"));
}

}  // namespace
