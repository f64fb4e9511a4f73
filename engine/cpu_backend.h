// The CPU backend: the blocks of the forward pass on the host's cores
// (engine/kernels.h, AVX-512 / AVX2 chosen at run time), activations in host
// memory. MLA attends over the latent cache in pieces of whole blocks
// combined in order, and MoE runs all of a step's experts in two
// fork-joins; both are batch-invariant (a token's result never depends on
// the batch around it).
//
// Thread-safety: not thread-safe (see Backend).
#ifndef BATON_ENGINE_CPU_BACKEND_H_
#define BATON_ENGINE_CPU_BACKEND_H_

#include <memory>
#include <string>
#include <vector>

#include "engine/backend.h"

namespace baton {

struct CpuBackendOptions {
  // kBf16: BF16 activations in the weight products where the CPU has BF16
  // dot products (else fp32, the numerical reference).
  kernels::Precision precision = kernels::Precision::kF32;
  // Attention takes a token's context in pieces of about this many rows
  // (whole cache blocks), combined in order; see AttentionCoreTyped.
  int64_t attention_piece_rows = 256;
};

class CpuBackend : public Backend {
 public:
  explicit CpuBackend(const CpuBackendOptions& options);

  std::string name() const override { return "cpu"; }
  absl::Status Prepare(const ModelConfig& config, ModelWeights& weights) override;
  kernels::Precision precision() const override { return precision_; }
  // BF16 rows with BF16 activations (half the memory; attention widens them
  // to fp32 exactly), else f32.
  DType kv_dtype() const override {
    return precision_ == kernels::Precision::kBf16 ? DType::kBF16 : DType::kF32;
  }
  absl::StatusOr<std::unique_ptr<KvMemory>> AllocateKv(size_t bytes) override;

  absl::Status Begin(const ForwardTokens& tokens, ThreadPool& pool) override;
  absl::Status Norm(const Vector& weight) override;
  absl::Status Attention(int layer, const AttentionWeights& weights, KvCache& cache,
                         const LayerKvHook* on_layer_kv) override;
  absl::Status Mlp(const MlpWeights& mlp) override;
  absl::Status RouterLogits(const Matrix& router, std::vector<float>* logits) override;
  absl::Status Experts(const MoeWeights& moe, const ExpertRouting& routing) override;
  absl::Status AddOut() override;
  absl::Status Logits(const std::vector<int64_t>& rows, const Vector& final_norm,
                      const Matrix& head, std::vector<float>* logits) override;

 private:
  void AttentionCore(int layer, KvCache& cache);
  // The same for cache elements E: float or uint16_t (BF16 bits).
  template <typename E>
  void AttentionCoreTyped(int layer, KvCache& cache);

  kernels::Precision requested_precision_;
  kernels::Precision precision_ = kernels::Precision::kF32;
  int64_t attention_piece_rows_;
  ModelConfig config_;
  const Matrix* embed_ = nullptr;
  std::vector<float> inv_freq_;
  float cos_sin_scale_ = 1.f;
  float softmax_scale_ = 1.f;

  // Set by Begin() for the pass.
  const ForwardTokens* tokens_ = nullptr;
  ThreadPool* pool_ = nullptr;

  // Workspace reused across calls; sized for the largest batch seen.
  struct Workspace {
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
    std::vector<float> expert_in, expert_out;
  } ws_;
};

}  // namespace baton

#endif  // BATON_ENGINE_CPU_BACKEND_H_
