#include "engine/model_config.h"

#include <cmath>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace baton {
namespace {

using ::testing::HasSubstr;

TEST(ModelConfigTest, LoadsGoldenTinyA) {
  auto config = LoadModelConfig(BATON_TEST_DATA "/golden/tiny-a/config.json");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->architecture, Architecture::kDeepseekV3);
  EXPECT_EQ(config->vocab_size, 320);
  EXPECT_EQ(config->hidden_size, 64);
  EXPECT_EQ(config->q_lora_rank, 48);
  EXPECT_EQ(config->kv_cache_width(), 48);
  EXPECT_EQ(config->scoring_func, ScoringFunc::kSigmoid);
  EXPECT_EQ(config->topk_method, TopkMethod::kNoauxTc);
  EXPECT_TRUE(config->yarn.enabled);
  EXPECT_EQ(config->yarn.original_max_position_embeddings, 64);
  EXPECT_FALSE(config->is_moe_layer(0));
  EXPECT_TRUE(config->is_moe_layer(1));
  // The README of the golden case derives this value from the reference.
  EXPECT_NEAR(config->softmax_scale(), 0.187130335, 1e-8);
}

TEST(ModelConfigTest, DeepseekV2DefaultsToSoftmaxGreedy) {
  auto config = ParseModelConfig(R"({
    "model_type": "deepseek_v2", "vocab_size": 100, "hidden_size": 16,
    "intermediate_size": 32, "moe_intermediate_size": 8, "num_hidden_layers": 2,
    "num_attention_heads": 2, "q_lora_rank": null, "kv_lora_rank": 8,
    "qk_nope_head_dim": 8, "qk_rope_head_dim": 4, "v_head_dim": 8,
    "n_routed_experts": 4, "num_experts_per_tok": 2, "max_position_embeddings": 64})",
                                 "v2.json");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->q_lora_rank, 0);
  EXPECT_EQ(config->scoring_func, ScoringFunc::kSoftmax);
  EXPECT_EQ(config->topk_method, TopkMethod::kGreedy);
  EXPECT_FALSE(config->yarn.enabled);
  EXPECT_DOUBLE_EQ(config->softmax_scale(), 1.0 / std::sqrt(12.0));
}

TEST(ModelConfigTest, ErrorsNameTheFileAndField) {
  auto bad_json = ParseModelConfig("{not json", "m/config.json");
  EXPECT_EQ(bad_json.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad_json.status().message()), HasSubstr("m/config.json"));

  auto missing = ParseModelConfig(R"({"model_type": "deepseek_v3"})", "c.json");
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr("vocab_size"));

  auto wrong_type =
      ParseModelConfig(R"({"model_type": "deepseek_v3", "vocab_size": "many"})", "c.json");
  EXPECT_THAT(std::string(wrong_type.status().message()), HasSubstr("\"vocab_size\" must be"));

  auto llama = ParseModelConfig(R"({"model_type": "llama"})", "c.json");
  EXPECT_THAT(std::string(llama.status().message()), HasSubstr("unsupported model_type"));

  auto missing_file = LoadModelConfig("/nonexistent/config.json");
  EXPECT_EQ(missing_file.status().code(), absl::StatusCode::kNotFound);
}

TEST(ModelConfigTest, RejectsInconsistentRouting) {
  auto config = ParseModelConfig(R"({
    "model_type": "deepseek_v3", "vocab_size": 100, "hidden_size": 16,
    "intermediate_size": 32, "moe_intermediate_size": 8, "num_hidden_layers": 2,
    "num_attention_heads": 2, "kv_lora_rank": 8, "qk_nope_head_dim": 8,
    "qk_rope_head_dim": 4, "v_head_dim": 8, "n_routed_experts": 6, "n_group": 4,
    "topk_group": 2, "num_experts_per_tok": 2, "max_position_embeddings": 64})",
                                 "c.json");
  EXPECT_THAT(std::string(config.status().message()), HasSubstr("n_group"));
}

}  // namespace
}  // namespace baton
