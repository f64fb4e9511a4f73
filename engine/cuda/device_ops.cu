#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/cuda/cublas.h"
#include "engine/cuda/device_ops.h"

namespace baton::cuda {
namespace {

constexpr int kThreads = 256;

unsigned Blocks(int64_t items, int per_block = kThreads) {
  return static_cast<unsigned>((items + per_block - 1) / per_block);
}

__device__ float Bf16ToFloat(uint16_t v) { return __uint_as_float(static_cast<uint32_t>(v) << 16); }

// Round to nearest even, as the CPU's FloatToBf16 (NaN kept a NaN).
__device__ uint16_t FloatToBf16(float f) {
  const uint32_t bits = __float_as_uint(f);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40u);
  return static_cast<uint16_t>((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

template <typename W>
__device__ float Load(const W* w, int64_t i);
template <>
__device__ float Load<float>(const float* w, int64_t i) {
  return w[i];
}
template <>
__device__ float Load<uint16_t>(const uint16_t* w, int64_t i) {
  return Bf16ToFloat(w[i]);
}

// One block per row; the block reduces the sum of squares in shared memory.
__global__ void RmsNormKernel(const float* x, int64_t x_stride, const float* w, int64_t n,
                              float eps, float* out, int64_t out_stride) {
  const float* row = x + blockIdx.x * x_stride;
  float* dst = out + blockIdx.x * out_stride;
  __shared__ float partial[kThreads];
  float sum = 0.f;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) sum += row[i] * row[i];
  partial[threadIdx.x] = sum;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];
    __syncthreads();
  }
  // In place (out == x) is safe: each thread rewrites only what it read.
  const float scale = rsqrtf(partial[0] / static_cast<float>(n) + eps);
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) dst[i] = row[i] * scale * w[i];
}

// Products: one warp per weight row and tile of up to kGemvTokens tokens
// (grid y), reading the row once for the tile; lanes stride the columns.
// Every output is summed in the same order whatever m is (per lane in
// column order, then one shuffle tree), so a token's result never depends
// on its batch, as on the CPU. Prefill re-reads a row per 8 tokens; a
// tiled GEMM with this fixed order is the way to faster prefill.
constexpr int kGemvTokens = 8;
// One warp's products of weight row `wj` with up to kGemvTokens tokens (m),
// y[i * ldy] for token i: lanes stride the columns, then a shuffle tree.
template <typename W>
__device__ void RowTimesTokens(const float* x, int64_t ldx, int64_t m, const W* wj, int64_t cols,
                               float* y, int64_t ldy, int lane) {
  float sum[kGemvTokens];
  for (int i = 0; i < kGemvTokens; ++i) sum[i] = 0.f;
  for (int64_t c = lane; c < cols; c += 32) {
    const float v = Load(wj, c);
    for (int i = 0; i < kGemvTokens; ++i) {
      if (i < m) sum[i] += x[i * ldx + c] * v;
    }
  }
  for (int i = 0; i < kGemvTokens; ++i) {
    if (i >= m) break;
    float s = sum[i];
    for (int offset = 16; offset > 0; offset /= 2) s += __shfl_down_sync(0xffffffffu, s, offset);
    if (lane == 0) y[i * ldy] = s;
  }
}

// The same for BF16 rows and activations that allow 16-byte loads (cols a
// multiple of 8, aligned pointers and strides): each lane reads 8 weights
// per load, so a warp streams 512 contiguous bytes of its row, which is what
// reaches the memory's bandwidth.
__device__ void RowTimesTokensWide(const float* x, int64_t ldx, int64_t m, const uint16_t* wj,
                                   int64_t cols, float* y, int64_t ldy, int lane) {
  float sum[kGemvTokens];
  for (int i = 0; i < kGemvTokens; ++i) sum[i] = 0.f;
  for (int64_t c = lane * 8; c < cols; c += 32 * 8) {
    const uint4 packed = *reinterpret_cast<const uint4*>(wj + c);
    const uint32_t words[4] = {packed.x, packed.y, packed.z, packed.w};
    float v[8];
    for (int k = 0; k < 4; ++k) {
      v[2 * k] = __uint_as_float(words[k] << 16);
      v[2 * k + 1] = __uint_as_float(words[k] & 0xffff0000u);
    }
    for (int i = 0; i < kGemvTokens; ++i) {
      if (i >= m) break;
      const float4 a = *reinterpret_cast<const float4*>(x + i * ldx + c);
      const float4 b = *reinterpret_cast<const float4*>(x + i * ldx + c + 4);
      sum[i] += a.x * v[0] + a.y * v[1] + a.z * v[2] + a.w * v[3] + b.x * v[4] + b.y * v[5] +
                b.z * v[6] + b.w * v[7];
    }
  }
  for (int i = 0; i < kGemvTokens; ++i) {
    if (i >= m) break;
    float s = sum[i];
    for (int offset = 16; offset > 0; offset /= 2) s += __shfl_down_sync(0xffffffffu, s, offset);
    if (lane == 0) y[i * ldy] = s;
  }
}

