// `baton router`: the public baton.v1.Inference endpoint in front of prefill
// and decode pools. It resolves the pools' names periodically (a Kubernetes
// headless Service gives one address per pod), probes each worker's health
// and load, sends decode work to the worker with the most free KV and
// prefill work to the one with the fewest queued tokens, relays the stream,
// and retries on another prefill worker when a prefill fails before any
// token was sent. When the decode worker's last report shows room for the
// prompt, the router calls the prefill worker itself, at the same time as
// the decode worker, instead of leaving that call to the decode worker: the
// prefill starts one call earlier.
//
// Thread-safety: WorkerPool and RouterService are thread-safe.
#ifndef BATON_SERVICE_ROUTER_H_
#define BATON_SERVICE_ROUTER_H_

#include <atomic>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "baton/internal/v1/worker.grpc.pb.h"
#include "baton/v1/inference.grpc.pb.h"
#include "service/channel_pool.h"
#include "service/metrics.h"

namespace baton {

// Splits "a:1,b:2" into targets; errors name the bad entry.
absl::StatusOr<std::vector<std::string>> ParseTargets(const std::string& list,
                                                      const std::string& flag);

class WorkerPool {
 public:
  enum class Role { kPrefill, kDecode };
  WorkerPool(Role role, std::vector<std::string> targets, ChannelPool* channels,
             std::string secret);

  // Re-resolves the targets and probes every worker (health and load).
  // Blocking: run on the router's probe thread.
  void Refresh(bool resolve);

  // The best healthy worker not in `exclude`, or nothing.
  std::optional<std::string> Pick(const std::set<std::string>& exclude);
  // Whether prefill worker `address` reported that it encodes text prompts.
  bool AcceptsText(const std::string& address) const;
  // Counts work sent to `address` (a request of `tokens` prompt tokens) until
  // the next probe reports it.
  void NoteAssigned(const std::string& address, int64_t tokens);

  // Where a decode worker takes KV, and the model it serves.
  struct DataChannel {
    std::string address;
    std::string fingerprint;
  };
  // Decode worker `address`'s data channel if its last report, less the work
  // assigned since, shows that it will reserve the blocks of a prompt of at
  // most `tokens` tokens at once: nothing queued, a free place in the running
  // batch, and free blocks for the prompt plus one per running sequence.
  // Else nothing (unknown worker, or one that does not report these). Either
  // way the request is counted as assigned (NoteAssigned), under the same
  // lock, so that concurrent requests do not all claim the same room.
  std::optional<DataChannel> AssignIfRoom(const std::string& address, int64_t tokens);
  size_t healthy() const;
  Role role() const { return role_; }

 private:
  struct Worker {
    bool healthy = false;
    int64_t queued_tokens = 0;
    int64_t queued_requests = 0;
    int64_t kv_free = 0;
    int64_t running = 0;
    int64_t max_running = 0;
    int64_t block_tokens = 0;
    std::string data_address;  // Decode workers only.
    std::string fingerprint;
    bool accepts_text = false;  // Prefill workers only.
    // Assigned since the last probe: prefill, tokens; decode, requests and
    // their prompt tokens.
    int64_t pending = 0;
    int64_t pending_tokens = 0;
  };

  // Counts a request of `tokens` prompt tokens as assigned to `w`.
  void Charge(Worker& w, int64_t tokens) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const Role role_;
  const std::vector<std::string> targets_;
  ChannelPool* channels_;
  const std::string secret_;
  mutable absl::Mutex mu_;
  std::map<std::string, Worker> workers_ ABSL_GUARDED_BY(mu_);
};

struct RouterOptions {
  int64_t local_prefill_threshold = 0;
  int max_attempts = 3;
  std::string secret;
  // Call the prefill worker alongside the decode worker when it surely has
  // room (false: the decode worker always makes that call).
  bool parallel_prefill = true;
};

class RouterService final : public v1::Inference::CallbackService {
 public:
  RouterService(WorkerPool* prefill, WorkerPool* decode, ChannelPool* channels,
                ServiceMetrics* metrics, RouterOptions options);

  grpc::ServerWriteReactor<v1::GenerateResponse>* Generate(
      grpc::CallbackServerContext* context, const v1::GenerateRequest* request) override;
  grpc::ServerUnaryReactor* GetModelInfo(grpc::CallbackServerContext* context,
                                         const v1::GetModelInfoRequest* request,
                                         v1::ModelInfo* response) override;
  grpc::ServerUnaryReactor* Tokenize(grpc::CallbackServerContext* context,
                                     const v1::TokenizeRequest* request,
                                     v1::TokenizeResponse* response) override;

  void StartDraining() { draining_.store(true); }
  int active_streams() const { return active_.load(); }

 private:
  class Relay;

  WorkerPool* prefill_;
  WorkerPool* decode_;
  ChannelPool* channels_;
  ServiceMetrics* metrics_;
  RouterOptions options_;
  std::atomic<bool> draining_{false};
  std::atomic<int> active_{0};
  // Seeds and transfer ids of parallel dispatches: seeded from the OS once,
  // with 128 bits (two routers must not draw the same transfer ids).
  absl::Mutex random_mu_;
  std::mt19937_64 random_ ABSL_GUARDED_BY(random_mu_){SeedFromDevice()};
  static std::mt19937_64 SeedFromDevice() {
    std::random_device device;
    std::seed_seq seed{device(), device(), device(), device()};
    return std::mt19937_64(seed);
  }
  uint64_t RandomBits() {
    absl::MutexLock lock(&random_mu_);
    return random_();
  }
};

}  // namespace baton

#endif  // BATON_SERVICE_ROUTER_H_
