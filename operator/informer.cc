#include "operator/informer.h"

#include <algorithm>
#include <random>

#include "absl/strings/str_cat.h"
#include "operator/status_macros.h"

namespace baton::op {

Informer::Informer(const KubeClient* client, ResourceType type, InformerOptions options,
                   InformerHandler handler)
    : client_(client), type_(type), options_(std::move(options)), handler_(std::move(handler)) {}

Informer::~Informer() { Stop(); }

void Informer::Start() {
  if (!thread_.joinable()) thread_ = std::thread([this] { Run(); });
}

void Informer::Stop() {
  if (!stop_.HasBeenNotified()) stop_.Notify();
  {
    absl::MutexLock lock(&mu_);
    if (cancel_ != nullptr) cancel_->Cancel();
  }
  if (thread_.joinable()) thread_.join();
}

bool Informer::HasSynced() const {
  absl::MutexLock lock(&mu_);
  return synced_;
}

std::optional<Json> Informer::Get(const std::string& ns, const std::string& name) const {
  absl::MutexLock lock(&mu_);
  auto it = cache_.find(absl::StrCat(ns, "/", name));
  if (it == cache_.end()) return std::nullopt;
  return it->second;
}

std::vector<Json> Informer::List() const {
  absl::MutexLock lock(&mu_);
  std::vector<Json> out;
  out.reserve(cache_.size());
  for (const auto& [key, obj] : cache_) out.push_back(obj);
  return out;
}

std::string Informer::resource_version() const {
  absl::MutexLock lock(&mu_);
  return resource_version_;
}

void Informer::Sleep(absl::Duration d) { stop_.WaitForNotificationWithTimeout(d); }

absl::Status Informer::ListAndReplace() {
  ListOptions lo;
  lo.label_selector = options_.label_selector;
  BATON_ASSIGN_OR_RETURN(Json list, client_->List(type_, options_.ns, lo));
  lists_.fetch_add(1);
  std::map<std::string, Json> fresh;
  if (const Json* items = Find(list, {"items"}); items != nullptr && items->is_array()) {
    for (const Json& item : *items) {
      Json obj = item;
      // List items carry no kind; handlers expect whole objects.
      obj["kind"] = type_.kind;
      obj["apiVersion"] = type_.ApiVersion();
      // (The key first: nlohmann's operator= takes its argument by value,
      // so `fresh[ObjectKey(obj)] = std::move(obj)` would read a moved-from
      // object.)
      const std::string key = ObjectKey(obj);
      fresh[key] = std::move(obj);
    }
  }
  std::vector<std::pair<EventKind, Json>> events;
  {
    absl::MutexLock lock(&mu_);
    // The difference from the cache, as events: what was added or changed,
    // and what disappeared while no watch was looking.
    for (const auto& [key, obj] : fresh) {
      auto it = cache_.find(key);
      if (it == cache_.end()) {
        events.emplace_back(EventKind::kAdded, obj);
      } else if (GetString(it->second, {"metadata", "resourceVersion"}) !=
                 GetString(obj, {"metadata", "resourceVersion"})) {
        events.emplace_back(EventKind::kModified, obj);
      }
    }
    for (const auto& [key, obj] : cache_) {
      if (fresh.count(key) == 0) events.emplace_back(EventKind::kDeleted, obj);
    }
    cache_ = std::move(fresh);
    resource_version_ = GetString(list, {"metadata", "resourceVersion"});
    synced_ = true;
  }
  for (const auto& [kind, obj] : events) handler_(kind, obj);
  return absl::OkStatus();
}

absl::Status Informer::WatchOnce() {
  CancelToken cancel;
  {
    absl::MutexLock lock(&mu_);
    if (stop_.HasBeenNotified()) return absl::CancelledError("stopped");
    cancel_ = &cancel;
  }
  WatchOptions wo;
  wo.resource_version = resource_version();
  wo.label_selector = options_.label_selector;
  wo.timeout_seconds = options_.watch_timeout_seconds;
  absl::Status event_error;
  auto on_event = [&](const WatchEvent& e) {
    if (e.type == "ERROR") {
      const int64_t code = GetInt(e.object, {"code"});
      event_error = code == 410
                        ? absl::OutOfRangeError(absl::StrCat("watch ", type_.plural, ": ",
                                                             GetString(e.object, {"message"})))
                        : absl::UnavailableError(absl::StrCat("watch ", type_.plural,
                                                              ": error event ", e.object.dump()));
      return false;
    }
    const std::string rv = GetString(e.object, {"metadata", "resourceVersion"});
    if (e.type == "BOOKMARK") {
      absl::MutexLock lock(&mu_);
      if (!rv.empty()) resource_version_ = rv;
      return true;
    }
    EventKind kind;
    if (e.type == "ADDED") {
      kind = EventKind::kAdded;
    } else if (e.type == "MODIFIED") {
      kind = EventKind::kModified;
    } else if (e.type == "DELETED") {
      kind = EventKind::kDeleted;
    } else {
      return true;  // Unknown types are skipped, as client-go does.
    }
    const std::string key = ObjectKey(e.object);
    {
      absl::MutexLock lock(&mu_);
      if (kind == EventKind::kDeleted) {
        cache_.erase(key);
      } else {
        cache_[key] = e.object;
      }
      if (!rv.empty()) resource_version_ = rv;
    }
    handler_(kind, e.object);
    return true;
  };
  watches_.fetch_add(1);
  absl::Status s = client_->Watch(type_, options_.ns, wo, on_event, &cancel);
  {
    absl::MutexLock lock(&mu_);
    cancel_ = nullptr;
  }
  if (!event_error.ok()) return event_error;
  return s;
}

void Informer::Run() {
  std::mt19937 rng(std::random_device{}());
  absl::Duration backoff = options_.initial_backoff;
  bool need_list = true;
  auto fail = [&] {
    // Jitter spreads the reconnects of many operators after an outage.
    std::uniform_real_distribution<double> jitter(1.0, 1.5);
    Sleep(backoff * jitter(rng));
    backoff = std::min(backoff * 2, options_.max_backoff);
  };
  while (!stop_.HasBeenNotified()) {
    if (need_list) {
      if (absl::Status s = ListAndReplace(); !s.ok()) {
        fail();
        continue;
      }
      need_list = false;
    }
    absl::Status s = WatchOnce();
    if (stop_.HasBeenNotified()) break;
    if (s.ok()) {
      backoff = options_.initial_backoff;  // A clean end: reconnect now.
    } else if (IsGone(s)) {
      need_list = true;  // The resourceVersion is too old: relist at once.
    } else {
      fail();
    }
  }
}

}  // namespace baton::op