// How a product's rows are read: F32, BF16 two bytes per lane, or BF16
// sixteen bytes per lane. Chosen from the weights and the activations'
// layout, never from m.
enum class RowKind : int { kF32, kBf16, kBf16Wide };

__device__ void RowProduct(RowKind kind, const float* x, int64_t ldx, int64_t m, const void* w,
                           int64_t j, int64_t cols, float* y, int64_t ldy, int lane) {
  switch (kind) {
    case RowKind::kF32:
      RowTimesTokens(x, ldx, m, static_cast<const float*>(w) + j * cols, cols, y, ldy, lane);
      break;
    case RowKind::kBf16:
      RowTimesTokens(x, ldx, m, static_cast<const uint16_t*>(w) + j * cols, cols, y, ldy, lane);
      break;
    case RowKind::kBf16Wide:
      RowTimesTokensWide(x, ldx, m, static_cast<const uint16_t*>(w) + j * cols, cols, y, ldy, lane);
      break;
  }
}

// grid (row blocks, token tiles, batch): one warp per weight row and tile.
// The row kind is a template argument, so each kernel holds one body and
// no more registers than it needs.
template <RowKind kKind>
__global__ void GemvKernel(const float* x, int64_t ldx, int64_t m, const void* w, int element_bytes,
                           int64_t rows, int64_t cols, float* y, int64_t ldy, int64_t stride_x,
                           int64_t stride_w, int64_t stride_y) {
  const int64_t j = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (j >= rows) return;
  const int64_t t0 = static_cast<int64_t>(blockIdx.y) * kGemvTokens;
  x += blockIdx.z * stride_x + t0 * ldx;
  w = static_cast<const uint8_t*>(w) + blockIdx.z * stride_w * element_bytes;
  y += blockIdx.z * stride_y + t0 * ldy;
  RowProduct(kKind, x, ldx, min(static_cast<int64_t>(kGemvTokens), m - t0), w, j, cols, y + j, ldy,
             lane);
}

// Products of different weights in one launch (a step's experts): grid y is
// the product and z the token tile (blocks past a product's tokens leave at
// once); each warp takes one row and tile, in the order GemvKernel uses, so
// results match it bit for bit.
struct DeviceProduct {
  RowKind kind;
  const float* x;
  int64_t ldx, m;
  const void* w;
  int64_t rows, cols;
  float* y;
  int64_t ldy;
};

__global__ void GroupedGemvKernel(const DeviceProduct* products) {
  const DeviceProduct p = products[blockIdx.y];
  const int64_t j = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  const int64_t t0 = static_cast<int64_t>(blockIdx.z) * kGemvTokens;
  if (j >= p.rows || t0 >= p.m) return;
  RowProduct(p.kind, p.x + t0 * p.ldx, p.ldx, min(static_cast<int64_t>(kGemvTokens), p.m - t0), p.w,
             j, p.cols, p.y + t0 * p.ldy + j, p.ldy, lane);
}

__global__ void RopeKernel(float* x, int64_t tokens, int64_t token_stride, int64_t per_token,
                           int64_t vector_stride, int64_t dim, const int64_t* positions,
                           const float* inv_freq, float scale) {
  const int64_t half = dim / 2;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= tokens * per_token * half) return;
  const int64_t i = idx % half, v = (idx / half) % per_token, t = idx / half / per_token;
  const float angle = static_cast<float>(positions[t]) * inv_freq[i];
  const float c = cosf(angle) * scale, s = sinf(angle) * scale;
  float* p = x + t * token_stride + v * vector_stride;
  const float a = p[2 * i], b = p[2 * i + 1];
  p[2 * i] = a * c - b * s;
  p[2 * i + 1] = a * s + b * c;
}

