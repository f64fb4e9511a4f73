// Unit tests of the autoscaler's rules one at a time, on hand-made
// observations. The load traces are in autoscaler_trace_test.cc.
#include "operator/autoscaler.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace baton::op {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

const absl::Time kT0 = absl::FromUnixSeconds(1700000000);

// A histogram whose p90 is exactly `p90`: 90 observations at or below it, 10
// above (bucket bounds p90/2, p90, 2*p90).
WindowHistogram HistogramWithP90(double p90) {
  return WindowHistogram({{p90 / 2, 50}, {p90, 90}, {2 * p90, 100}, {INFINITY, 100}});
}

PodObservation Warm(const std::string& name, double latency_p90, double tokens_per_second,
                    double running = 1) {
  PodObservation p;
  p.name = name;
  p.ready = true;
  p.ready_seconds = 3600;
  p.has_metrics = true;
  p.has_window = true;
  p.requests_running = running;
  p.ttft = HistogramWithP90(latency_p90);
  p.itl = HistogramWithP90(latency_p90);
  p.prompt_tokens_per_second = tokens_per_second;
  p.generated_tokens_per_second = tokens_per_second;
  return p;
}

PoolInput Pool(int replicas, double latency_p90, double tokens_per_second = 100) {
  PoolInput in;
  in.current_replicas = replicas;
  for (int i = 0; i < replicas; ++i) {
    in.pods.push_back(Warm(absl::StrCat("p", i), latency_p90, tokens_per_second));
  }
  return in;
}

AutoscalingPolicy TestPolicy() {
  AutoscalingPolicy p;
  p.prefill = {1, 20, 1, 0};
  p.decode = {1, 20, 1, 0};
  p.ttft_p90_seconds = 1.0;
  p.itl_p90_seconds = 1.0;  // The same latencies drive both pools here.
  p.kv_usage = 0.8;
  return p;
}

TEST(WindowHistogramTest, QuantileInterpolatesLikePrometheus) {
  // histogram_quantile(0.9) over buckets le=1:50, le=2:80, le=4:100, +Inf:100:
  // rank 90 falls in (2, 4] at (90-80)/(100-80) -> 3.
  WindowHistogram h({{1, 50}, {2, 80}, {4, 100}, {INFINITY, 100}});
  EXPECT_DOUBLE_EQ(*h.Quantile(0.9), 3.0);
  EXPECT_DOUBLE_EQ(*h.Quantile(0.5), 1.0);
  // A rank in the +Inf bucket yields the highest finite bound.
  WindowHistogram tail({{1, 10}, {INFINITY, 100}});
  EXPECT_DOUBLE_EQ(*tail.Quantile(0.9), 1.0);
  EXPECT_FALSE(WindowHistogram().Quantile(0.9).has_value());
  EXPECT_FALSE(WindowHistogram({{1, 0}, {INFINITY, 0}}).Quantile(0.9).has_value());
}

TEST(WindowHistogramTest, MergeAndSince) {
  WindowHistogram a({{1, 10}, {INFINITY, 20}});
  a.Merge(WindowHistogram({{1, 5}, {INFINITY, 5}}));
  EXPECT_THAT(a.buckets(), ElementsAre(std::pair<double, double>{1, 15},
                                       std::pair<double, double>{INFINITY, 25}));
  WindowHistogram later({{1, 30}, {INFINITY, 50}});
  EXPECT_THAT(later.Since(a).buckets(), ElementsAre(std::pair<double, double>{1, 15},
                                                    std::pair<double, double>{INFINITY, 25}));
  // A counter reset (the worker restarted) keeps the new counts as they are.
  WindowHistogram reset({{1, 1}, {INFINITY, 2}});
  EXPECT_EQ(reset.Since(later).count(), 2);
}

TEST(AutoscalerTest, WithinToleranceHolds) {
  AutoscalerInput in{kT0, Pool(4, 1.05), Pool(4, 0.9)};
  AutoscalerResult r = Autoscale(TestPolicy(), in, {});
  EXPECT_EQ(r.prefill.desired, 4);
  EXPECT_EQ(r.prefill.reason, "WithinTolerance");
  EXPECT_EQ(r.decode.desired, 4);
  EXPECT_TRUE(r.prefill.victims.empty());
}

