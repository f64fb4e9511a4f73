#include "engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <random>
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

// The draw as a full sort defines it (the sampler sorts only as far as the
// cuts and the draw reach): candidates by decreasing logit, top-k, softmax
// at the temperature, min-p, top-p, then the uniform walked in that order.
int32_t FullSortDraw(const std::vector<float>& l, const SamplingOptions& o, double uniform) {
  const int vocab = static_cast<int>(l.size());
  std::vector<int32_t> order(vocab);
  for (int i = 0; i < vocab; ++i) order[i] = i;
  std::sort(order.begin(), order.end(),
            [&](int32_t a, int32_t b) { return l[a] > l[b] || (l[a] == l[b] && a < b); });
  const int k = o.top_k > 0 ? std::min(o.top_k, vocab) : vocab;
  std::vector<double> p(k);
  double total = 0;
  for (int i = 0; i < k; ++i)
    total += p[i] = std::exp(double(l[order[i]] - l[order[0]]) / o.temperature);
  int keep = k;
  double cumulative = 0;
  for (int i = 0; i < k; ++i) {
    p[i] /= total;
    if (o.min_p > 0 && i > 0 && p[i] < o.min_p * p[0]) {
      keep = i;
      break;
    }
    cumulative += p[i];
    if (o.top_p < 1 && cumulative >= o.top_p) {
      keep = i + 1;
      break;
    }
  }
  double kept = 0;
  for (int i = 0; i < keep; ++i) kept += p[i];
  double acc = 0;
  for (int i = 0; i < keep; ++i) {
    acc += p[i];
    if (uniform * kept < acc) return order[i];
  }
  return order[keep - 1];
}

// A vocabulary of LLM shape (a long tail, a few strong candidates, ties):
// every cut and the plain draw choose what the full sort chooses. With
// top-k the sums are the reference's own, so every draw is equal; over the
// whole vocabulary the denominator is summed differently (vectorized), so
// a draw landing within rounding of a boundary may differ: none may here.
TEST(SamplerTest, DrawsEqualAFullSortOfTheVocabulary) {
  constexpr int kVocab = 20000;
  std::mt19937 rng(11);
  std::normal_distribution<float> tail(0.f, 2.f);
  std::vector<float> logits(kVocab);
  for (float& l : logits) l = tail(rng);
  for (int i = 0; i < 30; ++i) logits[rng() % kVocab] = 9.f + (i % 5);  // Ties too.
  struct Case {
    float temperature, top_p, min_p;
    int top_k;
  };
  for (const Case& c : std::vector<Case>{{0.7f, 0.9f, 0.f, 0},
                                         {1.0f, 1.f, 0.f, 0},
                                         {3.0f, 0.99f, 0.f, 0},
                                         {1.2f, 1.f, 0.05f, 0},
                                         {1.0f, 1.f, 0.f, 50},
                                         {0.8f, 0.95f, 0.f, 5000},
                                         {2.0f, 0.5f, 0.01f, 300}}) {
    SamplingOptions o;
    o.temperature = c.temperature;
    o.top_p = c.top_p;
    o.min_p = c.min_p;
    o.top_k = c.top_k;
    for (uint64_t step = 0; step < 60; ++step) {
      const SampledToken t = Sample(logits.data(), kVocab, o, {}, {}, 99, step);
      EXPECT_EQ(t.id, FullSortDraw(logits, o, DrawUniform(99, step)))
          << "T=" << c.temperature << " top_p=" << c.top_p << " min_p=" << c.min_p
          << " top_k=" << c.top_k << " step " << step;
    }
  }
}

// What a broken checkpoint may put in the logits never crashes the sampler
// or escapes the vocabulary: a NaN is never chosen, +inf always is.
TEST(SamplerTest, NonFiniteLogitsAreHandled) {
  const float nan = std::nanf(""), inf = INFINITY;
  SamplingOptions greedy, sampled;
  sampled.temperature = 0.8f;
  sampled.top_p = 0.9f;
  sampled.logprobs = 2;
  const std::vector<float> with_inf = {1.f, nan, inf, -inf, 3.f};
  EXPECT_EQ(Sample(with_inf.data(), 5, greedy, {}, {}, 1, 0).id, 2);
  for (uint64_t step = 0; step < 50; ++step) {
    EXPECT_EQ(Sample(with_inf.data(), 5, sampled, {}, {}, 1, step).id, 2);
  }
  const std::vector<float> with_nan = {nan, 1.f, nan, 2.f, -inf};
  EXPECT_EQ(Sample(with_nan.data(), 5, greedy, {}, {}, 1, 0).id, 3);
  for (uint64_t step = 0; step < 50; ++step) {
    const int32_t id = Sample(with_nan.data(), 5, sampled, {}, {}, 1, step).id;
    EXPECT_TRUE(id == 1 || id == 3) << id;
  }
  for (const std::vector<float>& hopeless :
       {std::vector<float>(4, -inf), std::vector<float>(4, nan)}) {
    EXPECT_LT(Sample(hopeless.data(), 4, greedy, {}, {}, 1, 0).id, 4);
    EXPECT_LT(Sample(hopeless.data(), 4, sampled, {}, {}, 1, 0).id, 4);
  }
}

// At low temperatures the probabilities are a few near-ties and a sea of
// zeros: no draw may land on a token of probability 0, or on a masked one.
TEST(SamplerTest, DrawsNeverLandOnImpossibleTokens) {
  const float inf = INFINITY;
  SamplingOptions o;
  o.temperature = 1e-6f;
  const std::vector<float> near_tie = {25.894127f, 25.894125f, -5.f, -inf};
  std::map<int32_t, int> counts;
  for (uint64_t step = 0; step < 2000; ++step)
    ++counts[Sample(near_tie.data(), 4, o, {}, {}, 3, step).id];
  EXPECT_EQ(counts[2] + counts[3], 0);
  // Token 1 is one float (1.9e-6) below token 0: e^-1.9 of its probability.
  EXPECT_GT(counts[0], counts[1]);
  EXPECT_GT(counts[1], 0);
  // A masked vocabulary (-inf) with a narrow tail, at ordinary settings.
  std::vector<float> masked(5000, -inf);
  std::mt19937 rng(4);
  std::normal_distribution<float> tail(-16.5f, 0.3f);
  for (int i = 0; i < 3000; ++i) masked[i] = tail(rng);
  masked[4321 % 3000] = 0.f;
  for (float temperature : {0.3f, 1.f}) {
    for (float top_p : {1.f, 0.999f}) {
      o.temperature = temperature;
      o.top_p = top_p;
      for (uint64_t step = 0; step < 500; ++step) {
        const int32_t id = Sample(masked.data(), 5000, o, {}, {}, 8, step).id;
        ASSERT_LT(id, 3000) << "a masked token, T=" << temperature << " top_p=" << top_p;
      }
    }
  }
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
