// The kube client and the informer (list+watch) against the fake API server
// on 127.0.0.1: CRUD with resourceVersions, 409s, the status subresource,
// merge patch, watch streams with bookmarks, broken streams and 410 Gone.
#include "operator/kube_client.h"

#include <functional>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "operator/informer.h"
#include "tests/operator/fake_api_server.h"

namespace baton::op {
namespace {

using testing::FakeApiServer;

Json Object(const std::string& name, const Json& spec = Json::object()) {
  return Json{{"metadata", {{"name", name}, {"labels", {{"app", "baton"}}}}}, {"spec", spec}};
}

// Polls `done` for up to 10 s.
bool Eventually(const std::function<bool()>& done) {
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (absl::Now() < deadline) {
    if (done()) return true;
    absl::SleepFor(absl::Milliseconds(5));
  }
  return done();
}

class KubeClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    server_ = FakeApiServer::Start();
    ASSERT_NE(server_, nullptr);
    client_ = std::make_unique<KubeClient>(server_->Config());
  }
  std::unique_ptr<FakeApiServer> server_;
  std::unique_ptr<KubeClient> client_;
};

TEST_F(KubeClientTest, CreateGetUpdateWithResourceVersions) {
  absl::StatusOr<Json> created = client_->Create(kBatonServiceType, "ns1", Object("a", {{"x", 1}}));
  ASSERT_TRUE(created.ok()) << created.status();
  EXPECT_EQ(GetInt(*created, {"metadata", "generation"}), 1);
  EXPECT_FALSE(GetString(*created, {"metadata", "uid"}).empty());
  const std::string rv1 = GetString(*created, {"metadata", "resourceVersion"});

  absl::StatusOr<Json> got = client_->Get(kBatonServiceType, "ns1", "a");
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(*got, *created);

  // Creating it again: AlreadyExists, not Conflict.
  absl::Status again = client_->Create(kBatonServiceType, "ns1", Object("a")).status();
  EXPECT_TRUE(absl::IsAlreadyExists(again)) << again;

  // An update with the current resourceVersion succeeds and bumps it and,
  // as the spec changed, the generation.
  Json edit = *got;
  edit["spec"]["x"] = 2;
  absl::StatusOr<Json> updated = client_->Update(kBatonServiceType, "ns1", edit);
  ASSERT_TRUE(updated.ok()) << updated.status();
  EXPECT_NE(GetString(*updated, {"metadata", "resourceVersion"}), rv1);
  EXPECT_EQ(GetInt(*updated, {"metadata", "generation"}), 2);

  // The same edit again carries a stale resourceVersion: 409 Conflict.
  absl::Status stale = client_->Update(kBatonServiceType, "ns1", edit).status();
  EXPECT_TRUE(IsConflict(stale)) << stale;
  // A custom resource cannot be updated without one.
  Json blind = *updated;
  blind["metadata"].erase("resourceVersion");
  EXPECT_EQ(client_->Update(kBatonServiceType, "ns1", blind).status().code(),
            absl::StatusCode::kInvalidArgument);

  // A no-op update changes nothing.
  absl::StatusOr<Json> noop = client_->Update(kBatonServiceType, "ns1", *updated);
  ASSERT_TRUE(noop.ok());
  EXPECT_EQ(GetString(*noop, {"metadata", "resourceVersion"}),
            GetString(*updated, {"metadata", "resourceVersion"}));

  EXPECT_TRUE(absl::IsNotFound(client_->Get(kBatonServiceType, "ns1", "missing").status()));
  EXPECT_TRUE(client_->Delete(kBatonServiceType, "ns1", "a").ok());
  EXPECT_TRUE(absl::IsNotFound(client_->Get(kBatonServiceType, "ns1", "a").status()));
}

