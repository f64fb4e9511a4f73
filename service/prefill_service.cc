#include "service/prefill_service.h"

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "service/inference_service.h"

namespace baton {

std::string PresentedSecret(const grpc::CallbackServerContext& context) {
  const auto& metadata = context.client_metadata();
  auto it = metadata.find(PeerAuth::kMetadataKey);
  return it == metadata.end() ? "" : std::string(it->second.data(), it->second.size());
}

// One Prefill call: the engine computes, the sender ships, and whichever
// ends first (completion, a failure on either side, the caller's cancel)
// finishes the call exactly once.
class PrefillService::PrefillCall : public grpc::ServerUnaryReactor {
 public:
  PrefillCall(PrefillService* service, grpc::CallbackServerContext* context,
              const internal::v1::PrefillRequest* request, internal::v1::PrefillResponse* response)
      : service_(service), response_(response), state_(std::make_shared<State>()) {
    service_->active_.fetch_add(1);
    state_->call = this;
    if (!service_->auth_->Allow(PresentedSecret(*context), "PrefillWorker.Prefill",
                                context->peer())) {
      Done(grpc::Status(grpc::UNAUTHENTICATED, "wrong or missing shared secret"));
      return;
    }
    if (service_->draining_.load()) {
      Done(grpc::Status(grpc::UNAVAILABLE, "the prefill worker is draining"));
      return;
    }
    if (request->model_fingerprint() != service_->layout_.fingerprint) {
      Done(grpc::Status(
          grpc::FAILED_PRECONDITION,
          absl::StrCat("model mismatch: this prefill worker serves ", service_->layout_.fingerprint,
                       ", the decode worker ", request->model_fingerprint())));
      return;
    }
    v1::GenerateRequest generate;
    if (request->token_ids_size() > 0 && !request->text().empty()) {
      Done(grpc::Status(grpc::INVALID_ARGUMENT, "set token_ids or text, not both"));
      return;
    }
    if (request->text().empty()) {
      generate.mutable_token_ids()->mutable_ids()->CopyFrom(request->token_ids());
    } else {
      generate.set_text(request->text());
    }
    *generate.mutable_sampling() = request->sampling();
    generate.mutable_sampling()->set_max_tokens(1);  // This worker samples one token.
    auto converted = ToEngineRequest(generate, service_->tokenizer_, service_->loop_->config(),
                                     /*max_tokens_limit=*/1);
    if (!converted.ok()) {
      Done(grpc::Status(grpc::INVALID_ARGUMENT, std::string(converted.status().message())));
      return;
    }
    state_->logprobs = converted->sampling.logprobs;
    start_ = absl::Now();
    std::shared_ptr<State> state = state_;
    // The sender belongs to the state: its callback must not own the state.
    std::weak_ptr<State> weak = state_;
    state_->sender = std::make_unique<KvSender>(
        request->target().data_address(), request->target().transfer_id(), service_->layout_,
        service_->auth_->secret(),
        [weak](absl::Status s) {
          if (auto alive = weak.lock()) alive->Fail(s);
        },
        service_->connections_);
    EngineRequest r = std::move(*converted);
    r.sampling.seed = request->seed();
    r.prefill_only = true;
    KvSender* sender = state_->sender.get();
    const int delay_ms = service_->layer_delay_ms_;
    r.kv_sink = [sender, delay_ms](int layer, int64_t begin, int64_t end,
                                   std::vector<uint8_t> rows) {
      if (delay_ms > 0) absl::SleepFor(absl::Milliseconds(delay_ms));
      sender->Send(layer, begin, end, std::move(rows));
    };
    auto id = service_->loop_->Submit(std::move(r),
                                      [state](const TokenEvent& e) { state->OnEngineEvent(e); });
    if (!id.ok()) {
      state_->sender->Abort();
      Done(grpc::Status(static_cast<grpc::StatusCode>(id.status().code()),
                        std::string(id.status().message())));
      return;
    }
    absl::MutexLock lock(&state_->mu);
    state_->engine_id = *id;
    state_->loop = service_->loop_;
    if (state_->failed) service_->loop_->Cancel(*id);
  }

  void OnCancel() override { state_->Fail(absl::CancelledError("the decode worker cancelled")); }

  void OnDone() override {
    service_->active_.fetch_sub(1);
    delete this;
  }

 private:
  struct State {
    absl::Mutex mu;
    PrefillCall* call ABSL_GUARDED_BY(mu) = nullptr;  // Null once finished.
    EngineLoop* loop ABSL_GUARDED_BY(mu) = nullptr;
    int64_t engine_id ABSL_GUARDED_BY(mu) = 0;
    bool failed ABSL_GUARDED_BY(mu) = false;
    std::unique_ptr<KvSender> sender;  // Set before any callback can run.
    SampledToken first_token;          // Written before the sender's Finish.
    int logprobs = 0;                  // Top alternatives to send with it.

