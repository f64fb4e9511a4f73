// `baton perplexity`: bits per byte of a text under a model, computed with
// the engine's own forward pass.
//
// Protocol (scripts/train_tiny_model.py evaluates the same way): the text is
// encoded as one stream without BOS and cut into chunks of window - 1 ids;
// each chunk runs from position 0 as [BOS] + chunk[:-1] and every id of the
// chunk is predicted. Bits per byte = total negative log-likelihood in nats
// / ln 2 / UTF-8 bytes of the text. (Without a BOS token, each chunk's first
// id is context only.)
#include <cmath>
#include <cstdio>
#include <fstream>
#include <optional>
#include <sstream>

#include "absl/strings/str_format.h"
#include "engine/deepseek_model.h"
#include "engine/tokenizer.h"
#include "nlohmann/json.hpp"
#include "service/cli/commands.h"
#include "service/cli/flag_set.h"

namespace baton::cli {

int RunPerplexity(const Args& args) {
  std::string model_dir = DefaultModelDir(), text_path;
  int64_t window = 0, threads = 0;
  bool json = false;
  FlagSet flags("baton perplexity --text FILE [flags]",
                "Prints the model's bits per byte on a UTF-8 text file: chunks of context-1\n"
                "tokens, each run after BOS from position 0, every token predicted once.");
  flags.String("model", &model_dir, "model directory");
  flags.String("text", &text_path, "the text file");
  flags.Int("window", &window, "tokens per window (0: the model's context length)");
  flags.Int("threads", &threads, "compute threads (0: one per core)");
  flags.Bool("json", &json, "print {\"bits_per_byte\", \"tokens\", \"bytes\"} as JSON");
  auto fail = [](const std::string& m) {
    std::fprintf(stderr, "baton perplexity: %s\n", m.c_str());
    return 1;
  };
  if (absl::Status s = flags.Parse(args); !s.ok()) return fail(std::string(s.message()));
  if (flags.help_requested()) {
    std::fputs(flags.HelpText().c_str(), stdout);
    return 0;
  }
  if (text_path.empty()) return fail("--text FILE is required");
  std::ifstream in(text_path, std::ios::binary);
  if (!in) return fail(text_path + ": cannot open");
  std::stringstream buffer;
  buffer << in.rdbuf();
  const std::string text = buffer.str();

  auto model = DeepseekModel::Load(model_dir, {});
  if (!model.ok()) return fail(std::string(model.status().message()));
  auto tokenizer = Tokenizer::Load(model_dir);
  if (!tokenizer.ok()) return fail(std::string(tokenizer.status().message()));
  auto ids = (*tokenizer)->Encode(text, /*add_bos=*/false);
  if (!ids.ok()) return fail(std::string(ids.status().message()));
  const std::optional<uint32_t> bos = (*tokenizer)->bos_id();
  const ModelConfig& c = (*model)->config();
  if (window <= 0) window = c.max_position_embeddings;
  window = std::min<int64_t>(window, c.max_position_embeddings);
  if (window < 2) return fail("--window must be at least 2");

  ThreadPool pool(static_cast<int>(threads));
  KvCache cache(c.num_hidden_layers, c.kv_cache_width(), 16, (window + 15) / 16);
  const int64_t n = static_cast<int64_t>(ids->size());
  const int64_t step = window - 1;
  double nll = 0;
  int64_t predicted = 0;
  std::vector<float> logits;
  for (int64_t start = 0; start < n; start += step) {
    const int64_t len = std::min(step, n - start);
    // Inputs and the ids they predict: [BOS] + chunk[:-1] -> chunk.
    std::vector<int32_t> input, target;
    if (bos.has_value()) input.push_back(static_cast<int32_t>(*bos));
    for (int64_t i = 0; i < len; ++i) input.push_back(static_cast<int32_t>((*ids)[start + i]));
    target.assign(input.begin() + 1, input.end());
    input.pop_back();
    if (input.empty()) continue;
    KvBlocks blocks(&cache);
    blocks.Reserve(static_cast<int64_t>(input.size()));
    ForwardChunk chunk{input.data(), static_cast<int64_t>(input.size()), 0, &blocks.table(),
                       LogitsMode::kAll};
    if (absl::Status s = (*model)->Forward({chunk}, cache, pool, &logits); !s.ok()) {
      return fail(std::string(s.message()));
    }
    for (size_t i = 0; i < target.size(); ++i) {
      const float* row = &logits[i * c.vocab_size];
      double max = row[0];
      for (int v = 1; v < c.vocab_size; ++v) max = std::max<double>(max, row[v]);
      double z = 0;
      for (int v = 0; v < c.vocab_size; ++v) z += std::exp(row[v] - max);
      nll -= row[target[i]] - max - std::log(z);
      ++predicted;
    }
  }
  const double bits_per_byte = text.empty() ? 0.0 : nll / std::log(2.0) / text.size();
  if (json) {
    nlohmann::json out = {{"bits_per_byte", bits_per_byte},
                          {"tokens", predicted},
                          {"bytes", text.size()},
                          {"nll_nats", nll},
                          {"window", window}};
    std::printf("%s\n", out.dump().c_str());
  } else {
    std::printf("%s\n", absl::StrFormat("%.4f bits per byte (%d tokens predicted, %d bytes, "
                                        "windows of %d)",
                                        bits_per_byte, predicted, text.size(), window)
                            .c_str());
  }
  return 0;
}

}  // namespace baton::cli
