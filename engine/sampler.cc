#include "engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <optional>
#include <unordered_map>

#include "absl/strings/str_cat.h"
#include "engine/kernels.h"

namespace baton {
namespace {

// SplitMix64: a counter-based generator, so the draw for (seed, step) never
// depends on what else was sampled before it.
uint64_t Mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

double Uniform(uint64_t seed, uint64_t step) {
  return static_cast<double>(Mix(Mix(seed) ^ step) >> 11) * 0x1.0p-53;
}

// log(sum(exp(x))) over n values, with the vectorized kernels (scratch
// receives the exponentials): a scalar double exp per vocabulary entry cost
// 1 ms per token at DeepSeek-V3's 129280.
float LogSumExp(const float* x, int n, std::vector<float>& scratch, float* max) {
  scratch.assign(x, x + n);
  float sum = 0.f;
  kernels::ExpAndSum(scratch.data(), n, max, &sum);
  return *max + std::log(sum);
}

// Token a before token b: the larger logit first, ties to the lower id.
struct ByLogit {
  const float* logits;
  bool operator()(int32_t a, int32_t b) const {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  }
};

// The candidates of a temperature draw in the order a full sort by
// decreasing logit (ties: lower id first) gives, sorted only as far as the
// cuts and the draw reach. One pass buckets the tokens by how far below the
// best logit they are (within 2, 4, 8, 16, 32 temperatures: probabilities
// down to e^-2, e^-4, ... of the best's, and the rest); a bucket is
// gathered and sorted when the walk first reaches it. Sorting all 129280
// took 24 ms a token.
class CandidateOrder {
 public:
  CandidateOrder(const float* logits, int vocab, float best, float temperature)
      : before_{logits}, bucket_(vocab) {
    static constexpr float kWindows[] = {2.f, 4.f, 8.f, 16.f, 32.f};
    const float inverse = 1.f / temperature;
    for (int i = 0; i < vocab; ++i) {
      const float below = (best - logits[i]) * inverse;  // NaN: the last bucket.
      uint8_t b = 0;
      for (float window : kWindows) b += !(below <= window);
      bucket_[i] = b;
    }
  }

  // The i-th candidate; i < the vocabulary size.
  int32_t at(int i) {
    while (i >= static_cast<int>(order_.size())) {
      const size_t first = order_.size();
      const uint8_t b = next_bucket_++;
      for (int32_t id = 0; id < static_cast<int32_t>(bucket_.size()); ++id) {
        if (bucket_[id] == b) order_.push_back(id);
      }
      std::sort(order_.begin() + first, order_.end(), before_);
    }
    return order_[i];
  }

 private:
  const ByLogit before_;
  std::vector<uint8_t> bucket_;
  std::vector<int32_t> order_;  // Sorted: the buckets gathered so far.
  uint8_t next_bucket_ = 0;
};

// The token `uniform` (in [0, 1)) draws from the adjusted logits at the
// options' temperature, among the top-k candidates cut by min-p and then
// top-p (in candidate order), as the probabilities of the top-k renormalized.
int32_t Draw(const float* adjusted, int vocab, float best, const SamplingOptions& o, double uniform,
             std::vector<float>& scratch) {
  const int k = o.top_k > 0 ? std::min(o.top_k, vocab) : vocab;
  CandidateOrder order(adjusted, vocab, best, o.temperature);
  // The softmax's denominator over the k candidates.
  double total = 0;
  if (k == vocab) {
    // The exponents as the probabilities below take them (the difference
    // first, then the temperature): dividing first would round each by an
    // ulp of logit / T, which at small temperatures is most of the value.
    scratch.resize(vocab);
    for (int i = 0; i < vocab; ++i) scratch[i] = (adjusted[i] - best) / o.temperature;
    float max = 0.f, sum = 0.f;
    kernels::ExpAndSum(scratch.data(), vocab, &max, &sum);
    total = sum * std::exp(static_cast<double>(max));
  } else {
    for (int i = 0; i < k; ++i) {
      total += std::exp(static_cast<double>(adjusted[order.at(i)] - best) / o.temperature);
    }
  }
  std::vector<double> probs;  // Of the candidates walked so far, in order.
  auto prob = [&](int i) {
    while (static_cast<int>(probs.size()) <= i) {
      const int j = static_cast<int>(probs.size());
      probs.push_back(std::exp(static_cast<double>(adjusted[order.at(j)] - best) / o.temperature) /
                      total);
    }
    return probs[i];
  };
  // min-p, then top-p: both cut the candidate order somewhere.
  int keep = k;
  if (o.min_p > 0.0f || o.top_p < 1.0f) {
    double cumulative = 0;
    for (int i = 0; i < k; ++i) {
      if (o.min_p > 0.0f && i > 0 && prob(i) < o.min_p * prob(0)) {
        keep = i;
        break;
      }
      cumulative += prob(i);
      if (o.top_p < 1.0f && cumulative >= o.top_p) {
        keep = i + 1;
        break;
      }
    }
  }
  double kept_total = 1.0;  // All k candidates: the renormalized whole.
  if (keep < k) {
    kept_total = 0;
    for (int i = 0; i < keep; ++i) kept_total += prob(i);
  }
  // The first kept candidate whose cumulative probability passes `target`,
  // or none; either way the probabilities walked add up to `walked`.
  double walked = 0;
  auto walk = [&](double target) -> std::optional<int32_t> {
    walked = 0;
    for (int i = 0; i < keep; ++i) {
      walked += prob(i);
      if (target < walked) return order.at(i);
    }
    return std::nullopt;
  };
  if (auto id = walk(uniform * kept_total)) return *id;
  // The float denominator came out above the probabilities' double sum (by
  // rounding, ~1e-5 at most): draw again within what was walked, never
  // handing the leftover to the last, least likely candidate.
  if (auto id = walk(uniform * walked)) return *id;
  return order.at(0);
}

absl::Status Invalid(const std::string& field, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat("sampling.", field, " ", what));
}

}  // namespace

