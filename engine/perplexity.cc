#include "engine/perplexity.h"

#include <cmath>
#include <optional>

#include "engine/status_macros.h"

namespace baton {

double PerplexityResult::bits_per_byte() const {
  return bytes == 0 ? 0.0 : nll_nats / std::log(2.0) / static_cast<double>(bytes);
}

absl::StatusOr<PerplexityResult> MeasurePerplexity(DeepseekModel& model, const Tokenizer& tokenizer,
                                                   const std::string& text, int64_t window,
                                                   ThreadPool& pool) {
  const ModelConfig& c = model.config();
  if (window <= 0) window = c.max_position_embeddings;
  window = std::min<int64_t>(window, c.max_position_embeddings);
  if (window < 2) return absl::InvalidArgumentError("the window must be at least 2 tokens");
  BATON_ASSIGN_OR_RETURN(std::vector<uint32_t> ids, tokenizer.Encode(text, /*add_bos=*/false));
  const std::optional<uint32_t> bos = tokenizer.bos_id();

  BATON_ASSIGN_OR_RETURN(std::unique_ptr<KvCache> cache_owner,
                         model.NewKvCache(16, (window + 15) / 16));
  KvCache& cache = *cache_owner;
  PerplexityResult result;
  result.bytes = static_cast<int64_t>(text.size());
  result.window = window;
  const int64_t n = static_cast<int64_t>(ids.size());
  const int64_t step = window - 1;
  std::vector<float> logits;
  for (int64_t start = 0; start < n; start += step) {
    const int64_t len = std::min(step, n - start);
    // Inputs and the ids they predict: [BOS] + chunk[:-1] -> chunk.
    std::vector<int32_t> input, target;
    if (bos.has_value()) input.push_back(static_cast<int32_t>(*bos));
    for (int64_t i = 0; i < len; ++i) input.push_back(static_cast<int32_t>(ids[start + i]));
    target.assign(input.begin() + 1, input.end());
    input.pop_back();
    if (input.empty()) continue;
    KvBlocks blocks(&cache);
    blocks.Reserve(static_cast<int64_t>(input.size()));
    ForwardChunk chunk{input.data(), static_cast<int64_t>(input.size()), 0, &blocks.table(),
                       LogitsMode::kAll};
    BATON_RETURN_IF_ERROR(model.Forward({chunk}, cache, pool, &logits));
    for (size_t i = 0; i < target.size(); ++i) {
      const float* row = &logits[i * c.vocab_size];
      double max = row[0];
      for (int v = 1; v < c.vocab_size; ++v) max = std::max<double>(max, row[v]);
      double z = 0;
      for (int v = 0; v < c.vocab_size; ++v) z += std::exp(row[v] - max);
      result.nll_nats -= row[target[i]] - max - std::log(z);
      ++result.tokens;
    }
  }
  return result;
}

}  // namespace baton
