// The CUDA backend against the CPU engine and DeepSeek's reference on the
// golden checkpoints: greedy tokens identical, logits within 1e-2 of the CPU
// engine's (with the same BF16 KV cache) at every prompt position and decode
// step, also for prompts long enough for the tensor-core products; chunked
// prefill and batching in steps under 64 tokens give bit-identical logits
// (GEMV products sum in one order whatever the batch); the device KV cache
// exports and imports rows exactly (the disaggregated handoff). Skipped,
// saying why, where no GPU is usable.
#include <algorithm>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "engine/cuda/cuda_ops.h"
#include "engine/deepseek_model.h"
#include "engine/devices.h"
#include "engine/engine.h"
#include "gtest/gtest.h"
#include "tests/support/golden.h"

namespace baton {
namespace {

using golden::Argmax;
using golden::CaseDir;
using golden::GoldenCase;
using golden::MaxAbsDiff;

// The bar for a GPU backend against the CPU engine (fp32): BF16
// KV rows and a different summation order.
constexpr float kCpuTolerance = 1e-2f;

class CudaBackendTest : public ::testing::TestWithParam<GoldenCase> {
 protected:
  void SetUp() override {
    std::string why;
    if (cuda::DeviceCount(&why) == 0) GTEST_SKIP() << "no usable CUDA device: " << why;
    const std::string dir = CaseDir(GetParam()) + "/" + GetParam().weights;
    auto cpu = DeepseekModel::Load(dir, {});
    ASSERT_TRUE(cpu.ok()) << cpu.status();
    cpu_ = std::move(*cpu);
    auto backend = CreateBackend("cuda", {});
    ASSERT_TRUE(backend.ok()) << backend.status();
    auto gpu = DeepseekModel::Load(dir, {}, std::move(*backend));
    ASSERT_TRUE(gpu.ok()) << gpu.status();
    gpu_ = std::move(*gpu);
    golden_ = golden::LoadGolden(GetParam());
    vocab_ = cpu_->config().vocab_size;
    // BF16 rows, as the GPU keeps them: an f32 cache alone moves tiny-a's
    // logits by up to 0.03 (2.4 on its FP8 checkpoint's prompt positions).
    cpu_cache_ = std::make_unique<KvCache>(cpu_->config().num_hidden_layers,
                                           cpu_->config().kv_cache_width(), 16, 64, DType::kBF16);
    auto cache = gpu_->NewKvCache(16, 64);
    ASSERT_TRUE(cache.ok()) << cache.status();
    gpu_cache_ = std::move(*cache);
  }