__global__ void RopeTableKernel(float* x, int64_t rows, int64_t dim, const float* cos,
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

__global__ void CopyRowsKernel(const float* src, int64_t src_stride, int64_t rows, int64_t n,
                               float* dst, int64_t dst_stride) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= rows * n) return;
  const int64_t r = idx / n, c = idx % n;
  dst[r * dst_stride + c] = src[r * src_stride + c];
}

template <typename W>
__global__ void EmbedKernel(const W* embed, int64_t hidden, const int32_t* ids, int64_t tokens,
                            float* x) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= tokens * hidden) return;
  const int64_t t = idx / hidden, d = idx % hidden;
  x[idx] = Load(embed, static_cast<int64_t>(ids[t]) * hidden + d);
}

__global__ void GatherRowsKernel(const float* src, const int64_t* index, int64_t rows, int64_t n,
                                 float* dst) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= rows * n) return;
  const int64_t r = idx / n, c = idx % n;
  dst[idx] = src[index[r] * n + c];
}

__global__ void WriteCacheKernel(const float* rows, int64_t tokens, int64_t width,
                                 const int64_t* row_at, bool bf16, void* cache) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= tokens * width) return;
  const int64_t t = idx / width, c = idx % width;
  const int64_t at = row_at[t] * width + c;
  if (bf16) {
    static_cast<uint16_t*>(cache)[at] = FloatToBf16(rows[idx]);
  } else {
    static_cast<float*>(cache)[at] = rows[idx];
  }
}

// `batch` blocks of x [m][k] (rows ldx apart, blocks stride_x apart) into
// contiguous BF16 halves [batch][m][k]: hi = bf16(x), lo = bf16(x - hi).
__global__ void SplitBf16Kernel(const float* x, int64_t ldx, int64_t stride_x, int64_t m, int64_t k,
                                int64_t batch, uint16_t* hi, uint16_t* lo) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= batch * m * k) return;
  const int64_t b = idx / (m * k), r = idx / k % m, c = idx % k;
  const float v = x[b * stride_x + r * ldx + c];
  const uint16_t h = FloatToBf16(v);
  hi[idx] = h;
  lo[idx] = FloatToBf16(v - Bf16ToFloat(h));
}

__global__ void GatherBytesKernel(const uint8_t* memory, const int64_t* offsets, int64_t rows,
                                  int64_t bytes, uint8_t* dense) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= rows * bytes) return;
  const int64_t r = idx / bytes, b = idx % bytes;
  dense[idx] = memory[offsets[r] + b];
}

__global__ void ScatterBytesKernel(const uint8_t* dense, const int64_t* offsets, int64_t rows,
                                   int64_t bytes, uint8_t* memory) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= rows * bytes) return;
  const int64_t r = idx / bytes, b = idx % bytes;
  memory[offsets[r] + b] = dense[idx];
}

__global__ void SiluMulKernel(float* h, int64_t rows, int64_t inter) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= rows * inter) return;
  const int64_t r = idx / inter, d = idx % inter;
  float* row = h + r * 2 * inter;
  const float g = row[d];
  row[d] = g / (1.0f + expf(-g)) * row[inter + d];
}

__global__ void AddKernel(float* x, const float* y, int64_t n) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx < n) x[idx] += y[idx];
}

__global__ void CombineRowsKernel(const float* rows, const int64_t* first, const int64_t* row,
                                  const float* weight, int64_t tokens, int64_t n, float* out) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= tokens * n) return;
  const int64_t t = idx / n, c = idx % n;
  float sum = out[idx];
  for (int64_t r = first[t]; r < first[t + 1]; ++r) sum += weight[r] * rows[row[r] * n + c];
  out[idx] = sum;
}

// MLA decode attention: three kernels (scores, softmax, sums), each over
// tiles of kHeadTile heads, so that a cache row read from memory serves all
// of a tile's heads.
constexpr int kHeadTile = 16;
constexpr int kScoreRows = 64;   // Rows per scores block.
constexpr int kSumColumns = 64;  // Latent columns per sums block.
// Context rows per sums block: a token's context is split into pieces of
// this many rows whatever its batch, and the pieces are added in order.
constexpr int64_t kSumRows = 256;

int64_t SumPieces(int64_t max_len) { return (max_len + kSumRows - 1) / kSumRows; }

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

