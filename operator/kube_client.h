// A Kubernetes REST client over HTTPS: get, list, create, update (PUT with
// resourceVersion, optimistic concurrency), the status subresource, JSON
// merge patch, delete and watch streams, for any resource type named by
// group/version/plural.
//
// API errors become absl::Status codes (see StatusFromHttp):
//   404 NOT_FOUND, 409 AlreadyExists ALREADY_EXISTS, 409 Conflict ABORTED,
//   410 Gone OUT_OF_RANGE (resourceVersion too old: relist), 400/422
//   INVALID_ARGUMENT, 401 UNAUTHENTICATED, 403 PERMISSION_DENIED,
//   429 RESOURCE_EXHAUSTED, 5xx and transport errors UNAVAILABLE.
//
// Thread-safety: all methods may be called concurrently.
#ifndef BATON_OPERATOR_KUBE_CLIENT_H_
#define BATON_OPERATOR_KUBE_CLIENT_H_

#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "operator/http_client.h"
#include "operator/json_util.h"
#include "operator/kube_config.h"

namespace baton::op {

struct ResourceType {
  const char* group;  // "" for the core group.
  const char* version;
  const char* plural;
  const char* kind;
  bool namespaced;

  std::string ApiVersion() const;
};

inline constexpr ResourceType kBatonServiceType{"baton.dev", "v1alpha1", "batonservices",
                                                "BatonService", true};
inline constexpr ResourceType kDeploymentType{"apps", "v1", "deployments", "Deployment", true};
inline constexpr ResourceType kServiceType{"", "v1", "services", "Service", true};
inline constexpr ResourceType kPodType{"", "v1", "pods", "Pod", true};
inline constexpr ResourceType kLeaseType{"coordination.k8s.io", "v1", "leases", "Lease", true};

// absl::IsNotFound and absl::IsAlreadyExists cover 404 and 409
// AlreadyExists.
bool IsConflict(const absl::Status& s);  // 409 Conflict (stale resourceVersion).
bool IsGone(const absl::Status& s);      // 410: relist.

// Turns an HTTP status and its metav1.Status body into an absl::Status.
absl::Status StatusFromHttp(long code, const std::string& body, const std::string& what);

struct ListOptions {
  std::string label_selector;
  std::string field_selector;
};

struct WatchOptions {
  std::string resource_version;
  std::string label_selector;
  int timeout_seconds = 300;  // The server ends the stream after this.
  bool allow_bookmarks = true;
};

struct WatchEvent {
  std::string type;  // ADDED, MODIFIED, DELETED, BOOKMARK or ERROR.
  Json object;
};

class KubeClient {
 public:
  explicit KubeClient(KubeConfig config);

  const KubeConfig& config() const { return config_; }

  absl::StatusOr<Json> Get(const ResourceType& type, const std::string& ns,
                           const std::string& name) const;
  // The list object: items plus metadata.resourceVersion. `ns` empty lists
  // all namespaces.
  absl::StatusOr<Json> List(const ResourceType& type, const std::string& ns,
                            const ListOptions& options = {}) const;
  absl::StatusOr<Json> Create(const ResourceType& type, const std::string& ns,
                              const Json& object) const;
  // PUT; fails with a conflict when metadata.resourceVersion is stale.
  absl::StatusOr<Json> Update(const ResourceType& type, const std::string& ns,
                              const Json& object) const;
  absl::StatusOr<Json> UpdateStatus(const ResourceType& type, const std::string& ns,
                                    const Json& object) const;
  // RFC 7386 JSON merge patch.
  absl::StatusOr<Json> Patch(const ResourceType& type, const std::string& ns,
                             const std::string& name, const Json& patch) const;
  absl::Status Delete(const ResourceType& type, const std::string& ns,
                      const std::string& name) const;

  // Streams watch events to `on_event` until the server ends the stream
  // (OK), `on_event` returns false (OK), `cancel` fires (CANCELLED) or an
  // error. A 410 answer yields OUT_OF_RANGE; an ERROR event is passed to
  // `on_event` like any other.
  absl::Status Watch(const ResourceType& type, const std::string& ns, const WatchOptions& options,
                     const std::function<bool(const WatchEvent&)>& on_event,
                     CancelToken* cancel) const;

  // The URL path of a collection (`name` empty) or an object.
  static std::string Path(const ResourceType& type, const std::string& ns,
                          const std::string& name = "", const std::string& subresource = "");

 private:
  absl::StatusOr<Json> Call(const std::string& method, const std::string& path_and_query,
                            const std::string& body, const std::string& content_type,
                            const std::string& what) const;
  std::vector<std::string> Headers(const std::string& content_type) const;

  KubeConfig config_;
  std::unique_ptr<HttpClient> http_;
};

}  // namespace baton::op

#endif  // BATON_OPERATOR_KUBE_CLIENT_H_
