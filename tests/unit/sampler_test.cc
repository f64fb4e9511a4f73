#include "engine/sampler.h"

#include <cmath>
#include <map>
#include <vector>

#include "gtest/gtest.h"

namespace baton {
namespace {

const std::vector<float> kLogits = {1.0f, 3.0f, 2.0f, -1.0f, 2.5f};

float LogSoftmax(const std::vector<float>& l, int i) {
  double z = 0;
  for (float v : l) z += std::exp(v);
  return l[i] - static_cast<float>(std::log(z));
}

TEST(SamplerTest, GreedyPicksTheArgmaxWithItsLogprob) {
  SamplingOptions o;
  o.logprobs = 3;
  SampledToken t = Sample(kLogits.data(), 5, o, {}, {}, 0, 0);
  EXPECT_EQ(t.id, 1);
  EXPECT_NEAR(t.logprob, LogSoftmax(kLogits, 1), 1e-6);
  ASSERT_EQ(t.top_logprobs.size(), 3u);
  EXPECT_EQ(t.top_logprobs[0].first, 1);
  EXPECT_EQ(t.top_logprobs[1].first, 4);
  EXPECT_EQ(t.top_logprobs[2].first, 2);
  EXPECT_NEAR(t.top_logprobs[2].second, LogSoftmax(kLogits, 2), 1e-6);
}

TEST(SamplerTest, SeededSamplingIsReproducibleAndFollowsTheDistribution) {
  SamplingOptions o;
  o.temperature = 1.0f;
  std::map<int, int> counts;
  const int n = 20000;
  for (int step = 0; step < n; ++step) {
    SampledToken a = Sample(kLogits.data(), 5, o, {}, {}, 42, step);
    SampledToken b = Sample(kLogits.data(), 5, o, {}, {}, 42, step);
    EXPECT_EQ(a.id, b.id);
    ++counts[a.id];
  }
  for (int i = 0; i < 5; ++i) {
    EXPECT_NEAR(counts[i] / double{n}, std::exp(LogSoftmax(kLogits, i)), 0.015) << i;
  }
}

TEST(SamplerTest, TopKTopPMinPRestrictTheCandidates) {
  SamplingOptions o;
  o.temperature = 1.0f;
  o.top_k = 2;
  for (int step = 0; step < 500; ++step) {
    int id = Sample(kLogits.data(), 5, o, {}, {}, 1, step).id;
    EXPECT_TRUE(id == 1 || id == 4) << id;
  }
  o.top_k = 0;
  o.top_p = 0.3f;  // The top token alone has p ~ 0.44.
  for (int step = 0; step < 200; ++step)
    EXPECT_EQ(Sample(kLogits.data(), 5, o, {}, {}, 1, step).id, 1);
  o.top_p = 1.0f;
  o.min_p = 0.5f;  // Keeps tokens with p >= 0.5 * p(top): ids 1 and 4 (e^-0.5 = 0.61).
  for (int step = 0; step < 500; ++step) {
    int id = Sample(kLogits.data(), 5, o, {}, {}, 1, step).id;
    EXPECT_TRUE(id == 1 || id == 4) << id;
  }
}

TEST(SamplerTest, PenaltiesDemoteSeenTokens) {
  SamplingOptions o;
  o.repetition_penalty = 2.0f;  // 3.0 -> 1.5 for token 1; 2.5 stays for token 4.
  EXPECT_EQ(Sample(kLogits.data(), 5, o, {1}, {}, 0, 0).id, 4);
  SamplingOptions f;
  f.frequency_penalty = 0.4f;  // Token 1 seen twice: 3.0 - 0.8 = 2.2 < 2.5.
  EXPECT_EQ(Sample(kLogits.data(), 5, f, {}, {1, 1}, 0, 0).id, 4);
  SamplingOptions p;
  p.presence_penalty = 0.4f;  // Seen once or twice: 2.6 > 2.5.
  EXPECT_EQ(Sample(kLogits.data(), 5, p, {}, {1, 1}, 0, 0).id, 1);
  // Logprobs stay those of the raw logits.
  EXPECT_NEAR(Sample(kLogits.data(), 5, o, {1}, {}, 0, 0).logprob, LogSoftmax(kLogits, 4), 1e-6);
}

TEST(SamplerTest, ValidationNamesTheField) {
  SamplingOptions o;
  EXPECT_TRUE(ValidateSamplingOptions(o).ok());
  o.min_p = 2;
  EXPECT_NE(std::string(ValidateSamplingOptions(o).message()).find("min_p"), std::string::npos);
  o.min_p = 0;
  o.repetition_penalty = 0;
  EXPECT_NE(std::string(ValidateSamplingOptions(o).message()).find("repetition_penalty"),
            std::string::npos);
}

}  // namespace
}  // namespace baton
