// The operator's parsers: the YAML subset (kubeconfig), kubeconfig and
// in-cluster configuration, the BatonService spec, the Prometheus text
// format and Pod state, and the JSON helpers.
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "operator/api_types.h"
#include "operator/json_util.h"
#include "operator/kube_config.h"
#include "operator/metrics_source.h"
#include "operator/yaml_lite.h"

namespace baton::op {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

class TempDir {
 public:
  TempDir() {
    char dir[] = "/tmp/baton-op-XXXXXX";
    path_ = mkdtemp(dir);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string Write(const std::string& name, const std::string& text) const {
    const std::string p = path_ + "/" + name;
    std::ofstream(p) << text;
    return p;
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

TEST(YamlTest, KubeconfigShapes) {
  absl::StatusOr<Json> y = ParseYaml(R"(# a comment
apiVersion: v1
kind: Config
clusters:
- cluster:
    certificate-authority-data: TFMwdA==
    server: https://10.0.0.1:6443   # trailing comment
  name: prod
contexts:
  - name: "prod-admin"
    context: {cluster: prod, user: 'admin', namespace: llm}
current-context: prod-admin
users:
- name: admin
  user:
    token: "abc#not-a-comment"
empty:
list: [1, 2.5, true, null, ~, "x, y"]
)",
                                     "cfg");
  ASSERT_TRUE(y.ok()) << y.status();
  EXPECT_EQ(GetString(*y, {"current-context"}), "prod-admin");
  EXPECT_EQ(GetString((*y)["clusters"][0], {"cluster", "server"}), "https://10.0.0.1:6443");
  EXPECT_EQ(GetString((*y)["clusters"][0], {"name"}), "prod");
  EXPECT_EQ(GetString((*y)["contexts"][0], {"context", "user"}), "admin");
  EXPECT_EQ(GetString((*y)["users"][0], {"user", "token"}), "abc#not-a-comment");
  EXPECT_TRUE((*y)["empty"].is_null());
  EXPECT_EQ((*y)["list"], Json::parse(R"([1, 2.5, true, null, null, "x, y"])"));
}

TEST(YamlTest, BlockScalarsAndDocuments) {
  absl::StatusOr<Json> y = ParseYaml(R"(---
literal: |
  line one
    indented
  line three
folded: >-
  a
  b

  c
keep: |+
  x

next: 1
---
ignored: true
)",
                                     "doc");
  ASSERT_TRUE(y.ok()) << y.status();
  EXPECT_EQ(GetString(*y, {"literal"}), "line one\n  indented\nline three\n");
  EXPECT_EQ(GetString(*y, {"folded"}), "a b\nc");
  EXPECT_EQ(GetString(*y, {"keep"}), "x\n\n");
  EXPECT_EQ(GetInt(*y, {"next"}), 1);
  EXPECT_FALSE(y->contains("ignored"));
}

TEST(YamlTest, RefusesWhatItDoesNotSupport) {
  for (const char* text : {"a: &anchor 1\nb: *anchor\n", "a:\n\tb: 1\n", "a: [1, 2\n", "a: 'x\n",
                           "key: value\n  stray line\n"}) {
    absl::StatusOr<Json> y = ParseYaml(text, "bad.yaml");
    EXPECT_FALSE(y.ok()) << text;
    EXPECT_THAT(std::string(y.status().message()), HasSubstr("bad.yaml:")) << text;
  }
}

TEST(KubeConfigTest, LoadsTokensCertificatesAndRelativeFiles) {
  TempDir dir;
  const std::string ca = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
  dir.Write("token", "file-token\n");
  const std::string path = dir.Write("config", absl::StrCat(R"(apiVersion: v1
clusters:
- name: a
  cluster:
    server: https://a.example:6443/
    certificate-authority-data: )",
                                                            absl::Base64Escape(ca), R"(
- name: b
  cluster:
    server: http://127.0.0.1:8001
    insecure-skip-tls-verify: true
users:
- name: alice
  user:
    client-certificate: certs/alice.crt
    client-key-data: )",
                                                            absl::Base64Escape("KEY"), R"(
- name: bob
  user:
    tokenFile: token
- name: sso
  user:
    exec: {command: aws, apiVersion: client.authentication.k8s.io/v1}
contexts:
- name: alice@a
  context: {cluster: a, user: alice, namespace: llm}
- name: bob@b
  context: {cluster: b, user: bob}
- name: sso@a
  context: {cluster: a, user: sso}
current-context: alice@a
)"));
  absl::StatusOr<KubeConfig> alice = LoadKubeconfig(path);
  ASSERT_TRUE(alice.ok()) << alice.status();
  EXPECT_EQ(alice->server, "https://a.example:6443");
  EXPECT_EQ(alice->ns, "llm");
  EXPECT_EQ(alice->tls.ca_pem, ca);
  EXPECT_EQ(alice->tls.client_cert_file, dir.path() + "/certs/alice.crt");
  EXPECT_EQ(alice->tls.client_key_pem, "KEY");

