#include "operator/reconciler.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "operator/status_macros.h"

namespace baton::op {
namespace {

bool OwnedBy(const Json& object, const std::string& uid) {
  const Json* owners = Find(object, {"metadata", "ownerReferences"});
  if (owners == nullptr || !owners->is_array()) return false;
  for (const Json& o : *owners) {
    if (GetString(o, {"uid"}) == uid) return true;
  }
  return false;
}

// `existing` with what we own replaced by `desired`: labels and annotations
// merged (others' keys kept), our ownerReference, and the spec. A Service
// keeps the fields the server allocated (clusterIP, ...), so its spec is
// merged rather than replaced.
Json Merge(const ResourceType& type, const Json& existing, const Json& desired) {
  Json merged = existing;
  for (const char* field : {"labels", "annotations"}) {
    if (const Json* d = Find(desired, {"metadata", field}); d != nullptr) {
      for (auto it = d->begin(); it != d->end(); ++it) merged["metadata"][field][it.key()] = *it;
    }
  }
  merged["metadata"]["ownerReferences"] = desired["metadata"]["ownerReferences"];
  if (std::string(type.kind) == "Service") {
    merged["spec"].merge_patch(desired["spec"]);
  } else {
    merged["spec"] = desired["spec"];
  }
  return merged;
}

struct RoleState {
  int desired = 0;
  Json deployment;  // As it now is (null if it could not be applied).
};

int64_t Int(const Json& j, std::initializer_list<const char*> path) { return GetInt(j, path, 0); }

// The Deployment's own condition `type`, or null.
const Json* DeploymentCondition(const Json& d, const char* type) {
  const Json* conditions = Find(d, {"status", "conditions"});
  if (conditions == nullptr || !conditions->is_array()) return nullptr;
  for (const Json& c : *conditions) {
    if (GetString(c, {"type"}) == type) return &c;
  }
  return nullptr;
}

}  // namespace

void SetCondition(Json* conditions, const std::string& type, const std::string& status,
                  const std::string& reason, const std::string& message, int64_t generation,
                  absl::Time now) {
  if (!conditions->is_array()) *conditions = Json::array();
  Json c = {{"type", type},
            {"status", status},
            {"reason", reason},
            {"message", message},
            {"observedGeneration", generation},
            {"lastTransitionTime", FormatTimestamp(now)}};
  for (Json& old : *conditions) {
    if (GetString(old, {"type"}) != type) continue;
    // The transition time moves only when the status does.
    if (GetString(old, {"status"}) == status && old.contains("lastTransitionTime")) {
      c["lastTransitionTime"] = old["lastTransitionTime"];
    }
    old = std::move(c);
    return;
  }
  conditions->push_back(std::move(c));
}

Reconciler::Reconciler(const KubeClient* client, ReconcilerCaches caches, MetricsSource* metrics,
                       ReconcilerOptions options)
    : client_(client), caches_(caches), metrics_(metrics), options_(std::move(options)) {}

std::vector<Json> Reconciler::PoolPods(const std::string& ns, const std::string& service,
                                       Role role) const {
  std::vector<Json> pods;
  const Json want = SelectorLabels(service, role);
  for (Json& p : caches_.pods->List()) {
    if (GetString(p, {"metadata", "namespace"}) != ns) continue;
    const Json* labels = Find(p, {"metadata", "labels"});
    if (labels != nullptr && JsonContains(*labels, want)) pods.push_back(std::move(p));
  }
  return pods;
}

absl::StatusOr<Json> Reconciler::Apply(const ResourceType& type, const Informer* cache,
                                       const Json& desired, const Json& cr,
                                       std::string* not_owned) {
  const std::string owner_uid = GetString(cr, {"metadata", "uid"});
  const std::string ns = GetString(desired, {"metadata", "namespace"});
  const std::string name = GetString(desired, {"metadata", "name"});
  std::optional<Json> existing = cache->Get(ns, name);
  if (!existing) {
    // The cache may lag behind our own last write: ask the server before
    // creating, so that a restart or a slow watch never duplicates.
    absl::StatusOr<Json> live = client_->Get(type, ns, name);
    if (live.ok()) {
      existing = *std::move(live);
    } else if (absl::IsNotFound(live.status())) {
      // The owner may be gone already while our cache still has it (the
      // garbage collector deleting this very child is what woke us up):
      // creating now would leave an orphan, so confirm it first. Rare: only
      // creates pay for this.
      absl::StatusOr<Json> owner =
          client_->Get(kBatonServiceType, ns, GetString(cr, {"metadata", "name"}));
      if (absl::IsNotFound(owner.status()) ||
          (owner.ok() && GetString(*owner, {"metadata", "uid"}) != owner_uid)) {
        return absl::CancelledError("the BatonService is gone");
      }
      if (!owner.ok()) return owner.status();
      absl::StatusOr<Json> created = client_->Create(type, ns, desired);
      if (absl::IsAlreadyExists(created.status())) {
        return absl::AbortedError(absl::StrCat(type.kind, " ", name, " appeared meanwhile"));
      }
      return created;
    } else {
      return live.status();
    }
  }
  if (!OwnedBy(*existing, owner_uid)) {
    *not_owned =
        absl::StrCat(type.kind, " ", name, " exists and is not owned by this BatonService");
    return *existing;
  }
  const std::string want_hash =
      GetString(desired, {"metadata", "annotations", kSpecHashAnnotation});
  const std::string have_hash =
      GetString(*existing, {"metadata", "annotations", kSpecHashAnnotation});
  if (want_hash == have_hash && JsonContains(*existing, desired)) return *existing;
  return client_->Update(type, ns, Merge(type, *existing, desired));
}

absl::Status Reconciler::MarkVictims(const std::string& ns, const std::string& service, Role role,
                                     const PoolDecision& decision) {
  // The ReplicaSet removes pods with the lowest deletion cost first: mark
  // the victims, and unmark pods a cancelled scale-down marked before.
  for (const Json& pod : PoolPods(ns, service, role)) {
    const std::string name = GetString(pod, {"metadata", "name"});
    const bool victim =
        std::find(decision.victims.begin(), decision.victims.end(), name) != decision.victims.end();
    const bool marked = Find(pod, {"metadata", "annotations", kDeletionCostAnnotation}) != nullptr;
    if (victim == marked) continue;
    Json patch = {{"metadata", {{"annotations", {{kDeletionCostAnnotation, nullptr}}}}}};
    if (victim) patch["metadata"]["annotations"][kDeletionCostAnnotation] = "-1000";
    absl::Status s = client_->Patch(kPodType, ns, name, patch).status();
    if (!s.ok() && !absl::IsNotFound(s)) return s;
  }
  return absl::OkStatus();
}

ReconcileResult Reconciler::Reconcile(const std::string& ns, const std::string& name) {
  const absl::Time now = options_.clock();
  const std::string key = absl::StrCat(ns, "/", name);
  std::optional<Json> found = caches_.batonservices->Get(ns, name);
  if (!found) {
    // Deleted: the garbage collector removes the children (ownerReferences).
    absl::MutexLock lock(&mu_);
    memory_.erase(key);
    return {};
  }
  const Json& cr = *found;
  if (Find(cr, {"metadata", "deletionTimestamp"}) != nullptr) return {};
  const std::string uid = GetString(cr, {"metadata", "uid"});
  const int64_t generation = GetInt(cr, {"metadata", "generation"}, 1);
  const Json old_status = cr.contains("status") ? cr["status"] : Json::object();
  Json status = old_status.is_object() ? old_status : Json::object();
  Json conditions = status.value("conditions", Json::array());

  auto write_status = [&]() -> absl::Status {
    status["observedGeneration"] = generation;
    status["conditions"] = conditions;
    if (status == old_status) return absl::OkStatus();
    Json update = cr;
    update["status"] = status;
    absl::Status s = client_->UpdateStatus(kBatonServiceType, ns, update).status();
    return absl::IsNotFound(s) ? absl::OkStatus() : s;  // Deleted meanwhile.
  };

  absl::StatusOr<BatonServiceSpec> parsed = ParseBatonServiceSpec(cr.value("spec", Json::object()));
  if (!parsed.ok()) {
    // Nothing is touched until the spec is fixed; that edit is an event.
    const std::string message(parsed.status().message());
    SetCondition(&conditions, "Ready", "False", "InvalidSpec", message, generation, now);
    SetCondition(&conditions, "Degraded", "True", "InvalidSpec", message, generation, now);
    return {write_status()};
  }
  const BatonServiceSpec& spec = *parsed;
  const AutoscalingPolicy& policy = spec.autoscaling.policy;

  // Current Deployments, for their replica counts.
  std::optional<Json> deployments[3];
  for (Role role : kRoles) {
    deployments[static_cast<int>(role)] = caches_.deployments->Get(ns, ChildName(name, role));
  }
  auto current = [&](Role role) -> std::optional<int> {
    const auto& d = deployments[static_cast<int>(role)];
    if (!d) return std::nullopt;
    return static_cast<int>(GetInt(*d, {"spec", "replicas"}, 1));
  };

  // Replica counts: the spec's, or the autoscaler's for the pools.
  RoleState roles[3];
  for (Role role : kRoles) roles[static_cast<int>(role)].desired = spec.role(role).replicas;
  ReconcileResult result;
  Memory memory;
  {
    absl::MutexLock lock(&mu_);
    Memory& m = memory_[key];
    if (m.uid != uid) m = Memory{uid, {}, absl::InfinitePast(), std::nullopt};
    memory = m;
  }
  Json decisions = status.value("scalingDecisions", Json::array());
  bool ticked = false;
  if (spec.autoscaling.enabled) {
    const absl::Duration interval = absl::Seconds(spec.autoscaling.interval_seconds);
    if (now - memory.last_tick >= interval) {
      AutoscalerInput input;
      input.now = now;
      for (Pool pool : {Pool::kPrefill, Pool::kDecode}) {
        const Role role = pool == Pool::kPrefill ? Role::kPrefill : Role::kDecode;
        const PoolPolicy& pp = pool == Pool::kPrefill ? policy.prefill : policy.decode;
        PoolInput& in = pool == Pool::kPrefill ? input.prefill : input.decode;
        in.current_replicas = current(role).value_or(
            std::clamp(spec.role(role).replicas, pp.min_replicas, pp.max_replicas));
        PoolQuery q{ns, name, role, spec.role(role).metrics_port, spec.metrics};
        in.pods = metrics_->Observe(q, PoolPods(ns, name, role), now);
      }
      AutoscalerResult r = Autoscale(policy, input, memory.state);
      memory.state = r.state;
      memory.last_tick = now;
      memory.last = r;
      ticked = true;
      for (const PoolDecision* d : {&r.prefill, &r.decode}) {
        if (d->desired == d->current) continue;
        decisions.push_back({{"time", FormatTimestamp(now)},
                             {"role", d == &r.prefill ? "prefill" : "decode"},
                             {"from", d->current},
                             {"to", d->desired},
                             {"reason", d->reason},
                             {"message", d->message}});
        status["lastScaleTime"] = FormatTimestamp(now);
      }
      while (decisions.size() > options_.max_decisions) decisions.erase(decisions.begin());
      if (options_.on_autoscale) options_.on_autoscale(ns, name, r);
    }
    result.requeue_after = std::max(absl::Seconds(1), interval - (now - memory.last_tick));
    for (Pool pool : {Pool::kPrefill, Pool::kDecode}) {
      const Role role = pool == Pool::kPrefill ? Role::kPrefill : Role::kDecode;
      const PoolPolicy& pp = pool == Pool::kPrefill ? policy.prefill : policy.decode;
      int want;
      if (memory.last) {
        want = pool == Pool::kPrefill ? memory.last->prefill.desired : memory.last->decode.desired;
      } else {
        // Before the first tick (or after a restart) keep what runs.
        want = current(role).value_or(spec.role(role).replicas);
      }
      roles[static_cast<int>(role)].desired = std::clamp(want, pp.min_replicas, pp.max_replicas);
    }
  }
  {
    absl::MutexLock lock(&mu_);
    memory_[key] = memory;
  }

  // Scale-down victims first, then the Deployments.
  if (ticked) {
    for (Pool pool : {Pool::kPrefill, Pool::kDecode}) {
      const PoolDecision& d = pool == Pool::kPrefill ? memory.last->prefill : memory.last->decode;
      if (d.desired >= d.current) continue;
      if (absl::Status s =
              MarkVictims(ns, name, pool == Pool::kPrefill ? Role::kPrefill : Role::kDecode, d);
          !s.ok()) {
        result.status = s;
        return result;
      }
    }
  }
  std::vector<std::string> not_owned;
  for (Role role : kRoles) {
    RoleState& rs = roles[static_cast<int>(role)];
    for (bool is_deployment : {true, false}) {
      const Json desired = is_deployment
                               ? BuildDeployment(cr, spec, role, rs.desired, options_.build)
                               : BuildService(cr, spec, role);
      std::string problem;
      absl::StatusOr<Json> applied =
          is_deployment ? Apply(kDeploymentType, caches_.deployments, desired, cr, &problem)
                        : Apply(kServiceType, caches_.services, desired, cr, &problem);
      if (absl::IsCancelled(applied.status())) return {};  // Deleted meanwhile.
      if (!applied.ok()) {
        result.status = applied.status();
        return result;
      }
      if (!problem.empty()) not_owned.push_back(problem);
      if (is_deployment) rs.deployment = *std::move(applied);
    }
  }

  // Status.
  std::vector<std::string> not_ready, moving, failing;
  bool scaling_up = false, scaling_down = false;
  for (Role role : kRoles) {
    const RoleState& rs = roles[static_cast<int>(role)];
    const Json& d = rs.deployment;
    const int replicas = static_cast<int>(Int(d, {"status", "replicas"}));
    const int ready = static_cast<int>(Int(d, {"status", "readyReplicas"}));
    const int updated = static_cast<int>(Int(d, {"status", "updatedReplicas"}));
    status[RoleName(role)] = {{"replicas", replicas},
                              {"readyReplicas", ready},
                              {"updatedReplicas", updated},
                              {"desiredReplicas", rs.desired}};
    if (ready < rs.desired) {
      not_ready.push_back(absl::StrCat(RoleName(role), " ", ready, "/", rs.desired, " ready"));
    }
    const bool stale =
        Int(d, {"status", "observedGeneration"}) < Int(d, {"metadata", "generation"});
    if (replicas < rs.desired) scaling_up = true;
    if (replicas > rs.desired) scaling_down = true;
    if (stale || replicas != rs.desired || updated < rs.desired) {
      moving.push_back(RoleName(role));
    }
    if (const Json* p = DeploymentCondition(d, "Progressing");
        p != nullptr && GetString(*p, {"reason"}) == "ProgressDeadlineExceeded") {
      failing.push_back(absl::StrCat(RoleName(role), ": ", GetString(*p, {"message"})));
    }
    if (const Json* f = DeploymentCondition(d, "ReplicaFailure");
        f != nullptr && GetString(*f, {"status"}) == "True") {
      failing.push_back(absl::StrCat(RoleName(role), ": ", GetString(*f, {"message"})));
    }
  }
  status["endpoint"] =
      absl::StrCat(ChildName(name, Role::kRouter), ".", ns, ".svc:", spec.router.port);
  double gpus = 0;
  for (Role role : kRoles) gpus += roles[static_cast<int>(role)].desired * spec.role(role).Gpus();
  status["gpus"] = {{"requested", gpus}, {"budget", policy.gpu_budget}};
  status["scalingDecisions"] = decisions;

  if (not_ready.empty()) {
    SetCondition(&conditions, "Ready", "True", "AllRolesReady", "router, prefill and decode ready",
                 generation, now);
  } else {
    SetCondition(&conditions, "Ready", "False", "RolesNotReady", absl::StrJoin(not_ready, ", "),
                 generation, now);
  }
  if (moving.empty()) {
    SetCondition(&conditions, "Progressing", "False", "Stable", "every role has its replicas",
                 generation, now);
  } else {
    const char* reason = scaling_up ? "ScalingUp" : scaling_down ? "ScalingDown" : "RollingUpdate";
    SetCondition(&conditions, "Progressing", "True", reason,
                 absl::StrCat("changing: ", absl::StrJoin(moving, ", ")), generation, now);
  }
  std::vector<std::string> problems = not_owned;
  problems.insert(problems.end(), failing.begin(), failing.end());
  if (problems.empty()) {
    SetCondition(&conditions, "Degraded", "False", "AsExpected", "", generation, now);
  } else {
    SetCondition(&conditions, "Degraded", "True",
                 not_owned.empty() ? "DeploymentFailing" : "ChildNotOwned",
                 absl::StrJoin(problems, "; "), generation, now);
  }
  if (!spec.autoscaling.enabled) {
    SetCondition(&conditions, "ScalingActive", "False", "AutoscalingDisabled",
                 "spec.autoscaling.enabled is false", generation, now);
    SetCondition(&conditions, "ScalingLimited", "False", "AutoscalingDisabled", "", generation,
                 now);
  } else if (!memory.last) {
    SetCondition(&conditions, "ScalingActive", "Unknown", "NotYetEvaluated", "", generation, now);
  } else {
    const AutoscalerResult& r = *memory.last;
    std::vector<std::string> missing, limited;
    const char* limited_reason = nullptr;
    for (const PoolDecision* d : {&r.prefill, &r.decode}) {
      const char* pool = d == &r.prefill ? "prefill" : "decode";
      if (!d->metrics_available) missing.push_back(absl::StrCat(pool, ": ", d->message));
      if (!d->limited_reason.empty()) {
        limited.push_back(absl::StrCat(pool, ": ", d->limited_reason));
        if (limited_reason == nullptr) limited_reason = d->limited_reason.c_str();
      }
    }
    if (missing.empty()) {
      SetCondition(&conditions, "ScalingActive", "True", "MetricsAvailable",
                   absl::StrCat("prefill: ", r.prefill.reason, "; decode: ", r.decode.reason),
                   generation, now);
    } else {
      SetCondition(&conditions, "ScalingActive", "False", "MetricsUnavailable",
                   absl::StrJoin(missing, "; "), generation, now);
    }
    if (limited.empty()) {
      SetCondition(&conditions, "ScalingLimited", "False", "DesiredWithinRange", "", generation,
                   now);
    } else {
      SetCondition(&conditions, "ScalingLimited", "True", limited_reason,
                   absl::StrJoin(limited, "; "), generation, now);
    }
  }
  result.status = write_status();
  return result;
}

}  // namespace baton::op
