#include "tests/operator/fake_api_server.h"

#include <algorithm>
#include <set>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace baton::op::testing {
namespace {

std::string Key(const std::string& ns, const std::string& name) {
  return absl::StrCat(ns, "/", name);
}

bool InNamespace(const Json& object, const std::string& ns) {
  return ns.empty() || GetString(object, {"metadata", "namespace"}) == ns;
}

}  // namespace

bool MatchesSelector(const Json& object, const std::string& selector) {
  const Json* labels = Find(object, {"metadata", "labels"});
  auto label = [&](const std::string& k) -> std::optional<std::string> {
    if (labels == nullptr || !labels->is_object()) return std::nullopt;
    auto it = labels->find(k);
    if (it == labels->end() || !it->is_string()) return std::nullopt;
    return it->get<std::string>();
  };
  for (absl::string_view term_view : absl::StrSplit(selector, ',', absl::SkipWhitespace())) {
    const std::string term(term_view);
    if (size_t p = term.find("!="); p != std::string::npos) {
      if (label(term.substr(0, p)) == term.substr(p + 2)) return false;
    } else if (size_t q = term.find('='); q != std::string::npos) {
      const size_t vstart = term.compare(q, 2, "==") == 0 ? q + 2 : q + 1;
      if (label(term.substr(0, q)) != term.substr(vstart)) return false;
    } else if (term[0] == '!') {
      if (label(term.substr(1))) return false;
    } else if (!label(term)) {
      return false;
    }
  }
  return true;
}

std::unique_ptr<FakeApiServer> FakeApiServer::Start() {
  auto server = std::unique_ptr<FakeApiServer>(new FakeApiServer());
  server->resources_ = {
      {"batonservices", {"baton.dev", "v1alpha1", "BatonService", true, true}},
      {"deployments", {"apps", "v1", "Deployment", true, false}},
      {"services", {"", "v1", "Service", true, false}},
      {"pods", {"", "v1", "Pod", true, false}},
      {"leases", {"coordination.k8s.io", "v1", "Lease", false, false}},
  };
  FakeApiServer* s = server.get();
  auto http = HttpServer::Start(
      "127.0.0.1", 0, [s](const HttpRequest& req, HttpResponseWriter& w) { s->Handle(req, w); });
  if (!http.ok()) return nullptr;
  server->http_ = std::move(*http);
  return server;
}

FakeApiServer::~FakeApiServer() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (http_ != nullptr) http_->Stop();
}

KubeConfig FakeApiServer::Config() const {
  KubeConfig c;
  c.server = absl::StrCat("http://127.0.0.1:", port());
  c.token = kToken;
  c.ns = "default";
  return c;
}

const FakeApiServer::Resource* FakeApiServer::Lookup(const std::string& plural) const {
  auto it = resources_.find(plural);
  return it == resources_.end() ? nullptr : &it->second;
}

Json FakeApiServer::StatusBody(int code, const std::string& reason, const std::string& message) {
  return Json{{"kind", "Status"},    {"apiVersion", "v1"}, {"metadata", Json::object()},
              {"status", "Failure"}, {"reason", reason},   {"message", message},
              {"code", code}};
}

void FakeApiServer::Reply(HttpResponseWriter& w, int code, const Json& body) {
  w.Send(code, "application/json", body.dump());
}

Json FakeApiServer::Stored(const std::string& plural, Json object, const std::string& type) {
  object["metadata"]["resourceVersion"] = std::to_string(++rv_);
  const std::string key = ObjectKey(object);
  if (type == "DELETED") {
    store_[plural].erase(key);
  } else {
    store_[plural][key] = object;
  }
  history_.push_back({rv_, type, plural, object});
  cv_.SignalAll();
  return object;
}

Json FakeApiServer::CreateLocked(const std::string& plural, const std::string& ns, Json object) {
  const Resource* r = Lookup(plural);
  object["kind"] = r->kind;
  object["apiVersion"] = r->group.empty() ? r->version : absl::StrCat(r->group, "/", r->version);
  Json& meta = object["metadata"];
  meta["namespace"] = ns;
  meta["uid"] = absl::StrCat("uid-", ++uid_);
  meta["creationTimestamp"] = FormatTimestamp(absl::Now());
  meta["generation"] = 1;
  return Stored(plural, std::move(object), "ADDED");
}

