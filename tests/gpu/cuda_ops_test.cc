// Every CUDA op against the CPU op it mirrors, on random inputs of real
// DeepSeek-V3 shapes. Skipped, saying why, where no GPU is usable.
#include "engine/cuda/cuda_ops.h"

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "engine/dtype.h"
#include "engine/kernels.h"
#include "gtest/gtest.h"

namespace baton {
namespace {

class CudaOpsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    if (cuda::DeviceCount(&why) == 0) GTEST_SKIP() << "no usable CUDA device: " << why;
  }
  std::vector<float> Random(size_t n, float stddev = 1.0f) {
    std::normal_distribution<float> dist(0.f, stddev);
    std::vector<float> v(n);
    for (float& x : v) x = dist(rng_);
    return v;
  }
  std::mt19937 rng_{17};
};

TEST_F(CudaOpsTest, RmsNormMatchesTheCpu) {
  const int64_t rows = 5, n = 7168;  // V3 hidden size.
  const std::vector<float> x = Random(rows * n), w = Random(n);
  std::vector<float> gpu(rows * n), cpu(rows * n);
  ASSERT_TRUE(cuda::RmsNorm(x.data(), w.data(), rows, n, 1e-6f, gpu.data()).ok());
  for (int64_t r = 0; r < rows; ++r) {
    kernels::RmsNorm(&x[r * n], w.data(), n, 1e-6f, &cpu[r * n]);
  }
  for (int64_t i = 0; i < rows * n; ++i)
    ASSERT_NEAR(gpu[i], cpu[i], 1e-4f * std::fabs(cpu[i]) + 1e-5f);
}

TEST_F(CudaOpsTest, MatMulBf16MatchesTheCpu) {
  ThreadPool pool(2);
  for (auto [m, rows, cols] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{
           {1, 576, 7168},
           {4, 1536, 512},
           {3, 7168, 2048},  // kv_a, q_b-like, expert down
           {2, 100, 1001},   // Unaligned rows: scalar loads.
           {40, 576, 7168},
           {130, 200, 100}}) {  // Prefill-shaped: the tiled kernel, ragged tiles.
    Matrix w(DType::kBF16, rows, cols);
    const std::vector<float> values = Random(rows * cols, 0.02f);
    for (int64_t i = 0; i < rows * cols; ++i) w.bf16()[i] = FloatToBf16(values[i]);
    const std::vector<float> x = Random(m * cols);
    std::vector<float> gpu(m * rows), cpu(m * rows);
    ASSERT_TRUE(cuda::MatMulBf16(x.data(), m, w.bf16(), rows, cols, gpu.data()).ok());
    kernels::MatMul(x.data(), cols, m, w, cpu.data(), rows, pool);
    for (int64_t i = 0; i < m * rows; ++i) {
      ASSERT_NEAR(gpu[i], cpu[i], 1e-3f) << "m=" << m << " rows=" << rows << " cols=" << cols;
    }
  }
}

// The tensor-core path of prefill-sized products (fp32 activations as two
// BF16 halves through cuBLAS): within rounding of the CPU's fp32 product,
// which BF16 activations alone would not be (the last case checks that
// the lo half matters).
TEST_F(CudaOpsTest, TensorCoreMatMulMatchesTheCpu) {
  ThreadPool pool(2);
  for (auto [m, rows, cols] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{
           {64, 2112, 7168},    // V3 q_a + kv_a at the smallest tensor-core chunk.
           {130, 576, 512},     // Ragged rows.
           {512, 3072, 2048},   // V2-Lite q_proj.
           {77, 100, 1001}}) {  // Unaligned columns.
    Matrix w(DType::kBF16, rows, cols);
    const std::vector<float> values = Random(rows * cols, 0.02f);
    for (int64_t i = 0; i < rows * cols; ++i) w.bf16()[i] = FloatToBf16(values[i]);
    const std::vector<float> x = Random(m * cols);
    std::vector<float> gpu(m * rows), cpu(m * rows);
    const absl::Status s =
        cuda::TensorCoreMatMulBf16(x.data(), m, w.bf16(), rows, cols, gpu.data());
    if (absl::IsNotFound(s)) GTEST_SKIP() << s.message();
    ASSERT_TRUE(s.ok()) << s;
    kernels::MatMul(x.data(), cols, m, w, cpu.data(), rows, pool);
    double worst = 0;
    for (int64_t i = 0; i < m * rows; ++i) {
      worst = std::max(worst, std::fabs(static_cast<double>(gpu[i]) - cpu[i]));
      ASSERT_NEAR(gpu[i], cpu[i], 2e-4f) << "m=" << m << " rows=" << rows << " cols=" << cols;
    }
    // BF16 activations alone would be off by ~2^-9 of each term: far more.
    std::vector<float> rounded(x.size());
    for (size_t i = 0; i < x.size(); ++i) rounded[i] = Bf16ToFloat(FloatToBf16(x[i]));
    std::vector<float> coarse(m * rows);
    kernels::MatMul(rounded.data(), cols, m, w, coarse.data(), rows, pool);
    double coarse_worst = 0;
    for (int64_t i = 0; i < m * rows; ++i) {
      coarse_worst = std::max(coarse_worst, std::fabs(static_cast<double>(coarse[i]) - cpu[i]));
    }
    EXPECT_LT(worst * 8, coarse_worst) << "m=" << m << " rows=" << rows << " cols=" << cols;
  }
}

