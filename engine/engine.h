// The continuously batched engine: requests join and leave the running batch
// between steps; each Step() decides how many tokens every request gets (a
// decode token, or a prefill chunk under the per-step token budget), runs one
// forward pass over all of them, and samples.
//
// Thread-safety: not thread-safe. One thread (the engine loop, see
// engine_loop.h) owns an Engine and calls everything on it.
#ifndef BATON_ENGINE_ENGINE_H_
#define BATON_ENGINE_ENGINE_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/deepseek_model.h"
#include "engine/kv_cache.h"
#include "engine/sampler.h"
#include "engine/thread_pool.h"

namespace baton {

struct EngineOptions {
  int threads = 0;                  // 0: one per core.
  int kv_block_size = 16;           // Tokens per KV block.
  int64_t kv_cache_bytes = 0;       // 0: room for max_running full contexts, capped at 2 GiB.
  int64_t step_token_budget = 256;  // Prefill + decode tokens per step.
  int max_running = 64;             // Sequences in the running batch.
};

enum class FinishReason {
  kNone,
  kStop,
  kLength,
  kCancelled,
  kError,
  kPrefilled,  // A prefill_only request has computed and shipped its KV.
};

// Receives one layer's KV rows of tokens [begin, end) of a prefill_only
// request, on the engine thread, as soon as the layer has computed them.
// `rows` holds (end - begin) cache rows of KvCache::row_bytes() bytes each.
using KvSink =
    std::function<void(int layer, int64_t begin, int64_t end, std::vector<uint8_t> rows)>;

struct EngineRequest {
  int64_t id = 0;
  std::vector<int32_t> prompt;
  SamplingOptions sampling;
  // Disaggregated prefill: compute the prompt's KV, hand each layer to
  // kv_sink, sample the first token (with `sampling`, whose seed must be set)
  // and finish with kPrefilled, carrying that token.
  bool prefill_only = false;
  KvSink kv_sink;
  // Disaggregated decode: the KV of the whole prompt and the first token
  // arrive from a prefill worker. The engine reserves the blocks, reports
  // them in a kv_reserved event, and schedules the request after
  // ImportDone(); the first token was sampled there exactly as it would have
  // been here (same logits, same seed and step), so the output is the
  // colocated one.
  bool external_prefill = false;
};

// What one step produced for one request.
struct TokenEvent {
  int64_t request_id = 0;
  bool has_token = false;
  SampledToken token;
  FinishReason finish = FinishReason::kNone;  // Set on the request's last event.
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
  std::string error;  // When finish == kError.
  // external_prefill: the blocks are reserved; import into them now.
  bool kv_reserved = false;
  std::vector<int32_t> kv_blocks;
};

struct EngineStats {
  int64_t running = 0;
  int64_t max_running = 0;  // The running batch's limit (EngineOptions).
  int64_t waiting = 0;
  int64_t kv_blocks_used = 0;
  int64_t kv_blocks_total = 0;
  int64_t last_step_tokens = 0;
  int64_t last_step_sequences = 0;
  int64_t preemptions = 0;
  int64_t queued_prompt_tokens = 0;  // Prompt tokens not yet computed.
};

class Engine {
 public:
  static absl::StatusOr<std::unique_ptr<Engine>> Create(std::unique_ptr<DeepseekModel> model,
                                                        const EngineOptions& options);

  const ModelConfig& config() const { return model_->config(); }
  const DeepseekModel& model() const { return *model_; }
  const EngineOptions& options() const { return options_; }

  // Checks the request against the model (ids in the vocabulary, prompt plus
  // max_tokens within the context, sampling ranges). The message names the
  // field.
  absl::Status Validate(const EngineRequest& request) const;
  // Queues a validated request; it joins the batch in a later step.
  absl::Status Add(EngineRequest request);
  // Ends a request now and frees its KV blocks; its final event (kCancelled)
  // comes from the next Step(). Unknown ids are ignored.
  void Cancel(int64_t request_id);

  // An external_prefill request's KV has been imported and the prefill
  // worker sampled `first`: returns that token's event (with its finish, if
  // it ends the request) and schedules the rest. Nothing for unknown ids.
  std::optional<TokenEvent> ImportDone(int64_t request_id, const SampledToken& first);

  bool HasWork() const;
  // Out of work for now: the compute threads stop spinning and sleep.
  void Rest() { pool_.Rest(); }
  // Runs one step and returns its events.
  std::vector<TokenEvent> Step();

  EngineStats stats() const;
  KvCache& kv_cache() { return *cache_; }
  const KvCache& kv_cache() const { return *cache_; }

 private:
  struct Sequence {
    EngineRequest request;
    std::vector<int32_t> output;
    KvBlocks blocks;
    int64_t computed = 0;  // Tokens whose KV is in the cache.
    uint64_t seed = 0;
    bool awaiting_import = false;
    int64_t total_tokens() const {
      return static_cast<int64_t>(request.prompt.size() + output.size());
    }
  };

  Engine(std::unique_ptr<DeepseekModel> model, const EngineOptions& options,
         std::unique_ptr<KvCache> cache);
  void Preempt(Sequence& victim);
  // The newest running sequence that may be preempted, other than `keep`.
  Sequence* PreemptionVictim(const Sequence* keep) const;
  TokenEvent Finish(Sequence& s, FinishReason reason);
  // Appends a sampled token to `s` and returns its event; sets the finish
  // (and frees the blocks) when it ends the request.
  TokenEvent Emit(Sequence& s, const SampledToken& token);

  std::unique_ptr<DeepseekModel> model_;
  EngineOptions options_;
  ThreadPool pool_;
  std::unique_ptr<KvCache> cache_;
  std::deque<std::unique_ptr<Sequence>> waiting_;
  std::vector<std::unique_ptr<Sequence>> running_;  // In admission order.
  std::vector<TokenEvent> finished_;                // Cancellations to report next step.
  std::vector<float> logits_;
  // Seeds for requests that name none: drawn from the OS once, not per
  // request (a std::random_device read costs ~27 us on a VM).
  std::mt19937_64 seed_source_{std::random_device{}()};
  int64_t last_step_tokens_ = 0;
  int64_t last_step_sequences_ = 0;
  int64_t preemptions_ = 0;
};

const char* FinishReasonName(FinishReason reason);

}  // namespace baton

#endif  // BATON_ENGINE_ENGINE_H_
