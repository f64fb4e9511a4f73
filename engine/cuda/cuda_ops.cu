#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <memory>
#include <type_traits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/cuda/cublas.h"
#include "engine/cuda/cuda_ops.h"
#include "engine/cuda/device_ops.h"

namespace baton::cuda {
namespace {

// Copies `count` elements to a new device buffer.
template <typename T>
absl::StatusOr<std::unique_ptr<DeviceBuffer>> Upload(const T* host, int64_t count, cudaStream_t s) {
  auto buffer = std::make_unique<DeviceBuffer>();
  if (absl::Status u = Upload(host, static_cast<size_t>(count), *buffer, s); !u.ok()) return u;
  return buffer;
}

// After a launch: checks it, copies `count` results back to the host and
// waits for the stream, so the caller's buffer is ready on return.
absl::Status FinishLaunch(const char* op, float* host, const float* device, int64_t count,
                          cudaStream_t s) {
  if (absl::Status k = Check(cudaGetLastError(), op); !k.ok()) return k;
  return Download(device, sizeof(float) * count, host, s);
}

// The median seconds of `reps` calls of `launch` on `s` (after one warm-up),
// each timed with CUDA events.
absl::StatusOr<double> MedianSeconds(cudaStream_t s, const std::function<absl::Status()>& launch,
                                     int reps) {
  if (absl::Status w = launch(); !w.ok()) return w;  // Warm-up.
  cudaEvent_t start, stop;
  if (absl::Status e = Check(cudaEventCreate(&start), "event"); !e.ok()) return e;
  if (absl::Status e = Check(cudaEventCreate(&stop), "event"); !e.ok()) {
    (void)cudaEventDestroy(start);
    return e;
  }
  std::vector<float> ms(reps);
  auto timed = [&](float* elapsed) -> absl::Status {
    if (absl::Status r = Check(cudaEventRecord(start, s), "record"); !r.ok()) return r;
    if (absl::Status r = launch(); !r.ok()) return r;
    if (absl::Status r = Check(cudaEventRecord(stop, s), "record"); !r.ok()) return r;
    if (absl::Status r = Check(cudaEventSynchronize(stop), "sync"); !r.ok()) return r;
    return Check(cudaEventElapsedTime(elapsed, start, stop), "elapsed");
  };
  absl::Status failed;
  for (int r = 0; r < reps; ++r) {
    if (absl::Status t = timed(&ms[r]); !t.ok()) {
      failed = t;
      break;
    }
  }
  (void)cudaEventDestroy(start);
  (void)cudaEventDestroy(stop);
  if (!failed.ok()) return failed;
  std::sort(ms.begin(), ms.end());
  return ms[reps / 2] * 1e-3;
}

// Deterministic filler: any values do where only time is measured.
struct Filler {
  uint32_t x = 12345;
  float Next() { return static_cast<float>((x = x * 1664525u + 1013904223u) >> 8) * 1e-8f; }
  uint16_t NextBf16() { return static_cast<uint16_t>(0x3c00 + ((x = x * 1664525u + 1u) >> 24)); }
};

// The operands of a timed product in device memory, filled with any values:
// x [m][k] of X (fp32 activations, or BF16 ones for cuBLAS), BF16 w [n][k],
// and room for y [m][n]; the uploads are queued on `s`.
template <typename X>
struct TimedOperands {
  std::unique_ptr<DeviceBuffer> x, w;
  DeviceBuffer y;

