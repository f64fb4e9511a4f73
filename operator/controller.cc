#include "operator/controller.h"

#include "absl/strings/str_cat.h"
#include "operator/children.h"
#include "operator/log.h"

namespace baton::op {
namespace {

std::string Key(const Json& object) { return ObjectKey(object); }

}  // namespace

Controller::Controller(const KubeClient* client, MetricsSource* source, OperatorMetrics* metrics,
                       ControllerOptions options)
    : client_(client),
      metrics_(metrics),
      options_(std::move(options)),
      queue_(options_.rate_limiter) {
  InformerOptions base = options_.informer;
  base.ns = options_.watch_namespace;
  base.label_selector = "";
  batonservices_ =
      std::make_unique<Informer>(client_, kBatonServiceType, base,
                                 [this](EventKind, const Json& obj) { queue_.Add(Key(obj)); });
  // Only what the operator made: its label.
  InformerOptions owned = base;
  owned.label_selector = absl::StrCat(kManagedByLabel, "=", kManagedBy);
  auto owner = [this](EventKind, const Json& obj) { EnqueueOwner(obj); };
  deployments_ = std::make_unique<Informer>(client_, kDeploymentType, owned, owner);
  services_ = std::make_unique<Informer>(client_, kServiceType, owned, owner);
  // Pod events are many and their effect shows in the Deployment status:
  // the pod cache only serves the autoscaler.
  pods_ = std::make_unique<Informer>(client_, kPodType, owned, [](EventKind, const Json&) {});

  ReconcilerOptions ro = options_.reconciler;
  if (metrics_ != nullptr && !ro.on_autoscale) {
    ro.on_autoscale = [this](const std::string& ns, const std::string& name,
                             const AutoscalerResult& r) { metrics_->RecordAutoscale(ns, name, r); };
  }
  reconciler_ = std::make_unique<Reconciler>(
      client_,
      ReconcilerCaches{batonservices_.get(), deployments_.get(), services_.get(), pods_.get()},
      source, std::move(ro));
}

Controller::~Controller() { Stop(); }

void Controller::EnqueueOwner(const Json& child) {
  const Json* owners = Find(child, {"metadata", "ownerReferences"});
  if (owners == nullptr || !owners->is_array()) return;
  for (const Json& o : *owners) {
    if (GetString(o, {"kind"}) == "BatonService" && GetBool(o, {"controller"})) {
      queue_.Add(
          absl::StrCat(GetString(child, {"metadata", "namespace"}), "/", GetString(o, {"name"})));
    }
  }
}

void Controller::StartInformers() {
  for (Informer* i : {batonservices_.get(), deployments_.get(), services_.get(), pods_.get()}) {
    i->Start();
  }
}

bool Controller::Synced() const {
  return batonservices_->HasSynced() && deployments_->HasSynced() && services_->HasSynced() &&
         pods_->HasSynced();
}

bool Controller::WaitForSync(absl::Duration timeout) const {
  const absl::Time deadline = absl::Now() + timeout;
  while (!Synced()) {
    if (absl::Now() >= deadline || stop_.HasBeenNotified()) return false;
    absl::SleepFor(absl::Milliseconds(20));
  }
  return true;
}

void Controller::RunWorkers() {
  absl::MutexLock lock(&threads_mu_);
  if (stop_.HasBeenNotified() || !threads_.empty()) return;
  // Everything once, then whatever events say.
  for (const Json& s : batonservices_->List()) queue_.Add(Key(s));
  for (int i = 0; i < std::max(1, options_.workers); ++i) {
    threads_.emplace_back([this] { Work(); });
  }
  threads_.emplace_back([this] {
    while (!stop_.WaitForNotificationWithTimeout(options_.resync)) {
      for (const Json& s : batonservices_->List()) queue_.Add(Key(s));
    }
  });
}

void Controller::Work() {
  while (std::optional<std::string> key = queue_.Get()) {
    const size_t slash = key->find('/');
    const std::string ns = key->substr(0, slash);
    const std::string name = key->substr(slash + 1);
    const absl::Time start = absl::Now();
    ReconcileResult r = reconciler_->Reconcile(ns, name);
    const absl::Duration took = absl::Now() - start;
    if (r.status.ok()) {
      queue_.Forget(*key);
      if (r.requeue_after > absl::ZeroDuration()) queue_.AddAfter(*key, r.requeue_after);
    } else {
      // A conflict means our view was stale: retry soon against fresher
      // state; other errors back off exponentially.
      queue_.AddRateLimited(*key);
      if (!IsConflict(r.status))
        LogError(absl::StrCat("reconcile ", *key, ": ", r.status.ToString()));
    }
    if (metrics_ != nullptr) {
      metrics_->CountReconcile(r.status.ok()          ? "success"
                               : IsConflict(r.status) ? "conflict"
                                                      : "error",
                               took);
      metrics_->SetQueueDepth(queue_.Len());
    }
    queue_.Done(*key);
  }
}

void Controller::Stop() {
  if (!stop_.HasBeenNotified()) stop_.Notify();
  queue_.ShutDown();
  {
    absl::MutexLock lock(&threads_mu_);
    for (std::thread& t : threads_) {
      if (t.joinable()) t.join();
    }
    threads_.clear();
  }
  for (Informer* i : {batonservices_.get(), deployments_.get(), services_.get(), pods_.get()}) {
    i->Stop();
  }
}

}  // namespace baton::op
