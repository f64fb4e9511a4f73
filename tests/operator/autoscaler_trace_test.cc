// The autoscaler against synthetic load traces, replayed through the
// queueing model of load_sim.h in 15 s ticks: steady, diurnal, burst, zero
// traffic, missing metrics, and one pool saturated while the other idles
// under a GPU budget. The properties checked are the ones the issue asks
// for: SLO-driven growth, no flapping, the budget always respected, holds on
// missing data, the minimum on zero traffic. With TRACE_DEBUG=1 in the
// environment a failing trace prints every tick, not only the changes.
#include <cmath>
#include <cstdlib>
#include <functional>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "gtest/gtest.h"
#include "operator/autoscaler.h"
#include "tests/operator/load_sim.h"

namespace baton::op::sim {
namespace {

constexpr double kTick = 15;
const absl::Time kStart = absl::FromUnixSeconds(1700000000);

struct Tick {
  double t = 0;  // Seconds since the start.
  Load load;
  AutoscalerResult result;
  PoolSample prefill, decode;  // The model's truth during the tick.
  int gpus_after_step = 0;     // All pods (starting, ready, draining) * GPUs.
  int gpus_after_apply = 0;
};

AutoscalingPolicy TracePolicy() {
  AutoscalingPolicy p;
  p.prefill = {1, 16, 1, 0};
  p.decode = {1, 16, 1, 0};
  p.ttft_p90_seconds = 0.5;
  p.itl_p90_seconds = 0.05;
  p.kv_usage = 0.8;
  return p;
}

class Trace {
 public:
  Trace(AutoscalingPolicy policy, int prefill, int decode, SimConfig config = {})
      : policy_(policy), sim_(config, prefill, decode, kStart) {}

  // Runs `ticks` ticks; `silent(t)` names the pods that export no metrics.
  void Run(int ticks, const std::function<Load(double)>& load,
           const std::function<std::set<std::string>(double, const ClusterSim&)>& silent = {}) {
    for (int i = 0; i < ticks; ++i) {
      Tick tick;
      tick.t = absl::ToDoubleSeconds(sim_.now() - kStart) + kTick;
      tick.load = load(tick.t);
      std::set<std::string> quiet;
      if (silent) quiet = silent(tick.t, sim_);
      AutoscalerInput in = sim_.Step(absl::Seconds(kTick), tick.load, quiet);
      tick.prefill = sim_.prefill();
      tick.decode = sim_.decode();
      tick.gpus_after_step = Gpus();
      tick.result = Autoscale(policy_, in, state_);
      state_ = tick.result.state;
      sim_.Apply(tick.result);
      tick.gpus_after_apply = Gpus();
      ticks_.push_back(std::move(tick));
    }
  }

  const std::vector<Tick>& ticks() const { return ticks_; }
  const ClusterSim& sim() const { return sim_; }
  const AutoscalingPolicy& policy() const { return policy_; }

  static const PoolDecision& Decision(const Tick& t, Pool pool) {
    return pool == Pool::kPrefill ? t.result.prefill : t.result.decode;
  }
  static const PoolSample& Sample(const Tick& t, Pool pool) {
    return pool == Pool::kPrefill ? t.prefill : t.decode;
  }
  double Target(Pool pool) const {
    return pool == Pool::kPrefill ? policy_.ttft_p90_seconds : policy_.itl_p90_seconds;
  }

  // Changes of one pool as (time, delta).
  std::vector<std::pair<double, int>> Changes(Pool pool) const {
    std::vector<std::pair<double, int>> changes;
    for (const Tick& t : ticks_) {
      const PoolDecision& d = Decision(t, pool);
      if (d.desired != d.current) changes.emplace_back(t.t, d.desired - d.current);
    }
    return changes;
  }
  // How often the direction of change flips (up then down, or down then up).
  int Reversals(Pool pool) const {
    int reversals = 0, last = 0;
    for (const auto& [t, delta] : Changes(pool)) {
      const int sign = delta > 0 ? 1 : -1;
      if (last != 0 && sign != last) ++reversals;
      last = sign;
    }
    return reversals;
  }
  // The fraction of ticks in [from, to) whose true latency p90 met the target
  // within the tolerance.
  double SloMet(Pool pool, double from, double to) const {
    int met = 0, all = 0;
    for (const Tick& t : ticks_) {
      if (t.t < from || t.t >= to || t.load.requests_per_second <= 0) continue;
      ++all;
      if (Sample(t, pool).latency_p90 <= Target(pool) * (1 + policy_.tolerance)) ++met;
    }
    return all == 0 ? 1.0 : static_cast<double>(met) / all;
  }
  int Replicas(Pool pool) const { return Decision(ticks_.back(), pool).desired; }
  std::string Describe(Pool pool) const {
    if (std::getenv("TRACE_DEBUG") != nullptr) return DescribeAll(pool);
    std::vector<std::string> parts;
    for (const Tick& t : ticks_) {
      const PoolDecision& d = Decision(t, pool);
      if (d.desired != d.current) {
        parts.push_back(absl::StrCat(t.t, "s:", d.current, "->", d.desired, " ", d.reason));
      }
    }
    return absl::StrJoin(parts, "; ");
  }

