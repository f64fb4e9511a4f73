#include "service/cli/flag_set.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace baton::cli {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

TEST(FlagSetTest, ParsesEveryForm) {
  std::string model = "default";
  int64_t port = 0;
  double rate = 1.0;
  bool json = false, color = true;
  FlagSet flags("baton test [flags]", "A test.");
  flags.String("model", &model, "model directory");
  flags.Int("port", &port, "port");
  flags.Double("rate", &rate, "rate");
  flags.Bool("json", &json, "json");
  flags.Bool("color", &color, "color");
  ASSERT_TRUE(flags
                  .Parse({"--model", "m", "--port=50051", "--rate=2.5", "--json", "--no-color",
                          "prompt", "--", "--literal"})
                  .ok());
  EXPECT_EQ(model, "m");
  EXPECT_EQ(port, 50051);
  EXPECT_DOUBLE_EQ(rate, 2.5);
  EXPECT_TRUE(json);
  EXPECT_FALSE(color);
  EXPECT_THAT(flags.positional(), ElementsAre("prompt", "--literal"));
  EXPECT_FALSE(flags.help_requested());
}

TEST(FlagSetTest, ErrorsNameTheFlag) {
  int64_t port = 0;
  FlagSet flags("baton test [flags]", "A test.");
  flags.Int("port", &port, "port");
  EXPECT_THAT(std::string(flags.Parse({"--port=abc"}).message()), HasSubstr("--port"));
  EXPECT_THAT(std::string(flags.Parse({"--bogus"}).message()), HasSubstr("unknown flag --bogus"));
  EXPECT_THAT(std::string(flags.Parse({"--port"}).message()), HasSubstr("needs a value"));
}

TEST(FlagSetTest, HelpListsFlagsWithDefaults) {
  int64_t port = 50051;
  FlagSet flags("baton test [flags]", "A test.");
  flags.Int("port", &port, "the gRPC port");
  ASSERT_TRUE(flags.Parse({"--help"}).ok());
  EXPECT_TRUE(flags.help_requested());
  EXPECT_THAT(flags.HelpText(), HasSubstr("--port VALUE"));
  EXPECT_THAT(flags.HelpText(), HasSubstr("(default: 50051)"));
}

}  // namespace
}  // namespace baton::cli