TEST(AutoscalerTest, ScalesUpInProportionToTheWorstSignal) {
  // TTFT p90 at 1.5x target on 4 pods: ceil(4 * 1.5) = 6.
  AutoscalerInput in{kT0, Pool(4, 1.5), Pool(2, 0.9)};
  AutoscalerResult r = Autoscale(TestPolicy(), in, {});
  EXPECT_EQ(r.prefill.desired, 6);
  EXPECT_EQ(r.prefill.reason, "TTFTAboveTarget");
  EXPECT_THAT(r.prefill.message, HasSubstr("TTFT p90 1.5"));
  EXPECT_EQ(r.decode.desired, 2);

  // Decode scales on KV usage too: 95% of blocks used against 80% -> ceil(2*1.1875)=3.
  PoolInput decode = Pool(2, 0.5);
  for (PodObservation& p : decode.pods) {
    p.kv_blocks_total = 100;
    p.kv_blocks_used = 95;
  }
  r = Autoscale(TestPolicy(), {kT0, Pool(2, 0.9), decode}, {});
  EXPECT_EQ(r.decode.desired, 3);
  EXPECT_EQ(r.decode.reason, "KVUsageAboveTarget");
  ASSERT_TRUE(r.decode.signals.kv_usage.has_value());
  EXPECT_DOUBLE_EQ(*r.decode.signals.kv_usage, 0.95);
}

TEST(AutoscalerTest, LatencyFarAboveTargetAtMostDoubles) {
  // 50x over target says "saturated", not "50x short": 3 pods -> 6.
  AutoscalerResult r = Autoscale(TestPolicy(), {kT0, Pool(3, 50), Pool(1, 0.9)}, {});
  EXPECT_EQ(r.prefill.desired, 6);
}

TEST(AutoscalerTest, ScaleUpIsCappedByTheStepPolicy) {
  AutoscalingPolicy policy = TestPolicy();
  policy.scale_up = {0, 2, 0, 15};  // +2 pods per 15 s.
  AutoscalerResult r = Autoscale(policy, {kT0, Pool(4, 10), Pool(1, 0.9)}, {});
  EXPECT_EQ(r.prefill.desired, 6);
  EXPECT_EQ(r.prefill.limited_reason, "ScaleUpLimit");
  // Within the same period the change already made counts: no more now,
  // even though the 4 warm pods still ask for 8...
  AutoscalerInput again{kT0 + absl::Seconds(5), Pool(6, 10), Pool(1, 0.9)};
  for (int i = 4; i < 6; ++i) again.prefill.pods[i].ready_seconds = 0;  // Still starting.
  AutoscalerResult r2 = Autoscale(policy, again, r.state);
  EXPECT_EQ(r2.prefill.desired, 6);
  EXPECT_EQ(r2.prefill.limited_reason, "ScaleUpLimit");
  // ... and the next period allows 2 more.
  AutoscalerResult r3 =
      Autoscale(policy, {kT0 + absl::Seconds(20), Pool(6, 10), Pool(1, 0.9)}, r2.state);
  EXPECT_EQ(r3.prefill.desired, 8);
}

TEST(AutoscalerTest, StartingPodsAreExcludedAndCountAsComingCapacity) {
  // 4 warm pods at 1.5x need 6; 6 replicas are already asked for (2 still
  // loading the model): no further scale-up.
  PoolInput prefill = Pool(6, 1.5);
  prefill.pods[4].ready = false;
  prefill.pods[4].ready_seconds = 0;
  prefill.pods[5].ready_seconds = 5;  // Ready, but within the warm-up.
  // The starting pods' (wild) numbers must not count.
  prefill.pods[4].ttft = HistogramWithP90(50);
  prefill.pods[5].ttft = HistogramWithP90(50);
  AutoscalerResult r = Autoscale(TestPolicy(), {kT0, prefill, Pool(1, 0.9)}, {});
  EXPECT_EQ(r.prefill.signals.warm_pods, 4);
  EXPECT_EQ(r.prefill.signals.starting_pods, 2);
  EXPECT_NEAR(*r.prefill.signals.latency_p90, 1.5, 1e-9);
  EXPECT_EQ(r.prefill.desired, 6);
  // At 1.8x the 4 warm pods need 8: grow by what exceeds the 6 on the way.
  for (int i = 0; i < 4; ++i) prefill.pods[i].ttft = HistogramWithP90(1.8);
  r = Autoscale(TestPolicy(), {kT0, prefill, Pool(1, 0.9)}, {});
  EXPECT_EQ(r.prefill.desired, 8);
}

TEST(AutoscalerTest, MissingMetricsHold) {
  // One ready pod answers no scrape: hold, even though the others are idle
  // and the traffic would otherwise send the pool to its minimum.
  PoolInput prefill = Pool(5, 0.0, 0);
  for (PodObservation& p : prefill.pods) p.requests_running = 0;
  prefill.pods[1].has_metrics = false;
  prefill.pods[1].has_window = false;
  AutoscalingPolicy policy = TestPolicy();
  policy.scale_down.stabilization_seconds = 0;
  AutoscalerState state;
  for (int t = 0; t < 40; ++t) {
    AutoscalerResult r =
        Autoscale(policy, {kT0 + absl::Seconds(15 * t), prefill, Pool(1, 0.9)}, state);
    EXPECT_EQ(r.prefill.desired, 5);
    EXPECT_FALSE(r.prefill.metrics_available);
    EXPECT_EQ(r.prefill.reason, "MetricsMissing");
    EXPECT_THAT(r.prefill.message, HasSubstr("p1"));
    state = r.state;
  }
  // All pods silent: still hold, never zero.
  for (PodObservation& p : prefill.pods) p.has_metrics = false;
  AutoscalerResult r = Autoscale(policy, {kT0 + absl::Hours(1), prefill, Pool(1, 0.9)}, state);
  EXPECT_EQ(r.prefill.desired, 5);
}