  std::string DescribeAll(Pool pool) const {
    std::vector<std::string> parts;
    for (const Tick& t : ticks_) {
      const PoolDecision& d = Decision(t, pool);
      parts.push_back(absl::StrCat(t.t, "s:", d.current, "->", d.desired, " ", d.reason, " lat=",
                                   Sample(t, pool).latency_p90, " live=", Sample(t, pool).live_pods,
                                   " ready=", Sample(t, pool).ready_pods, " ", d.message, "\n"));
    }
    return absl::StrJoin(parts, "");
  }

  // Properties every trace must have.
  void ExpectInvariants() const {
    for (Pool pool : {Pool::kPrefill, Pool::kDecode}) {
      const PoolPolicy& pp = pool == Pool::kPrefill ? policy_.prefill : policy_.decode;
      double last_up = -1e9;
      for (const Tick& t : ticks_) {
        const PoolDecision& d = Decision(t, pool);
        ASSERT_GE(d.desired, pp.min_replicas) << PoolName(pool) << " at " << t.t;
        ASSERT_LE(d.desired, pp.max_replicas) << PoolName(pool) << " at " << t.t;
        if (d.desired > d.current) {
          // Step limit: max(+4, +100%) per 15 s, i.e. per tick here.
          ASSERT_LE(d.desired - d.current, std::max(4, d.current)) << t.t;
          last_up = t.t;
        }
        // No flapping: nothing scales down within the scale-down window of
        // its own last scale-up (a budget rebalance is the other pool's).
        if (d.desired < d.current && d.reason != "GPUBudgetRebalance") {
          ASSERT_GE(t.t - last_up, policy_.scale_down.stabilization_seconds)
              << PoolName(pool) << " scaled down at " << t.t << " after an up at " << last_up
              << ": " << Describe(pool);
          ASSERT_LE(d.current - d.desired, 1) << t.t;  // One pod per 60 s.
        }
      }
    }
  }

 private:
  int Gpus() const {
    return sim_.AllPods(Pool::kPrefill) * static_cast<int>(policy_.prefill.gpus_per_replica) +
           sim_.AllPods(Pool::kDecode) * static_cast<int>(policy_.decode.gpus_per_replica);
  }

