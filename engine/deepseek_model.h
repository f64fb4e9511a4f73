// The DeepSeek-V2/V3 forward pass on the CPU: MLA with weight absorption over
// the paged latent cache, and DeepSeekMoE. One batch mixes prefill chunks of
// any length (starting at any position) with single-token decodes.
//
// Thread-safety: Forward() mutates a workspace and the KV cache; call it from
// one thread (the engine loop). Loading is thread-safe.
#ifndef BATON_ENGINE_DEEPSEEK_MODEL_H_
#define BATON_ENGINE_DEEPSEEK_MODEL_H_

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
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
  // Reads DIR/config.json and the safetensors weights.
  static absl::StatusOr<std::unique_ptr<DeepseekModel>> Load(const std::string& dir,
                                                             const ModelLoadOptions& options);
  static absl::StatusOr<std::unique_ptr<DeepseekModel>> FromWeights(
      ModelConfig config, ModelWeights weights,
      kernels::Precision precision = kernels::Precision::kF32);

  const ModelConfig& config() const { return config_; }
  // The activation precision the products actually run at on this CPU.
  kernels::Precision precision() const { return precision_; }
  // The element type of the KV cache this model reads and writes: bf16 with
  // bf16 activations (half the memory; attention widens the rows to fp32
  // exactly), else f32.
  DType kv_dtype() const {
    return precision_ == kernels::Precision::kBf16 ? DType::kBF16 : DType::kF32;
  }
  const ModelWeights& weights() const { return weights_; }
  size_t weight_bytes() const { return weights_.bytes; }

  // Runs the batch: writes every token's latent and roped key into `cache`
  // and returns the requested logits, rows in batch order ([rows][vocab]).
  // Called with each layer's index as soon as that layer's KV of the whole
  // batch is in the cache, before the layer's attention runs: the hook that
  // ships KV while later layers compute.
  using LayerKvHook = std::function<void(int layer)>;

  absl::Status Forward(const std::vector<ForwardChunk>& batch, KvCache& cache, ThreadPool& pool,
                       std::vector<float>* logits, const LayerKvHook* on_layer_kv = nullptr);
  const ForwardStats& last_forward_stats() const { return stats_; }

 private:
  DeepseekModel(ModelConfig config, ModelWeights weights);

  void Attention(int layer, const std::vector<ForwardChunk>& batch, KvCache& cache,
                 ThreadPool& pool);
  void AttentionCore(int layer, const std::vector<ForwardChunk>& batch, KvCache& cache,
                     ThreadPool& pool);
  // The same for cache elements E: float or uint16_t (BF16 bits).
  template <typename E>
  void AttentionCoreTyped(int layer, const std::vector<ForwardChunk>& batch, KvCache& cache,
                          ThreadPool& pool);
  void Mlp(const MlpWeights& mlp, const float* x, int64_t rows, float* out, ThreadPool& pool);
  void Moe(const MoeWeights& moe, ThreadPool& pool);
  void Route(const MoeWeights& moe, int64_t t, std::vector<int>* experts,
             std::vector<float>* weights) const;

  // Adds a matrix use to the stats: its bytes once, 2*rows*cols flops per row of x.
  void Account(const Matrix& m, int64_t rows_of_x);

  ModelConfig config_;
  ModelWeights weights_;
  ForwardStats stats_;
  const LayerKvHook* on_layer_kv_ = nullptr;  // Set during Forward().
  std::vector<float> inv_freq_;
  float cos_sin_scale_;
  float softmax_scale_;
  kernels::Precision precision_ = kernels::Precision::kF32;
  int64_t attention_piece_rows_ = 256;

  // Workspace reused across calls; sized for the largest batch seen.
  struct Workspace {
    int64_t tokens = 0;
    std::vector<int64_t> positions;             // [T]
    std::vector<int> chunk_of_token;            // [T]
    std::vector<float> x, xn;                   // [T][hidden]
    std::vector<float> q_a;                     // [T][q_lora]
    std::vector<float> q;                       // [T][heads][nope+rope]
    std::vector<float> kv;                      // [T][lora+rope]
    std::vector<float> q_full;                  // [T][heads][lora+rope]
    std::vector<float> o_latent;                // [T][heads][lora]
    std::vector<float> piece_sums;              // Decode attention: [pieces][heads][lora]
    std::vector<float> piece_max, piece_total;  // [pieces][heads]
    std::vector<float> attn_v;                  // [T][heads][v]
    std::vector<float> out;                     // [T][hidden]
    std::vector<float> mlp_hidden;              // [T][2*inter]
    std::vector<float> router_logits;           // [T][experts]
    std::vector<float> expert_in, expert_out;
  } ws_;
};

}  // namespace baton

#endif  // BATON_ENGINE_DEEPSEEK_MODEL_H_
