#include "operator/autoscaler.h"

#include <algorithm>
#include <climits>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace baton::op {
namespace {

// Guards ceil() against values like 2.0000000001 that arithmetic produces.
int CeilInt(double x) { return static_cast<int>(std::ceil(x - 1e-9)); }
int FloorInt(double x) { return static_cast<int>(std::floor(x + 1e-9)); }

// Latency far above its target says the pool is saturated, not by how much:
// one decision at most doubles the warm pods (the step limits cap it too).
constexpr double kMaxStepRatio = 2.0;
// Prompt tokens queued in prefill count as demand to be served within this
// many seconds, so that a backlog raises the throughput floor.
constexpr double kQueueDrainSeconds = 60.0;

struct Analysis {
  PoolSignals signals;
  int recommendation = 0;
  std::string reason;
  std::string message;
  bool metrics_available = true;
  std::string limited_reason;
  // The fewest pods the pool itself accepts now (its floor, minimum and
  // projected utilisation); only meaningful when `can_give` is set.
  int fewest = 0;
  bool can_give = false;  // Idle enough to lend GPUs to the other pool.
  double pressure = 0;    // Utilisation, for the budget's priority.
  double learned_tokens_per_second = 0;
};

int LivePods(const PoolInput& in, bool terminating) {
  int n = 0;
  for (const PodObservation& p : in.pods) n += p.terminating == terminating ? 1 : 0;
  return n;
}

Analysis Analyze(Pool pool, const AutoscalingPolicy& policy, const PoolPolicy& pp,
                 const PoolInput& in, const PoolHistory& history) {
  Analysis a;
  a.learned_tokens_per_second = history.learned_tokens_per_second;
  const int cur = in.current_replicas;
  std::vector<const PodObservation*> warm;
  std::vector<std::string> silent;
  for (const PodObservation& p : in.pods) {
    if (p.terminating) {
      ++a.signals.terminating_pods;
    } else if (!p.ready || p.ready_seconds < policy.warmup_seconds) {
      ++a.signals.starting_pods;
    } else {
      ++a.signals.warm_pods;
      warm.push_back(&p);
      if (!p.has_metrics) silent.push_back(p.name);
    }
  }
  auto hold = [&](std::string reason, std::string message) {
    a.recommendation = std::clamp(cur, pp.min_replicas, pp.max_replicas);
    a.reason = std::move(reason);
    a.message = std::move(message);
  };
  if (!silent.empty()) {
    a.metrics_available = false;
    hold("MetricsMissing", absl::StrCat("no metrics from ", absl::StrJoin(silent, ", "),
                                        ": holding at ", cur, " replicas"));
    return a;
  }
  if (warm.empty()) {
    hold("PodsStarting", absl::StrCat("no pod has been ready for ", policy.warmup_seconds,
                                      " s yet: holding at ", cur, " replicas"));
    return a;
  }
  std::vector<const PodObservation*> measured;
  for (const PodObservation* p : warm) {
    if (p->has_window) measured.push_back(p);
  }
  if (measured.empty()) {
    hold("MetricsWarmingUp", "the first scrape gives no rates yet: holding");
    return a;
  }

  // Signals over the pods with a full window.
  WindowHistogram latency;
  double kv_used = 0, kv_total = 0;
  PoolSignals& s = a.signals;
  for (const PodObservation* p : measured) {
    latency.Merge(pool == Pool::kPrefill ? p->ttft : p->itl);
    kv_used += p->kv_blocks_used;
    kv_total += p->kv_blocks_total;
    s.tokens_per_second +=
        pool == Pool::kPrefill ? p->prompt_tokens_per_second : p->generated_tokens_per_second;
    s.requests_running += p->requests_running;
    s.requests_queued += p->requests_queued;
    if (pool == Pool::kPrefill) s.queued_tokens += p->prefill_queue_tokens;
  }
  s.latency_p90 = latency.Quantile(0.9);
  if (pool == Pool::kDecode && kv_total > 0) s.kv_usage = kv_used / kv_total;

  const int n = static_cast<int>(measured.size());
  const double capacity = pp.tokens_per_second_per_replica > 0 ? pp.tokens_per_second_per_replica
                                                               : history.learned_tokens_per_second;
  if (capacity > 0) {
    s.throughput_floor =
        CeilInt((s.tokens_per_second + s.queued_tokens / kQueueDrainSeconds) / capacity);
  }
  const int floor = std::max(pp.min_replicas, s.throughput_floor);

  if (s.tokens_per_second <= 0 && s.requests_running <= 0 && s.requests_queued <= 0 &&
      s.queued_tokens <= 0) {
    a.recommendation = pp.min_replicas;
    a.reason = "NoTraffic";
    a.message = "no requests in the window: going to the minimum";
    a.fewest = pp.min_replicas;
    a.can_give = true;
    s.utilization = 0.0;
    return a;
  }

  // Reactive utilisation: the worst SLO signal relative to its target.
  const char* worst = nullptr;
  std::string worst_text;
  auto consider = [&](std::optional<double> value, double target, const char* name,
                      const char* what) {
    if (!value || target <= 0) return;
    const double ratio = *value / target;
    if (!s.utilization || ratio > *s.utilization) {
      s.utilization = ratio;
      worst = name;
      worst_text = absl::StrFormat("%s %.3g (target %.3g)", what, *value, target);
    }
  };
  if (pool == Pool::kPrefill) {
    consider(s.latency_p90, policy.ttft_p90_seconds, "TTFT", "TTFT p90");
  } else {
    consider(s.latency_p90, policy.itl_p90_seconds, "ITL", "inter-token latency p90");
    consider(s.kv_usage, policy.kv_usage, "KVUsage", "KV usage");
  }

  int reactive = cur;
  if (!s.utilization) {
    a.reason = "NoLatencySamples";
    a.message = "traffic but no completed latency sample in the window: holding";
  } else {
    const double u = *s.utilization;
    a.pressure = u;
    // The capacity learned at the SLO: the per-pod token rate of windows in
    // which the pool ran near its target, excluding pods still warming up.
    if (pp.tokens_per_second_per_replica <= 0 && u >= policy.scale_down_utilization &&
        u <= 1 + policy.tolerance && s.tokens_per_second > 0) {
      const double sample = s.tokens_per_second / n;
      a.learned_tokens_per_second = history.learned_tokens_per_second > 0
                                        ? 0.7 * history.learned_tokens_per_second + 0.3 * sample
                                        : sample;
    }
    const int fewest = std::max(1, CeilInt(n * u / policy.scale_down_utilization));
    if (u > 1 + policy.tolerance) {
      // Pods still starting are capacity already on its way (the pending
      // guard): ask only for what exceeds the replicas already requested.
      reactive = std::max(cur, CeilInt(n * std::min(u, kMaxStepRatio)));
      a.reason = absl::StrCat(worst, "AboveTarget");
      a.message = absl::StrCat(worst_text, " on ", n, " pods: ", reactive, " needed");
    } else if (fewest < n && s.requests_queued <= 0 && s.starting_pods == 0) {
      reactive = std::min(cur, fewest);
      a.reason = "BelowTarget";
      a.message = absl::StrCat(worst_text, " on ", n, " pods: ", fewest, " suffice");
    } else {
      a.reason = "WithinTolerance";
      a.message = absl::StrCat(worst_text, " on ", n, " pods");
    }
    a.fewest = std::max(floor, fewest);
    a.can_give = u < policy.scale_down_utilization && s.requests_queued <= 0;
  }

  a.recommendation = reactive;
  if (a.recommendation < s.throughput_floor) {
    a.recommendation = s.throughput_floor;
    if (a.recommendation > cur) {
      a.reason = "ThroughputFloor";
      a.message = absl::StrFormat("%.0f tokens/s at %.0f per pod needs %d pods",
                                  s.tokens_per_second, capacity, s.throughput_floor);
    }
  }
  return a;
}

bool InWindow(absl::Time t, absl::Time now, double seconds) {
  return t > now - absl::Seconds(seconds) || (seconds <= 0 && t == now);
}

void Trim(PoolHistory& h, absl::Time now, double keep_seconds) {
  while (!h.recommendations.empty() &&
         !InWindow(h.recommendations.front().first, now, keep_seconds)) {
    h.recommendations.pop_front();
  }
  while (!h.changes.empty() && !InWindow(h.changes.front().first, now, keep_seconds)) {
    h.changes.pop_front();
  }
}

struct Stage {
  Pool pool;
  const PoolPolicy* pp;
  const PoolInput* in;
  PoolHistory* history;
  Analysis analysis;
  PoolDecision decision;
  int target = 0;
};

}  // namespace