TEST_F(KubeClientTest, StatusSubresourceIsSeparateFromSpec) {
  Json obj = Object("s", {{"replicas", 1}});
  obj["status"] = {{"ready", 99}};  // Ignored on create.
  absl::StatusOr<Json> created = client_->Create(kBatonServiceType, "ns1", obj);
  ASSERT_TRUE(created.ok());
  EXPECT_FALSE(created->contains("status"));

  Json with_status = *created;
  with_status["status"] = {{"observedGeneration", 1}};
  absl::StatusOr<Json> st = client_->UpdateStatus(kBatonServiceType, "ns1", with_status);
  ASSERT_TRUE(st.ok()) << st.status();
  EXPECT_EQ(GetInt(*st, {"status", "observedGeneration"}), 1);
  EXPECT_EQ(GetInt(*st, {"metadata", "generation"}), 1);  // Status writes keep the generation.

  // The main endpoint ignores status, and /status ignores the spec.
  Json main = *st;
  main["status"] = {{"observedGeneration", 42}};
  absl::StatusOr<Json> after_main = client_->Update(kBatonServiceType, "ns1", main);
  ASSERT_TRUE(after_main.ok());
  EXPECT_EQ(GetInt(*after_main, {"status", "observedGeneration"}), 1);
  Json sub = *after_main;
  sub["spec"]["replicas"] = 7;
  sub["status"]["observedGeneration"] = 2;
  absl::StatusOr<Json> after_sub = client_->UpdateStatus(kBatonServiceType, "ns1", sub);
  ASSERT_TRUE(after_sub.ok());
  EXPECT_EQ(GetInt(*after_sub, {"spec", "replicas"}), 1);
  EXPECT_EQ(GetInt(*after_sub, {"status", "observedGeneration"}), 2);
  // A status write with a stale resourceVersion conflicts too.
  EXPECT_TRUE(IsConflict(client_->UpdateStatus(kBatonServiceType, "ns1", sub).status()));
}

TEST_F(KubeClientTest, MergePatchAndListSelectors) {
  ASSERT_TRUE(client_->Create(kPodType, "ns1", Object("p1")).ok());
  Json other = Object("p2");
  other["metadata"]["labels"]["app"] = "other";
  ASSERT_TRUE(client_->Create(kPodType, "ns1", other).ok());
  ASSERT_TRUE(client_->Create(kPodType, "ns2", Object("p3")).ok());

  absl::StatusOr<Json> patched = client_->Patch(
      kPodType, "ns1", "p1",
      Json{
          {"metadata", {{"annotations", {{"controller.kubernetes.io/pod-deletion-cost", "-5"}}}}}});
  ASSERT_TRUE(patched.ok()) << patched.status();
  EXPECT_EQ(GetString(*patched,
                      {"metadata", "annotations", "controller.kubernetes.io/pod-deletion-cost"}),
            "-5");
  EXPECT_EQ(GetString(*patched, {"metadata", "labels", "app"}), "baton");  // Merged, not replaced.
  // A patch conditional on a stale resourceVersion conflicts.
  EXPECT_TRUE(IsConflict(
      client_->Patch(kPodType, "ns1", "p1", Json{{"metadata", {{"resourceVersion", "1"}}}})
          .status()));

  absl::StatusOr<Json> list =
      client_->List(kPodType, "ns1", {.label_selector = "app=baton", .field_selector = ""});
  ASSERT_TRUE(list.ok());
  ASSERT_EQ((*list)["items"].size(), 1u);
  EXPECT_EQ(GetString((*list)["items"][0], {"metadata", "name"}), "p1");
  EXPECT_FALSE(GetString(*list, {"metadata", "resourceVersion"}).empty());
  absl::StatusOr<Json> all =
      client_->List(kPodType, "", {.label_selector = "app", .field_selector = ""});
  ASSERT_TRUE(all.ok());
  EXPECT_EQ((*all)["items"].size(), 3u);
  absl::StatusOr<Json> none =
      client_->List(kPodType, "", {.label_selector = "app,app!=baton", .field_selector = ""});
  ASSERT_TRUE(none.ok());
  EXPECT_EQ((*none)["items"].size(), 1u);
}

TEST_F(KubeClientTest, WrongTokenIsUnauthenticated) {
  KubeConfig config = server_->Config();
  config.token = "wrong";
  KubeClient bad(config);
  EXPECT_EQ(bad.List(kPodType, "ns1").status().code(), absl::StatusCode::kUnauthenticated);
}

TEST_F(KubeClientTest, TransportErrorsAreUnavailable) {
  KubeConfig config = server_->Config();
  server_.reset();  // Nothing listens there any more.
  KubeClient client(config);
  EXPECT_EQ(client.List(kPodType, "ns1").status().code(), absl::StatusCode::kUnavailable);
}

