#include "bench/roofline.h"

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <vector>

#include "engine/tensor.h"

#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace baton::bench {
namespace {

double Seconds(std::chrono::steady_clock::time_point a, std::chrono::steady_clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

__attribute__((target("avx512f"))) float SumAvx512(const float* p, int64_t n) {
  __m512 acc[8];
  for (auto& a : acc) a = _mm512_setzero_ps();
  for (int64_t i = 0; i + 128 <= n; i += 128) {
    for (int j = 0; j < 8; ++j) acc[j] = _mm512_add_ps(acc[j], _mm512_load_ps(p + i + 16 * j));
  }
  for (int j = 1; j < 8; ++j) acc[0] = _mm512_add_ps(acc[0], acc[j]);
  return _mm512_reduce_add_ps(acc[0]);
}

__attribute__((target("avx2"))) float SumAvx2(const float* p, int64_t n) {
  __m256 acc[8];
  for (auto& a : acc) a = _mm256_setzero_ps();
  for (int64_t i = 0; i + 64 <= n; i += 64) {
    for (int j = 0; j < 8; ++j) acc[j] = _mm256_add_ps(acc[j], _mm256_load_ps(p + i + 8 * j));
  }
  for (int j = 1; j < 8; ++j) acc[0] = _mm256_add_ps(acc[0], acc[j]);
  float out[8];
  _mm256_storeu_ps(out, acc[0]);
  return out[0] + out[7];
}

__attribute__((target("avx2,fma"))) float FmaLoopAvx2(int64_t iterations) {
  __m256 acc[12];
  for (int j = 0; j < 12; ++j) acc[j] = _mm256_set1_ps(0.001f * j);
  const __m256 a = _mm256_set1_ps(0.999f), b = _mm256_set1_ps(0.0001f);
  for (int64_t i = 0; i < iterations; ++i) {
    for (int j = 0; j < 12; ++j) acc[j] = _mm256_fmadd_ps(acc[j], a, b);
  }
  for (int j = 1; j < 12; ++j) acc[0] = _mm256_add_ps(acc[0], acc[j]);
  float out[8];
  _mm256_storeu_ps(out, acc[0]);
  return out[0];
}

bool HasAvx512() { return __builtin_cpu_supports("avx512f"); }

__attribute__((target("avx512f"))) float FmaLoop(int64_t iterations) {
  __m512 acc[12];
  for (int j = 0; j < 12; ++j) acc[j] = _mm512_set1_ps(0.001f * j);
  const __m512 a = _mm512_set1_ps(0.999f), b = _mm512_set1_ps(0.0001f);
  for (int64_t i = 0; i < iterations; ++i) {
    for (int j = 0; j < 12; ++j) acc[j] = _mm512_fmadd_ps(acc[j], a, b);
  }
  for (int j = 1; j < 12; ++j) acc[0] = _mm512_add_ps(acc[0], acc[j]);
  return _mm512_reduce_add_ps(acc[0]);
}

__attribute__((target("avx512f,avx512bf16"))) float DpBf16Loop(int64_t iterations) {
  __m512 acc[12];
  for (int j = 0; j < 12; ++j) acc[j] = _mm512_setzero_ps();
  const __m512bh a = (__m512bh)_mm512_set1_epi16(0x3f80), b = (__m512bh)_mm512_set1_epi16(0x3a83);
  for (int64_t i = 0; i < iterations; ++i) {
    for (int j = 0; j < 12; ++j) acc[j] = _mm512_dpbf16_ps(acc[j], a, b);
  }
  for (int j = 1; j < 12; ++j) acc[0] = _mm512_add_ps(acc[0], acc[j]);
  return _mm512_reduce_add_ps(acc[0]);
}

// Runs `loop(iterations)` on every thread; returns flops per second given
// the flops of one iteration on one thread.
template <typename Loop>
double PeakFlops(ThreadPool& pool, Loop loop, double flops_per_iteration) {
  constexpr int64_t kIterations = 20'000'000;
  std::vector<double> rates;
  std::atomic<float> sink{0};
  for (int rep = 0; rep < 3; ++rep) {
    const auto start = std::chrono::steady_clock::now();
    pool.ParallelFor(pool.num_threads(), 1, [&](int64_t b, int64_t e) {
      for (int64_t t = b; t < e; ++t) sink.store(loop(kIterations));
    });
    const double s = Seconds(start, std::chrono::steady_clock::now());
    rates.push_back(pool.num_threads() * kIterations * flops_per_iteration / s);
  }
  return *std::max_element(rates.begin(), rates.end());
}

}  // namespace

double MeasureReadBandwidth(ThreadPool& pool, int64_t bytes, int reps) {
  const int64_t n = bytes / 4 / 128 * 128;
  AlignedBuffer buffer(static_cast<size_t>(n) * 4);
  float* data = reinterpret_cast<float*>(buffer.data());
  for (int64_t i = 0; i < n; ++i) data[i] = 1.0f;
  std::vector<double> rates;
  std::atomic<float> sink{0};
  for (int rep = 0; rep < reps; ++rep) {
    const auto start = std::chrono::steady_clock::now();
    pool.ParallelFor(n, 128 * 1024, [&](int64_t b, int64_t e) {
      sink.store(HasAvx512() ? SumAvx512(data + b, e - b) : SumAvx2(data + b, e - b));
    });
    rates.push_back(static_cast<double>(n) * 4 / Seconds(start, std::chrono::steady_clock::now()));
  }
  std::sort(rates.begin(), rates.end());
  return rates[rates.size() / 2];
}

double MeasurePeakFp32Flops(ThreadPool& pool) {
  if (HasAvx512()) return PeakFlops(pool, FmaLoop, 12 * 16 * 2);
  return PeakFlops(pool, FmaLoopAvx2, 12 * 8 * 2);
}

double MeasurePeakBf16Flops(ThreadPool& pool) {
  if (!__builtin_cpu_supports("avx512bf16")) return 0;
  return PeakFlops(pool, DpBf16Loop, 12 * 32 * 2);
}

}  // namespace baton::bench