  std::unique_ptr<DeepseekModel> cpu_, gpu_;
  std::unique_ptr<KvCache> cpu_cache_, gpu_cache_;
  golden::Golden golden_;
  int vocab_ = 0;
  ThreadPool pool_{2};
};

TEST_P(CudaBackendTest, PrefillAndDecodeMatchTheCpuEngine) {
  EXPECT_EQ(gpu_->backend().name(), "cuda:0");
  const int64_t prompt = static_cast<int64_t>(golden_.input_ids.size());
  const int64_t steps = static_cast<int64_t>(golden_.fed_tokens.size());
  KvBlocks cpu_blocks(cpu_cache_.get()), gpu_blocks(gpu_cache_.get());
  ASSERT_TRUE(cpu_blocks.Reserve(prompt + steps));
  ASSERT_TRUE(gpu_blocks.Reserve(prompt + steps));
  std::vector<float> cpu, gpu;
  ASSERT_TRUE(
      cpu_->Forward({{golden_.input_ids.data(), prompt, 0, &cpu_blocks.table(), LogitsMode::kAll}},
                    *cpu_cache_, pool_, &cpu)
          .ok());
  absl::Status s =
      gpu_->Forward({{golden_.input_ids.data(), prompt, 0, &gpu_blocks.table(), LogitsMode::kAll}},
                    *gpu_cache_, pool_, &gpu);
  ASSERT_TRUE(s.ok()) << s;
  ASSERT_EQ(gpu.size(), cpu.size());
  EXPECT_LT(MaxAbsDiff(gpu.data(), cpu.data(), cpu.size()), kCpuTolerance) << "prompt positions";
  EXPECT_EQ(Argmax(&gpu[(prompt - 1) * vocab_], vocab_), golden_.greedy_tokens[0]);
  for (int64_t k = 0; k < steps; ++k) {
    ASSERT_TRUE(cpu_->Forward({{&golden_.fed_tokens[k], 1, prompt + k, &cpu_blocks.table(),
                                LogitsMode::kLast}},
                              *cpu_cache_, pool_, &cpu)
                    .ok());
    ASSERT_TRUE(gpu_->Forward({{&golden_.fed_tokens[k], 1, prompt + k, &gpu_blocks.table(),
                                LogitsMode::kLast}},
                              *gpu_cache_, pool_, &gpu)
                    .ok());
    EXPECT_LT(MaxAbsDiff(gpu.data(), cpu.data(), vocab_), kCpuTolerance) << "decode step " << k;
    EXPECT_EQ(Argmax(gpu.data(), vocab_), golden_.greedy_tokens[k + 1]) << "decode step " << k;
  }
}

// Steps under kTensorCoreMinRows (64) tokens, whose products all run on the
// GEMV: the golden prompt's first 48 tokens (all 72 would be a tensor-core
// step, summed in cuBLAS's order).
TEST_P(CudaBackendTest, ChunkedPrefillAndBatchingAgree) {
  const int64_t prompt = std::min<int64_t>(48, golden_.input_ids.size());
  std::vector<float> whole;
  {
    KvBlocks blocks(gpu_cache_.get());
    ASSERT_TRUE(blocks.Reserve(prompt));
    ASSERT_TRUE(
        gpu_->Forward({{golden_.input_ids.data(), prompt, 0, &blocks.table(), LogitsMode::kAll}},
                      *gpu_cache_, pool_, &whole)
            .ok());
  }
  // Two chunks (the second attends over the first's cached rows), batched
  // with a one-token decode of another sequence.
  KvBlocks blocks(gpu_cache_.get()), other(gpu_cache_.get());
  ASSERT_TRUE(blocks.Reserve(prompt));
  ASSERT_TRUE(other.Reserve(2));
  const int64_t first = 17;
  std::vector<float> logits;
  ASSERT_TRUE(
      gpu_->Forward({{golden_.input_ids.data(), first, 0, &blocks.table(), LogitsMode::kAll}},
                    *gpu_cache_, pool_, &logits)
          .ok());
  EXPECT_EQ(MaxAbsDiff(logits.data(), whole.data(), first * vocab_), 0.f);
  ASSERT_TRUE(gpu_->Forward({{golden_.input_ids.data(), 1, 0, &other.table(), LogitsMode::kLast}},
                            *gpu_cache_, pool_, &logits)
                  .ok());
  const int32_t next = 5;
  ASSERT_TRUE(gpu_->Forward({{&golden_.input_ids[first], prompt - first, first, &blocks.table(),
                              LogitsMode::kAll},
                             {&next, 1, 1, &other.table(), LogitsMode::kLast}},
                            *gpu_cache_, pool_, &logits)
                  .ok());
  ASSERT_EQ(static_cast<int64_t>(logits.size()), (prompt - first + 1) * vocab_);
  EXPECT_EQ(MaxAbsDiff(logits.data(), &whole[first * vocab_], (prompt - first) * vocab_), 0.f);
}

// Two prompts long enough for the tensor-core products (steps of
// kTensorCoreMinRows tokens and more, BF16 weights; 400 tokens so that
// routed experts get 64 rows and more too), then decode steps on the GEMV:
// every position's logits within the CPU tolerance, and greedy tokens
// equal wherever the CPU's choice is clear of the tolerance.
TEST_P(CudaBackendTest, LongPromptsMatchTheCpuEngine) {
  std::string why;
  if (!cuda::HasCublas(&why)) GTEST_SKIP() << "no tensor-core products here: " << why;
  constexpr int64_t kPrompt = 200, kSteps = 3;
  const int64_t n = static_cast<int64_t>(golden_.input_ids.size());
  std::vector<int32_t> ids[2];
  for (int r = 0; r < 2; ++r) {
    for (int64_t i = 0; i < kPrompt; ++i) {
      ids[r].push_back(static_cast<int32_t>((golden_.input_ids[i % n] + (7 + r) * i) % vocab_));
    }
  }
  KvBlocks cpu_blocks[2] = {KvBlocks(cpu_cache_.get()), KvBlocks(cpu_cache_.get())};
  KvBlocks gpu_blocks[2] = {KvBlocks(gpu_cache_.get()), KvBlocks(gpu_cache_.get())};
  for (int r = 0; r < 2; ++r) {
    ASSERT_TRUE(cpu_blocks[r].Reserve(kPrompt + kSteps));
    ASSERT_TRUE(gpu_blocks[r].Reserve(kPrompt + kSteps));
  }
  auto batch = [&](KvBlocks* blocks, const int32_t* tokens[2], int64_t count, int64_t position,
                   LogitsMode mode) {
    return std::vector<ForwardChunk>{{tokens[0], count, position, &blocks[0].table(), mode},
                                     {tokens[1], count, position, &blocks[1].table(), mode}};
  };
  const int32_t* prompts[2] = {ids[0].data(), ids[1].data()};
  std::vector<float> cpu, gpu;
  ASSERT_TRUE(cpu_->Forward(batch(cpu_blocks, prompts, kPrompt, 0, LogitsMode::kAll), *cpu_cache_,
                            pool_, &cpu)
                  .ok());
  absl::Status s = gpu_->Forward(batch(gpu_blocks, prompts, kPrompt, 0, LogitsMode::kAll),
                                 *gpu_cache_, pool_, &gpu);
  ASSERT_TRUE(s.ok()) << s;
  ASSERT_EQ(gpu.size(), cpu.size());
  EXPECT_LT(MaxAbsDiff(gpu.data(), cpu.data(), cpu.size()), kCpuTolerance) << "prompt positions";
  int32_t next[2] = {Argmax(&cpu[(kPrompt - 1) * vocab_], vocab_),
                     Argmax(&cpu[(2 * kPrompt - 1) * vocab_], vocab_)};
  for (int64_t k = 0; k < kSteps; ++k) {
    const int32_t* tokens[2] = {&next[0], &next[1]};
    ASSERT_TRUE(cpu_->Forward(batch(cpu_blocks, tokens, 1, kPrompt + k, LogitsMode::kLast),
                              *cpu_cache_, pool_, &cpu)
                    .ok());
    ASSERT_TRUE(gpu_->Forward(batch(gpu_blocks, tokens, 1, kPrompt + k, LogitsMode::kLast),
                              *gpu_cache_, pool_, &gpu)
                    .ok());
    EXPECT_LT(MaxAbsDiff(gpu.data(), cpu.data(), 2 * vocab_), kCpuTolerance) << "decode step " << k;
    for (int r = 0; r < 2; ++r) {
      const float* row = &cpu[r * vocab_];
      const int32_t best = Argmax(row, vocab_);
      std::vector<float> rest(row, row + vocab_);
      rest[best] = -1e30f;
      if (row[best] - rest[Argmax(rest.data(), vocab_)] > 2 * kCpuTolerance) {
        EXPECT_EQ(Argmax(&gpu[r * vocab_], vocab_), best) << "sequence " << r << " step " << k;
      }
      next[r] = best;
    }
  }
}

TEST_P(CudaBackendTest, DeviceKvRowsExportAndImportExactly) {
  const int64_t rows = 37, row_bytes = gpu_cache_->row_bytes();
  KvBlocks a(gpu_cache_.get()), b(gpu_cache_.get());
  ASSERT_TRUE(a.Reserve(rows));
  ASSERT_TRUE(b.Reserve(rows));
  std::vector<uint8_t> in(rows * row_bytes), out(rows * row_bytes);
  for (size_t i = 0; i < in.size(); ++i) in[i] = static_cast<uint8_t>(i * 131 + 7);
  const int layer = gpu_->config().num_hidden_layers - 1;
  ASSERT_TRUE(gpu_cache_->ImportLayer(layer, a.table(), 0, rows, in.data()).ok());
  ASSERT_TRUE(gpu_cache_->ExportLayer(layer, a.table(), 0, rows, out.data()).ok());
  EXPECT_EQ(in, out);
  // Through a second sequence's blocks, as a decode worker imports them.
  ASSERT_TRUE(gpu_cache_->ImportLayer(layer, b.table(), 5, rows, &out[5 * row_bytes]).ok());
  std::vector<uint8_t> again((rows - 5) * row_bytes);
  ASSERT_TRUE(gpu_cache_->ExportLayer(layer, b.table(), 5, rows, again.data()).ok());
  EXPECT_TRUE(std::equal(again.begin(), again.end(), in.begin() + 5 * row_bytes));
}

// The engine (scheduler, paged KV in device memory, sampler) on the GPU:
// two requests batched, chunked under a small step budget, each giving the
// golden greedy tokens, and every block back afterwards.
TEST_P(CudaBackendTest, TheEngineOnTheGpuGeneratesTheGoldenTokens) {
  EngineOptions options;
  options.threads = 2;
  options.step_token_budget = 24;  // The prompts prefill in chunks.
  auto engine = Engine::Create(std::move(gpu_), options);
  ASSERT_TRUE(engine.ok()) << engine.status();
  const int64_t steps = static_cast<int64_t>(golden_.greedy_tokens.size());
  for (int64_t id : {1, 2}) {
    EngineRequest r;
    r.id = id;
    r.prompt = golden_.input_ids;
    r.sampling.max_tokens = steps;
    ASSERT_TRUE((*engine)->Add(r).ok());
  }
  std::map<int64_t, std::vector<int32_t>> tokens;
  for (int guard = 0; (*engine)->HasWork() && guard < 10000; ++guard) {
    for (const TokenEvent& e : (*engine)->Step()) {
      ASSERT_NE(e.finish, FinishReason::kError) << e.error;
      if (e.has_token) tokens[e.request_id].push_back(e.token.id);
    }
  }
  EXPECT_EQ(tokens[1], golden_.greedy_tokens);
  EXPECT_EQ(tokens[2], golden_.greedy_tokens);
  EXPECT_EQ((*engine)->stats().kv_blocks_used, 0);
}

INSTANTIATE_TEST_SUITE_P(Checkpoints, CudaBackendTest,
                         ::testing::Values(GoldenCase{"tiny-a", ""}, GoldenCase{"tiny-a", "fp32"},
                                           GoldenCase{"tiny-a-fp8", ""}),
                         [](const auto& info) {
                           std::string n =
                               info.param.name + (info.param.weights.empty() ? "" : "_fp32");
                           for (char& ch : n) {
                             if (ch == '-') ch = '_';
                           }
                           return n;
                         });

}  // namespace
}  // namespace baton
