#include "engine/safetensors.h"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "engine/deepseek_model.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace baton {
namespace {

using ::testing::HasSubstr;

const std::string kTinyA = std::string(BATON_TEST_DATA) + "/golden/tiny-a";

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void WriteAll(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out << bytes;
}

// A copy of tiny-a whose model.safetensors the test may damage.
class DamagedCheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ::testing::TempDir() + "/baton_damaged_" +
           ::testing::UnitTest::GetInstance()->current_test_info()->name();
    std::filesystem::create_directories(dir_);
    std::filesystem::copy_file(kTinyA + "/config.json", dir_ + "/config.json",
                               std::filesystem::copy_options::overwrite_existing);
    original_ = ReadAll(kTinyA + "/model.safetensors");
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  absl::Status LoadWith(const std::string& bytes) {
    WriteAll(dir_ + "/model.safetensors", bytes);
    return DeepseekModel::Load(dir_, {}).status();
  }
  // Rewrites the JSON header, keeping the data.
  std::string WithHeader(const std::string& header) {
    uint64_t old_len = 0;
    std::memcpy(&old_len, original_.data(), 8);
    std::string padded = header;
    std::string out(8, '\0');
    uint64_t len = padded.size();
    std::memcpy(out.data(), &len, 8);
    return out + padded + original_.substr(8 + old_len);
  }
  std::string Header() {
    uint64_t len = 0;
    std::memcpy(&len, original_.data(), 8);
    return original_.substr(8, len);
  }

  std::string dir_;
  std::string original_;
};

TEST_F(DamagedCheckpointTest, IntactCopyLoads) { EXPECT_TRUE(LoadWith(original_).ok()); }

TEST_F(DamagedCheckpointTest, TruncatedFileNamesFileAndTensor) {
  absl::Status s = LoadWith(original_.substr(0, original_.size() / 2));
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(s.message()), HasSubstr("model.safetensors"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("truncated"));
}

TEST_F(DamagedCheckpointTest, TinyFileIsRejected) {
  absl::Status s = LoadWith("abc");
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
}

TEST_F(DamagedCheckpointTest, GarbageHeaderIsRejected) {
  std::string bytes = original_;
  for (int i = 8; i < 40; ++i) bytes[i] = '\x01';
  absl::Status s = LoadWith(bytes);
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(s.message()), HasSubstr("header"));
}

TEST_F(DamagedCheckpointTest, HugeHeaderLengthIsRejected) {
  std::string bytes = original_;
  for (int i = 0; i < 8; ++i) bytes[i] = '\xff';
  EXPECT_EQ(LoadWith(bytes).code(), absl::StatusCode::kDataLoss);
}

TEST_F(DamagedCheckpointTest, WrongShapeNamesTheTensor) {
  std::string header = Header();
  const std::string from = "\"model.norm.weight\":{\"dtype\":\"BF16\",\"shape\":[64]";
  size_t at = header.find(from);
  ASSERT_NE(at, std::string::npos) << header.substr(0, 300);
  // Same byte count, different shape: only the loader's shape check can tell.
  header.replace(at, from.size(), "\"model.norm.weight\":{\"dtype\":\"BF16\",\"shape\":[2,32]");
  absl::Status s = LoadWith(WithHeader(header));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("model.norm.weight"));
  EXPECT_THAT(std::string(s.message()), HasSubstr("[2, 32]"));
}

TEST_F(DamagedCheckpointTest, MissingTensorIsNamed) {
  std::string header = Header();
  size_t at = header.find("\"model.norm.weight\"");
  ASSERT_NE(at, std::string::npos);
  header.replace(at, 19, "\"model.nxrm.weight\"");
  absl::Status s = LoadWith(WithHeader(header));
  EXPECT_THAT(std::string(s.message()), HasSubstr("missing tensor \"model.norm.weight\""));
}

TEST_F(DamagedCheckpointTest, UnsupportedDtypeIsNamed) {
  std::string header = Header();
  const std::string from = "\"model.norm.weight\":{\"dtype\":\"BF16\"";
  size_t at = header.find(from);
  ASSERT_NE(at, std::string::npos);
  header.replace(at, from.size(), "\"model.norm.weight\":{\"dtype\":\"C64\" ");
  absl::Status s = LoadWith(WithHeader(header));
  EXPECT_THAT(std::string(s.message()), HasSubstr("unsupported dtype C64"));
}

TEST_F(DamagedCheckpointTest, MismatchedConfigIsReported) {
  std::string config = ReadAll(kTinyA + "/config.json");
  size_t at = config.find("\"hidden_size\": 64");
  ASSERT_NE(at, std::string::npos);
  config.replace(at, 17, "\"hidden_size\": 96");
  WriteAll(dir_ + "/config.json", config);
  absl::Status s = LoadWith(original_);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("expected [320, 96]"));
}

TEST_F(DamagedCheckpointTest, MissingDirectoryIsNotFound) {
  EXPECT_EQ(DeepseekModel::Load(dir_ + "/nope", {}).status().code(), absl::StatusCode::kNotFound);
}

TEST(SafetensorsTest, MtpLayerIsIgnoredAndReadsAreViews) {
  auto checkpoint = Checkpoint::Open(kTinyA);
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  EXPECT_NE((*checkpoint)->Find("model.layers.3.eh_proj.weight"), nullptr);
  const TensorView* bias = (*checkpoint)->Find("model.layers.1.mlp.gate.e_score_correction_bias");
  ASSERT_NE(bias, nullptr);
  EXPECT_EQ(bias->dtype, DType::kF32);
  EXPECT_EQ(bias->ShapeString(), "[16]");
}

TEST(DTypeTest, Fp8E4M3DecodesEdgeValues) {
  EXPECT_EQ(Fp8E4M3ToFloat(0x00), 0.0f);
  EXPECT_EQ(Fp8E4M3ToFloat(0x38), 1.0f);
  EXPECT_EQ(Fp8E4M3ToFloat(0x7e), 448.0f);
  EXPECT_EQ(Fp8E4M3ToFloat(0xfe), -448.0f);
  EXPECT_EQ(Fp8E4M3ToFloat(0x01), 0.001953125f);  // Smallest subnormal, 2^-9.
  EXPECT_TRUE(std::isnan(Fp8E4M3ToFloat(0x7f)));
  EXPECT_EQ(Bf16ToFloat(FloatToBf16(1.00390625f)), 1.0f);  // Ties to even.
  EXPECT_EQ(F16ToFloat(0x3c00), 1.0f);
  EXPECT_EQ(F16ToFloat(0xc000), -2.0f);
}

}  // namespace
}  // namespace baton
