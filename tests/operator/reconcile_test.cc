// Reconcile and the watch loop end to end: the Controller (informers, work
// queue, workers, Reconciler) against the fake API server on 127.0.0.1.
// Children are created with ownerReferences and the probes, drain and
// security settings the issue asks for; updated on spec changes; status is
// written through the subresource; an operator restart creates no
// duplicates and writes nothing; 409s are retried; a broken or compacted
// watch recovers; the autoscaler's decisions reach the Deployments, with
// scale-down victims marked first.
#include <functional>
#include <map>
#include <set>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "operator/controller.h"
#include "operator/leader_election.h"
#include "operator/operator_metrics.h"
#include "tests/operator/fake_api_server.h"

namespace baton::op {
namespace {

using ::testing::Contains;
using testing::FakeApiServer;
using ::testing::HasSubstr;

constexpr char kNs[] = "llm";

bool Eventually(const std::function<bool()>& done, absl::Duration timeout = absl::Seconds(10)) {
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    if (done()) return true;
    absl::SleepFor(absl::Milliseconds(10));
  }
  return done();
}

Json BatonService(const std::string& name, const Json& overrides = Json::object()) {
  Json spec = {
      {"image", "registry.example/baton:0.1"},
      {"model", {{"persistentVolumeClaim", {{"claimName", "models"}, {"path", "tiny"}}}}},
      {"router", {{"replicas", 2}}},
      {"prefill",
       {{"replicas", 2},
        {"resources", {{"limits", {{"nvidia.com/gpu", 1}}}}},
        {"nodeSelector", {{"gpu", "h100"}}},
        {"tolerations",
         Json::array(
             {{{"key", "nvidia.com/gpu"}, {"operator", "Exists"}, {"effect", "NoSchedule"}}})},
        {"drainTimeoutSeconds", 45},
        {"preStopSeconds", 7},
        {"args", Json::array({"--max-running=64"})}}},
      {"decode", {{"replicas", 1}, {"resources", {{"limits", {{"nvidia.com/gpu", 2}}}}}}},
  };
  spec.merge_patch(overrides);
  return Json{{"apiVersion", "baton.dev/v1alpha1"},
              {"kind", "BatonService"},
              {"metadata", {{"name", name}}},
              {"spec", spec}};
}

// Canned metrics per pod name; pods it does not know answer no scrape.
class FakeMetricsSource : public MetricsSource {
 public:
  struct Load {
    double latency_p90 = 0.1;
    double running = 1;
    double tokens_per_second = 100;
  };
  void Set(const std::string& pod, Load load) {
    absl::MutexLock lock(&mu_);
    loads_[pod] = load;
  }
  void SetAll(Load load) {
    absl::MutexLock lock(&mu_);
    default_ = load;
  }
  void Silence() {
    absl::MutexLock lock(&mu_);
    default_.reset();
    loads_.clear();
  }
  int calls() const {
    absl::MutexLock lock(&mu_);
    return calls_;
  }
  std::vector<PodObservation> Observe(const PoolQuery&, const std::vector<Json>& pods,
                                      absl::Time now) override {
    absl::MutexLock lock(&mu_);
    ++calls_;
    std::vector<PodObservation> out;
    for (const Json& pod : pods) {
      PodObservation o = PodState(pod, now);
      auto it = loads_.find(o.name);
      std::optional<Load> load = it != loads_.end() ? std::optional<Load>(it->second) : default_;
      if (o.ready && load) {
        o.has_metrics = o.has_window = true;
        o.requests_running = load->running;
        o.prompt_tokens_per_second = o.generated_tokens_per_second = load->tokens_per_second;
        const double p = load->latency_p90;
        o.ttft = o.itl = WindowHistogram({{p / 2, 50}, {p, 90}, {2 * p, 100}, {INFINITY, 100}});
      }
      out.push_back(std::move(o));
    }
    return out;
  }