TEST(AutoscalerTest, ZeroTrafficGoesToTheMinimumAfterTheWindow) {
  AutoscalingPolicy policy = TestPolicy();
  policy.prefill.min_replicas = 2;
  PoolInput idle = Pool(6, 0.0, 0);
  for (PodObservation& p : idle.pods) {
    p.requests_running = 0;
    p.ttft = WindowHistogram();
  }
  AutoscalerState state;
  int replicas = 6;
  std::vector<std::pair<double, int>> changes;
  for (int t = 0; t <= 60; ++t) {
    const absl::Time now = kT0 + absl::Seconds(15 * t);
    idle.current_replicas = replicas;
    idle.pods.resize(replicas);
    AutoscalerResult r = Autoscale(policy, {now, idle, Pool(1, 0.9)}, state);
    EXPECT_EQ(r.prefill.reason, "NoTraffic");
    if (r.prefill.desired != replicas) changes.emplace_back(15.0 * t, r.prefill.desired);
    replicas = r.prefill.desired;
    state = r.state;
  }
  // Held for the 300 s window, then one pod per 60 s down to the minimum.
  ASSERT_EQ(changes.size(), 4u);
  EXPECT_EQ(changes[0], (std::pair<double, int>{300, 5}));
  EXPECT_EQ(changes[1], (std::pair<double, int>{360, 4}));
  EXPECT_EQ(changes[2], (std::pair<double, int>{420, 3}));
  EXPECT_EQ(changes[3], (std::pair<double, int>{480, 2}));
}

TEST(AutoscalerTest, ScaleDownKeepsHeadroomAndRespectsTheFloor) {
  AutoscalingPolicy policy = TestPolicy();
  policy.scale_down.stabilization_seconds = 0;
  policy.scale_down.max_pods = 0;  // Unlimited steps: see the raw proposal.
  // 8 pods at 0.35x target: projected to stay <= 0.7 on ceil(8*0.35/0.7)=4.
  AutoscalerResult r = Autoscale(policy, {kT0, Pool(8, 0.35), Pool(1, 0.9)}, {});
  EXPECT_EQ(r.prefill.desired, 4);
  EXPECT_EQ(r.prefill.reason, "BelowTarget");
  EXPECT_EQ(r.prefill.victims.size(), 4u);
  // A configured capacity of 150 tokens/s per pod with 8 x 100 tokens/s
  // keeps ceil(800/150)=6.
  policy.prefill.tokens_per_second_per_replica = 150;
  r = Autoscale(policy, {kT0, Pool(8, 0.35), Pool(1, 0.9)}, {});
  EXPECT_EQ(r.prefill.desired, 6);
  EXPECT_EQ(r.prefill.signals.throughput_floor, 6);
  // And the floor alone grows a pool whose latency looks fine.
  policy.prefill.tokens_per_second_per_replica = 50;
  r = Autoscale(policy, {kT0, Pool(8, 0.9), Pool(1, 0.9)}, {});
  EXPECT_EQ(r.prefill.desired, 16);  // ceil(800 / 50); +100% is within the step limit.
  EXPECT_EQ(r.prefill.reason, "ThroughputFloor");
}

TEST(AutoscalerTest, QueuedRequestsBlockScaleDown) {
  AutoscalingPolicy policy = TestPolicy();
  policy.scale_down.stabilization_seconds = 0;
  PoolInput prefill = Pool(4, 0.1);
  prefill.pods[0].requests_queued = 3;
  AutoscalerResult r = Autoscale(policy, {kT0, prefill, Pool(1, 0.9)}, {});
  EXPECT_EQ(r.prefill.desired, 4);
}

TEST(AutoscalerTest, FreshStateDoesNotScaleDownAtOnce) {
  // After an operator restart the history is empty: the current size counts
  // as a recent recommendation for the whole scale-down window.
  AutoscalingPolicy policy = TestPolicy();
  AutoscalerResult r = Autoscale(policy, {kT0, Pool(8, 0.1), Pool(1, 0.9)}, {});
  EXPECT_EQ(r.prefill.desired, 8);
  r = Autoscale(policy, {kT0 + absl::Seconds(200), Pool(8, 0.1), Pool(1, 0.9)}, r.state);
  EXPECT_EQ(r.prefill.desired, 8);
  r = Autoscale(policy, {kT0 + absl::Seconds(301), Pool(8, 0.1), Pool(1, 0.9)}, r.state);
  EXPECT_EQ(r.prefill.desired, 7);
}

