// The work queue (dedupe, one worker per key, delays, shutdown), its rate
// limiter (per-key exponential backoff and the token bucket) and the pure
// child builders.
#include "operator/work_queue.h"

#include <atomic>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "operator/children.h"

namespace baton::op {
namespace {

using ::testing::Contains;

TEST(RateLimiterTest, ExponentialPerKeyAndForget) {
  RateLimiter r({absl::Milliseconds(5), absl::Seconds(1), 1000, 1000});
  const absl::Time t = absl::FromUnixSeconds(1000);
  EXPECT_EQ(r.When("a", t), absl::Milliseconds(5));
  EXPECT_EQ(r.When("a", t), absl::Milliseconds(10));
  EXPECT_EQ(r.When("a", t), absl::Milliseconds(20));
  EXPECT_EQ(r.When("b", t), absl::Milliseconds(5));  // Keys are independent.
  for (int i = 0; i < 20; ++i) r.When("a", t);
  EXPECT_EQ(r.When("a", t), absl::Seconds(1));  // Capped.
  EXPECT_EQ(r.Failures("a"), 24);
  r.Forget("a");
  EXPECT_EQ(r.Failures("a"), 0);
  EXPECT_EQ(r.When("a", t), absl::Milliseconds(5));
}

TEST(RateLimiterTest, TokenBucketBoundsTheOverallRate) {
  // 10 per second, burst 2: the third failure in the same instant waits
  // 100 ms for a token, the fourth 200 ms; a second later the bucket is full.
  RateLimiter r({absl::ZeroDuration(), absl::Seconds(1), 10, 2});
  const absl::Time t = absl::FromUnixSeconds(1000);
  EXPECT_EQ(r.When("a", t), absl::ZeroDuration());
  EXPECT_EQ(r.When("b", t), absl::ZeroDuration());
  EXPECT_EQ(r.When("c", t), absl::Milliseconds(100));
  EXPECT_EQ(r.When("d", t), absl::Milliseconds(200));
  EXPECT_EQ(r.When("e", t + absl::Seconds(10)), absl::ZeroDuration());
}

TEST(WorkQueueTest, DeduplicatesAndNeverHandsAKeyToTwoWorkers) {
  WorkQueue q;
  q.Add("a");
  q.Add("b");
  q.Add("a");
  EXPECT_EQ(q.Len(), 2u);
  std::optional<std::string> first = q.Get();
  ASSERT_EQ(first, "a");
  // Added while processing: not handed out again until Done.
  q.Add("a");
  EXPECT_EQ(q.Get(), "b");
  EXPECT_EQ(q.Len(), 0u);
  q.Done("b");
  q.Done("a");
  EXPECT_EQ(q.Len(), 1u);
  EXPECT_EQ(q.Get(), "a");
  q.Done("a");
  EXPECT_EQ(q.Len(), 0u);
}

TEST(WorkQueueTest, AddAfterWaitsAndTheEarlierDelayWins) {
  WorkQueue q;
  const absl::Time start = absl::Now();
  q.AddAfter("late", absl::Seconds(30));
  q.AddAfter("late", absl::Milliseconds(50));
  std::optional<std::string> k = q.Get();
  EXPECT_EQ(k, "late");
  const absl::Duration waited = absl::Now() - start;
  EXPECT_GE(waited, absl::Milliseconds(45));
  EXPECT_LT(waited, absl::Seconds(5));
  q.Done("late");
  EXPECT_EQ(q.Len(), 0u);
}

TEST(WorkQueueTest, RateLimitedRetriesBackOff) {
  WorkQueue q({absl::Milliseconds(20), absl::Seconds(1), 1000, 1000});
  q.AddRateLimited("x");  // 20 ms
  q.AddRateLimited("x");  // 40 ms (the earlier pending add wins)
  EXPECT_EQ(q.Failures("x"), 2);
  const absl::Time start = absl::Now();
  EXPECT_EQ(q.Get(), "x");
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(15));
  q.Forget("x");
  EXPECT_EQ(q.Failures("x"), 0);
}

TEST(WorkQueueTest, ShutDownWakesEveryWorker) {
  WorkQueue q;
  std::atomic<int> woke{0};
  std::vector<std::thread> workers;
  for (int i = 0; i < 3; ++i) {
    workers.emplace_back([&] {
      if (!q.Get().has_value()) woke.fetch_add(1);
    });
  }
  absl::SleepFor(absl::Milliseconds(20));
  q.ShutDown();
  for (std::thread& t : workers) t.join();
  EXPECT_EQ(woke.load(), 3);
  q.Add("ignored");
  EXPECT_EQ(q.Len(), 0u);
}

TEST(WorkQueueTest, ConcurrentWorkersProcessEachKeyOnceAtATime) {
  WorkQueue q;
  std::atomic<int> in_flight_a{0}, max_in_flight_a{0}, processed{0};
  std::vector<std::thread> workers;
  for (int i = 0; i < 4; ++i) {
    workers.emplace_back([&] {
      while (std::optional<std::string> k = q.Get()) {
        if (*k == "a") {
          const int now = in_flight_a.fetch_add(1) + 1;
          max_in_flight_a.store(std::max(max_in_flight_a.load(), now));
          absl::SleepFor(absl::Milliseconds(2));
          in_flight_a.fetch_sub(1);
        }
        processed.fetch_add(1);
        q.Done(*k);
      }
    });
  }
  for (int i = 0; i < 200; ++i) {
    q.Add("a");
    q.Add(std::to_string(i % 7));
    if (i % 10 == 0) absl::SleepFor(absl::Milliseconds(1));
  }
  absl::SleepFor(absl::Milliseconds(100));
  q.ShutDown();
  for (std::thread& t : workers) t.join();
  EXPECT_EQ(max_in_flight_a.load(), 1);
  EXPECT_GT(processed.load(), 8);
}

TEST(ChildrenTest, NamesLabelsAndAStableHash) {
  const Json owner = {{"metadata", {{"name", "svc"}, {"namespace", "ns"}, {"uid", "u1"}}}};
  Json spec_json = Json::parse(R"({"image": "i", "model": {"hostPath": {"path": "/m"}}})");
  absl::StatusOr<BatonServiceSpec> spec = ParseBatonServiceSpec(spec_json);
  ASSERT_TRUE(spec.ok());
  const Json a = BuildDeployment(owner, *spec, Role::kDecode, 2, {});
  const Json b = BuildDeployment(owner, *spec, Role::kDecode, 5, {});
  EXPECT_EQ(GetString(a, {"metadata", "name"}), "svc-decode");
  // The replica count is not part of the template hash.
  EXPECT_EQ(GetString(a, {"metadata", "annotations", kSpecHashAnnotation}),
            GetString(b, {"metadata", "annotations", kSpecHashAnnotation}));
  spec_json["image"] = "j";
  const Json c = BuildDeployment(owner, *ParseBatonServiceSpec(spec_json), Role::kDecode, 2, {});
  EXPECT_NE(GetString(a, {"metadata", "annotations", kSpecHashAnnotation}),
            GetString(c, {"metadata", "annotations", kSpecHashAnnotation}));
  EXPECT_EQ(PodSelector("svc", Role::kPrefill),
            "app.kubernetes.io/name=baton,app.kubernetes.io/instance=svc,"
            "app.kubernetes.io/component=prefill");
  // A host path model: mounted read-only, no subPath.
  const Json& pod = a["spec"]["template"]["spec"];
  EXPECT_EQ(GetString(pod["volumes"][2], {"hostPath", "path"}), "/m");
  EXPECT_THAT(pod["containers"][0]["volumeMounts"].dump(),
              ::testing::HasSubstr("\"readOnly\":true"));
  EXPECT_EQ(RoleAddress("svc", "ns", Role::kDecode, 7000, {"example.org"}),
            "svc-decode.ns.svc.example.org:7000");
  // The router mounts no model and gets no --model.
  const Json router = BuildDeployment(owner, *spec, Role::kRouter, 1, {});
  EXPECT_EQ(router["spec"]["template"]["spec"]["volumes"].size(), 1u);
  EXPECT_THAT(
      router["spec"]["template"]["spec"]["containers"][0]["args"].get<std::vector<std::string>>(),
      Contains("--decode=svc-decode.ns.svc.cluster.local:50051"));
}

TEST(ChildrenTest, SharedSecretIsMountedForEveryRole) {
  const Json owner = {{"metadata", {{"name", "svc"}, {"namespace", "ns"}, {"uid", "u1"}}}};
  Json spec_json = Json::parse(R"({"image": "i", "model": {"hostPath": {"path": "/m"}},
                                   "sharedSecret": {"secretName": "baton-peers", "key": "token"}})");
  absl::StatusOr<BatonServiceSpec> spec = ParseBatonServiceSpec(spec_json);
  ASSERT_TRUE(spec.ok()) << spec.status();
  for (Role role : {Role::kRouter, Role::kPrefill, Role::kDecode}) {
    const Json d = BuildDeployment(owner, *spec, role, 1, {});
    const Json& pod = d["spec"]["template"]["spec"];
    EXPECT_THAT(pod["volumes"].dump(), ::testing::HasSubstr("\"secretName\":\"baton-peers\""));
    EXPECT_THAT(pod["volumes"].dump(), ::testing::HasSubstr("\"key\":\"token\""));
    EXPECT_THAT(pod["containers"][0]["args"].get<std::vector<std::string>>(),
                Contains("--secret-file=/etc/baton/secret/secret"));
    EXPECT_THAT(pod["containers"][0]["env"].dump(), ::testing::HasSubstr("status.podIP"));
  }
  // Without it, no flag and no volume.
  const Json plain =
      BuildDeployment(owner,
                      *ParseBatonServiceSpec(
                          Json::parse(R"({"image": "i", "model": {"hostPath": {"path": "/m"}}})")),
                      Role::kDecode, 1, {});
  EXPECT_THAT(plain.dump(), ::testing::Not(::testing::HasSubstr("secret-file")));
}

}  // namespace
}  // namespace baton::op