 private:
  mutable absl::Mutex mu_;
  std::map<std::string, Load> loads_;
  std::optional<Load> default_ = Load{};
  int calls_ = 0;
};

class ReconcileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    server_ = FakeApiServer::Start();
    ASSERT_NE(server_, nullptr);
    client_ = std::make_unique<KubeClient>(server_->Config());
  }
  void TearDown() override { StopController(); }

  void StartController() {
    ControllerOptions o;
    o.workers = 2;
    o.resync = absl::Hours(1);
    o.informer.initial_backoff = absl::Milliseconds(10);
    o.informer.max_backoff = absl::Milliseconds(100);
    o.rate_limiter.base_delay = absl::Milliseconds(5);
    o.rate_limiter.max_delay = absl::Milliseconds(200);
    controller_ = std::make_unique<Controller>(client_.get(), &metrics_source_, &metrics_, o);
    controller_->StartInformers();
    ASSERT_TRUE(controller_->WaitForSync(absl::Seconds(10)));
    controller_->RunWorkers();
  }
  void StopController() {
    if (controller_ != nullptr) controller_->Stop();
    controller_.reset();
  }

  std::optional<Json> Get(const std::string& plural, const std::string& name) {
    return server_->Get(plural, kNs, name);
  }
  Json Status(const std::string& name) {
    std::optional<Json> cr = Get("batonservices", name);
    return cr ? cr->value("status", Json::object()) : Json::object();
  }
  std::string Condition(const std::string& name, const std::string& type,
                        const char* field = "status") {
    for (const Json& c : Status(name).value("conditions", Json::array())) {
      if (GetString(c, {"type"}) == type) return GetString(c, {field});
    }
    return "";
  }
  // Waits until the operator has written a status for the current
  // generation and nothing is queued.
  bool Settled(const std::string& name) {
    return Eventually([&] {
      std::optional<Json> cr = Get("batonservices", name);
      return cr && GetInt(*cr, {"status", "observedGeneration"}) ==
                       GetInt(*cr, {"metadata", "generation"});
    });
  }
  // Plays the Deployment controller: status follows spec.replicas.
  void MarkDeploymentsReady(const std::string& name) {
    for (Role role : kRoles) {
      std::optional<Json> d = Get("deployments", ChildName(name, role));
      ASSERT_TRUE(d.has_value());
      const int64_t n = GetInt(*d, {"spec", "replicas"});
      server_->SetStatus("deployments", kNs, ChildName(name, role),
                         {{"observedGeneration", GetInt(*d, {"metadata", "generation"})},
                          {"replicas", n},
                          {"readyReplicas", n},
                          {"updatedReplicas", n},
                          {"availableReplicas", n}});
    }
  }
  // Successful reconciles so far, from the operator's own metrics.
  int Successes() {
    const std::string text = metrics_.Render();
    const std::string key = "baton_operator_reconcile_total{result=\"success\"} ";
    const size_t at = text.find(key);
    return at == std::string::npos ? 0 : std::atoi(text.c_str() + at + key.size());
  }
  // A Ready pod of one pool, ready for an hour.
  void AddPod(const std::string& service, Role role, const std::string& pod) {
    Json labels = RoleLabels(service, role);
    server_->Create(
        "pods", kNs,
        {{"metadata", {{"name", pod}, {"labels", labels}}},
         {"spec", Json::object()},
         {"status",
          {{"podIP", "10.0.0.1"},
           {"conditions", Json::array({{{"type", "Ready"},
                                        {"status", "True"},
                                        {"lastTransitionTime",
                                         FormatTimestamp(absl::Now() - absl::Hours(1))}}})}}}});
  }

  std::unique_ptr<FakeApiServer> server_;
  std::unique_ptr<KubeClient> client_;
  FakeMetricsSource metrics_source_;
  OperatorMetrics metrics_;
  std::unique_ptr<Controller> controller_;
};

