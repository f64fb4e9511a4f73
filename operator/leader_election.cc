#include "operator/leader_election.h"

#include "absl/strings/str_cat.h"
#include "operator/log.h"

namespace baton::op {

LeaderElector::LeaderElector(const KubeClient* client, LeaderElectionOptions options)
    : client_(client), options_(std::move(options)) {}

void LeaderElector::Stop() {
  if (!stop_.HasBeenNotified()) stop_.Notify();
}

bool LeaderElector::TryAcquireOrRenew() {
  const absl::Time now = absl::Now();
  const int duration_s = static_cast<int>(absl::ToInt64Seconds(options_.lease_duration));
  Json spec = {{"holderIdentity", options_.identity},
               {"leaseDurationSeconds", std::max(1, duration_s)},
               {"renewTime", FormatMicroTimestamp(now)}};
  absl::StatusOr<Json> lease = client_->Get(kLeaseType, options_.ns, options_.name);
  if (absl::IsNotFound(lease.status())) {
    spec["acquireTime"] = FormatMicroTimestamp(now);
    spec["leaseTransitions"] = 0;
    Json obj = {{"apiVersion", "coordination.k8s.io/v1"},
                {"kind", "Lease"},
                {"metadata", {{"name", options_.name}, {"namespace", options_.ns}}},
                {"spec", spec}};
    return client_->Create(kLeaseType, options_.ns, obj).ok();
  }
  if (!lease.ok()) return false;
  const Json& current = lease->value("spec", Json::object());
  const std::string holder = GetString(current, {"holderIdentity"});
  if (holder != options_.identity && !holder.empty()) {
    // Someone else's: wait until their record has stood still for a full
    // lease duration, measured by our clock.
    const std::string record = absl::StrCat(holder, "|", GetString(current, {"renewTime"}));
    if (record != observed_record_) {
      observed_record_ = record;
      observed_at_ = now;
    }
    const int64_t their_duration = GetInt(current, {"leaseDurationSeconds"}, duration_s);
    if (now - observed_at_ < absl::Seconds(their_duration)) return false;
  }
  Json updated = *lease;
  spec["acquireTime"] = holder == options_.identity
                            ? current.value("acquireTime", Json(FormatMicroTimestamp(now)))
                            : Json(FormatMicroTimestamp(now));
  spec["leaseTransitions"] =
      GetInt(current, {"leaseTransitions"}) + (holder == options_.identity ? 0 : 1);
  updated["spec"] = spec;
  // The resourceVersion read above makes this conditional: a racing
  // candidate gets 409 and stays a follower.
  return client_->Update(kLeaseType, options_.ns, updated).ok();
}

void LeaderElector::Release() {
  absl::StatusOr<Json> lease = client_->Get(kLeaseType, options_.ns, options_.name);
  if (!lease.ok() || GetString(*lease, {"spec", "holderIdentity"}) != options_.identity) return;
  Json updated = *lease;
  updated["spec"]["holderIdentity"] = "";
  updated["spec"]["leaseDurationSeconds"] = 1;
  updated["spec"]["renewTime"] = FormatMicroTimestamp(absl::Now());
  if (absl::Status s = client_->Update(kLeaseType, options_.ns, updated).status(); !s.ok()) {
    LogError(absl::StrCat("releasing lease: ", s.ToString()));
  }
}

bool LeaderElector::Run(const std::function<void()>& on_started) {
  // Follow until we hold the lease.
  while (!stop_.HasBeenNotified()) {
    if (TryAcquireOrRenew()) break;
    stop_.WaitForNotificationWithTimeout(options_.retry_period);
  }
  if (stop_.HasBeenNotified()) return true;
  leader_.store(true);
  LogInfo(absl::StrCat("leader election: ", options_.identity, " leads (lease ", options_.ns, "/",
                       options_.name, ")"));
  on_started();
  absl::Time last_renew = absl::Now();
  while (!stop_.WaitForNotificationWithTimeout(options_.retry_period)) {
    if (TryAcquireOrRenew()) {
      last_renew = absl::Now();
    } else if (absl::Now() - last_renew > options_.renew_deadline) {
      leader_.store(false);
      LogError(absl::StrCat("leader election: could not renew within ",
                            absl::FormatDuration(options_.renew_deadline), ": stepping down"));
      return false;
    }
  }
  Release();
  leader_.store(false);
  return true;
}

}  // namespace baton::op
