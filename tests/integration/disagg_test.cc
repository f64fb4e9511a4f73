// Disaggregated serving as deployed: real `baton router`, `baton prefill`
// and `baton decode` processes on 127.0.0.1, and the failures that the
// systems we compete with handle badly.
#include <signal.h>

#include <cmath>
#include <cstring>
#include <optional>
#include <thread>

#include "baton/internal/v1/worker.grpc.pb.h"
#include "baton/v1/inference.grpc.pb.h"
#include "engine/kernels.h"
#include "engine/safetensors.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "tests/integration/process.h"

namespace baton {
namespace {

using ::baton::testing::BatonProcess;
using ::baton::testing::BatonServer;
using ::baton::testing::WaitUntilNotServing;
using ::testing::HasSubstr;

const std::string kTinyA = std::string(BATON_TEST_DATA) + "/golden/tiny-a";
const std::string kTinyFp8 = std::string(BATON_TEST_DATA) + "/golden/tiny-a-fp8";
const std::string kSecret = "test-secret";

std::vector<uint32_t> GoldenIds(const std::string& name) {
  auto file = SafetensorsFile::Open(kTinyA + "/golden.safetensors");
  std::vector<uint32_t> out;
  if (!file.ok()) return out;
  const TensorView& v = (*file)->tensors().at(name);
  for (int64_t i = 0; i < v.num_elements(); ++i) {
    int64_t x;
    std::memcpy(&x, v.data + 8 * i, 8);
    out.push_back(static_cast<uint32_t>(x));
  }
  return out;
}

struct StreamResult {
  grpc::Status status;
  std::vector<uint32_t> ids;
  std::vector<float> logprobs;
  v1::FinishReason finish = v1::FINISH_REASON_UNSPECIFIED;
  uint32_t completion_tokens = 0;
  double seconds_after_signal = -1;
};

StreamResult Generate(const std::string& address, const v1::GenerateRequest& request,
                      int cancel_after_ms = -1, int cancel_after_chunks = -1) {
  auto stub =
      v1::Inference::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  StreamResult r;
  std::thread canceller;
  if (cancel_after_ms >= 0) {
    canceller = std::thread([&] {
      std::this_thread::sleep_for(std::chrono::milliseconds(cancel_after_ms));
      context.TryCancel();
    });
  }
  auto reader = stub->Generate(&context, request);
  v1::GenerateResponse chunk;
  int chunks = 0;
  while (reader->Read(&chunk)) {
    for (const auto& t : chunk.tokens()) {
      r.ids.push_back(t.id());
      r.logprobs.push_back(t.logprob());
    }
    if (chunk.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) {
      r.finish = chunk.finish_reason();
      r.completion_tokens = chunk.usage().completion_tokens();
    }
    if (++chunks == cancel_after_chunks) context.TryCancel();
  }
  r.status = reader->Finish();
  if (canceller.joinable()) canceller.join();
  return r;
}

v1::GenerateRequest Request(const std::vector<uint32_t>& ids, uint32_t max_tokens,
                            uint32_t logprobs = 0) {
  v1::GenerateRequest r;
  for (uint32_t id : ids) r.mutable_token_ids()->add_ids(id);
  r.mutable_sampling()->set_max_tokens(max_tokens);
  r.mutable_sampling()->set_logprobs(logprobs);
  r.mutable_sampling()->set_ignore_eos(true);
  return r;
}

double Metric(int port, const std::string& name) {
  const std::string text = baton::testing::HttpGet(port, "/metrics");
  size_t at = text.find("\n" + name + " ");
  if (at == std::string::npos) return -1;
  return std::stod(text.substr(at + name.size() + 2));
}

double SettledMetric(int port, const std::string& name, double want) {
  double v = -1;
  for (int i = 0; i < 150; ++i) {
    v = Metric(port, name);
    if (v == want) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return v;
}

// A deployment: decode and prefill workers and a router in front.
class Deployment {
 public:
  Deployment(int prefills, int decodes, std::vector<std::string> router_extra = {},
             std::vector<std::string> prefill_extra = {}, const std::string& decode_model = kTinyA,
             std::vector<std::string> decode_extra = {},
             const std::string& prefill_model = kTinyA) {
    for (int i = 0; i < decodes; ++i) {
      std::vector<std::string> args = {"--model", decode_model, "--secret", kSecret};
      args.insert(args.end(), decode_extra.begin(), decode_extra.end());
      decode.push_back(std::make_unique<BatonProcess>("decode", args));
    }
    for (int i = 0; i < prefills; ++i) {
      std::vector<std::string> args = {"--model", prefill_model, "--secret", kSecret};
      args.insert(args.end(), prefill_extra.begin(), prefill_extra.end());
      prefill.push_back(std::make_unique<BatonProcess>("prefill", args));
    }
    std::string p, d;
    for (auto& w : prefill) p += (p.empty() ? "" : ",") + w->address();
    for (auto& w : decode) d += (d.empty() ? "" : ",") + w->address();
    std::vector<std::string> args = {"--prefill", p,       "--decode",         d,
                                     "--secret",  kSecret, "--probe-interval", "0.1"};
    args.insert(args.end(), router_extra.begin(), router_extra.end());
    router = std::make_unique<BatonProcess>("router", args);
  }
  bool ok() const {
    bool all = router->ok();
    for (auto& w : prefill) all = all && w->ok();
    for (auto& w : decode) all = all && w->ok();
    return all;
  }
  std::vector<std::unique_ptr<BatonProcess>> prefill, decode;
  std::unique_ptr<BatonProcess> router;
};

TEST(DisaggTest, GoldenPromptIsBitIdenticalToColocatedServing) {
  const std::vector<uint32_t> prompt = GoldenIds("input_ids");
  const std::vector<uint32_t> golden = GoldenIds("greedy_tokens");
  BatonServer serve(kTinyA);
  ASSERT_TRUE(serve.ok());
  const StreamResult colocated = Generate(serve.address(), Request(prompt, 30, 5));
  ASSERT_TRUE(colocated.status.ok()) << colocated.status.error_message();
  EXPECT_EQ(std::vector<uint32_t>(colocated.ids.begin(), colocated.ids.begin() + golden.size()),
            golden);
  // The router calls the prefill worker itself ("parallel"), or leaves the
  // call to the decode worker ("decode"): the same tokens either way.
  for (const std::string dispatch : {"parallel", "decode"}) {
    for (auto [prefills, decodes] : std::vector<std::pair<int, int>>{{1, 1}, {2, 2}}) {
      Deployment d(prefills, decodes, {"--prefill-dispatch", dispatch});
      ASSERT_TRUE(d.ok());
      for (int round = 0; round < 2 * prefills; ++round) {  // Visits every worker.
        const StreamResult r = Generate(d.router->address(), Request(prompt, 30, 5));
        ASSERT_TRUE(r.status.ok()) << r.status.error_message();
        EXPECT_EQ(r.ids, colocated.ids) << dispatch << " " << prefills << "P" << decodes << "D";
        ASSERT_EQ(r.logprobs.size(), colocated.logprobs.size());
        for (size_t i = 0; i < r.logprobs.size(); ++i) {
          EXPECT_EQ(r.logprobs[i], colocated.logprobs[i]) << "bit-identical logprob " << i;
        }
      }
      double remote = 0;
      for (auto& w : d.decode) {
        const std::string text = baton::testing::HttpGet(w->metrics_port(), "/metrics");
        const size_t at = text.find("baton_decode_prefill_total{path=\"remote\"} ");
        if (at != std::string::npos) remote += std::stod(text.substr(at + 42));
      }
      EXPECT_EQ(remote, 2 * prefills) << "every request went through a prefill worker";
      const std::string mode = dispatch == "parallel" ? "parallel" : "via_decode";
      EXPECT_EQ(Metric(d.router->metrics_port(),
                       "baton_router_prefill_dispatch_total{mode=\"" + mode + "\"}"),
                2 * prefills);
    }
  }
}

// The first token comes from the prefill worker: when it ends the request
// (max_tokens 1, a stop token id), the stream ends as colocated serving ends
// it, and the decode worker's blocks are freed.
TEST(DisaggTest, AFirstTokenThatEndsTheRequestEndsItAsColocatedServingDoes) {
  const std::vector<uint32_t> prompt = GoldenIds("input_ids");
  const uint32_t first = GoldenIds("greedy_tokens")[0];
  std::vector<v1::GenerateRequest> requests = {Request(prompt, 1), Request(prompt, 2),
                                               Request(prompt, 10)};
  requests[2].mutable_sampling()->add_stop_token_ids(first);
  BatonServer serve(kTinyA);
  ASSERT_TRUE(serve.ok());
  Deployment d(1, 1);
  ASSERT_TRUE(d.ok());
  for (size_t i = 0; i < requests.size(); ++i) {
    const StreamResult want = Generate(serve.address(), requests[i]);
    const StreamResult got = Generate(d.router->address(), requests[i]);
    ASSERT_TRUE(got.status.ok()) << got.status.error_message();
    EXPECT_EQ(got.ids, want.ids) << i;
    EXPECT_EQ(got.finish, want.finish) << i;
    EXPECT_EQ(got.completion_tokens, want.completion_tokens) << i;
    EXPECT_EQ(got.ids.front(), first);
  }
  EXPECT_EQ(SettledMetric(d.decode[0]->metrics_port(), "baton_kv_blocks_used", 0), 0);
  EXPECT_EQ(Metric(d.decode[0]->metrics_port(), "baton_decode_prefill_total{path=\"remote\"}"), 3);
}

// Text prompts (the router has no tokenizer: the prefill worker encodes
// them as the decode worker does), sampled with a seed and without one (the
// router then draws the seed both workers sample with: a decode call with a
// transfer id and no seed is refused).
TEST(DisaggTest, TextPromptsDispatchedInParallelMatchColocatedServing) {
  const std::string model = BATON_DEFAULT_MODEL_DIR;
  BatonServer serve(model);
  ASSERT_TRUE(serve.ok());
  Deployment d(1, 1, {}, {}, model, {}, model);
  ASSERT_TRUE(d.ok());
  auto text_request = [](std::optional<uint64_t> seed) {
    v1::GenerateRequest r;
    r.set_text("ROMEO:\nBut soft, what light through yonder window breaks?");
    r.mutable_sampling()->set_max_tokens(24);
    r.mutable_sampling()->set_temperature(0.8f);
    r.mutable_sampling()->set_ignore_eos(true);
    if (seed) r.mutable_sampling()->set_seed(*seed);
    return r;
  };
  const StreamResult colocated = Generate(serve.address(), text_request(7));
  ASSERT_TRUE(colocated.status.ok()) << colocated.status.error_message();
  const StreamResult seeded = Generate(d.router->address(), text_request(7));
  ASSERT_TRUE(seeded.status.ok()) << seeded.status.error_message();
  EXPECT_EQ(seeded.ids, colocated.ids);
  EXPECT_EQ(seeded.logprobs, colocated.logprobs);
  const StreamResult unseeded = Generate(d.router->address(), text_request(std::nullopt));
  ASSERT_TRUE(unseeded.status.ok()) << unseeded.status.error_message();
  EXPECT_EQ(unseeded.ids.size(), 24u);
  EXPECT_EQ(
      Metric(d.router->metrics_port(), "baton_router_prefill_dispatch_total{mode=\"parallel\"}"),
      2);
  EXPECT_GT(Metric(d.prefill[0]->metrics_port(), "baton_kv_transfer_bytes_total"), 0);
}

// BF16 activations are a different computation: still bit-identical between
// colocated and disaggregated serving when both sides use them, and refused
// at the handshake when only one side does.
TEST(DisaggTest, Bf16ActivationsAreBitIdenticalAndMustMatch) {
  const std::vector<uint32_t> prompt = GoldenIds("input_ids");
  const std::vector<std::string> bf16 = {"--activations", "bf16"};
  BatonServer serve(kTinyA, bf16);
  ASSERT_TRUE(serve.ok());
  const StreamResult colocated = Generate(serve.address(), Request(prompt, 20, 3));
  ASSERT_TRUE(colocated.status.ok()) << colocated.status.error_message();
  {
    Deployment d(1, 1, {}, bf16, kTinyA, bf16);
    ASSERT_TRUE(d.ok());
    const StreamResult r = Generate(d.router->address(), Request(prompt, 20, 3));
    ASSERT_TRUE(r.status.ok()) << r.status.error_message();
    EXPECT_EQ(r.ids, colocated.ids);
    EXPECT_EQ(r.logprobs, colocated.logprobs);
  }
  if (!kernels::HasBf16DotProducts()) GTEST_SKIP() << "no AVX512_BF16: both sides ran fp32";
  Deployment mixed(1, 1, {}, bf16);  // The decode worker computes in fp32.
  ASSERT_TRUE(mixed.ok());
  const StreamResult r = Generate(mixed.router->address(), Request(prompt, 4));
  EXPECT_EQ(r.status.error_code(), grpc::FAILED_PRECONDITION) << r.status.error_message();
  EXPECT_THAT(r.status.error_message(), HasSubstr("mismatch"));
}

TEST(DisaggTest, ShortPromptsArePrefilledByTheDecodeWorker) {
  Deployment d(1, 1, {"--local-prefill-threshold", "100"});
  ASSERT_TRUE(d.ok());
  const std::vector<uint32_t> prompt = GoldenIds("input_ids");  // 72 < 100 tokens.
  const StreamResult r = Generate(d.router->address(), Request(prompt, 9));
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(r.ids, GoldenIds("greedy_tokens"));
  const std::string text = baton::testing::HttpGet(d.decode[0]->metrics_port(), "/metrics");
  EXPECT_THAT(text, HasSubstr("baton_decode_prefill_total{path=\"local\"} 1"));
  EXPECT_EQ(Metric(d.prefill[0]->metrics_port(), "baton_kv_transfer_bytes_total"), 0);
}

TEST(DisaggTest, SixtyFourConcurrentStreamsLeaveNoBlocks) {
  Deployment d(2, 2);
  ASSERT_TRUE(d.ok());
  const std::vector<uint32_t> golden = GoldenIds("input_ids");
  std::vector<StreamResult> results(64);
  std::vector<std::thread> threads;
  for (int i = 0; i < 64; ++i) {
    threads.emplace_back([&, i] {
      std::vector<uint32_t> prompt(golden.begin() + i % 5, golden.begin() + 10 + (i * 13) % 60);
      results[i] = Generate(d.router->address(), Request(prompt, 4 + (i * 7) % 40));
    });
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < 64; ++i) {
    EXPECT_TRUE(results[i].status.ok()) << i << ": " << results[i].status.error_message();
    EXPECT_EQ(results[i].ids.size(), 4u + (i * 7) % 40);
  }
  for (auto& w : d.decode)
    EXPECT_EQ(SettledMetric(w->metrics_port(), "baton_kv_blocks_used", 0), 0);
  for (auto& w : d.prefill)
    EXPECT_EQ(SettledMetric(w->metrics_port(), "baton_kv_blocks_used", 0), 0);
}

TEST(DisaggTest, KilledDecodeWorkerEndsEveryStreamWithUnavailableFast) {
  Deployment d(1, 1);
  ASSERT_TRUE(d.ok());
  std::vector<StreamResult> results(6);
  std::atomic<int> streaming{0};
  std::chrono::steady_clock::time_point killed;
  std::vector<std::thread> threads;
  for (int i = 0; i < 6; ++i) {
    threads.emplace_back([&, i] {
      auto stub = v1::Inference::NewStub(
          grpc::CreateChannel(d.router->address(), grpc::InsecureChannelCredentials()));
      grpc::ClientContext context;
      auto reader = stub->Generate(&context, Request({0, 5, 6, 7, 8}, 240));
      v1::GenerateResponse chunk;
      bool first = true;
      while (reader->Read(&chunk)) {
        if (first) streaming.fetch_add(1);
        first = false;
        std::this_thread::sleep_for(std::chrono::milliseconds(5));  // A slow reader.
      }
      results[i].status = reader->Finish();
      results[i].seconds_after_signal =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - killed).count();
    });
  }
  while (streaming.load() < 6) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  killed = std::chrono::steady_clock::now();
  d.decode[0]->process().Signal(SIGKILL);
  for (auto& t : threads) t.join();
  for (const StreamResult& r : results) {
    EXPECT_EQ(r.status.error_code(), grpc::UNAVAILABLE) << r.status.error_message();
    EXPECT_LT(r.seconds_after_signal, 2.0);
  }
}

TEST(DisaggTest, KilledPrefillWorkerDuringTransferIsRetriedElsewhere) {
  // Worker 0 is slow (its transfer is in flight when it dies); worker 1 is
  // normal. The router tries the least-loaded first: both are idle, so the
  // test keeps sending until one request lands on worker 0.
  Deployment d(1, 1, {}, {"--testing-layer-delay-ms", "300"});
  ASSERT_TRUE(d.ok());
  BatonProcess healthy("prefill", {"--model", kTinyA, "--secret", kSecret});
  ASSERT_TRUE(healthy.ok());
  // A second router that knows both prefill workers; the slow one first.
  BatonProcess router("router",
                      {"--prefill", d.prefill[0]->address() + "," + healthy.address(), "--decode",
                       d.decode[0]->address(), "--secret", kSecret, "--probe-interval", "0.1"});
  ASSERT_TRUE(router.ok());
  const std::vector<uint32_t> prompt = GoldenIds("input_ids");
  BatonServer serve(kTinyA);
  const StreamResult want = Generate(serve.address(), Request(prompt, 12));
  std::vector<StreamResult> results(4);
  std::vector<std::thread> threads;
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&, i] { results[i] = Generate(router.address(), Request(prompt, 12)); });
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(400));  // Mid-transfer on worker 0.
  d.prefill[0]->process().Signal(SIGKILL);
  for (auto& t : threads) t.join();
  for (const StreamResult& r : results) {
    ASSERT_TRUE(r.status.ok()) << r.status.error_message();
    EXPECT_EQ(r.ids, want.ids);
  }
  EXPECT_EQ(SettledMetric(d.decode[0]->metrics_port(), "baton_kv_blocks_used", 0), 0);
  EXPECT_GE(Metric(router.metrics_port(), "baton_router_retries_total"), 1);
  // The router called the prefill workers itself: its own call saw the failure.
  EXPECT_GE(Metric(router.metrics_port(), "baton_router_prefill_dispatch_total{mode=\"parallel\"}"),
            4);
}

