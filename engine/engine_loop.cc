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

absl::Status EngineLoop::ImportKv(int64_t request_id, int layer, int64_t begin, int64_t end,
                                  const void* rows, size_t bytes) {
  std::shared_ptr<ImportTarget> target;
  {
    absl::MutexLock lock(&imports_mu_);
    auto it = imports_.find(request_id);
    if (it != imports_.end()) target = it->second;
  }
  if (target == nullptr) {
    return absl::NotFoundError(absl::StrCat("request ", request_id, " is not awaiting KV"));
  }
  if (layer < 0 || layer >= config_.num_hidden_layers || begin < 0 || begin >= end ||
      end > target->tokens) {
    return absl::InvalidArgumentError(absl::StrCat("KV rows [", begin, ", ", end, ") of layer ",
                                                   layer, " are outside the request's prompt"));
  }
  const size_t expected = static_cast<size_t>((end - begin) * engine_->kv_cache().row_bytes());
  if (bytes != expected) {
    return absl::InvalidArgumentError(
        absl::StrCat("KV rows [", begin, ", ", end, ") of layer ", layer, " came as ", bytes,
                     " bytes, not ", expected, " (", engine_->kv_cache().dtype_name(), " rows)"));
  }
  absl::MutexLock lock(&target->mu);
  if (!target->open) return absl::CancelledError("the request has ended");
  // The engine thread does not touch these rows until FinishImport, and the
  // cache's storage never moves, so writing here is race-free.
  return engine_->kv_cache().ImportLayer(layer, target->table, begin, end, rows);
}

void EngineLoop::FinishImport(int64_t request_id, SampledToken first) {
  absl::MutexLock lock(&mu_);
  imports_done_.push_back({request_id, std::move(first)});
}

void EngineLoop::CloseImport(int64_t request_id) {
  std::shared_ptr<ImportTarget> target;
  {
    absl::MutexLock lock(&imports_mu_);
    auto it = imports_.find(request_id);
    if (it == imports_.end()) return;
    target = it->second;
    imports_.erase(it);
  }
  absl::MutexLock lock(&target->mu);
  target->open = false;
}

EngineStats EngineLoop::stats() const {
  absl::MutexLock lock(&mu_);
  return stats_;
}

void EngineLoop::Deliver(const TokenEvent& e) {
  if (e.kv_reserved) {
    auto target = std::make_shared<ImportTarget>();
    {
      absl::MutexLock lock(&target->mu);
      target->table = e.kv_blocks;
    }
    target->tokens = prompt_lengths_[e.request_id];
    absl::MutexLock lock(&imports_mu_);
    imports_[e.request_id] = std::move(target);
  }
  if (e.finish != FinishReason::kNone) {
    CloseImport(e.request_id);
    prompt_lengths_.erase(e.request_id);
  }
  auto it = callbacks_.find(e.request_id);
  if (it == callbacks_.end()) return;
  it->second(e);
  if (e.finish != FinishReason::kNone) callbacks_.erase(it);
}

void EngineLoop::Run() {
  while (true) {
    std::vector<Submission> submissions;
    std::vector<int64_t> cancels;
    std::vector<std::pair<int64_t, SampledToken>> imports_done;
    bool stop;
    {
      absl::MutexLock lock(&mu_);
      const bool busy = engine_->HasWork();
      auto ready = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
        return stop_ || !submissions_.empty() || !cancels_.empty() || !imports_done_.empty();
      };
      if (!busy) mu_.Await(absl::Condition(&ready));
      submissions.swap(submissions_);
      cancels.swap(cancels_);
      imports_done.swap(imports_done_);
      stop = stop_;
    }
    for (Submission& s : submissions) {
      const int64_t id = s.request.id;
      const int64_t prompt_length = static_cast<int64_t>(s.request.prompt.size());
      if (absl::Status status = engine_->Add(std::move(s.request)); !status.ok()) {
        TokenEvent e;
        e.request_id = id;
        e.finish = FinishReason::kError;
        e.error = std::string(status.message());
        s.callback(e);
        continue;
      }
      callbacks_[id] = std::move(s.callback);
      prompt_lengths_[id] = prompt_length;
    }
    for (const auto& [id, first] : imports_done) {
      CloseImport(id);
      if (std::optional<TokenEvent> e = engine_->ImportDone(id, first)) Deliver(*e);
    }
    for (int64_t id : cancels) {
      CloseImport(id);  // Before the engine frees the blocks.
      engine_->Cancel(id);
    }
    if (stop) {
      for (const auto& [id, callback] : callbacks_) {
        CloseImport(id);
        engine_->Cancel(id);
      }
    }
    if (engine_->HasWork()) {
      const absl::Time start = absl::Now();
      std::vector<TokenEvent> events = engine_->Step();
      const EngineStats stats = engine_->stats();
      if (options_.on_step && stats.last_step_tokens > 0) {
        options_.on_step({absl::Now() - start, stats.last_step_tokens, stats.last_step_sequences});
      }
      // Before delivering: the callbacks wake the threads that ship these
      // events, and spinning compute threads would hold the cores they need.
      if (!engine_->HasWork()) engine_->Rest();
      for (const TokenEvent& e : events) Deliver(e);
    }
    {
      absl::MutexLock lock(&mu_);
      stats_ = engine_->stats();
    }
    if (stop && !engine_->HasWork()) return;
  }
}

}  // namespace baton
