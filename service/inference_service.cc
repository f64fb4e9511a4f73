#include "service/inference_service.h"

#include <deque>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "baton/internal/v1/worker.grpc.pb.h"
#include "service/text_stream.h"

namespace baton {
namespace {

grpc::Status ToGrpc(const absl::Status& s) {
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
}

const char* CodeName(grpc::StatusCode code) {
  switch (code) {
    case grpc::OK:
      return "OK";
    case grpc::CANCELLED:
      return "CANCELLED";
    case grpc::INVALID_ARGUMENT:
      return "INVALID_ARGUMENT";
    case grpc::DEADLINE_EXCEEDED:
      return "DEADLINE_EXCEEDED";
    case grpc::RESOURCE_EXHAUSTED:
      return "RESOURCE_EXHAUSTED";
    case grpc::UNAVAILABLE:
      return "UNAVAILABLE";
    case grpc::ABORTED:
      return "ABORTED";
    case grpc::FAILED_PRECONDITION:
      return "FAILED_PRECONDITION";
    case grpc::UNAUTHENTICATED:
      return "UNAUTHENTICATED";
    case grpc::INTERNAL:
      return "INTERNAL";
    default:
      return "UNKNOWN";
  }
}

v1::FinishReason ToProto(FinishReason reason) {
  switch (reason) {
    case FinishReason::kStop:
      return v1::FINISH_REASON_STOP;
    case FinishReason::kLength:
      return v1::FINISH_REASON_LENGTH;
    case FinishReason::kCancelled:
      return v1::FINISH_REASON_CANCELLED;
    case FinishReason::kError:
      return v1::FINISH_REASON_ERROR;
    case FinishReason::kNone:
    case FinishReason::kPrefilled:
      break;
  }
  return v1::FINISH_REASON_UNSPECIFIED;
}

absl::Status Invalid(const std::string& message) { return absl::InvalidArgumentError(message); }

}  // namespace

absl::StatusOr<EngineRequest> ToEngineRequest(const v1::GenerateRequest& request,
                                              const Tokenizer* tokenizer, const ModelConfig& config,
                                              int64_t max_tokens_limit) {
  EngineRequest r;
  switch (request.input_case()) {
    case v1::GenerateRequest::kText: {
      if (tokenizer == nullptr) {
        return Invalid("input.text: this model has no tokenizer.json; send input.token_ids");
      }
      if (request.text().empty()) return Invalid("input.text: the prompt is empty");
      auto ids = tokenizer->Encode(request.text(), tokenizer->add_bos_token());
      if (!ids.ok()) return Invalid(absl::StrCat("input.text: ", ids.status().message()));
      r.prompt.assign(ids->begin(), ids->end());
      break;
    }
    case v1::GenerateRequest::kTokenIds: {
      const auto& ids = request.token_ids().ids();
      if (ids.empty()) return Invalid("input.token_ids: the prompt is empty");
      for (int i = 0; i < ids.size(); ++i) {
        if (ids[i] >= static_cast<uint32_t>(config.vocab_size)) {
          return Invalid(absl::StrCat("input.token_ids.ids[", i, "]: id ", ids[i],
                                      " is outside the vocabulary (size ", config.vocab_size, ")"));
        }
      }
      r.prompt.assign(ids.begin(), ids.end());
      break;
    }
    case v1::GenerateRequest::INPUT_NOT_SET:
      return Invalid("input: set input.text or input.token_ids");
  }
  const v1::SamplingParams& p = request.sampling();
  if (p.max_tokens() == 0) return Invalid("sampling.max_tokens must be >= 1");
  if (p.max_tokens() > max_tokens_limit) {
    return Invalid(absl::StrCat("sampling.max_tokens ", p.max_tokens(), " is above the limit ",
                                max_tokens_limit));
  }
  if (p.has_top_p() && !(p.top_p() > 0.0f && p.top_p() <= 1.0f)) {
    return Invalid("sampling.top_p must be in (0, 1]");
  }
  if (p.top_k() > static_cast<uint32_t>(config.vocab_size)) {
    return Invalid("sampling.top_k is larger than the vocabulary");
  }
  if (p.logprobs() > static_cast<uint32_t>(kMaxLogprobs)) {
    return Invalid(absl::StrCat("sampling.logprobs must be in [0, ", kMaxLogprobs, "]"));
  }
  SamplingOptions& s = r.sampling;
  s.max_tokens = p.max_tokens();
  s.temperature = p.temperature();
  s.top_k = static_cast<int>(p.top_k());
  s.top_p = p.has_top_p() ? p.top_p() : 1.0f;
  s.min_p = p.min_p();
  if (p.has_seed()) s.seed = p.seed();
  for (int i = 0; i < p.stop_token_ids_size(); ++i) {
    if (p.stop_token_ids(i) >= static_cast<uint32_t>(config.vocab_size)) {
      return Invalid(absl::StrCat("sampling.stop_token_ids[", i, "] is outside the vocabulary"));
    }
    s.stop_token_ids.push_back(static_cast<int32_t>(p.stop_token_ids(i)));
  }
  s.ignore_eos = p.ignore_eos();
  s.logprobs = static_cast<int>(p.logprobs());
  s.repetition_penalty = p.has_repetition_penalty() ? p.repetition_penalty() : 1.0f;
  s.frequency_penalty = p.frequency_penalty();
  s.presence_penalty = p.presence_penalty();
  return r;
}

// One Generate call. Writes are serialized by `writing`; the engine thread
// enqueues chunks and gRPC threads drain them. Finish() is called exactly
// once. Threads other than gRPC's (the engine loop, the KV receiver) enter
// the reactor only through State::Acquire(), and OnDone() leaves the final
// delete to the last of them, so no thread ever touches a deleted reactor.
void ToProto(const SampledToken& token, int logprobs, v1::GeneratedToken* out) {
  out->set_id(static_cast<uint32_t>(token.id));
  out->set_logprob(token.logprob);
  for (int i = 0; i < std::min<int>(logprobs, token.top_logprobs.size()); ++i) {
    v1::TokenLogprob* lp = out->add_top_logprobs();
    lp->set_id(static_cast<uint32_t>(token.top_logprobs[i].first));
    lp->set_logprob(token.top_logprobs[i].second);
  }
}

SampledToken FromProto(const v1::GeneratedToken& token) {
  SampledToken t;
  t.id = static_cast<int32_t>(token.id());
  t.logprob = token.logprob();
  for (const v1::TokenLogprob& lp : token.top_logprobs()) {
    t.top_logprobs.push_back({static_cast<int32_t>(lp.id()), lp.logprob()});
  }
  return t;
}

class InferenceService::GenerateStream : public grpc::ServerWriteReactor<v1::GenerateResponse> {
 public:
  GenerateStream(InferenceService* service, grpc::CallbackServerContext* context,
                 const v1::GenerateRequest* request, const PrefillPlan* plan)
      : service_(service), state_(std::make_shared<State>()), start_(absl::Now()) {
    state_->reactor = this;
    state_->dispatched_transfer = plan != nullptr ? plan->transfer_id : 0;
    service_->active_streams_.fetch_add(1);
    request_id_ = request->request_id().empty()
                      ? absl::StrCat("req-", service_->next_request_number_.fetch_add(1))
                      : request->request_id();
    if (service_->draining_.load()) {
      FinishNow(grpc::Status(grpc::UNAVAILABLE, "the server is draining; retry on another"));
      return;
    }
    auto engine_request = ToEngineRequest(*request, service_->tokenizer_, service_->loop_->config(),
                                          service_->options_.max_tokens_limit);
    if (!engine_request.ok()) {
      FinishNow(ToGrpc(engine_request.status()));
      return;
    }
    prompt_tokens_ = static_cast<int64_t>(engine_request->prompt.size());
    logprobs_ = engine_request->sampling.logprobs;
    text_ = std::make_unique<TextStream>(
        service_->tokenizer_, std::vector<std::string>(request->sampling().stop().begin(),
                                                       request->sampling().stop().end()));
    const bool dispatched = plan != nullptr && plan->transfer_id != 0;
    if (dispatched && (service_->disaggregation_ == nullptr || plan->prefill_address.empty() ||
                       !engine_request->sampling.seed.has_value())) {
      FinishNow(grpc::Status(grpc::INVALID_ARGUMENT,
                             "transfer_id needs a decode worker, prefill_address and "
                             "request.sampling.seed"));
      return;
    }
    if (plan != nullptr && service_->disaggregation_ != nullptr) {
      const bool short_prompt = prompt_tokens_ < plan->local_threshold;
      const bool room = service_->loop_->stats().waiting == 0;
      const bool remote = dispatched || (!plan->prefill_address.empty() && !(short_prompt && room));
      service_->metrics_->CountPrefillPath(remote ? "remote" : "local");
      if (remote) {
        // The prefill worker samples the first token: it must use the seed
        // this engine will use for the rest.
        if (!engine_request->sampling.seed.has_value()) {
          engine_request->sampling.seed = service_->RandomBits();
        }
        engine_request->external_prefill = true;
        state_->prefill_address = plan->prefill_address;
        state_->prompt = engine_request->prompt;
        state_->sampling = request->sampling();
        state_->seed = *engine_request->sampling.seed;
        state_->loop = service_->loop_;
      }
    }
    // When the blocks are surely free, the prefill starts before the engine
    // loop has reserved them: the Prefill call and the reservation overlap
    // instead of adding up in the time to first token. A prefill the router
    // dispatched is under way already: its frames wait for the reservation.
    if (state_->loop != nullptr && (dispatched || RoomForPrompt())) {
      StartRemotePrefill(0, /*reserved=*/false);
    }
    std::shared_ptr<State> state = state_;
    auto id = service_->loop_->Submit(std::move(*engine_request),
                                      [state](const TokenEvent& e) { state->OnEvent(e); });
    if (!id.ok()) {
      StopUpstream();
      FinishNow(ToGrpc(id.status()));
      return;
    }
    service_->metrics_->AddPromptTokens(prompt_tokens_);
    {
      absl::MutexLock lock(&state_->mu);
      state_->engine_id = *id;
      // A cancel that raced with Submit() could not name the request yet.
      if (state_->final_ready) service_->loop_->Cancel(*id);
    }
    (void)context;
  }

