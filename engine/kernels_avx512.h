// AVX-512 versions of the kernels in kernels.h; call only when the CPU
// supports AVX-512 F/BW/VL (kernels.cc checks once).
#ifndef BATON_ENGINE_KERNELS_AVX512_H_
#define BATON_ENGINE_KERNELS_AVX512_H_

#include <cstdint>

#include "engine/tensor.h"

namespace baton::kernels::avx512 {

void MatMulRows(const float* x, int64_t ldx, int64_t m, const Matrix& w, int64_t row_begin,
                int64_t row_end, float* y, int64_t ldy);
float Dot(const float* a, const float* b, int64_t n);
void Axpy(float a, const float* x, float* y, int64_t n);
void Softmax(float* x, int64_t n);
void ExpAndSum(float* x, int64_t n, float* max, float* sum);

// With BF16 dot products (AVX512_BF16; call only when the CPU has them): y
// = x w^T for a BF16 matrix in panels, x already rounded to BF16 and padded
// with zeros to w.padded_cols() columns (row stride ldxb).
void MatMulRowsBf16(const uint16_t* xb, int64_t ldxb, int64_t m, const Matrix& w, int64_t row_begin,
                    int64_t row_end, float* y, int64_t ldy);

// Attention over f32 or BF16 cache rows (see kernels.h).
void AttentionScores(const float* q, int64_t ldq, int64_t m, const float* rows, int64_t n,
                     int64_t k, float* y, int64_t ldy);
void AttentionScores(const float* q, int64_t ldq, int64_t m, const uint16_t* rows, int64_t n,
                     int64_t k, float* y, int64_t ldy);
void AttentionSums(const float* p, int64_t ldp, int64_t m, const float* const* blocks,
                   int64_t block_rows, int64_t ldr, int64_t n, int64_t k, float* out, int64_t ldo);
void AttentionSums(const float* p, int64_t ldp, int64_t m, const uint16_t* const* blocks,
                   int64_t block_rows, int64_t ldr, int64_t n, int64_t k, float* out, int64_t ldo);

}  // namespace baton::kernels::avx512

#endif  // BATON_ENGINE_KERNELS_AVX512_H_
