#include "service/router.h"

#include <netdb.h>
#include <sys/socket.h>

#include <optional>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "service/peer_auth.h"

namespace baton {
namespace {

// "host:port" -> every "ip:port" the host resolves to (IPv6 bracketed).
std::vector<std::string> Resolve(const std::string& target) {
  const size_t colon = target.rfind(':');
  std::string host = target.substr(0, colon);
  const std::string port = target.substr(colon + 1);
  if (host.size() > 2 && host.front() == '[') host = host.substr(1, host.size() - 2);
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  std::vector<std::string> out;
  if (getaddrinfo(host.c_str(), port.c_str(), &hints, &found) != 0) return out;
  for (addrinfo* a = found; a != nullptr; a = a->ai_next) {
    char ip[NI_MAXHOST];
    if (getnameinfo(a->ai_addr, a->ai_addrlen, ip, sizeof ip, nullptr, 0, NI_NUMERICHOST) != 0) {
      continue;
    }
    std::string address =
        a->ai_family == AF_INET6 ? absl::StrCat("[", ip, "]:", port) : absl::StrCat(ip, ":", port);
    if (std::find(out.begin(), out.end(), address) == out.end()) out.push_back(address);
  }
  freeaddrinfo(found);
  return out;
}

}  // namespace

absl::StatusOr<std::vector<std::string>> ParseTargets(const std::string& list,
                                                      const std::string& flag) {
  std::vector<std::string> targets;
  for (absl::string_view piece : absl::StrSplit(list, ',', absl::SkipWhitespace())) {
    const std::string t(piece);
    const size_t colon = t.rfind(':');
    int port = 0;
    if (colon == std::string::npos || colon == 0 || !absl::SimpleAtoi(t.substr(colon + 1), &port) ||
        port <= 0 || port > 65535) {
      return absl::InvalidArgumentError(absl::StrCat("--", flag, ": \"", t, "\" is not host:port"));
    }
    targets.push_back(t);
  }
  return targets;
}

WorkerPool::WorkerPool(Role role, std::vector<std::string> targets, ChannelPool* channels,
                       std::string secret)
    : role_(role), targets_(std::move(targets)), channels_(channels), secret_(std::move(secret)) {}

void WorkerPool::Refresh(bool resolve) {
  std::vector<std::string> addresses;
  if (resolve) {
    for (const std::string& t : targets_) {
      for (std::string& a : Resolve(t)) addresses.push_back(std::move(a));
    }
    absl::MutexLock lock(&mu_);
    std::map<std::string, Worker> next;
    for (const std::string& a : addresses) next[a] = workers_.count(a) ? workers_[a] : Worker();
    workers_.swap(next);
  } else {
    absl::MutexLock lock(&mu_);
    for (const auto& [a, w] : workers_) addresses.push_back(a);
  }
  for (const std::string& address : addresses) {
    Worker probe;
    auto channel = channels_->Get(address);
    const auto deadline = std::chrono::system_clock::now() + std::chrono::milliseconds(400);
    grpc::ClientContext health_context;
    health_context.set_deadline(deadline);
    grpc::health::v1::HealthCheckResponse health;
    const bool serving =
        grpc::health::v1::Health::NewStub(channel)
            ->Check(&health_context, grpc::health::v1::HealthCheckRequest(), &health)
            .ok() &&
        health.status() == grpc::health::v1::HealthCheckResponse::SERVING;
    internal::v1::LoadReport load;
    bool loaded = false;
    if (serving) {
      grpc::ClientContext load_context;
      load_context.set_deadline(deadline);
      load_context.AddMetadata(PeerAuth::kMetadataKey, secret_);
      grpc::Status s = role_ == Role::kPrefill
                           ? internal::v1::PrefillWorker::NewStub(channel)->GetLoad(
                                 &load_context, internal::v1::LoadRequest(), &load)
                           : internal::v1::DecodeWorker::NewStub(channel)->GetLoad(
                                 &load_context, internal::v1::LoadRequest(), &load);
      loaded = s.ok();
    }
    probe.healthy = serving && loaded;
    probe.queued_tokens = static_cast<int64_t>(load.queued_tokens());
    probe.queued_requests = static_cast<int64_t>(load.queued_requests());
    probe.kv_free = static_cast<int64_t>(load.kv_blocks_free());
    probe.running = static_cast<int64_t>(load.running_requests());
    probe.max_running = static_cast<int64_t>(load.max_running_requests());
    probe.block_tokens = static_cast<int64_t>(load.kv_block_tokens());
    probe.data_address = load.data_address();
    probe.fingerprint = load.model_fingerprint();
    probe.accepts_text = load.accepts_text();
    absl::MutexLock lock(&mu_);
    if (workers_.count(address)) workers_[address] = probe;
  }
}

std::optional<std::string> WorkerPool::Pick(const std::set<std::string>& exclude) {
  absl::MutexLock lock(&mu_);
  std::optional<std::string> best;
  double best_score = 0;
  for (const auto& [address, w] : workers_) {
    if (!w.healthy || exclude.count(address)) continue;
    // Prefill: fewest queued tokens. Decode: most free KV, then fewest running.
    const double score = role_ == Role::kPrefill
                             ? -static_cast<double>(w.queued_tokens + w.pending)
                             : static_cast<double>(w.kv_free) * 1e3 - (w.running + w.pending);
    if (!best || score > best_score) {
      best = address;
      best_score = score;
    }
  }
  return best;
}

void WorkerPool::NoteAssigned(const std::string& address, int64_t tokens) {
  absl::MutexLock lock(&mu_);
  auto it = workers_.find(address);
  if (it != workers_.end()) Charge(it->second, tokens);
}

void WorkerPool::Charge(Worker& w, int64_t tokens) {
  w.pending += role_ == Role::kPrefill ? tokens : 1;
  w.pending_tokens += tokens;
}

bool WorkerPool::AcceptsText(const std::string& address) const {
  absl::MutexLock lock(&mu_);
  auto it = workers_.find(address);
  return it != workers_.end() && it->second.accepts_text;
}

std::optional<WorkerPool::DataChannel> WorkerPool::AssignIfRoom(const std::string& address,
                                                                int64_t tokens) {
  absl::MutexLock lock(&mu_);
  auto it = workers_.find(address);
  if (it == workers_.end()) return std::nullopt;
  Worker& w = it->second;
  const int64_t running = w.running + w.pending;
  std::optional<DataChannel> room;
  if (w.healthy && !w.data_address.empty() && w.block_tokens > 0 && w.queued_requests == 0 &&
      running < w.max_running &&
      w.kv_free >= (w.pending_tokens + tokens + w.block_tokens - 1) / w.block_tokens + running) {
    room = DataChannel{w.data_address, w.fingerprint};
  }
  Charge(w, tokens);
  return room;
}

size_t WorkerPool::healthy() const {
  absl::MutexLock lock(&mu_);
  size_t n = 0;
  for (const auto& [a, w] : workers_) n += w.healthy;
  return n;
}

namespace {

// A prefill failure as the router reports it: a misconfigured pair (model or
// KV layout mismatch) or a bad request is final, the error must reach whoever
// sent or deployed it; anything else is ABORTED, retried on another worker.
grpc::Status PrefillFailure(const grpc::Status& status, const std::string& address) {
  const grpc::StatusCode code = status.error_code() == grpc::FAILED_PRECONDITION ||
                                        status.error_code() == grpc::INVALID_ARGUMENT
                                    ? status.error_code()
                                    : grpc::ABORTED;
  return grpc::Status(code,
                      absl::StrCat("prefill on ", address, " failed: ", status.error_message()));
}

}  // namespace

// One client stream: a public writer and, per attempt, an upstream reader
// on a decode worker (and, dispatched in parallel, the router's own call to
// the prefill worker). The relay deletes itself once the public stream and
// every call of every attempt are done.
class RouterService::Relay : public grpc::ServerWriteReactor<v1::GenerateResponse> {
 public:
  Relay(RouterService* service, grpc::CallbackServerContext* context,
        const v1::GenerateRequest* request)
      : service_(service), context_(context), request_(*request) {
    service_->active_.fetch_add(1);
    if (service_->draining_.load()) {
      FinishPublic(grpc::Status(grpc::UNAVAILABLE, "the router is draining"));
      return;
    }
    StartAttempt();
  }

