#include "engine/kernels.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <random>
#include <type_traits>
#include <vector>

#include "gtest/gtest.h"

namespace baton {
namespace {

Matrix RandomMatrix(DType dtype, int64_t rows, int64_t cols, std::mt19937& rng) {
  std::normal_distribution<float> dist;
  Matrix m(dtype, rows, cols);
  for (int64_t i = 0; i < rows * cols; ++i) {
    if (dtype == DType::kF32) {
      m.f32()[i] = dist(rng);
    } else {
      m.bf16()[i] = FloatToBf16(dist(rng));
    }
  }
  return m;
}

// Every shape class: tails of 16 columns, 4 rows and 4 tokens, and panels.
TEST(KernelsTest, MatMulMatchesNaiveForAllShapesAndTypes) {
  std::mt19937 rng(7);
  ThreadPool pool(2);
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    for (auto [m, n, k] : std::vector<std::tuple<int, int, int>>{
             {1, 1, 1}, {1, 7, 33}, {3, 9, 16}, {5, 13, 100}, {70, 21, 64}, {130, 4, 17}}) {
      Matrix w = RandomMatrix(dtype, n, k, rng);
      std::vector<float> x(m * (k + 3));
      std::normal_distribution<float> dist;
      for (float& v : x) v = dist(rng);
      std::vector<float> y(m * (n + 2), -1.f);
      kernels::MatMul(x.data(), k + 3, m, w, y.data(), n + 2, pool);
      for (int i = 0; i < m; ++i) {
        for (int j = 0; j < n; ++j) {
          double want = 0;
          for (int c = 0; c < k; ++c) want += double{x[i * (k + 3) + c]} * w.At(j, c);
          EXPECT_NEAR(y[i * (n + 2) + j], want, 1e-4 * std::sqrt(k) + 1e-5)
              << DTypeName(dtype) << " m=" << m << " n=" << n << " k=" << k;
        }
        EXPECT_EQ(y[i * (n + 2) + n], -1.f) << "wrote past the row";
      }
    }
  }
}

// The panel layout changes addresses only: every product must equal the
// row-major one bit for bit (batch invariance and disaggregation rely on
// it), whole matrices and panel-aligned row ranges, with every tail.
TEST(KernelsTest, PanelLayoutGivesBitIdenticalProducts) {
  std::mt19937 rng(11);
  ThreadPool pool(2);
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    for (auto [m, n, k] : std::vector<std::tuple<int, int, int>>{
             {1, 1, 1}, {1, 7, 33}, {2, 9, 16}, {5, 13, 100}, {70, 21, 64}, {4, 128, 576}}) {
      const Matrix rows = RandomMatrix(dtype, n, k, rng);
      const Matrix panels = rows.ToPanels();
      ASSERT_TRUE(panels.panels);
      for (int r = 0; r < n; ++r) {
        for (int c = 0; c < k; ++c) ASSERT_EQ(panels.At(r, c), rows.At(r, c));
      }
      EXPECT_EQ(panels.bytes(), rows.bytes());
      std::vector<float> x(m * k);
      std::normal_distribution<float> dist;
      for (float& v : x) v = dist(rng);
      std::vector<float> want(m * n), got(m * n, -1.f);
      kernels::MatMul(x.data(), k, m, rows, want.data(), n, pool);
      kernels::MatMul(x.data(), k, m, panels, got.data(), n, pool);
      EXPECT_EQ(got, want) << DTypeName(dtype) << " m=" << m << " n=" << n << " k=" << k;
      // A range that starts on a panel and ends anywhere.
      const int begin = n >= 8 ? 4 : 0, end = n - (n > 5 ? 1 : 0);
      std::vector<float> part(m * (end - begin), -1.f);
      kernels::MatMulRows(x.data(), k, m, panels, begin, end, part.data(), end - begin);
      for (int i = 0; i < m; ++i) {
        for (int j = begin; j < end; ++j) {
          ASSERT_EQ(part[i * (end - begin) + j - begin], want[i * n + j]) << "row " << j;
        }
      }
    }
  }
}

// BF16 activations: the product of x rounded to BF16 with the BF16 weights,
// accumulated in fp32; a row's result is the same alone or in a batch.
TEST(KernelsTest, Bf16PrecisionRoundsActivationsAndStaysBatchInvariant) {
  if (!kernels::HasBf16DotProducts()) GTEST_SKIP() << "this CPU has no AVX512_BF16";
  std::mt19937 rng(5);
  ThreadPool pool(2);
  for (auto [m, n, k] : std::vector<std::tuple<int, int, int>>{
           {1, 5, 7}, {3, 13, 100}, {9, 64, 576}, {70, 21, 64}}) {
    const Matrix w = RandomMatrix(DType::kBF16, n, k, rng).ToPanels();
    std::vector<float> x(m * k);
    std::normal_distribution<float> dist;
    for (float& v : x) v = dist(rng);
    std::vector<float> y(m * n);
    kernels::MatMul(x.data(), k, m, w, y.data(), n, pool, kernels::Precision::kBf16);
    for (int i = 0; i < m; ++i) {
      std::vector<float> alone(n);
      kernels::MatMulRows(&x[i * k], k, 1, w, 0, n, alone.data(), n, kernels::Precision::kBf16);
      for (int j = 0; j < n; ++j) {
        double want = 0;
        for (int c = 0; c < k; ++c)
          want += double{Bf16ToFloat(FloatToBf16(x[i * k + c]))} * w.At(j, c);
        EXPECT_NEAR(y[i * n + j], want, 1e-4 * std::sqrt(k) + 1e-5) << "m=" << m << " k=" << k;
        ASSERT_EQ(alone[j], y[i * n + j]) << "row " << i << " differs alone and in a batch";
      }
    }
  }
}