TEST(DisaggTest, StoppedPrefillWorkerIsDetectedAndAvoided) {
  Deployment d(2, 1, {}, {"--testing-layer-delay-ms", "50"});
  ASSERT_TRUE(d.ok());
  const std::vector<uint32_t> prompt = GoldenIds("input_ids");
  std::vector<StreamResult> results(4);
  std::vector<std::thread> threads;
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back(
        [&, i] { results[i] = Generate(d.router->address(), Request(prompt, 8)); });
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(60));
  d.prefill[0]->process().Signal(SIGSTOP);  // Alive but silent.
  const auto start = std::chrono::steady_clock::now();
  for (auto& t : threads) t.join();
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  for (const StreamResult& r : results) {
    EXPECT_TRUE(r.status.ok()) << r.status.error_message();
    EXPECT_EQ(r.ids.size(), 8u);
  }
  EXPECT_LT(seconds, 10.0) << "a hung worker must be detected by keepalives within seconds";
  // New requests avoid it.
  EXPECT_TRUE(Generate(d.router->address(), Request(prompt, 4)).status.ok());
  d.prefill[0]->process().Signal(SIGCONT);
  EXPECT_EQ(SettledMetric(d.decode[0]->metrics_port(), "baton_kv_blocks_used", 0), 0);
}