// grid (tokens, head tiles, column tiles x context pieces); 16 threads per
// head, 4 adjacent columns each: a row's 64 columns are one coalesced read
// shared by the tile's heads. Each block sums one piece of kSumRows rows into
// `partials` [tokens][heads][pieces][lora]; MlaCombineKernel adds them.
__global__ void MlaSumsKernel(const float* probs, int64_t heads, int64_t width, int64_t lora,
                              const uint16_t* cache, int64_t block_rows, const int32_t* tables,
                              int64_t max_blocks, const int32_t* lengths, int64_t max_len,
                              int64_t column_tiles, int64_t pieces, float* partials) {
  const int64_t t = blockIdx.x;
  const int64_t piece = blockIdx.z / column_tiles, column_tile = blockIdx.z % column_tiles;
  const int64_t h = static_cast<int64_t>(blockIdx.y) * kHeadTile + threadIdx.x / 16;
  const int64_t c0 = column_tile * kSumColumns + (threadIdx.x % 16) * 4;
  const int64_t len = lengths[t], j0 = piece * kSumRows;
  if (h >= heads || c0 >= lora || j0 >= len) return;
  const int64_t j1 = min(len, j0 + kSumRows);
  const int32_t* table = tables + t * max_blocks;
  const float* p = probs + (t * heads + h) * max_len;
  float acc[4] = {0.f, 0.f, 0.f, 0.f};
  for (int64_t j = j0; j < j1; ++j) {
    const uint16_t* row = CacheRow(cache, table, block_rows, width, j) + c0;
    const float pj = p[j];
    for (int e = 0; e < 4; ++e) {
      if (c0 + e < lora) acc[e] += pj * Bf16ToFloat(row[e]);
    }
  }
  float* out = partials + ((t * heads + h) * pieces + piece) * lora;
  for (int e = 0; e < 4; ++e) {
    if (c0 + e < lora) out[c0 + e] = acc[e];
  }
}

// out[t][h][c] = the sum of token t's pieces, in order.
__global__ void MlaCombineKernel(const float* partials, int64_t tokens, int64_t heads, int64_t lora,
                                 int64_t pieces, const int32_t* lengths, float* out) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= tokens * heads * lora) return;
  const int64_t t = idx / (heads * lora), h = idx / lora % heads, c = idx % lora;
  const int64_t used = (lengths[t] + kSumRows - 1) / kSumRows;
  const float* piece = partials + (t * heads + h) * pieces * lora + c;
  float sum = 0.f;
  for (int64_t k = 0; k < used; ++k) sum += piece[k * lora];
  out[idx] = sum;
}

}  // namespace

absl::Status Check(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(what, ": ", cudaGetErrorString(e)));
}

DeviceBuffer::~DeviceBuffer() {
  if (ptr_ != nullptr) (void)cudaFree(ptr_);
}

absl::Status DeviceBuffer::Resize(size_t bytes) {
  if (bytes <= bytes_ && ptr_ != nullptr) return absl::OkStatus();
  if (ptr_ != nullptr) (void)cudaFree(ptr_);
  ptr_ = nullptr;
  bytes_ = 0;
  if (absl::Status s = Check(cudaMalloc(&ptr_, bytes == 0 ? 1 : bytes), "cudaMalloc"); !s.ok()) {
    ptr_ = nullptr;
    return s;
  }
  bytes_ = bytes;
  return absl::OkStatus();
}

Stream::Stream()
    : status_(Check(cudaStreamCreateWithFlags(&s_, cudaStreamNonBlocking), "stream")) {}

Stream::~Stream() {
  if (s_ != nullptr) (void)cudaStreamDestroy(s_);
}

absl::Status Download(const void* device, size_t bytes, void* host, cudaStream_t s) {
  if (bytes > 0) {
    if (absl::Status c =
            Check(cudaMemcpyAsync(host, device, bytes, cudaMemcpyDeviceToHost, s), "download");
        !c.ok()) {
      return c;
    }
  }
  return Check(cudaStreamSynchronize(s), "synchronize");
}

absl::Status LaunchRmsNorm(const float* x, int64_t x_stride, const float* w, int64_t rows,
                           int64_t n, float eps, float* out, int64_t out_stride, cudaStream_t s) {
  if (rows <= 0) return absl::OkStatus();
  RmsNormKernel<<<static_cast<unsigned>(rows), kThreads, 0, s>>>(x, x_stride, w, n, eps, out,
                                                                 out_stride);
  return Check(cudaGetLastError(), "RmsNorm");
}

