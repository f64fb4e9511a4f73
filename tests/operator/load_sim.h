// A small, deterministic model of a prefill and a decode pool under load, for
// replaying synthetic traces through the autoscaler: pods take time to load
// the model, drain before they go, and export the baton_* signals the
// autoscaler reads (TTFT/ITL histograms, KV usage, token rates, queues).
//
// Queueing model, per tick: a pool of R ready pods with capacity c tokens/s
// each serves demand d = requests/s * tokens per request. Utilisation
// rho = d / (R c); latency = base / (1 - min(rho, 0.97)); demand above
// capacity piles up as backlog that adds backlog / capacity to TTFT.
//
// Thread-safety: none; one test drives one simulator.
#ifndef BATON_TESTS_OPERATOR_LOAD_SIM_H_
#define BATON_TESTS_OPERATOR_LOAD_SIM_H_

#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "operator/autoscaler.h"

namespace baton::op::sim {

struct SimConfig {
  double startup_seconds = 90;               // Created -> Ready (scheduling + model load).
  double drain_seconds = 40;                 // Terminating -> gone; the GPUs stay held.
  double prefill_tokens_per_second = 20000;  // Per pod.
  double decode_tokens_per_second = 2500;    // Per pod, generated tokens.
  double prefill_base_seconds = 0.05;        // TTFT of an idle pod, besides the prompt.
  double itl_base_seconds = 0.02;            // ITL of an idle pod.
  double kv_blocks_per_pod = 20000;
  double kv_block_tokens = 16;
};

struct Load {
  double requests_per_second = 0;
  double prompt_tokens = 2000;  // Per request.
  double output_tokens = 200;   // Per request.
};

// What happened in one pool during one tick.
struct PoolSample {
  int live_pods = 0;  // Not terminating (ready or starting).
  int ready_pods = 0;
  int terminating_pods = 0;
  double latency_p90 = 0;  // The true TTFT or ITL p90 of the model.
  double kv_usage = 0;     // Decode.
  double backlog_tokens = 0;
};

class ClusterSim {
 public:
  ClusterSim(SimConfig config, int prefill_pods, int decode_pods, absl::Time start);

  // Advances the model by `dt` under `load` and returns what the operator
  // would observe at the end of it. `silent` pods export no metrics.
  AutoscalerInput Step(absl::Duration dt, const Load& load,
                       const std::set<std::string>& silent = {});
  // Applies a decision as the Deployment controller would: new pods start,
  // victims (or, lacking names, the newest pods) begin to drain.
  void Apply(const AutoscalerResult& result);

  absl::Time now() const { return now_; }
  const PoolSample& prefill() const { return prefill_sample_; }
  const PoolSample& decode() const { return decode_sample_; }
  // Pods of every state (starting, ready, draining) per pool.
  int AllPods(Pool pool) const;
  // Names of the live (not terminating) pods of a pool, in creation order.
  std::vector<std::string> LivePodNames(Pool pool) const;

 private:
  struct Pod {
    std::string name;
    absl::Time ready_at;
    std::optional<absl::Time> terminating_since;
    double load = 0;  // Requests in flight, for victim choice.
  };
  struct PoolState {
    std::vector<Pod> pods;
    int replicas = 0;
    double backlog_tokens = 0;
    int next_id = 0;
  };

  void AddPod(Pool pool, PoolState& state);
  PoolInput Observe(Pool pool, PoolState& state, double dt_seconds, const Load& load,
                    const std::set<std::string>& silent, PoolSample& sample);

  SimConfig config_;
  absl::Time now_;
  PoolState prefill_;
  PoolState decode_;
  PoolSample prefill_sample_;
  PoolSample decode_sample_;
};

}  // namespace baton::op::sim

#endif  // BATON_TESTS_OPERATOR_LOAD_SIM_H_