const char* PoolName(Pool pool) { return pool == Pool::kPrefill ? "prefill" : "decode"; }

int ScaleUpLimit(const StepPolicy& policy, const std::deque<std::pair<absl::Time, int>>& changes,
                 absl::Time now, int current) {
  if (policy.max_pods <= 0 && policy.max_percent <= 0) return INT_MAX;
  int added = 0;
  for (const auto& [t, delta] : changes) {
    if (delta > 0 && InWindow(t, now, policy.period_seconds)) added += delta;
  }
  const int start = std::max(0, current - added);
  int limit = start;
  if (policy.max_pods > 0) limit = std::max(limit, start + policy.max_pods);
  if (policy.max_percent > 0) {
    limit = std::max(limit, CeilInt(start * (1 + policy.max_percent / 100)));
  }
  return limit;
}

int ScaleDownLimit(const StepPolicy& policy, const std::deque<std::pair<absl::Time, int>>& changes,
                   absl::Time now, int current) {
  if (policy.max_pods <= 0 && policy.max_percent <= 0) return 0;
  int removed = 0;
  for (const auto& [t, delta] : changes) {
    if (delta < 0 && InWindow(t, now, policy.period_seconds)) removed -= delta;
  }
  const int start = current + removed;
  int limit = start;
  if (policy.max_pods > 0) limit = std::min(limit, start - policy.max_pods);
  if (policy.max_percent > 0) {
    limit = std::min(limit, FloorInt(start * (1 - policy.max_percent / 100)));
  }
  return std::max(0, limit);
}