TEST(DisaggTest, ModelMismatchIsRefusedAtHandshake) {
  Deployment d(1, 1, {}, {}, kTinyFp8);  // Prefill serves tiny-a, decode tiny-a-fp8.
  ASSERT_TRUE(d.ok());
  const StreamResult r = Generate(d.router->address(), Request({0, 5, 6, 7, 8, 9}, 4));
  EXPECT_FALSE(r.status.ok());
  EXPECT_THAT(r.status.error_message(), HasSubstr("mismatch"));
  EXPECT_TRUE(r.ids.empty());
  EXPECT_EQ(SettledMetric(d.decode[0]->metrics_port(), "baton_kv_blocks_used", 0), 0);
}

TEST(DisaggTest, KvLayoutMismatchIsRefusedOnTheDataChannel) {
  Deployment d(1, 1, {}, {"--kv-block-size", "32"});  // Decode uses 16.
  ASSERT_TRUE(d.ok());
  const StreamResult r = Generate(d.router->address(), Request({0, 5, 6, 7, 8, 9}, 4));
  EXPECT_EQ(r.status.error_code(), grpc::FAILED_PRECONDITION) << r.status.error_message();
  EXPECT_THAT(r.status.error_message(), HasSubstr("KV layout mismatch"));
  EXPECT_EQ(SettledMetric(d.decode[0]->metrics_port(), "baton_kv_blocks_used", 0), 0);
  EXPECT_EQ(SettledMetric(d.prefill[0]->metrics_port(), "baton_kv_blocks_used", 0), 0);
}