  AutoscalingPolicy policy_;
  ClusterSim sim_;
  AutoscalerState state_;
  std::vector<Tick> ticks_;
};

Load Requests(double per_second) {
  Load l;
  l.requests_per_second = per_second;
  return l;
}

constexpr int kPerHour = 3600 / static_cast<int>(kTick);

TEST(AutoscalerTraceTest, SteadyLoadConvergesAndStays) {
  // 30 req/s of 2000 prompt + 200 output tokens: prefill needs 5 pods for its
  // TTFT target, decode 4 for its inter-token latency.
  Trace trace(TracePolicy(), 2, 2);
  trace.Run(2 * kPerHour, [](double) { return Requests(30); });
  trace.ExpectInvariants();
  const double hour = 3600;
  for (Pool pool : {Pool::kPrefill, Pool::kDecode}) {
    SCOPED_TRACE(PoolName(pool));
    // SLO-driven growth to a size that meets the target...
    EXPECT_GT(trace.Replicas(pool), 2) << trace.Describe(pool);
    EXPECT_EQ(trace.SloMet(pool, hour, 2 * hour), 1.0) << trace.Describe(pool);
    // ...and then no change at all for the second hour.
    for (const auto& [t, delta] : trace.Changes(pool)) {
      EXPECT_LT(t, hour) << trace.Describe(pool);
    }
    EXPECT_LE(trace.Reversals(pool), 1) << trace.Describe(pool);
  }
  EXPECT_GE(trace.Replicas(Pool::kPrefill), 5);
  EXPECT_LE(trace.Replicas(Pool::kPrefill), 7);
  EXPECT_GE(trace.Replicas(Pool::kDecode), 4);
  EXPECT_LE(trace.Replicas(Pool::kDecode), 6);
}

TEST(AutoscalerTraceTest, DiurnalLoadIsFollowedWithoutFlapping) {
  // Two 3-hour "days" between 5 and 45 req/s.
  const double period = 3 * 3600;
  Trace trace(TracePolicy(), 4, 4);
  trace.Run(2 * 3 * kPerHour,
            [&](double t) { return Requests(25 - 20 * std::cos(2 * M_PI * t / period)); });
  trace.ExpectInvariants();
  for (Pool pool : {Pool::kPrefill, Pool::kDecode}) {
    SCOPED_TRACE(PoolName(pool));
    EXPECT_GE(trace.SloMet(pool, 0, 2 * period), 0.9) << trace.Describe(pool);
    // It follows the load: more pods at the peak than in the trough...
    int at_peak = 0, at_trough = 100;
    for (const Tick& t : trace.ticks()) {
      const int r = Trace::Decision(t, pool).desired;
      if (std::fabs(t.t - 1.5 * 3600) < 600 || std::fabs(t.t - 4.5 * 3600) < 600) {
        at_peak = std::max(at_peak, r);
      }
      if (std::fabs(t.t - 3 * 3600) < 600) at_trough = std::min(at_trough, r);
    }
    EXPECT_GE(at_peak, at_trough + 3) << trace.Describe(pool);
    // ... and turns around about once per half day: up, down, up, down.
    EXPECT_LE(trace.Reversals(pool), 5) << trace.Describe(pool);
  }
}

TEST(AutoscalerTraceTest, BurstScalesUpFastAndDownSlowly) {
  const double burst_start = 1800, burst_end = 2400;
  Trace trace(TracePolicy(), 2, 2);
  trace.Run(2 * kPerHour,
            [&](double t) { return Requests(t >= burst_start && t < burst_end ? 40 : 10); });
  trace.ExpectInvariants();
  const Tick* before = nullptr;
  for (const Tick& t : trace.ticks()) {
    if (t.t < burst_start) before = &t;
  }
  ASSERT_NE(before, nullptr);
  for (Pool pool : {Pool::kPrefill, Pool::kDecode}) {
    SCOPED_TRACE(PoolName(pool));
    const int base = Trace::Decision(*before, pool).desired;
    // Growth starts within two ticks of the burst.
    double first_up = -1;
    double last_up = -1;
    int peak = 0;
    for (const auto& [t, delta] : trace.Changes(pool)) {
      if (t >= burst_start && delta > 0) {
        if (first_up < 0) first_up = t;
        last_up = t;
      }
    }
    for (const Tick& t : trace.ticks()) peak = std::max(peak, Trace::Decision(t, pool).desired);
    ASSERT_GE(first_up, burst_start) << trace.Describe(pool);
    EXPECT_LE(first_up, burst_start + 2 * kTick) << trace.Describe(pool);
    EXPECT_GE(peak, base + 2) << trace.Describe(pool);
    // The SLO is met again before the burst ends.
    EXPECT_EQ(trace.SloMet(pool, burst_end - 180, burst_end), 1.0) << trace.Describe(pool);
    // Scale-down waits the full window after the last scale-up, then returns
    // to where it was before the burst (give or take a pod).
    for (const auto& [t, delta] : trace.Changes(pool)) {
      if (t > last_up && delta < 0) {
        EXPECT_GE(t - last_up, 300) << trace.Describe(pool);
      }
    }
    EXPECT_LE(std::abs(trace.Replicas(pool) - base), 1) << trace.Describe(pool);
    EXPECT_EQ(trace.SloMet(pool, burst_end + 600, 7200), 1.0) << trace.Describe(pool);
  }
}

TEST(AutoscalerTraceTest, ZeroTrafficGoesToTheMinimumNeverZero) {
  AutoscalingPolicy policy = TracePolicy();
  policy.decode.min_replicas = 2;
  Trace trace(policy, 6, 6);
  trace.Run(2 * kPerHour, [](double t) { return Requests(t < 1800 ? 20 : 0); });
  trace.ExpectInvariants();
  EXPECT_EQ(trace.Replicas(Pool::kPrefill), 1) << trace.Describe(Pool::kPrefill);
  EXPECT_EQ(trace.Replicas(Pool::kDecode), 2) << trace.Describe(Pool::kDecode);
  EXPECT_EQ(trace.ticks().back().result.prefill.reason, "NoTraffic");
  // The pools shrank only after a full window since the last tick with
  // traffic (the one ending at 1800 - 15 s).
  for (Pool pool : {Pool::kPrefill, Pool::kDecode}) {
    for (const auto& [t, delta] : trace.Changes(pool)) {
      if (t >= 1800 && delta < 0) {
        EXPECT_GE(t, 1800 - kTick + 300) << trace.Describe(pool);
      }
    }
  }
}

TEST(AutoscalerTraceTest, MissingMetricsHoldThePool) {
  // Converge at 30 req/s, then the prefill pods stop answering scrapes for 20
  // minutes while the load falls to 5 req/s: prefill holds, decode (whose
  // metrics still arrive) shrinks; once prefill's metrics return it shrinks.
  Trace trace(TracePolicy(), 5, 4);
  const double outage_start = 3600 + kTick, outage_end = outage_start + 1200;
  trace.Run(kPerHour, [](double) { return Requests(30); });
  const int prefill_before = trace.Replicas(Pool::kPrefill);
  const int decode_before = trace.Replicas(Pool::kDecode);
  trace.Run(
      kPerHour, [](double) { return Requests(5); },
      [&](double t, const ClusterSim& sim) {
        std::set<std::string> silent;
        if (t >= outage_start && t < outage_end) {
          for (const std::string& name : sim.LivePodNames(Pool::kPrefill)) silent.insert(name);
        }
        return silent;
      });
  trace.ExpectInvariants();
  for (const Tick& t : trace.ticks()) {
    if (t.t < outage_start || t.t >= outage_end) continue;
    EXPECT_EQ(t.result.prefill.desired, prefill_before) << t.t;
    EXPECT_FALSE(t.result.prefill.metrics_available) << t.t;
    EXPECT_EQ(t.result.prefill.reason, "MetricsMissing");
    EXPECT_TRUE(t.result.decode.metrics_available);
  }
  EXPECT_LT(trace.Replicas(Pool::kDecode), decode_before) << trace.Describe(Pool::kDecode);
  EXPECT_LT(trace.Replicas(Pool::kPrefill), prefill_before) << trace.Describe(Pool::kPrefill);
  EXPECT_GE(trace.Replicas(Pool::kPrefill), 1);
}

TEST(AutoscalerTraceTest, OnePodWithoutMetricsHoldsItsPool) {
  Trace trace(TracePolicy(), 6, 4);
  // Light load that would shrink prefill, but one pod never answers.
  trace.Run(
      kPerHour, [](double) { return Requests(5); },
      [](double, const ClusterSim&) { return std::set<std::string>{"prefill-0"}; });
  for (const Tick& t : trace.ticks()) ASSERT_EQ(t.result.prefill.desired, 6) << t.t;
  EXPECT_LT(trace.Replicas(Pool::kDecode), 4);
}

TEST(AutoscalerTraceTest, SaturatedPoolTakesGpusFromTheIdleOneWithinBudget) {
  // 12 GPUs, one per pod. Long prompts and short answers: prefill is
  // saturated on 2 pods while 10 decode pods idle.
  AutoscalingPolicy policy = TracePolicy();
  policy.gpu_budget = 12;
  Trace trace(policy, 2, 10);
  Load load = Requests(30);
  load.output_tokens = 10;
  trace.Run(2 * kPerHour, [&](double) { return load; });
  trace.ExpectInvariants();
  for (const Tick& t : trace.ticks()) {
    // The GPUs of all pods, starting and draining ones included, never
    // exceed the budget.
    ASSERT_LE(t.gpus_after_step, 12)
        << t.t << " " << trace.Describe(Pool::kPrefill) << " | " << trace.Describe(Pool::kDecode);
    ASSERT_LE(t.gpus_after_apply, 12) << t.t;
  }
  // Decode gave first: its first decrease precedes prefill's first increase.
  const auto prefill_changes = trace.Changes(Pool::kPrefill);
  const auto decode_changes = trace.Changes(Pool::kDecode);
  ASSERT_FALSE(prefill_changes.empty());
  ASSERT_FALSE(decode_changes.empty());
  EXPECT_LT(decode_changes.front().first, prefill_changes.front().first);
  EXPECT_LT(decode_changes.front().second, 0);
  EXPECT_GE(trace.Replicas(Pool::kPrefill), 5) << trace.Describe(Pool::kPrefill);
  EXPECT_EQ(trace.SloMet(Pool::kPrefill, 5400, 7200), 1.0) << trace.Describe(Pool::kPrefill);
  EXPECT_EQ(trace.SloMet(Pool::kDecode, 0, 7200), 1.0) << trace.Describe(Pool::kDecode);
  // Neither pool bounces back and forth.
  EXPECT_LE(trace.Reversals(Pool::kPrefill), 1) << trace.Describe(Pool::kPrefill);
  EXPECT_LE(trace.Reversals(Pool::kDecode), 1) << trace.Describe(Pool::kDecode);
}

}  // namespace
}  // namespace baton::op::sim