  absl::StatusOr<KubeConfig> bob = LoadKubeconfig(path, "bob@b");
  ASSERT_TRUE(bob.ok()) << bob.status();
  EXPECT_TRUE(bob->tls.insecure_skip_verify);
  EXPECT_EQ(bob->ns, "default");
  EXPECT_EQ(bob->BearerToken(), "file-token");
  dir.Write("token", "rotated");  // Projected tokens rotate: re-read each time.
  EXPECT_EQ(bob->BearerToken(), "rotated");

  absl::StatusOr<KubeConfig> sso = LoadKubeconfig(path, "sso@a");
  EXPECT_EQ(sso.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(std::string(sso.status().message()), HasSubstr("exec"));
  EXPECT_TRUE(absl::IsNotFound(LoadKubeconfig(path, "nobody").status()));
  EXPECT_FALSE(LoadKubeconfig(dir.path() + "/missing").ok());
}

TEST(KubeConfigTest, InCluster) {
  TempDir sa;
  sa.Write("token", "sa-token");
  sa.Write("ca.crt", "CA");
  sa.Write("namespace", "baton-system\n");
  absl::StatusOr<KubeConfig> c = InClusterConfig("10.96.0.1", "443", sa.path());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->server, "https://10.96.0.1:443");
  EXPECT_EQ(c->ns, "baton-system");
  EXPECT_EQ(c->tls.ca_file, sa.path() + "/ca.crt");
  EXPECT_EQ(c->BearerToken(), "sa-token");
  EXPECT_EQ(InClusterConfig("fd00::1", "443", sa.path())->server, "https://[fd00::1]:443");
  EXPECT_FALSE(InClusterConfig("", "", sa.path()).ok());
  TempDir empty;
  EXPECT_FALSE(InClusterConfig("10.96.0.1", "443", empty.path()).ok());
}

Json MinimalSpec() {
  return Json::parse(R"({"image": "baton:1", "model": {"hostPath": {"path": "/models/x"}}})");
}

TEST(ApiTypesTest, DefaultsPerRole) {
  absl::StatusOr<BatonServiceSpec> s = ParseBatonServiceSpec(MinimalSpec());
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->router.drain_timeout_seconds, 30);
  EXPECT_EQ(s->prefill.drain_timeout_seconds, 60);
  EXPECT_EQ(s->decode.drain_timeout_seconds, 300);
  EXPECT_EQ(s->decode.TerminationGracePeriodSeconds(), 10 + 300 + 5);
  EXPECT_EQ(s->prefill.port, 50051);
  EXPECT_FALSE(s->autoscaling.enabled);
  EXPECT_EQ(s->autoscaling.policy.scale_down.stabilization_seconds, 300);
  EXPECT_EQ(s->metrics.source, MetricsSpec::Source::kScrape);
}

