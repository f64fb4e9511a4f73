// Turns a row of logits into the next token: penalties, greedy or
// temperature sampling with top-k / top-p / min-p, and log-probabilities.
// Randomness comes from a counter-based generator keyed by (seed, step), so a
// seeded request yields the same tokens whatever batch it runs in.
//
// Thread-safety: stateless functions; safe to call concurrently.
#ifndef BATON_ENGINE_SAMPLER_H_
#define BATON_ENGINE_SAMPLER_H_

#include <cstdint>
#include <optional>
#include <utility>
#include <vector>

#include "absl/status/status.h"

namespace baton {

struct SamplingOptions {
  int64_t max_tokens = 16;
  float temperature = 0.0f;  // 0: greedy.
  int top_k = 0;             // 0: off.
  float top_p = 1.0f;        // 1: off.
  float min_p = 0.0f;        // 0: off.
  std::optional<uint64_t> seed;
  std::vector<int32_t> stop_token_ids;
  bool ignore_eos = false;
  int logprobs = 0;  // Top alternatives to report per token, 0..20.
  float repetition_penalty = 1.0f;
  float frequency_penalty = 0.0f;
  float presence_penalty = 0.0f;
};

constexpr int kMaxLogprobs = 20;

// Checks ranges; the message names the offending field.
absl::Status ValidateSamplingOptions(const SamplingOptions& options);

struct SampledToken {
  int32_t id = 0;
  float logprob = 0.0f;                                 // log_softmax of the raw logits.
  std::vector<std::pair<int32_t, float>> top_logprobs;  // Highest first.
};

// `prompt` and `output` are the tokens so far (for penalties); `seed` is the
// request's seed and `step` the index of the token being sampled.
SampledToken Sample(const float* logits, int vocab, const SamplingOptions& options,
                    const std::vector<int32_t>& prompt, const std::vector<int32_t>& output,
                    uint64_t seed, uint64_t step);

// The uniform in [0, 1) that a temperature draw of a request seeded `seed`
// uses for its token `step` (exposed for tests of the draw).
double DrawUniform(uint64_t seed, uint64_t step);

}  // namespace baton

#endif  // BATON_ENGINE_SAMPLER_H_
