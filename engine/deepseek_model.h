// The DeepSeek-V2/V3 forward pass, stated once for every device: MLA with
// weight absorption over the paged latent cache, and DeepSeekMoE (routing
// here, experts on the backend). One batch mixes prefill chunks of any
// length (starting at any position) with single-token decodes. The blocks
// run on a Backend (engine/backend.h): the CPU's, or a GPU's.
//
// Thread-safety: Forward() mutates the backend's activations and the KV
// cache; call it from one thread (the engine loop). Loading is thread-safe.
#ifndef BATON_ENGINE_DEEPSEEK_MODEL_H_
#define BATON_ENGINE_DEEPSEEK_MODEL_H_

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/backend.h"
#include "engine/kernels.h"
#include "engine/kv_cache.h"
#include "engine/model_config.h"
#include "engine/thread_pool.h"
#include "engine/weights.h"

namespace baton {

enum class LogitsMode {
  kNone,  // A prefill chunk that is not the prompt's last.
  kLast,  // The logits of the chunk's last token.
  kAll,   // The logits of every token of the chunk.
};

// One sequence's share of a forward batch.
struct ForwardChunk {
  const int32_t* tokens = nullptr;
  int64_t num_tokens = 0;
  // The tokens take positions [start_pos, start_pos + num_tokens); positions
  // before start_pos must already be in the cache.
  int64_t start_pos = 0;
  // Must cover start_pos + num_tokens positions.
  const std::vector<int32_t>* block_table = nullptr;
  LogitsMode logits = LogitsMode::kLast;
};

// What the last Forward() had to read: the roofline of a memory-bound step.
struct ForwardStats {
  int64_t tokens = 0;
  int64_t weight_bytes = 0;  // Each weight matrix used, once (routed experts only if chosen).
  int64_t kv_bytes = 0;      // Each token's attended cache rows, once.
  int64_t flops = 0;         // Multiply-adds x 2 of matrices and attention.
};

struct ModelLoadOptions {
  bool force_f32_weights = false;
  bool show_progress = false;  // A progress bar on stderr.
  // kBf16: BF16 activations in the weight products where the CPU has BF16
  // dot products (see kernels::Precision); the default computes in fp32,
  // the numerical reference.
  kernels::Precision precision = kernels::Precision::kF32;
  // Attention takes a token's context in pieces of about this many rows
  // (whole cache blocks), combined in order; see AttentionCoreTyped.
  int64_t attention_piece_rows = 256;
};

class DeepseekModel {
 public:
  // Reads DIR/config.json and the safetensors weights; runs on the CPU.
  static absl::StatusOr<std::unique_ptr<DeepseekModel>> Load(const std::string& dir,
                                                             const ModelLoadOptions& options);
  // The same on `backend` (engine/devices.h makes one for --device); the
  // options' precision and attention_piece_rows are the CPU backend's.
  static absl::StatusOr<std::unique_ptr<DeepseekModel>> Load(const std::string& dir,
                                                             const ModelLoadOptions& options,
                                                             std::unique_ptr<Backend> backend);
  static absl::StatusOr<std::unique_ptr<DeepseekModel>> FromWeights(
      ModelConfig config, ModelWeights weights,
      kernels::Precision precision = kernels::Precision::kF32);
  static absl::StatusOr<std::unique_ptr<DeepseekModel>> FromWeights(
      ModelConfig config, ModelWeights weights, std::unique_ptr<Backend> backend);

  const ModelConfig& config() const { return config_; }
  const Backend& backend() const { return *backend_; }
  // The activation precision the products actually run at on this device.
  kernels::Precision precision() const { return backend_->precision(); }
  // The element type of the KV cache this model reads and writes (on the
  // CPU: bf16 with bf16 activations, else f32).
  DType kv_dtype() const { return backend_->kv_dtype(); }
  const ModelWeights& weights() const { return weights_; }
  size_t weight_bytes() const { return weights_.bytes; }

  // A KV cache for this model, in the memory its backend attends over.
  absl::StatusOr<std::unique_ptr<KvCache>> NewKvCache(int block_size, int64_t num_blocks) const;

  // Runs the batch: writes every token's latent and roped key into `cache`
  // (made by NewKvCache, or a host KvCache for the CPU backend) and returns
  // the requested logits, rows in batch order ([rows][vocab]).
  // `on_layer_kv` is called with each layer's index as soon as that layer's
  // KV of the whole batch is in the cache: the hook that ships KV while
  // later layers compute.
  using LayerKvHook = baton::LayerKvHook;
  absl::Status Forward(const std::vector<ForwardChunk>& batch, KvCache& cache, ThreadPool& pool,
                       std::vector<float>* logits, const LayerKvHook* on_layer_kv = nullptr);
  const ForwardStats& last_forward_stats() const { return stats_; }

 private:
  DeepseekModel(ModelConfig config, ModelWeights weights, std::unique_ptr<Backend> backend);

  absl::Status Moe(const MoeWeights& moe);
  // Token t's experts and their weights, from the router's logits.
  void Route(const MoeWeights& moe, const float* logits, std::vector<int>* experts,
             std::vector<float>* weights) const;

  // Adds a matrix use to the stats: its bytes once, 2*rows*cols flops per row of x.
  void Account(const Matrix& m, int64_t rows_of_x);

  ModelConfig config_;
  ModelWeights weights_;
  std::unique_ptr<Backend> backend_;
  ForwardStats stats_;
  ForwardTokens tokens_;              // The batch of the running Forward().
  std::vector<float> router_logits_;  // [T][experts]
  ExpertRouting routing_;
};

}  // namespace baton

#endif  // BATON_ENGINE_DEEPSEEK_MODEL_H_
