// The model hyper-parameters, read from a Hugging Face config.json of a
// DeepseekV3ForCausalLM or DeepseekV2ForCausalLM checkpoint.
#ifndef BATON_ENGINE_MODEL_CONFIG_H_
#define BATON_ENGINE_MODEL_CONFIG_H_

#include <string>

#include "absl/status/statusor.h"

namespace baton {

enum class Architecture { kDeepseekV2, kDeepseekV3 };
enum class ScoringFunc { kSoftmax, kSigmoid };
// How routed experts are chosen (HF `topk_method`).
enum class TopkMethod { kGreedy, kGroupLimitedGreedy, kNoauxTc };

struct YarnScaling {
  bool enabled = false;
  double factor = 1.0;
  int original_max_position_embeddings = 0;
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  double mscale = 1.0;
  double mscale_all_dim = 0.0;
};

struct ModelConfig {
  Architecture architecture = Architecture::kDeepseekV3;
  std::string model_type;
  int vocab_size = 0;
  int hidden_size = 0;
  int intermediate_size = 0;
  int moe_intermediate_size = 0;
  int num_hidden_layers = 0;
  int num_attention_heads = 0;
  int q_lora_rank = 0;  // 0: no low-rank q (q_proj), as in DeepSeek-V2-Lite.
  int kv_lora_rank = 0;
  int qk_nope_head_dim = 0;
  int qk_rope_head_dim = 0;
  int v_head_dim = 0;
  int n_routed_experts = 0;  // 0: every layer is dense.
  int n_shared_experts = 0;
  int num_experts_per_tok = 0;
  int n_group = 1;
  int topk_group = 1;
  TopkMethod topk_method = TopkMethod::kGreedy;
  ScoringFunc scoring_func = ScoringFunc::kSoftmax;
  bool norm_topk_prob = false;
  double routed_scaling_factor = 1.0;
  int first_k_dense_replace = 0;
  int moe_layer_freq = 1;
  double rope_theta = 10000.0;
  YarnScaling yarn;
  double rms_norm_eps = 1e-6;
  bool tie_word_embeddings = false;
  int bos_token_id = -1;
  int eos_token_id = -1;
  int max_position_embeddings = 0;

  int qk_head_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }
  // Numbers cached per token per layer: the normalized latent and the roped
  // key (576 for DeepSeek-V3).
  int kv_cache_width() const { return kv_lora_rank + qk_rope_head_dim; }
  bool is_moe_layer(int layer) const {
    return n_routed_experts > 0 && layer >= first_k_dense_replace && layer % moe_layer_freq == 0;
  }
  // The attention softmax scale, including YaRN's mscale squared.
  double softmax_scale() const;
};

// Parses config.json text. `source` names the file in error messages.
absl::StatusOr<ModelConfig> ParseModelConfig(const std::string& json_text,
                                             const std::string& source);
absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& path);

}  // namespace baton

#endif  // BATON_ENGINE_MODEL_CONFIG_H_