namespace {

// The path depends on the weights and the activations' layout, never on m,
// so a token's sums keep their order whatever its batch.
RowKind KindOf(const DeviceMatrix& w, const float* x, int64_t ldx, int64_t stride_x,
               int64_t stride_w) {
  if (!w.bf16) return RowKind::kF32;
  auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  const bool wide = w.cols % 8 == 0 && aligned(w.data) && aligned(x) && ldx % 4 == 0 &&
                    stride_x % 4 == 0 && stride_w % 8 == 0;
  return wide ? RowKind::kBf16Wide : RowKind::kBf16;
}

}  // namespace

absl::Status LaunchMatMul(const float* x, int64_t ldx, int64_t m, const DeviceMatrix& w, float* y,
                          int64_t ldy, cudaStream_t s, int64_t batch, int64_t stride_x,
                          int64_t stride_w, int64_t stride_y) {
  if (m <= 0 || w.rows <= 0 || batch <= 0) return absl::OkStatus();
  const unsigned z = static_cast<unsigned>(batch);
  const int64_t tiles = (m + kGemvTokens - 1) / kGemvTokens;
  if (tiles > 65535 || batch > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("MatMul: ", m, " rows in ", batch, " batches"));
  }
  const dim3 grid(Blocks(w.rows * 32), static_cast<unsigned>(tiles), z);
  const int element_bytes = w.bf16 ? 2 : 4;
  switch (KindOf(w, x, ldx, stride_x, stride_w)) {
    case RowKind::kF32:
      GemvKernel<RowKind::kF32><<<grid, kThreads, 0, s>>>(
          x, ldx, m, w.data, element_bytes, w.rows, w.cols, y, ldy, stride_x, stride_w, stride_y);
      break;
    case RowKind::kBf16:
      GemvKernel<RowKind::kBf16><<<grid, kThreads, 0, s>>>(
          x, ldx, m, w.data, element_bytes, w.rows, w.cols, y, ldy, stride_x, stride_w, stride_y);
      break;
    case RowKind::kBf16Wide:
      GemvKernel<RowKind::kBf16Wide><<<grid, kThreads, 0, s>>>(
          x, ldx, m, w.data, element_bytes, w.rows, w.cols, y, ldy, stride_x, stride_w, stride_y);
      break;
  }
  return Check(cudaGetLastError(), "MatMul");
}

namespace {

// Elements of one half, rounded up so that the lo half starts 256-byte
// aligned (cuBLAS's faster kernels want aligned operands).
int64_t HalfElements(int64_t m, int64_t k, int64_t batch) {
  return (std::max<int64_t>(m * k * batch, 1) + 127) / 128 * 128;
}

}  // namespace

size_t TensorCoreSplitBytes(int64_t m, int64_t k, int64_t batch) {
  return 2 * sizeof(uint16_t) * static_cast<size_t>(HalfElements(m, k, batch));
}

absl::Status LaunchTensorCoreMatMul(Cublas& cublas, const float* x, int64_t ldx, int64_t m,
                                    const DeviceMatrix& w, float* y, int64_t ldy,
                                    DeviceBuffer& split, cudaStream_t s, int64_t batch,
                                    int64_t stride_x, int64_t stride_w, int64_t stride_y) {
  if (m <= 0 || w.rows <= 0 || w.cols <= 0 || batch <= 0) return absl::OkStatus();
  if (!w.bf16) return absl::InvalidArgumentError("tensor-core products take BF16 weights");
  const int64_t k = w.cols;
  if (absl::Status r = split.Resize(TensorCoreSplitBytes(m, k, batch)); !r.ok()) return r;
  uint16_t* hi = split.get<uint16_t>();
  uint16_t* lo = hi + HalfElements(m, k, batch);
  SplitBf16Kernel<<<Blocks(batch * m * k), kThreads, 0, s>>>(x, ldx, stride_x, m, k, batch, hi, lo);
  if (absl::Status r = Check(cudaGetLastError(), "SplitBf16"); !r.ok()) return r;
  const auto* weights = static_cast<const uint16_t*>(w.data);
  for (const auto& [half, beta] : {std::pair<const uint16_t*, float>{hi, 0.f}, {lo, 1.f}}) {
    if (absl::Status r = cublas.GemmBf16(m, w.rows, k, half, k, weights, k, y, ldy, beta, s, batch,
                                         m * k, stride_w, stride_y);
        !r.ok()) {
      return r;
    }
  }
  return absl::OkStatus();
}