TEST_F(ReconcileTest, CreatesOwnedChildrenAndWritesStatus) {
  const Json cr = server_->Create("batonservices", kNs, BatonService("demo"));
  StartController();
  ASSERT_TRUE(Settled("demo"));
  const std::string uid = GetString(cr, {"metadata", "uid"});

  for (Role role : kRoles) {
    SCOPED_TRACE(RoleName(role));
    std::optional<Json> d = Get("deployments", ChildName("demo", role));
    std::optional<Json> s = Get("services", ChildName("demo", role));
    ASSERT_TRUE(d.has_value());
    ASSERT_TRUE(s.has_value());
    for (const Json* obj : {&*d, &*s}) {
      const Json& owner = (*obj)["metadata"]["ownerReferences"][0];
      EXPECT_EQ(GetString(owner, {"uid"}), uid);
      EXPECT_EQ(GetString(owner, {"kind"}), "BatonService");
      EXPECT_TRUE(GetBool(owner, {"controller"}));
      EXPECT_TRUE(GetBool(owner, {"blockOwnerDeletion"}));
      EXPECT_EQ(GetString(*obj, {"metadata", "labels", "app.kubernetes.io/managed-by"}),
                "baton-operator");
    }
    const Json& pod = (*d)["spec"]["template"]["spec"];
    const Json& c = pod["containers"][0];
    EXPECT_EQ(GetString(c, {"image"}), "registry.example/baton:0.1");
    EXPECT_EQ(c["args"][0], RoleName(role));
    EXPECT_THAT(c["args"].get<std::vector<std::string>>(), Contains("--port=50051"));
    EXPECT_THAT(c["args"].get<std::vector<std::string>>(), Contains("--metrics-port=9090"));
    EXPECT_EQ(GetInt(c, {"readinessProbe", "grpc", "port"}), 50051);
    EXPECT_TRUE(GetBool(pod, {"securityContext", "runAsNonRoot"}));
    EXPECT_TRUE(GetBool(c, {"securityContext", "readOnlyRootFilesystem"}));
    EXPECT_FALSE(GetBool(c, {"securityContext", "allowPrivilegeEscalation"}, true));
    // The Deployment's selector matches its pods' labels.
    EXPECT_TRUE(JsonContains((*d)["spec"]["template"]["metadata"]["labels"],
                             (*d)["spec"]["selector"]["matchLabels"]));
  }
  // Prefill: its drain settings, GPUs, placement, extra args, the model.
  const Json prefill = *Get("deployments", "demo-prefill");
  const Json& pod = prefill["spec"]["template"]["spec"];
  const Json& c = pod["containers"][0];
  EXPECT_EQ(GetInt(prefill, {"spec", "replicas"}), 2);
  EXPECT_EQ(GetInt(pod, {"terminationGracePeriodSeconds"}), 7 + 45 + 5);
  EXPECT_EQ(c["lifecycle"]["preStop"]["exec"]["command"], Json::array({"sleep", "7"}));
  EXPECT_THAT(c["args"].get<std::vector<std::string>>(), Contains("--drain-timeout=45"));
  EXPECT_THAT(c["args"].get<std::vector<std::string>>(), Contains("--max-running=64"));
  EXPECT_THAT(c["args"].get<std::vector<std::string>>(), Contains("--model=/model"));
  EXPECT_EQ(GetInt(c, {"resources", "limits", "nvidia.com/gpu"}), 1);
  EXPECT_EQ(GetString(pod, {"nodeSelector", "gpu"}), "h100");
  EXPECT_EQ(GetString(pod["tolerations"][0], {"key"}), "nvidia.com/gpu");
  // Decode drains for 300 s by default.
  EXPECT_EQ(GetInt(*Get("deployments", "demo-decode"),
                   {"spec", "template", "spec", "terminationGracePeriodSeconds"}),
            10 + 300 + 5);
  // The router dials the headless Services.
  const Json router = *Get("deployments", "demo-router");
  EXPECT_THAT(
      router["spec"]["template"]["spec"]["containers"][0]["args"].get<std::vector<std::string>>(),
      Contains("--prefill=demo-prefill.llm.svc.cluster.local:50051"));
  EXPECT_EQ(GetString(*Get("services", "demo-prefill"), {"spec", "clusterIP"}), "None");
  EXPECT_EQ(GetString(*Get("services", "demo-decode"), {"spec", "clusterIP"}), "None");
  EXPECT_EQ(GetString(*Get("services", "demo-router"), {"spec", "type"}), "ClusterIP");

  // Status: every condition, per-role counts, not ready yet.
  for (const char* type : {"Ready", "Progressing", "Degraded", "ScalingActive", "ScalingLimited"}) {
    EXPECT_FALSE(Condition("demo", type).empty()) << type;
    EXPECT_FALSE(Condition("demo", type, "reason").empty()) << type;
  }
  EXPECT_EQ(Condition("demo", "Ready"), "False");
  EXPECT_EQ(Condition("demo", "ScalingActive", "reason"), "AutoscalingDisabled");
  EXPECT_EQ(GetInt(Status("demo"), {"prefill", "desiredReplicas"}), 2);
  EXPECT_EQ(GetString(Status("demo"), {"endpoint"}), "demo-router.llm.svc:50051");
  EXPECT_EQ(GetInt(Status("demo"), {"gpus", "requested"}), 2 * 1 + 1 * 2);

  // The Deployments become ready: so does the BatonService.
  MarkDeploymentsReady("demo");
  ASSERT_TRUE(Eventually([&] { return Condition("demo", "Ready") == "True"; }));
  EXPECT_EQ(Condition("demo", "Progressing"), "False");
  EXPECT_EQ(GetInt(Status("demo"), {"decode", "readyReplicas"}), 1);
}