  void OnWriteDone(bool ok) override {
    {
      absl::MutexLock lock(&state_->mu);
      state_->writing = false;
      if (!ok && !state_->final_ready) {
        // The client is gone: stop generating for it.
        state_->final_ready = true;
        state_->final_status = grpc::Status(grpc::CANCELLED, "the client went away");
        state_->queue.clear();
      }
    }
    if (!ok) StopUpstream();
    Pump();
  }

  void OnCancel() override {
    {
      absl::MutexLock lock(&state_->mu);
      if (!state_->final_ready) {
        state_->final_ready = true;
        state_->final_status = grpc::Status(grpc::CANCELLED, "cancelled by the client or deadline");
        state_->queue.clear();
        service_->metrics_->CountRequest("CANCELLED");
      }
    }
    StopUpstream();
    Pump();
  }

  void OnDone() override {
    service_->active_streams_.fetch_sub(1);
    bool last;
    {
      absl::MutexLock lock(&state_->mu);
      state_->done = true;
      last = state_->holds == 0;
    }
    if (last) delete this;
  }

 private:
  // Shared by the reactor, the engine callback and the prefill callbacks.
  struct State {
    absl::Mutex mu;
    GenerateStream* reactor = nullptr;
    int holds ABSL_GUARDED_BY(mu) = 0;
    bool done ABSL_GUARDED_BY(mu) = false;  // OnDone() ran.
    int64_t engine_id ABSL_GUARDED_BY(mu) = 0;
    std::deque<v1::GenerateResponse> queue ABSL_GUARDED_BY(mu);
    bool writing ABSL_GUARDED_BY(mu) = false;
    bool final_ready ABSL_GUARDED_BY(mu) = false;  // Nothing more will be queued.
    bool finish_called ABSL_GUARDED_BY(mu) = false;
    grpc::Status final_status ABSL_GUARDED_BY(mu);
    // Remote prefill.
    std::string prefill_address;
    std::vector<int32_t> prompt;
    v1::SamplingParams sampling;
    uint64_t seed = 0;
    EngineLoop* loop = nullptr;
    uint64_t transfer_id ABSL_GUARDED_BY(mu) = 0;
    bool prefill_started ABSL_GUARDED_BY(mu) = false;
    // Nonzero when the router called the prefill worker itself, with this
    // transfer id: there is no Prefill call to make or cancel here. (Set
    // before any other thread sees the state.)
    uint64_t dispatched_transfer = 0;
    // The KV import (the first token on its end marker) hands the request to
    // the engine; the prefill call's answer only reports failures.
    bool imported ABSL_GUARDED_BY(mu) = false;
    std::optional<SampledToken> first_token ABSL_GUARDED_BY(mu);
    bool handed_off ABSL_GUARDED_BY(mu) = false;
    std::unique_ptr<grpc::ClientContext> prefill_context ABSL_GUARDED_BY(mu);
    internal::v1::PrefillRequest prefill_request;
    internal::v1::PrefillResponse prefill_response;

