// AVX2+FMA versions of the kernels in kernels.h, for CPUs without AVX-512;
// call only when the CPU supports AVX2 and FMA (kernels.cc checks once).
#ifndef BATON_ENGINE_KERNELS_AVX2_H_
#define BATON_ENGINE_KERNELS_AVX2_H_

#include <cstdint>

#include "engine/tensor.h"

namespace baton::kernels::avx2 {

void MatMulRows(const float* x, int64_t ldx, int64_t m, const Matrix& w, int64_t row_begin,
                int64_t row_end, float* y, int64_t ldy);
void MatMulF32(const float* x, int64_t ldx, int64_t m, const float* rows, int64_t n, int64_t k,
               float* y, int64_t ldy);
float Dot(const float* a, const float* b, int64_t n);
void Axpy(float a, const float* x, float* y, int64_t n);
void ExpAndSum(float* x, int64_t n, float* max, float* sum);
void AccumulateRows(const float* p, int64_t ldp, int64_t m, const float* rows, int64_t ldr,
                    int64_t n, int64_t k, float* out, int64_t ldo);

}  // namespace baton::kernels::avx2

#endif  // BATON_ENGINE_KERNELS_AVX2_H_