  void OnWriteDone(bool ok) override {
    Upstream* up;
    std::optional<grpc::Status> finish;
    {
      absl::MutexLock lock(&mu_);
      writing_ = false;
      up = upstream_.get();
      if (!ok) client_gone_ = true;
      // The upstream call may end while the last chunk is being written: its
      // status waits for the write, and the finished call is never read again.
      finish.swap(pending_finish_);
      if (ok && !finish && up->finished) return;
    }
    if (finish) {
      FinishPublic(*finish);
      return;
    }
    if (!ok) {
      CancelUpstream();
      return;
    }
    up->ReadNext();
  }

  void OnCancel() override {
    {
      absl::MutexLock lock(&mu_);
      client_gone_ = true;
    }
    CancelUpstream();
  }

  void OnDone() override {
    service_->active_.fetch_sub(1);
    bool last;
    {
      absl::MutexLock lock(&mu_);
      public_done_ = true;
      last = Settled();
    }
    if (last) delete this;
  }

 private:
  // The router's Prefill call of a parallel attempt.
  struct PrefillCall {
    grpc::ClientContext context;
    internal::v1::PrefillRequest request;
    internal::v1::PrefillResponse response;
    // Guarded by the relay's mu_:
    bool done = false;  // Reported (and nothing will touch the relay for it).
    std::optional<grpc::Status> failure;
    bool cancelled_decode = false;  // The decode call was cancelled for it.
  };

