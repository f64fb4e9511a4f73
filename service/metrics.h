// Prometheus metrics of a baton process, served at /metrics. The names are a
// contract with the autoscaler and the dashboards: add, never rename.
//
// Thread-safety: every member may be used from any thread.
#ifndef BATON_SERVICE_METRICS_H_
#define BATON_SERVICE_METRICS_H_

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "engine/engine.h"
#include "prometheus/counter.h"
#include "prometheus/exposer.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace baton {

class ServiceMetrics {
 public:
  // Serves /metrics on `address` ("host:port", port 0 lets the OS choose).
  // `engine_stats` is read at each scrape for the gauges (may be null for
  // processes without an engine).
  static absl::StatusOr<std::unique_ptr<ServiceMetrics>> Start(
      const std::string& address, std::function<EngineStats()> engine_stats);
  ~ServiceMetrics();

  int port() const { return port_; }
  prometheus::Registry& registry() { return *registry_; }

  void ObserveTimeToFirstToken(double seconds) { ttft_->Observe(seconds); }
  void ObserveInterTokenLatency(double seconds) { itl_->Observe(seconds); }
  void ObserveRequestLatency(double seconds) { e2e_->Observe(seconds); }
  void ObserveStep(double seconds, int64_t tokens, int64_t sequences);
  void AddPromptTokens(int64_t n) { prompt_tokens_->Increment(static_cast<double>(n)); }
  void AddGeneratedTokens(int64_t n) { generated_tokens_->Increment(static_cast<double>(n)); }
  // `code` is the gRPC status code name, e.g. "OK", "INVALID_ARGUMENT".
  void CountRequest(const std::string& code);

  // Disaggregation.
  void CountKvTransfer(uint64_t bytes, double seconds);
  void CountKvTransferFailure(const std::string& reason);
  // Where a decode worker's request was prefilled: "local" or "remote".
  void CountPrefillPath(const std::string& path);
  // Router: requests sent to a worker, and retries on another prefill worker.
  void CountRoutedRequest(const std::string& role, const std::string& worker);
  void CountRetry();
  // How the router had a prompt prefilled: "parallel" (it called the prefill
  // worker alongside the decode worker), "via_decode" (the decode worker
  // called it) or "local" (no prefill worker: the decode worker prefills).
  void CountPrefillDispatch(const std::string& mode);

 private:
  ServiceMetrics() = default;

  std::shared_ptr<prometheus::Registry> registry_;
  std::shared_ptr<prometheus::Collectable> engine_collector_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  int port_ = 0;
  prometheus::Histogram* ttft_ = nullptr;
  prometheus::Histogram* itl_ = nullptr;
  prometheus::Histogram* e2e_ = nullptr;
  prometheus::Histogram* step_duration_ = nullptr;
  prometheus::Histogram* step_tokens_ = nullptr;
  prometheus::Histogram* step_sequences_ = nullptr;
  prometheus::Counter* prompt_tokens_ = nullptr;
  prometheus::Counter* generated_tokens_ = nullptr;
  prometheus::Family<prometheus::Counter>* requests_ = nullptr;
  prometheus::Counter* kv_bytes_ = nullptr;
  prometheus::Histogram* kv_seconds_ = nullptr;
  prometheus::Family<prometheus::Counter>* kv_failures_ = nullptr;
  prometheus::Family<prometheus::Counter>* prefill_path_ = nullptr;
  prometheus::Family<prometheus::Counter>* routed_ = nullptr;
  prometheus::Counter* retries_ = nullptr;
  prometheus::Family<prometheus::Counter>* dispatch_ = nullptr;
};

}  // namespace baton

#endif  // BATON_SERVICE_METRICS_H_
