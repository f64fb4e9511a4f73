#include "tests/operator/load_sim.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"

namespace baton::op::sim {
namespace {

// The bucket bounds baton's workers use for their latency histograms.
const double kLatencyBounds[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1,  0.25,
                                 0.5,   0.75,   1.0,   2.5,  5.0,   10.0, 20.0,  40.0, 80.0};

// `count` observations of an exponential-tailed latency whose p90 is `p90`.
WindowHistogram LatencyHistogram(double count, double p90) {
  std::vector<std::pair<double, double>> buckets;
  const double rate = std::log(10.0) / std::max(p90, 1e-6);
  for (double le : kLatencyBounds) {
    buckets.emplace_back(le, count * (1.0 - std::exp(-rate * le)));
  }
  buckets.emplace_back(INFINITY, count);
  return WindowHistogram(std::move(buckets));
}

}  // namespace

ClusterSim::ClusterSim(SimConfig config, int prefill_pods, int decode_pods, absl::Time start)
    : config_(config), now_(start) {
  // The initial pods have long been ready.
  for (int i = 0; i < prefill_pods; ++i) AddPod(Pool::kPrefill, prefill_);
  for (int i = 0; i < decode_pods; ++i) AddPod(Pool::kDecode, decode_);
  for (Pod& p : prefill_.pods) p.ready_at = start - absl::Hours(1);
  for (Pod& p : decode_.pods) p.ready_at = start - absl::Hours(1);
  prefill_.replicas = prefill_pods;
  decode_.replicas = decode_pods;
}

void ClusterSim::AddPod(Pool pool, PoolState& state) {
  Pod pod;
  pod.name = absl::StrCat(PoolName(pool), "-", state.next_id++);
  pod.ready_at = now_ + absl::Seconds(config_.startup_seconds);
  state.pods.push_back(std::move(pod));
}

int ClusterSim::AllPods(Pool pool) const {
  return static_cast<int>((pool == Pool::kPrefill ? prefill_ : decode_).pods.size());
}

std::vector<std::string> ClusterSim::LivePodNames(Pool pool) const {
  std::vector<std::string> names;
  for (const Pod& p : (pool == Pool::kPrefill ? prefill_ : decode_).pods) {
    if (!p.terminating_since) names.push_back(p.name);
  }
  return names;
}

PoolInput ClusterSim::Observe(Pool pool, PoolState& state, double dt, const Load& load,
                              const std::set<std::string>& silent, PoolSample& sample) {
  // Drained pods are gone.
  state.pods.erase(std::remove_if(state.pods.begin(), state.pods.end(),
                                  [&](const Pod& p) {
                                    return p.terminating_since &&
                                           now_ - *p.terminating_since >=
                                               absl::Seconds(config_.drain_seconds);
                                  }),
                   state.pods.end());
  sample = PoolSample();
  std::vector<Pod*> ready;
  for (Pod& p : state.pods) {
    if (p.terminating_since) {
      ++sample.terminating_pods;
      continue;
    }
    ++sample.live_pods;
    if (p.ready_at <= now_) ready.push_back(&p);
  }
  sample.ready_pods = static_cast<int>(ready.size());
  const bool prefill = pool == Pool::kPrefill;
  const double per_pod_capacity =
      prefill ? config_.prefill_tokens_per_second : config_.decode_tokens_per_second;
  const double tokens = prefill ? load.prompt_tokens : load.output_tokens;
  const double demand = load.requests_per_second * tokens;
  const double capacity = per_pod_capacity * static_cast<double>(ready.size());
  state.backlog_tokens = std::max(0.0, state.backlog_tokens + (demand - capacity) * dt);
  const double rho = capacity > 0 ? demand / capacity : 1.0;
  const double served = state.backlog_tokens > 0 ? capacity : demand;
  double latency;
  if (prefill) {
    const double service = config_.prefill_base_seconds + tokens / per_pod_capacity;
    latency = service / (1.0 - std::min(rho, 0.97)) +
              (capacity > 0 ? state.backlog_tokens / capacity : 0.0);
  } else {
    latency = config_.itl_base_seconds / (1.0 - std::min(rho, 0.97));
  }
  sample.latency_p90 = load.requests_per_second > 0 ? latency : 0;
  sample.backlog_tokens = state.backlog_tokens;

  PoolInput in;
  in.current_replicas = state.replicas;
  const double n = std::max<double>(1, static_cast<double>(ready.size()));
  double kv_used_total = 0;
  for (size_t i = 0; i < state.pods.size(); ++i) {
    Pod& p = state.pods[i];
    PodObservation o;
    o.name = p.name;
    o.terminating = p.terminating_since.has_value();
    o.ready = !o.terminating && p.ready_at <= now_;
    o.ready_seconds = o.ready ? absl::ToDoubleSeconds(now_ - p.ready_at) : 0;
    o.has_metrics = o.ready && silent.count(p.name) == 0;
    o.has_window = o.has_metrics;
    if (o.ready) {
      // Pods differ a little in load, so that victims are well defined.
      const double skew = 1.0 + 0.05 * static_cast<double>(static_cast<int>(i % 3) - 1);
      const double requests = load.requests_per_second / n * dt * skew;
      const double in_flight =
          load.requests_per_second / n * skew * (prefill ? latency : latency * load.output_tokens);
      p.load = in_flight;
      o.requests_running = in_flight;
      o.requests_queued = state.backlog_tokens / std::max(tokens, 1.0) / n;
      if (prefill) {
        o.prompt_tokens_per_second = served / n * skew;
        o.ttft = LatencyHistogram(requests, latency);
        o.prefill_queue_tokens = state.backlog_tokens / n;
      } else {
        o.generated_tokens_per_second = served / n * skew;
        o.itl = LatencyHistogram(requests * load.output_tokens, latency);
        o.kv_blocks_total = config_.kv_blocks_per_pod;
        o.kv_blocks_used = std::min(
            config_.kv_blocks_per_pod,
            in_flight * (load.prompt_tokens + load.output_tokens / 2) / config_.kv_block_tokens);
        kv_used_total += o.kv_blocks_used;
      }
    }
    if (!o.has_metrics) {
      // A pod that answers no scrape shows no numbers either.
      PodObservation blank;
      blank.name = o.name;
      blank.terminating = o.terminating;
      blank.ready = o.ready;
      blank.ready_seconds = o.ready_seconds;
      o = blank;
    }
    in.pods.push_back(std::move(o));
  }
  if (!prefill && !ready.empty()) {
    sample.kv_usage =
        kv_used_total / (config_.kv_blocks_per_pod * static_cast<double>(ready.size()));
  }
  return in;
}

AutoscalerInput ClusterSim::Step(absl::Duration dt, const Load& load,
                                 const std::set<std::string>& silent) {
  now_ += dt;
  AutoscalerInput in;
  in.now = now_;
  const double seconds = absl::ToDoubleSeconds(dt);
  in.prefill = Observe(Pool::kPrefill, prefill_, seconds, load, silent, prefill_sample_);
  in.decode = Observe(Pool::kDecode, decode_, seconds, load, silent, decode_sample_);
  return in;
}

void ClusterSim::Apply(const AutoscalerResult& result) {
  for (Pool pool : {Pool::kPrefill, Pool::kDecode}) {
    PoolState& state = pool == Pool::kPrefill ? prefill_ : decode_;
    const PoolDecision& d = pool == Pool::kPrefill ? result.prefill : result.decode;
    state.replicas = d.desired;
    int live = 0;
    for (const Pod& p : state.pods) live += p.terminating_since ? 0 : 1;
    while (live < d.desired) {
      AddPod(pool, state);
      ++live;
    }
    auto terminate = [&](Pod& p) {
      p.terminating_since = now_;
      --live;
    };
    for (const std::string& victim : d.victims) {
      if (live <= d.desired) break;
      for (Pod& p : state.pods) {
        if (p.name == victim && !p.terminating_since) terminate(p);
      }
    }
    // Without (enough) names the ReplicaSet removes not-ready pods, newest
    // first, then the newest ready ones.
    for (bool ready_pass : {false, true}) {
      for (auto it = state.pods.rbegin(); it != state.pods.rend() && live > d.desired; ++it) {
        if (!it->terminating_since && (it->ready_at <= now_) == ready_pass) terminate(*it);
      }
    }
  }
}

}  // namespace baton::op::sim
