// cuBLAS, opened at run time: the CUDA backend's tensor-core products and
// the benchmark's reference use it, while a machine without it (the library
// is 600 MB and never bundled) still runs everything on baton's own kernels.
//
// CUDA types appear here, so only .cu files include this header.
//
// Thread-safety: a Cublas may be used by one thread at a time (each call
// sets the handle's stream).
#ifndef BATON_ENGINE_CUDA_CUBLAS_H_
#define BATON_ENGINE_CUDA_CUBLAS_H_

#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace baton::cuda {

class Cublas {
 public:
  // Opens libcublas and creates a handle on the current device: NOT_FOUND
  // where no version of the library opens and creates a handle.
  static absl::StatusOr<std::unique_ptr<Cublas>> Open();
  ~Cublas();
  Cublas(const Cublas&) = delete;
  Cublas& operator=(const Cublas&) = delete;

  // Row-major y[i][j] = beta * y[i][j] + sum_c x[i][c] * w[j][c] for i < m,
  // j < n, c < k: BF16 x and w (rows ldx and ldw elements apart), fp32
  // accumulation and y (rows ldy apart), queued on `s`. `batch` such
  // products (one strided-batched call), each stride_x, stride_w and
  // stride_y elements further on. UNIMPLEMENTED where this cuBLAS and GPU
  // have no such product (the caller may compute it otherwise); any other
  // error is one.
  absl::Status GemmBf16(int64_t m, int64_t n, int64_t k, const uint16_t* x, int64_t ldx,
                        const uint16_t* w, int64_t ldw, float* y, int64_t ldy, float beta,
                        cudaStream_t s, int64_t batch = 1, int64_t stride_x = 0,
                        int64_t stride_w = 0, int64_t stride_y = 0);

 private:
  struct Api;
  Cublas();
  std::unique_ptr<Api> api_;
};

}  // namespace baton::cuda

#endif  // BATON_ENGINE_CUDA_CUBLAS_H_