TEST(DisaggTest, CancellationsLeakNoBlocksOnEitherSide) {
  Deployment d(1, 1, {}, {"--testing-layer-delay-ms", "40"});
  ASSERT_TRUE(d.ok());
  const std::vector<uint32_t> prompt = GoldenIds("input_ids");
  // During prefill/transfer (3 layers x 40 ms), and during decode.
  for (int cancel_ms : {10, 60, 100}) {
    const StreamResult r = Generate(d.router->address(), Request(prompt, 100), cancel_ms);
    EXPECT_EQ(r.status.error_code(), grpc::CANCELLED) << cancel_ms;
  }
  const StreamResult during_decode =
      Generate(d.router->address(), Request(prompt, 150), -1, /*cancel_after_chunks=*/2);
  EXPECT_EQ(during_decode.status.error_code(), grpc::CANCELLED);
  EXPECT_EQ(SettledMetric(d.decode[0]->metrics_port(), "baton_kv_blocks_used", 0), 0);
  EXPECT_EQ(SettledMetric(d.prefill[0]->metrics_port(), "baton_kv_blocks_used", 0), 0);
  // And the deployment still serves.
  EXPECT_TRUE(Generate(d.router->address(), Request(prompt, 4)).status.ok());
  EXPECT_EQ(
      Metric(d.router->metrics_port(), "baton_router_prefill_dispatch_total{mode=\"parallel\"}"),
      5);
}

