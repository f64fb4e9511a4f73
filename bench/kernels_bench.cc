// Google Benchmark cases for the kernels that decide speed, at DeepSeek-V3's
// real shapes. Bytes/s counters compare with the DRAM roofline of
// baton-engine-bench; FLOP/s with its compute peaks.
#include <algorithm>
#include <cstring>
#include <random>
#include <type_traits>
#include <vector>

#include "benchmark/benchmark.h"
#include "engine/kernels.h"
#include "engine/sampler.h"
#include "engine/tensor.h"

namespace baton {
namespace {

Matrix RandomBf16(int64_t rows, int64_t cols) {
  Matrix m(DType::kBF16, rows, cols);
  std::mt19937 rng(1);
  std::normal_distribution<float> dist(0, 0.02f);
  for (int64_t i = 0; i < rows * cols; ++i) m.bf16()[i] = FloatToBf16(dist(rng));
  return m.ToPanels();  // As the model stores its weights.
}

ThreadPool& Pool() {
  static ThreadPool* pool = new ThreadPool(0);  // Shared by every case, never torn down.
  return *pool;
}

// Reports FLOP/s from the FLOPs of one iteration.
void CountFlops(benchmark::State& state, double flops_per_iteration) {
  state.counters["FLOP/s"] = benchmark::Counter(
      static_cast<double>(state.iterations()) * flops_per_iteration, benchmark::Counter::kIsRate);
}

// Decode-shaped GEMV/GEMM over a set of matrices larger than the caches, so
// weights stream from DRAM as in a real decode step; the fourth argument 1
// runs BF16 activations (kernels::Precision::kBf16).
void BM_MatMulBf16(benchmark::State& state) {
  const int64_t m = state.range(0), rows = state.range(1), cols = state.range(2);
  const kernels::Precision precision =
      state.range(3) != 0 ? kernels::Precision::kBf16 : kernels::Precision::kF32;
  const int copies =
      static_cast<int>(std::max<int64_t>(1, (int64_t{256} << 20) / (rows * cols * 2)));
  std::vector<Matrix> ws;
  for (int i = 0; i < copies; ++i) ws.push_back(RandomBf16(rows, cols));
  std::vector<float> x(m * cols, 0.5f), y(m * rows);
  int i = 0;
  for (auto _ : state) {
    kernels::MatMul(x.data(), cols, m, ws[i++ % copies], y.data(), rows, Pool(), precision);
    benchmark::DoNotOptimize(y.data());
  }
  state.SetBytesProcessed(state.iterations() * rows * cols * 2);
  CountFlops(state, 2.0 * m * rows * cols);
}
BENCHMARK(BM_MatMulBf16)
    ->ArgsProduct({{1}, {2048}, {7168}, {0, 1}})      // V3 q_a/kv_a-like row block, batch 1
    ->ArgsProduct({{8, 32}, {2048}, {7168}, {0, 1}})  // batches 8 and 32
    ->ArgsProduct({{1}, {7168}, {2048}, {0, 1}})      // expert down-projection
    ->ArgsProduct({{512}, {2048}, {2048}, {0, 1}})    // prefill panel
    ->UseRealTime();

// MLA decode attention over one layer's latent cache of `context` rows in
// blocks of 16, one thread: scores (heads x context x 576) and sums (heads x
// context x 512), on an f32 and on a BF16 cache. The rows (2.4 MB in BF16 at
// 2048) stay in the caches, as one layer's do between a step's phases.
constexpr int64_t kWidth = 576, kLora = 512, kBlock = 16;

template <typename E>
std::vector<E> CacheRows(int64_t context) {
  if constexpr (std::is_same_v<E, float>) {
    return std::vector<float>(context * kWidth, 0.2f);
  } else {
    return std::vector<uint16_t>(context * kWidth, FloatToBf16(0.2f));
  }
}

// Scores of `context` rows from `rows`, block by block as the engine calls
// them, each block prefetched `prefetch_blocks` ahead (0: none).
template <typename E>
void ScoresByBlock(const std::vector<float>& q, int64_t heads, const E* rows, int64_t context,
                   int64_t prefetch_blocks, std::vector<float>& y) {
  for (int64_t j = 0; j < context; j += kBlock) {
    const int64_t ahead = j + prefetch_blocks * kBlock;
    if (prefetch_blocks > 0 && ahead < context) {
      const char* next = reinterpret_cast<const char*>(&rows[ahead * kWidth]);
      for (int64_t b = 0; b < kBlock * kWidth * int64_t{sizeof(E)}; b += 64) {
        __builtin_prefetch(next + b);
      }
    }
    kernels::AttentionScores(q.data(), kWidth, heads, &rows[j * kWidth], kBlock, kWidth, &y[j],
                             context);
  }
  benchmark::DoNotOptimize(y.data());
}

template <typename E>
void BM_AttentionScores(benchmark::State& state) {
  const int64_t heads = state.range(0), context = state.range(1);
  const std::vector<float> q(heads * kWidth, 0.1f);
  const std::vector<E> rows = CacheRows<E>(context);
  std::vector<float> y(heads * context);
  for (auto _ : state) ScoresByBlock(q, heads, rows.data(), context, 0, y);
  CountFlops(state, 2.0 * heads * context * kWidth);
}
BENCHMARK(BM_AttentionScores<float>)->ArgsProduct({{16, 128}, {256, 2048}})->UseRealTime();
BENCHMARK(BM_AttentionScores<uint16_t>)->ArgsProduct({{16, 128}, {256, 2048}})->UseRealTime();

// The same over rows that come from memory, as a decode step's do (the
// weights stream through the caches between a layer's attentions): each
// iteration reads the next of 512 MB worth of pieces of `context` rows,
// prefetching each block range(2) blocks ahead (0: none), as the engine does,
// in huge pages as the KV cache's (which made no difference on the Xeon VM:
// 67-74 GFLOP/s with and without, against ~115 from the caches).
template <typename E>
void BM_AttentionScoresCold(benchmark::State& state) {
  const int64_t heads = state.range(0), context = state.range(1);
  const int64_t pieces = (int64_t{512} << 20) / (context * kWidth * int64_t{sizeof(E)});
  const std::vector<float> q(heads * kWidth, 0.1f);
  const std::vector<E> filled = CacheRows<E>(context * pieces);
  AlignedBuffer buffer(filled.size() * sizeof(E));  // Huge pages, as the KV cache's.
  std::memcpy(buffer.data(), filled.data(), buffer.size());
  const E* rows = reinterpret_cast<const E*>(buffer.data());
  std::vector<float> y(heads * context);
  int64_t piece = 0;
  for (auto _ : state) {
    ScoresByBlock(q, heads, &rows[piece * context * kWidth], context, state.range(2), y);
    piece = (piece + 1) % pieces;
  }
  CountFlops(state, 2.0 * heads * context * kWidth);
}
BENCHMARK(BM_AttentionScoresCold<uint16_t>)
    ->ArgsProduct({{16}, {256}, {0, 1, 2, 4}})
    ->UseRealTime();

template <typename E>
void BM_AttentionSums(benchmark::State& state) {
  const int64_t heads = state.range(0), context = state.range(1);
  const std::vector<float> p(heads * context, 1e-3f);
  const std::vector<E> rows = CacheRows<E>(context);
  std::vector<float> out(heads * kLora);
  std::vector<const E*> blocks;
  for (int64_t j = 0; j < context; j += kBlock) blocks.push_back(&rows[j * kWidth]);
  for (auto _ : state) {
    kernels::AttentionSums(p.data(), context, heads, blocks.data(), kBlock, kWidth, context, kLora,
                           out.data(), kLora);
    benchmark::DoNotOptimize(out.data());
  }
  CountFlops(state, 2.0 * heads * context * kLora);
}
BENCHMARK(BM_AttentionSums<float>)->ArgsProduct({{16, 128}, {256, 2048}})->UseRealTime();
BENCHMARK(BM_AttentionSums<uint16_t>)->ArgsProduct({{16, 128}, {256, 2048}})->UseRealTime();

// One row of logits to a token, as the engine does for each sequence of a
// step: DeepSeek-V3's vocabulary (129280) and the bench model's (32000);
// range(1): 0 greedy, 1 temperature 0.7 with top-p 0.9, 2 the same with 5
// logprobs. The logits are a language model's shape: a few large, a long
// low tail.
void BM_Sample(benchmark::State& state) {
  const int vocab = static_cast<int>(state.range(0));
  std::mt19937 rng(5);
  std::normal_distribution<float> dist(0.f, 2.f);
  std::vector<float> logits(vocab);
  for (float& l : logits) l = dist(rng);
  for (int i = 0; i < 20; ++i) logits[rng() % vocab] += 12.f;
  SamplingOptions options;
  if (state.range(1) > 0) {
    options.temperature = 0.7f;
    options.top_p = 0.9f;
  }
  if (state.range(1) > 1) options.logprobs = 5;
  const std::vector<int32_t> prompt = {1, 2, 3}, output;
  uint64_t step = 0;
  for (auto _ : state) {
    benchmark::DoNotOptimize(Sample(logits.data(), vocab, options, prompt, output, 7, step++));
  }
}
BENCHMARK(BM_Sample)->ArgsProduct({{32000, 129280}, {0, 1, 2}})->Unit(benchmark::kMicrosecond);

}  // namespace
}  // namespace baton