template <typename E>
std::vector<E> RandomRows(int64_t size, std::mt19937& rng) {
  std::normal_distribution<float> dist;
  std::vector<E> v(size);
  for (E& e : v) {
    if constexpr (std::is_same_v<E, float>) {
      e = dist(rng);
    } else {
      e = FloatToBf16(dist(rng));
    }
  }
  return v;
}
double Value(float v) { return v; }
double Value(uint16_t v) { return Bf16ToFloat(v); }

// Every head-group and column tail, odd row counts, rows spread over blocks
// with gaps; results equal to exact sums within fp32 rounding, and the same
// bits whatever the heads, rows or columns around them.
template <typename E>
void CheckAttentionKernels() {
  std::mt19937 rng(11);
  for (auto [m, n, k] : std::vector<std::tuple<int, int, int>>{
           {1, 1, 1}, {3, 5, 40}, {8, 16, 576}, {16, 33, 576}, {13, 2, 70}, {20, 47, 512}}) {
    SCOPED_TRACE(testing::Message() << m << " heads, " << n << " rows, " << k << " columns");
    const std::vector<float> q = RandomRows<float>(m * k, rng);
    const std::vector<E> rows = RandomRows<E>(n * k, rng);
    std::vector<float> y(m * (n + 1), -1.f);
    kernels::AttentionScores(q.data(), k, m, rows.data(), n, k, y.data(), n + 1);
    for (int i = 0; i < m; ++i) {
      for (int j = 0; j < n; ++j) {
        double want = 0;
        for (int c = 0; c < k; ++c) want += double{q[i * k + c]} * Value(rows[j * k + c]);
        EXPECT_NEAR(y[i * (n + 1) + j], want, 1e-5 * k + 1e-6);
        float alone = 0;  // One head against one row.
        kernels::AttentionScores(&q[i * k], k, 1, &rows[j * k], 1, k, &alone, 1);
        ASSERT_EQ(alone, y[i * (n + 1) + j]) << "score (" << i << ", " << j << ") moved";
      }
    }

    // Sums over the rows laid out in blocks of 3 with 5 columns of NaN gap.
    const std::vector<float> p = RandomRows<float>(m * n, rng);
    const int block_rows = 3, ldr = k + 5;
    std::vector<E> storage((n / block_rows + 1) * block_rows * ldr);
    for (E& e : storage) {
      if constexpr (std::is_same_v<E, float>) {
        e = NAN;
      } else {
        e = 0x7fc0;  // BF16 NaN
      }
    }
    std::vector<const E*> blocks;
    for (int b = 0; b * block_rows < n; ++b) blocks.push_back(&storage[b * block_rows * ldr]);
    for (int j = 0; j < n; ++j) {
      std::copy(&rows[j * k], &rows[j * k] + k,
                &storage[j / block_rows * block_rows * ldr + j % block_rows * ldr]);
    }
    std::vector<float> out(m * (k + 2), -1.f);
    kernels::AttentionSums(p.data(), n, m, blocks.data(), block_rows, ldr, n, k, out.data(), k + 2);
    for (int i = 0; i < m; ++i) {
      for (int c = 0; c < k; ++c) {
        double want = 0;
        for (int j = 0; j < n; ++j) want += double{p[i * n + j]} * Value(rows[j * k + c]);
        EXPECT_NEAR(out[i * (k + 2) + c], want, 1e-5 * n + 1e-6);
      }
      EXPECT_EQ(out[i * (k + 2) + k], -1.f) << "wrote past the columns";
      for (int c0 = 0; c0 < k; c0 += 5) {  // One head, 5 columns at a time.
        const int cols = std::min(5, k - c0);
        std::vector<const E*> sliced;
        for (const E* b : blocks) sliced.push_back(b + c0);
        std::vector<float> part(cols);
        kernels::AttentionSums(&p[i * n], n, 1, sliced.data(), block_rows, ldr, n, cols,
                               part.data(), cols);
        for (int c = 0; c < cols; ++c) {
          ASSERT_EQ(part[c], out[i * (k + 2) + c0 + c])
              << "sum (" << i << ", " << c0 + c << ") moved";
        }
      }
    }
  }
}

TEST(KernelsTest, AttentionOverF32CacheMatchesNaiveAndIgnoresGrouping) {
  CheckAttentionKernels<float>();
}

TEST(KernelsTest, AttentionOverBf16CacheMatchesNaiveAndIgnoresGrouping) {
  CheckAttentionKernels<uint16_t>();
}