  absl::Status Make(int64_t m, int64_t k, int64_t n, cudaStream_t s) {
    Filler fill;
    std::vector<X> host_x(m * k);
    std::vector<uint16_t> host_w(n * k);
    for (X& v : host_x) {
      if constexpr (std::is_same_v<X, float>) {
        v = fill.Next();
      } else {
        v = fill.NextBf16();
      }
    }
    for (uint16_t& v : host_w) v = fill.NextBf16();
    auto dx = Upload(host_x.data(), m * k, s);
    if (!dx.ok()) return dx.status();
    auto dw = Upload(host_w.data(), n * k, s);
    if (!dw.ok()) return dw.status();
    x = *std::move(dx);
    w = *std::move(dw);
    return y.Resize(sizeof(float) * m * n);
  }
};

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
  if (absl::Status s = LaunchRmsNorm((*dx)->get<float>(), n, (*dw)->get<float>(), rows, n, eps,
                                     dout.get<float>(), n, stream.get());
      !s.ok()) {
    return s;
  }
  return FinishLaunch("RmsNorm", out, dout.get<float>(), rows * n, stream.get());
}

namespace {

// x [m][cols] times BF16 w [rows][cols] through `launch`, which queues the
// product on device buffers.
template <typename Launch>
absl::Status RunMatMulBf16(const float* x, int64_t m, const uint16_t* w, int64_t rows, int64_t cols,
                           float* y, Launch launch) {
  Stream stream;
  if (!stream.status().ok()) return stream.status();
  auto dx = Upload(x, m * cols, stream.get());
  if (!dx.ok()) return dx.status();
  auto dw = Upload(w, rows * cols, stream.get());
  if (!dw.ok()) return dw.status();
  DeviceBuffer dy(sizeof(float) * m * rows);
  if (!dy.status().ok()) return dy.status();
  const DeviceMatrix matrix{(*dw)->get<uint16_t>(), true, rows, cols};
  if (absl::Status s = launch((*dx)->get<float>(), matrix, dy.get<float>(), stream.get());
      !s.ok()) {
    return s;
  }
  return FinishLaunch("MatMulBf16", y, dy.get<float>(), m * rows, stream.get());
}

}  // namespace

absl::Status MatMulBf16(const float* x, int64_t m, const uint16_t* w, int64_t rows, int64_t cols,
                        float* y) {
  return RunMatMulBf16(x, m, w, rows, cols, y,
                       [&](const float* dx, const DeviceMatrix& matrix, float* dy, cudaStream_t s) {
                         return LaunchMatMul(dx, cols, m, matrix, dy, rows, s);
                       });
}

absl::Status TensorCoreMatMulBf16Batched(const float* x, int64_t ldx, int64_t m, const uint16_t* w,
                                         int64_t rows, int64_t cols, float* y, int64_t ldy,
                                         int64_t batch, int64_t stride_x, int64_t stride_w,
                                         int64_t stride_y) {
  if (m <= 0 || batch <= 0) return absl::InvalidArgumentError("TensorCoreMatMulBf16Batched: empty");
  auto cublas = Cublas::Open();
  if (!cublas.ok()) return cublas.status();
  const int64_t x_count = (batch - 1) * stride_x + (m - 1) * ldx + cols;
  const int64_t w_count = (batch - 1) * stride_w + rows * cols;
  const int64_t y_count = (batch - 1) * stride_y + (m - 1) * ldy + rows;
  Stream stream;
  if (!stream.status().ok()) return stream.status();
  auto dx = Upload(x, x_count, stream.get());
  if (!dx.ok()) return dx.status();
  auto dw = Upload(w, w_count, stream.get());
  if (!dw.ok()) return dw.status();
  auto dy = Upload(y, y_count, stream.get());  // The columns no product writes stay.
  if (!dy.ok()) return dy.status();
  DeviceBuffer split;
  const DeviceMatrix matrix{(*dw)->get<uint16_t>(), true, rows, cols};
  if (absl::Status s =
          LaunchTensorCoreMatMul(**cublas, (*dx)->get<float>(), ldx, m, matrix, (*dy)->get<float>(),
                                 ldy, split, stream.get(), batch, stride_x, stride_w, stride_y);
      !s.ok()) {
    return s;
  }
  return FinishLaunch("TensorCoreMatMulBf16Batched", y, (*dy)->get<float>(), y_count, stream.get());
}

bool HasCublas(std::string* why) {
  auto cublas = Cublas::Open();
  if (!cublas.ok() && why != nullptr) *why = std::string(cublas.status().message());
  return cublas.ok();
}

absl::Status TensorCoreMatMulBf16(const float* x, int64_t m, const uint16_t* w, int64_t rows,
                                  int64_t cols, float* y) {
  auto cublas = Cublas::Open();
  if (!cublas.ok()) return cublas.status();
  DeviceBuffer split;
  return RunMatMulBf16(x, m, w, rows, cols, y,
                       [&](const float* dx, const DeviceMatrix& matrix, float* dy, cudaStream_t s) {
                         return LaunchTensorCoreMatMul(**cublas, dx, cols, m, matrix, dy, rows,
                                                       split, s);
                       });
}

absl::Status GroupedMatMulBf16(const std::vector<Bf16Product>& products) {
  Stream stream;
  if (!stream.status().ok()) return stream.status();
  std::vector<std::unique_ptr<DeviceBuffer>> inputs, outputs;
  std::vector<GroupedProduct> launch;
  for (const Bf16Product& p : products) {
    auto dx = Upload(p.x, p.m * p.cols, stream.get());
    if (!dx.ok()) return dx.status();
    auto dw = Upload(p.w, p.rows * p.cols, stream.get());
    if (!dw.ok()) return dw.status();
    auto dy = std::make_unique<DeviceBuffer>(sizeof(float) * p.m * p.rows);
    if (!dy->status().ok()) return dy->status();
    launch.push_back({(*dx)->get<float>(), p.cols, p.m,
                      DeviceMatrix{(*dw)->get<uint16_t>(), true, p.rows, p.cols}, dy->get<float>(),
                      p.rows});
    inputs.push_back(*std::move(dx));
    inputs.push_back(*std::move(dw));
    outputs.push_back(std::move(dy));
  }
  DeviceBuffer table;
  if (absl::Status s = LaunchGroupedMatMul(launch, table, stream.get()); !s.ok()) return s;
  for (size_t g = 0; g < products.size(); ++g) {
    const Bf16Product& p = products[g];
    if (absl::Status s = FinishLaunch("GroupedMatMulBf16", p.y, outputs[g]->get<float>(),
                                      p.m * p.rows, stream.get());
        !s.ok()) {
      return s;
    }
  }
  return absl::OkStatus();
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
  if (absl::Status s = LaunchRopeTable((*dx)->get<float>(), rows, dim, (*dc)->get<float>(),
                                       (*ds)->get<float>(), stream.get());
      !s.ok()) {
    return s;
  }
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
  DeviceBuffer partials(MlaPartialsBytes(tokens, heads, max_len, lora));
  DeviceBuffer dout(sizeof(float) * tokens * heads * lora);
  if (!scores.status().ok()) return scores.status();
  if (!partials.status().ok()) return partials.status();
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
                           partials.get<float>(),
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
  Filler fill;
  for (float& v : q) v = fill.Next();
  for (uint16_t& v : cache) v = fill.NextBf16();
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
  DeviceBuffer partials(MlaPartialsBytes(tokens, heads, context, kLora));
  DeviceBuffer dout(sizeof(float) * tokens * heads * kLora);
  if (!scores.status().ok()) return scores.status();
  if (!partials.status().ok()) return partials.status();
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
                           partials.get<float>(),
                           dout.get<float>()};
  return MedianSeconds(
      stream.get(), [&] { return LaunchMlaDecodeAttention(problem, stream.get()); }, reps);
}