Json FakeApiServer::ReplaceLocked(const std::string& plural, const Json& old, Json updated) {
  Json& meta = updated["metadata"];
  for (const char* field :
       {"uid", "creationTimestamp", "resourceVersion", "generation", "namespace", "name"}) {
    if (old["metadata"].contains(field)) meta[field] = old["metadata"][field];
  }
  if (meta.contains("deletionTimestamp") && !old["metadata"].contains("deletionTimestamp")) {
    meta.erase("deletionTimestamp");
  }
  updated["kind"] = old["kind"];
  updated["apiVersion"] = old["apiVersion"];
  if (updated == old) return old;  // A no-op write changes nothing.
  const Json no_spec;
  if (updated.value("spec", no_spec) != old.value("spec", no_spec)) {
    meta["generation"] = GetInt(old, {"metadata", "generation"}, 1) + 1;
  }
  return Stored(plural, std::move(updated), "MODIFIED");
}

void FakeApiServer::DeleteLocked(const std::string& plural, const std::string& key) {
  auto it = store_[plural].find(key);
  if (it == store_[plural].end()) return;
  Json last = it->second;
  Stored(plural, std::move(last), "DELETED");
}

Json FakeApiServer::Create(const std::string& plural, const std::string& ns, Json object) {
  absl::MutexLock lock(&mu_);
  return CreateLocked(plural, ns, std::move(object));
}

std::optional<Json> FakeApiServer::Get(const std::string& plural, const std::string& ns,
                                       const std::string& name) const {
  absl::MutexLock lock(&mu_);
  auto p = store_.find(plural);
  if (p == store_.end()) return std::nullopt;
  auto it = p->second.find(Key(ns, name));
  if (it == p->second.end()) return std::nullopt;
  return it->second;
}

std::vector<Json> FakeApiServer::List(const std::string& plural, const std::string& ns) const {
  absl::MutexLock lock(&mu_);
  std::vector<Json> out;
  auto p = store_.find(plural);
  if (p == store_.end()) return out;
  for (const auto& [key, obj] : p->second) {
    if (InNamespace(obj, ns)) out.push_back(obj);
  }
  return out;
}

Json FakeApiServer::UpdateSpec(const std::string& plural, const std::string& ns,
                               const std::string& name, const Json& spec) {
  absl::MutexLock lock(&mu_);
  const Json old = store_[plural].at(Key(ns, name));
  Json updated = old;
  updated["spec"] = spec;
  return ReplaceLocked(plural, old, std::move(updated));
}

Json FakeApiServer::SetStatus(const std::string& plural, const std::string& ns,
                              const std::string& name, const Json& status) {
  absl::MutexLock lock(&mu_);
  const Json old = store_[plural].at(Key(ns, name));
  Json updated = old;
  updated["status"] = status;
  return ReplaceLocked(plural, old, std::move(updated));
}

bool FakeApiServer::Delete(const std::string& plural, const std::string& ns,
                           const std::string& name) {
  absl::MutexLock lock(&mu_);
  if (store_[plural].count(Key(ns, name)) == 0) return false;
  DeleteLocked(plural, Key(ns, name));
  return true;
}

bool FakeApiServer::DeleteWithoutEvent(const std::string& plural, const std::string& ns,
                                       const std::string& name) {
  absl::MutexLock lock(&mu_);
  if (store_[plural].erase(Key(ns, name)) == 0) return false;
  ++rv_;
  return true;
}

int FakeApiServer::CollectGarbage() {
  absl::MutexLock lock(&mu_);
  int deleted = 0;
  while (true) {
    std::set<std::string> uids;
    for (const auto& [plural, objects] : store_) {
      for (const auto& [key, obj] : objects) uids.insert(GetString(obj, {"metadata", "uid"}));
    }
    std::vector<std::pair<std::string, std::string>> orphans;
    for (const auto& [plural, objects] : store_) {
      for (const auto& [key, obj] : objects) {
        const Json* owners = Find(obj, {"metadata", "ownerReferences"});
        if (owners == nullptr || !owners->is_array() || owners->empty()) continue;
        bool alive = false;
        for (const Json& o : *owners) alive |= uids.count(GetString(o, {"uid"})) != 0;
        if (!alive) orphans.emplace_back(plural, key);
      }
    }
    if (orphans.empty()) return deleted;
    for (const auto& [plural, key] : orphans) DeleteLocked(plural, key);
    deleted += static_cast<int>(orphans.size());
  }
}

