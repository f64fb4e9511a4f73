// The façade the services use: an Engine driven by its own thread. Submit()
// and Cancel() only enqueue and wake the loop, so callers (gRPC callbacks)
// never block on model work. Events are delivered on the loop thread through
// each request's callback, which must not block either.
//
// Thread-safety: every public method is thread-safe.
#ifndef BATON_ENGINE_ENGINE_LOOP_H_
#define BATON_ENGINE_ENGINE_LOOP_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "engine/engine.h"

namespace baton {

struct StepInfo {
  absl::Duration duration;
  int64_t tokens = 0;
  int64_t sequences = 0;
};

struct EngineLoopOptions {
  // Requests waiting beyond the running batch; Submit() refuses more with
  // RESOURCE_EXHAUSTED.
  int64_t max_queued = 256;
  // Called on the loop thread after every step (metrics).
  std::function<void(const StepInfo&)> on_step;
};

class EngineLoop {
 public:
  using Callback = std::function<void(const TokenEvent&)>;

  EngineLoop(std::unique_ptr<Engine> engine, EngineLoopOptions options);
  // Cancels whatever is still running and joins the thread.
  ~EngineLoop();
  EngineLoop(const EngineLoop&) = delete;
  EngineLoop& operator=(const EngineLoop&) = delete;

  const ModelConfig& config() const { return config_; }
  const Engine& engine() const { return *engine_; }

  // Validates and enqueues; returns the request's id. The callback receives
  // every event of the request, the last one with finish != kNone.
  absl::StatusOr<int64_t> Submit(EngineRequest request, Callback callback);
  // Ends the request as soon as the loop wakes; its blocks are freed then.
  void Cancel(int64_t request_id);

  // For an external_prefill request, after its kv_reserved event: copies
  // rows [begin, end) of `layer` (dense, KvCache::row_bytes() each) into its
  // blocks.
  // Any thread. Fails once the request has ended or for a range outside the
  // prompt.
  absl::Status ImportKv(int64_t request_id, int layer, int64_t begin, int64_t end, const void* rows,
                        size_t bytes);
  // Every layer of every prompt token has been imported, and the prefill
  // worker sampled `first`: the loop emits it and schedules the request.
  void FinishImport(int64_t request_id, SampledToken first);

  // A snapshot taken after the latest step.
  EngineStats stats() const;

 private:
  void Run();

  std::unique_ptr<Engine> engine_;
  const ModelConfig config_;
  EngineLoopOptions options_;

  mutable absl::Mutex mu_;
  struct Submission {
    EngineRequest request;
    Callback callback;
  };
  std::vector<Submission> submissions_ ABSL_GUARDED_BY(mu_);
  std::vector<int64_t> cancels_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  EngineStats stats_ ABSL_GUARDED_BY(mu_);
  int64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;

  // Where an external prefill may write: the block table of a request while
  // it awaits its KV. Closed (under its own lock) before the engine can free
  // the blocks, so a late write never lands in another request's memory.
  struct ImportTarget {
    absl::Mutex mu;
    bool open ABSL_GUARDED_BY(mu) = true;
    std::vector<int32_t> table ABSL_GUARDED_BY(mu);
    int64_t tokens = 0;  // Importable positions: the prompt.
  };
  void CloseImport(int64_t request_id);
  // On the loop thread: opens an import for a kv_reserved event, closes it
  // and forgets the request on its final event, and calls its callback.
  void Deliver(const TokenEvent& e);

  mutable absl::Mutex imports_mu_;
  std::map<int64_t, std::shared_ptr<ImportTarget>> imports_ ABSL_GUARDED_BY(imports_mu_);
  std::vector<std::pair<int64_t, SampledToken>> imports_done_ ABSL_GUARDED_BY(mu_);

  // Owned by the loop thread.
  std::map<int64_t, Callback> callbacks_;
  std::map<int64_t, int64_t> prompt_lengths_;
  std::thread thread_;
};

}  // namespace baton

#endif  // BATON_ENGINE_ENGINE_LOOP_H_
