#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <vector>

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

// MLA decode attention: three kernels (scores, softmax, sums), each over
// tiles of kHeadTile heads, so that a cache row read from memory serves all
// of a tile's heads.
constexpr int kHeadTile = 16;
constexpr int kScoreRows = 64;   // Rows per scores block.
constexpr int kSumColumns = 64;  // Latent columns per sums block.
constexpr int kThreads = 256;

__device__ const uint16_t* CacheRow(const uint16_t* cache, const int32_t* table, int64_t block_rows,
                                    int64_t width, int64_t j) {
  return cache +
         (static_cast<int64_t>(table[j / block_rows]) * block_rows + j % block_rows) * width;
}

// grid (tokens, head tiles, row tiles); dynamic shared memory: the tile's
// queries, kHeadTile x width floats. Each warp takes rows; its lanes stride
// the row's columns, and one shuffle reduction per head finishes a score.
__global__ void MlaScoresKernel(const float* q, int64_t heads, int64_t width, const uint16_t* cache,
                                int64_t block_rows, const int32_t* tables, int64_t max_blocks,
                                const int32_t* lengths, float scale, int64_t max_len,
                                float* scores) {
  extern __shared__ float qs[];
  const int64_t t = blockIdx.x, h0 = static_cast<int64_t>(blockIdx.y) * kHeadTile;
  const int hb = static_cast<int>(min(static_cast<int64_t>(kHeadTile), heads - h0));
  const int64_t len = lengths[t], j0 = static_cast<int64_t>(blockIdx.z) * kScoreRows;
  if (j0 >= len) return;  // The whole block leaves together.
  for (int64_t i = threadIdx.x; i < hb * width; i += blockDim.x) {
    qs[i] = q[(t * heads + h0) * width + i];
  }
  __syncthreads();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  const int32_t* table = tables + t * max_blocks;
  const int64_t j1 = min(j0 + kScoreRows, len);
  for (int64_t j = j0 + warp; j < j1; j += warps) {
    const uint16_t* row = CacheRow(cache, table, block_rows, width, j);
    float partial[kHeadTile];
    for (int h = 0; h < kHeadTile; ++h) partial[h] = 0.f;
    for (int64_t c = lane; c < width; c += 32) {
      const float v = Bf16ToFloat(row[c]);
      for (int h = 0; h < kHeadTile; ++h) {
        if (h < hb) partial[h] += v * qs[h * width + c];
      }
    }
    for (int h = 0; h < kHeadTile; ++h) {
      for (int offset = 16; offset > 0; offset /= 2) {
        partial[h] += __shfl_xor_sync(0xffffffffu, partial[h], offset);
      }
    }
    if (lane == 0) {
      for (int h = 0; h < hb; ++h)
        scores[((t * heads) + h0 + h) * max_len + j] = partial[h] * scale;
    }
  }
}

// The block's reduction of one value per thread with `op`.
template <typename Op>
__device__ float BlockReduce(float v, Op op, float* shared) {
  for (int offset = 16; offset > 0; offset /= 2) v = op(v, __shfl_xor_sync(0xffffffffu, v, offset));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  __syncthreads();  // `shared` may still be read from the previous call.
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  v = shared[0];
  for (int w = 1; w < warps; ++w) v = op(v, shared[w]);
  return v;
}

// grid (tokens, heads): one block per softmax, in place.
__global__ void MlaSoftmaxKernel(float* scores, int64_t heads, const int32_t* lengths,
                                 int64_t max_len) {
  __shared__ float shared[32];
  float* s = scores + (static_cast<int64_t>(blockIdx.x) * heads + blockIdx.y) * max_len;
  const int64_t len = lengths[blockIdx.x];
  float top = -INFINITY;
  for (int64_t j = threadIdx.x; j < len; j += blockDim.x) top = fmaxf(top, s[j]);
  top = BlockReduce(
      top, [](float a, float b) { return fmaxf(a, b); }, shared);
  float sum = 0.f;
  for (int64_t j = threadIdx.x; j < len; j += blockDim.x) {
    s[j] = expf(s[j] - top);
    sum += s[j];
  }
  sum = BlockReduce(
      sum, [](float a, float b) { return a + b; }, shared);
  const float inv = 1.f / sum;
  for (int64_t j = threadIdx.x; j < len; j += blockDim.x) s[j] *= inv;
}