int64_t FakeApiServer::resource_version() const {
  absl::MutexLock lock(&mu_);
  return rv_;
}

void FakeApiServer::BreakWatches() {
  absl::MutexLock lock(&mu_);
  ++break_generation_;
  cv_.SignalAll();
}

void FakeApiServer::Compact() {
  absl::MutexLock lock(&mu_);
  history_.clear();
  compacted_rv_ = rv_;
}

void FakeApiServer::SetGoneAsEvent(bool as_event) {
  absl::MutexLock lock(&mu_);
  gone_as_event_ = as_event;
}

void FakeApiServer::SendBookmarks() {
  absl::MutexLock lock(&mu_);
  ++bookmark_generation_;
  cv_.SignalAll();
}

void FakeApiServer::FailNextWrites(const std::string& plural, int n) {
  absl::MutexLock lock(&mu_);
  fail_writes_[plural] = n;
}

int FakeApiServer::Count(const std::string& method, const std::string& plural) const {
  absl::MutexLock lock(&mu_);
  auto it = counts_.find(absl::StrCat(method, " ", plural));
  return it == counts_.end() ? 0 : it->second;
}

int FakeApiServer::open_watches() const {
  absl::MutexLock lock(&mu_);
  return open_watches_;
}

void FakeApiServer::Handle(const HttpRequest& req, HttpResponseWriter& w) {
  auto auth = req.headers.find("authorization");
  if (auth == req.headers.end() || auth->second != absl::StrCat("Bearer ", kToken)) {
    Reply(w, 401, StatusBody(401, "Unauthorized", "Unauthorized"));
    return;
  }
  std::vector<std::string> seg = absl::StrSplit(req.path, '/', absl::SkipEmpty());
  std::string group, version;
  size_t i = 0;
  if (seg.size() >= 2 && seg[0] == "api") {
    version = seg[1];
    i = 2;
  } else if (seg.size() >= 3 && seg[0] == "apis") {
    group = seg[1];
    version = seg[2];
    i = 3;
  } else {
    Reply(w, 404, StatusBody(404, "NotFound", "the server could not find the requested resource"));
    return;
  }
  std::string ns;
  if (i + 1 < seg.size() && seg[i] == "namespaces") {
    ns = seg[i + 1];
    i += 2;
  }
  if (i >= seg.size()) {
    Reply(w, 404, StatusBody(404, "NotFound", "no resource"));
    return;
  }
  const std::string plural = seg[i];
  const std::string name = i + 1 < seg.size() ? seg[i + 1] : "";
  const std::string sub = i + 2 < seg.size() ? seg[i + 2] : "";
  const Resource* r = Lookup(plural);
  if (r == nullptr || r->group != group || r->version != version ||
      (!sub.empty() && sub != "status")) {
    Reply(w, 404, StatusBody(404, "NotFound", absl::StrCat("unknown resource ", req.path)));
    return;
  }
  const bool watch = req.query.count("watch") != 0 &&
                     (req.query.at("watch") == "1" || req.query.at("watch") == "true");
  {
    absl::MutexLock lock(&mu_);
    ++counts_[absl::StrCat(watch ? "WATCH" : req.method, " ", plural)];
    if (req.method == "POST" || req.method == "PUT" || req.method == "PATCH") {
      int& fail = fail_writes_[plural];
      if (fail > 0) {
        --fail;
        Reply(w, 409,
              StatusBody(409, "Conflict",
                         "Operation cannot be fulfilled: the object has been modified; please "
                         "apply your changes to the latest version and try again"));
        return;
      }
    }
  }
  if (req.method == "GET" && name.empty()) {
    if (watch) {
      Watch(plural, ns, req, w);
      return;
    }
    const std::string selector =
        req.query.count("labelSelector") ? req.query.at("labelSelector") : "";
    absl::MutexLock lock(&mu_);
    Json items = Json::array();
    for (const auto& [key, obj] : store_[plural]) {
      if (InNamespace(obj, ns) && MatchesSelector(obj, selector)) items.push_back(obj);
    }
    Reply(w, 200,
          Json{{"kind", r->kind + "List"},
               {"apiVersion", r->group.empty() ? r->version : r->group + "/" + r->version},
               {"metadata", {{"resourceVersion", std::to_string(rv_)}}},
               {"items", std::move(items)}});
    return;
  }
  const std::string key = Key(ns, name);
  if (req.method == "GET") {
    absl::MutexLock lock(&mu_);
    auto it = store_[plural].find(key);
    if (it == store_[plural].end()) {
      Reply(w, 404, StatusBody(404, "NotFound", absl::StrCat(plural, " \"", name, "\" not found")));
    } else {
      Reply(w, 200, it->second);
    }
    return;
  }
  if (req.method == "DELETE") {
    absl::MutexLock lock(&mu_);
    auto it = store_[plural].find(key);
    if (it == store_[plural].end()) {
      Reply(w, 404, StatusBody(404, "NotFound", absl::StrCat(plural, " \"", name, "\" not found")));
      return;
    }
    Json last = it->second;
    DeleteLocked(plural, key);
    Reply(w, 200, last);
    return;
  }

  Json body = Json::parse(req.body, nullptr, /*allow_exceptions=*/false);
  if (body.is_discarded() || !body.is_object()) {
    Reply(w, 400, StatusBody(400, "BadRequest", "the body is not a JSON object"));
    return;
  }
  absl::MutexLock lock(&mu_);
  if (req.method == "POST" && name.empty()) {
    const std::string new_name = GetString(body, {"metadata", "name"});
    if (new_name.empty()) {
      Reply(w, 422, StatusBody(422, "Invalid", "metadata.name: Required value"));
      return;
    }
    const std::string body_ns = GetString(body, {"metadata", "namespace"});
    if (!body_ns.empty() && body_ns != ns) {
      Reply(w, 400, StatusBody(400, "BadRequest", "the namespace of the object does not match"));
      return;
    }
    if (store_[plural].count(Key(ns, new_name)) != 0) {
      Reply(w, 409,
            StatusBody(409, "AlreadyExists",
                       absl::StrCat(plural, " \"", new_name, "\" already exists")));
      return;
    }
    if (r->status_subresource) body.erase("status");
    Reply(w, 201, CreateLocked(plural, ns, std::move(body)));
    return;
  }
  auto it = store_[plural].find(key);
  if (it == store_[plural].end()) {
    Reply(w, 404, StatusBody(404, "NotFound", absl::StrCat(plural, " \"", name, "\" not found")));
    return;
  }
  const Json old = it->second;
  const std::string old_rv = GetString(old, {"metadata", "resourceVersion"});
  const std::string new_rv = GetString(body, {"metadata", "resourceVersion"});
  auto conflict = [&] {
    Reply(w, 409,
          StatusBody(409, "Conflict",
                     absl::StrCat("Operation cannot be fulfilled on ", plural, " \"", name,
                                  "\": the object has been modified; please apply your "
                                  "changes to the latest version and try again")));
  };
  if (req.method == "PUT") {
    if (new_rv.empty() && r->custom) {
      Reply(w, 422,
            StatusBody(422, "Invalid",
                       "metadata.resourceVersion: Invalid value: 0x0: must be specified "
                       "for an update"));
      return;
    }
    if (!new_rv.empty() && new_rv != old_rv) {
      conflict();
      return;
    }
    Json updated;
    if (sub == "status") {
      updated = old;
      if (body.contains("status")) {
        updated["status"] = body["status"];
      } else {
        updated.erase("status");
      }
    } else {
      updated = body;
      if (r->status_subresource) {
        if (old.contains("status")) {
          updated["status"] = old["status"];
        } else {
          updated.erase("status");
        }
      }
      updated["metadata"]["namespace"] = ns;
    }
    Reply(w, 200, ReplaceLocked(plural, old, std::move(updated)));
    return;
  }
  if (req.method == "PATCH") {
    auto ct = req.headers.find("content-type");
    if (ct == req.headers.end() || ct->second != "application/merge-patch+json") {
      Reply(w, 415, StatusBody(415, "UnsupportedMediaType", "only merge patch is supported"));
      return;
    }
    if (!new_rv.empty() && new_rv != old_rv) {
      conflict();
      return;
    }
    Json updated = old;
    updated.merge_patch(body);
    if (sub == "status") {
      Json status = updated.value("status", Json());
      updated = old;
      updated["status"] = status;
    } else if (r->status_subresource) {
      if (old.contains("status")) {
        updated["status"] = old["status"];
      } else {
        updated.erase("status");
      }
    }
    Reply(w, 200, ReplaceLocked(plural, old, std::move(updated)));
    return;
  }
  Reply(w, 405, StatusBody(405, "MethodNotAllowed", req.method));
}

