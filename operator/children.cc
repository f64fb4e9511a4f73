#include "operator/children.h"

#include "absl/strings/str_cat.h"

namespace baton::op {
namespace {

constexpr int kNonRootUid = 65532;  // "nonroot" in distroless and our images.
constexpr const char* kSecretDir = "/etc/baton/secret";

Json Metadata(const Json& owner, Role role) {
  const std::string service = GetString(owner, {"metadata", "name"});
  return Json{{"name", ChildName(service, role)},
              {"namespace", GetString(owner, {"metadata", "namespace"})},
              {"labels", RoleLabels(service, role)},
              {"ownerReferences", Json::array({OwnerReference(owner)})}};
}

Json Container(const Json& owner, const BatonServiceSpec& spec, Role role,
               const BuildOptions& options) {
  const RoleSpec& rs = spec.role(role);
  const std::string service = GetString(owner, {"metadata", "name"});
  const std::string ns = GetString(owner, {"metadata", "namespace"});
  Json args = Json::array({RoleName(role), "--host=0.0.0.0", absl::StrCat("--port=", rs.port),
                           absl::StrCat("--metrics-port=", rs.metrics_port),
                           absl::StrCat("--drain-timeout=", rs.drain_timeout_seconds)});
  if (role == Role::kRouter) {
    args.push_back(absl::StrCat(
        "--prefill=", RoleAddress(service, ns, Role::kPrefill, spec.prefill.port, options)));
    args.push_back(absl::StrCat(
        "--decode=", RoleAddress(service, ns, Role::kDecode, spec.decode.port, options)));
  } else {
    args.push_back("--model=/model");
  }
  if (!spec.shared_secret.secret_name.empty()) {
    args.push_back(absl::StrCat("--secret-file=", kSecretDir, "/secret"));
  }
  for (const std::string& a : rs.args) args.push_back(a);

  Json env = Json::array(
      {{{"name", "POD_NAME"}, {"valueFrom", {{"fieldRef", {{"fieldPath", "metadata.name"}}}}}},
       {{"name", "POD_NAMESPACE"},
        {"valueFrom", {{"fieldRef", {{"fieldPath", "metadata.namespace"}}}}}},
       // A decode worker advertises its KV data channel on the pod IP.
       {{"name", "POD_IP"}, {"valueFrom", {{"fieldRef", {{"fieldPath", "status.podIP"}}}}}}});
  for (const Json& e : rs.env) env.push_back(e);

  Json mounts = Json::array({{{"name", "tmp"}, {"mountPath", "/tmp"}}});
  if (!spec.shared_secret.secret_name.empty()) {
    mounts.push_back({{"name", "shared-secret"}, {"mountPath", kSecretDir}, {"readOnly", true}});
  }
  if (role != Role::kRouter) {
    mounts.push_back({{"name", "dshm"}, {"mountPath", "/dev/shm"}});
    Json model = {{"name", "model"}, {"mountPath", "/model"}, {"readOnly", true}};
    if (!spec.model.claim_name.empty() && !spec.model.path.empty()) {
      model["subPath"] = spec.model.path;
    }
    mounts.push_back(std::move(model));
  }

  Json c = {
      {"name", "baton"},
      {"image", spec.image},
      {"imagePullPolicy", spec.image_pull_policy},
      {"args", std::move(args)},
      {"ports",
       Json::array(
           {{{"name", "grpc"}, {"containerPort", rs.port}, {"protocol", "TCP"}},
            {{"name", "metrics"}, {"containerPort", rs.metrics_port}, {"protocol", "TCP"}}})},
      {"env", std::move(env)},
      {"resources", rs.resources},
      // Ready means grpc.health.v1 SERVING: a draining worker reports
      // NOT_SERVING, leaves the Service endpoints and gets no new work.
      {"readinessProbe",
       {{"grpc", {{"port", rs.port}}}, {"periodSeconds", 5}, {"failureThreshold", 2}}},
      // Loading weights can take minutes: allow 30 before giving up.
      {"startupProbe",
       {{"grpc", {{"port", rs.port}}}, {"periodSeconds", 10}, {"failureThreshold", 180}}},
      // Liveness must not fail while draining (health is NOT_SERVING then):
      // the metrics port stays open until the process exits.
      {"livenessProbe",
       {{"tcpSocket", {{"port", "metrics"}}}, {"periodSeconds", 20}, {"failureThreshold", 3}}},
      {"securityContext",
       {{"allowPrivilegeEscalation", false},
        {"readOnlyRootFilesystem", true},
        {"capabilities", {{"drop", Json::array({"ALL"})}}}}},
      {"volumeMounts", std::move(mounts)},
  };
  if (rs.pre_stop_seconds > 0) {
    // The router notices the pod leaving the endpoints within this sleep;
    // only then does SIGTERM start the drain.
    c["lifecycle"] = {
        {"preStop",
         {{"exec", {{"command", Json::array({"sleep", std::to_string(rs.pre_stop_seconds)})}}}}}};
  }
  return c;
}

Json PodTemplate(const Json& owner, const BatonServiceSpec& spec, Role role,
                 const BuildOptions& options) {
  const RoleSpec& rs = spec.role(role);
  const std::string service = GetString(owner, {"metadata", "name"});
  Json volumes = Json::array({{{"name", "tmp"}, {"emptyDir", Json::object()}}});
  if (!spec.shared_secret.secret_name.empty()) {
    volumes.push_back(
        {{"name", "shared-secret"},
         {"secret",
          {{"secretName", spec.shared_secret.secret_name},
           {"items", Json::array({{{"key", spec.shared_secret.key}, {"path", "secret"}}})}}}});
  }
  if (role != Role::kRouter) {
    volumes.push_back({{"name", "dshm"}, {"emptyDir", {{"medium", "Memory"}}}});
    if (!spec.model.claim_name.empty()) {
      volumes.push_back(
          {{"name", "model"},
           {"persistentVolumeClaim", {{"claimName", spec.model.claim_name}, {"readOnly", true}}}});
    } else {
      volumes.push_back({{"name", "model"},
                         {"hostPath", {{"path", spec.model.host_path}, {"type", "Directory"}}}});
    }
  }
  Json pod = {
      {"terminationGracePeriodSeconds", rs.TerminationGracePeriodSeconds()},
      {"enableServiceLinks", false},
      {"automountServiceAccountToken", false},
      {"securityContext",
       {{"runAsNonRoot", true},
        {"runAsUser", kNonRootUid},
        {"runAsGroup", kNonRootUid},
        {"fsGroup", kNonRootUid},
        {"seccompProfile", {{"type", "RuntimeDefault"}}}}},
      {"containers", Json::array({Container(owner, spec, role, options)})},
      {"volumes", std::move(volumes)},
  };
  if (!rs.node_selector.empty()) pod["nodeSelector"] = rs.node_selector;
  if (!rs.tolerations.empty()) pod["tolerations"] = rs.tolerations;
  if (!spec.image_pull_secrets.empty()) pod["imagePullSecrets"] = spec.image_pull_secrets;
  return Json{{"metadata", {{"labels", RoleLabels(service, role)}}}, {"spec", std::move(pod)}};
}

}  // namespace

std::string ChildName(const std::string& service, Role role) {
  return absl::StrCat(service, "-", RoleName(role));
}

Json RoleLabels(const std::string& service, Role role) {
  Json labels = SelectorLabels(service, role);
  labels[kManagedByLabel] = kManagedBy;
  labels["baton.dev/service"] = service;
  labels["baton.dev/role"] = RoleName(role);
  return labels;
}

Json SelectorLabels(const std::string& service, Role role) {
  return Json{{"app.kubernetes.io/name", "baton"},
              {"app.kubernetes.io/instance", service},
              {"app.kubernetes.io/component", RoleName(role)}};
}

std::string PodSelector(const std::string& service, Role role) {
  return absl::StrCat("app.kubernetes.io/name=baton,app.kubernetes.io/instance=", service,
                      ",app.kubernetes.io/component=", RoleName(role));
}

Json OwnerReference(const Json& owner) {
  return Json{{"apiVersion", "baton.dev/v1alpha1"},
              {"kind", "BatonService"},
              {"name", GetString(owner, {"metadata", "name"})},
              {"uid", GetString(owner, {"metadata", "uid"})},
              {"controller", true},
              {"blockOwnerDeletion", true}};
}

std::string RoleAddress(const std::string& service, const std::string& ns, Role role, int port,
                        const BuildOptions& options) {
  return absl::StrCat(ChildName(service, role), ".", ns, ".svc.", options.cluster_domain, ":",
                      port);
}

Json BuildDeployment(const Json& owner, const BatonServiceSpec& spec, Role role, int replicas,
                     const BuildOptions& options) {
  const std::string service = GetString(owner, {"metadata", "name"});
  // GPU pools roll one pod at a time without a surge, so that a rollout
  // never needs GPUs beyond the pool's own; the CPU router surges instead.
  const Json strategy = role == Role::kRouter
                            ? Json{{"type", "RollingUpdate"},
                                   {"rollingUpdate", {{"maxSurge", 1}, {"maxUnavailable", 0}}}}
                            : Json{{"type", "RollingUpdate"},
                                   {"rollingUpdate", {{"maxSurge", 0}, {"maxUnavailable", 1}}}};
  Json d = {
      {"apiVersion", "apps/v1"},
      {"kind", "Deployment"},
      {"metadata", Metadata(owner, role)},
      {"spec",
       {{"replicas", replicas},
        {"selector", {{"matchLabels", SelectorLabels(service, role)}}},
        {"strategy", strategy},
        {"revisionHistoryLimit", 3},
        {"progressDeadlineSeconds", 1800},
        {"template", PodTemplate(owner, spec, role, options)}}},
  };
  // The hash covers everything but the replica count, which the autoscaler
  // changes on its own.
  Json hashed = d;
  hashed["spec"].erase("replicas");
  d["metadata"]["annotations"] = {{kSpecHashAnnotation, StableHash(hashed)}};
  return d;
}

Json BuildService(const Json& owner, const BatonServiceSpec& spec, Role role) {
  const RoleSpec& rs = spec.role(role);
  const std::string service = GetString(owner, {"metadata", "name"});
  Json s = {
      {"apiVersion", "v1"},
      {"kind", "Service"},
      {"metadata", Metadata(owner, role)},
      {"spec",
       {{"selector", SelectorLabels(service, role)},
        {"ports", Json::array({{{"name", "grpc"},
                                {"port", rs.port},
                                {"targetPort", "grpc"},
                                {"protocol", "TCP"},
                                {"appProtocol", "grpc"}},
                               {{"name", "metrics"},
                                {"port", rs.metrics_port},
                                {"targetPort", "metrics"},
                                {"protocol", "TCP"}}})}}},
  };
  if (role == Role::kRouter) {
    s["spec"]["type"] = "ClusterIP";
  } else {
    // Headless: DNS answers with every ready pod, which the router dials.
    s["spec"]["clusterIP"] = "None";
    s["spec"]["publishNotReadyAddresses"] = false;
  }
  s["metadata"]["annotations"] = {{kSpecHashAnnotation, StableHash(s)}};
  return s;
}

}  // namespace baton::op