TEST_F(ReconcileTest, SpecChangesUpdateTheChildren) {
  server_->Create("batonservices", kNs, BatonService("demo"));
  StartController();
  ASSERT_TRUE(Settled("demo"));
  const int creates = server_->Count("POST", "deployments");
  EXPECT_EQ(creates, 3);

  Json spec = Get("batonservices", "demo")->at("spec");
  spec["image"] = "registry.example/baton:0.2";
  spec["decode"]["replicas"] = 3;
  spec["decode"]["env"] = Json::array({{{"name", "BATON_LOG"}, {"value", "debug"}}});
  server_->UpdateSpec("batonservices", kNs, "demo", spec);
  ASSERT_TRUE(Eventually([&] {
    std::optional<Json> d = Get("deployments", "demo-decode");
    return d && GetInt(*d, {"spec", "replicas"}) == 3 &&
           GetString((*d)["spec"]["template"]["spec"]["containers"][0], {"image"}) ==
               "registry.example/baton:0.2";
  }));
  ASSERT_TRUE(Settled("demo"));
  EXPECT_EQ(GetInt(Status("demo"), {"observedGeneration"}), 2);
  const Json env =
      Get("deployments", "demo-decode")->at("spec")["template"]["spec"]["containers"][0]["env"];
  EXPECT_THAT(env.dump(), HasSubstr("BATON_LOG"));
  // Updated in place, never recreated.
  EXPECT_EQ(server_->Count("POST", "deployments"), creates);

  // Someone scales a Deployment by hand: the operator, the only writer of
  // replicas, puts it back.
  Json drifted = *Get("deployments", "demo-router");
  drifted["spec"]["replicas"] = 9;
  server_->UpdateSpec("deployments", kNs, "demo-router", drifted["spec"]);
  // (Nothing watches for that but the informer: the event enqueues the owner.)
  ASSERT_TRUE(Eventually([&] {
    return GetInt(*Get("deployments", "demo-router"), {"spec", "replicas"}) == 2;
  }));
}

