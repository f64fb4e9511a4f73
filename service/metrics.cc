#include "service/metrics.h"

#include <exception>

#include "absl/strings/str_cat.h"
#include "prometheus/collectable.h"
#include "prometheus/metric_family.h"

namespace baton {
namespace {

// Reads the engine's gauges at scrape time, so they are never stale.
class EngineStatsCollector : public prometheus::Collectable {
 public:
  explicit EngineStatsCollector(std::function<EngineStats()> stats) : stats_(std::move(stats)) {}

  std::vector<prometheus::MetricFamily> Collect() const override {
    const EngineStats s = stats_();
    std::vector<prometheus::MetricFamily> families;
    auto gauge = [&](const char* name, const char* help, double value) {
      prometheus::MetricFamily f;
      f.name = name;
      f.help = help;
      f.type = prometheus::MetricType::Gauge;
      prometheus::ClientMetric m;
      m.gauge.value = value;
      f.metric.push_back(m);
      families.push_back(std::move(f));
    };
    gauge("baton_requests_running", "Requests in the running batch.", s.running);
    gauge("baton_requests_queued", "Requests waiting to join the running batch.", s.waiting);
    gauge("baton_kv_blocks_used", "KV cache blocks held by requests.", s.kv_blocks_used);
    gauge("baton_kv_blocks_total", "KV cache blocks in all.", s.kv_blocks_total);
    gauge("baton_prefill_queue_tokens", "Prompt tokens admitted or queued but not yet computed.",
          s.queued_prompt_tokens);
    prometheus::MetricFamily preempt;
    preempt.name = "baton_preemptions_total";
    preempt.help = "Requests preempted (recomputed later) because KV ran out.";
    preempt.type = prometheus::MetricType::Counter;
    prometheus::ClientMetric m;
    m.counter.value = static_cast<double>(s.preemptions);
    preempt.metric.push_back(m);
    families.push_back(std::move(preempt));
    return families;
  }