TEST(ApiTypesTest, ReadsEveryField) {
  Json spec = MinimalSpec();
  spec["decode"] = {{"replicas", 3},
                    {"resources", {{"limits", {{"nvidia.com/gpu", "2"}}}}},
                    {"args", {"--x"}},
                    {"preStopSeconds", 4}};
  spec["autoscaling"] = Json::parse(R"({
    "enabled": true, "intervalSeconds": 20, "gpuBudget": 12, "tolerance": 0.2,
    "decode": {"minReplicas": 2, "maxReplicas": 5, "tokensPerSecondPerReplica": 900},
    "targets": {"ttftP90Seconds": 0.8, "interTokenLatencyP90Seconds": 0.04, "kvUsage": 0.7},
    "scaleUp": {"maxPods": 2, "periodSeconds": 30},
    "scaleDown": {"stabilizationWindowSeconds": 120}})");
  spec["metrics"] = {{"source", "Prometheus"}, {"prometheusURL", "http://prom:9090"}};
  absl::StatusOr<BatonServiceSpec> s = ParseBatonServiceSpec(spec);
  ASSERT_TRUE(s.ok()) << s.status();
  const AutoscalingPolicy& p = s->autoscaling.policy;
  EXPECT_EQ(s->decode.Gpus(), 2);
  EXPECT_EQ(p.decode.gpus_per_replica, 2);
  EXPECT_EQ(p.decode.min_replicas, 2);
  EXPECT_EQ(p.decode.tokens_per_second_per_replica, 900);
  EXPECT_EQ(p.ttft_p90_seconds, 0.8);
  EXPECT_EQ(p.kv_usage, 0.7);
  EXPECT_EQ(p.gpu_budget, 12);
  EXPECT_EQ(p.scale_up.max_pods, 2);
  EXPECT_EQ(p.scale_up.max_percent, 100);  // Default kept.
  EXPECT_EQ(p.scale_down.stabilization_seconds, 120);
  EXPECT_EQ(s->autoscaling.interval_seconds, 20);
  EXPECT_EQ(s->metrics.prometheus_url, "http://prom:9090");
}

TEST(ApiTypesTest, RejectsBadSpecsNamingTheField) {
  struct Case {
    const char* patch;
    const char* mentions;
  };
  for (
      const Case& c : {
          Case{R"({"image": null})", "image"},
          Case{
              R"({"model": {"persistentVolumeClaim": {"claimName": "m"}, "hostPath": {"path": "/x"}}})",
              "exactly one"},
          Case{
              R"({"model": {"hostPath": null, "persistentVolumeClaim": {"claimName": "m", "path": "../x"}}})",
              "relative"},
          Case{R"({"prefill": {"replicas": -1}})", "spec.prefill.replicas"},
          Case{R"({"decode": {"port": 9090}})", "must differ"},
          Case{R"({"router": {"args": [1]}})", "spec.router.args"},
          Case{R"({"decode": {"resources": {"limits": {"nvidia.com/gpu": "1.5"}}}})", "whole"},
          Case{R"({"autoscaling": {"prefill": {"minReplicas": 5, "maxReplicas": 2}}})",
               "minReplicas"},
          Case{R"({"autoscaling": {"targets": {"kvUsage": 2}}})", "kvUsage"},
          Case{R"({"metrics": {"source": "Prometheus"}})", "prometheusURL"},
          Case{R"({"metrics": {"source": "Carrier pigeon"}})", "source"},
          Case{R"({"autoscaling": {"enabled": true, "gpuBudget": 1, "prefill": {"minReplicas": 1}},
                    "prefill": {"resources": {"limits": {"nvidia.com/gpu": 1}}},
                    "decode": {"resources": {"limits": {"nvidia.com/gpu": 1}}}})",
               "gpuBudget"},
      }) {
    Json spec = MinimalSpec();
    spec.merge_patch(Json::parse(c.patch));
    absl::StatusOr<BatonServiceSpec> s = ParseBatonServiceSpec(spec);
    EXPECT_FALSE(s.ok()) << c.patch;
    EXPECT_THAT(std::string(s.status().message()), HasSubstr(c.mentions)) << c.patch;
  }
}