    // The reactor, kept alive until Release(); null once it is done.
    GenerateStream* Acquire() {
      absl::MutexLock lock(&mu);
      if (done) return nullptr;
      ++holds;
      return reactor;
    }
    void Release() {
      bool last;
      {
        absl::MutexLock lock(&mu);
        last = --holds == 0 && done;
      }
      if (last) delete reactor;
    }
    void OnEvent(const TokenEvent& e) {
      {
        absl::MutexLock lock(&mu);
        if (final_ready) return;
      }
      if (GenerateStream* s = Acquire()) {
        s->OnEngineEvent(e);
        Release();
      }
    }
    // `receiver`: the KV receiver's verdict (else the Prefill call's).
    void OnPrefillFailed(const absl::Status& status, bool receiver = false) {
      if (GenerateStream* s = Acquire()) {
        s->FailPrefill(status, receiver);
        Release();
      }
    }
    // The KV landed, with the first token on its end marker.
    void OnImported(SampledToken token) {
      absl::MutexLock lock(&mu);
      imported = true;
      if (!first_token.has_value()) first_token = std::move(token);
      MaybeHandOff();
    }
    // The prefill call answered (the same token): it confirms, it is not
    // needed for the hand-off.
    void OnFirstToken(SampledToken token) {
      absl::MutexLock lock(&mu);
      if (!first_token.has_value()) first_token = std::move(token);
      MaybeHandOff();
    }
    void MaybeHandOff() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
      if (!imported || !first_token.has_value() || handed_off || final_ready) return;
      handed_off = true;
      loop->FinishImport(engine_id, *first_token);
    }
  };

