// A rate-limited work queue of object keys, with client-go's semantics: a
// key is queued at most once however often it is added, is never handed to
// two workers at once (added while being processed, it is queued again when
// Done), can be added after a delay, and failed keys come back after a
// per-key exponential backoff combined with an overall token bucket.
//
// Thread-safety: WorkQueue is safe for concurrent use; RateLimiter is not
// (the queue serialises its use).
#ifndef BATON_OPERATOR_WORK_QUEUE_H_
#define BATON_OPERATOR_WORK_QUEUE_H_

#include <deque>
#include <map>
#include <optional>
#include <set>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace baton::op {

struct RateLimiterOptions {
  absl::Duration base_delay = absl::Milliseconds(5);
  absl::Duration max_delay = absl::Seconds(1000);
  double qps = 10;  // The overall bucket's refill rate...
  int burst = 100;  // ...and size.
};

// client-go's DefaultControllerRateLimiter: the larger of a per-key
// exponential backoff (base * 2^failures, capped) and the delay a token
// bucket imposes. Takes `now` so that tests need no clock.
class RateLimiter {
 public:
  explicit RateLimiter(RateLimiterOptions options = {});
  // Records a failure of `key` and returns how long to wait before retrying.
  absl::Duration When(const std::string& key, absl::Time now);
  void Forget(const std::string& key);
  int Failures(const std::string& key) const;

 private:
  RateLimiterOptions options_;
  std::map<std::string, int> failures_;
  double tokens_;
  absl::Time last_ = absl::InfinitePast();
};

class WorkQueue {
 public:
  explicit WorkQueue(RateLimiterOptions options = {});

  void Add(const std::string& key);
  void AddAfter(const std::string& key, absl::Duration delay);
  // Adds after the rate limiter's delay for another failure of `key`.
  void AddRateLimited(const std::string& key);
  // Clears `key`'s failure count (after a success).
  void Forget(const std::string& key);
  // Blocks for the next key; nullopt once shut down.
  std::optional<std::string> Get();
  // Marks the processing of a key from Get() as finished.
  void Done(const std::string& key);
  // Wakes every Get() with nullopt; later adds are ignored.
  void ShutDown();

  size_t Len() const;  // Keys ready now.
  int Failures(const std::string& key) const;

 private:
  void AddLocked(const std::string& key) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void PromoteDueLocked(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  mutable absl::Mutex mu_;
  std::deque<std::string> queue_ ABSL_GUARDED_BY(mu_);
  std::set<std::string> dirty_ ABSL_GUARDED_BY(mu_);       // Queued or to be requeued.
  std::set<std::string> processing_ ABSL_GUARDED_BY(mu_);  // Handed out, not yet Done.
  std::multimap<absl::Time, std::string> waiting_ ABSL_GUARDED_BY(mu_);  // AddAfter.
  RateLimiter limiter_ ABSL_GUARDED_BY(mu_);
  bool shut_down_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace baton::op

#endif  // BATON_OPERATOR_WORK_QUEUE_H_