// MLA's per-head up-projections as the backend runs them on tensor cores:
// one strided-batched product per head over interleaved activations (tiny-a's
// k_up: 4 heads of 32 x 32, queries 48 apart in rows of 192), each within
// rounding of the CPU's product, and the columns between heads untouched.
TEST_F(CudaOpsTest, TensorCoreBatchedMatMulMatchesTheCpuPerHead) {
  ThreadPool pool(2);
  constexpr int64_t kM = 400, kRows = 32, kCols = 32, kHeads = 4, kStrideX = 48, kLdx = 192;
  constexpr int64_t kStrideY = 48, kLdy = 192;
  const std::vector<float> x = Random(kM * kLdx);
  const std::vector<float> values = Random(kHeads * kRows * kCols, 0.05f);
  std::vector<uint16_t> w(values.size());
  for (size_t i = 0; i < w.size(); ++i) w[i] = FloatToBf16(values[i]);
  std::vector<float> gpu(kM * kLdy, 7.f);
  const absl::Status s =
      cuda::TensorCoreMatMulBf16Batched(x.data(), kLdx, kM, w.data(), kRows, kCols, gpu.data(),
                                        kLdy, kHeads, kStrideX, kRows * kCols, kStrideY);
  if (absl::IsNotFound(s)) GTEST_SKIP() << s.message();
  ASSERT_TRUE(s.ok()) << s;
  for (int64_t h = 0; h < kHeads; ++h) {
    Matrix head(DType::kBF16, kRows, kCols);
    std::copy_n(&w[h * kRows * kCols], kRows * kCols, head.bf16());
    std::vector<float> cpu(kM * kRows);
    kernels::MatMul(&x[h * kStrideX], kLdx, kM, head, cpu.data(), kRows, pool);
    for (int64_t t = 0; t < kM; ++t) {
      for (int64_t j = 0; j < kStrideY; ++j) {
        const float got = gpu[t * kLdy + h * kStrideY + j];
        if (j < kRows) {
          ASSERT_NEAR(got, cpu[t * kRows + j], 2e-4f) << "head " << h << " token " << t;
        } else {
          ASSERT_EQ(got, 7.f) << "head " << h << " token " << t << " column " << j;
        }
      }
    }
  }
}

// A step's experts in one launch: each product as the CPU computes it, and
// bit for bit as the same product launched alone (batch invariance).
TEST_F(CudaOpsTest, GroupedMatMulBf16MatchesTheCpuAndTheSingleLaunch) {
  ThreadPool pool(2);
  const int64_t rows = 2816, cols = 2048;  // A V2-Lite expert's gate/up.
  std::vector<Matrix> weights;
  std::vector<std::vector<float>> inputs;
  const std::vector<int64_t> tokens = {1, 3, 9, 17};
  for (int64_t m : tokens) {
    Matrix w(DType::kBF16, rows, cols);
    const std::vector<float> values = Random(rows * cols, 0.02f);
    for (int64_t i = 0; i < rows * cols; ++i) w.bf16()[i] = FloatToBf16(values[i]);
    weights.push_back(std::move(w));
    inputs.push_back(Random(m * cols));
  }
  std::vector<std::vector<float>> grouped(tokens.size());
  std::vector<cuda::Bf16Product> products;
  for (size_t g = 0; g < tokens.size(); ++g) {
    grouped[g].resize(tokens[g] * rows);
    products.push_back(
        {inputs[g].data(), tokens[g], weights[g].bf16(), rows, cols, grouped[g].data()});
  }
  ASSERT_TRUE(cuda::GroupedMatMulBf16(products).ok());
  for (size_t g = 0; g < tokens.size(); ++g) {
    const int64_t m = tokens[g];
    std::vector<float> alone(m * rows), cpu(m * rows);
    ASSERT_TRUE(
        cuda::MatMulBf16(inputs[g].data(), m, weights[g].bf16(), rows, cols, alone.data()).ok());
    kernels::MatMul(inputs[g].data(), cols, m, weights[g], cpu.data(), rows, pool);
    int64_t differ = 0;
    for (int64_t i = 0; i < m * rows; ++i) differ += grouped[g][i] != alone[i];
    EXPECT_EQ(differ, 0) << "of product " << g << "'s " << m * rows << " results";
    for (int64_t i = 0; i < m * rows; ++i) ASSERT_NEAR(grouped[g][i], cpu[i], 1e-3f) << g;
  }
}