absl::Status LaunchRope(float* x, int64_t tokens, int64_t token_stride, int64_t per_token,
                        int64_t vector_stride, int64_t dim, const int64_t* positions,
                        const float* inv_freq, float scale, cudaStream_t s) {
  const int64_t items = tokens * per_token * (dim / 2);
  if (items <= 0) return absl::OkStatus();
  RopeKernel<<<Blocks(items), kThreads, 0, s>>>(x, tokens, token_stride, per_token, vector_stride,
                                                dim, positions, inv_freq, scale);
  return Check(cudaGetLastError(), "Rope");
}

absl::Status LaunchRopeTable(float* x, int64_t rows, int64_t dim, const float* cos,
                             const float* sin, cudaStream_t s) {
  const int64_t pairs = rows * (dim / 2);
  if (pairs <= 0) return absl::OkStatus();
  RopeTableKernel<<<Blocks(pairs), kThreads, 0, s>>>(x, rows, dim, cos, sin);
  return Check(cudaGetLastError(), "Rope");
}

absl::Status LaunchCopyRows(const float* src, int64_t src_stride, int64_t rows, int64_t n,
                            float* dst, int64_t dst_stride, cudaStream_t s) {
  if (rows * n <= 0) return absl::OkStatus();
  CopyRowsKernel<<<Blocks(rows * n), kThreads, 0, s>>>(src, src_stride, rows, n, dst, dst_stride);
  return Check(cudaGetLastError(), "CopyRows");
}

absl::Status LaunchEmbed(const DeviceMatrix& embed, const int32_t* ids, int64_t tokens, float* x,
                         cudaStream_t s) {
  const int64_t items = tokens * embed.cols;
  if (items <= 0) return absl::OkStatus();
  if (embed.bf16) {
    EmbedKernel<<<Blocks(items), kThreads, 0, s>>>(static_cast<const uint16_t*>(embed.data),
                                                   embed.cols, ids, tokens, x);
  } else {
    EmbedKernel<<<Blocks(items), kThreads, 0, s>>>(static_cast<const float*>(embed.data),
                                                   embed.cols, ids, tokens, x);
  }
  return Check(cudaGetLastError(), "Embed");
}

absl::Status LaunchGatherRows(const float* src, const int64_t* index, int64_t rows, int64_t n,
                              float* dst, cudaStream_t s) {
  if (rows * n <= 0) return absl::OkStatus();
  GatherRowsKernel<<<Blocks(rows * n), kThreads, 0, s>>>(src, index, rows, n, dst);
  return Check(cudaGetLastError(), "GatherRows");
}

absl::Status LaunchWriteCache(const float* rows, int64_t tokens, int64_t width,
                              const int64_t* row_at, bool bf16, void* cache, cudaStream_t s) {
  if (tokens * width <= 0) return absl::OkStatus();
  WriteCacheKernel<<<Blocks(tokens * width), kThreads, 0, s>>>(rows, tokens, width, row_at, bf16,
                                                               cache);
  return Check(cudaGetLastError(), "WriteCache");
}

absl::Status LaunchGatherBytes(const uint8_t* memory, const int64_t* offsets, int64_t rows,
                               int64_t bytes, uint8_t* dense, cudaStream_t s) {
  if (rows * bytes <= 0) return absl::OkStatus();
  GatherBytesKernel<<<Blocks(rows * bytes), kThreads, 0, s>>>(memory, offsets, rows, bytes, dense);
  return Check(cudaGetLastError(), "GatherBytes");
}

absl::Status LaunchScatterBytes(const uint8_t* dense, const int64_t* offsets, int64_t rows,
                                int64_t bytes, uint8_t* memory, cudaStream_t s) {
  if (rows * bytes <= 0) return absl::OkStatus();
  ScatterBytesKernel<<<Blocks(rows * bytes), kThreads, 0, s>>>(dense, offsets, rows, bytes, memory);
  return Check(cudaGetLastError(), "ScatterBytes");
}

absl::Status LaunchSiluMul(float* h, int64_t rows, int64_t inter, cudaStream_t s) {
  if (rows * inter <= 0) return absl::OkStatus();
  SiluMulKernel<<<Blocks(rows * inter), kThreads, 0, s>>>(h, rows, inter);
  return Check(cudaGetLastError(), "SiluMul");
}

