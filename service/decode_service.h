// baton.internal.v1.DecodeWorker on `baton decode`: the router's entry to a
// decode worker. Generate is the public Generate plus a prefill plan; the
// streaming, admission and KV import live in InferenceService.
//
// Thread-safety: called by gRPC on its threads; holds no mutable state.
#ifndef BATON_SERVICE_DECODE_SERVICE_H_
#define BATON_SERVICE_DECODE_SERVICE_H_

#include "baton/internal/v1/worker.grpc.pb.h"
#include "engine/engine_loop.h"
#include "service/inference_service.h"
#include "service/peer_auth.h"

namespace baton {

class DecodeService final : public internal::v1::DecodeWorker::CallbackService {
 public:
  // `disaggregation` names the data channel and the KV layout.
  DecodeService(InferenceService* inference, EngineLoop* loop, const PeerAuth* auth,
                const DisaggregationContext* disaggregation);

  grpc::ServerWriteReactor<v1::GenerateResponse>* Generate(
      grpc::CallbackServerContext* context,
      const internal::v1::DecodeGenerateRequest* request) override;
  grpc::ServerUnaryReactor* GetLoad(grpc::CallbackServerContext* context,
                                    const internal::v1::LoadRequest* request,
                                    internal::v1::LoadReport* response) override;

 private:
  InferenceService* inference_;
  EngineLoop* loop_;
  const PeerAuth* auth_;
  const DisaggregationContext* disaggregation_;
};

}  // namespace baton

#endif  // BATON_SERVICE_DECODE_SERVICE_H_
