#include "service/inference_service.h"

#include <deque>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
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

// One Generate call. Writes are serialized by `writing_`; the engine thread
// enqueues chunks and the gRPC thread drains them. Finish() is called exactly
// once, after which the reactor is never touched (gRPC deletes it in OnDone).
class InferenceService::GenerateStream : public grpc::ServerWriteReactor<v1::GenerateResponse> {
 public:
  GenerateStream(InferenceService* service, grpc::CallbackServerContext* context,
                 const v1::GenerateRequest* request)
      : service_(service), start_(absl::Now()) {
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
    auto self = shared_from_this_state();
    auto id = service_->loop_->Submit(std::move(*engine_request),
                                      [state = self](const TokenEvent& e) { state->OnEvent(e); });
    if (!id.ok()) {
      state_->stream = nullptr;
      FinishNow(ToGrpc(id.status()));
      return;
    }
    service_->metrics_->AddPromptTokens(prompt_tokens_);
    absl::MutexLock lock(&state_->mu);
    state_->engine_id = *id;
    // A cancel that raced with Submit() could not name the request yet.
    if (state_->final_ready) service_->loop_->Cancel(*id);
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
        service_->loop_->Cancel(state_->engine_id);
      }
    }
    Pump();
  }

  void OnCancel() override {
    {
      absl::MutexLock lock(&state_->mu);
      if (!state_->final_ready) {
        state_->final_ready = true;
        state_->final_status = grpc::Status(grpc::CANCELLED, "cancelled by the client or deadline");
        state_->queue.clear();
      }
      if (state_->engine_id != 0) service_->loop_->Cancel(state_->engine_id);
    }
    Pump();
  }

  void OnDone() override {
    service_->active_streams_.fetch_sub(1);
    delete this;
  }

 private:
  // What the engine thread and the gRPC threads share. Outlives the reactor
  // when engine events arrive after Finish().
  struct State {
    absl::Mutex mu;
    GenerateStream* stream = nullptr;  // Null once the engine needs no more events.
    int64_t engine_id = 0;
    std::deque<v1::GenerateResponse> queue;
    bool writing = false;
    bool final_ready = false;  // Nothing more will be queued.
    bool finish_called = false;
    grpc::Status final_status;

    void OnEvent(const TokenEvent& e) {
      GenerateStream* s;
      {
        absl::MutexLock lock(&mu);
        if (final_ready) return;
        s = stream;
      }
      if (s != nullptr) s->OnEngineEvent(e);
    }
  };

  std::shared_ptr<State> shared_from_this_state() {
    state_ = std::make_shared<State>();
    state_->stream = this;
    return state_;
  }

  void FinishNow(const grpc::Status& status) {
    service_->metrics_->CountRequest(CodeName(status.error_code()));
    if (state_ == nullptr) state_ = std::make_shared<State>();
    {
      absl::MutexLock lock(&state_->mu);
      state_->final_ready = true;
      state_->finish_called = true;
    }
    Finish(status);
  }

  // On the engine thread. The reactor is alive: Finish() has not been
  // called while final_ready is false.
  void OnEngineEvent(const TokenEvent& e) {
    v1::GenerateResponse chunk;
    chunk.set_request_id(request_id_);
    bool stop_now = false;
    const absl::Time now = absl::Now();
    if (e.has_token) {
      v1::GeneratedToken* t = chunk.add_tokens();
      t->set_id(e.token.id);
      t->set_logprob(e.token.logprob);
      if (service_->tokenizer_ != nullptr) {
        auto raw = service_->tokenizer_->TokenText(e.token.id);
        if (raw.ok()) {
          std::string valid;
          AppendValidUtf8(*raw, /*final=*/true, &valid);
          t->set_text(valid);
        }
      }
      for (int i = 0; i < std::min<int>(logprobs_, e.token.top_logprobs.size()); ++i) {
        v1::TokenLogprob* lp = t->add_top_logprobs();
        lp->set_id(e.token.top_logprobs[i].first);
        lp->set_logprob(e.token.top_logprobs[i].second);
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
        state_->stream = nullptr;
        // A stop string ends the request before the engine knows.
        if (stop_now) service_->loop_->Cancel(state_->engine_id);
      }
    }
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
        state_->stream = nullptr;
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
  return new GenerateStream(this, context, request);
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
  kv->set_dtype("f32");
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
