// CPU kernels of the forward pass. Each has a portable version and, where it
// decides speed, an AVX-512 version chosen once at run time.
// All functions are thread-safe; those taking a ThreadPool use it and must be
// called from the pool's owner thread.
#ifndef BATON_ENGINE_KERNELS_H_
#define BATON_ENGINE_KERNELS_H_

#include <cstdint>
#include <vector>

#include "engine/tensor.h"
#include "engine/thread_pool.h"

namespace baton::kernels {

// The instruction set the dispatching kernels use ("avx512" or "generic").
const char* IsaName();

// How activations enter the matrix products. kBf16 rounds them to BF16 and
// uses the CPU's BF16 dot products (AVX512_BF16) on BF16 weights in panels:
// twice the fp32 FMA rate, at BF16 precision of the activations. Where that
// cannot apply (F32 weights, a CPU without the instructions) the product is
// computed in fp32 as with kF32. Either way a row's result never depends on
// the other rows of the batch.
enum class Precision { kF32, kBf16 };
// Whether kBf16 runs BF16 dot products on this CPU.
bool HasBf16DotProducts();

// y[i][j] = sum_k x[i][k] * w[j][k] for i < m, j < w.rows, k < w.cols; x has
// leading dimension ldx, y has leading dimension ldy. Each weight row is read
// once for all m rows of x (m small: decode) or once per 64-row panel.
void MatMul(const float* x, int64_t ldx, int64_t m, const Matrix& w, float* y, int64_t ldy,
            ThreadPool& pool, Precision precision = Precision::kF32);
// One product of MatMulMany: y = x w^T, as MatMul's arguments.
struct Product {
  const float* x;
  int64_t ldx;
  int64_t m;
  const Matrix* w;
  float* y;
  int64_t ldy;
};
// Independent products in one fork-join of the pool: a decode step's
// experts, each too small to be worth waking the threads for alone. Each
// result equals MatMul's bit for bit.
void MatMulMany(const std::vector<Product>& products, ThreadPool& pool,
                Precision precision = Precision::kF32);
// The same on rows [row_begin, row_end) of w only, single-threaded; y column
// 0 is weight row row_begin. When w is in panels, row_begin must be a
// multiple of kPanelRows.
void MatMulRows(const float* x, int64_t ldx, int64_t m, const Matrix& w, int64_t row_begin,
                int64_t row_end, float* y, int64_t ldy, Precision precision = Precision::kF32);

// Attention over a block of the latent KV cache, whose rows are f32 or BF16
// (uint16_t bits, widened exactly): fp32 arithmetic either way, and each
// output element computed the same way however the heads, rows or columns
// around it are grouped, so results stay batch-invariant. Single-threaded.
// Scores: y[i][j] = sum_c q[i][c] * rows[j][c] for heads i < m, rows j < n
// of a dense [n][k] block, c < k.
void AttentionScores(const float* q, int64_t ldq, int64_t m, const float* rows, int64_t n,
                     int64_t k, float* y, int64_t ldy);
void AttentionScores(const float* q, int64_t ldq, int64_t m, const uint16_t* rows, int64_t n,
                     int64_t k, float* y, int64_t ldy);
// Sums: out[i][c] = sum_j p[i][j] * row_j[c] for i < m, j < n, c < k, summed
// in row order, where row j is blocks[j / block_rows] + (j % block_rows) *
// ldr (a sequence's cache blocks, offset to the first column wanted); out is
// overwritten.
void AttentionSums(const float* p, int64_t ldp, int64_t m, const float* const* blocks,
                   int64_t block_rows, int64_t ldr, int64_t n, int64_t k, float* out, int64_t ldo);
void AttentionSums(const float* p, int64_t ldp, int64_t m, const uint16_t* const* blocks,
                   int64_t block_rows, int64_t ldr, int64_t n, int64_t k, float* out, int64_t ldo);

float Dot(const float* a, const float* b, int64_t n);
// y += a * x
void Axpy(float a, const float* x, float* y, int64_t n);
// out = x * rsqrt(mean(x^2) + eps) * weight (out may alias x).
void RmsNorm(const float* x, const float* weight, int64_t n, float eps, float* out);
// Rotates interleaved pairs (x[2i], x[2i+1]) by the angle whose cosine and
// sine are cos[i] and sin[i].
void RopeInterleaved(float* x, int64_t dim, const float* cos, const float* sin);
// In-place softmax over n values.
void Softmax(float* x, int64_t n);
// The unnormalized half of a softmax, for combining pieces later:
// x[i] = exp(x[i] - max), returning max and the sum of the new x.
void ExpAndSum(float* x, int64_t n, float* max, float* sum);

}  // namespace baton::kernels

#endif  // BATON_ENGINE_KERNELS_H_
