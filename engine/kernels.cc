#include "engine/kernels.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <string>
#include <vector>

#include "engine/kernels_avx2.h"
#include "engine/kernels_avx512.h"

namespace baton::kernels {
namespace {

enum class Isa { kGeneric, kAvx2, kAvx512 };

// Chosen once; BATON_ISA=generic|avx2 forces a lower level (for tests that
// compare the paths).
Isa DetectIsa() {
  Isa best = Isa::kGeneric;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) best = Isa::kAvx2;
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl")) {
    best = Isa::kAvx512;
  }
  if (const char* forced = std::getenv("BATON_ISA")) {
    const std::string f = forced;
    if (f == "generic") best = Isa::kGeneric;
    if (f == "avx2" && best == Isa::kAvx512) best = Isa::kAvx2;
  }
  return best;
}

Isa CurrentIsa() {
  static const Isa isa = DetectIsa();
  return isa;
}

bool HasAvx512() { return CurrentIsa() == Isa::kAvx512; }
bool HasAvx2() { return CurrentIsa() == Isa::kAvx2; }

bool DetectBf16() { return HasAvx512() && __builtin_cpu_supports("avx512bf16"); }

bool UseBf16(const Matrix& w, Precision precision) {
  return precision == Precision::kBf16 && w.dtype == DType::kBF16 && w.panels &&
         HasBf16DotProducts();
}

// Rows of x rounded to BF16, each zero-padded to `padded` columns.
void ToBf16Rows(const float* x, int64_t ldx, int64_t m, int64_t k, int64_t padded,
                std::vector<uint16_t>* out) {
  out->assign(static_cast<size_t>(m * padded), 0);
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t c = 0; c < k; ++c) (*out)[i * padded + c] = FloatToBf16(x[i * ldx + c]);
  }
}

template <typename LoadW>
void MatMulRowsGeneric(const float* x, int64_t ldx, int64_t m, int64_t k, LoadW load_w,
                       int64_t row_begin, int64_t row_end, float* y, int64_t ldy) {
  for (int64_t j = row_begin; j < row_end; ++j) {
    for (int64_t i = 0; i < m; ++i) {
      const float* xi = x + i * ldx;
      float acc = 0.f;
      for (int64_t c = 0; c < k; ++c) acc += xi[c] * load_w(j, c);
      y[i * ldy + (j - row_begin)] = acc;
    }
  }
}

}  // namespace

bool HasBf16DotProducts() {
  static const bool has = DetectBf16();
  return has;
}

const char* IsaName() {
  switch (CurrentIsa()) {
    case Isa::kAvx512:
      return "avx512";
    case Isa::kAvx2:
      return "avx2";
    case Isa::kGeneric:
      break;
  }
  return "generic";
}

void MatMulRows(const float* x, int64_t ldx, int64_t m, const Matrix& w, int64_t row_begin,
                int64_t row_end, float* y, int64_t ldy, Precision precision) {
  if (UseBf16(w, precision)) {
    thread_local std::vector<uint16_t> xb;
    ToBf16Rows(x, ldx, m, w.cols, w.padded_cols(), &xb);
    avx512::MatMulRowsBf16(xb.data(), w.padded_cols(), m, w, row_begin, row_end, y, ldy);
    return;
  }
  if (HasAvx512()) {
    avx512::MatMulRows(x, ldx, m, w, row_begin, row_end, y, ldy);
    return;
  }
  if (HasAvx2()) {
    avx2::MatMulRows(x, ldx, m, w, row_begin, row_end, y, ldy);
    return;
  }
  MatMulRowsGeneric(
      x, ldx, m, w.cols, [&](int64_t j, int64_t c) { return w.At(j, c); }, row_begin, row_end, y,
      ldy);
}

namespace {

// Panels of x rows keep the activations cache-resident while every thread
// streams its own contiguous slice of weight rows.
constexpr int64_t kActivationPanel = 64;

// Weight rows per chunk handed to a thread: at least ~32K multiply-adds
// (smaller ones cost more to hand out than to compute), in whole panels so
// that every chunk starts on a panel boundary.
int64_t ChunkRows(int64_t tokens, const Matrix& w) {
  const int64_t grain =
      std::max<int64_t>(16, (int64_t{32} << 10) / std::max<int64_t>(1, tokens * w.cols));
  return (grain + kPanelRows - 1) / kPanelRows * kPanelRows;
}

}  // namespace

