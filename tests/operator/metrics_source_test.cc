// The autoscaler's metrics sources against HTTP servers on 127.0.0.1: a
// worker's /metrics scraped twice (the difference makes the window), and a
// Prometheus HTTP API answering the per-pod queries.
#include "operator/metrics_source.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "operator/http_server.h"

namespace baton::op {
namespace {

using ::testing::HasSubstr;

Json ReadyPod(const std::string& name, const std::string& uid, absl::Time since) {
  return {{"metadata", {{"name", name}, {"uid", uid}}},
          {"status",
           {{"podIP", "127.0.0.1"},
            {"conditions", Json::array({{{"type", "Ready"},
                                         {"status", "True"},
                                         {"lastTransitionTime", FormatTimestamp(since)}}})}}}};
}

std::string WorkerMetricsText(int prompt_tokens, int ttft_fast, int ttft_slow) {
  return absl::StrCat(
      "# TYPE baton_requests_running gauge\nbaton_requests_running 2\n",
      "baton_requests_queued 1\nbaton_kv_blocks_used 30\nbaton_kv_blocks_total 100\n",
      "baton_prompt_tokens_total ", prompt_tokens, "\nbaton_generated_tokens_total 50\n",
      "baton_time_to_first_token_seconds_bucket{le=\"0.1\"} ", ttft_fast, "\n",
      "baton_time_to_first_token_seconds_bucket{le=\"1\"} ", ttft_fast + ttft_slow, "\n",
      "baton_time_to_first_token_seconds_bucket{le=\"+Inf\"} ", ttft_fast + ttft_slow, "\n");
}

TEST(MetricsSourceTest, ScrapeTwiceMakesAWindow) {
  absl::Mutex mu;
  std::string body = WorkerMetricsText(1000, 100, 0);
  auto server =
      HttpServer::Start("127.0.0.1", 0, [&](const HttpRequest& req, HttpResponseWriter& w) {
        absl::MutexLock lock(&mu);
        w.Send(req.path == "/metrics" ? 200 : 404, "text/plain", body);
      });
  ASSERT_TRUE(server.ok());
  DefaultMetricsSource source;
  PoolQuery q{"ns", "svc", Role::kPrefill, (*server)->port(), {}};
  const absl::Time t0 = absl::FromUnixSeconds(1700000000);
  Json pod = ReadyPod("p1", "u1", t0 - absl::Minutes(5));
  Json down = ReadyPod("p2", "u2", t0 - absl::Minutes(5));
  down["status"]["podIP"] = "127.0.0.2";  // Nothing listens there.

  std::vector<PodObservation> first = source.Observe(q, {pod, down}, t0);
  ASSERT_EQ(first.size(), 2u);
  EXPECT_TRUE(first[0].has_metrics);
  EXPECT_FALSE(first[0].has_window);  // One scrape: gauges only.
  EXPECT_EQ(first[0].requests_running, 2);
  EXPECT_EQ(first[0].kv_blocks_used, 30);
  EXPECT_FALSE(first[1].has_metrics);

  {
    absl::MutexLock lock(&mu);
    body = WorkerMetricsText(4000, 110, 90);  // 3000 tokens, 10 fast + 90 slow TTFTs.
  }
  std::vector<PodObservation> second = source.Observe(q, {pod}, t0 + absl::Seconds(15));
  ASSERT_TRUE(second[0].has_window);
  EXPECT_DOUBLE_EQ(second[0].prompt_tokens_per_second, 200);
  EXPECT_EQ(second[0].ttft.count(), 100);
  // 90 of the window's 100 TTFTs were slow: the p90 is in (0.1, 1].
  EXPECT_GT(*second[0].ttft.Quantile(0.9), 0.1);
  EXPECT_NEAR(second[0].ready_seconds, 315, 1e-6);

  // A worker restart (counters went down) gives no window, not negative rates.
  {
    absl::MutexLock lock(&mu);
    body = WorkerMetricsText(10, 1, 0);
  }
  std::vector<PodObservation> third = source.Observe(q, {pod}, t0 + absl::Seconds(30));
  EXPECT_TRUE(third[0].has_metrics);
  EXPECT_FALSE(third[0].has_window);
}

TEST(MetricsSourceTest, PrometheusQueriesByPod) {
  absl::Mutex mu;
  std::vector<std::string> queries;
  bool broken = false;
  auto vector = [](const std::vector<std::pair<Json, std::string>>& series) {
    Json result = Json::array();
    for (const auto& [metric, value] : series) {
      result.push_back({{"metric", metric}, {"value", Json::array({1700000000.0, value})}});
    }
    return Json{{"status", "success"}, {"data", {{"resultType", "vector"}, {"result", result}}}}
        .dump();
  };
  auto server =
      HttpServer::Start("127.0.0.1", 0, [&](const HttpRequest& req, HttpResponseWriter& w) {
        absl::MutexLock lock(&mu);
        if (broken || req.path != "/api/v1/query") {
          w.Send(503, "text/plain", "down");
          return;
        }
        const std::string q = req.query.at("query");
        queries.push_back(q);
        if (q.find("_bucket") != std::string::npos) {
          w.Send(200, "application/json",
                 vector({{{{"pod", "p1"}, {"le", "0.5"}}, "1"},
                         {{{"pod", "p1"}, {"le", "+Inf"}}, "2"}}));
        } else if (q.find("baton_requests_running") != std::string::npos) {
          w.Send(200, "application/json", vector({{{{"pod", "p1"}}, "4"}}));  // p2 has no series.
        } else if (q.find("baton_prompt_tokens_total") != std::string::npos) {
          w.Send(200, "application/json", vector({{{{"pod", "p1"}}, "123.5"}}));
        } else {
          w.Send(200, "application/json", vector({}));
        }
      });
  ASSERT_TRUE(server.ok());
  DefaultMetricsSource source;
  MetricsSpec spec;
  spec.source = MetricsSpec::Source::kPrometheus;
  spec.prometheus_url = absl::StrCat("http://127.0.0.1:", (*server)->port(), "/");
  spec.window_seconds = 120;
  PoolQuery q{"llm", "svc", Role::kPrefill, 9090, spec};
  const absl::Time t0 = absl::FromUnixSeconds(1700000000);
  std::vector<PodObservation> obs = source.Observe(
      q, {ReadyPod("p1", "u1", t0 - absl::Hours(1)), ReadyPod("p2", "u2", t0 - absl::Hours(1))},
      t0);
  ASSERT_EQ(obs.size(), 2u);
  EXPECT_TRUE(obs[0].has_metrics && obs[0].has_window);
  EXPECT_EQ(obs[0].requests_running, 4);
  EXPECT_DOUBLE_EQ(obs[0].prompt_tokens_per_second, 123.5);
  EXPECT_EQ(obs[0].ttft.count(), 2 * 120);
  EXPECT_FALSE(obs[1].has_metrics);  // No series for p2: missing, not zero.
  {
    absl::MutexLock lock(&mu);
    ASSERT_FALSE(queries.empty());
    EXPECT_THAT(queries[0], HasSubstr("namespace=\"llm\",pod=~\"p1|p2\""));
    bool windowed = false;
    for (const std::string& s : queries) windowed |= s.find("[120s]") != std::string::npos;
    EXPECT_TRUE(windowed);
    broken = true;
  }
  // Prometheus down: every pod is missing its metrics (the autoscaler holds).
  obs = source.Observe(q, {ReadyPod("p1", "u1", t0 - absl::Hours(1))}, t0);
  EXPECT_FALSE(obs[0].has_metrics);
}

}  // namespace
}  // namespace baton::op
