// The device a model's forward pass runs on. DeepseekModel states the
// architecture once: the order of a layer's blocks, the residual stream,
// MoE routing, which weights a step reads. A backend implements the blocks
// over activations it keeps in its own memory (host or device): x (the
// residual stream), xn (x normed) and out (the last block's result), each
// [tokens][hidden] floats. The blocks are coarse (a whole MLA attention, a
// whole set of experts) because that is where each device's speed is made:
// the CPU backend fuses fork-joins, a GPU one fuses kernels.
//
// Backends are created by CreateBackend (engine/devices.h), which knows
// which devices this build has.
//
// Thread-safety: not thread-safe; one thread (the engine loop) drives it.
#ifndef BATON_ENGINE_BACKEND_H_
#define BATON_ENGINE_BACKEND_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/kernels.h"
#include "engine/kv_cache.h"
#include "engine/model_config.h"
#include "engine/thread_pool.h"
#include "engine/weights.h"

namespace baton {

// Called with each layer's index as soon as that layer's KV of the whole
// batch is in the cache, before the layer's attention reads it. An error
// fails the forward pass.
using LayerKvHook = std::function<absl::Status(int layer)>;

// A forward batch flattened to tokens (chunks in order).
struct ForwardTokens {
  std::vector<int32_t> ids;
  std::vector<int64_t> positions;
  // The block table of each token's sequence.
  std::vector<const std::vector<int32_t>*> tables;
  int64_t count() const { return static_cast<int64_t>(ids.size()); }
};

// The tokens routed to each expert, expert by expert: expert e takes tokens
// token[first[e] .. first[e + 1]), scaled by weight[...].
struct ExpertRouting {
  std::vector<int64_t> first;  // [experts + 1]
  std::vector<int64_t> token;
  std::vector<float> weight;
};

class Backend {
 public:
  virtual ~Backend() = default;

  // "cpu", "cuda:0": what --device names.
  virtual std::string name() const = 0;
  // Called once before anything else, with the loaded weights: lays them
  // out for the device (the CPU backend packs panels; a GPU one uploads
  // them). The backend may keep references into `weights`, which the model
  // keeps alive and unchanged from then on.
  virtual absl::Status Prepare(const ModelConfig& config, ModelWeights& weights) = 0;
  // The activation precision the weight products actually run at.
  virtual kernels::Precision precision() const = 0;
  // The element type of the KV cache rows this backend reads and writes.
  virtual DType kv_dtype() const = 0;
  // Memory for a KV cache of `bytes` bytes, where this backend's attention
  // reads it.
  virtual absl::StatusOr<std::unique_ptr<KvMemory>> AllocateKv(size_t bytes) = 0;

  // Starts a forward pass: x = the tokens' embeddings. `pool` is the host's
  // compute threads (a GPU backend may ignore it). `tokens` stays valid
  // until the pass ends.
  virtual absl::Status Begin(const ForwardTokens& tokens, ThreadPool& pool) = 0;
  // xn = RmsNorm(x) * weight.
  virtual absl::Status Norm(const Vector& weight) = 0;
  // out = MLA attention of xn for layer `layer`: writes every token's
  // latent and roped key into `cache`, calls `on_layer_kv` (if set) once
  // they are there, then attends over each token's context.
  virtual absl::Status Attention(int layer, const AttentionWeights& weights, KvCache& cache,
                                 const LayerKvHook* on_layer_kv) = 0;
  // out = the dense SwiGLU MLP of xn.
  virtual absl::Status Mlp(const MlpWeights& mlp) = 0;
  // The router's logits of xn, [tokens][experts], into host memory.
  virtual absl::Status RouterLogits(const Matrix& router, std::vector<float>* logits) = 0;
  // out = the shared experts of xn plus each token's routed experts, added
  // in expert order (so the combination never depends on the batch; the
  // products themselves may, where a backend picks its kernel by their
  // size: the CUDA backend's tensor cores from 64 rows).
  virtual absl::Status Experts(const MoeWeights& moe, const ExpertRouting& routing) = 0;
  // x += out.
  virtual absl::Status AddOut() = 0;
  // The logits of tokens `rows` (indices into the pass's tokens): the head
  // applied to RmsNorm(x[row]) * final_norm, into host memory [rows][vocab].
  virtual absl::Status Logits(const std::vector<int64_t>& rows, const Vector& final_norm,
                              const Matrix& head, std::vector<float>* logits) = 0;
};

}  // namespace baton

#endif  // BATON_ENGINE_BACKEND_H_