// grid (tokens, head tiles, column tiles); 16 threads per head, 4 adjacent
// columns each: a row's 64 columns are one coalesced read shared by the
// tile's heads.
__global__ void MlaSumsKernel(const float* probs, int64_t heads, int64_t width, int64_t lora,
                              const uint16_t* cache, int64_t block_rows, const int32_t* tables,
                              int64_t max_blocks, const int32_t* lengths, int64_t max_len,
                              float* out) {
  const int64_t t = blockIdx.x;
  const int64_t h = static_cast<int64_t>(blockIdx.y) * kHeadTile + threadIdx.x / 16;
  const int64_t c0 = static_cast<int64_t>(blockIdx.z) * kSumColumns + (threadIdx.x % 16) * 4;
  if (h >= heads || c0 >= lora) return;
  const int64_t len = lengths[t];
  const int32_t* table = tables + t * max_blocks;
  const float* p = probs + (t * heads + h) * max_len;
  float acc[4] = {0.f, 0.f, 0.f, 0.f};
  for (int64_t j = 0; j < len; ++j) {
    const uint16_t* row = CacheRow(cache, table, block_rows, width, j) + c0;
    const float pj = p[j];
    for (int e = 0; e < 4; ++e) {
      if (c0 + e < lora) acc[e] += pj * Bf16ToFloat(row[e]);
    }
  }
  for (int e = 0; e < 4; ++e) {
    if (c0 + e < lora) out[(t * heads + h) * lora + c0 + e] = acc[e];
  }
}

// One MLA decode attention, all in device memory.
struct MlaProblem {
  const float* q;
  int64_t tokens, heads, width, lora;
  const uint16_t* cache;
  int64_t block_rows;
  const int32_t* tables;
  int64_t max_blocks;
  const int32_t* lengths;
  int64_t max_len;
  float scale;
  float* scores;  // [tokens][heads][max_len] scratch
  float* out;     // [tokens][heads][lora]
};