    // The engine finished computing: ship the end marker, then answer.
    void OnEngineEvent(const TokenEvent& e) {
      if (e.finish == FinishReason::kNone) return;
      if (e.finish != FinishReason::kPrefilled || !e.has_token) {
        Fail(absl::InternalError(e.error.empty() ? "the prefill ended early" : e.error));
        return;
      }
      first_token = e.token;
      KvSender* s = sender.get();
      // `this` lives on in the shared_ptr that the sender callbacks hold.
      // The first token rides on the end marker: decode can emit it as soon
      // as the last layer lands, without waiting for this call's answer.
      v1::GeneratedToken token;
      ToProto(first_token, logprobs, &token);
      s->Finish(e.prompt_tokens, token.SerializeAsString(),
                [this](absl::Status status) { Complete(status); });
    }
    void Fail(const absl::Status& status) {
      EngineLoop* l;
      int64_t id;
      {
        absl::MutexLock lock(&mu);
        if (failed) return;
        failed = true;
        l = loop;
        id = engine_id;
      }
      if (l != nullptr && id != 0) l->Cancel(id);
      if (sender) sender->Abort();
      Complete(status);
    }
    void Complete(const absl::Status& status) {
      PrefillCall* c;
      {
        absl::MutexLock lock(&mu);
        c = call;
        call = nullptr;
      }
      if (c != nullptr) {
        c->Done(grpc::Status(static_cast<grpc::StatusCode>(status.code()),
                             std::string(status.message())));
      }
    }
  };

  void Done(const grpc::Status& status) {
    {
      absl::MutexLock lock(&state_->mu);
      state_->call = nullptr;
    }
    if (status.ok()) {
      ToProto(state_->first_token, state_->logprobs, response_->mutable_first_token());
      response_->set_layers_sent(service_->layout_.layers);
      response_->set_bytes_sent(state_->sender ? state_->sender->bytes_sent() : 0);
      service_->metrics_->CountKvTransfer(response_->bytes_sent(),
                                          absl::ToDoubleSeconds(absl::Now() - start_));
    } else {
      service_->metrics_->CountKvTransferFailure(
          status.error_code() == grpc::CANCELLED ? "cancelled" : "prefill_send");
    }
    Finish(status);
  }

  PrefillService* service_;
  internal::v1::PrefillResponse* response_;
  std::shared_ptr<State> state_;
  absl::Time start_;
};

PrefillService::PrefillService(EngineLoop* loop, const Tokenizer* tokenizer, KvLayout layout,
                               const PeerAuth* auth, ServiceMetrics* metrics, int layer_delay_ms)
    : loop_(loop),
      tokenizer_(tokenizer),
      layout_(std::move(layout)),
      auth_(auth),
      metrics_(metrics),
      layer_delay_ms_(layer_delay_ms) {}

grpc::ServerUnaryReactor* PrefillService::Prefill(grpc::CallbackServerContext* context,
                                                  const internal::v1::PrefillRequest* request,
                                                  internal::v1::PrefillResponse* response) {
  return new PrefillCall(this, context, request, response);
}

grpc::ServerUnaryReactor* AnswerGetLoad(grpc::CallbackServerContext* context, const PeerAuth& auth,
                                        const char* method, const EngineStats& s,
                                        const KvLayout& layout, const std::string& data_address,
                                        internal::v1::LoadReport* report) {
  auto* reactor = context->DefaultReactor();
  if (!auth.Allow(PresentedSecret(*context), method, context->peer())) {
    reactor->Finish(grpc::Status(grpc::UNAUTHENTICATED, "wrong or missing shared secret"));
    return reactor;
  }
  report->set_queued_tokens(s.queued_prompt_tokens);
  report->set_running_requests(s.running);
  report->set_queued_requests(s.waiting);
  report->set_kv_blocks_free(s.kv_blocks_total - s.kv_blocks_used);
  report->set_kv_blocks_total(s.kv_blocks_total);
  report->set_model_fingerprint(layout.fingerprint);
  report->set_data_address(data_address);
  report->set_kv_block_tokens(static_cast<uint32_t>(layout.block_size));
  report->set_max_running_requests(static_cast<uint64_t>(s.max_running));
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* PrefillService::GetLoad(grpc::CallbackServerContext* context,
                                                  const internal::v1::LoadRequest*,
                                                  internal::v1::LoadReport* report) {
  report->set_accepts_text(tokenizer_ != nullptr);
  return AnswerGetLoad(context, *auth_, "PrefillWorker.GetLoad", loop_->stats(), layout_,
                       /*data_address=*/"", report);
}

}  // namespace baton