  void FinishNow(const grpc::Status& status) {
    service_->metrics_->CountRequest(CodeName(status.error_code()));
    // A transfer the router started for a request refused here: its
    // announcement is refused at once, not after the receiver's wait.
    if (state_->dispatched_transfer != 0 && service_->disaggregation_ != nullptr) {
      service_->disaggregation_->receiver->Forget(state_->dispatched_transfer);
    }
    {
      absl::MutexLock lock(&state_->mu);
      state_->final_ready = true;
      state_->finish_called = true;
    }
    Finish(status);
  }

  // Cancels the engine request and any prefill still running for it.
  void StopUpstream() {
    int64_t id;
    uint64_t transfer;
    grpc::ClientContext* prefill;  // Lives as long as the state.
    {
      absl::MutexLock lock(&state_->mu);
      id = state_->engine_id;
      transfer = state_->transfer_id;
      prefill = state_->prefill_context.get();
    }
    // Outside the lock: a cancelled call may report on this thread.
    if (prefill != nullptr) prefill->TryCancel();
    if (id != 0) service_->loop_->Cancel(id);
    if (transfer != 0) service_->disaggregation_->receiver->Forget(transfer);
  }

  // The prefill worker failed before the KV was complete: no token has been
  // sent, so the router may retry on another prefill worker.
  void FailPrefill(const absl::Status& status, bool receiver) {
    {
      absl::MutexLock lock(&state_->mu);
      if (state_->handed_off || state_->final_ready) return;
      state_->final_ready = true;
      // A misconfigured pair (model or KV layout mismatch) is not retried:
      // the error must reach whoever deploys it. No blocks in time is this
      // worker's failure (UNAVAILABLE: the router avoids it); any other, the
      // prefill's (ABORTED: the router tries another prefill worker).
      const grpc::StatusCode code = absl::IsFailedPrecondition(status) ? grpc::FAILED_PRECONDITION
                                    : NoBlocksInTime(status, receiver) ? grpc::UNAVAILABLE
                                                                       : grpc::ABORTED;
      state_->final_status = grpc::Status(code, absl::StrCat("prefill on ", state_->prefill_address,
                                                             " failed: ", status.message()));
      state_->queue.clear();
    }
    const bool mismatch = absl::IsFailedPrecondition(status);
    service_->metrics_->CountRequest(mismatch                           ? "FAILED_PRECONDITION"
                                     : NoBlocksInTime(status, receiver) ? "UNAVAILABLE"
                                                                        : "ABORTED");
    service_->metrics_->CountKvTransferFailure(absl::IsCancelled(status) ? "cancelled"
                                               : mismatch                ? "mismatch"
                                                                         : "prefill_failed");
    StopUpstream();
    Pump();
  }