TEST(AutoscalerTest, VictimsAreTheLeastLoadedPods) {
  AutoscalingPolicy policy = TestPolicy();
  policy.scale_down = {0, 2, 0, 60};
  PoolInput prefill = Pool(5, 0.1);
  const double load[] = {4, 0, 7, 1, 3};
  for (int i = 0; i < 5; ++i) prefill.pods[i].requests_running = load[i];
  AutoscalerResult r = Autoscale(policy, {kT0, prefill, Pool(1, 0.9)}, {});
  EXPECT_EQ(r.prefill.desired, 3);
  EXPECT_THAT(r.prefill.victims, ElementsAre("p1", "p3"));
}

TEST(AutoscalerTest, BudgetCapsGrowth) {
  AutoscalingPolicy policy = TestPolicy();
  policy.prefill.gpus_per_replica = 2;
  policy.decode.gpus_per_replica = 1;
  policy.gpu_budget = 10;
  // Decode holds 4 GPUs and is within its target: prefill may use 6 = 3 pods.
  AutoscalerResult r = Autoscale(policy, {kT0, Pool(2, 3.0), Pool(4, 1.0)}, {});
  EXPECT_EQ(r.prefill.desired, 3);
  EXPECT_EQ(r.prefill.limited_reason, "GPUBudget");
  EXPECT_EQ(r.decode.desired, 4);
}

TEST(AutoscalerTest, BudgetRebalanceShrinksTheIdlePoolFirst) {
  AutoscalingPolicy policy = TestPolicy();
  policy.gpu_budget = 8;
  // Prefill saturated (3x), decode idle (0.1x) on 6 pods: the budget is full.
  AutoscalerResult r = Autoscale(policy, {kT0, Pool(2, 3.0), Pool(6, 0.1)}, {});
  // Decode gives one step (1 pod); its pod drains first, so prefill waits.
  EXPECT_EQ(r.decode.desired, 5);
  EXPECT_EQ(r.decode.reason, "GPUBudgetRebalance");
  EXPECT_EQ(r.decode.victims.size(), 1u);
  EXPECT_EQ(r.prefill.desired, 2);
  EXPECT_EQ(r.prefill.limited_reason, "GPUBudget");

  // A minute later the drained pod is gone: prefill takes its GPU while
  // decode gives the next one.
  PoolInput decode = Pool(5, 0.1);
  r = Autoscale(policy, {kT0 + absl::Seconds(60), Pool(2, 3.0), decode}, r.state);
  EXPECT_EQ(r.prefill.desired, 3);
  EXPECT_EQ(r.decode.desired, 4);
  // The draining decode pod still holds its GPU.
  decode = Pool(4, 0.1);
  PodObservation draining = Warm("old", 0.1, 100);
  draining.terminating = true;
  decode.pods.push_back(draining);
  r = Autoscale(policy, {kT0 + absl::Seconds(75), Pool(3, 3.0), decode}, r.state);
  EXPECT_EQ(r.prefill.desired, 3);
}

TEST(AutoscalerTest, BudgetNeverTakesFromABusyPool) {
  AutoscalingPolicy policy = TestPolicy();
  policy.gpu_budget = 8;
  // Both pools over target: nobody lends, nobody grows past the budget.
  AutoscalerResult r = Autoscale(policy, {kT0, Pool(4, 3.0), Pool(4, 2.0)}, {});
  EXPECT_EQ(r.prefill.desired, 4);
  EXPECT_EQ(r.decode.desired, 4);
  EXPECT_EQ(r.prefill.limited_reason, "GPUBudget");
  EXPECT_EQ(r.decode.limited_reason, "GPUBudget");
}

TEST(AutoscalerTest, StepLimitsCountRecentChanges) {
  StepPolicy up{0, 4, 100, 15};
  std::deque<std::pair<absl::Time, int>> changes = {{kT0, 3}};
  // 3 added 10 s ago from 2 (now 5): the period started at 2 -> max(6, 4) = 6.
  EXPECT_EQ(ScaleUpLimit(up, changes, kT0 + absl::Seconds(10), 5), 6);
  EXPECT_EQ(ScaleUpLimit(up, changes, kT0 + absl::Seconds(16), 5), 10);
  StepPolicy down{0, 1, 50, 60};
  // Max selects the policy that allows the larger change: 50% of 10 -> 5.
  EXPECT_EQ(ScaleDownLimit(down, {}, kT0, 10), 5);
  EXPECT_EQ(ScaleDownLimit(StepPolicy{0, 0, 0, 60}, {}, kT0, 10), 0);
}

}  // namespace
}  // namespace baton::op
