// The embedded default model (models/tiny-shakespeare): it loads as the
// DeepSeek-V3 architecture, its tokenizer round-trips the validation text,
// and the engine's bits per byte on a validation slice match what the
// training script measured (the end-to-end quality check).
#include <fstream>
#include <sstream>

#include "engine/perplexity.h"
#include "gtest/gtest.h"

namespace baton {
namespace {

const std::string kModel = BATON_DEFAULT_MODEL_DIR;
const std::string kSlice = std::string(BATON_TEST_DATA) + "/shakespeare_valid_slice.txt";

// scripts/train_tiny_model.py's evaluation of the slice, from the model card
// (models/tiny-shakespeare/README.md).
constexpr double kTrainingScriptBitsPerByte = BATON_SLICE_BITS_PER_BYTE;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

TEST(DefaultModelTest, IsADeepseekV3WithDenseAndMoeLayers) {
  auto config = LoadModelConfig(kModel + "/config.json");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->architecture, Architecture::kDeepseekV3);
  EXPECT_GT(config->q_lora_rank, 0);
  EXPECT_FALSE(config->is_moe_layer(0));
  EXPECT_TRUE(config->is_moe_layer(config->num_hidden_layers - 1));
  EXPECT_GT(config->n_shared_experts, 0);
  EXPECT_EQ(config->scoring_func, ScoringFunc::kSigmoid);
  EXPECT_GT(config->n_group, 1);
}

TEST(DefaultModelTest, TokenizerRoundTripsTheValidationText) {
  auto tokenizer = Tokenizer::Load(kModel);
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  EXPECT_GE((*tokenizer)->vocab_size(), 512u);
  EXPECT_LE((*tokenizer)->vocab_size(), 4096u + 16);
  const std::string text = ReadFile(kSlice);
  ASSERT_GT(text.size(), 10000u);
  auto ids = (*tokenizer)->Encode(text, false);
  ASSERT_TRUE(ids.ok()) << ids.status();
  EXPECT_LT(ids->size(), text.size() / 2) << "the BPE should compress";
  auto decoded = (*tokenizer)->Decode(*ids, false);
  ASSERT_TRUE(decoded.ok());
  EXPECT_EQ(*decoded, text);
}

TEST(DefaultModelTest, EngineBitsPerByteMatchTheTrainingScript) {
  auto model = DeepseekModel::Load(kModel, {});
  ASSERT_TRUE(model.ok()) << model.status();
  auto tokenizer = Tokenizer::Load(kModel);
  ASSERT_TRUE(tokenizer.ok());
  ThreadPool pool(2);
  auto result = MeasurePerplexity(**model, **tokenizer, ReadFile(kSlice), 0, pool);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_NEAR(result->bits_per_byte(), kTrainingScriptBitsPerByte,
              0.01 * kTrainingScriptBitsPerByte);
  EXPECT_LT(result->bits_per_byte(), 3.0) << "a trained model, not a random one";
}

}  // namespace
}  // namespace baton
