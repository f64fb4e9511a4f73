// List+watch of one resource type into an in-memory cache (client-go's
// reflector + informer): list, then watch from the list's resourceVersion;
// keep the last resourceVersion seen (bookmarks included); when a stream
// ends, reconnect from it; on 410 Gone relist and report the difference from
// the cache as synthetic events (so deletions missed while disconnected are
// seen); back off exponentially, with jitter, on errors.
//
// Thread-safety: the cache accessors may be called from any thread; the
// handler runs on the informer's own thread and must not block for long.
#ifndef BATON_OPERATOR_INFORMER_H_
#define BATON_OPERATOR_INFORMER_H_

#include <atomic>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "operator/kube_client.h"

namespace baton::op {

enum class EventKind { kAdded, kModified, kDeleted };

// `object` is the new state (for kDeleted, the last known one).
using InformerHandler = std::function<void(EventKind kind, const Json& object)>;

struct InformerOptions {
  std::string ns;  // Empty: all namespaces.
  std::string label_selector;
  int watch_timeout_seconds = 300;
  absl::Duration initial_backoff = absl::Milliseconds(800);
  absl::Duration max_backoff = absl::Seconds(30);
};

class Informer {
 public:
  Informer(const KubeClient* client, ResourceType type, InformerOptions options,
           InformerHandler handler);
  ~Informer();
  Informer(const Informer&) = delete;
  Informer& operator=(const Informer&) = delete;

  void Start();
  void Stop();  // Cancels the stream in flight and joins. Idempotent.

  // True once the first list has filled the cache.
  bool HasSynced() const;
  std::optional<Json> Get(const std::string& ns, const std::string& name) const;
  std::vector<Json> List() const;

  // Counters, for tests and the operator's metrics.
  int lists() const { return lists_.load(); }
  int watches() const { return watches_.load(); }
  std::string resource_version() const;

 private:
  void Run();
  absl::Status ListAndReplace();
  // One watch stream; OUT_OF_RANGE (410) asks for a relist.
  absl::Status WatchOnce();
  void Sleep(absl::Duration d);

  const KubeClient* client_;
  const ResourceType type_;
  const InformerOptions options_;
  const InformerHandler handler_;
  std::thread thread_;
  absl::Notification stop_;

  mutable absl::Mutex mu_;
  CancelToken* cancel_ ABSL_GUARDED_BY(mu_) = nullptr;      // The stream in flight.
  std::map<std::string, Json> cache_ ABSL_GUARDED_BY(mu_);  // "ns/name" -> object.
  std::string resource_version_ ABSL_GUARDED_BY(mu_);
  bool synced_ ABSL_GUARDED_BY(mu_) = false;
  std::atomic<int> lists_{0};
  std::atomic<int> watches_{0};
};

}  // namespace baton::op

#endif  // BATON_OPERATOR_INFORMER_H_
