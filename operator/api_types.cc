#include "operator/api_types.h"

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "operator/status_macros.h"

namespace baton::op {
namespace {

// Reads typed fields of one JSON object, remembering the first error, so
// that parsing reads as a flat list of fields.
class Reader {
 public:
  Reader(const Json* object, std::string path) : object_(object), path_(std::move(path)) {
    if (object_ != nullptr && !object_->is_null() && !object_->is_object()) {
      status_ = absl::InvalidArgumentError(absl::StrCat(path_, " must be an object"));
    }
  }

  const Json* Field(const char* name) const {
    if (object_ == nullptr || !object_->is_object()) return nullptr;
    auto it = object_->find(name);
    return it == object_->end() || it->is_null() ? nullptr : &*it;
  }
  Reader Child(const char* name) const {
    Reader r(Field(name), Where(name));
    if (!status_.ok()) r.status_ = status_;
    return r;
  }
  bool Has(const char* name) const { return Field(name) != nullptr; }

  void Int(const char* name, int* out, int min, int max) {
    const Json* v = Field(name);
    if (v == nullptr) return;
    if (!v->is_number_integer() || v->get<int64_t>() < min || v->get<int64_t>() > max) {
      Fail(name, absl::StrCat("an integer in [", min, ", ", max, "]"));
      return;
    }
    *out = v->get<int>();
  }
  void Number(const char* name, double* out, double min, double max) {
    const Json* v = Field(name);
    if (v == nullptr) return;
    if (!v->is_number() || v->get<double>() < min || v->get<double>() > max) {
      Fail(name, absl::StrCat("a number in [", min, ", ", max, "]"));
      return;
    }
    *out = v->get<double>();
  }
  void Bool(const char* name, bool* out) {
    const Json* v = Field(name);
    if (v == nullptr) return;
    if (!v->is_boolean()) {
      Fail(name, "true or false");
      return;
    }
    *out = v->get<bool>();
  }
  void String(const char* name, std::string* out) {
    const Json* v = Field(name);
    if (v == nullptr) return;
    if (!v->is_string()) {
      Fail(name, "a string");
      return;
    }
    *out = v->get<std::string>();
  }
  void Object(const char* name, Json* out) {
    const Json* v = Field(name);
    if (v == nullptr) return;
    if (!v->is_object()) {
      Fail(name, "an object");
      return;
    }
    *out = *v;
  }
  void Array(const char* name, Json* out) {
    const Json* v = Field(name);
    if (v == nullptr) return;
    if (!v->is_array()) {
      Fail(name, "a list");
      return;
    }
    *out = *v;
  }
  void Strings(const char* name, std::vector<std::string>* out) {
    const Json* v = Field(name);
    if (v == nullptr) return;
    if (!v->is_array()) {
      Fail(name, "a list of strings");
      return;
    }
    out->clear();
    for (const Json& s : *v) {
      if (!s.is_string()) {
        Fail(name, "a list of strings");
        return;
      }
      out->push_back(s.get<std::string>());
    }
  }
  void Check(bool ok, const std::string& what) {
    if (!ok && status_.ok()) status_ = absl::InvalidArgumentError(absl::StrCat(path_, ": ", what));
  }

  absl::Status status() const { return status_; }
  std::string Where(const char* name) const { return absl::StrCat(path_, ".", name); }

 private:
  void Fail(const char* name, const std::string& expected) {
    if (!status_.ok()) return;
    status_ = absl::InvalidArgumentError(
        absl::StrCat(Where(name), " must be ", expected, ", got ", Field(name)->dump()));
  }