AutoscalerResult Autoscale(const AutoscalingPolicy& policy, const AutoscalerInput& input,
                           const AutoscalerState& state) {
  AutoscalerResult result;
  result.state = state;
  const absl::Time now = input.now;
  const double keep =
      std::max({policy.scale_up.stabilization_seconds, policy.scale_down.stabilization_seconds,
                policy.scale_up.period_seconds, policy.scale_down.period_seconds});
  Stage stages[2] = {
      {Pool::kPrefill, &policy.prefill, &input.prefill, &result.state.prefill, {}, {}, 0},
      {Pool::kDecode, &policy.decode, &input.decode, &result.state.decode, {}, {}, 0},
  };

  for (Stage& st : stages) {
    PoolHistory& h = *st.history;
    const int cur = st.in->current_replicas;
    // A fresh operator knows no history: count the current size as a
    // recommendation made just before now, so that a restart never scales
    // down before a full window has passed (a zero-length scale-up window
    // looks at `now` only and is not held back).
    if (h.recommendations.empty()) {
      h.recommendations.emplace_back(now - absl::Nanoseconds(1), cur);
    }
    st.analysis = Analyze(st.pool, policy, *st.pp, *st.in, h);
    Analysis& a = st.analysis;
    h.learned_tokens_per_second = a.learned_tokens_per_second;

    int rec = a.recommendation;
    if (rec > st.pp->max_replicas) {
      rec = st.pp->max_replicas;
      a.limited_reason = "TooManyReplicas";
    } else if (rec < st.pp->min_replicas) {
      rec = st.pp->min_replicas;
      a.limited_reason = "TooFewReplicas";
    }
    h.recommendations.emplace_back(now, rec);
    Trim(h, now, keep);

    // Stabilisation: scale up to the lowest recommendation of the up window,
    // down to the highest of the down window.
    int up = rec, down = rec;
    for (const auto& [t, r] : h.recommendations) {
      if (InWindow(t, now, policy.scale_up.stabilization_seconds)) up = std::min(up, r);
      if (InWindow(t, now, policy.scale_down.stabilization_seconds)) down = std::max(down, r);
    }
    int target = cur;
    if (cur < up) target = up;
    if (cur > down) target = down;
    if (target != rec && a.limited_reason.empty() && a.reason != "MetricsMissing") {
      a.message += absl::StrCat(" (stabilizing: ", target, " within the window)");
    }

    // Step limits.
    const int up_limit = ScaleUpLimit(policy.scale_up, h.changes, now, cur);
    const int down_limit = ScaleDownLimit(policy.scale_down, h.changes, now, cur);
    if (target > cur && target > up_limit) {
      target = std::max(cur, up_limit);
      a.limited_reason = "ScaleUpLimit";
    }
    if (target < cur && target < down_limit) {
      target = std::min(cur, down_limit);
      a.limited_reason = "ScaleDownLimit";
    }
    // The step limits may not undo the [min, max] clamp (a spec change).
    target = std::clamp(target, st.pp->min_replicas, st.pp->max_replicas);
    st.target = target;
  }

  // GPU budget.
  if (policy.gpu_budget > 0) {
    // GPUs a pool holds while moving to `target`: pods beyond the target
    // only leave after draining, and draining pods keep their GPUs.
    auto held = [](const Stage& st, int target) {
      const int live = LivePods(*st.in, /*terminating=*/false);
      const int draining = LivePods(*st.in, /*terminating=*/true);
      return (std::max(target, live) + draining) * st.pp->gpus_per_replica;
    };
    auto most = [&](const Stage& st, const Stage& other, int other_target) {
      if (st.pp->gpus_per_replica <= 0) return INT_MAX;
      const double room = policy.gpu_budget - held(other, other_target);
      return FloorInt(room / st.pp->gpus_per_replica) - LivePods(*st.in, true);
    };
    // The pool under more pressure goes first.
    int order[2] = {0, 1};
    if (stages[1].analysis.pressure > stages[0].analysis.pressure) std::swap(order[0], order[1]);
    // Growth not yet granted does not count against the first pool.
    bool granted[2] = {false, false};
    auto committed = [&](int i) {
      const Stage& st = stages[i];
      return granted[i] ? st.target : std::min(st.target, st.in->current_replicas);
    };
    for (int i : order) {
      Stage& st = stages[i];
      Stage& other = stages[1 - i];
      const int cur = st.in->current_replicas;
      granted[i] = true;
      if (st.target <= cur) continue;
      int allowed = most(st, other, committed(1 - i));
      if (st.target > allowed && other.analysis.can_give && other.target > other.analysis.fewest &&
          st.analysis.pressure > 1 + policy.tolerance) {
        // Rebalance: shrink the idle pool by one step, bypassing its
        // stabilisation window but not its step limit. Its pods drain
        // before the GPUs count as free.
        const int other_cur = other.in->current_replicas;
        const int lowest =
            ScaleDownLimit(policy.scale_down, other.history->changes, now, other_cur);
        const int shrunk = std::max({other.analysis.fewest, lowest, other.pp->min_replicas});
        if (shrunk < other.target) {
          other.target = shrunk;
          other.analysis.reason = "GPUBudgetRebalance";
          other.analysis.message =
              absl::StrCat("GPU budget ", policy.gpu_budget, " reached: lending GPUs to ",
                           PoolName(st.pool), " (", st.analysis.reason, ")");
          allowed = most(st, other, committed(1 - i));
        }
      }
      if (st.target > allowed) {
        st.target = std::max(cur, allowed);
        st.analysis.limited_reason = "GPUBudget";
      }
    }
    // A budget lowered below what runs now: shrink the calmer pool first.
    for (int i : {order[1], order[0]}) {
      Stage& st = stages[i];
      Stage& other = stages[1 - i];
      if (held(st, st.target) + held(other, other.target) <= policy.gpu_budget) break;
      if (st.pp->gpus_per_replica <= 0) continue;
      const int fit = FloorInt((policy.gpu_budget - other.target * other.pp->gpus_per_replica) /
                               st.pp->gpus_per_replica);
      const int shrunk = std::max(st.pp->min_replicas, std::min(st.target, fit));
      if (shrunk < st.target) {
        st.target = shrunk;
        st.analysis.reason = "OverGPUBudget";
        st.analysis.message = absl::StrCat("pools exceed the GPU budget ", policy.gpu_budget);
        st.analysis.limited_reason = "GPUBudget";
      }
    }
  }

  for (Stage& st : stages) {
    const Analysis& a = st.analysis;
    PoolDecision& d = st.decision;
    const int cur = st.in->current_replicas;
    d.current = cur;
    d.desired = st.target;
    d.reason = a.reason;
    d.message = a.message;
    d.metrics_available = a.metrics_available;
    d.limited_reason = a.limited_reason;
    d.signals = a.signals;
    if (d.desired < cur) {
      // The least-loaded pods go first; pods not yet ready go before any
      // (the ReplicaSet prefers them too).
      std::vector<const PodObservation*> live;
      for (const PodObservation& p : st.in->pods) {
        if (!p.terminating) live.push_back(&p);
      }
      std::sort(live.begin(), live.end(), [](const PodObservation* x, const PodObservation* y) {
        auto key = [](const PodObservation* p) {
          return std::make_tuple(p->ready, p->requests_running + p->requests_queued,
                                 p->kv_blocks_used, p->name);
        };
        return key(x) < key(y);
      });
      const size_t victims = static_cast<size_t>(cur - d.desired);
      for (size_t i = 0; i < live.size() && i < victims; ++i) d.victims.push_back(live[i]->name);
    }
    if (d.desired != cur) st.history->changes.emplace_back(now, d.desired - cur);
  }
  result.prefill = std::move(stages[0].decision);
  result.decode = std::move(stages[1].decision);
  return result;
}

}  // namespace baton::op