TEST_F(KubeClientTest, WatchStreamsEventsAfterTheResourceVersion) {
  absl::StatusOr<Json> a = client_->Create(kDeploymentType, "ns1", Object("a"));
  ASSERT_TRUE(a.ok());
  const std::string rv = GetString(*a, {"metadata", "resourceVersion"});
  ASSERT_TRUE(client_->Create(kDeploymentType, "ns1", Object("b")).ok());
  ASSERT_TRUE(client_->Delete(kDeploymentType, "ns1", "a").ok());
  std::vector<std::string> seen;
  WatchOptions wo;
  wo.resource_version = rv;
  wo.timeout_seconds = 1;
  absl::Status s = client_->Watch(
      kDeploymentType, "ns1", wo,
      [&](const WatchEvent& e) {
        seen.push_back(e.type + " " + GetString(e.object, {"metadata", "name"}));
        return seen.size() < 2;
      },
      nullptr);
  EXPECT_TRUE(s.ok()) << s;
  EXPECT_THAT(seen, ::testing::ElementsAre("ADDED b", "DELETED a"));

  // From an unset resourceVersion: the current objects as ADDED first.
  seen.clear();
  wo.resource_version = "";
  s = client_->Watch(
      kDeploymentType, "ns1", wo,
      [&](const WatchEvent& e) {
        seen.push_back(e.type + " " + GetString(e.object, {"metadata", "name"}));
        return false;
      },
      nullptr);
  EXPECT_THAT(seen, ::testing::ElementsAre("ADDED b"));

  // A compacted history answers 410 Gone.
  server_->Compact();
  wo.resource_version = rv;
  s = client_->Watch(
      kDeploymentType, "ns1", wo, [](const WatchEvent&) { return true; }, nullptr);
  EXPECT_TRUE(IsGone(s)) << s;
  // ... or, if the server says so in the stream, an ERROR event.
  server_->SetGoneAsEvent(true);
  int64_t code = 0;
  s = client_->Watch(
      kDeploymentType, "ns1", wo,
      [&](const WatchEvent& e) {
        if (e.type == "ERROR") code = GetInt(e.object, {"code"});
        return true;
      },
      nullptr);
  EXPECT_TRUE(s.ok());
  EXPECT_EQ(code, 410);
}

TEST_F(KubeClientTest, CancelEndsAWatchAtOnce) {
  CancelToken cancel;
  absl::Status result;
  absl::Notification done;
  std::thread t([&] {
    WatchOptions wo;
    wo.timeout_seconds = 60;
    result = client_->Watch(
        kPodType, "", wo, [](const WatchEvent&) { return true; }, &cancel);
    done.Notify();
  });
  ASSERT_TRUE(Eventually([&] { return server_->open_watches() == 1; }));
  const absl::Time start = absl::Now();
  cancel.Cancel();
  EXPECT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(5)));
  t.join();
  EXPECT_LT(absl::Now() - start, absl::Milliseconds(500));
  EXPECT_EQ(result.code(), absl::StatusCode::kCancelled);
}

// Records what an informer reports.
class Recorder {
 public:
  InformerHandler Handler() {
    return [this](EventKind kind, const Json& obj) {
      absl::MutexLock lock(&mu_);
      const char* k = kind == EventKind::kAdded      ? "ADDED"
                      : kind == EventKind::kModified ? "MODIFIED"
                                                     : "DELETED";
      events_.push_back(std::string(k) + " " + GetString(obj, {"metadata", "name"}));
    };
  }
  std::vector<std::string> events() const {
    absl::MutexLock lock(&mu_);
    return events_;
  }
  bool Saw(const std::string& e) const {
    auto ev = events();
    return std::find(ev.begin(), ev.end(), e) != ev.end();
  }

 private:
  mutable absl::Mutex mu_;
  std::vector<std::string> events_;
};

InformerOptions FastOptions() {
  InformerOptions o;
  o.initial_backoff = absl::Milliseconds(10);
  o.max_backoff = absl::Milliseconds(100);
  return o;
}

