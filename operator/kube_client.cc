#include "operator/kube_client.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "operator/http_server.h"
#include "operator/status_macros.h"

namespace baton::op {
namespace {

constexpr char kJson[] = "application/json";
constexpr char kMergePatch[] = "application/merge-patch+json";

absl::Status WithMessage(absl::StatusCode code, const std::string& message) {
  return absl::Status(code, message);
}

}  // namespace

std::string ResourceType::ApiVersion() const {
  return *group == '\0' ? std::string(version) : absl::StrCat(group, "/", version);
}

bool IsConflict(const absl::Status& s) { return s.code() == absl::StatusCode::kAborted; }
bool IsGone(const absl::Status& s) { return s.code() == absl::StatusCode::kOutOfRange; }

absl::Status StatusFromHttp(long code, const std::string& body, const std::string& what) {
  if (code >= 200 && code < 300) return absl::OkStatus();
  Json status = Json::parse(body, nullptr, /*allow_exceptions=*/false);
  std::string reason, message;
  if (!status.is_discarded() && status.is_object()) {
    reason = GetString(status, {"reason"});
    message = GetString(status, {"message"});
  }
  if (message.empty()) message = body.substr(0, 200);
  const std::string text =
      absl::StrCat(what, ": HTTP ", code, reason.empty() ? "" : " ", reason, ": ", message);
  switch (code) {
    case 400:
    case 422:
      return WithMessage(absl::StatusCode::kInvalidArgument, text);
    case 401:
      return WithMessage(absl::StatusCode::kUnauthenticated, text);
    case 403:
      return WithMessage(absl::StatusCode::kPermissionDenied, text);
    case 404:
      return WithMessage(absl::StatusCode::kNotFound, text);
    case 409:
      return WithMessage(
          reason == "AlreadyExists" ? absl::StatusCode::kAlreadyExists : absl::StatusCode::kAborted,
          text);
    case 410:
      return WithMessage(absl::StatusCode::kOutOfRange, text);
    case 429:
      return WithMessage(absl::StatusCode::kResourceExhausted, text);
    default:
      return WithMessage(code >= 500 ? absl::StatusCode::kUnavailable : absl::StatusCode::kUnknown,
                         text);
  }
}

KubeClient::KubeClient(KubeConfig config)
    : config_(std::move(config)), http_(std::make_unique<HttpClient>(config_.tls)) {}

std::string KubeClient::Path(const ResourceType& type, const std::string& ns,
                             const std::string& name, const std::string& subresource) {
  std::string path = *type.group == '\0' ? absl::StrCat("/api/", type.version)
                                         : absl::StrCat("/apis/", type.group, "/", type.version);
  if (type.namespaced && !ns.empty()) absl::StrAppend(&path, "/namespaces/", PercentEncode(ns));
  absl::StrAppend(&path, "/", type.plural);
  if (!name.empty()) absl::StrAppend(&path, "/", PercentEncode(name));
  if (!subresource.empty()) absl::StrAppend(&path, "/", subresource);
  return path;
}

std::vector<std::string> KubeClient::Headers(const std::string& content_type) const {
  std::vector<std::string> headers = {"Accept: application/json", "User-Agent: baton-operator/0.1"};
  if (!content_type.empty()) headers.push_back(absl::StrCat("Content-Type: ", content_type));
  const std::string token = config_.BearerToken();
  if (!token.empty()) headers.push_back(absl::StrCat("Authorization: Bearer ", token));
  return headers;
}

absl::StatusOr<Json> KubeClient::Call(const std::string& method, const std::string& path,
                                      const std::string& body, const std::string& content_type,
                                      const std::string& what) const {
  HttpClientRequest req;
  req.method = method;
  req.url = config_.server + path;
  req.headers = Headers(content_type);
  req.body = body;
  BATON_ASSIGN_OR_RETURN(HttpClientResponse resp, http_->Do(req));
  BATON_RETURN_IF_ERROR(StatusFromHttp(resp.status, resp.body, what));
  return ParseJson(resp.body, what);
}

absl::StatusOr<Json> KubeClient::Get(const ResourceType& type, const std::string& ns,
                                     const std::string& name) const {
  return Call("GET", Path(type, ns, name), "", "",
              absl::StrCat("get ", type.plural, " ", ns, "/", name));
}

absl::StatusOr<Json> KubeClient::List(const ResourceType& type, const std::string& ns,
                                      const ListOptions& options) const {
  std::vector<std::string> params;
  if (!options.label_selector.empty()) {
    params.push_back(absl::StrCat("labelSelector=", PercentEncode(options.label_selector)));
  }
  if (!options.field_selector.empty()) {
    params.push_back(absl::StrCat("fieldSelector=", PercentEncode(options.field_selector)));
  }
  std::string path = Path(type, ns);
  if (!params.empty()) absl::StrAppend(&path, "?", absl::StrJoin(params, "&"));
  return Call("GET", path, "", "", absl::StrCat("list ", type.plural));
}

absl::StatusOr<Json> KubeClient::Create(const ResourceType& type, const std::string& ns,
                                        const Json& object) const {
  return Call(
      "POST", Path(type, ns), object.dump(), kJson,
      absl::StrCat("create ", type.plural, " ", ns, "/", GetString(object, {"metadata", "name"})));
}

absl::StatusOr<Json> KubeClient::Update(const ResourceType& type, const std::string& ns,
                                        const Json& object) const {
  const std::string name = GetString(object, {"metadata", "name"});
  return Call("PUT", Path(type, ns, name), object.dump(), kJson,
              absl::StrCat("update ", type.plural, " ", ns, "/", name));
}

absl::StatusOr<Json> KubeClient::UpdateStatus(const ResourceType& type, const std::string& ns,
                                              const Json& object) const {
  const std::string name = GetString(object, {"metadata", "name"});
  return Call("PUT", Path(type, ns, name, "status"), object.dump(), kJson,
              absl::StrCat("update ", type.plural, "/status ", ns, "/", name));
}

absl::StatusOr<Json> KubeClient::Patch(const ResourceType& type, const std::string& ns,
                                       const std::string& name, const Json& patch) const {
  return Call("PATCH", Path(type, ns, name), patch.dump(), kMergePatch,
              absl::StrCat("patch ", type.plural, " ", ns, "/", name));
}

absl::Status KubeClient::Delete(const ResourceType& type, const std::string& ns,
                                const std::string& name) const {
  return Call("DELETE", Path(type, ns, name), "", "",
              absl::StrCat("delete ", type.plural, " ", ns, "/", name))
      .status();
}

absl::Status KubeClient::Watch(const ResourceType& type, const std::string& ns,
                               const WatchOptions& options,
                               const std::function<bool(const WatchEvent&)>& on_event,
                               CancelToken* cancel) const {
  std::string path =
      absl::StrCat(Path(type, ns), "?watch=1&timeoutSeconds=", options.timeout_seconds);
  if (options.allow_bookmarks) absl::StrAppend(&path, "&allowWatchBookmarks=true");
  if (!options.resource_version.empty()) {
    absl::StrAppend(&path, "&resourceVersion=", PercentEncode(options.resource_version));
  }
  if (!options.label_selector.empty()) {
    absl::StrAppend(&path, "&labelSelector=", PercentEncode(options.label_selector));
  }
  const std::string what = absl::StrCat("watch ", type.plural);
  HttpClientRequest req;
  req.url = config_.server + path;
  req.headers = Headers("");
  // The server closes the stream after timeoutSeconds; the client bound
  // only guards against a server that does not.
  req.timeout = absl::Seconds(options.timeout_seconds + 30);
  absl::Status parse_error;
  auto on_line = [&](const std::string& line) {
    Json j = Json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_object()) {
      parse_error = absl::DataLossError(absl::StrCat(what, ": bad event line"));
      return false;
    }
    WatchEvent event;
    event.type = GetString(j, {"type"});
    if (auto it = j.find("object"); it != j.end()) event.object = std::move(*it);
    return on_event(event);
  };
  BATON_ASSIGN_OR_RETURN(HttpClientResponse resp, http_->Stream(req, on_line, cancel));
  BATON_RETURN_IF_ERROR(parse_error);
  return StatusFromHttp(resp.status, resp.body, what);
}

}  // namespace baton::op
