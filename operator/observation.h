// What the autoscaler sees of one worker pod: its Kubernetes state plus the
// baton_* metrics it exported over the last window. Produced by a
// MetricsSource (scrape or Prometheus), consumed by the pure Autoscale().
//
// Thread-safety: plain values; no internal synchronization.
#ifndef BATON_OPERATOR_OBSERVATION_H_
#define BATON_OPERATOR_OBSERVATION_H_

#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace baton::op {

// A Prometheus histogram restricted to a window: for each upper bound `le`
// (ascending, the last one +Inf), the number of observations <= le made in
// the window. Merging adds counts bound by bound, as `sum by (le)` does.
class WindowHistogram {
 public:
  WindowHistogram() = default;
  // `buckets` are (le, cumulative count) pairs in any order.
  explicit WindowHistogram(std::vector<std::pair<double, double>> buckets);

  const std::vector<std::pair<double, double>>& buckets() const { return buckets_; }
  double count() const { return buckets_.empty() ? 0.0 : buckets_.back().second; }
  bool empty() const { return count() <= 0.0; }

  // Adds `other` bound by bound; a bound that only one side has takes the
  // other side's count at the next lower bound it has (cumulative counts).
  void Merge(const WindowHistogram& other);
  // The difference `this - earlier` of two cumulative snapshots of one
  // series; negative differences (a process restart) yield `this` unchanged.
  WindowHistogram Since(const WindowHistogram& earlier) const;
  // The q-quantile (0 < q < 1) with Prometheus' histogram_quantile()
  // interpolation; nullopt when the window holds no observation.
  std::optional<double> Quantile(double q) const;

 private:
  std::vector<std::pair<double, double>> buckets_;
};

struct PodObservation {
  std::string name;
  // Kubernetes state.
  bool ready = false;
  bool terminating = false;  // deletionTimestamp set: draining, still holds its GPUs.
  double ready_seconds = 0;  // how long the pod has been Ready; 0 when not Ready.
  // Metrics. `has_metrics`: the scrape or query of this pod answered.
  // `has_window`: the rates and histograms below cover a full window (the
  // first scrape of a pod gives gauges only).
  bool has_metrics = false;
  bool has_window = false;
  double requests_running = 0;
  double requests_queued = 0;
  double kv_blocks_used = 0;
  double kv_blocks_total = 0;
  double prefill_queue_tokens = 0;
  double prompt_tokens_per_second = 0;
  double generated_tokens_per_second = 0;
  WindowHistogram ttft;  // baton_time_to_first_token_seconds in the window.
  WindowHistogram itl;   // baton_inter_token_latency_seconds in the window.
};

}  // namespace baton::op

#endif  // BATON_OPERATOR_OBSERVATION_H_