TEST_F(KubeClientTest, InformerListsWatchesAndReconnects) {
  server_->Create("services", "ns1", Object("before"));
  Recorder rec;
  Informer informer(client_.get(), kServiceType, FastOptions(), rec.Handler());
  informer.Start();
  ASSERT_TRUE(Eventually([&] { return informer.HasSynced(); }));
  EXPECT_TRUE(rec.Saw("ADDED before"));
  ASSERT_TRUE(informer.Get("ns1", "before").has_value());
  EXPECT_EQ(GetString(*informer.Get("ns1", "before"), {"kind"}), "Service");

  server_->Create("services", "ns1", Object("after"));
  server_->UpdateSpec("services", "ns1", "before", Json{{"x", 1}});
  ASSERT_TRUE(Eventually([&] { return rec.Saw("ADDED after") && rec.Saw("MODIFIED before"); }));

  // The stream breaks: the informer reconnects from its resourceVersion
  // (no relist) and sees what happened meanwhile.
  server_->BreakWatches();
  server_->Delete("services", "ns1", "after");
  ASSERT_TRUE(Eventually([&] { return rec.Saw("DELETED after"); }));
  EXPECT_FALSE(informer.Get("ns1", "after").has_value());
  EXPECT_EQ(informer.lists(), 1);
  EXPECT_GE(informer.watches(), 2);

  // Bookmarks move the resourceVersion on without events.
  server_->Create("pods", "ns1", Object("unrelated"));
  const std::string before_bookmark = informer.resource_version();
  server_->SendBookmarks();
  ASSERT_TRUE(Eventually(
      [&] { return informer.resource_version() == std::to_string(server_->resource_version()); }));
  EXPECT_NE(informer.resource_version(), before_bookmark);
  informer.Stop();
}

TEST_F(KubeClientTest, InformerRelistsOnGoneAndNoticesMissedDeletes) {
  for (bool as_event : {false, true}) {
    SCOPED_TRACE(as_event ? "410 as an ERROR event" : "410 as HTTP status");
    server_ = FakeApiServer::Start();
    client_ = std::make_unique<KubeClient>(server_->Config());
    server_->SetGoneAsEvent(as_event);
    server_->Create("deployments", "ns1", Object("keep"));
    server_->Create("deployments", "ns1", Object("lost"));
    Recorder rec;
    Informer informer(client_.get(), kDeploymentType, FastOptions(), rec.Handler());
    informer.Start();
    ASSERT_TRUE(Eventually([&] { return informer.HasSynced(); }));
    ASSERT_TRUE(Eventually([&] { return server_->open_watches() == 1; }));

    // While the watch is down the history is compacted and an object goes
    // without an event the informer could see: only a relist finds out.
    server_->DeleteWithoutEvent("deployments", "ns1", "lost");
    server_->Compact();
    server_->BreakWatches();
    server_->Create("deployments", "ns1", Object("new"));
    ASSERT_TRUE(Eventually([&] { return rec.Saw("DELETED lost"); }))
        << ::testing::PrintToString(rec.events());
    EXPECT_TRUE(rec.Saw("ADDED new"));
    EXPECT_EQ(informer.lists(), 2);
    EXPECT_FALSE(informer.Get("ns1", "lost").has_value());
    EXPECT_TRUE(informer.Get("ns1", "keep").has_value());
    // Nothing was reported twice.
    auto ev = rec.events();
    EXPECT_EQ(std::count(ev.begin(), ev.end(), "ADDED keep"), 1);
    informer.Stop();
  }
}

TEST_F(KubeClientTest, InformerBacksOffWhileTheServerIsDown) {
  KubeConfig config = server_->Config();
  config.server = "http://127.0.0.1:1";  // Nothing listens on port 1.
  KubeClient down(config);
  Recorder rec;
  Informer informer(&down, kPodType, FastOptions(), rec.Handler());
  informer.Start();
  absl::SleepFor(absl::Milliseconds(300));
  EXPECT_FALSE(informer.HasSynced());
  const absl::Time start = absl::Now();
  informer.Stop();  // Stops promptly even while backing off.
  EXPECT_LT(absl::Now() - start, absl::Milliseconds(500));
}

}  // namespace
}  // namespace baton::op
