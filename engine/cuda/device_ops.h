// The CUDA backend's kernels, as launches on device pointers queued on a
// stream: what the backend (cuda_backend.cu) composes and what the host-
// buffer ops of cuda_ops.h wrap for the op-by-op tests. Each returns the
// launch's error, if any; errors of the kernel itself surface at the next
// synchronization.
//
// CUDA types appear here, so only .cu files include this header.
//
// Thread-safety: every function is thread-safe; ordering is the stream's.
#ifndef BATON_ENGINE_CUDA_DEVICE_OPS_H_
#define BATON_ENGINE_CUDA_DEVICE_OPS_H_

#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "engine/cuda/cublas.h"

namespace baton::cuda {

absl::Status Check(cudaError_t e, const char* what);

// A device allocation that frees itself; Resize keeps nothing.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t bytes) { status_.Update(Resize(bytes)); }
  ~DeviceBuffer();
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  // Grows to at least `bytes` (contents lost when it grows).
  absl::Status Resize(size_t bytes);
  template <typename T>
  T* get() const {
    return static_cast<T*>(ptr_);
  }
  size_t bytes() const { return bytes_; }
  const absl::Status& status() const { return status_; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
  absl::Status status_;
};

// A non-blocking stream, destroyed with the object.
class Stream {
 public:
  Stream();
  ~Stream();
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  cudaStream_t get() const { return s_; }
  const absl::Status& status() const { return status_; }

