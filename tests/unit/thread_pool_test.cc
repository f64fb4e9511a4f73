#include "engine/thread_pool.h"

#include <atomic>
#include <vector>

#include "gtest/gtest.h"

namespace baton {
namespace {

// Every index of [0, n) is visited exactly once, whatever came before.
void ExpectCoversOnce(ThreadPool& pool, int64_t n, int64_t grain) {
  std::vector<std::atomic<int>> visits(n);
  pool.ParallelFor(n, grain, [&](int64_t begin, int64_t end) {
    EXPECT_EQ(begin % grain, 0);
    for (int64_t i = begin; i < end; ++i) visits[i].fetch_add(1);
  });
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(visits[i].load(), 1) << "index " << i;
}

TEST(ThreadPoolTest, CoversTheRangeOnceInGrains) {
  ThreadPool pool(3);
  for (int64_t n : {1, 7, 64, 1000}) ExpectCoversOnce(pool, n, 4);
}

// Resting workers sleep at once, and the next job wakes them: many short
// bursts separated by Rest() lose no chunk and never hang.
TEST(ThreadPoolTest, JobsAfterRestLoseNothing) {
  ThreadPool pool(2);
  for (int burst = 0; burst < 200; ++burst) {
    ExpectCoversOnce(pool, 256, 1);
    pool.Rest();
  }
}

}  // namespace
}  // namespace baton