// Every length class (tails of 16), spreads from tiny to beyond the float
// exponent's range (those underflow to 0, as in exact arithmetic).
TEST(KernelsTest, SoftmaxMatchesDoublePrecision) {
  std::mt19937 rng(3);
  for (int n : {1, 7, 16, 33, 2048}) {
    for (float spread : {1e-3f, 1.f, 30.f, 200.f}) {
      std::normal_distribution<float> dist(5.f, spread);
      std::vector<float> x(n);
      for (float& v : x) v = dist(rng);
      std::vector<double> want(x.begin(), x.end());
      const double top = *std::max_element(want.begin(), want.end());
      double sum = 0;
      for (double& v : want) sum += (v = std::exp(v - top));
      kernels::Softmax(x.data(), n);
      for (int i = 0; i < n; ++i) {
        // Relative 2e-5: x - max is rounded to float first, and e^(x - max)
        // inherits that rounding (up to 4e-6 for arguments near -87).
        ASSERT_NEAR(x[i], want[i] / sum, 2e-5 * want[i] / sum + 1e-37)
            << "n=" << n << " spread=" << spread << " i=" << i;
      }
    }
  }
}

// Several products in one fork-join equal each product alone, bit for bit,
// in both precisions and with more tokens than one activation panel.
TEST(KernelsTest, MatMulManyEqualsMatMul) {
  std::mt19937 rng(9);
  ThreadPool pool(2);
  for (kernels::Precision precision : {kernels::Precision::kF32, kernels::Precision::kBf16}) {
    std::vector<Matrix> ws;
    ws.push_back(RandomMatrix(DType::kBF16, 40, 96, rng).ToPanels());
    ws.push_back(RandomMatrix(DType::kF32, 13, 50, rng));
    ws.push_back(RandomMatrix(DType::kBF16, 130, 64, rng).ToPanels());
    const std::vector<int64_t> tokens = {1, 70, 130};
    std::vector<std::vector<float>> xs, many, alone;
    std::vector<kernels::Product> products;
    std::normal_distribution<float> dist;
    for (size_t i = 0; i < ws.size(); ++i) {
      xs.emplace_back(tokens[i] * ws[i].cols);
      for (float& v : xs.back()) v = dist(rng);
      many.emplace_back(tokens[i] * ws[i].rows, -1.f);
      alone.emplace_back(tokens[i] * ws[i].rows, -2.f);
    }
    for (size_t i = 0; i < ws.size(); ++i) {
      products.push_back({xs[i].data(), ws[i].cols, tokens[i], &ws[i], many[i].data(), ws[i].rows});
      kernels::MatMul(xs[i].data(), ws[i].cols, tokens[i], ws[i], alone[i].data(), ws[i].rows, pool,
                      precision);
    }
    kernels::MatMulMany(products, pool, precision);
    for (size_t i = 0; i < ws.size(); ++i) EXPECT_EQ(many[i], alone[i]) << "product " << i;
  }
}

TEST(KernelsTest, RmsNormSoftmaxRope) {
  std::vector<float> x = {1, 2, 3, 4}, w = {1, 1, 2, 2}, out(4);
  kernels::RmsNorm(x.data(), w.data(), 4, 0.f, out.data());
  const float rms = std::sqrt((1 + 4 + 9 + 16) / 4.f);
  EXPECT_NEAR(out[3], 4 / rms * 2, 1e-6);

  std::vector<float> s = {0, std::log(3.f)};
  kernels::Softmax(s.data(), 2);
  EXPECT_NEAR(s[0], 0.25, 1e-6);

  std::vector<float> r = {1, 0, 0, 1};
  std::vector<float> cos = {0, 1}, sin = {1, 0};  // Rotate pair 0 by 90 degrees.
  kernels::RopeInterleaved(r.data(), 4, cos.data(), sin.data());
  EXPECT_NEAR(r[0], 0, 1e-7);
  EXPECT_NEAR(r[1], 1, 1e-7);
  EXPECT_NEAR(r[3], 1, 1e-7);
}

TEST(ThreadPoolTest, ParallelForCoversEveryIndexOnce) {
  ThreadPool pool(2);
  for (int64_t n : {0, 1, 5, 1000}) {
    std::vector<int> hits(n, 0);
    pool.ParallelFor(n, 3, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) ++hits[i];
    });
    for (int h : hits) EXPECT_EQ(h, 1);
  }
}

// Back-to-back jobs of different shapes: a worker late for one job must never
// run a chunk of the next with the wrong fields.
TEST(ThreadPoolTest, BackToBackJobsNeverOverlap) {
  ThreadPool pool(3);
  std::vector<std::atomic<int>> hits(256);
  for (int job = 0; job < 20000; ++job) {
    const int64_t n = 1 + (job * 37) % 256;
    const int64_t grain = 1 + job % 5;
    pool.ParallelFor(n, grain, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) hits[i].fetch_add(1);
    });
    for (int64_t i = 0; i < 256; ++i) {
      ASSERT_EQ(hits[i].exchange(0), i < n ? 1 : 0) << "job " << job << " index " << i;
    }
  }
}

}  // namespace
}  // namespace baton
