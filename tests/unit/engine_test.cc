#include "engine/engine.h"

#include <cstring>
#include <future>
#include <map>
#include <optional>

#include "engine/engine_loop.h"
#include "engine/safetensors.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/support/golden.h"

namespace baton {
namespace {

using ::testing::HasSubstr;

const std::string kTinyA = std::string(BATON_TEST_DATA) + "/golden/tiny-a";

std::vector<int32_t> GoldenIds(const std::string& name) {
  auto file = SafetensorsFile::Open(kTinyA + "/golden.safetensors");
  return golden::ReadIds(**file, name);
}

std::unique_ptr<Engine> MakeEngine(EngineOptions options = {}) {
  auto model = DeepseekModel::Load(kTinyA, {});
  EXPECT_TRUE(model.ok()) << model.status();
  options.threads = 2;
  auto engine = Engine::Create(std::move(*model), options);
  EXPECT_TRUE(engine.ok()) << engine.status();
  return std::move(*engine);
}

struct Outcome {
  std::vector<int32_t> tokens;
  std::vector<float> logprobs;
  FinishReason finish = FinishReason::kNone;
  int64_t completion_tokens = 0;
};

std::map<int64_t, Outcome> RunToCompletion(Engine& engine) {
  std::map<int64_t, Outcome> out;
  for (int guard = 0; engine.HasWork() && guard < 100000; ++guard) {
    for (const TokenEvent& e : engine.Step()) {
      if (e.has_token) {
        out[e.request_id].tokens.push_back(e.token.id);
        out[e.request_id].logprobs.push_back(e.token.logprob);
      }
      if (e.finish != FinishReason::kNone) {
        out[e.request_id].finish = e.finish;
        out[e.request_id].completion_tokens = e.completion_tokens;
      }
    }
  }
  return out;
}

TEST(EngineTest, GreedyGenerationGivesTheGoldenTokens) {
  auto engine = MakeEngine();
  EngineRequest r;
  r.id = 1;
  r.prompt = GoldenIds("input_ids");
  r.sampling.max_tokens = 9;
  ASSERT_TRUE(engine->Add(r).ok());
  auto out = RunToCompletion(*engine);
  EXPECT_EQ(out[1].tokens, GoldenIds("greedy_tokens"));
  EXPECT_EQ(out[1].finish, FinishReason::kLength);
  EXPECT_EQ(engine->stats().kv_blocks_used, 0);
}

// Requests with mixed lengths, greedy and seeded, under a small budget (so
// prefills are chunked) and a small KV cache (so sequences are preempted):
// each must give the tokens it gives alone.
TEST(EngineTest, ConcurrentRequestsMatchTheirSoloRuns) {
  std::vector<EngineRequest> requests;
  const std::vector<int32_t> golden = GoldenIds("input_ids");
  for (int i = 0; i < 24; ++i) {
    EngineRequest r;
    r.id = 100 + i;
    r.prompt.assign(golden.begin() + i % 5, golden.begin() + 5 + (i * 7) % 60);
    r.sampling.max_tokens = 3 + (i * 5) % 20;
    if (i % 2 == 1) {
      r.sampling.temperature = 0.8f;
      r.sampling.top_p = 0.9f;
      r.sampling.top_k = 40;
      r.sampling.seed = 1234 + i;
    }
    requests.push_back(r);
  }
  std::map<int64_t, Outcome> solo;
  {
    auto engine = MakeEngine();
    for (const EngineRequest& r : requests) {
      ASSERT_TRUE(engine->Add(r).ok());
      solo[r.id] = RunToCompletion(*engine)[r.id];
    }
  }
  EngineOptions tight;
  tight.step_token_budget = 48;
  tight.kv_block_size = 4;
  tight.kv_cache_bytes = 3 * 48 * 4 * 4 * 40;  // 40 blocks of 4 tokens: forces preemption.
  auto engine = MakeEngine(tight);
  for (const EngineRequest& r : requests) ASSERT_TRUE(engine->Add(r).ok());
  auto together = RunToCompletion(*engine);
  for (const EngineRequest& r : requests) {
    EXPECT_EQ(together[r.id].tokens, solo[r.id].tokens) << "request " << r.id;
    ASSERT_EQ(together[r.id].logprobs.size(), solo[r.id].logprobs.size());
    for (size_t k = 0; k < solo[r.id].logprobs.size(); ++k) {
      EXPECT_NEAR(together[r.id].logprobs[k], solo[r.id].logprobs[k], 1e-5);
    }
  }
  EXPECT_GT(engine->stats().preemptions, 0) << "the cache was meant to be too small";
  EXPECT_EQ(engine->stats().kv_blocks_used, 0);
}

// The disaggregated handoff inside the engine: a prefill-only engine computes
// the prompt, ships each layer's KV and samples the first token; another
// engine imports that KV, takes the token, and decodes the rest. Tokens and
// logprobs must equal a colocated run bit for bit, sampled or greedy, and
// a first token that ends the request must end it.
TEST(EngineTest, PrefillHandoffContinuesExactlyAsColocated) {
  const std::vector<int32_t> golden = GoldenIds("input_ids");
  for (int variant = 0; variant < 3; ++variant) {
    EngineRequest r;
    r.id = 7;
    r.prompt.assign(golden.begin(), golden.begin() + 9 + 20 * variant);
    r.sampling.max_tokens = variant == 2 ? 1 : 12;
    r.sampling.seed = 99 + variant;
    r.sampling.logprobs = 3;
    if (variant == 1) {
      r.sampling.temperature = 0.9f;
      r.sampling.top_k = 20;
      r.sampling.repetition_penalty = 1.2f;
    }
    auto colocated_engine = MakeEngine();
    ASSERT_TRUE(colocated_engine->Add(r).ok());
    const Outcome colocated = RunToCompletion(*colocated_engine)[7];

    EngineOptions small_steps;
    small_steps.step_token_budget = 16;  // The prompt crosses several steps.
    auto prefill = MakeEngine(small_steps);
    auto decode = MakeEngine();
    const int layers = prefill->config().num_hidden_layers;
    const int64_t row_bytes = prefill->kv_cache().row_bytes();
    std::vector<std::vector<uint8_t>> shipped(layers);  // [layer][pos][row bytes]
    EngineRequest p = r;
    p.prefill_only = true;
    p.sampling.max_tokens = 1;
    p.kv_sink = [&](int layer, int64_t begin, int64_t end, std::vector<uint8_t> rows) {
      ASSERT_EQ(static_cast<int64_t>(shipped[layer].size()), begin * row_bytes) << "out of order";
      ASSERT_EQ(static_cast<int64_t>(rows.size()), (end - begin) * row_bytes);
      shipped[layer].insert(shipped[layer].end(), rows.begin(), rows.end());
    };
    ASSERT_TRUE(prefill->Add(p).ok());
    std::optional<SampledToken> first;
    for (int guard = 0; prefill->HasWork() && guard < 1000; ++guard) {
      for (const TokenEvent& e : prefill->Step()) {
        if (e.finish == FinishReason::kPrefilled && e.has_token) first = e.token;
      }
    }
    ASSERT_TRUE(first.has_value());
    EXPECT_EQ(prefill->stats().kv_blocks_used, 0);

    EngineRequest d = r;
    d.external_prefill = true;
    ASSERT_TRUE(decode->Add(d).ok());
    std::vector<int32_t> blocks;
    for (const TokenEvent& e : decode->Step()) {
      if (e.kv_reserved) blocks = e.kv_blocks;
    }
    ASSERT_FALSE(blocks.empty());
    const int64_t n = static_cast<int64_t>(r.prompt.size());
    for (int layer = 0; layer < layers; ++layer) {
      ASSERT_EQ(static_cast<int64_t>(shipped[layer].size()), n * row_bytes);
      ASSERT_TRUE(decode->kv_cache().ImportLayer(layer, blocks, 0, n, shipped[layer].data()).ok());
    }
    std::optional<TokenEvent> handed = decode->ImportDone(7, *first);
    ASSERT_TRUE(handed.has_value());
    Outcome split;
    split.tokens.push_back(handed->token.id);
    split.logprobs.push_back(handed->token.logprob);
    split.finish = handed->finish;
    for (const auto& [id, rest] : RunToCompletion(*decode)) {
      split.tokens.insert(split.tokens.end(), rest.tokens.begin(), rest.tokens.end());
      split.logprobs.insert(split.logprobs.end(), rest.logprobs.begin(), rest.logprobs.end());
      split.finish = rest.finish;
    }
    EXPECT_EQ(split.tokens, colocated.tokens) << "variant " << variant;
    EXPECT_EQ(split.logprobs, colocated.logprobs) << "variant " << variant;
    EXPECT_EQ(split.finish, colocated.finish) << "variant " << variant;
    EXPECT_EQ(decode->stats().kv_blocks_used, 0);
  }
}

// KV rows arriving for a request awaiting them must be exactly its cache's
// rows: a sender with another row size (another dtype) is refused, naming
// both sizes, and never copied from.
TEST(EngineTest, ImportKvRefusesRowsOfTheWrongSize) {
  EngineLoop loop(MakeEngine(), {});
  EngineRequest r;
  r.prompt = {3, 4, 5, 6, 7};
  r.sampling.max_tokens = 4;
  r.external_prefill = true;
  std::promise<void> reserved;
  auto id = loop.Submit(r, [&](const TokenEvent& e) {
    if (e.kv_reserved) reserved.set_value();
  });
  ASSERT_TRUE(id.ok()) << id.status();
  reserved.get_future().wait();
  const int64_t row_bytes = loop.engine().kv_cache().row_bytes();
  std::vector<uint8_t> rows(5 * row_bytes);
  absl::Status wrong = loop.ImportKv(*id, 0, 0, 5, rows.data(), rows.size() / 2);
  EXPECT_EQ(wrong.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(wrong.message()), HasSubstr("bytes"));
  EXPECT_TRUE(loop.ImportKv(*id, 0, 0, 5, rows.data(), rows.size()).ok());
  loop.Cancel(*id);
}

TEST(EngineTest, CancelFreesBlocksAtOnce) {
  auto engine = MakeEngine();
  EngineRequest a, b;
  a.id = 1;
  b.id = 2;
  a.prompt = b.prompt = GoldenIds("input_ids");
  a.sampling.max_tokens = b.sampling.max_tokens = 50;
  a.sampling.ignore_eos = b.sampling.ignore_eos = true;
  ASSERT_TRUE(engine->Add(a).ok());
  ASSERT_TRUE(engine->Add(b).ok());
  engine->Step();
  engine->Step();
  const int64_t used = engine->stats().kv_blocks_used;
  ASSERT_GT(used, 0);
  engine->Cancel(1);
  EXPECT_LT(engine->stats().kv_blocks_used, used);
  auto out = RunToCompletion(*engine);
  EXPECT_EQ(out[1].finish, FinishReason::kCancelled);
  EXPECT_EQ(out[2].finish, FinishReason::kLength);
  EXPECT_EQ(out[2].completion_tokens, 50);
  EXPECT_EQ(engine->stats().kv_blocks_used, 0);
}

TEST(EngineTest, StopTokenEndsTheRequest) {
  auto engine = MakeEngine();
  const std::vector<int32_t> greedy = GoldenIds("greedy_tokens");
  EngineRequest r;
  r.id = 7;
  r.prompt = GoldenIds("input_ids");
  r.sampling.max_tokens = 9;
  r.sampling.stop_token_ids = {greedy[3]};
  ASSERT_TRUE(engine->Add(r).ok());
  auto out = RunToCompletion(*engine);
  EXPECT_EQ(out[7].finish, FinishReason::kStop);
  EXPECT_EQ(out[7].tokens.back(), greedy[3]);
  EXPECT_LE(out[7].tokens.size(), 4u);
}

TEST(EngineTest, ValidationNamesTheField) {
  auto engine = MakeEngine();
  EngineRequest r;
  r.id = 1;
  EXPECT_THAT(std::string(engine->Validate(r).message()), HasSubstr("prompt is empty"));
  r.prompt = {1, 2, 999};
  EXPECT_THAT(std::string(engine->Validate(r).message()), HasSubstr("input.token_ids[2]"));
  r.prompt = {1, 2, 3};
  r.sampling.max_tokens = 0;
  EXPECT_THAT(std::string(engine->Validate(r).message()), HasSubstr("max_tokens"));
  r.sampling.max_tokens = 300;
  EXPECT_THAT(std::string(engine->Validate(r).message()), HasSubstr("context length"));
  r.sampling.max_tokens = 10;
  r.sampling.temperature = -1;
  EXPECT_THAT(std::string(engine->Validate(r).message()), HasSubstr("temperature"));
  r.sampling.temperature = 1;
  r.sampling.top_p = 0;
  EXPECT_THAT(std::string(engine->Validate(r).message()), HasSubstr("top_p"));
  r.sampling.top_p = 1;
  r.sampling.logprobs = 21;
  EXPECT_THAT(std::string(engine->Validate(r).message()), HasSubstr("logprobs"));
  r.sampling.logprobs = 20;
  EXPECT_TRUE(engine->Validate(r).ok());
}

}  // namespace
}  // namespace baton
