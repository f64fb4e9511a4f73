// Leader election on a coordination.k8s.io/v1 Lease, as client-go does it:
// a candidate takes the Lease when it is free or when its record (holder and
// renewTime) has not changed for a full lease duration by the candidate's own
// clock (so that clocks need not agree), and renews it every retry period.
// Every write carries the resourceVersion read before, so of two candidates
// racing only one wins (409 for the other). A leader that cannot renew
// within the renew deadline stops leading; on shutdown it releases the Lease
// so that a standby takes over at once.
//
// Thread-safety: Run() on one thread; Stop() and is_leader() from any.
#ifndef BATON_OPERATOR_LEADER_ELECTION_H_
#define BATON_OPERATOR_LEADER_ELECTION_H_

#include <atomic>
#include <functional>
#include <string>

#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "operator/kube_client.h"

namespace baton::op {

struct LeaderElectionOptions {
  std::string ns;
  std::string name = "baton-operator";
  std::string identity;  // Unique per replica (the pod name).
  absl::Duration lease_duration = absl::Seconds(15);
  absl::Duration renew_deadline = absl::Seconds(10);
  absl::Duration retry_period = absl::Seconds(2);
};

class LeaderElector {
 public:
  LeaderElector(const KubeClient* client, LeaderElectionOptions options);

  // Blocks until Stop() or until leadership, once held, is lost. Calls
  // `on_started` when this replica becomes the leader. Returns true when it
  // was stopped, false when it lost the lease (the process should exit:
  // another replica may already be acting).
  bool Run(const std::function<void()>& on_started);
  // Makes Run() return; a leader releases the Lease first.
  void Stop();
  bool is_leader() const { return leader_.load(); }

 private:
  // One acquire-or-renew attempt; true when we hold the lease afterwards.
  bool TryAcquireOrRenew();
  void Release();

  const KubeClient* client_;
  const LeaderElectionOptions options_;
  absl::Notification stop_;
  std::atomic<bool> leader_{false};
  // What we last saw of someone else's record, and when (our clock).
  std::string observed_record_;
  absl::Time observed_at_ = absl::InfinitePast();
};

}  // namespace baton::op

#endif  // BATON_OPERATOR_LEADER_ELECTION_H_
