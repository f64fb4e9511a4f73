// An in-memory Kubernetes API server for tests, on 127.0.0.1 with an
// OS-chosen port. It implements what the operator relies on, faithfully
// enough that the bugs a sloppy fake hides show up:
//   - one global, increasing resourceVersion, bumped by every write;
//     no-op updates change nothing (no bump, no event);
//   - optimistic concurrency: PUT with a stale resourceVersion -> 409
//     Conflict; create of an existing name -> 409 AlreadyExists; PUT of a
//     custom resource without resourceVersion -> 422;
//   - metadata.generation bumped on spec changes only; uid and
//     creationTimestamp set by the server;
//   - the status subresource: the main endpoint ignores .status, /status
//     changes nothing else;
//   - JSON merge patch (RFC 7386), optionally conditional on
//     resourceVersion; other patch types -> 415;
//   - list with label selectors and the list's resourceVersion;
//   - watch: events after the given resourceVersion, synthetic ADDED for
//     "0"/unset, BOOKMARKs on request, timeoutSeconds, streams broken on
//     request, and 410 Gone (as HTTP 410 or an ERROR event) for a
//     resourceVersion older than the compacted history;
//   - bearer-token authentication (401 otherwise).
// Like envtest it runs no controllers: tests drive Deployment status and
// create Pods themselves, and garbage collection of owned objects happens
// only when a test calls CollectGarbage().
//
// Thread-safety: all methods may be called from any thread.
#ifndef BATON_TESTS_OPERATOR_FAKE_API_SERVER_H_
#define BATON_TESTS_OPERATOR_FAKE_API_SERVER_H_

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "operator/http_server.h"
#include "operator/json_util.h"
#include "operator/kube_config.h"

namespace baton::op::testing {

class FakeApiServer {
 public:
  static std::unique_ptr<FakeApiServer> Start();
  ~FakeApiServer();

  static constexpr char kToken[] = "test-token";
  // A configuration that reaches this server over plain HTTP with kToken.
  KubeConfig Config() const;
  int port() const { return http_->port(); }

  // Direct access, bypassing HTTP (and fault injection). `plural` names the
  // resource: batonservices, deployments, services, pods, leases.
  Json Create(const std::string& plural, const std::string& ns, Json object);
  std::optional<Json> Get(const std::string& plural, const std::string& ns,
                          const std::string& name) const;
  std::vector<Json> List(const std::string& plural, const std::string& ns = "") const;
  // Replaces the object's spec (or, for resources without one, the whole
  // body but metadata), as `kubectl edit` would.
  Json UpdateSpec(const std::string& plural, const std::string& ns, const std::string& name,
                  const Json& spec);
  Json SetStatus(const std::string& plural, const std::string& ns, const std::string& name,
                 const Json& status);
  bool Delete(const std::string& plural, const std::string& ns, const std::string& name);
  // Deletes without an event, as if a watcher had missed it while
  // disconnected (follow with Compact() and BreakWatches() to force the
  // relist that must notice).
  bool DeleteWithoutEvent(const std::string& plural, const std::string& ns,
                          const std::string& name);
  // Deletes objects whose controller owner no longer exists (the garbage
  // collector of kube-controller-manager), until none is left.
  int CollectGarbage();
  int64_t resource_version() const;

  // Faults.
  void BreakWatches();  // Ends every open watch stream now.
  // Forgets the event history: watches from an older resourceVersion get
  // 410 Gone.
  void Compact();
  // 410 as an ERROR event in a 200 stream instead of an HTTP 410.
  void SetGoneAsEvent(bool as_event);
  // Sends a BOOKMARK to every watch that allows them.
  void SendBookmarks();
  // The next `n` writes (POST, PUT, PATCH) through HTTP to `plural` answer
  // 409 Conflict without changing anything.
  void FailNextWrites(const std::string& plural, int n);

  // Requests served through HTTP, e.g. Count("POST", "deployments").
  int Count(const std::string& method, const std::string& plural) const;
  int open_watches() const;

 private:
  struct Resource {
    std::string group, version, kind;
    bool status_subresource;
    bool custom;  // A CRD: PUT needs a resourceVersion.
  };
  struct Event {
    int64_t rv;
    std::string type;
    std::string plural;
    Json object;
  };

  FakeApiServer() = default;
  void Handle(const HttpRequest& req, HttpResponseWriter& w);
  void Watch(const std::string& plural, const std::string& ns, const HttpRequest& req,
             HttpResponseWriter& w);
  void Reply(HttpResponseWriter& w, int code, const Json& body);
  static Json StatusBody(int code, const std::string& reason, const std::string& message);
  const Resource* Lookup(const std::string& plural) const;

  // Under mu_: store operations that emit events.
  Json Stored(const std::string& plural, Json object, const std::string& type)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  Json CreateLocked(const std::string& plural, const std::string& ns, Json object)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Writes `updated` over the stored object if it differs; bumps generation
  // on spec changes.
  Json ReplaceLocked(const std::string& plural, const Json& old, Json updated)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void DeleteLocked(const std::string& plural, const std::string& key)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  std::unique_ptr<HttpServer> http_;
  std::map<std::string, Resource> resources_;

  mutable absl::Mutex mu_;
  absl::CondVar cv_;  // Signalled on every event, break and bookmark.
  int64_t rv_ ABSL_GUARDED_BY(mu_) = 1000;
  int64_t uid_ ABSL_GUARDED_BY(mu_) = 0;
  // plural -> "ns/name" -> object.
  std::map<std::string, std::map<std::string, Json>> store_ ABSL_GUARDED_BY(mu_);
  std::vector<Event> history_ ABSL_GUARDED_BY(mu_);
  int64_t compacted_rv_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t break_generation_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t bookmark_generation_ ABSL_GUARDED_BY(mu_) = 0;
  bool gone_as_event_ ABSL_GUARDED_BY(mu_) = false;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::map<std::string, int> fail_writes_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, int> counts_ ABSL_GUARDED_BY(mu_);
  int open_watches_ ABSL_GUARDED_BY(mu_) = 0;
};

// Matches Kubernetes equality-based label selectors: "a=b,c!=d,e,!f".
bool MatchesSelector(const Json& object, const std::string& selector);

}  // namespace baton::op::testing

#endif  // BATON_TESTS_OPERATOR_FAKE_API_SERVER_H_