TEST(PrometheusTextTest, ParsesSamplesAndSumsBatonMetrics) {
  absl::StatusOr<std::vector<MetricSample>> samples = ParsePrometheusText(R"(
# HELP baton_requests_running Requests running.
# TYPE baton_requests_running gauge
baton_requests_running 3
baton_requests_queued{model="a"} 1
baton_requests_queued{model="b"} 2
baton_kv_blocks_used 40
baton_kv_blocks_total 100
baton_prompt_tokens_total 12345 1700000000000
baton_time_to_first_token_seconds_bucket{le="0.1"} 5
baton_time_to_first_token_seconds_bucket{le="0.5"} 9
baton_time_to_first_token_seconds_bucket{le="+Inf"} 10
baton_time_to_first_token_seconds_count 10
other_metric{path="a \"quoted\" \\ value"} NaN
)");
  ASSERT_TRUE(samples.ok()) << samples.status();
  EXPECT_EQ(samples->back().labels.at("path"), "a \"quoted\" \\ value");
  WorkerMetrics m = ExtractWorkerMetrics(*samples);
  EXPECT_EQ(m.requests_running, 3);
  EXPECT_EQ(m.requests_queued, 3);
  EXPECT_EQ(m.kv_blocks_used, 40);
  EXPECT_EQ(m.prompt_tokens_total, 12345);
  EXPECT_EQ(m.ttft.count(), 10);
  EXPECT_NEAR(*m.ttft.Quantile(0.5), 0.1, 1e-9);  // Rank 5 is the first bucket's edge.
  EXPECT_FALSE(ParsePrometheusText("metric{unterminated=\"x} 1\n").ok());
  EXPECT_FALSE(ParsePrometheusText("metric notanumber\n").ok());
}

TEST(PodStateTest, ReadyForHowLongAndTerminating) {
  const absl::Time now = absl::FromUnixSeconds(1700000000);
  Json pod = {
      {"metadata", {{"name", "p"}}},
      {"status",
       {{"conditions",
         Json::array({{{"type", "Ready"},
                       {"status", "True"},
                       {"lastTransitionTime", FormatTimestamp(now - absl::Seconds(90))}}})}}}};
  PodObservation o = PodState(pod, now);
  EXPECT_EQ(o.name, "p");
  EXPECT_TRUE(o.ready);
  EXPECT_DOUBLE_EQ(o.ready_seconds, 90);
  EXPECT_FALSE(o.terminating);
  pod["metadata"]["deletionTimestamp"] = FormatTimestamp(now);
  o = PodState(pod, now);
  EXPECT_TRUE(o.terminating);
  EXPECT_FALSE(o.ready);  // A draining pod is no capacity.
  pod["status"]["conditions"][0]["status"] = "False";
  pod["metadata"].erase("deletionTimestamp");
  EXPECT_FALSE(PodState(pod, now).ready);
}

TEST(JsonUtilTest, ContainsIgnoresServerDefaultsButNotDifferences) {
  const Json have = Json::parse(R"({"spec": {"replicas": 2, "strategy": {"type": "RollingUpdate"},
      "template": {"containers": [{"name": "a", "image": "x", "imagePullPolicy": "Always"}]}}})");
  EXPECT_TRUE(JsonContains(have, Json::parse(R"({"spec": {"replicas": 2.0,
      "template": {"containers": [{"name": "a", "image": "x"}]}}})")));
  EXPECT_TRUE(
      JsonContains(have, Json::parse(R"({"spec": {"nodeSelector": {}, "paused": false}})")));
  EXPECT_FALSE(JsonContains(have, Json::parse(R"({"spec": {"replicas": 3}})")));
  EXPECT_FALSE(JsonContains(
      have,
      Json::parse(R"({"spec": {"template": {"containers": [{"name": "a"}, {"name": "b"}]}}})")));
  EXPECT_FALSE(JsonContains(have, Json::parse(R"({"spec": {"missing": "x"}})")));
  // Quantities come back as strings.
  EXPECT_TRUE(JsonContains(Json::parse(R"({"gpu": "2"})"), Json::parse(R"({"gpu": 2})")));
  EXPECT_FALSE(JsonContains(Json::parse(R"({"gpu": "2"})"), Json::parse(R"({"gpu": 1})")));
  EXPECT_EQ(StableHash(Json::parse(R"({"b": 1, "a": [1, 2]})")),
            StableHash(Json::parse(R"({"a": [1, 2], "b": 1})")));
  EXPECT_NE(StableHash(Json::parse(R"({"a": 1})")), StableHash(Json::parse(R"({"a": 2})")));
  const absl::Time t = absl::FromUnixMicros(1700000000123456);
  EXPECT_EQ(FormatTimestamp(t), "2023-11-14T22:13:20Z");
  EXPECT_EQ(FormatMicroTimestamp(t), "2023-11-14T22:13:20.123456Z");
  EXPECT_EQ(ParseTimestamp(FormatMicroTimestamp(t)), t);
  EXPECT_FALSE(ParseTimestamp("yesterday").has_value());
}

}  // namespace
}  // namespace baton::op
