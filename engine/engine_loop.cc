#include "engine/engine_loop.h"

#include "absl/strings/str_cat.h"

namespace baton {

EngineLoop::EngineLoop(std::unique_ptr<Engine> engine, EngineLoopOptions options)
    : engine_(std::move(engine)), config_(engine_->config()), options_(std::move(options)) {
  stats_ = engine_->stats();
  thread_ = std::thread([this] { Run(); });
}

EngineLoop::~EngineLoop() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  thread_.join();
}

absl::StatusOr<int64_t> EngineLoop::Submit(EngineRequest request, Callback callback) {
  // Validate reads only immutable engine state, so it is safe here.
  if (absl::Status s = engine_->Validate(request); !s.ok()) return s;
  absl::MutexLock lock(&mu_);
  if (stop_) return absl::UnavailableError("the engine is shutting down");
  const int64_t queued = stats_.waiting + static_cast<int64_t>(submissions_.size());
  if (queued >= options_.max_queued) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the request queue is full (", options_.max_queued, " waiting); retry later"));
  }
  request.id = next_id_++;
  const int64_t id = request.id;
  submissions_.push_back({std::move(request), std::move(callback)});
  return id;
}

void EngineLoop::Cancel(int64_t request_id) {
  absl::MutexLock lock(&mu_);
  cancels_.push_back(request_id);
}

EngineStats EngineLoop::stats() const {
  absl::MutexLock lock(&mu_);
  return stats_;
}

void EngineLoop::Run() {
  while (true) {
    std::vector<Submission> submissions;
    std::vector<int64_t> cancels;
    bool stop;
    {
      absl::MutexLock lock(&mu_);
      const bool busy = engine_->HasWork();
      auto ready = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
        return stop_ || !submissions_.empty() || !cancels_.empty();
      };
      if (!busy) mu_.Await(absl::Condition(&ready));
      submissions.swap(submissions_);
      cancels.swap(cancels_);
      stop = stop_;
    }
    for (Submission& s : submissions) {
      const int64_t id = s.request.id;
      if (absl::Status status = engine_->Add(std::move(s.request)); !status.ok()) {
        TokenEvent e;
        e.request_id = id;
        e.finish = FinishReason::kError;
        e.error = std::string(status.message());
        s.callback(e);
        continue;
      }
      callbacks_[id] = std::move(s.callback);
    }
    for (int64_t id : cancels) engine_->Cancel(id);
    if (stop) {
      for (const auto& [id, callback] : callbacks_) engine_->Cancel(id);
    }
    if (engine_->HasWork()) {
      const absl::Time start = absl::Now();
      std::vector<TokenEvent> events = engine_->Step();
      const EngineStats stats = engine_->stats();
      if (options_.on_step && stats.last_step_tokens > 0) {
        options_.on_step({absl::Now() - start, stats.last_step_tokens, stats.last_step_sequences});
      }
      for (const TokenEvent& e : events) {
        auto it = callbacks_.find(e.request_id);
        if (it == callbacks_.end()) continue;
        it->second(e);
        if (e.finish != FinishReason::kNone) callbacks_.erase(it);
      }
    }
    {
      absl::MutexLock lock(&mu_);
      stats_ = engine_->stats();
    }
    if (stop && !engine_->HasWork()) return;
  }
}

}  // namespace baton
