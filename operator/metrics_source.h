// Where the autoscaler's observations come from: each pod's state from its
// Pod object, and the baton_* metrics of the last window either scraped from
// every pod's /metrics (the difference between two scrapes makes the window)
// or queried from a Prometheus HTTP API (rate() over the window, by pod).
//
// Thread-safety: the sources may be used from several threads; the parse
// functions are pure.
#ifndef BATON_OPERATOR_METRICS_SOURCE_H_
#define BATON_OPERATOR_METRICS_SOURCE_H_

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "operator/api_types.h"
#include "operator/http_client.h"
#include "operator/json_util.h"
#include "operator/observation.h"

namespace baton::op {

// One sample of the Prometheus text exposition format.
struct MetricSample {
  std::string name;
  std::map<std::string, std::string> labels;
  double value = 0;
};
absl::StatusOr<std::vector<MetricSample>> ParsePrometheusText(const std::string& text);

// The baton_* numbers of one scrape (counters and histograms cumulative).
struct WorkerMetrics {
  double requests_running = 0;
  double requests_queued = 0;
  double kv_blocks_used = 0;
  double kv_blocks_total = 0;
  double prefill_queue_tokens = 0;
  double prompt_tokens_total = 0;
  double generated_tokens_total = 0;
  WindowHistogram ttft;
  WindowHistogram itl;
};
// Sums each metric over its label sets (histograms by `le`).
WorkerMetrics ExtractWorkerMetrics(const std::vector<MetricSample>& samples);

// A pod's Kubernetes state: name, Ready and for how long, terminating.
PodObservation PodState(const Json& pod, absl::Time now);

// The pods of one pool and how to reach their metrics.
struct PoolQuery {
  std::string ns;
  std::string service;
  Role role = Role::kPrefill;
  int metrics_port = 9090;
  MetricsSpec spec;
};

class MetricsSource {
 public:
  virtual ~MetricsSource() = default;
  // Observations of `pods` (Pod objects), in the same order. A pod whose
  // metrics could not be read has has_metrics = false.
  virtual std::vector<PodObservation> Observe(const PoolQuery& query, const std::vector<Json>& pods,
                                              absl::Time now) = 0;
};

// Dispatches on the spec: Scrape reads http://<podIP>:<metrics port>/metrics
// and keeps the previous scrape of every pod (the window is the time since
// the previous call: one autoscaler interval); Prometheus queries the API
// with rate() over spec.window_seconds.
class DefaultMetricsSource : public MetricsSource {
 public:
  explicit DefaultMetricsSource(absl::Duration timeout = absl::Seconds(2));
  std::vector<PodObservation> Observe(const PoolQuery& query, const std::vector<Json>& pods,
                                      absl::Time now) override;

 private:
  struct Scrape {
    absl::Time time;
    WorkerMetrics metrics;
  };
  std::vector<PodObservation> ObserveByScrape(const PoolQuery& query, const std::vector<Json>& pods,
                                              absl::Time now);
  std::vector<PodObservation> ObserveByPrometheus(const PoolQuery& query,
                                                  const std::vector<Json>& pods, absl::Time now);
  // Runs an instant query; the result vector.
  absl::StatusOr<Json> Query(const std::string& base_url, const std::string& promql) const;

  const absl::Duration timeout_;
  HttpClient http_;
  absl::Mutex mu_;
  std::map<std::string, Scrape> previous_ ABSL_GUARDED_BY(mu_);  // By pod uid.
};

}  // namespace baton::op

#endif  // BATON_OPERATOR_METRICS_SOURCE_H_
