// The autoscaler: a pure function from per-pod observations of the prefill
// and decode pools to the replicas each pool should have, with a reason.
// No I/O and no clock: the caller passes `now` and the state returned by the
// previous call, so that traces replay deterministically in tests.
//
// Per pool and tick (docs/operator.md has the full account):
//   1. Pods that are not Ready, Ready for less than `warmup_seconds`, or
//      terminating are excluded from the signals. A Ready pod without
//      metrics makes the pool hold: missing data never shrinks a pool.
//   2. Zero traffic recommends the minimum.
//   3. Reactive: utilisation u = max(observed/target) over the pool's SLO
//      signals (prefill: TTFT p90; decode: inter-token latency p90 and KV
//      usage). u > 1 + tolerance asks for ceil(n * u) pods, counting pods
//      still starting as capacity already on its way; a pool whose projected
//      utilisation stays <= scale_down_utilization with fewer pods, and that
//      queues nothing, asks for that fewer.
//   4. Throughput floor: never fewer than ceil(demand / capacity per pod):
//      demand is the token rate plus the prefill queue drained in 60 s; the
//      capacity is configured or learned while the pool runs at its SLO.
//   5. Clamp to [min, max]; HPA-style stabilisation windows (the lowest
//      recommendation of the scale-up window, the highest of the scale-down
//      window) and step limits per period.
//   6. GPU budget: the GPUs of all pods, those starting and draining
//      included, never exceed it. A pool over its SLO may take GPUs from an
//      idle one; the idle one shrinks first and the other grows only once
//      the drained pods are gone.
//   7. Scale-down names the least-loaded pods as victims.
//
// Thread-safety: Autoscale() is a pure function; the structs are values.
#ifndef BATON_OPERATOR_AUTOSCALER_H_
#define BATON_OPERATOR_AUTOSCALER_H_

#include <deque>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/time/time.h"
#include "operator/observation.h"

namespace baton::op {

// One direction's stabilisation window and step limit. The step limit is
// HPA's pair of policies with selectPolicy Max: per `period_seconds`, change
// by at most max(max_pods, max_percent % of the replicas at the period's
// start); a policy set to 0 is off, both off means unlimited.
struct StepPolicy {
  double stabilization_seconds = 0;
  int max_pods = 0;
  double max_percent = 0;
  double period_seconds = 15;
};

struct PoolPolicy {
  int min_replicas = 1;
  int max_replicas = 8;
  double gpus_per_replica = 0;  // Counted against the GPU budget.
  // Tokens per second one pod serves at the SLO (prefill: prompt tokens,
  // decode: generated tokens). 0: learned online.
  double tokens_per_second_per_replica = 0;
};

struct AutoscalingPolicy {
  PoolPolicy prefill;
  PoolPolicy decode;
  double ttft_p90_seconds = 0.5;
  double itl_p90_seconds = 0.05;
  double kv_usage = 0.8;  // Fraction of KV blocks in use.
  double gpu_budget = 0;  // GPUs across both pools; 0: no budget.
  double tolerance = 0.1;
  // Scale down only to a count whose projected utilisation stays at or below
  // this (the gap to 1 + tolerance is the hysteresis against flapping).
  double scale_down_utilization = 0.7;
  double warmup_seconds = 30;
  StepPolicy scale_up{0, 4, 100, 15};
  StepPolicy scale_down{300, 1, 0, 60};
};

enum class Pool { kPrefill, kDecode };
const char* PoolName(Pool pool);

struct PoolInput {
  int current_replicas = 0;  // The Deployment's spec.replicas.
  std::vector<PodObservation> pods;
};

struct AutoscalerInput {
  absl::Time now;
  PoolInput prefill;
  PoolInput decode;
};

// What a decision was based on; reported in status and metrics.
struct PoolSignals {
  int warm_pods = 0;
  int starting_pods = 0;
  int terminating_pods = 0;
  std::optional<double> latency_p90;  // TTFT (prefill) or ITL (decode).
  std::optional<double> kv_usage;     // Decode only.
  double tokens_per_second = 0;
  double requests_running = 0;
  double requests_queued = 0;
  double queued_tokens = 0;           // Prefill: prompt tokens waiting.
  std::optional<double> utilization;  // max(observed / target).
  int throughput_floor = 0;
};

struct PoolDecision {
  int current = 0;
  int desired = 0;
  std::string reason;   // CamelCase, e.g. "TTFTAboveTarget".
  std::string message;  // For people.
  bool metrics_available = true;
  // Non-empty when a limit cut the recommendation: TooManyReplicas,
  // TooFewReplicas, ScaleUpLimit, ScaleDownLimit or GPUBudget.
  std::string limited_reason;
  std::vector<std::string> victims;  // Pods to remove first, least loaded first.
  PoolSignals signals;
};

// The memory the stabilisation windows, step limits and learned capacity
// need between ticks.
struct PoolHistory {
  std::deque<std::pair<absl::Time, int>> recommendations;
  std::deque<std::pair<absl::Time, int>> changes;  // Replica deltas decided.
  double learned_tokens_per_second = 0;
};

struct AutoscalerState {
  PoolHistory prefill;
  PoolHistory decode;
};

struct AutoscalerResult {
  PoolDecision prefill;
  PoolDecision decode;
  AutoscalerState state;
};

AutoscalerResult Autoscale(const AutoscalingPolicy& policy, const AutoscalerInput& input,
                           const AutoscalerState& state);

// The smallest and largest replica counts the step limits allow now, given
// the changes made within the policy periods.
int ScaleUpLimit(const StepPolicy& policy, const std::deque<std::pair<absl::Time, int>>& changes,
                 absl::Time now, int current);
int ScaleDownLimit(const StepPolicy& policy, const std::deque<std::pair<absl::Time, int>>& changes,
                   absl::Time now, int current);

}  // namespace baton::op

#endif  // BATON_OPERATOR_AUTOSCALER_H_
