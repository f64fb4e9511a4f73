#include "service/decode_service.h"

#include "service/prefill_service.h"

namespace baton {
namespace {

// A stream refused before it starts.
class RefusedStream : public grpc::ServerWriteReactor<v1::GenerateResponse> {
 public:
  explicit RefusedStream(const grpc::Status& status) { Finish(status); }
  void OnDone() override { delete this; }
};

}  // namespace

DecodeService::DecodeService(InferenceService* inference, EngineLoop* loop, const PeerAuth* auth,
                             const DisaggregationContext* disaggregation)
    : inference_(inference), loop_(loop), auth_(auth), disaggregation_(disaggregation) {}

grpc::ServerWriteReactor<v1::GenerateResponse>* DecodeService::Generate(
    grpc::CallbackServerContext* context, const internal::v1::DecodeGenerateRequest* request) {
  if (!auth_->Allow(PresentedSecret(*context), "DecodeWorker.Generate", context->peer())) {
    return new RefusedStream(grpc::Status(grpc::UNAUTHENTICATED, "wrong or missing shared secret"));
  }
  PrefillPlan plan;
  plan.prefill_address = request->prefill_address();
  plan.local_threshold = request->local_prefill_threshold();
  plan.transfer_id = request->transfer_id();
  return inference_->StartGenerate(context, &request->request(), &plan);
}

grpc::ServerUnaryReactor* DecodeService::GetLoad(grpc::CallbackServerContext* context,
                                                 const internal::v1::LoadRequest*,
                                                 internal::v1::LoadReport* report) {
  return AnswerGetLoad(context, *auth_, "DecodeWorker.GetLoad", loop_->stats(),
                       disaggregation_->layout, disaggregation_->data_address, report);
}

}  // namespace baton