TEST_F(ReconcileTest, RestartCreatesNoDuplicatesAndWritesNothing) {
  server_->Create("batonservices", kNs, BatonService("a"));
  server_->Create("batonservices", kNs, BatonService("b"));
  StartController();
  ASSERT_TRUE(Settled("a"));
  ASSERT_TRUE(Settled("b"));
  MarkDeploymentsReady("a");
  ASSERT_TRUE(Eventually([&] { return Condition("a", "Ready") == "True"; }));
  absl::SleepFor(absl::Milliseconds(200));  // Let the last events play out.
  StopController();

  const int64_t rv = server_->resource_version();
  const int posts = server_->Count("POST", "deployments") + server_->Count("POST", "services");
  EXPECT_EQ(posts, 12);
  const int reconciles = Successes();
  StartController();
  // The new operator lists and reconciles everything once...
  ASSERT_TRUE(Eventually([&] { return Successes() >= reconciles + 2; }));
  absl::SleepFor(absl::Milliseconds(300));
  // ... and, the world being as it wants it, changes nothing at all.
  EXPECT_EQ(server_->Count("POST", "deployments") + server_->Count("POST", "services"), posts);
  EXPECT_EQ(server_->resource_version(), rv);
  EXPECT_EQ(server_->List("deployments", kNs).size(), 6u);
  EXPECT_EQ(server_->List("services", kNs).size(), 6u);
}

TEST_F(ReconcileTest, ConflictsAreRetried) {
  server_->Create("batonservices", kNs, BatonService("demo"));
  // The first status writes and a Deployment create meet 409s.
  server_->FailNextWrites("batonservices", 3);
  server_->FailNextWrites("deployments", 1);
  StartController();
  ASSERT_TRUE(Settled("demo"));
  EXPECT_EQ(server_->List("deployments", kNs).size(), 3u);
  EXPECT_THAT(metrics_.Render(), HasSubstr("result=\"conflict\""));

  // A conflicting update of a child on a spec change is retried too.
  server_->FailNextWrites("deployments", 2);
  Json spec = Get("batonservices", "demo")->at("spec");
  spec["router"]["replicas"] = 4;
  server_->UpdateSpec("batonservices", kNs, "demo", spec);
  ASSERT_TRUE(Eventually([&] {
    return GetInt(*Get("deployments", "demo-router"), {"spec", "replicas"}) == 4;
  }));
}

TEST_F(ReconcileTest, RecoversAfterTheWatchBreaks) {
  server_->Create("batonservices", kNs, BatonService("demo"));
  StartController();
  ASSERT_TRUE(Settled("demo"));
  for (bool compact : {false, true}) {
    SCOPED_TRACE(compact ? "history compacted: relist" : "stream broken: reconnect");
    if (compact) server_->Compact();
    server_->BreakWatches();
    Json spec = Get("batonservices", "demo")->at("spec");
    const int replicas = static_cast<int>(GetInt(spec, {"prefill", "replicas"})) + 1;
    spec["prefill"]["replicas"] = replicas;
    server_->UpdateSpec("batonservices", kNs, "demo", spec);
    ASSERT_TRUE(Eventually([&] {
      return GetInt(*Get("deployments", "demo-prefill"), {"spec", "replicas"}) == replicas;
    }));
  }
  // A BatonService created while the watches were down shows up too.
  server_->BreakWatches();
  server_->Create("batonservices", kNs, BatonService("late"));
  ASSERT_TRUE(Eventually([&] { return Get("deployments", "late-decode").has_value(); }));
}

