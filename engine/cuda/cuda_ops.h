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

// Rotates interleaved pairs of each of `rows` vectors of `dim` by the
// angles whose cosines and sines are cos[i], sin[i] (kernels::RopeInterleaved).
absl::Status RopeInterleaved(float* x, int64_t rows, int64_t dim, const float* cos,
                             const float* sin);

}  // namespace baton::cuda

#endif  // BATON_ENGINE_CUDA_CUDA_OPS_H_
