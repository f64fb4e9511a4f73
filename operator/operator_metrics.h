// The operator's own observability: Prometheus metrics (reconciles, the work
// queue, watches, leadership, and the autoscaler's decisions and signals per
// BatonService and pool) and the HTTP endpoints /metrics, /healthz (the
// process is alive) and /readyz (caches synced).
//
// Thread-safety: every method may be called from any thread.
#ifndef BATON_OPERATOR_OPERATOR_METRICS_H_
#define BATON_OPERATOR_OPERATOR_METRICS_H_

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "operator/autoscaler.h"
#include "operator/http_server.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace baton::op {

class OperatorMetrics {
 public:
  OperatorMetrics();

  // "success", "error" or "conflict".
  void CountReconcile(const std::string& result, absl::Duration took);
  void SetQueueDepth(size_t depth);
  void SetLeader(bool leader);
  void RecordAutoscale(const std::string& ns, const std::string& name,
                       const AutoscalerResult& result);

  // The text exposition of every metric.
  std::string Render() const;

  // Serves /metrics, /healthz and /readyz on host:port (0: the OS chooses).
  // `ready` answers /readyz.
  absl::StatusOr<std::unique_ptr<HttpServer>> Serve(const std::string& host, int port,
                                                    std::function<bool()> ready);

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Counter>* reconciles_;
  prometheus::Histogram* reconcile_seconds_;
  prometheus::Gauge* queue_depth_;
  prometheus::Gauge* leader_;
  prometheus::Family<prometheus::Gauge>* desired_;
  prometheus::Family<prometheus::Gauge>* utilization_;
  prometheus::Family<prometheus::Counter>* decisions_;
};

}  // namespace baton::op

#endif  // BATON_OPERATOR_OPERATOR_METRICS_H_