  const Json* object_;
  std::string path_;
  absl::Status status_;
};

absl::Status ParseRole(const Json& spec, Role role, RoleSpec* out) {
  const char* name = RoleName(role);
  // Decode streams for minutes; prefill and the router finish fast.
  out->drain_timeout_seconds = role == Role::kDecode ? 300 : role == Role::kPrefill ? 60 : 30;
  Reader r = Reader(&spec, "spec").Child(name);
  r.Int("replicas", &out->replicas, 0, 1000);
  r.Int("port", &out->port, 1, 65535);
  r.Int("metricsPort", &out->metrics_port, 1, 65535);
  r.Object("resources", &out->resources);
  r.Object("nodeSelector", &out->node_selector);
  r.Array("tolerations", &out->tolerations);
  r.Strings("args", &out->args);
  r.Array("env", &out->env);
  r.Int("drainTimeoutSeconds", &out->drain_timeout_seconds, 0, 86400);
  r.Int("preStopSeconds", &out->pre_stop_seconds, 0, 3600);
  r.Check(out->port != out->metrics_port, "port and metricsPort must differ");
  BATON_RETURN_IF_ERROR(r.status());
  for (const char* kind : {"limits", "requests"}) {
    const Json* q = Find(out->resources, {kind, kGpuResource});
    if (q == nullptr) continue;
    double gpus = 0;
    const bool ok = q->is_number()
                        ? (gpus = q->get<double>(), true)
                        : q->is_string() && absl::SimpleAtod(q->get<std::string>(), &gpus);
    if (!ok || gpus < 0 || gpus != static_cast<int>(gpus)) {
      return absl::InvalidArgumentError(absl::StrCat("spec.", name, ".resources.", kind, ".",
                                                     kGpuResource, " must be a whole number"));
    }
  }
  return absl::OkStatus();
}

absl::Status ParseStep(Reader r, StepPolicy* out) {
  r.Number("stabilizationWindowSeconds", &out->stabilization_seconds, 0, 3600);
  r.Int("maxPods", &out->max_pods, 0, 1000);
  r.Number("maxPercent", &out->max_percent, 0, 1000);
  r.Number("periodSeconds", &out->period_seconds, 1, 1800);
  return r.status();
}

}  // namespace

const char* RoleName(Role role) {
  switch (role) {
    case Role::kRouter:
      return "router";
    case Role::kPrefill:
      return "prefill";
    case Role::kDecode:
      return "decode";
  }
  return "unknown";
}

double RoleSpec::Gpus() const {
  for (const char* kind : {"limits", "requests"}) {
    const Json* q = Find(resources, {kind, kGpuResource});
    if (q == nullptr) continue;
    double gpus = 0;
    if (q->is_number()) return q->get<double>();
    if (q->is_string() && absl::SimpleAtod(q->get<std::string>(), &gpus)) return gpus;
  }
  return 0;
}

absl::StatusOr<BatonServiceSpec> ParseBatonServiceSpec(const Json& spec) {
  if (!spec.is_object()) return absl::InvalidArgumentError("spec must be an object");
  BatonServiceSpec s;
  Reader top(&spec, "spec");
  top.String("image", &s.image);
  top.String("imagePullPolicy", &s.image_pull_policy);
  top.Array("imagePullSecrets", &s.image_pull_secrets);
  top.Check(!s.image.empty(), "image is required");
  top.Check(s.image_pull_policy == "Always" || s.image_pull_policy == "IfNotPresent" ||
                s.image_pull_policy == "Never",
            "imagePullPolicy must be Always, IfNotPresent or Never");
  BATON_RETURN_IF_ERROR(top.status());

  Reader secret = top.Child("sharedSecret");
  secret.String("secretName", &s.shared_secret.secret_name);
  secret.String("key", &s.shared_secret.key);
  BATON_RETURN_IF_ERROR(secret.status());

  Reader model = top.Child("model");
  Reader pvc = model.Child("persistentVolumeClaim");
  pvc.String("claimName", &s.model.claim_name);
  pvc.String("path", &s.model.path);
  Reader host = model.Child("hostPath");
  host.String("path", &s.model.host_path);
  BATON_RETURN_IF_ERROR(pvc.status());
  BATON_RETURN_IF_ERROR(host.status());
  model.Check(s.model.claim_name.empty() != s.model.host_path.empty(),
              "exactly one of persistentVolumeClaim.claimName and hostPath.path is required");
  model.Check(s.model.path.find("..") == std::string::npos &&
                  (s.model.path.empty() || s.model.path[0] != '/'),
              "persistentVolumeClaim.path must be relative, without \"..\"");
  BATON_RETURN_IF_ERROR(model.status());

  BATON_RETURN_IF_ERROR(ParseRole(spec, Role::kRouter, &s.router));
  BATON_RETURN_IF_ERROR(ParseRole(spec, Role::kPrefill, &s.prefill));
  BATON_RETURN_IF_ERROR(ParseRole(spec, Role::kDecode, &s.decode));

  Reader metrics = top.Child("metrics");
  std::string source = "Scrape";
  metrics.String("source", &source);
  metrics.String("prometheusURL", &s.metrics.prometheus_url);
  metrics.Int("windowSeconds", &s.metrics.window_seconds, 10, 3600);
  metrics.Check(source == "Scrape" || source == "Prometheus",
                "source must be Scrape or Prometheus");
  if (source == "Prometheus") {
    s.metrics.source = MetricsSpec::Source::kPrometheus;
    metrics.Check(s.metrics.prometheus_url.rfind("http://", 0) == 0 ||
                      s.metrics.prometheus_url.rfind("https://", 0) == 0,
                  "prometheusURL (http:// or https://) is required with source Prometheus");
  }
  BATON_RETURN_IF_ERROR(metrics.status());

  AutoscalingSpec& a = s.autoscaling;
  AutoscalingPolicy& p = a.policy;
  Reader as = top.Child("autoscaling");
  as.Bool("enabled", &a.enabled);
  as.Int("intervalSeconds", &a.interval_seconds, 1, 3600);
  for (Pool pool : {Pool::kPrefill, Pool::kDecode}) {
    PoolPolicy& pp = pool == Pool::kPrefill ? p.prefill : p.decode;
    pp.min_replicas = 1;
    pp.max_replicas = 8;
    Reader r = as.Child(PoolName(pool));
    r.Int("minReplicas", &pp.min_replicas, 1, 1000);
    r.Int("maxReplicas", &pp.max_replicas, 1, 1000);
    r.Number("tokensPerSecondPerReplica", &pp.tokens_per_second_per_replica, 0, 1e9);
    r.Check(pp.min_replicas <= pp.max_replicas, "minReplicas must not exceed maxReplicas");
    BATON_RETURN_IF_ERROR(r.status());
  }
  p.prefill.gpus_per_replica = s.prefill.Gpus();
  p.decode.gpus_per_replica = s.decode.Gpus();
  Reader targets = as.Child("targets");
  targets.Number("ttftP90Seconds", &p.ttft_p90_seconds, 1e-3, 3600);
  targets.Number("interTokenLatencyP90Seconds", &p.itl_p90_seconds, 1e-4, 60);
  targets.Number("kvUsage", &p.kv_usage, 0.05, 1);
  BATON_RETURN_IF_ERROR(targets.status());
  as.Number("gpuBudget", &p.gpu_budget, 0, 1e6);
  as.Number("tolerance", &p.tolerance, 0, 1);
  as.Number("scaleDownUtilization", &p.scale_down_utilization, 0.1, 1);
  as.Number("warmupSeconds", &p.warmup_seconds, 0, 3600);
  BATON_RETURN_IF_ERROR(as.status());
  BATON_RETURN_IF_ERROR(ParseStep(as.Child("scaleUp"), &p.scale_up));
  BATON_RETURN_IF_ERROR(ParseStep(as.Child("scaleDown"), &p.scale_down));
  if (a.enabled && p.gpu_budget > 0) {
    const double floor_gpus = p.prefill.min_replicas * p.prefill.gpus_per_replica +
                              p.decode.min_replicas * p.decode.gpus_per_replica;
    if (floor_gpus > p.gpu_budget) {
      return absl::InvalidArgumentError(absl::StrCat("spec.autoscaling.gpuBudget (", p.gpu_budget,
                                                     ") is below the minimum replicas' GPUs (",
                                                     floor_gpus, ")"));
    }
  }
  return s;
}

}  // namespace baton::op
