// The CUDA backend's first operations, each the GPU counterpart of a CPU
// kernel in engine/kernels.h and tested against it (tests/gpu/). They take
// and return host buffers (copying through device memory), which is what
// the op-by-op tests need; the device-resident tensors of the backend seam
// build on the same kernels.
//
// This header has no CUDA types, so CPU-only code may include it; it is
// compiled only where CMake found nvcc (BATON_HAVE_CUDA).
//
// Thread-safety: every function is thread-safe (each uses its own stream).
#ifndef BATON_ENGINE_CUDA_CUDA_OPS_H_
#define BATON_ENGINE_CUDA_CUDA_OPS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace baton::cuda {

// Usable CUDA devices: 0 (not an error) when the driver or a device is
// missing; `why` then says which.
int DeviceCount(std::string* why = nullptr);

// out[r] = x[r] * rsqrt(mean(x[r]^2) + eps) * weight, for `rows` rows of n.
absl::Status RmsNorm(const float* x, const float* weight, int64_t rows, int64_t n, float eps,
                     float* out);

// y[i][j] = sum_c x[i][c] * w[j][c]: fp32 activations, row-major BF16
// weights [rows][cols], fp32 accumulation (kernels::MatMul's contract).
absl::Status MatMulBf16(const float* x, int64_t m, const uint16_t* w, int64_t rows, int64_t cols,
                        float* y);

// Whether cuBLAS opens here (the backend's tensor-core products need it);
// `why` says why not.
bool HasCublas(std::string* why = nullptr);

// MatMulBf16 on tensor cores, as the backend runs products of
// kTensorCoreMinRows rows or more: x split into BF16 halves (hi + lo), two
// cuBLAS products accumulated in fp32 (error under 2^-16 sum|w x|), not
// bit-equal to the GEMV. NOT_FOUND where cuBLAS is missing.
absl::Status TensorCoreMatMulBf16(const float* x, int64_t m, const uint16_t* w, int64_t rows,
                                  int64_t cols, float* y);

// `batch` such products in one strided-batched call, as the backend runs
// MLA's per-head up-projections: product b reads x + b * stride_x (rows ldx
// apart, `cols` wide) and w + b * stride_w ([rows][cols]) and writes `rows`
// columns at y + b * stride_y (rows ldy apart); other columns of y stay.
// x and y are host buffers covering those extents.
absl::Status TensorCoreMatMulBf16Batched(const float* x, int64_t ldx, int64_t m, const uint16_t* w,
                                         int64_t rows, int64_t cols, float* y, int64_t ldy,
                                         int64_t batch, int64_t stride_x, int64_t stride_w,
                                         int64_t stride_y);

// Several MatMulBf16 products in one launch (how the backend runs a step's
// experts): products[g] is {x, m, w, rows, cols, y} with MatMulBf16's
// meaning. Each result equals MatMulBf16's bit for bit.
struct Bf16Product {
  const float* x;
  int64_t m;
  const uint16_t* w;
  int64_t rows, cols;
  float* y;
};
absl::Status GroupedMatMulBf16(const std::vector<Bf16Product>& products);

// Rotates interleaved pairs of each of `rows` vectors of `dim` by the
// angles whose cosines and sines are cos[i], sin[i] (kernels::RopeInterleaved).
absl::Status RopeInterleaved(float* x, int64_t rows, int64_t dim, const float* cos,
                             const float* sin);

// MLA decode attention in the absorbed form over a paged BF16 latent cache:
// the GPU counterpart of the CPU attention core (kernels::AttentionScores,
// softmax, kernels::AttentionSums). For each of `tokens` queries q[t]
// ([heads][width] fp32: the absorbed latent part, then the roped part),
// scores against rows [0, lengths[t]) of its sequence, softmax of the
// scores times `scale`, and out[t][h] = the probability-weighted sum of the
// rows' first `lora` columns ([tokens][heads][lora]). `cache` holds
// `cache_blocks` blocks of `block_rows` rows of `width` BF16 values; token
// t's row j lives in block block_tables[t * max_blocks + j / block_rows].
absl::Status MlaDecodeAttention(const float* q, int64_t tokens, int64_t heads, int64_t width,
                                int64_t lora, const uint16_t* cache, int64_t cache_blocks,
                                int64_t block_rows, const int32_t* block_tables, int64_t max_blocks,
                                const int32_t* lengths, float scale, float* out);

// Times MlaDecodeAttention's kernels alone on device-resident random data
// (DeepSeek-V3 latent width, blocks of 64 rows): `tokens` queries of `heads`
// heads, each over `context` cached rows of its own. Returns the median
// seconds per call over `reps` calls, measured with CUDA events.
absl::StatusOr<double> TimeMlaDecodeAttention(int64_t tokens, int64_t heads, int64_t context,
                                              int reps);

// Times the backend's product alone on device-resident random data: x
// [m][k] fp32, w [n][k] BF16, through baton's GEMV kernel (MatMulBf16) or,
// with `tensor_cores`, the split tensor-core path (TensorCoreMatMulBf16).
// Median seconds per call over `reps`.
absl::StatusOr<double> TimeMatMulBf16(int64_t m, int64_t k, int64_t n, int reps, bool tensor_cores);

// The same product through cuBLAS (cublasGemmEx, BF16 inputs, fp32
// accumulation and output: tensor cores), the reference a prefill GEMM is
// measured against. cuBLAS is opened at run time: NOT_FOUND where it is
// missing.
absl::StatusOr<double> TimeCublasGemmBf16(int64_t m, int64_t k, int64_t n, int reps);

}  // namespace baton::cuda

#endif  // BATON_ENGINE_CUDA_CUDA_OPS_H_
