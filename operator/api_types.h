// The BatonService custom resource (baton.dev/v1alpha1): its spec as C++
// values with defaults applied and validated. The CRD in
// deploy/helm/baton/crds/ states the same schema for the API server; this
// parser is the operator's own check (a CRD can be installed without its
// validation, or be older than the operator).
//
// Thread-safety: plain values and pure functions.
#ifndef BATON_OPERATOR_API_TYPES_H_
#define BATON_OPERATOR_API_TYPES_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "operator/autoscaler.h"
#include "operator/json_util.h"

namespace baton::op {

enum class Role { kRouter, kPrefill, kDecode };
inline constexpr Role kRoles[] = {Role::kRouter, Role::kPrefill, Role::kDecode};
const char* RoleName(Role role);

inline constexpr char kGpuResource[] = "nvidia.com/gpu";

struct RoleSpec {
  int replicas = 1;
  int port = 50051;                 // gRPC (--port); the readiness probe's too.
  int metrics_port = 9090;          // Prometheus /metrics (--metrics-port).
  Json resources = Json::object();  // corev1.ResourceRequirements.
  Json node_selector = Json::object();
  Json tolerations = Json::array();
  std::vector<std::string> args;  // Appended to the operator's own flags.
  Json env = Json::array();       // corev1.EnvVar list.
  // SIGTERM -> exit budget (--drain-timeout): running requests finish.
  int drain_timeout_seconds = 60;
  // preStop sleep: the router stops sending work before SIGTERM.
  int pre_stop_seconds = 10;

  // nvidia.com/gpu per pod (limits, else requests).
  double Gpus() const;
  // preStop + drain + 5 s of slack for the process to exit.
  int TerminationGracePeriodSeconds() const { return pre_stop_seconds + drain_timeout_seconds + 5; }
};

struct ModelSpec {
  std::string claim_name;  // A PersistentVolumeClaim...
  std::string path;        // ...and the directory inside it ("" = its root).
  std::string host_path;   // Or a directory on the node.
};

struct MetricsSpec {
  enum class Source { kScrape, kPrometheus };
  Source source = Source::kScrape;
  std::string prometheus_url;
  int window_seconds = 60;
};

struct AutoscalingSpec {
  bool enabled = false;
  int interval_seconds = 15;
  AutoscalingPolicy policy;  // GPU counts are filled from the role specs.
};

// The Secret holding the deployment's shared secret for worker-to-worker
// calls and the KV data channel (empty: workers accept any peer).
struct SharedSecretSpec {
  std::string secret_name;
  std::string key = "secret";
};

struct BatonServiceSpec {
  std::string image;
  SharedSecretSpec shared_secret;
  std::string image_pull_policy = "IfNotPresent";
  Json image_pull_secrets = Json::array();
  ModelSpec model;
  RoleSpec router;
  RoleSpec prefill;
  RoleSpec decode;
  AutoscalingSpec autoscaling;
  MetricsSpec metrics;

  const RoleSpec& role(Role r) const {
    return r == Role::kRouter ? router : r == Role::kPrefill ? prefill : decode;
  }
};

// Reads `spec` (the CR's .spec) with defaults; INVALID_ARGUMENT naming the
// first bad field.
absl::StatusOr<BatonServiceSpec> ParseBatonServiceSpec(const Json& spec);

}  // namespace baton::op

#endif  // BATON_OPERATOR_API_TYPES_H_
