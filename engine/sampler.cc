#include "engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <unordered_map>

#include "absl/strings/str_cat.h"

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

absl::Status Invalid(const std::string& field, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat("sampling.", field, " ", what));
}

}  // namespace

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
  float max_logit = -INFINITY;
  for (int i = 0; i < vocab; ++i) max_logit = std::max(max_logit, logits[i]);
  double sum = 0;
  for (int i = 0; i < vocab; ++i) sum += std::exp(static_cast<double>(logits[i] - max_logit));
  const float log_z = max_logit + static_cast<float>(std::log(sum));

  std::vector<float> adjusted(logits, logits + vocab);
  if (o.repetition_penalty != 1.0f || o.frequency_penalty != 0.0f || o.presence_penalty != 0.0f) {
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
  if (o.temperature == 0.0f) {
    result.id =
        static_cast<int32_t>(std::max_element(adjusted.begin(), adjusted.end()) - adjusted.begin());
  } else {
    // Candidates by decreasing logit, cut by top-k, then softmax at the
    // temperature, then top-p and min-p on those probabilities.
    std::vector<int32_t> order(vocab);
    std::iota(order.begin(), order.end(), 0);
    const int k = o.top_k > 0 ? std::min(o.top_k, vocab) : vocab;
    auto by_logit = [&](int32_t a, int32_t b) {
      return adjusted[a] > adjusted[b] || (adjusted[a] == adjusted[b] && a < b);
    };
    std::partial_sort(order.begin(), order.begin() + k, order.end(), by_logit);
    order.resize(k);
    std::vector<double> probs(k);
    double total = 0;
    for (int i = 0; i < k; ++i) {
      probs[i] =
          std::exp(static_cast<double>(adjusted[order[i]] - adjusted[order[0]]) / o.temperature);
      total += probs[i];
    }
    int keep = k;
    double cumulative = 0;
    for (int i = 0; i < k; ++i) {
      probs[i] /= total;
      if (o.min_p > 0.0f && probs[i] < o.min_p * probs[0] && i > 0) {
        keep = std::min(keep, i);
      }
    }
    if (o.top_p < 1.0f) {
      for (int i = 0; i < keep; ++i) {
        cumulative += probs[i];
        if (cumulative >= o.top_p) {
          keep = i + 1;
          break;
        }
      }
    }
    double kept_total = 0;
    for (int i = 0; i < keep; ++i) kept_total += probs[i];
    const double u = Uniform(seed, step) * kept_total;
    double acc = 0;
    result.id = order[keep - 1];
    for (int i = 0; i < keep; ++i) {
      acc += probs[i];
      if (u < acc) {
        result.id = order[i];
        break;
      }
    }
  }
  result.logprob = logits[result.id] - log_z;
  if (o.logprobs > 0) {
    const int n = std::min(o.logprobs, vocab);
    std::vector<int32_t> top(vocab);
    std::iota(top.begin(), top.end(), 0);
    std::partial_sort(top.begin(), top.begin() + n, top.end(), [&](int32_t a, int32_t b) {
      return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
    });
    for (int i = 0; i < n; ++i) result.top_logprobs.push_back({top[i], logits[top[i]] - log_z});
  }
  return result;
}

}  // namespace baton