void FakeApiServer::Watch(const std::string& plural, const std::string& ns, const HttpRequest& req,
                          HttpResponseWriter& w) {
  auto param = [&](const char* k) {
    auto it = req.query.find(k);
    return it == req.query.end() ? std::string() : it->second;
  };
  const std::string rv_text = param("resourceVersion");
  const std::string selector = param("labelSelector");
  const bool bookmarks = param("allowWatchBookmarks") == "true";
  int timeout = 1800;
  if (!param("timeoutSeconds").empty()) (void)absl::SimpleAtoi(param("timeoutSeconds"), &timeout);
  const absl::Time deadline = absl::Now() + absl::Seconds(timeout);
  const Resource* r = Lookup(plural);
  const std::string api_version =
      r->group.empty() ? r->version : absl::StrCat(r->group, "/", r->version);
  auto line = [](const std::string& type, const Json& object) {
    return Json{{"type", type}, {"object", object}}.dump() + "\n";
  };

  std::string initial;
  int64_t last = 0;
  int64_t my_break = 0, my_bookmark = 0;
  {
    absl::MutexLock lock(&mu_);
    int64_t from = 0;
    if (rv_text.empty() || rv_text == "0") {
      for (const auto& [key, obj] : store_[plural]) {
        if (InNamespace(obj, ns) && MatchesSelector(obj, selector)) initial += line("ADDED", obj);
      }
      from = rv_;
    } else if (!absl::SimpleAtoi(rv_text, &from)) {
      Reply(w, 400, StatusBody(400, "BadRequest", "bad resourceVersion"));
      return;
    } else if (from < compacted_rv_) {
      const std::string message =
          absl::StrCat("too old resource version: ", from, " (", compacted_rv_, ")");
      if (gone_as_event_) {
        w.StartStream(200, "application/json");
        w.WriteChunk(line("ERROR", StatusBody(410, "Expired", message)));
      } else {
        Reply(w, 410, StatusBody(410, "Expired", message));
      }
      return;
    }
    last = from;
    my_break = break_generation_;
    my_bookmark = bookmark_generation_;
    ++open_watches_;
  }
  bool alive = w.StartStream(200, "application/json") && w.WriteChunk(initial);
  while (alive) {
    std::string out;
    {
      absl::MutexLock lock(&mu_);
      // A broken stream delivers nothing more.
      if (stopping_ || break_generation_ != my_break) break;
      auto it = std::upper_bound(history_.begin(), history_.end(), last,
                                 [](int64_t rv, const Event& e) { return rv < e.rv; });
      for (; it != history_.end(); ++it) {
        last = it->rv;
        if (it->plural == plural && InNamespace(it->object, ns) &&
            MatchesSelector(it->object, selector)) {
          out += line(it->type, it->object);
        }
      }
      if (bookmarks && bookmark_generation_ != my_bookmark) {
        my_bookmark = bookmark_generation_;
        out += line("BOOKMARK", Json{{"kind", r->kind},
                                     {"apiVersion", api_version},
                                     {"metadata", {{"resourceVersion", std::to_string(rv_)}}}});
        last = std::max(last, rv_);
      }
    }
    if (!out.empty()) alive = w.WriteChunk(out);
    if (absl::Now() >= deadline || w.PeerClosed()) break;
    absl::MutexLock lock(&mu_);
    cv_.WaitWithTimeout(&mu_, absl::Milliseconds(20));
  }
  absl::MutexLock lock(&mu_);
  --open_watches_;
}

}  // namespace baton::op::testing