TEST_F(CudaOpsTest, RopeMatchesTheCpu) {
  const int64_t rows = 128, dim = 64;  // V3 heads x qk_rope_head_dim.
  std::vector<float> x = Random(rows * dim), cpu = x;
  const std::vector<float> angles = Random(dim / 2);
  std::vector<float> cos(dim / 2), sin(dim / 2);
  for (int64_t i = 0; i < dim / 2; ++i) {
    cos[i] = std::cos(angles[i]);
    sin[i] = std::sin(angles[i]);
  }
  ASSERT_TRUE(cuda::RopeInterleaved(x.data(), rows, dim, cos.data(), sin.data()).ok());
  for (int64_t r = 0; r < rows; ++r)
    kernels::RopeInterleaved(&cpu[r * dim], dim, cos.data(), sin.data());
  for (int64_t i = 0; i < rows * dim; ++i) ASSERT_NEAR(x[i], cpu[i], 1e-5f);
}

// Three sequences of different lengths (one within a block, one ending
// mid-block, one long) sharing a paged cache with shuffled blocks; V3's
// latent width, 16 and 128 heads. The CPU side is the engine's own attention
// kernels over the same BF16 rows.
TEST_F(CudaOpsTest, MlaDecodeAttentionMatchesTheCpu) {
  const int64_t width = 576, lora = 512, block_rows = 16;
  const std::vector<int32_t> lengths = {5, 37, 2048};
  const int64_t max_blocks = 2048 / block_rows, blocks = 3 * max_blocks;
  std::vector<uint16_t> cache(blocks * block_rows * width);
  for (uint16_t& v : cache) v = FloatToBf16(Random(1)[0]);
  std::vector<int32_t> order(blocks);
  for (int64_t b = 0; b < blocks; ++b) order[b] = static_cast<int32_t>(b);
  std::shuffle(order.begin(), order.end(), rng_);
  std::vector<int32_t> tables(order.begin(), order.end());  // [3][max_blocks]
  const float scale = 0.0417f;
  for (int64_t heads : {16, 128}) {
    const int64_t tokens = static_cast<int64_t>(lengths.size());
    const std::vector<float> q = Random(tokens * heads * width);
    std::vector<float> gpu(tokens * heads * lora);
    ASSERT_TRUE(cuda::MlaDecodeAttention(q.data(), tokens, heads, width, lora, cache.data(), blocks,
                                         block_rows, tables.data(), max_blocks, lengths.data(),
                                         scale, gpu.data())
                    .ok());
    for (int64_t t = 0; t < tokens; ++t) {
      const int64_t len = lengths[t];
      std::vector<const uint16_t*> rows;
      for (int64_t b = 0; b * block_rows < len; ++b) {
        rows.push_back(&cache[tables[t * max_blocks + b] * block_rows * width]);
      }
      std::vector<float> scores(heads * len), cpu(heads * lora);
      for (int64_t j = 0; j < len; j += block_rows) {
        kernels::AttentionScores(&q[t * heads * width], width, heads, rows[j / block_rows],
                                 std::min(block_rows, len - j), width, &scores[j], len);
      }
      for (int64_t h = 0; h < heads; ++h) {
        for (int64_t j = 0; j < len; ++j) scores[h * len + j] *= scale;
        kernels::Softmax(&scores[h * len], len);
      }
      kernels::AttentionSums(scores.data(), len, heads, rows.data(), block_rows, width, len, lora,
                             cpu.data(), lora);
      for (int64_t i = 0; i < heads * lora; ++i) {
        ASSERT_NEAR(gpu[t * heads * lora + i], cpu[i], 1e-4f + 1e-3f * std::fabs(cpu[i]))
            << "heads " << heads << ", token " << t << ", element " << i;
      }
    }
  }
  // A block table naming a block outside the cache is refused, not read.
  std::vector<int32_t> bad = tables;
  bad[0] = static_cast<int32_t>(blocks);
  std::vector<float> out(3 * 16 * lora);
  EXPECT_EQ(cuda::MlaDecodeAttention(Random(3 * 16 * width).data(), 3, 16, width, lora,
                                     cache.data(), blocks, block_rows, bad.data(), max_blocks,
                                     lengths.data(), scale, out.data())
                .code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace baton
