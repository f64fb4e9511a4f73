// baton.v1.Inference over an EngineLoop: Generate streams tokens as the
// engine samples them; GetModelInfo and Tokenize answer at once. gRPC
// callbacks never wait for the engine: requests are enqueued, and tokens are
// pushed to the stream from the engine's thread.
//
// Thread-safety: all methods are called by gRPC on its threads; shared state
// is atomic or owned by thread-safe members.
#ifndef BATON_SERVICE_INFERENCE_SERVICE_H_
#define BATON_SERVICE_INFERENCE_SERVICE_H_

#include <atomic>
#include <memory>
#include <random>
#include <string>

#include "absl/status/statusor.h"
#include "baton/v1/inference.grpc.pb.h"
#include "engine/engine_loop.h"
#include "engine/tokenizer.h"
#include "service/channel_pool.h"
#include "service/kv_transport.h"
#include "service/metrics.h"
#include "service/peer_auth.h"

namespace baton {

struct InferenceServiceOptions {
  std::string model_name;
  v1::Role role = v1::ROLE_COLOCATED;
  int64_t max_tokens_limit = 4096;
};

// How a decode worker gets a request's KV in disaggregated serving.
struct PrefillPlan {
  std::string prefill_address;  // Empty: prefill here.
  // Prompts shorter than this are prefilled here when the worker has room.
  int64_t local_threshold = 0;
  // Nonzero: the router has asked `prefill_address` for this transfer
  // already (with the request's seed set); only await it.
  uint64_t transfer_id = 0;
};

// What a decode worker needs to have prompts prefilled elsewhere.
struct DisaggregationContext {
  KvReceiver* receiver = nullptr;
  std::string data_address;  // host:port that prefill workers connect to.
  KvLayout layout;
  const PeerAuth* auth = nullptr;
  ChannelPool* channels = nullptr;
};

// Converts and checks a request; errors are INVALID_ARGUMENT naming the
// field. `tokenizer` may be null (token-id prompts only).
absl::StatusOr<EngineRequest> ToEngineRequest(const v1::GenerateRequest& request,
                                              const Tokenizer* tokenizer, const ModelConfig& config,
                                              int64_t max_tokens_limit);

// A sampled token on the wire: id, logprob and the first `logprobs` top
// alternatives (text is the caller's). FromProto inverts it exactly.
void ToProto(const SampledToken& token, int logprobs, v1::GeneratedToken* out);
SampledToken FromProto(const v1::GeneratedToken& token);

class InferenceService final : public v1::Inference::CallbackService {
 public:
  // `tokenizer` may be null; every pointer must outlive the service.
  InferenceService(EngineLoop* loop, const Tokenizer* tokenizer, ServiceMetrics* metrics,
                   InferenceServiceOptions options);

  grpc::ServerWriteReactor<v1::GenerateResponse>* Generate(
      grpc::CallbackServerContext* context, const v1::GenerateRequest* request) override;
  // Generate with a prefill plan (the decode worker's internal API). `plan`
  // is copied; `request` must live until the call is done.
  grpc::ServerWriteReactor<v1::GenerateResponse>* StartGenerate(
      grpc::CallbackServerContext* context, const v1::GenerateRequest* request,
      const PrefillPlan* plan);
  // Set once, before serving, on decode workers.
  void EnableDisaggregation(const DisaggregationContext* context) { disaggregation_ = context; }
  grpc::ServerUnaryReactor* GetModelInfo(grpc::CallbackServerContext* context,
                                         const v1::GetModelInfoRequest* request,
                                         v1::ModelInfo* response) override;
  grpc::ServerUnaryReactor* Tokenize(grpc::CallbackServerContext* context,
                                     const v1::TokenizeRequest* request,
                                     v1::TokenizeResponse* response) override;

  // New Generate calls get UNAVAILABLE from now on; running ones go on.
  void StartDraining() { draining_.store(true); }
  int active_streams() const { return active_streams_.load(); }

 private:
  class GenerateStream;

  EngineLoop* loop_;
  const Tokenizer* tokenizer_;
  ServiceMetrics* metrics_;
  InferenceServiceOptions options_;
  const DisaggregationContext* disaggregation_ = nullptr;
  std::atomic<bool> draining_{false};
  std::atomic<int> active_streams_{0};
  std::atomic<uint64_t> next_request_number_{1};
  // Seeds and transfer ids: drawn from the OS once, not per request (a
  // std::random_device read costs ~27 us on a VM, on the first token's path).
  absl::Mutex random_mu_;
  std::mt19937_64 random_ ABSL_GUARDED_BY(random_mu_){std::random_device{}()};
  uint64_t RandomBits() {
    absl::MutexLock lock(&random_mu_);
    return random_();
  }
};

}  // namespace baton

#endif  // BATON_SERVICE_INFERENCE_SERVICE_H_