  // The receiver gave up waiting for this worker's blocks (a prefill
  // worker's own RESOURCE_EXHAUSTED, its queue full, is the prefill's).
  static bool NoBlocksInTime(const absl::Status& status, bool receiver) {
    return receiver && absl::IsResourceExhausted(status);
  }

  // Whether the engine will reserve this prompt's blocks at its next look:
  // nothing queued ahead of it, a free place in the running batch, and room
  // for the prompt plus a block for each running sequence that may grow
  // meanwhile. (Wrong guesses cost a wait, at most the receiver's timeout.)
  bool RoomForPrompt() const {
    const EngineStats s = service_->loop_->stats();
    const int64_t block = service_->disaggregation_->layout.block_size;
    const int64_t needed = (prompt_tokens_ + block - 1) / block + s.running;
    return s.waiting == 0 && s.running < s.max_running &&
           s.kv_blocks_total - s.kv_blocks_used >= needed;
  }

  // Has the prefill worker fill engine request `request_id`'s blocks once
  // they are reserved (on the engine thread), or before the request is even
  // submitted (`reserved` false, from the constructor), in which case the
  // reservation only tells the receiver where the rows go.
  void StartRemotePrefill(int64_t request_id, bool reserved) {
    const DisaggregationContext& d = *service_->disaggregation_;
    std::shared_ptr<State> state = state_;
    uint64_t transfer_id;
    absl::Status expected;
    {
      absl::MutexLock lock(&state_->mu);
      if (state_->prefill_started) {
        if (reserved && state_->transfer_id != 0) {
          d.receiver->Ready(state_->transfer_id, request_id);
        }
        return;
      }
      state_->prefill_started = true;
      if (state_->final_ready) return;
      transfer_id =
          state_->dispatched_transfer != 0 ? state_->dispatched_transfer : service_->RandomBits();
      // Registered before the Prefill call names it, so that a cancel racing
      // with this always finds something to forget.
      expected = d.receiver->Expect(
          transfer_id, request_id, static_cast<int64_t>(state_->prompt.size()),
          [state](absl::Status s, std::string closing) {
            v1::GeneratedToken token;
            if (s.ok() && !token.ParseFromString(closing)) {
              s = absl::DataLossError("the first token did not parse");
            }
            if (s.ok()) {
              state->OnImported(FromProto(token));
            } else {
              state->OnPrefillFailed(s, /*receiver=*/true);
            }
          },
          reserved);
      // (Another request's transfer, under the same id, is not ours to forget.)
      if (expected.ok()) state_->transfer_id = transfer_id;
      if (expected.ok() && state_->dispatched_transfer == 0) {
        state_->prefill_context = std::make_unique<grpc::ClientContext>();
        state_->prefill_context->AddMetadata(PeerAuth::kMetadataKey, d.auth->secret());
        state_->prefill_context->set_deadline(std::chrono::system_clock::now() +
                                              std::chrono::minutes(10));
      }
    }
    if (!expected.ok()) {
      state->OnPrefillFailed(expected);
      return;
    }
    if (state_->dispatched_transfer != 0) return;  // The router made the call.
    internal::v1::PrefillRequest& r = state_->prefill_request;
    r.mutable_token_ids()->Add(state_->prompt.begin(), state_->prompt.end());
    r.mutable_target()->set_data_address(d.data_address);
    r.mutable_target()->set_transfer_id(transfer_id);
    r.set_model_fingerprint(d.layout.fingerprint);
    *r.mutable_sampling() = state_->sampling;
    r.set_seed(state_->seed);
    auto stub = internal::v1::PrefillWorker::NewStub(d.channels->Get(state_->prefill_address));
    grpc::ClientContext* context;
    {
      absl::MutexLock lock(&state_->mu);
      context = state_->prefill_context.get();
    }
    stub->async()->Prefill(context, &r, &state_->prefill_response, [state](grpc::Status s) {
      if (!s.ok()) {
        state->OnPrefillFailed(
            absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message()));
      } else if (!state->prefill_response.has_first_token()) {
        state->OnPrefillFailed(absl::InternalError("the prefill worker sent no first token"));
      } else {
        state->OnFirstToken(FromProto(state->prefill_response.first_token()));
      }
    });
  }

  void OnEngineEvent(const TokenEvent& e) {
    if (e.kv_reserved) {
      StartRemotePrefill(e.request_id, /*reserved=*/true);
      return;
    }
    v1::GenerateResponse chunk;
    chunk.set_request_id(request_id_);
    bool stop_now = false;
    const absl::Time now = absl::Now();
    if (e.has_token) {
      v1::GeneratedToken* t = chunk.add_tokens();
      ToProto(e.token, logprobs_, t);
      if (service_->tokenizer_ != nullptr) {
        auto raw = service_->tokenizer_->TokenText(e.token.id);
        if (raw.ok()) {
          std::string valid;
          AppendValidUtf8(*raw, /*final=*/true, &valid);
          t->set_text(valid);
        }
      }
      TextStream::Delta delta = text_->Add(e.token.id);
      chunk.set_text(delta.text);
      stop_now = delta.stopped;
      ++completion_tokens_;
      service_->metrics_->AddGeneratedTokens(1);
      if (completion_tokens_ == 1) {
        service_->metrics_->ObserveTimeToFirstToken(absl::ToDoubleSeconds(now - start_));
      } else {
        service_->metrics_->ObserveInterTokenLatency(absl::ToDoubleSeconds(now - last_token_));
      }
      last_token_ = now;
    }
    FinishReason finish = e.finish;
    if (stop_now) finish = FinishReason::kStop;
    grpc::Status status;
    if (finish != FinishReason::kNone) {
      if (!stop_now) chunk.set_text(chunk.text() + text_->Finish());
      chunk.set_finish_reason(ToProto(finish));
      chunk.mutable_usage()->set_prompt_tokens(static_cast<uint32_t>(prompt_tokens_));
      chunk.mutable_usage()->set_completion_tokens(static_cast<uint32_t>(completion_tokens_));
      if (finish == FinishReason::kError) {
        status = grpc::Status(grpc::INTERNAL, e.error);
      } else if (finish == FinishReason::kCancelled) {
        status = grpc::Status(grpc::CANCELLED, "cancelled");
      }
      service_->metrics_->ObserveRequestLatency(absl::ToDoubleSeconds(now - start_));
      service_->metrics_->CountRequest(CodeName(status.error_code()));
    }
    bool cancel_engine = false;
    {
      absl::MutexLock lock(&state_->mu);
      if (state_->final_ready) return;
      if (finish == FinishReason::kError) {
        state_->queue.clear();
      } else {
        state_->queue.push_back(std::move(chunk));
      }
      if (finish != FinishReason::kNone) {
        state_->final_ready = true;
        state_->final_status = status;
        // A stop string ends the request before the engine knows.
        cancel_engine = stop_now;
      }
    }
    if (cancel_engine) StopUpstream();
    Pump();
  }

  // Starts the next write (merging queued chunks) or the Finish. Never holds
  // the lock while calling into gRPC, which may run a reaction inline.
  void Pump() {
    const v1::GenerateResponse* to_write = nullptr;
    bool finish = false;
    grpc::Status status;
    {
      absl::MutexLock lock(&state_->mu);
      if (state_->writing || state_->finish_called) return;
      if (!state_->queue.empty()) {
        current_ = std::move(state_->queue.front());
        state_->queue.pop_front();
        while (!state_->queue.empty()) {
          v1::GenerateResponse& next = state_->queue.front();
          for (auto& t : *next.mutable_tokens()) *current_.add_tokens() = std::move(t);
          current_.mutable_text()->append(next.text());
          if (next.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) {
            current_.set_finish_reason(next.finish_reason());
            *current_.mutable_usage() = next.usage();
          }
          state_->queue.pop_front();
        }
        state_->writing = true;
        to_write = &current_;
      } else if (state_->final_ready) {
        state_->finish_called = true;
        finish = true;
        status = state_->final_status;
      }
    }
    if (to_write != nullptr) {
      StartWrite(to_write);
    } else if (finish) {
      Finish(status);
    }
  }

  InferenceService* service_;
  std::shared_ptr<State> state_;
  std::string request_id_;
  absl::Time start_;
  absl::Time last_token_;
  int64_t prompt_tokens_ = 0;
  int64_t completion_tokens_ = 0;
  int logprobs_ = 0;
  std::unique_ptr<TextStream> text_;
  v1::GenerateResponse current_;
};