  // One call to a decode worker.
  class Upstream : public grpc::ClientReadReactor<v1::GenerateResponse> {
   public:
    explicit Upstream(Relay* relay) : relay_(relay) {}
    void ReadNext() { StartRead(&chunk_); }
    void OnReadDone(bool ok) override {
      if (ok) relay_->Forward(this, chunk_);
    }
    void OnDone(const grpc::Status& status) override { relay_->UpstreamDone(this, status); }

    grpc::ClientContext context;
    internal::v1::DecodeGenerateRequest request;
    std::string decode_address, prefill_address;
    std::unique_ptr<PrefillCall> prefill;  // Parallel dispatch only.
    bool finished = false;                 // Guarded by the relay's mu_.

    // Both calls of the attempt have reported.
    bool Settled() const { return finished && (prefill == nullptr || prefill->done); }

   private:
    Relay* relay_;
    v1::GenerateResponse chunk_;
  };

  // Nothing will call into the relay again.
  bool Settled() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (!public_done_ || pins_ > 0 || (upstream_ != nullptr && !upstream_->Settled())) {
      return false;
    }
    for (const auto& up : finished_upstreams_) {
      if (!up->Settled()) return false;
    }
    return true;
  }

  // The prompt's length in tokens, or for text an estimate (`bound`: a
  // byte-level BPE token covers a byte at least, plus a few special tokens;
  // else about 4 bytes a token).
  int64_t PromptTokens(bool bound) const {
    if (request_.has_token_ids()) return request_.token_ids().ids_size();
    const auto bytes = static_cast<int64_t>(request_.text().size());
    return bound ? bytes + 4 : bytes / 4 + 1;
  }

