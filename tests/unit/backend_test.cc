// The seam between the model and a device (engine/backend.h): the model
// drives every backend through the same blocks in the architecture's order
// (what a GPU backend relies on), and a backend that only delegates gives
// the CPU engine's logits bit for bit.
#include "engine/backend.h"

#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/cpu_backend.h"
#include "engine/deepseek_model.h"
#include "gtest/gtest.h"
#include "tests/support/golden.h"

namespace baton {
namespace {

// The CPU backend, with every block it is asked for written down.
class TracingBackend : public Backend {
 public:
  explicit TracingBackend(std::vector<std::string>* trace)
      : cpu_(CpuBackendOptions{}), trace_(trace) {}
  std::string name() const override { return "tracing"; }
  absl::Status Prepare(const ModelConfig& config, ModelWeights& weights) override {
    trace_->push_back("prepare");
    return cpu_.Prepare(config, weights);
  }
  kernels::Precision precision() const override { return cpu_.precision(); }
  DType kv_dtype() const override { return cpu_.kv_dtype(); }
  absl::StatusOr<std::unique_ptr<KvMemory>> AllocateKv(size_t bytes) override {
    trace_->push_back("allocate_kv");
    return cpu_.AllocateKv(bytes);
  }
  absl::Status Begin(const ForwardTokens& tokens, ThreadPool& pool) override {
    trace_->push_back(absl::StrCat("begin ", tokens.count()));
    return cpu_.Begin(tokens, pool);
  }
  absl::Status Norm(const Vector& weight) override {
    trace_->push_back("norm");
    return cpu_.Norm(weight);
  }
  absl::Status Attention(int layer, const AttentionWeights& weights, KvCache& cache,
                         const LayerKvHook* on_layer_kv) override {
    trace_->push_back(absl::StrCat("attention ", layer));
    return cpu_.Attention(layer, weights, cache, on_layer_kv);
  }
  absl::Status Mlp(const MlpWeights& mlp) override {
    trace_->push_back("mlp");
    return cpu_.Mlp(mlp);
  }
  absl::Status RouterLogits(const Matrix& router, std::vector<float>* logits) override {
    trace_->push_back("router");
    return cpu_.RouterLogits(router, logits);
  }
  absl::Status Experts(const MoeWeights& moe, const ExpertRouting& routing) override {
    trace_->push_back(absl::StrCat("experts ", routing.token.size()));
    return cpu_.Experts(moe, routing);
  }
  absl::Status AddOut() override {
    trace_->push_back("add");
    return cpu_.AddOut();
  }
  absl::Status Logits(const std::vector<int64_t>& rows, const Vector& final_norm,
                      const Matrix& head, std::vector<float>* logits) override {
    trace_->push_back(absl::StrCat("logits ", rows.size()));
    return cpu_.Logits(rows, final_norm, head, logits);
  }

 private:
  CpuBackend cpu_;
  std::vector<std::string>* trace_;
};

TEST(BackendTest, TheModelDrivesABackendThroughTheArchitecturesBlocks) {
  const golden::GoldenCase tiny{"tiny-a", ""};
  const std::string dir = golden::CaseDir(tiny);
  const golden::Golden g = golden::LoadGolden(tiny);
  auto plain = DeepseekModel::Load(dir, {});
  ASSERT_TRUE(plain.ok()) << plain.status();
  std::vector<std::string> trace;
  auto traced = DeepseekModel::Load(dir, {}, std::make_unique<TracingBackend>(&trace));
  ASSERT_TRUE(traced.ok()) << traced.status();
  EXPECT_EQ((*traced)->backend().name(), "tracing");
  const ModelConfig& c = (*plain)->config();

  auto plain_cache = (*plain)->NewKvCache(16, 16);
  auto traced_cache = (*traced)->NewKvCache(16, 16);
  ASSERT_TRUE(plain_cache.ok() && traced_cache.ok());
  KvBlocks a(plain_cache->get()), b(traced_cache->get());
  const int64_t n = static_cast<int64_t>(g.input_ids.size());
  ASSERT_TRUE(a.Reserve(n) && b.Reserve(n));
  ThreadPool pool(2);
  std::vector<float> expected, got;
  std::vector<int> shipped;
  const LayerKvHook hook = [&](int layer) {
    shipped.push_back(layer);
    trace.push_back(absl::StrCat("kv ", layer));
    return absl::OkStatus();
  };
  ASSERT_TRUE((*plain)
                  ->Forward({{g.input_ids.data(), n, 0, &a.table(), LogitsMode::kLast}},
                            **plain_cache, pool, &expected)
                  .ok());
  trace.clear();
  ASSERT_TRUE((*traced)
                  ->Forward({{g.input_ids.data(), n, 0, &b.table(), LogitsMode::kLast}},
                            **traced_cache, pool, &got, &hook)
                  .ok());
  EXPECT_EQ(got, expected) << "a delegating backend changed the logits";
  EXPECT_EQ((*traced)->last_forward_stats().weight_bytes,
            (*plain)->last_forward_stats().weight_bytes);

  std::vector<std::string> want = {absl::StrCat("begin ", n)};
  for (int layer = 0; layer < c.num_hidden_layers; ++layer) {
    for (const std::string& op :
         {std::string("norm"), absl::StrCat("attention ", layer), absl::StrCat("kv ", layer),
          std::string("add"), std::string("norm")}) {
      want.push_back(op);
    }
    if (c.is_moe_layer(layer)) {
      want.push_back("router");
      want.push_back(absl::StrCat("experts ", n * c.num_experts_per_tok));
    } else {
      want.push_back("mlp");
    }
    want.push_back("add");
  }
  want.push_back("logits 1");
  EXPECT_EQ(trace, want);
  ASSERT_EQ(static_cast<int>(shipped.size()), c.num_hidden_layers);
}

TEST(BackendTest, TheCacheLivesWhereTheBackendPutsIt) {
  std::vector<std::string> trace;
  auto model = DeepseekModel::Load(golden::CaseDir({"tiny-a", ""}), {},
                                   std::make_unique<TracingBackend>(&trace));
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ(trace, std::vector<std::string>{"prepare"});
  auto cache = (*model)->NewKvCache(16, 3);
  ASSERT_TRUE(cache.ok()) << cache.status();
  EXPECT_EQ(trace.back(), "allocate_kv");
  EXPECT_EQ((*cache)->dtype(), (*model)->kv_dtype());
  EXPECT_NE((*cache)->memory().host_data(), nullptr);
  EXPECT_EQ((*cache)->bytes(),
            KvCache::Bytes((*model)->config().num_hidden_layers,
                           (*model)->config().kv_cache_width(), 16, 3, (*model)->kv_dtype()));
}

}  // namespace
}  // namespace baton
