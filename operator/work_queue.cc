#include "operator/work_queue.h"

#include <algorithm>
#include <cmath>

namespace baton::op {

RateLimiter::RateLimiter(RateLimiterOptions options)
    : options_(options), tokens_(static_cast<double>(options.burst)) {}

absl::Duration RateLimiter::When(const std::string& key, absl::Time now) {
  const int failures = failures_[key]++;
  // 2^failures overflows nothing: the exponent is capped well before.
  const double factor = std::pow(2.0, std::min(failures, 62));
  absl::Duration backoff = options_.base_delay * factor;
  if (backoff > options_.max_delay || backoff < absl::ZeroDuration()) backoff = options_.max_delay;

  // Token bucket: refill since the last call, then take one token; a debt
  // is paid off at `qps`.
  if (last_ != absl::InfinitePast()) {
    tokens_ = std::min(static_cast<double>(options_.burst),
                       tokens_ + absl::ToDoubleSeconds(now - last_) * options_.qps);
  }
  last_ = now;
  tokens_ -= 1;
  const absl::Duration bucket = tokens_ >= 0 || options_.qps <= 0
                                    ? absl::ZeroDuration()
                                    : absl::Seconds(-tokens_ / options_.qps);
  return std::max(backoff, bucket);
}

void RateLimiter::Forget(const std::string& key) { failures_.erase(key); }

int RateLimiter::Failures(const std::string& key) const {
  auto it = failures_.find(key);
  return it == failures_.end() ? 0 : it->second;
}

WorkQueue::WorkQueue(RateLimiterOptions options) : limiter_(options) {}

void WorkQueue::AddLocked(const std::string& key) {
  if (shut_down_ || dirty_.count(key) != 0) return;
  dirty_.insert(key);
  // A key being processed is queued again by Done().
  if (processing_.count(key) == 0) queue_.push_back(key);
}

void WorkQueue::Add(const std::string& key) {
  absl::MutexLock lock(&mu_);
  AddLocked(key);
}

void WorkQueue::AddAfter(const std::string& key, absl::Duration delay) {
  absl::MutexLock lock(&mu_);
  if (shut_down_) return;
  if (delay <= absl::ZeroDuration()) {
    AddLocked(key);
    return;
  }
  const absl::Time due = absl::Now() + delay;
  // One pending delayed add per key: the earlier one wins.
  for (auto it = waiting_.begin(); it != waiting_.end(); ++it) {
    if (it->second == key) {
      if (it->first <= due) return;
      waiting_.erase(it);
      break;
    }
  }
  waiting_.emplace(due, key);
}

void WorkQueue::AddRateLimited(const std::string& key) {
  absl::Duration delay;
  {
    absl::MutexLock lock(&mu_);
    delay = limiter_.When(key, absl::Now());
  }
  AddAfter(key, delay);
}

void WorkQueue::Forget(const std::string& key) {
  absl::MutexLock lock(&mu_);
  limiter_.Forget(key);
}

int WorkQueue::Failures(const std::string& key) const {
  absl::MutexLock lock(&mu_);
  return limiter_.Failures(key);
}

void WorkQueue::PromoteDueLocked(absl::Time now) {
  while (!waiting_.empty() && waiting_.begin()->first <= now) {
    const std::string key = waiting_.begin()->second;
    waiting_.erase(waiting_.begin());
    AddLocked(key);
  }
}

std::optional<std::string> WorkQueue::Get() {
  absl::MutexLock lock(&mu_);
  while (true) {
    if (shut_down_) return std::nullopt;
    PromoteDueLocked(absl::Now());
    if (!queue_.empty()) break;
    // Sleep until the next delayed key is due or something is added.
    const absl::Time wake = waiting_.empty() ? absl::InfiniteFuture() : waiting_.begin()->first;
    mu_.AwaitWithDeadline(absl::Condition(
                              +[](WorkQueue* q) ABSL_NO_THREAD_SAFETY_ANALYSIS {
                                return q->shut_down_ || !q->queue_.empty();
                              },
                              this),
                          wake);
  }
  std::string key = queue_.front();
  queue_.pop_front();
  processing_.insert(key);
  dirty_.erase(key);
  return key;
}

void WorkQueue::Done(const std::string& key) {
  absl::MutexLock lock(&mu_);
  processing_.erase(key);
  if (dirty_.count(key) != 0 && !shut_down_) queue_.push_back(key);
}

void WorkQueue::ShutDown() {
  absl::MutexLock lock(&mu_);
  shut_down_ = true;
  queue_.clear();
  waiting_.clear();
}

size_t WorkQueue::Len() const {
  absl::MutexLock lock(&mu_);
  return queue_.size();
}

}  // namespace baton::op
