#include "operator/observation.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace baton::op {
namespace {

// The cumulative count at `le` of sorted `buckets`: the count of the largest
// bound <= le (0 below the first bound).
double CountAt(const std::vector<std::pair<double, double>>& buckets, double le) {
  double count = 0;
  for (const auto& [bound, c] : buckets) {
    if (bound > le) break;
    count = c;
  }
  return count;
}

}  // namespace

WindowHistogram::WindowHistogram(std::vector<std::pair<double, double>> buckets)
    : buckets_(std::move(buckets)) {
  std::sort(buckets_.begin(), buckets_.end());
  // Cumulative counts never decrease; a scrape that races an observation can
  // see them do so, and Prometheus repairs it the same way.
  for (size_t i = 1; i < buckets_.size(); ++i) {
    buckets_[i].second = std::max(buckets_[i].second, buckets_[i - 1].second);
  }
}

void WindowHistogram::Merge(const WindowHistogram& other) {
  if (other.buckets_.empty()) return;
  if (buckets_.empty()) {
    buckets_ = other.buckets_;
    return;
  }
  std::vector<double> bounds;
  for (const auto& b : buckets_) bounds.push_back(b.first);
  for (const auto& b : other.buckets_) bounds.push_back(b.first);
  std::sort(bounds.begin(), bounds.end());
  bounds.erase(std::unique(bounds.begin(), bounds.end()), bounds.end());
  std::vector<std::pair<double, double>> merged;
  merged.reserve(bounds.size());
  for (double le : bounds) {
    merged.emplace_back(le, CountAt(buckets_, le) + CountAt(other.buckets_, le));
  }
  buckets_ = std::move(merged);
}

WindowHistogram WindowHistogram::Since(const WindowHistogram& earlier) const {
  std::vector<std::pair<double, double>> diff;
  diff.reserve(buckets_.size());
  for (const auto& [le, count] : buckets_) {
    const double d = count - CountAt(earlier.buckets_, le);
    if (d < 0) return *this;  // Counter reset: the process restarted.
    diff.emplace_back(le, d);
  }
  return WindowHistogram(std::move(diff));
}

std::optional<double> WindowHistogram::Quantile(double q) const {
  if (buckets_.size() < 2 || !(q > 0.0 && q < 1.0)) return std::nullopt;
  if (!std::isinf(buckets_.back().first)) return std::nullopt;
  const double observations = buckets_.back().second;
  if (observations <= 0) return std::nullopt;
  double rank = q * observations;
  size_t b = 0;
  while (b < buckets_.size() && buckets_[b].second < rank) ++b;
  if (b >= buckets_.size() - 1) return buckets_[buckets_.size() - 2].first;
  if (b == 0 && buckets_[0].first <= 0) return buckets_[0].first;
  double start = 0;
  const double end = buckets_[b].first;
  double count = buckets_[b].second;
  if (b > 0) {
    start = buckets_[b - 1].first;
    count -= buckets_[b - 1].second;
    rank -= buckets_[b - 1].second;
  }
  if (count <= 0) return end;
  return start + (end - start) * (rank / count);
}

}  // namespace baton::op