void MatMulMany(const std::vector<Product>& products, ThreadPool& pool, Precision precision) {
  // (product, 64-row panel of its x, range of weight rows), as MatMul
  // splits one product.
  struct Chunk {
    size_t product;
    int64_t i0, rows, begin, end;
  };
  std::vector<Chunk> chunks;
  std::vector<std::vector<uint16_t>> xb(products.size());
  for (size_t i = 0; i < products.size(); ++i) {
    const Product& p = products[i];
    if (p.m == 0) continue;
    if (UseBf16(*p.w, precision)) {  // Rounded once per product, not once per chunk.
      ToBf16Rows(p.x, p.ldx, p.m, p.w->cols, p.w->padded_cols(), &xb[i]);
    }
    for (int64_t i0 = 0; i0 < p.m; i0 += kActivationPanel) {
      const int64_t rows = std::min(kActivationPanel, p.m - i0);
      const int64_t grain = ChunkRows(rows, *p.w);
      for (int64_t r = 0; r < p.w->rows; r += grain) {
        chunks.push_back({i, i0, rows, r, std::min(p.w->rows, r + grain)});
      }
    }
  }
  pool.ParallelFor(static_cast<int64_t>(chunks.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      const Chunk& chunk = chunks[c];
      const Product& p = products[chunk.product];
      float* y = p.y + chunk.i0 * p.ldy + chunk.begin;
      if (!xb[chunk.product].empty()) {
        const int64_t padded = p.w->padded_cols();
        avx512::MatMulRowsBf16(xb[chunk.product].data() + chunk.i0 * padded, padded, chunk.rows,
                               *p.w, chunk.begin, chunk.end, y, p.ldy);
      } else {
        MatMulRows(p.x + chunk.i0 * p.ldx, p.ldx, chunk.rows, *p.w, chunk.begin, chunk.end, y,
                   p.ldy);
      }
    }
  });
}

void MatMul(const float* x, int64_t ldx, int64_t m, const Matrix& w, float* y, int64_t ldy,
            ThreadPool& pool, Precision precision) {
  const bool bf16 = UseBf16(w, precision);
  std::vector<uint16_t> xb;
  for (int64_t i0 = 0; i0 < m; i0 += kActivationPanel) {
    const int64_t rows = std::min(kActivationPanel, m - i0);
    const int64_t grain = ChunkRows(rows, w);
    if (bf16) {
      // Rounded once per panel, not once per chunk.
      const int64_t padded = w.padded_cols();
      ToBf16Rows(x + i0 * ldx, ldx, rows, w.cols, padded, &xb);
      pool.ParallelFor(w.rows, grain, [&](int64_t begin, int64_t end) {
        avx512::MatMulRowsBf16(xb.data(), padded, rows, w, begin, end, y + i0 * ldy + begin, ldy);
      });
      continue;
    }
    pool.ParallelFor(w.rows, grain, [&](int64_t begin, int64_t end) {
      MatMulRows(x + i0 * ldx, ldx, rows, w, begin, end, y + i0 * ldy + begin, ldy);
    });
  }
}

namespace {

template <typename E>
void AttentionScoresGeneric(const float* q, int64_t ldq, int64_t m, const E* rows, int64_t n,
                            int64_t k, float* y, int64_t ldy) {
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      float s = 0.f;
      for (int64_t c = 0; c < k; ++c) s += q[i * ldq + c] * ElementToFloat(rows[j * k + c]);
      y[i * ldy + j] = s;
    }
  }
}

template <typename E>
void AttentionSumsGeneric(const float* p, int64_t ldp, int64_t m, const E* const* blocks,
                          int64_t block_rows, int64_t ldr, int64_t n, int64_t k, float* out,
                          int64_t ldo) {
  for (int64_t i = 0; i < m; ++i) {
    float* o = out + i * ldo;
    std::fill(o, o + k, 0.f);
    for (int64_t j = 0; j < n; ++j) {
      const E* row = blocks[j / block_rows] + j % block_rows * ldr;
      for (int64_t c = 0; c < k; ++c) o[c] += p[i * ldp + j] * ElementToFloat(row[c]);
    }
  }
}

}  // namespace