 private:
  std::function<EngineStats()> stats_;
};

prometheus::Histogram::BucketBoundaries LatencyBuckets() {
  return {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1,  0.25,
          0.5,   0.75,   1.0,   2.5,  5.0,   10.0, 20.0,  40.0, 80.0};
}

}  // namespace

absl::StatusOr<std::unique_ptr<ServiceMetrics>> ServiceMetrics::Start(
    const std::string& address, std::function<EngineStats()> engine_stats) {
  auto m = std::unique_ptr<ServiceMetrics>(new ServiceMetrics());
  m->registry_ = std::make_shared<prometheus::Registry>();
  prometheus::Registry& r = *m->registry_;
  m->ttft_ = &prometheus::BuildHistogram()
                  .Name("baton_time_to_first_token_seconds")
                  .Help("Time from request arrival to its first generated token.")
                  .Register(r)
                  .Add({}, LatencyBuckets());
  m->itl_ = &prometheus::BuildHistogram()
                 .Name("baton_inter_token_latency_seconds")
                 .Help("Time between consecutive generated tokens of a request.")
                 .Register(r)
                 .Add({}, prometheus::Histogram::BucketBoundaries{
                              0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075,
                              0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5});
  m->e2e_ = &prometheus::BuildHistogram()
                 .Name("baton_e2e_request_latency_seconds")
                 .Help("Time from request arrival to its last token.")
                 .Register(r)
                 .Add({}, LatencyBuckets());
  m->step_duration_ = &prometheus::BuildHistogram()
                           .Name("baton_engine_step_duration_seconds")
                           .Help("Duration of one engine step (one batched forward pass).")
                           .Register(r)
                           .Add({}, LatencyBuckets());
  m->step_tokens_ = &prometheus::BuildHistogram()
                         .Name("baton_engine_step_tokens")
                         .Help("Tokens computed per engine step (prefill chunks and decodes).")
                         .Register(r)
                         .Add({}, prometheus::Histogram::BucketBoundaries{
                                      1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096});
  m->step_sequences_ =
      &prometheus::BuildHistogram()
           .Name("baton_engine_step_batch_size")
           .Help("Sequences per engine step.")
           .Register(r)
           .Add({}, prometheus::Histogram::BucketBoundaries{1, 2, 4, 8, 16, 32, 64, 128, 256});
  m->prompt_tokens_ = &prometheus::BuildCounter()
                           .Name("baton_prompt_tokens_total")
                           .Help("Prompt tokens of admitted requests.")
                           .Register(r)
                           .Add({});
  m->generated_tokens_ = &prometheus::BuildCounter()
                              .Name("baton_generated_tokens_total")
                              .Help("Tokens generated and sent to clients.")
                              .Register(r)
                              .Add({});
  m->requests_ = &prometheus::BuildCounter()
                      .Name("baton_requests_total")
                      .Help("Finished requests by gRPC status code.")
                      .Register(r);
  m->kv_bytes_ = &prometheus::BuildCounter()
                      .Name("baton_kv_transfer_bytes_total")
                      .Help("KV cache bytes moved between prefill and decode workers.")
                      .Register(r)
                      .Add({});
  m->kv_seconds_ = &prometheus::BuildHistogram()
                        .Name("baton_kv_transfer_seconds")
                        .Help("Duration of one request's KV transfer.")
                        .Register(r)
                        .Add({}, LatencyBuckets());
  m->kv_failures_ = &prometheus::BuildCounter()
                         .Name("baton_kv_transfer_failures_total")
                         .Help("KV transfers that failed, by reason.")
                         .Register(r);
  m->prefill_path_ = &prometheus::BuildCounter()
                          .Name("baton_decode_prefill_total")
                          .Help("Requests a decode worker admitted, by where they were prefilled.")
                          .Register(r);
  m->routed_ = &prometheus::BuildCounter()
                    .Name("baton_router_worker_requests_total")
                    .Help("Requests the router sent to each worker.")
                    .Register(r);
  m->retries_ = &prometheus::BuildCounter()
                     .Name("baton_router_retries_total")
                     .Help("Requests the router retried on another prefill worker.")
                     .Register(r)
                     .Add({});
  m->dispatch_ = &prometheus::BuildCounter()
                      .Name("baton_router_prefill_dispatch_total")
                      .Help("Requests the router routed, by how their prompt was prefilled.")
                      .Register(r);
  // prometheus-cpp reports a busy port by throwing; keep it inside.
  try {
    m->exposer_ = std::make_unique<prometheus::Exposer>(address);
  } catch (const std::exception& e) {
    return absl::UnavailableError(
        absl::StrCat("cannot serve metrics on ", address, ": ", e.what()));
  }
  m->exposer_->RegisterCollectable(m->registry_);
  if (engine_stats) {
    m->engine_collector_ = std::make_shared<EngineStatsCollector>(std::move(engine_stats));
    m->exposer_->RegisterCollectable(m->engine_collector_);
  }
  const auto ports = m->exposer_->GetListeningPorts();
  m->port_ = ports.empty() ? 0 : ports.front();
  return m;
}

ServiceMetrics::~ServiceMetrics() = default;

void ServiceMetrics::ObserveStep(double seconds, int64_t tokens, int64_t sequences) {
  step_duration_->Observe(seconds);
  step_tokens_->Observe(static_cast<double>(tokens));
  step_sequences_->Observe(static_cast<double>(sequences));
}

void ServiceMetrics::CountRequest(const std::string& code) {
  requests_->Add({{"code", code}}).Increment();
}

void ServiceMetrics::CountKvTransfer(uint64_t bytes, double seconds) {
  kv_bytes_->Increment(static_cast<double>(bytes));
  kv_seconds_->Observe(seconds);
}

void ServiceMetrics::CountKvTransferFailure(const std::string& reason) {
  kv_failures_->Add({{"reason", reason}}).Increment();
}

void ServiceMetrics::CountPrefillPath(const std::string& path) {
  prefill_path_->Add({{"path", path}}).Increment();
}

void ServiceMetrics::CountRoutedRequest(const std::string& role, const std::string& worker) {
  routed_->Add({{"role", role}, {"worker", worker}}).Increment();
}

void ServiceMetrics::CountRetry() { retries_->Increment(); }

void ServiceMetrics::CountPrefillDispatch(const std::string& mode) {
  dispatch_->Add({{"mode", mode}}).Increment();
}

}  // namespace baton
