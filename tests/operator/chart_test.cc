// The helm chart: `helm lint --strict` and `helm template` with the default
// values and with each ci/*-values.yaml, the rendered manifests checked by
// validate_manifests.py (they parse, carry what Kubernetes requires, keep
// this project's security and RBAC promises, and the BatonServices match the
// CRD's schema); values.schema.json rejects bad values; the examples are
// accepted by the operator's own parser.
//
// Uses tools/bin/helm (scripts/setup installs it) and /usr/bin/python3 with
// python3-yaml; without them the tests fail and say so.
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "operator/api_types.h"
#include "operator/yaml_lite.h"

namespace baton::op {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

const std::string kRoot = BATON_SOURCE_DIR;
const std::string kHelm = kRoot + "/tools/bin/helm";
const std::string kChart = kRoot + "/deploy/helm/baton";
const std::string kPython = "/usr/bin/python3";
const std::string kValidator = kRoot + "/tests/operator/validate_manifests.py";

// Runs `command` through the shell; returns its exit status and output.
int RunCommand(const std::string& command, std::string* output) {
  output->clear();
  FILE* p = popen((command + " 2>&1").c_str(), "r");
  if (p == nullptr) return -1;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) output->append(buf.data(), n);
  const int status = pclose(p);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

std::vector<std::string> CiValues() {
  std::vector<std::string> files;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(kChart + "/ci", ec)) {
    const std::string name = e.path().filename().string();
    if (name.size() > 12 && name.substr(name.size() - 12) == "-values.yaml") files.push_back(name);
  }
  std::sort(files.begin(), files.end());
  return files;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

class ChartTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(access(kHelm.c_str(), X_OK), 0)
        << kHelm << " is missing: run scripts/setup (it installs helm and kubectl)";
    std::string out;
    ASSERT_EQ(RunCommand(kPython + " -c 'import yaml'", &out), 0)
        << "python3-yaml is missing: run scripts/setup (Debian package python3-yaml)";
    char dir[] = "/tmp/baton-chart-XXXXXX";
    ASSERT_NE(mkdtemp(dir), nullptr);
    tmp_ = dir;
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(tmp_, ec);
  }

  // Renders the chart with `args` into a file; its path.
  std::string Template(const std::string& args) {
    const std::string out_path = tmp_ + "/rendered.yaml";
    std::string out;
    const int rc =
        RunCommand(absl::StrCat(kHelm, " template baton ", kChart,
                                " --namespace baton-system --include-crds ", args, " > ", out_path),
                   &out);
    EXPECT_EQ(rc, 0) << "helm template " << args << ":\n" << out;
    return out_path;
  }
  // Runs the validator; its exit status (output in *report).
  int Validate(const std::string& rendered, const std::vector<std::string>& flags,
               std::string* report) {
    return RunCommand(absl::StrCat(kPython, " ", kValidator, " --crds ", kChart, "/crds ",
                                   absl::StrJoin(flags, " "), " ", rendered),
                      report);
  }

  std::string tmp_;
};

TEST_F(ChartTest, LintStrictWithEveryValuesFile) {
  std::string out;
  EXPECT_EQ(RunCommand(absl::StrCat(kHelm, " lint --strict ", kChart), &out), 0) << out;
  ASSERT_FALSE(CiValues().empty());
  for (const std::string& f : CiValues()) {
    EXPECT_EQ(
        RunCommand(absl::StrCat(kHelm, " lint --strict ", kChart, " -f ", kChart, "/ci/", f), &out),
        0)
        << f << ":\n"
        << out;
  }
}

TEST_F(ChartTest, DefaultValuesRenderTheOperatorOnly) {
  const std::string rendered = Template("");
  std::string report;
  EXPECT_EQ(Validate(rendered,
                     {"--expect CustomResourceDefinition", "--expect ServiceAccount",
                      "--expect ClusterRole", "--expect ClusterRoleBinding", "--expect Role",
                      "--expect RoleBinding", "--expect Deployment", "--expect Service",
                      "--forbid ServiceMonitor", "--forbid PodMonitor", "--forbid PrometheusRule",
                      "--forbid ConfigMap", "--forbid BatonService",
                      absl::StrCat("--example ", kChart, "/examples/batonservice.yaml"),
                      absl::StrCat("--example ", kChart, "/examples/batonservice-autoscaled.yaml")},
                     &report),
            0)
      << report;
  const std::string text = ReadFile(rendered);
  EXPECT_THAT(text, HasSubstr("--leader-elect=true"));
  EXPECT_THAT(text, HasSubstr("image: ghcr.io/baton-ai/baton-operator:0.1.0"));
}

