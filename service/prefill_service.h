// baton.internal.v1.PrefillWorker on `baton prefill`: computes prompts in
// token-budgeted batches and pushes each layer's KV to the decode worker
// that asked, while the next layers compute.
//
// Thread-safety: called by gRPC on its threads; all state is thread-safe.
#ifndef BATON_SERVICE_PREFILL_SERVICE_H_
#define BATON_SERVICE_PREFILL_SERVICE_H_

#include <atomic>

#include "baton/internal/v1/worker.grpc.pb.h"
#include "engine/engine_loop.h"
#include "engine/tokenizer.h"
#include "service/kv_transport.h"
#include "service/metrics.h"
#include "service/peer_auth.h"

namespace baton {

class PrefillService final : public internal::v1::PrefillWorker::CallbackService {
 public:
  // `tokenizer` (may be null) encodes text prompts sent by the router;
  // `layer_delay_ms` > 0 slows every layer down (fault-injection tests only).
  PrefillService(EngineLoop* loop, const Tokenizer* tokenizer, KvLayout layout,
                 const PeerAuth* auth, ServiceMetrics* metrics, int layer_delay_ms = 0);

  grpc::ServerUnaryReactor* Prefill(grpc::CallbackServerContext* context,
                                    const internal::v1::PrefillRequest* request,
                                    internal::v1::PrefillResponse* response) override;
  grpc::ServerUnaryReactor* GetLoad(grpc::CallbackServerContext* context,
                                    const internal::v1::LoadRequest* request,
                                    internal::v1::LoadReport* response) override;

  void StartDraining() { draining_.store(true); }
  int active() const { return active_.load(); }

 private:
  class PrefillCall;

  EngineLoop* loop_;
  const Tokenizer* tokenizer_;
  KvLayout layout_;
  const PeerAuth* auth_;
  ServiceMetrics* metrics_;
  int layer_delay_ms_;
  // Data-channel connections kept open between transfers (shared with the
  // senders, which may outlive a call).
  std::shared_ptr<KvConnectionPool> connections_ = std::make_shared<KvConnectionPool>();
  std::atomic<bool> draining_{false};
  std::atomic<int> active_{0};
};

// The secret a server call presented in its metadata.
std::string PresentedSecret(const grpc::CallbackServerContext& context);

// Answers GetLoad for a worker (prefill or decode) after checking the secret;
// a decode worker also names its data channel (`data_address`, else empty)
// and its KV block size.
grpc::ServerUnaryReactor* AnswerGetLoad(grpc::CallbackServerContext* context, const PeerAuth& auth,
                                        const char* method, const EngineStats& stats,
                                        const KvLayout& layout, const std::string& data_address,
                                        internal::v1::LoadReport* report);

}  // namespace baton

#endif  // BATON_SERVICE_PREFILL_SERVICE_H_