TEST_F(ReconcileTest, InvalidSpecIsReportedAndTouchesNothing) {
  Json bad = BatonService("bad");
  bad["spec"].erase("image");
  server_->Create("batonservices", kNs, bad);
  Json budget = BatonService(
      "budget",
      {{"autoscaling", {{"enabled", true}, {"gpuBudget", 2}, {"prefill", {{"minReplicas", 2}}}}}});
  server_->Create("batonservices", kNs, budget);
  StartController();
  ASSERT_TRUE(Settled("bad"));
  ASSERT_TRUE(Settled("budget"));
  EXPECT_EQ(Condition("bad", "Degraded"), "True");
  EXPECT_EQ(Condition("bad", "Degraded", "reason"), "InvalidSpec");
  EXPECT_THAT(Condition("bad", "Degraded", "message"), HasSubstr("image"));
  EXPECT_THAT(Condition("budget", "Degraded", "message"), HasSubstr("gpuBudget"));
  EXPECT_TRUE(server_->List("deployments", kNs).empty());
}

TEST_F(ReconcileTest, LeavesChildrenItDoesNotOwnAlone) {
  server_->Create("deployments", kNs,
                  {{"metadata", {{"name", "demo-router"}, {"labels", {{"team", "other"}}}}},
                   {"spec", {{"replicas", 5}}}});
  server_->Create("batonservices", kNs, BatonService("demo"));
  StartController();
  ASSERT_TRUE(Settled("demo"));
  EXPECT_EQ(GetInt(*Get("deployments", "demo-router"), {"spec", "replicas"}), 5);
  EXPECT_EQ(Condition("demo", "Degraded"), "True");
  EXPECT_EQ(Condition("demo", "Degraded", "reason"), "ChildNotOwned");
  EXPECT_TRUE(Get("deployments", "demo-prefill").has_value());
}

TEST_F(ReconcileTest, DeletionLeavesCleanupToTheGarbageCollector) {
  server_->Create("batonservices", kNs, BatonService("demo"));
  StartController();
  ASSERT_TRUE(Settled("demo"));
  server_->Delete("batonservices", kNs, "demo");
  EXPECT_EQ(server_->CollectGarbage(), 6);
  absl::SleepFor(absl::Milliseconds(300));
  // The operator does not resurrect the children of a deleted owner.
  EXPECT_TRUE(server_->List("deployments", kNs).empty());
  EXPECT_TRUE(server_->List("services", kNs).empty());
}

Json Autoscaled(const std::string& name) {
  return BatonService(
      name, {{"prefill", {{"replicas", 2}}},
             {"decode", {{"replicas", 2}}},
             {"autoscaling",
              {{"enabled", true},
               {"intervalSeconds", 1},
               {"warmupSeconds", 0},
               {"prefill", {{"minReplicas", 1}, {"maxReplicas", 6}}},
               {"decode", {{"minReplicas", 1}, {"maxReplicas", 6}}},
               {"targets", {{"ttftP90Seconds", 0.5}, {"interTokenLatencyP90Seconds", 0.5}}},
               {"scaleDown",
                {{"stabilizationWindowSeconds", 0}, {"maxPods", 1}, {"periodSeconds", 1}}}}}});
}