 private:
  cudaStream_t s_ = nullptr;
  absl::Status status_;
};

// Host to device, into `buffer` (grown as needed), queued on `s`. The host
// memory may be reused on return because it is pageable: the driver stages
// it before returning. (Pinned memory would be read later, by the copy
// itself: it must then outlive the stream's progress past the copy.)
template <typename T>
absl::Status Upload(const T* host, size_t count, DeviceBuffer& buffer, cudaStream_t s) {
  if (absl::Status r = buffer.Resize(sizeof(T) * count); !r.ok()) return r;
  if (count == 0) return absl::OkStatus();
  return Check(
      cudaMemcpyAsync(buffer.get<void>(), host, sizeof(T) * count, cudaMemcpyHostToDevice, s),
      "upload");
}

// Device to host, waiting until the bytes are there (and for everything
// queued on `s` before them).
absl::Status Download(const void* device, size_t bytes, void* host, cudaStream_t s);

// out[r][:n] = x[r][:n] * rsqrt(mean(x[r][:n]^2) + eps) * w, rows apart by
// the strides (in floats); out may be x.
absl::Status LaunchRmsNorm(const float* x, int64_t x_stride, const float* w, int64_t rows,
                           int64_t n, float eps, float* out, int64_t out_stride, cudaStream_t s);

// A weight matrix in device memory: [rows][cols] row-major, F32 or BF16.
struct DeviceMatrix {
  const void* data = nullptr;
  bool bf16 = false;
  int64_t rows = 0, cols = 0;
};

// y[i][j] = sum_c x[i][c] * w[j][c] for i < m, j < w.rows, fp32
// accumulation; x rows ldx floats apart, y rows ldy apart. `batch`
// independent products (grid z), each `stride_x`, `stride_w` (elements of
// w) and `stride_y` further on: MLA's per-head up-projections.
absl::Status LaunchMatMul(const float* x, int64_t ldx, int64_t m, const DeviceMatrix& w, float* y,
                          int64_t ldy, cudaStream_t s, int64_t batch = 1, int64_t stride_x = 0,
                          int64_t stride_w = 0, int64_t stride_y = 0);

// Products of at least this many rows run on tensor cores where cuBLAS is
// there (LaunchTensorCoreMatMul); fewer stay on LaunchMatMul, which reads
// the weights once per 8 rows and is what a decode step is bound by.
inline constexpr int64_t kTensorCoreMinRows = 64;

// LaunchMatMul's product (same arguments; BF16 weights only) on tensor
// cores through cuBLAS. fp32 x is split into BF16 halves, x_hi = bf16(x)
// and x_lo = bf16(x - x_hi), which keep each activation to 2^-16 of itself
// (against 2^-8 for BF16 activations), and w x_hi + w x_lo accumulate in
// fp32: twice the tensor-core work for an error under 2^-16 sum|w x|,
// comparable to an fp32 sum's over thousands of terms. `split` holds the
// halves of all `batch` products (grown to TensorCoreSplitBytes; size it up
// front to avoid a cudaFree mid-pass). The sums' order is cuBLAS's, which
// may differ with m: such products are not batch-invariant.
// Thread-safety: `cublas` and `split` serve one stream at a time.
size_t TensorCoreSplitBytes(int64_t m, int64_t k, int64_t batch = 1);
absl::Status LaunchTensorCoreMatMul(Cublas& cublas, const float* x, int64_t ldx, int64_t m,
                                    const DeviceMatrix& w, float* y, int64_t ldy,
                                    DeviceBuffer& split, cudaStream_t s, int64_t batch = 1,
                                    int64_t stride_x = 0, int64_t stride_w = 0,
                                    int64_t stride_y = 0);

// One product of a group: y[i][j] = sum_c x[i][c] * w[j][c], i < m.
struct GroupedProduct {
  const float* x;
  int64_t ldx, m;
  DeviceMatrix w;
  float* y;
  int64_t ldy;
};
// Every product in one launch (a step's routed experts), each summed in
// LaunchMatMul's order. `descriptors` holds the products' table on the
// device (grown as needed; size it with GroupedTableBytes up front to avoid
// a cudaFree mid-pass); reusing it on one stream is safe, from two streams
// at once it is not.
size_t GroupedTableBytes(int64_t products);
absl::Status LaunchGroupedMatMul(const std::vector<GroupedProduct>& products,
                                 DeviceBuffer& descriptors, cudaStream_t s);

// Rotates the interleaved pairs of `dim` values at x[t][v] (vectors
// v < per_token, each `vector_stride` floats apart; tokens `token_stride`
// apart) by angle positions[t] * inv_freq[i], cos and sin scaled by
// `scale` (kernels::RopeInterleaved with YaRN's factors).
absl::Status LaunchRope(float* x, int64_t tokens, int64_t token_stride, int64_t per_token,
                        int64_t vector_stride, int64_t dim, const int64_t* positions,
                        const float* inv_freq, float scale, cudaStream_t s);

// Rotates interleaved pairs of each of `rows` vectors of `dim` by the
// angles whose cosines and sines are cos[i], sin[i].
absl::Status LaunchRopeTable(float* x, int64_t rows, int64_t dim, const float* cos,
                             const float* sin, cudaStream_t s);

// dst[t][:n] = src[t][:n] for `rows` rows at the strides (a strided copy).
absl::Status LaunchCopyRows(const float* src, int64_t src_stride, int64_t rows, int64_t n,
                            float* dst, int64_t dst_stride, cudaStream_t s);

// x[t][:hidden] = embed[ids[t]] widened to fp32.
absl::Status LaunchEmbed(const DeviceMatrix& embed, const int32_t* ids, int64_t tokens, float* x,
                         cudaStream_t s);

// dst[r] = src[index[r]], rows of n floats.
absl::Status LaunchGatherRows(const float* src, const int64_t* index, int64_t rows, int64_t n,
                              float* dst, cudaStream_t s);

// Writes rows of `width` floats as cache elements (BF16 when `bf16`, else
// f32) at element offsets row_at[t] * width of `cache`.
absl::Status LaunchWriteCache(const float* rows, int64_t tokens, int64_t width,
                              const int64_t* row_at, bool bf16, void* cache, cudaStream_t s);

// Copies rows of `bytes` between a dense buffer and byte offsets of a
// memory region: gather (memory -> dense) or scatter (dense -> memory).
absl::Status LaunchGatherBytes(const uint8_t* memory, const int64_t* offsets, int64_t rows,
                               int64_t bytes, uint8_t* dense, cudaStream_t s);
absl::Status LaunchScatterBytes(const uint8_t* dense, const int64_t* offsets, int64_t rows,
                                int64_t bytes, uint8_t* memory, cudaStream_t s);

// h[r][d] = silu(h[r][d]) * h[r][inter + d] for rows of 2 * inter.
absl::Status LaunchSiluMul(float* h, int64_t rows, int64_t inter, cudaStream_t s);

// x[i] += y[i].
absl::Status LaunchAdd(float* x, const float* y, int64_t n, cudaStream_t s);

// out[t] += sum over r in [first[t], first[t+1]) of weight[r] * rows[row[r]],
// in that order (a token's experts in expert order: batch-invariant).
absl::Status LaunchCombineRows(const float* rows, const int64_t* first, const int64_t* row,
                               const float* weight, int64_t tokens, int64_t n, float* out,
                               cudaStream_t s);

// MLA decode attention in the absorbed form over a paged BF16 latent cache
// (see cuda_ops.h MlaDecodeAttention), all in device memory.
struct MlaProblem {
  const float* q;  // [tokens][heads][width]
  int64_t tokens, heads, width, lora;
  const uint16_t* cache;  // The layer's first block.
  int64_t block_rows;
  const int32_t* tables;  // [tokens][max_blocks]
  int64_t max_blocks;
  const int32_t* lengths;  // [tokens]
  int64_t max_len;
  float scale;
  float* scores;    // [tokens][heads][max_len] scratch
  float* partials;  // MlaPartialsBytes of scratch: the sums' pieces
  float* out;       // [tokens][heads][lora]
};
// The sums run over pieces of the context (so that a few long contexts
// still fill the GPU) and are added in piece order: the scratch for them.
size_t MlaPartialsBytes(int64_t tokens, int64_t heads, int64_t max_len, int64_t lora);
absl::Status LaunchMlaDecodeAttention(const MlaProblem& p, cudaStream_t s);

}  // namespace baton::cuda

#endif  // BATON_ENGINE_CUDA_DEVICE_OPS_H_
