// Reconciles one BatonService: level-triggered and idempotent. It reads the
// resource and its children from the informers' caches, decides the replica
// count of each role (the spec's, or the autoscaler's at each interval),
// creates or updates the owned Deployments and Services so that they match,
// marks scale-down victims with a pod-deletion-cost, and writes the status
// subresource when it changed. Running it twice in a row changes nothing the
// second time; a 409 Conflict ends the pass with ABORTED so that the caller
// requeues it against fresher state.
//
// Thread-safety: Reconcile() may run concurrently for different keys (the
// work queue never hands one key to two workers).
#ifndef BATON_OPERATOR_RECONCILER_H_
#define BATON_OPERATOR_RECONCILER_H_

#include <functional>
#include <map>
#include <optional>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "operator/api_types.h"
#include "operator/autoscaler.h"
#include "operator/children.h"
#include "operator/informer.h"
#include "operator/kube_client.h"
#include "operator/metrics_source.h"

namespace baton::op {

// The caches a reconcile reads (not owned).
struct ReconcilerCaches {
  const Informer* batonservices = nullptr;
  const Informer* deployments = nullptr;
  const Informer* services = nullptr;
  const Informer* pods = nullptr;
};

struct ReconcilerOptions {
  BuildOptions build;
  std::function<absl::Time()> clock = [] { return absl::Now(); };
  size_t max_decisions = 10;  // status.scalingDecisions keeps this many.
  // Called after each autoscaler tick (for the operator's own metrics).
  std::function<void(const std::string& ns, const std::string& name,
                     const AutoscalerResult& result)>
      on_autoscale;
};

struct ReconcileResult {
  absl::Status status;
  // When to run again even without an event (the next autoscaler tick);
  // zero for never.
  absl::Duration requeue_after = absl::ZeroDuration();
};

class Reconciler {
 public:
  Reconciler(const KubeClient* client, ReconcilerCaches caches, MetricsSource* metrics,
             ReconcilerOptions options = {});

  ReconcileResult Reconcile(const std::string& ns, const std::string& name);

 private:
  // What the autoscaler remembers about one BatonService between ticks.
  struct Memory {
    std::string uid;
    AutoscalerState state;
    absl::Time last_tick = absl::InfinitePast();
    std::optional<AutoscalerResult> last;
  };

  // Creates or updates one child of `cr`; returns the object as it now is.
  // A child that exists without our ownerReference is left alone and
  // reported in `*not_owned`. CANCELLED when `cr` turns out to be deleted.
  absl::StatusOr<Json> Apply(const ResourceType& type, const Informer* cache, const Json& desired,
                             const Json& cr, std::string* not_owned);
  absl::Status MarkVictims(const std::string& ns, const std::string& service, Role role,
                           const PoolDecision& decision);
  std::vector<Json> PoolPods(const std::string& ns, const std::string& service, Role role) const;

  const KubeClient* client_;
  const ReconcilerCaches caches_;
  MetricsSource* metrics_;
  const ReconcilerOptions options_;

  absl::Mutex mu_;
  std::map<std::string, Memory> memory_ ABSL_GUARDED_BY(mu_);  // By "ns/name".
};

// Sets (or adds) the condition `type` in a status.conditions list, keeping
// lastTransitionTime unless the status changes.
void SetCondition(Json* conditions, const std::string& type, const std::string& status,
                  const std::string& reason, const std::string& message, int64_t generation,
                  absl::Time now);

}  // namespace baton::op

#endif  // BATON_OPERATOR_RECONCILER_H_