TEST_F(ReconcileTest, AutoscalerDecisionsReachTheDeployments) {
  server_->Create("batonservices", kNs, Autoscaled("demo"));
  AddPod("demo", Role::kPrefill, "demo-prefill-a");
  AddPod("demo", Role::kPrefill, "demo-prefill-b");
  AddPod("demo", Role::kDecode, "demo-decode-a");
  AddPod("demo", Role::kDecode, "demo-decode-b");
  // Prefill's TTFT p90 is 1 s against 0.5 s: it doubles. Decode idles at
  // 0.1 s against 0.5 s: it shrinks, and its least-loaded pod goes first.
  metrics_source_.Set("demo-prefill-a", {1.0, 3, 100});
  metrics_source_.Set("demo-prefill-b", {1.0, 3, 100});
  metrics_source_.Set("demo-decode-a", {0.1, 5, 100});
  metrics_source_.Set("demo-decode-b", {0.1, 1, 100});
  StartController();
  ASSERT_TRUE(Eventually([&] {
    return GetInt(*Get("deployments", "demo-prefill"), {"spec", "replicas"}) == 4 &&
           GetInt(*Get("deployments", "demo-decode"), {"spec", "replicas"}) == 1;
  }));
  // The victim was marked before the Deployment shrank.
  EXPECT_EQ(GetString(*Get("pods", "demo-decode-b"),
                      {"metadata", "annotations", "controller.kubernetes.io/pod-deletion-cost"}),
            "-1000");
  EXPECT_FALSE(Find(*Get("pods", "demo-decode-a"), {"metadata", "annotations"}) != nullptr &&
               Find(*Get("pods", "demo-decode-a"),
                    {"metadata", "annotations", "controller.kubernetes.io/pod-deletion-cost"}) !=
                   nullptr);
  ASSERT_TRUE(Eventually([&] {
    const Json decisions = Status("demo").value("scalingDecisions", Json::array());
    return decisions.size() >= 2;
  }));
  const std::string decisions = Status("demo")["scalingDecisions"].dump();
  EXPECT_THAT(decisions, HasSubstr("TTFTAboveTarget"));
  EXPECT_THAT(decisions, HasSubstr("BelowTarget"));
  EXPECT_EQ(Condition("demo", "ScalingActive"), "True");
  EXPECT_EQ(GetInt(Status("demo"), {"prefill", "desiredReplicas"}), 4);
  EXPECT_THAT(metrics_.Render(), HasSubstr("baton_operator_scaling_decisions_total"));

  // Metrics go missing: hold, and say so.
  metrics_source_.Silence();
  ASSERT_TRUE(Eventually([&] { return Condition("demo", "ScalingActive") == "False"; }));
  EXPECT_EQ(Condition("demo", "ScalingActive", "reason"), "MetricsUnavailable");
  const int calls = metrics_source_.calls();
  ASSERT_TRUE(Eventually([&] { return metrics_source_.calls() >= calls + 4; }));
  EXPECT_EQ(GetInt(*Get("deployments", "demo-prefill"), {"spec", "replicas"}), 4);
  EXPECT_EQ(GetInt(*Get("deployments", "demo-decode"), {"spec", "replicas"}), 1);
}

TEST_F(ReconcileTest, AutoscaledReplicasSurviveARestart) {
  server_->Create("batonservices", kNs, Autoscaled("demo"));
  AddPod("demo", Role::kPrefill, "p1");
  AddPod("demo", Role::kPrefill, "p2");
  metrics_source_.SetAll({1.0, 3, 100});
  StartController();
  ASSERT_TRUE(Eventually([&] {
    return GetInt(*Get("deployments", "demo-prefill"), {"spec", "replicas"}) == 4;
  }));
  StopController();
  // A new operator knows no history: it keeps what runs rather than going
  // back to spec.prefill.replicas (2).
  metrics_source_.SetAll({0.45, 1, 100});  // Within tolerance of the target.
  const int calls = metrics_source_.calls();
  StartController();
  ASSERT_TRUE(Eventually([&] { return metrics_source_.calls() >= calls + 6; }));
  EXPECT_EQ(GetInt(*Get("deployments", "demo-prefill"), {"spec", "replicas"}), 4);
}

TEST_F(ReconcileTest, OperatorServesMetricsAndHealth) {
  bool ready = false;
  absl::StatusOr<std::unique_ptr<HttpServer>> http =
      metrics_.Serve("127.0.0.1", 0, [&] { return ready; });
  ASSERT_TRUE(http.ok()) << http.status();
  HttpClient client;
  auto get = [&](const std::string& path) {
    absl::StatusOr<HttpClientResponse> r =
        client.Do({.method = "GET",
                   .url = absl::StrCat("http://127.0.0.1:", (*http)->port(), path),
                   .headers = {},
                   .body = "",
                   .timeout = absl::Seconds(5),
                   .connect_timeout = absl::Seconds(5)});
    return r.ok() ? *r : HttpClientResponse{};
  };
  EXPECT_EQ(get("/healthz").status, 200);
  EXPECT_EQ(get("/readyz").status, 503);
  ready = true;
  EXPECT_EQ(get("/readyz").status, 200);
  metrics_.CountReconcile("success", absl::Milliseconds(3));
  const HttpClientResponse m = get("/metrics");
  EXPECT_EQ(m.status, 200);
  EXPECT_THAT(m.body, HasSubstr("baton_operator_reconcile_total{result=\"success\"} 1"));
  EXPECT_EQ(get("/nope").status, 404);
}