// Queues the three kernels on `stream`.
absl::Status LaunchMlaDecodeAttention(const MlaProblem& p, cudaStream_t stream) {
  const unsigned tokens = static_cast<unsigned>(p.tokens);
  const unsigned head_tiles = static_cast<unsigned>((p.heads + kHeadTile - 1) / kHeadTile);
  const size_t query_bytes = sizeof(float) * kHeadTile * p.width;
  if (query_bytes > 48 * 1024) {  // Above the default limit the kernel must opt in.
    if (absl::Status s =
            Check(cudaFuncSetAttribute(MlaScoresKernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(query_bytes)),
                  "MlaScores shared memory");
        !s.ok()) {
      return s;
    }
  }
  MlaScoresKernel<<<dim3(tokens, head_tiles,
                         static_cast<unsigned>((p.max_len + kScoreRows - 1) / kScoreRows)),
                    kThreads, query_bytes, stream>>>(p.q, p.heads, p.width, p.cache, p.block_rows,
                                                     p.tables, p.max_blocks, p.lengths, p.scale,
                                                     p.max_len, p.scores);
  if (absl::Status s = Check(cudaGetLastError(), "MlaScores"); !s.ok()) return s;
  MlaSoftmaxKernel<<<dim3(tokens, static_cast<unsigned>(p.heads)), kThreads, 0, stream>>>(
      p.scores, p.heads, p.lengths, p.max_len);
  if (absl::Status s = Check(cudaGetLastError(), "MlaSoftmax"); !s.ok()) return s;
  MlaSumsKernel<<<dim3(tokens, head_tiles,
                       static_cast<unsigned>((p.lora + kSumColumns - 1) / kSumColumns)),
                  kThreads, 0, stream>>>(p.scores, p.heads, p.width, p.lora, p.cache, p.block_rows,
                                         p.tables, p.max_blocks, p.lengths, p.max_len, p.out);
  return Check(cudaGetLastError(), "MlaSums");
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

absl::Status MlaDecodeAttention(const float* q, int64_t tokens, int64_t heads, int64_t width,
                                int64_t lora, const uint16_t* cache, int64_t cache_blocks,
                                int64_t block_rows, const int32_t* block_tables, int64_t max_blocks,
                                const int32_t* lengths, float scale, float* out) {
  if (tokens <= 0 || heads <= 0 || lora <= 0 || lora > width || block_rows <= 0) {
    return absl::InvalidArgumentError("MlaDecodeAttention: bad shape");
  }
  int64_t max_len = 1;
  for (int64_t t = 0; t < tokens; ++t) {
    if (lengths[t] <= 0 || lengths[t] > max_blocks * block_rows) {
      return absl::InvalidArgumentError(
          absl::StrCat("MlaDecodeAttention: token ", t, " has length ", lengths[t]));
    }
    for (int64_t b = 0; b * block_rows < lengths[t]; ++b) {
      const int32_t block = block_tables[t * max_blocks + b];
      if (block < 0 || block >= cache_blocks) {
        return absl::InvalidArgumentError(
            absl::StrCat("MlaDecodeAttention: token ", t, " names cache block ", block));
      }
    }
    max_len = std::max<int64_t>(max_len, lengths[t]);
  }
  Stream stream;
  if (!stream.status().ok()) return stream.status();
  auto dq = Upload(q, tokens * heads * width, stream.get());
  if (!dq.ok()) return dq.status();
  auto dcache = Upload(cache, cache_blocks * block_rows * width, stream.get());
  if (!dcache.ok()) return dcache.status();
  auto dtables = Upload(block_tables, tokens * max_blocks, stream.get());
  if (!dtables.ok()) return dtables.status();
  auto dlengths = Upload(lengths, tokens, stream.get());
  if (!dlengths.ok()) return dlengths.status();
  DeviceBuffer scores(sizeof(float) * tokens * heads * max_len);
  DeviceBuffer dout(sizeof(float) * tokens * heads * lora);
  if (!scores.status().ok()) return scores.status();
  if (!dout.status().ok()) return dout.status();
  const MlaProblem problem{(*dq)->get<float>(),
                           tokens,
                           heads,
                           width,
                           lora,
                           (*dcache)->get<uint16_t>(),
                           block_rows,
                           (*dtables)->get<int32_t>(),
                           max_blocks,
                           (*dlengths)->get<int32_t>(),
                           max_len,
                           scale,
                           scores.get<float>(),
                           dout.get<float>()};
  if (absl::Status s = LaunchMlaDecodeAttention(problem, stream.get()); !s.ok()) return s;
  return FinishLaunch("MlaSums", out, dout.get<float>(), tokens * heads * lora, stream.get());
}

absl::StatusOr<double> TimeMlaDecodeAttention(int64_t tokens, int64_t heads, int64_t context,
                                              int reps) {
  constexpr int64_t kWidth = 576, kLora = 512, kBlockRows = 64;
  if (tokens <= 0 || heads <= 0 || context <= 0 || reps <= 0) {
    return absl::InvalidArgumentError("TimeMlaDecodeAttention: bad shape");
  }
  const int64_t max_blocks = (context + kBlockRows - 1) / kBlockRows;
  const int64_t blocks = tokens * max_blocks;
  std::vector<float> q(tokens * heads * kWidth);
  std::vector<uint16_t> cache(blocks * kBlockRows * kWidth);
  std::vector<int32_t> tables(blocks), lengths(tokens, static_cast<int32_t>(context));
  uint32_t x = 12345;  // Any values do: only time is measured.
  for (float& v : q) v = static_cast<float>((x = x * 1664525u + 1013904223u) >> 8) * 1e-8f;
  for (uint16_t& v : cache) v = static_cast<uint16_t>(0x3c00 + ((x = x * 1664525u + 1u) >> 24));
  for (int64_t b = 0; b < blocks; ++b) tables[b] = static_cast<int32_t>(b);
  Stream stream;
  if (!stream.status().ok()) return stream.status();
  auto dq = Upload(q.data(), q.size(), stream.get());
  if (!dq.ok()) return dq.status();
  auto dcache = Upload(cache.data(), cache.size(), stream.get());
  if (!dcache.ok()) return dcache.status();
  auto dtables = Upload(tables.data(), tables.size(), stream.get());
  if (!dtables.ok()) return dtables.status();
  auto dlengths = Upload(lengths.data(), lengths.size(), stream.get());
  if (!dlengths.ok()) return dlengths.status();
  DeviceBuffer scores(sizeof(float) * tokens * heads * context);
  DeviceBuffer dout(sizeof(float) * tokens * heads * kLora);
  if (!scores.status().ok()) return scores.status();
  if (!dout.status().ok()) return dout.status();
  const MlaProblem problem{(*dq)->get<float>(),
                           tokens,
                           heads,
                           kWidth,
                           kLora,
                           (*dcache)->get<uint16_t>(),
                           kBlockRows,
                           (*dtables)->get<int32_t>(),
                           max_blocks,
                           (*dlengths)->get<int32_t>(),
                           context,
                           0.04f,
                           scores.get<float>(),
                           dout.get<float>()};
  auto launch = [&] { return LaunchMlaDecodeAttention(problem, stream.get()); };
  if (absl::Status s = launch(); !s.ok()) return s;  // Warm-up.
  cudaEvent_t start, stop;
  if (absl::Status s = Check(cudaEventCreate(&start), "event"); !s.ok()) return s;
  if (absl::Status s = Check(cudaEventCreate(&stop), "event"); !s.ok()) {
    (void)cudaEventDestroy(start);
    return s;
  }
  std::vector<float> ms(reps);
  auto timed = [&](float* elapsed) -> absl::Status {
    if (absl::Status s = Check(cudaEventRecord(start, stream.get()), "record"); !s.ok()) return s;
    if (absl::Status s = launch(); !s.ok()) return s;
    if (absl::Status s = Check(cudaEventRecord(stop, stream.get()), "record"); !s.ok()) return s;
    if (absl::Status s = Check(cudaEventSynchronize(stop), "sync"); !s.ok()) return s;
    return Check(cudaEventElapsedTime(elapsed, start, stop), "elapsed");
  };
  absl::Status failed;
  for (int r = 0; r < reps; ++r) {
    if (absl::Status s = timed(&ms[r]); !s.ok()) {
      failed.Update(s);
      break;
    }
  }
  (void)cudaEventDestroy(start);
  (void)cudaEventDestroy(stop);
  if (!failed.ok()) return failed;
  std::sort(ms.begin(), ms.end());
  return ms[reps / 2] * 1e-3;
}

}  // namespace baton::cuda
