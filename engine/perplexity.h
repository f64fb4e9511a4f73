// Bits per byte of a text under a model, computed with the engine's own
// forward pass: the quality check that ties the engine to the training
// script's evaluation.
//
// Protocol (scripts/train_tiny_model.py evaluates the same way): the text is
// encoded as one stream without BOS and cut into chunks of window - 1 ids;
// each chunk runs from position 0 as [BOS] + chunk[:-1] and every id of the
// chunk is predicted. Bits per byte = total negative log-likelihood in nats /
// ln 2 / UTF-8 bytes of the text. (Without a BOS token, each chunk's first id
// is context only.)
#ifndef BATON_ENGINE_PERPLEXITY_H_
#define BATON_ENGINE_PERPLEXITY_H_

#include <string>

#include "absl/status/statusor.h"
#include "engine/deepseek_model.h"
#include "engine/tokenizer.h"

namespace baton {

struct PerplexityResult {
  double nll_nats = 0;
  int64_t tokens = 0;  // Predicted tokens.
  int64_t bytes = 0;
  int64_t window = 0;
  double bits_per_byte() const;
};

// `window` 0 means the model's context length.
absl::StatusOr<PerplexityResult> MeasurePerplexity(DeepseekModel& model, const Tokenizer& tokenizer,
                                                   const std::string& text, int64_t window,
                                                   ThreadPool& pool);

}  // namespace baton

#endif  // BATON_ENGINE_PERPLEXITY_H_