void AttentionScores(const float* q, int64_t ldq, int64_t m, const float* rows, int64_t n,
                     int64_t k, float* y, int64_t ldy) {
  if (HasAvx512()) {
    avx512::AttentionScores(q, ldq, m, rows, n, k, y, ldy);
  } else if (HasAvx2()) {
    avx2::MatMulF32(q, ldq, m, rows, n, k, y, ldy);
  } else {
    AttentionScoresGeneric(q, ldq, m, rows, n, k, y, ldy);
  }
}

void AttentionScores(const float* q, int64_t ldq, int64_t m, const uint16_t* rows, int64_t n,
                     int64_t k, float* y, int64_t ldy) {
  if (HasAvx512()) {
    avx512::AttentionScores(q, ldq, m, rows, n, k, y, ldy);
  } else {
    AttentionScoresGeneric(q, ldq, m, rows, n, k, y, ldy);
  }
}

void AttentionSums(const float* p, int64_t ldp, int64_t m, const float* const* blocks,
                   int64_t block_rows, int64_t ldr, int64_t n, int64_t k, float* out, int64_t ldo) {
  if (HasAvx512()) {
    avx512::AttentionSums(p, ldp, m, blocks, block_rows, ldr, n, k, out, ldo);
  } else if (HasAvx2()) {
    for (int64_t i = 0; i < m; ++i) std::fill(out + i * ldo, out + i * ldo + k, 0.f);
    for (int64_t j0 = 0, b = 0; j0 < n; j0 += block_rows, ++b) {
      avx2::AccumulateRows(p + j0, ldp, m, blocks[b], ldr, std::min(block_rows, n - j0), k, out,
                           ldo);
    }
  } else {
    AttentionSumsGeneric(p, ldp, m, blocks, block_rows, ldr, n, k, out, ldo);
  }
}

void AttentionSums(const float* p, int64_t ldp, int64_t m, const uint16_t* const* blocks,
                   int64_t block_rows, int64_t ldr, int64_t n, int64_t k, float* out, int64_t ldo) {
  if (HasAvx512()) {
    avx512::AttentionSums(p, ldp, m, blocks, block_rows, ldr, n, k, out, ldo);
  } else {
    AttentionSumsGeneric(p, ldp, m, blocks, block_rows, ldr, n, k, out, ldo);
  }
}

float Dot(const float* a, const float* b, int64_t n) {
  if (HasAvx512()) return avx512::Dot(a, b, n);
  if (HasAvx2()) return avx2::Dot(a, b, n);
  float acc = 0.f;
  for (int64_t i = 0; i < n; ++i) acc += a[i] * b[i];
  return acc;
}

void Axpy(float a, const float* x, float* y, int64_t n) {
  if (HasAvx512()) {
    avx512::Axpy(a, x, y, n);
    return;
  }
  if (HasAvx2()) {
    avx2::Axpy(a, x, y, n);
    return;
  }
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

void RmsNorm(const float* x, const float* weight, int64_t n, float eps, float* out) {
  const float mean_square = Dot(x, x, n) / static_cast<float>(n);
  const float scale = 1.0f / std::sqrt(mean_square + eps);
  for (int64_t i = 0; i < n; ++i) out[i] = x[i] * scale * weight[i];
}

void RopeInterleaved(float* x, int64_t dim, const float* cos, const float* sin) {
  for (int64_t i = 0; i < dim / 2; ++i) {
    const float a = x[2 * i], b = x[2 * i + 1];
    x[2 * i] = a * cos[i] - b * sin[i];
    x[2 * i + 1] = a * sin[i] + b * cos[i];
  }
}

void ExpAndSum(float* x, int64_t n, float* max, float* sum) {
  if (HasAvx512()) {
    avx512::ExpAndSum(x, n, max, sum);
    return;
  }
  if (HasAvx2()) {
    avx2::ExpAndSum(x, n, max, sum);
    return;
  }
  *max = -INFINITY;
  for (int64_t i = 0; i < n; ++i) *max = std::max(*max, x[i]);
  *sum = 0.f;
  for (int64_t i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - *max);
    *sum += x[i];
  }
}

void Softmax(float* x, int64_t n) {
  if (HasAvx512()) {
    avx512::Softmax(x, n);
    return;
  }
  float max, sum;
  ExpAndSum(x, n, &max, &sum);
  const float inv = 1.0f / sum;
  for (int64_t i = 0; i < n; ++i) x[i] *= inv;
}

}  // namespace baton::kernels