// SIGTERM on the decode worker and on the router: running streams finish,
// new ones are refused, the processes exit 0.
class SigtermTest : public ::testing::TestWithParam<std::string> {};

TEST_P(SigtermTest, DrainsRunningStreamsAndRefusesNewOnes) {
  // As long as tiny-a's 256 positions allow: the streams must outlast the
  // moment the drain starts, or the process is already shutting down (and
  // cancels, rather than refuses, the new call).
  constexpr uint32_t kStreamTokens = 250;
  Deployment d(1, 1);
  ASSERT_TRUE(d.ok());
  BatonProcess* target = GetParam() == "router" ? d.router.get() : d.decode[0].get();
  {
    std::vector<StreamResult> results(4);
    std::atomic<int> started{0};
    std::vector<std::thread> threads;
    for (int i = 0; i < 4; ++i) {
      threads.emplace_back([&, i] {
        auto stub = v1::Inference::NewStub(
            grpc::CreateChannel(d.router->address(), grpc::InsecureChannelCredentials()));
        grpc::ClientContext context;
        auto reader = stub->Generate(&context, Request({0, 5, 6, 7}, kStreamTokens));
        v1::GenerateResponse chunk;
        bool first = true;
        while (reader->Read(&chunk)) {
          if (first) started.fetch_add(1);
          first = false;
          for (const auto& t : chunk.tokens()) results[i].ids.push_back(t.id());
          std::this_thread::sleep_for(std::chrono::milliseconds(2));
        }
        results[i].status = reader->Finish();
      });
    }
    while (started.load() < 4) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    target->process().Signal(SIGTERM);
    ASSERT_TRUE(WaitUntilNotServing(target->address()));
    const StreamResult refused = Generate(d.router->address(), Request({0, 1, 2}, 4));
    EXPECT_FALSE(refused.status.ok());
    EXPECT_EQ(refused.status.error_code(), grpc::UNAVAILABLE) << refused.status.error_message();
    for (auto& t : threads) t.join();
    for (const StreamResult& r : results) {
      EXPECT_TRUE(r.status.ok()) << r.status.error_message();
      EXPECT_EQ(r.ids.size(), kStreamTokens);
    }
    EXPECT_EQ(target->process().Wait(std::chrono::seconds(10)), 0);
  }
}

INSTANTIATE_TEST_SUITE_P(Roles, SigtermTest, ::testing::Values("decode", "router"));

TEST(DisaggTest, InternalApiRefusesPeersWithoutTheSecret) {
  Deployment d(1, 1);
  ASSERT_TRUE(d.ok());
  auto stub = internal::v1::DecodeWorker::NewStub(
      grpc::CreateChannel(d.decode[0]->address(), grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  internal::v1::LoadReport report;
  EXPECT_EQ(stub->GetLoad(&context, internal::v1::LoadRequest(), &report).error_code(),
            grpc::UNAUTHENTICATED);
  auto prefill = internal::v1::PrefillWorker::NewStub(
      grpc::CreateChannel(d.prefill[0]->address(), grpc::InsecureChannelCredentials()));
  grpc::ClientContext pc;
  pc.AddMetadata("x-baton-secret", "wrong");
  internal::v1::PrefillRequest request;
  request.add_token_ids(1);
  internal::v1::PrefillResponse response;
  EXPECT_EQ(prefill->Prefill(&pc, request, &response).error_code(), grpc::UNAUTHENTICATED);
}

}  // namespace
}  // namespace baton