  void StartAttempt() {
    ++attempts_;
    auto decode = service_->decode_->Pick(failed_decode_);
    if (!decode) {
      FinishPublic(grpc::Status(grpc::UNAVAILABLE, "no healthy decode worker"));
      return;
    }
    std::optional<std::string> prefill = service_->prefill_->Pick(failed_prefill_);
    const RouterOptions& options = service_->options_;
    auto up = std::make_unique<Upstream>(this);
    up->decode_address = *decode;
    up->prefill_address = prefill.value_or("");
    *up->request.mutable_request() = request_;
    up->request.set_prefill_address(up->prefill_address);
    up->request.set_local_prefill_threshold(static_cast<uint32_t>(options.local_prefill_threshold));
    up->context.AddMetadata(PeerAuth::kMetadataKey, options.secret);
    if (context_->deadline() != std::chrono::system_clock::time_point::max()) {
      up->context.set_deadline(context_->deadline());
    }
    const int64_t tokens = PromptTokens(/*bound=*/true);
    // A prompt the decode worker might prefill itself (under the threshold)
    // is its call to make, and text only goes to a prefill worker that
    // encodes it.
    std::optional<WorkerPool::DataChannel> channel;
    if (prefill && options.parallel_prefill &&
        (options.local_prefill_threshold == 0 ||
         (request_.has_token_ids() && tokens >= options.local_prefill_threshold)) &&
        (request_.has_token_ids() || service_->prefill_->AcceptsText(*prefill))) {
      channel = service_->decode_->AssignIfRoom(*decode, tokens);
    } else {
      service_->decode_->NoteAssigned(*decode, tokens);
    }
    service_->metrics_->CountRoutedRequest("decode", *decode);
    if (prefill) {
      service_->prefill_->NoteAssigned(*prefill, PromptTokens(/*bound=*/false));
      service_->metrics_->CountRoutedRequest("prefill", *prefill);
    }
    service_->metrics_->CountPrefillDispatch(channel   ? "parallel"
                                             : prefill ? "via_decode"
                                                       : "local");
    if (channel) up->prefill = MakePrefillCall(*channel, up->request);
    Upstream* raw = up.get();
    PrefillCall* call = raw->prefill.get();
    bool client_gone;
    {
      absl::MutexLock lock(&mu_);
      if (upstream_ != nullptr) finished_upstreams_.push_back(std::move(upstream_));
      upstream_ = std::move(up);
      // A client that left while this attempt was being set up (a retry)
      // found nothing to cancel: its calls are cancelled below.
      client_gone = client_gone_;
      ++pins_;  // Once started, the calls may end the relay on other threads.
    }
    // The decode call first: its transfer is registered by the time the
    // prefill worker announces it (the receiver waits a little otherwise).
    auto stub = internal::v1::DecodeWorker::NewStub(service_->channels_->Get(*decode));
    stub->async()->Generate(&raw->context, &raw->request, raw);
    raw->ReadNext();
    raw->StartCall();
    if (call != nullptr) {
      internal::v1::PrefillWorker::NewStub(service_->channels_->Get(*prefill))
          ->async()
          ->Prefill(&call->context, &call->request, &call->response,
                    [this, raw](grpc::Status status) { PrefillDone(raw, status); });
    }
    if (client_gone) {
      raw->context.TryCancel();
      if (call != nullptr) call->context.TryCancel();
    }
    Unpin();
  }

  // The Prefill call of a parallel attempt, and the matching fields of the
  // decode call: one transfer id, and the seed both sample with.
  std::unique_ptr<PrefillCall> MakePrefillCall(const WorkerPool::DataChannel& channel,
                                               internal::v1::DecodeGenerateRequest& decode) {
    v1::SamplingParams& sampling = *decode.mutable_request()->mutable_sampling();
    if (!sampling.has_seed()) sampling.set_seed(service_->RandomBits());
    uint64_t transfer_id = 0;
    while (transfer_id == 0) transfer_id = service_->RandomBits();
    decode.set_transfer_id(transfer_id);
    auto call = std::make_unique<PrefillCall>();
    internal::v1::PrefillRequest& r = call->request;
    if (request_.has_token_ids()) {
      *r.mutable_token_ids() = request_.token_ids().ids();
    } else {
      r.set_text(request_.text());
    }
    r.mutable_target()->set_data_address(channel.address);
    r.mutable_target()->set_transfer_id(transfer_id);
    r.set_model_fingerprint(channel.fingerprint);
    *r.mutable_sampling() = sampling;
    r.set_seed(sampling.seed());
    call->context.AddMetadata(PeerAuth::kMetadataKey, service_->options_.secret);
    call->context.set_deadline(context_->deadline() != std::chrono::system_clock::time_point::max()
                                   ? context_->deadline()
                                   : std::chrono::system_clock::now() + std::chrono::minutes(10));
    return call;
  }

