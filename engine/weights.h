// The weights of a DeepSeek-V2/V3 model, converted from a checkpoint into the
// layouts the forward pass reads: linear weights as [out][in] F32 or BF16
// matrices (FP8 blocks dequantized to F32 with their scales), norms as F32
// vectors, and the MLA up-projection split per head for weight absorption.
#ifndef BATON_ENGINE_WEIGHTS_H_
#define BATON_ENGINE_WEIGHTS_H_

#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model_config.h"
#include "engine/safetensors.h"
#include "engine/tensor.h"

namespace baton {

struct MlpWeights {
  Matrix gate_up;  // [2*inter][hidden]: the gate_proj rows, then the up_proj rows.
  Matrix down;     // [hidden][inter]
  int64_t inter = 0;
};

struct AttentionWeights {
  Matrix q_a;        // [q_lora_rank][hidden] (absent when q_lora_rank is 0)
  Vector q_a_norm;   // [q_lora_rank]
  Matrix q_b;        // [heads*qk_head_dim][q_lora_rank], or q_proj [..][hidden]
  Matrix kv_a;       // [kv_lora_rank + rope][hidden]
  Vector kv_a_norm;  // [kv_lora_rank]
  Matrix k_up_t;     // [heads*kv_lora_rank][qk_nope]: kv_b_proj's k rows, transposed per head
  Matrix v_up;       // [heads*v_head_dim][kv_lora_rank]: kv_b_proj's v rows
  Matrix o;          // [hidden][heads*v_head_dim]
};

struct MoeWeights {
  Matrix router;      // [n_routed_experts][hidden], F32
  Vector score_bias;  // e_score_correction_bias (empty when absent)
  std::vector<MlpWeights> experts;
  MlpWeights shared;  // inter == 0 when there are no shared experts
};

struct LayerWeights {
  Vector input_norm;
  AttentionWeights attn;
  Vector post_attention_norm;
  bool is_moe = false;
  MlpWeights dense;  // when !is_moe
  MoeWeights moe;    // when is_moe
};

struct ModelWeights {
  Matrix embed;  // [vocab][hidden]
  std::vector<LayerWeights> layers;
  Vector final_norm;
  Matrix lm_head;  // [vocab][hidden]; empty when tied to embed
  const Matrix& head() const { return lm_head.empty() ? embed : lm_head; }
  size_t bytes = 0;
};

struct WeightLoadOptions {
  // Store BF16 checkpoint weights as F32 (doubles memory, same values).
  bool force_f32 = false;
  // Called after each layer with (layers done, layers total).
  std::function<void(int, int)> progress;
};

// Loads and validates every tensor the model needs. Errors name the file and
// tensor: missing, unexpected, wrong shape, unsupported dtype.
absl::StatusOr<ModelWeights> LoadWeights(const ModelConfig& config, const Checkpoint& checkpoint,
                                         const WeightLoadOptions& options);

// Converts one checkpoint tensor to a matrix of the given shape. FP8 tensors
// need their block scales (`scale_inv`, one F32 per 128x128 block).
absl::StatusOr<Matrix> ToMatrix(const TensorView& view, int64_t rows, int64_t cols,
                                const TensorView* scale_inv, bool force_f32);

}  // namespace baton

#endif  // BATON_ENGINE_WEIGHTS_H_
