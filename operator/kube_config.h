// Where the API server is and how to authenticate to it: the in-cluster
// service-account configuration, or a kubeconfig file when the operator runs
// outside the cluster.
//
// Thread-safety: plain values; BearerToken() reads a file and may be called
// from any thread.
#ifndef BATON_OPERATOR_KUBE_CONFIG_H_
#define BATON_OPERATOR_KUBE_CONFIG_H_

#include <string>

#include "absl/status/statusor.h"
#include "operator/http_client.h"

namespace baton::op {

struct KubeConfig {
  std::string server;      // e.g. "https://10.96.0.1:443", no trailing slash.
  std::string token;       // A static bearer token.
  std::string token_file;  // Re-read for every request: projected tokens rotate.
  TlsConfig tls;
  std::string ns;  // The default namespace (in-cluster: the pod's own).

  // The bearer token to send now; empty for none.
  std::string BearerToken() const;
};

inline constexpr char kServiceAccountDir[] = "/var/run/secrets/kubernetes.io/serviceaccount";

// The in-cluster configuration from KUBERNETES_SERVICE_HOST/PORT and the
// service-account files (token, ca.crt, namespace) in `sa_dir`.
absl::StatusOr<KubeConfig> InClusterConfig(const std::string& host, const std::string& port,
                                           const std::string& sa_dir = kServiceAccountDir);

// A kubeconfig file, using `context` or its current-context. Supports token,
// tokenFile and client certificates (files or inline data); exec and
// auth-provider plugins are refused with an error that says so.
absl::StatusOr<KubeConfig> LoadKubeconfig(const std::string& path, const std::string& context = "");

// The configuration a process should use: `kubeconfig` when given; else
// in-cluster when KUBERNETES_SERVICE_HOST is set; else $KUBECONFIG (its first
// entry) or ~/.kube/config.
absl::StatusOr<KubeConfig> LoadConfig(const std::string& kubeconfig, const std::string& context);

}  // namespace baton::op

#endif  // BATON_OPERATOR_KUBE_CONFIG_H_
