// `baton perplexity`: bits per byte of a text under a model (engine/perplexity.h
// has the protocol).
#include "engine/perplexity.h"

#include <cmath>
#include <cstdio>
#include <fstream>
#include <optional>
#include <sstream>

#include "absl/strings/str_format.h"
#include "engine/deepseek_model.h"
#include "engine/devices.h"
#include "engine/tokenizer.h"
#include "nlohmann/json.hpp"
#include "service/cli/commands.h"
#include "service/cli/flag_set.h"

namespace baton::cli {

int RunPerplexity(const Args& args) {
  std::string model_dir = DefaultModelDir(), text_path, device = "cpu";
  int64_t window = 0, threads = 0;
  bool json = false;
  FlagSet flags("baton perplexity --text FILE [flags]",
                "Prints the model's bits per byte on a UTF-8 text file: chunks of context-1\n"
                "tokens, each run after BOS from position 0, every token predicted once.");
  flags.String("model", &model_dir, "model directory");
  flags.String("text", &text_path, "the text file");
  flags.Int("window", &window, "tokens per window (0: the model's context length)");
  flags.Int("threads", &threads, "compute threads (0: one per core)");
  flags.String("device", &device, "where the model runs: cpu, or cuda / cuda:N");
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

  auto backend = CreateBackend(device, {});
  if (!backend.ok()) return fail(std::string(backend.status().message()));
  auto model = DeepseekModel::Load(model_dir, {}, *std::move(backend));
  if (!model.ok()) return fail(std::string(model.status().message()));
  auto tokenizer = Tokenizer::Load(model_dir);
  if (!tokenizer.ok()) return fail(std::string(tokenizer.status().message()));
  ThreadPool pool(static_cast<int>(threads));
  auto result = MeasurePerplexity(**model, **tokenizer, text, window, pool);
  if (!result.ok()) return fail(std::string(result.status().message()));
  const double bits_per_byte = result->bits_per_byte();
  const int64_t predicted = result->tokens;
  const double nll = result->nll_nats;
  window = result->window;
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
