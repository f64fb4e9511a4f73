// What a BatonService owns, built as JSON objects: per role a Deployment and
// a Service. Prefill and decode get headless Services, so that the router
// resolves every ready pod by DNS; pods are probed over grpc.health.v1, and
// their preStop sleep and terminationGracePeriodSeconds follow from the
// role's drain timeout. Pure functions: the reconciler decides what to write.
//
// Thread-safety: pure functions.
#ifndef BATON_OPERATOR_CHILDREN_H_
#define BATON_OPERATOR_CHILDREN_H_

#include <string>

#include "operator/api_types.h"
#include "operator/json_util.h"

namespace baton::op {

inline constexpr char kManagedBy[] = "baton-operator";
inline constexpr char kSpecHashAnnotation[] = "baton.dev/spec-hash";
inline constexpr char kDeletionCostAnnotation[] = "controller.kubernetes.io/pod-deletion-cost";
// Every object the operator creates carries this label (its informers'
// selector).
inline constexpr char kManagedByLabel[] = "app.kubernetes.io/managed-by";

struct BuildOptions {
  std::string cluster_domain = "cluster.local";
};

// "<service>-<role>": the name of the role's Deployment and Service.
std::string ChildName(const std::string& service, Role role);
// The labels on every child and pod of one role...
Json RoleLabels(const std::string& service, Role role);
// ...of which these select the pods (immutable once created).
Json SelectorLabels(const std::string& service, Role role);
// "app.kubernetes.io/instance=<service>,app.kubernetes.io/component=<role>".
std::string PodSelector(const std::string& service, Role role);
// The ownerReference that points at `owner` (a BatonService object).
Json OwnerReference(const Json& owner);
// "<service>-<role>.<ns>.svc.<domain>:<port>": what the router dials.
std::string RoleAddress(const std::string& service, const std::string& ns, Role role, int port,
                        const BuildOptions& options);

// `owner` is the BatonService object (for name, namespace and uid).
Json BuildDeployment(const Json& owner, const BatonServiceSpec& spec, Role role, int replicas,
                     const BuildOptions& options);
Json BuildService(const Json& owner, const BatonServiceSpec& spec, Role role);

}  // namespace baton::op

#endif  // BATON_OPERATOR_CHILDREN_H_
