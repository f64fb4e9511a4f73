#include "operator/kube_config.h"

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "operator/status_macros.h"
#include "operator/yaml_lite.h"

namespace baton::op {
namespace {

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// Finds the entry named `name` in a kubeconfig list (clusters, users,
// contexts) and returns its `field` object.
absl::StatusOr<Json> NamedEntry(const Json& root, const char* list, const char* field,
                                const std::string& name, const std::string& source) {
  const Json* entries = Find(root, {list});
  if (entries != nullptr && entries->is_array()) {
    for (const Json& e : *entries) {
      if (GetString(e, {"name"}) == name) {
        const Json* value = Find(e, {field});
        return value != nullptr && value->is_object() ? *value : Json::object();
      }
    }
  }
  return absl::NotFoundError(absl::StrCat(source, ": no ", field, " named \"", name, "\""));
}

std::string Resolve(const std::string& dir, const std::string& path) {
  if (path.empty() || path[0] == '/') return path;
  return absl::StrCat(dir, "/", path);
}

absl::StatusOr<std::string> Base64(const std::string& data, const std::string& what) {
  std::string out;
  if (!absl::Base64Unescape(data, &out)) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": not valid base64"));
  }
  return out;
}

}  // namespace

std::string KubeConfig::BearerToken() const {
  if (!token_file.empty()) {
    absl::StatusOr<std::string> t = ReadFile(token_file);
    if (t.ok()) return std::string(absl::StripAsciiWhitespace(*t));
  }
  return token;
}

absl::StatusOr<KubeConfig> InClusterConfig(const std::string& host, const std::string& port,
                                           const std::string& sa_dir) {
  if (host.empty() || port.empty()) {
    return absl::FailedPreconditionError(
        "not in a cluster: KUBERNETES_SERVICE_HOST/KUBERNETES_SERVICE_PORT are not set");
  }
  KubeConfig c;
  // An IPv6 address needs brackets in a URL.
  const bool v6 = host.find(':') != std::string::npos;
  c.server = absl::StrCat("https://", v6 ? "[" : "", host, v6 ? "]" : "", ":", port);
  c.token_file = absl::StrCat(sa_dir, "/token");
  if (!ReadFile(c.token_file).ok()) {
    return absl::FailedPreconditionError(absl::StrCat(c.token_file, ": no service-account token"));
  }
  c.tls.ca_file = absl::StrCat(sa_dir, "/ca.crt");
  absl::StatusOr<std::string> ns = ReadFile(absl::StrCat(sa_dir, "/namespace"));
  c.ns = ns.ok() ? std::string(absl::StripAsciiWhitespace(*ns)) : "default";
  return c;
}

absl::StatusOr<KubeConfig> LoadKubeconfig(const std::string& path, const std::string& context) {
  BATON_ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  BATON_ASSIGN_OR_RETURN(Json root, ParseYaml(text, path));
  if (!root.is_object())
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a kubeconfig"));
  const std::string dir =
      path.find('/') == std::string::npos ? "." : path.substr(0, path.rfind('/'));
  const std::string name = context.empty() ? GetString(root, {"current-context"}) : context;
  if (name.empty()) return absl::InvalidArgumentError(absl::StrCat(path, ": no current-context"));
  BATON_ASSIGN_OR_RETURN(Json ctx, NamedEntry(root, "contexts", "context", name, path));
  BATON_ASSIGN_OR_RETURN(
      Json cluster, NamedEntry(root, "clusters", "cluster", GetString(ctx, {"cluster"}), path));
  const std::string user_name = GetString(ctx, {"user"});
  Json user = Json::object();
  if (!user_name.empty()) {
    BATON_ASSIGN_OR_RETURN(user, NamedEntry(root, "users", "user", user_name, path));
  }

  KubeConfig c;
  c.server = GetString(cluster, {"server"});
  while (!c.server.empty() && c.server.back() == '/') c.server.pop_back();
  if (c.server.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": cluster of context \"", name, "\" has no server"));
  }
  c.ns = GetString(ctx, {"namespace"}, "default");
  c.tls.insecure_skip_verify = GetBool(cluster, {"insecure-skip-tls-verify"});
  c.tls.ca_file = Resolve(dir, GetString(cluster, {"certificate-authority"}));
  if (std::string data = GetString(cluster, {"certificate-authority-data"}); !data.empty()) {
    BATON_ASSIGN_OR_RETURN(c.tls.ca_pem, Base64(data, path + ": certificate-authority-data"));
  }
  c.tls.client_cert_file = Resolve(dir, GetString(user, {"client-certificate"}));
  if (std::string data = GetString(user, {"client-certificate-data"}); !data.empty()) {
    BATON_ASSIGN_OR_RETURN(c.tls.client_cert_pem, Base64(data, path + ": client-certificate-data"));
  }
  c.tls.client_key_file = Resolve(dir, GetString(user, {"client-key"}));
  if (std::string data = GetString(user, {"client-key-data"}); !data.empty()) {
    BATON_ASSIGN_OR_RETURN(c.tls.client_key_pem, Base64(data, path + ": client-key-data"));
  }
  c.token = GetString(user, {"token"});
  c.token_file = Resolve(dir, GetString(user, {"tokenFile"}));
  if (Find(user, {"exec"}) != nullptr || Find(user, {"auth-provider"}) != nullptr) {
    if (c.token.empty() && c.token_file.empty() && c.tls.client_cert_pem.empty() &&
        c.tls.client_cert_file.empty()) {
      return absl::UnimplementedError(absl::StrCat(
          path, ": user \"", user_name,
          "\" authenticates through an exec or auth-provider plugin, which baton-operator does "
          "not run; use a token or client certificate (e.g. a service-account token)"));
    }
  }
  return c;
}

absl::StatusOr<KubeConfig> LoadConfig(const std::string& kubeconfig, const std::string& context) {
  if (!kubeconfig.empty()) return LoadKubeconfig(kubeconfig, context);
  const char* host = std::getenv("KUBERNETES_SERVICE_HOST");
  const char* port = std::getenv("KUBERNETES_SERVICE_PORT");
  if (host != nullptr && *host != '\0') return InClusterConfig(host, port == nullptr ? "" : port);
  std::string path;
  if (const char* env = std::getenv("KUBECONFIG"); env != nullptr && *env != '\0') {
    path = std::string(*absl::StrSplit(env, ':').begin());
  } else if (const char* home = std::getenv("HOME"); home != nullptr) {
    path = absl::StrCat(home, "/.kube/config");
  }
  if (path.empty()) {
    return absl::FailedPreconditionError("no kubeconfig and not running in a cluster");
  }
  return LoadKubeconfig(path, context);
}

}  // namespace baton::op