TEST_F(ChartTest, EveryCiValuesFileRendersValidManifests) {
  // What each file must (and must not) render besides the operator.
  const std::map<std::string, std::vector<std::string>> expectations = {
      {"monitoring-values.yaml",
       {"--expect ServiceMonitor", "--expect PodMonitor", "--expect PrometheusRule",
        "--expect ConfigMap"}},
      {"namespaced-values.yaml",
       {"--expect Role", "--forbid ClusterRole", "--forbid ClusterRoleBinding",
        "--expect BatonService"}},
      {"custom-values.yaml", {"--forbid ServiceAccount", "--expect BatonService"}},
  };
  for (const std::string& f : CiValues()) {
    SCOPED_TRACE(f);
    const std::string rendered = Template(absl::StrCat("-f ", kChart, "/ci/", f));
    std::vector<std::string> flags = {"--expect Deployment", "--expect CustomResourceDefinition"};
    if (auto it = expectations.find(f); it != expectations.end()) {
      flags.insert(flags.end(), it->second.begin(), it->second.end());
    }
    std::string report;
    EXPECT_EQ(Validate(rendered, flags, &report), 0) << report;
  }
}

TEST_F(ChartTest, ValuesSchemaIsStrict) {
  for (const char* bad :
       {"--set unknownKey=1", "--set operator.workers=0", "--set image.pullPolicy=Sometimes",
        "--set monitoring.podMonitor.interval=fast", "--set operator.watchNamespace=Bad_NS",
        "--set monitoring.prometheusRule.objective=1.5"}) {
    std::string out;
    EXPECT_NE(RunCommand(absl::StrCat(kHelm, " template baton ", kChart, " ", bad), &out), 0)
        << bad;
    EXPECT_THAT(out, HasSubstr("values don't meet the specifications of the schema")) << bad;
  }
}

TEST_F(ChartTest, TheValidatorCatchesWhatItChecks) {
  // A writable root filesystem, from the values.
  std::string report;
  EXPECT_NE(Validate(Template("--set securityContext.readOnlyRootFilesystem=false"), {}, &report),
            0);
  EXPECT_THAT(report, HasSubstr("writable root filesystem"));
  // Hand-made mistakes the chart must never render.
  const std::string bad = tmp_ + "/bad.yaml";
  std::ofstream(bad) << R"(apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: too-much}
rules:
  - {apiGroups: [""], resources: [secrets], verbs: [get, delete]}
---
apiVersion: baton.dev/v1alpha1
kind: BatonService
metadata: {name: typo, namespace: x}
spec:
  image: baton
  model: {hostPath: {path: /m}}
  prefil: {replicas: 2}
  decode: {replicas: "two"}
---
apiVersion: v1
kind: Service
metadata: {name: Not_A_Name, namespace: x}
spec: {selector: {app: nothing}, ports: [{port: 80}]}
)";
  EXPECT_NE(Validate(bad, {}, &report), 0);
  EXPECT_THAT(report, HasSubstr("access to ['secrets']"));
  EXPECT_THAT(report, HasSubstr("may delete"));
  EXPECT_THAT(report, HasSubstr("spec.prefil: unknown field"));
  EXPECT_THAT(report, HasSubstr("spec.decode.replicas: must be an integer"));
  EXPECT_THAT(report, HasSubstr("bad metadata.name"));
  EXPECT_THAT(report, HasSubstr("matches no rendered pod template"));
}

TEST_F(ChartTest, TheOperatorAcceptsTheExamples) {
  std::vector<std::string> files = {kChart + "/examples/batonservice.yaml",
                                    kChart + "/examples/batonservice-autoscaled.yaml"};
  // And the example the chart renders.
  std::string out;
  ASSERT_EQ(RunCommand(absl::StrCat(kHelm, " template baton ", kChart,
                                    " --set example.enabled=true --show-only "
                                    "templates/example-batonservice.yaml > ",
                                    tmp_, "/example.yaml"),
                       &out),
            0)
      << out;
  files.push_back(tmp_ + "/example.yaml");
  for (const std::string& f : files) {
    SCOPED_TRACE(f);
    absl::StatusOr<Json> doc = ParseYaml(ReadFile(f), f);
    ASSERT_TRUE(doc.ok()) << doc.status();
    EXPECT_EQ(GetString(*doc, {"kind"}), "BatonService");
    absl::StatusOr<BatonServiceSpec> spec = ParseBatonServiceSpec((*doc)["spec"]);
    ASSERT_TRUE(spec.ok()) << spec.status();
    EXPECT_FALSE(spec->image.empty());
  }
  absl::StatusOr<Json> autoscaled = ParseYaml(ReadFile(files[1]), files[1]);
  absl::StatusOr<BatonServiceSpec> spec = ParseBatonServiceSpec((*autoscaled)["spec"]);
  ASSERT_TRUE(spec.ok());
  EXPECT_TRUE(spec->autoscaling.enabled);
  EXPECT_EQ(spec->autoscaling.policy.gpu_budget, 16);
  EXPECT_EQ(spec->autoscaling.policy.decode.gpus_per_replica, 2);
  EXPECT_EQ(spec->metrics.source, MetricsSpec::Source::kPrometheus);
}

}  // namespace
}  // namespace baton::op
