#include "operator/operator_metrics.h"

#include "prometheus/text_serializer.h"

namespace baton::op {

OperatorMetrics::OperatorMetrics() : registry_(std::make_shared<prometheus::Registry>()) {
  prometheus::Registry& r = *registry_;
  reconciles_ = &prometheus::BuildCounter()
                     .Name("baton_operator_reconcile_total")
                     .Help("Reconciles of BatonServices by result (success, error, conflict)")
                     .Register(r);
  reconcile_seconds_ = &prometheus::BuildHistogram()
                            .Name("baton_operator_reconcile_duration_seconds")
                            .Help("Time one reconcile took")
                            .Register(r)
                            .Add({}, prometheus::Histogram::BucketBoundaries{
                                         0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10});
  queue_depth_ = &prometheus::BuildGauge()
                      .Name("baton_operator_queue_depth")
                      .Help("Keys waiting in the work queue")
                      .Register(r)
                      .Add({});
  leader_ = &prometheus::BuildGauge()
                 .Name("baton_operator_leader")
                 .Help("1 while this replica holds the leader lease")
                 .Register(r)
                 .Add({});
  desired_ = &prometheus::BuildGauge()
                  .Name("baton_operator_desired_replicas")
                  .Help("Replicas the autoscaler wants per BatonService and pool")
                  .Register(r);
  utilization_ = &prometheus::BuildGauge()
                      .Name("baton_operator_pool_utilization")
                      .Help("The autoscaler's utilisation (observed / target) per pool")
                      .Register(r);
  decisions_ = &prometheus::BuildCounter()
                    .Name("baton_operator_scaling_decisions_total")
                    .Help("Replica changes decided, by pool, direction and reason")
                    .Register(r);
}

void OperatorMetrics::CountReconcile(const std::string& result, absl::Duration took) {
  reconciles_->Add({{"result", result}}).Increment();
  reconcile_seconds_->Observe(absl::ToDoubleSeconds(took));
}

void OperatorMetrics::SetQueueDepth(size_t depth) { queue_depth_->Set(static_cast<double>(depth)); }

void OperatorMetrics::SetLeader(bool leader) { leader_->Set(leader ? 1 : 0); }

void OperatorMetrics::RecordAutoscale(const std::string& ns, const std::string& name,
                                      const AutoscalerResult& result) {
  for (const PoolDecision* d : {&result.prefill, &result.decode}) {
    const std::string pool = d == &result.prefill ? "prefill" : "decode";
    const prometheus::Labels labels = {{"namespace", ns}, {"batonservice", name}, {"pool", pool}};
    desired_->Add(labels).Set(d->desired);
    utilization_->Add(labels).Set(d->signals.utilization.value_or(0));
    if (d->desired != d->current) {
      prometheus::Labels l = labels;
      l["direction"] = d->desired > d->current ? "up" : "down";
      l["reason"] = d->reason;
      decisions_->Add(l).Increment();
    }
  }
}

std::string OperatorMetrics::Render() const {
  return prometheus::TextSerializer().Serialize(registry_->Collect());
}

absl::StatusOr<std::unique_ptr<HttpServer>> OperatorMetrics::Serve(const std::string& host,
                                                                   int port,
                                                                   std::function<bool()> ready) {
  return HttpServer::Start(
      host, port, [this, ready](const HttpRequest& req, HttpResponseWriter& w) {
        if (req.method != "GET") {
          w.Send(405, "text/plain", "method not allowed\n");
        } else if (req.path == "/metrics") {
          w.Send(200, "text/plain; version=0.0.4", Render());
        } else if (req.path == "/healthz") {
          w.Send(200, "text/plain", "ok\n");
        } else if (req.path == "/readyz") {
          const bool ok = ready == nullptr || ready();
          w.Send(ok ? 200 : 503, "text/plain", ok ? "ok\n" : "caches not synced\n");
        } else {
          w.Send(404, "text/plain", "not found\n");
        }
      });
}

}  // namespace baton::op