absl::Status LaunchAdd(float* x, const float* y, int64_t n, cudaStream_t s) {
  if (n <= 0) return absl::OkStatus();
  AddKernel<<<Blocks(n), kThreads, 0, s>>>(x, y, n);
  return Check(cudaGetLastError(), "Add");
}

absl::Status LaunchCombineRows(const float* rows, const int64_t* first, const int64_t* row,
                               const float* weight, int64_t tokens, int64_t n, float* out,
                               cudaStream_t s) {
  if (tokens * n <= 0) return absl::OkStatus();
  CombineRowsKernel<<<Blocks(tokens * n), kThreads, 0, s>>>(rows, first, row, weight, tokens, n,
                                                            out);
  return Check(cudaGetLastError(), "CombineRows");
}

absl::Status LaunchMlaDecodeAttention(const MlaProblem& p, cudaStream_t stream) {
  if (p.tokens <= 0) return absl::OkStatus();
  const int64_t row_tiles = (p.max_len + kScoreRows - 1) / kScoreRows;
  if (p.heads > 65535 || row_tiles > 65535 || p.tokens > 0x7fffffff) {
    return absl::InvalidArgumentError(absl::StrCat("MLA attention: ", p.tokens, " tokens of ",
                                                   p.heads, " heads over ", p.max_len, " rows"));
  }
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
  const int64_t column_tiles = (p.lora + kSumColumns - 1) / kSumColumns;
  const int64_t pieces = SumPieces(p.max_len);
  if (column_tiles * pieces > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("MLA attention over ", p.max_len, " rows"));
  }
  MlaSumsKernel<<<dim3(tokens, head_tiles, static_cast<unsigned>(column_tiles * pieces)), kThreads,
                  0, stream>>>(p.scores, p.heads, p.width, p.lora, p.cache, p.block_rows, p.tables,
                               p.max_blocks, p.lengths, p.max_len, column_tiles, pieces,
                               p.partials);
  if (absl::Status s = Check(cudaGetLastError(), "MlaSums"); !s.ok()) return s;
  MlaCombineKernel<<<Blocks(p.tokens * p.heads * p.lora), kThreads, 0, stream>>>(
      p.partials, p.tokens, p.heads, p.lora, pieces, p.lengths, p.out);
  return Check(cudaGetLastError(), "MlaCombine");
}

size_t MlaPartialsBytes(int64_t tokens, int64_t heads, int64_t max_len, int64_t lora) {
  return sizeof(float) * static_cast<size_t>(std::max<int64_t>(tokens, 1)) *
         static_cast<size_t>(heads) * static_cast<size_t>(SumPieces(max_len)) *
         static_cast<size_t>(lora);
}

size_t GroupedTableBytes(int64_t products) { return sizeof(DeviceProduct) * products; }

absl::Status LaunchGroupedMatMul(const std::vector<GroupedProduct>& products,
                                 DeviceBuffer& descriptors, cudaStream_t s) {
  if (products.empty()) return absl::OkStatus();
  if (products.size() > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("MatMul: ", products.size(), " products"));
  }
  std::vector<DeviceProduct> table;
  int64_t rows = 0, tiles = 0;
  for (const GroupedProduct& p : products) {
    table.push_back(
        {KindOf(p.w, p.x, p.ldx, 0, 0), p.x, p.ldx, p.m, p.w.data, p.w.rows, p.w.cols, p.y, p.ldy});
    rows = std::max(rows, p.w.rows);
    tiles = std::max(tiles, (p.m + kGemvTokens - 1) / kGemvTokens);
  }
  if (rows == 0 || tiles == 0) return absl::OkStatus();
  if (tiles > 65535) return absl::InvalidArgumentError(absl::StrCat("MatMul: ", tiles, " tiles"));
  // Stream-ordered: a launch still queued keeps reading its own table.
  if (absl::Status u = Upload(table.data(), table.size(), descriptors, s); !u.ok()) return u;
  GroupedGemvKernel<<<dim3(Blocks(rows * 32), static_cast<unsigned>(table.size()),
                           static_cast<unsigned>(tiles)),
                      kThreads, 0, s>>>(descriptors.get<DeviceProduct>());
  return Check(cudaGetLastError(), "GroupedMatMul");
}

}  // namespace baton::cuda