absl::StatusOr<double> TimeMatMulBf16(int64_t m, int64_t k, int64_t n, int reps,
                                      bool tensor_cores) {
  if (m <= 0 || k <= 0 || n <= 0 || reps <= 0) {
    return absl::InvalidArgumentError("TimeMatMulBf16: bad shape");
  }
  Stream stream;
  if (!stream.status().ok()) return stream.status();
  TimedOperands<float> op;
  if (absl::Status made = op.Make(m, k, n, stream.get()); !made.ok()) return made;
  const DeviceMatrix matrix{op.w->get<uint16_t>(), /*bf16=*/true, n, k};
  std::unique_ptr<Cublas> cublas;
  DeviceBuffer split;
  if (tensor_cores) {
    auto opened = Cublas::Open();
    if (!opened.ok()) return opened.status();
    cublas = std::move(*opened);
    if (absl::Status r = split.Resize(TensorCoreSplitBytes(m, k)); !r.ok()) return r;
  }
  return MedianSeconds(
      stream.get(),
      [&] {
        if (tensor_cores) {
          return LaunchTensorCoreMatMul(*cublas, op.x->get<float>(), k, m, matrix,
                                        op.y.get<float>(), n, split, stream.get());
        }
        return LaunchMatMul(op.x->get<float>(), k, m, matrix, op.y.get<float>(), n, stream.get());
      },
      reps);
}

absl::StatusOr<double> TimeCublasGemmBf16(int64_t m, int64_t k, int64_t n, int reps) {
  if (m <= 0 || k <= 0 || n <= 0 || reps <= 0) {
    return absl::InvalidArgumentError("TimeCublasGemmBf16: bad shape");
  }
  auto cublas = Cublas::Open();
  if (!cublas.ok()) return cublas.status();
  Stream stream;
  if (!stream.status().ok()) return stream.status();
  TimedOperands<uint16_t> op;
  if (absl::Status made = op.Make(m, k, n, stream.get()); !made.ok()) return made;
  return MedianSeconds(
      stream.get(),
      [&] {
        return (*cublas)->GemmBf16(m, n, k, op.x->get<uint16_t>(), k, op.w->get<uint16_t>(), k,
                                   op.y.get<float>(), n, 0.f, stream.get());
      },
      reps);
}

}  // namespace baton::cuda