InferenceService::InferenceService(EngineLoop* loop, const Tokenizer* tokenizer,
                                   ServiceMetrics* metrics, InferenceServiceOptions options)
    : loop_(loop), tokenizer_(tokenizer), metrics_(metrics), options_(std::move(options)) {}

grpc::ServerWriteReactor<v1::GenerateResponse>* InferenceService::Generate(
    grpc::CallbackServerContext* context, const v1::GenerateRequest* request) {
  return new GenerateStream(this, context, request, nullptr);
}

grpc::ServerWriteReactor<v1::GenerateResponse>* InferenceService::StartGenerate(
    grpc::CallbackServerContext* context, const v1::GenerateRequest* request,
    const PrefillPlan* plan) {
  return new GenerateStream(this, context, request, plan);
}

grpc::ServerUnaryReactor* InferenceService::GetModelInfo(grpc::CallbackServerContext* context,
                                                         const v1::GetModelInfoRequest*,
                                                         v1::ModelInfo* info) {
  const ModelConfig& c = loop_->config();
  info->set_model_name(options_.model_name);
  info->set_architecture(c.architecture == Architecture::kDeepseekV3 ? "DeepseekV3ForCausalLM"
                                                                     : "DeepseekV2ForCausalLM");
  info->set_context_length(c.max_position_embeddings);
  info->set_vocab_size(c.vocab_size);
  v1::KvLayout* kv = info->mutable_kv_layout();
  kv->set_kv_lora_rank(c.kv_lora_rank);
  kv->set_qk_rope_head_dim(c.qk_rope_head_dim);
  kv->set_num_layers(c.num_hidden_layers);
  kv->set_block_size_tokens(loop_->engine().options().kv_block_size);
  kv->set_dtype(loop_->engine().kv_cache().dtype_name());
  info->set_role(options_.role);
  info->set_has_tokenizer(tokenizer_ != nullptr);
  if (c.bos_token_id >= 0) info->set_bos_token_id(c.bos_token_id);
  if (c.eos_token_id >= 0) info->set_eos_token_id(c.eos_token_id);
  info->set_max_tokens_limit(static_cast<uint32_t>(options_.max_tokens_limit));
  auto* reactor = context->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* InferenceService::Tokenize(grpc::CallbackServerContext* context,
                                                     const v1::TokenizeRequest* request,
                                                     v1::TokenizeResponse* response) {
  auto* reactor = context->DefaultReactor();
  if (tokenizer_ == nullptr) {
    reactor->Finish(grpc::Status(grpc::FAILED_PRECONDITION, "this model has no tokenizer.json"));
    return reactor;
  }
  auto ids = tokenizer_->Encode(request->text(), request->add_bos());
  if (!ids.ok()) {
    reactor->Finish(
        grpc::Status(grpc::INVALID_ARGUMENT, absl::StrCat("text: ", ids.status().message())));
    return reactor;
  }
  for (uint32_t id : *ids) {
    response->add_ids(id);
    auto piece = tokenizer_->TokenText(id);
    std::string valid;
    if (piece.ok()) AppendValidUtf8(*piece, /*final=*/true, &valid);
    response->add_pieces(valid);
  }
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

}  // namespace baton