double DrawUniform(uint64_t seed, uint64_t step) { return Uniform(seed, step); }

absl::Status ValidateSamplingOptions(const SamplingOptions& o) {
  if (!(o.temperature >= 0.0f) || !std::isfinite(o.temperature)) {
    return Invalid("temperature", "must be >= 0");
  }
  if (o.top_k < 0) return Invalid("top_k", "must be >= 0");
  if (!(o.top_p > 0.0f && o.top_p <= 1.0f)) return Invalid("top_p", "must be in (0, 1]");
  if (!(o.min_p >= 0.0f && o.min_p <= 1.0f)) return Invalid("min_p", "must be in [0, 1]");
  if (o.logprobs < 0 || o.logprobs > kMaxLogprobs) {
    return Invalid("logprobs", absl::StrCat("must be in [0, ", kMaxLogprobs, "]"));
  }
  if (!(o.repetition_penalty > 0.0f) || !std::isfinite(o.repetition_penalty)) {
    return Invalid("repetition_penalty", "must be > 0");
  }
  if (!std::isfinite(o.frequency_penalty) || std::fabs(o.frequency_penalty) > 2.0f) {
    return Invalid("frequency_penalty", "must be in [-2, 2]");
  }
  if (!std::isfinite(o.presence_penalty) || std::fabs(o.presence_penalty) > 2.0f) {
    return Invalid("presence_penalty", "must be in [-2, 2]");
  }
  return absl::OkStatus();
}

SampledToken Sample(const float* logits, int vocab, const SamplingOptions& o,
                    const std::vector<int32_t>& prompt, const std::vector<int32_t>& output,
                    uint64_t seed, uint64_t step) {
  // Log-probabilities of the raw distribution, reported whatever the sampling.
  std::vector<float> scratch;
  float max_logit = 0.f;
  const float log_z = LogSumExp(logits, vocab, scratch, &max_logit);

  // The logits the choice is made from: the raw ones, or a copy that is
  // penalized, or cleaned of what a broken model may produce (a NaN is
  // never chosen; +inf becomes a large finite logit that still wins, and
  // still does when divided by a small temperature): the candidate order
  // needs a strict weak order, and a NaN has none.
  const float* choice = logits;
  std::vector<float> adjusted;
  const bool penalized =
      o.repetition_penalty != 1.0f || o.frequency_penalty != 0.0f || o.presence_penalty != 0.0f;
  if (penalized || !std::isfinite(log_z)) {
    adjusted.assign(logits, logits + vocab);
    choice = adjusted.data();
    for (float& l : adjusted) {
      if (std::isnan(l)) l = -INFINITY;
      if (l == INFINITY) l = 1e30f;
    }
  }
  if (penalized) {
    std::unordered_map<int32_t, int> output_counts;
    for (int32_t t : output) ++output_counts[t];
    if (o.repetition_penalty != 1.0f) {
      std::vector<bool> seen(vocab, false);
      for (const auto* tokens : {&prompt, &output}) {
        for (int32_t t : *tokens) {
          if (t < 0 || t >= vocab || seen[t]) continue;
          seen[t] = true;
          float& l = adjusted[t];
          l = l > 0 ? l / o.repetition_penalty : l * o.repetition_penalty;
        }
      }
    }
    for (const auto& [t, count] : output_counts) {
      if (t < 0 || t >= vocab) continue;
      adjusted[t] -= o.frequency_penalty * count + o.presence_penalty;
    }
  }

  SampledToken result;
  // The raw maximum is known already.
  const float best = choice == logits ? max_logit : *std::max_element(choice, choice + vocab);
  if (o.temperature == 0.0f) {
    result.id =
        static_cast<int32_t>(std::find(choice, choice + vocab, best) - choice);  // The first.
    if (result.id == vocab) result.id = 0;  // Every logit -inf (or NaN).
  } else {
    result.id = Draw(choice, vocab, best, o, Uniform(seed, step), scratch);
  }
  result.logprob = logits[result.id] - log_z;
  if (o.logprobs > 0) {
    // The n best in one pass: most tokens lose to the n-th best so far at
    // the first comparison (a partial sort of the vocabulary cost 0.4 ms).
    const size_t n = static_cast<size_t>(std::min(o.logprobs, vocab));
    const ByLogit before{logits};
    std::vector<int32_t> top;
    top.reserve(n + 1);
    for (int32_t i = 0; i < vocab; ++i) {
      if (top.size() == n && !before(i, top.back())) continue;
      top.insert(std::upper_bound(top.begin(), top.end(), i, before), i);
      if (top.size() > n) top.pop_back();
    }
    for (int32_t id : top) result.top_logprobs.push_back({id, logits[id] - log_z});
  }
  return result;
}

}  // namespace baton
