#include <cuda_runtime.h>

#include <memory>

#include "absl/strings/str_cat.h"
#include "engine/cuda/cuda_ops.h"

namespace baton::cuda {
namespace {

absl::Status Check(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(what, ": ", cudaGetErrorString(e)));
}

// A device buffer that frees itself.
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t bytes) : status_(Check(cudaMalloc(&ptr_, bytes), "cudaMalloc")) {}
  ~DeviceBuffer() {
    if (ptr_ != nullptr) (void)cudaFree(ptr_);
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  template <typename T>
  T* get() const {
    return static_cast<T*>(ptr_);
  }
  const absl::Status& status() const { return status_; }

 private:
  void* ptr_ = nullptr;
  absl::Status status_;
};

// One stream per call, destroyed with it.
class Stream {
 public:
  Stream() : status_(Check(cudaStreamCreateWithFlags(&s_, cudaStreamNonBlocking), "stream")) {}
  ~Stream() {
    if (s_ != nullptr) (void)cudaStreamDestroy(s_);
  }
  cudaStream_t get() const { return s_; }
  const absl::Status& status() const { return status_; }

 private:
  cudaStream_t s_ = nullptr;
  absl::Status status_;
};

// One block per row; the block reduces the sum of squares in shared memory.
__global__ void RmsNormKernel(const float* x, const float* w, int64_t n, float eps, float* out) {
  const float* row = x + blockIdx.x * n;
  float* dst = out + blockIdx.x * n;
  __shared__ float partial[256];
  float sum = 0.f;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) sum += row[i] * row[i];
  partial[threadIdx.x] = sum;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];
    __syncthreads();
  }
  const float scale = rsqrtf(partial[0] / static_cast<float>(n) + eps);
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) dst[i] = row[i] * scale * w[i];
}

__device__ float Bf16ToFloat(uint16_t v) { return __uint_as_float(static_cast<uint32_t>(v) << 16); }

// One warp per (token, weight row): lanes stride the columns, then a warp
// reduction. Decode-shaped: reads each weight row once per token.
__global__ void MatMulBf16Kernel(const float* x, const uint16_t* w, int64_t m, int64_t rows,
                                 int64_t cols, float* y) {
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (warp >= m * rows) return;
  const int64_t i = warp / rows, j = warp % rows;
  const float* xi = x + i * cols;
  const uint16_t* wj = w + j * cols;
  float sum = 0.f;
  for (int64_t c = lane; c < cols; c += 32) sum += xi[c] * Bf16ToFloat(wj[c]);
  for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_down_sync(0xffffffffu, sum, offset);
  if (lane == 0) y[i * rows + j] = sum;
}

__global__ void RopeKernel(float* x, int64_t rows, int64_t dim, const float* cos,
                           const float* sin) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t half = dim / 2;
  if (idx >= rows * half) return;
  const int64_t r = idx / half, i = idx % half;
  float* v = x + r * dim;
  const float a = v[2 * i], b = v[2 * i + 1];
  v[2 * i] = a * cos[i] - b * sin[i];
  v[2 * i + 1] = a * sin[i] + b * cos[i];
}

// Copies `count` elements to a new device buffer.
template <typename T>
absl::StatusOr<std::unique_ptr<DeviceBuffer>> Upload(const T* host, int64_t count, cudaStream_t s) {
  auto buffer = std::make_unique<DeviceBuffer>(sizeof(T) * count);
  if (!buffer->status().ok()) return buffer->status();
  absl::Status copied =
      Check(cudaMemcpyAsync(buffer->get<T>(), host, sizeof(T) * count, cudaMemcpyHostToDevice, s),
            "upload");
  if (!copied.ok()) return copied;
  return buffer;
}

// After a launch: checks it, copies `count` results back to the host and
// waits for the stream, so the caller's buffer is ready on return.
absl::Status FinishLaunch(const char* op, float* host, const float* device, int64_t count,
                          cudaStream_t s) {
  if (absl::Status k = Check(cudaGetLastError(), op); !k.ok()) return k;
  if (absl::Status c =
          Check(cudaMemcpyAsync(host, device, sizeof(float) * count, cudaMemcpyDeviceToHost, s),
                "download");
      !c.ok()) {
    return c;
  }
  return Check(cudaStreamSynchronize(s), op);
}

}  // namespace

int DeviceCount(std::string* why) {
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) {
    if (why != nullptr) *why = cudaGetErrorString(e);
    (void)cudaGetLastError();  // Clear it.
    return 0;
  }
  if (count == 0 && why != nullptr) *why = "no CUDA device";
  return count;
}

absl::Status RmsNorm(const float* x, const float* weight, int64_t rows, int64_t n, float eps,
                     float* out) {
  Stream stream;
  if (!stream.status().ok()) return stream.status();
  auto dx = Upload(x, rows * n, stream.get());
  if (!dx.ok()) return dx.status();
  auto dw = Upload(weight, n, stream.get());
  if (!dw.ok()) return dw.status();
  DeviceBuffer dout(sizeof(float) * rows * n);
  if (!dout.status().ok()) return dout.status();
  RmsNormKernel<<<rows, 256, 0, stream.get()>>>((*dx)->get<float>(), (*dw)->get<float>(), n, eps,
                                                dout.get<float>());
  return FinishLaunch("RmsNorm", out, dout.get<float>(), rows * n, stream.get());
}

absl::Status MatMulBf16(const float* x, int64_t m, const uint16_t* w, int64_t rows, int64_t cols,
                        float* y) {
  Stream stream;
  if (!stream.status().ok()) return stream.status();
  auto dx = Upload(x, m * cols, stream.get());
  if (!dx.ok()) return dx.status();
  auto dw = Upload(w, rows * cols, stream.get());
  if (!dw.ok()) return dw.status();
  DeviceBuffer dy(sizeof(float) * m * rows);
  if (!dy.status().ok()) return dy.status();
  const int64_t threads = m * rows * 32;
  const int block = 256;
  MatMulBf16Kernel<<<static_cast<unsigned>((threads + block - 1) / block), block, 0,
                     stream.get()>>>((*dx)->get<float>(), (*dw)->get<uint16_t>(), m, rows, cols,
                                     dy.get<float>());
  return FinishLaunch("MatMulBf16", y, dy.get<float>(), m * rows, stream.get());
}

absl::Status RopeInterleaved(float* x, int64_t rows, int64_t dim, const float* cos,
                             const float* sin) {
  Stream stream;
  if (!stream.status().ok()) return stream.status();
  auto dx = Upload(x, rows * dim, stream.get());
  if (!dx.ok()) return dx.status();
  auto dc = Upload(cos, dim / 2, stream.get());
  if (!dc.ok()) return dc.status();
  auto ds = Upload(sin, dim / 2, stream.get());
  if (!ds.ok()) return ds.status();
  const int64_t pairs = rows * (dim / 2);
  RopeKernel<<<static_cast<unsigned>((pairs + 255) / 256), 256, 0, stream.get()>>>(
      (*dx)->get<float>(), rows, dim, (*dc)->get<float>(), (*ds)->get<float>());
  return FinishLaunch("Rope", x, (*dx)->get<float>(), rows * dim, stream.get());
}

}  // namespace baton::cuda
