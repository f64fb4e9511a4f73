// The control loop: informers for BatonServices and for the Deployments,
// Services and Pods the operator manages feed a rate-limited work queue of
// BatonService keys; workers run the Reconciler on them. A child's event
// enqueues its owner; the reconciler's requeue_after drives the autoscaler's
// ticks; a periodic resync re-reconciles everything (events are not a
// reliable record, state is).
//
// Thread-safety: StartInformers() first; RunWorkers() and Stop() may race
// (a signal while becoming the leader); the rest is internal.
#ifndef BATON_OPERATOR_CONTROLLER_H_
#define BATON_OPERATOR_CONTROLLER_H_

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "operator/informer.h"
#include "operator/kube_client.h"
#include "operator/metrics_source.h"
#include "operator/operator_metrics.h"
#include "operator/reconciler.h"
#include "operator/work_queue.h"

namespace baton::op {

struct ControllerOptions {
  std::string watch_namespace;  // Empty: all namespaces.
  int workers = 2;
  absl::Duration resync = absl::Minutes(5);
  InformerOptions informer;  // Its ns and label selector are set per informer.
  RateLimiterOptions rate_limiter;
  ReconcilerOptions reconciler;
};

class Controller {
 public:
  // `metrics` (optional) receives the operator's own metrics.
  Controller(const KubeClient* client, MetricsSource* source, OperatorMetrics* metrics,
             ControllerOptions options);
  ~Controller();
  Controller(const Controller&) = delete;
  Controller& operator=(const Controller&) = delete;

  // Starts the informers (standbys keep warm caches too).
  void StartInformers();
  bool Synced() const;
  bool WaitForSync(absl::Duration timeout) const;
  // Starts the workers and the resync loop (the leader only).
  void RunWorkers();
  // Stops taking work, lets reconciles in flight finish, stops the
  // informers. Idempotent.
  void Stop();

  WorkQueue& queue() { return queue_; }

 private:
  void EnqueueOwner(const Json& child);
  void Work();

  const KubeClient* client_;
  OperatorMetrics* metrics_;
  const ControllerOptions options_;
  WorkQueue queue_;
  std::unique_ptr<Informer> batonservices_;
  std::unique_ptr<Informer> deployments_;
  std::unique_ptr<Informer> services_;
  std::unique_ptr<Informer> pods_;
  std::unique_ptr<Reconciler> reconciler_;
  absl::Notification stop_;
  // RunWorkers() runs on the leader-election thread, Stop() on main's.
  absl::Mutex threads_mu_;
  std::vector<std::thread> threads_ ABSL_GUARDED_BY(threads_mu_);
};

}  // namespace baton::op

#endif  // BATON_OPERATOR_CONTROLLER_H_