  // The router's Prefill call ended. On failure the decode call is waiting
  // for KV that will not come: cancel it, and let its end decide (retry or
  // report, with the prefill's error).
  // Once the decode call has sent a token, its KV is all in: a late
  // failure of this call (its answer lost) does not concern it.
  void PrefillDone(Upstream* up, const grpc::Status& status) {
    bool cancel_decode = false, delete_self;
    {
      absl::MutexLock lock(&mu_);
      up->prefill->done = true;
      if (!status.ok()) {
        up->prefill->failure = status;
        cancel_decode = !up->finished && !sent_any_;
        up->prefill->cancelled_decode = cancel_decode;
      }
      if (cancel_decode) ++pins_;  // Until the cancel below is made.
      delete_self = Settled();
    }
    if (delete_self) {
      delete this;
      return;
    }
    // Outside the lock: the cancelled call may report on this thread.
    if (cancel_decode) {
      up->context.TryCancel();
      Unpin();
    }
  }

  // Releases a pin; true if that settled the relay, which is then deleted.
  bool Unpin() {
    bool last;
    {
      absl::MutexLock lock(&mu_);
      --pins_;
      last = Settled();
    }
    if (last) delete this;
    return last;
  }

  // A chunk from `up`, the current decode call (called from its read
  // reaction, so the relay and `up` outlive it).
  void Forward(Upstream* up, const v1::GenerateResponse& chunk) {
    bool client_gone;
    {
      absl::MutexLock lock(&mu_);
      client_gone = client_gone_;
      if (!client_gone) {
        sent_any_ = true;
        out_ = chunk;
        writing_ = true;
      }
    }
    if (client_gone) {
      // Nobody reads on: stop the call rather than leave it unread. (Outside
      // the lock: the cancelled call may report on this thread.)
      up->context.TryCancel();
      return;
    }
    StartWrite(&out_);
  }

  void CancelUpstream() {
    Upstream* up;
    bool decode, prefill;
    {
      absl::MutexLock lock(&mu_);
      up = upstream_.get();
      if (up == nullptr) return;
      decode = !up->finished;
      prefill = up->prefill != nullptr && !up->prefill->done;
    }
    // Outside the lock: a cancelled call may report on this thread. The
    // upstream outlives this call (finished attempts are kept until the end).
    if (decode) up->context.TryCancel();
    if (prefill) up->prefill->context.TryCancel();
  }

  void UpstreamDone(Upstream* up, const grpc::Status& decode_status) {
    bool retry = false, delete_self = false, finish = false, cancel_prefill = false;
    grpc::Status status = decode_status;
    {
      absl::MutexLock lock(&mu_);
      up->finished = true;
      // The router cancelled the decode call because its own prefill call
      // failed: that failure is the attempt's.
      if (status.error_code() == grpc::CANCELLED && up->prefill != nullptr &&
          up->prefill->cancelled_decode) {
        status = PrefillFailure(*up->prefill->failure, up->prefill_address);
      }
      cancel_prefill = !status.ok() && up->prefill != nullptr && !up->prefill->done;
      if (cancel_prefill) ++pins_;  // Until the cancel below is made.
      if (public_done_) {
        delete_self = Settled();
      } else if (!client_gone_ && !sent_any_ && attempts_ < service_->options_.max_attempts &&
                 (status.error_code() == grpc::ABORTED ||
                  status.error_code() == grpc::UNAVAILABLE)) {
        // Nothing reached the client: try again, avoiding what failed.
        if (status.error_code() == grpc::ABORTED && !up->prefill_address.empty()) {
          failed_prefill_.insert(up->prefill_address);
        } else {
          failed_decode_.insert(up->decode_address);
        }
        retry = true;
      } else {
        finish = true;
      }
    }
    if (delete_self) {
      delete this;
      return;
    }
    // A failed decode call leaves nobody to take the KV.
    if (cancel_prefill) {
      up->prefill->context.TryCancel();
      if (Unpin()) return;
    }
    if (retry) {
      service_->metrics_->CountRetry();
      StartAttempt();
      return;
    }
    if (finish) {
      grpc::Status out = status;
      if (status.error_code() == grpc::UNAVAILABLE || status.error_code() == grpc::ABORTED) {
        out = grpc::Status(grpc::UNAVAILABLE, absl::StrCat("decode worker ", up->decode_address,
                                                           ": ", status.error_message()));
      }
      {
        absl::MutexLock lock(&mu_);
        if (writing_) {
          pending_finish_ = out;  // OnWriteDone finishes after the write.
          return;
        }
      }
      FinishPublic(out);
    }
  }