LeaderElectionOptions FastLease(const std::string& identity) {
  LeaderElectionOptions o;
  o.ns = kNs;
  o.identity = identity;
  o.lease_duration = absl::Seconds(1);
  o.renew_deadline = absl::Milliseconds(700);
  o.retry_period = absl::Milliseconds(50);
  return o;
}

TEST_F(ReconcileTest, OneLeaderAndAFastHandOver) {
  LeaderElector a(client_.get(), FastLease("a"));
  LeaderElector b(client_.get(), FastLease("b"));
  std::atomic<int> leading{0};
  std::thread ta([&] { a.Run([&] { leading.fetch_add(1); }); });
  ASSERT_TRUE(Eventually([&] { return a.is_leader(); }));
  std::thread tb([&] { b.Run([&] { leading.fetch_add(1); }); });
  absl::SleepFor(absl::Milliseconds(1500));  // Longer than a lease: a renews.
  EXPECT_TRUE(a.is_leader());
  EXPECT_FALSE(b.is_leader());
  EXPECT_EQ(leading.load(), 1);
  EXPECT_EQ(GetString(*Get("leases", "baton-operator"), {"spec", "holderIdentity"}), "a");
  // a shuts down and releases: b leads without waiting out the lease.
  const absl::Time stop = absl::Now();
  a.Stop();
  ta.join();
  ASSERT_TRUE(Eventually([&] { return b.is_leader(); }));
  EXPECT_LT(absl::Now() - stop, absl::Milliseconds(900));
  EXPECT_EQ(GetString(*Get("leases", "baton-operator"), {"spec", "holderIdentity"}), "b");
  EXPECT_EQ(GetInt(*Get("leases", "baton-operator"), {"spec", "leaseTransitions"}), 1);
  b.Stop();
  tb.join();
}

TEST_F(ReconcileTest, AnExpiredLeaseIsTakenOver) {
  // A leader that died without releasing: its record stops changing.
  server_->Create("leases", kNs,
                  {{"metadata", {{"name", "baton-operator"}}},
                   {"spec",
                    {{"holderIdentity", "ghost"},
                     {"leaseDurationSeconds", 1},
                     {"renewTime", FormatMicroTimestamp(absl::Now())}}}});
  LeaderElector c(client_.get(), FastLease("c"));
  const absl::Time start = absl::Now();
  std::thread t([&] { c.Run([] {}); });
  ASSERT_TRUE(Eventually([&] { return c.is_leader(); }, absl::Seconds(5)));
  // Not before the lease duration has passed on c's own clock.
  EXPECT_GE(absl::Now() - start, absl::Seconds(1));
  c.Stop();
  t.join();
}

TEST_F(ReconcileTest, ALeaderThatCannotRenewStepsDown) {
  LeaderElector d(client_.get(), FastLease("d"));
  std::atomic<bool> stopped_cleanly{true};
  std::thread t([&] { stopped_cleanly = d.Run([] {}); });
  ASSERT_TRUE(Eventually([&] { return d.is_leader(); }));
  server_->FailNextWrites("leases", 1000);  // Renewals fail from now on.
  t.join();                                 // Run() returns by itself.
  EXPECT_FALSE(stopped_cleanly.load());
  EXPECT_FALSE(d.is_leader());
}

}  // namespace
}  // namespace baton::op