  void FinishPublic(const grpc::Status& status) {
    service_->metrics_->CountRequest(status.ok() ? "OK" : std::to_string(status.error_code()));
    Finish(status);
  }

  RouterService* service_;
  grpc::CallbackServerContext* context_;
  v1::GenerateRequest request_;
  absl::Mutex mu_;
  std::unique_ptr<Upstream> upstream_ ABSL_GUARDED_BY(mu_);
  std::vector<std::unique_ptr<Upstream>> finished_upstreams_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool sent_any_ ABSL_GUARDED_BY(mu_) = false;
  bool client_gone_ ABSL_GUARDED_BY(mu_) = false;
  bool public_done_ ABSL_GUARDED_BY(mu_) = false;
  // Calls into gRPC under way outside the lock that keep the relay alive.
  int pins_ ABSL_GUARDED_BY(mu_) = 0;
  std::optional<grpc::Status> pending_finish_ ABSL_GUARDED_BY(mu_);
  int attempts_ = 0;
  std::set<std::string> failed_prefill_, failed_decode_;
  v1::GenerateResponse out_;
};

RouterService::RouterService(WorkerPool* prefill, WorkerPool* decode, ChannelPool* channels,
                             ServiceMetrics* metrics, RouterOptions options)
    : prefill_(prefill),
      decode_(decode),
      channels_(channels),
      metrics_(metrics),
      options_(std::move(options)) {}

grpc::ServerWriteReactor<v1::GenerateResponse>* RouterService::Generate(
    grpc::CallbackServerContext* context, const v1::GenerateRequest* request) {
  return new Relay(this, context, request);
}

// Answers a unary call with what a healthy decode worker answers: `call`
// starts the upstream call, `done` may adjust the response.
template <typename Request, typename Response, typename Call>
grpc::ServerUnaryReactor* ForwardToDecode(grpc::CallbackServerContext* context, WorkerPool* decode,
                                          ChannelPool* channels, const Request* request,
                                          Response* response, Call call,
                                          std::function<void(Response*)> done = nullptr) {
  auto* reactor = context->DefaultReactor();
  auto address = decode->Pick({});
  if (!address) {
    reactor->Finish(grpc::Status(grpc::UNAVAILABLE, "no healthy decode worker"));
    return reactor;
  }
  auto client = std::make_shared<grpc::ClientContext>();
  client->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  auto stub = v1::Inference::NewStub(channels->Get(*address));
  call(stub->async(), client.get(), request, response,
       [reactor, response, client, done](grpc::Status s) {
         if (s.ok() && done) done(response);
         reactor->Finish(s);
       });
  return reactor;
}

grpc::ServerUnaryReactor* RouterService::GetModelInfo(grpc::CallbackServerContext* context,
                                                      const v1::GetModelInfoRequest* request,
                                                      v1::ModelInfo* response) {
  return ForwardToDecode(
      context, decode_, channels_, request, response,
      [](auto* async, auto* client, auto* req, auto* resp, auto callback) {
        async->GetModelInfo(client, req, resp, std::move(callback));
      },
      std::function<void(v1::ModelInfo*)>(
          [](v1::ModelInfo* info) { info->set_role(v1::ROLE_ROUTER); }));
}

grpc::ServerUnaryReactor* RouterService::Tokenize(grpc::CallbackServerContext* context,
                                                  const v1::TokenizeRequest* request,
                                                  v1::TokenizeResponse* response) {
  return ForwardToDecode(context, decode_, channels_, request, response,
                         [](auto* async, auto* client, auto* req, auto* resp, auto callback) {
                           async->Tokenize(client, req, resp, std::move(callback));
                         });
}

}  // namespace baton
