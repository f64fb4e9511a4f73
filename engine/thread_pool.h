// A fork-join pool for the engine's kernels. The calling thread takes part in
// every job, and workers spin briefly before sleeping, because a sleeping
// pool costs ~30 us per wake-up on this class of machine (research/limits.md)
// and a decode step issues hundreds of jobs.
//
// Thread-safety: Run() may be called from one thread at a time (the engine
// loop thread). The pool itself is not reentrant: a job must not call Run().
#ifndef BATON_ENGINE_THREAD_POOL_H_
#define BATON_ENGINE_THREAD_POOL_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <thread>
#include <vector>

namespace baton {

class ThreadPool {
 public:
  // `num_threads` counts the caller; 0 means one per available core.
  explicit ThreadPool(int num_threads = 0);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int num_threads() const { return static_cast<int>(workers_.size()) + 1; }

  // Calls fn(thread_index) once on each of num_threads() threads and returns
  // when all have finished.
  void Run(const std::function<void(int thread_index)>& fn);

  // Splits [0, n) into num_threads() contiguous ranges, at multiples of
  // `grain`, and calls fn(begin, end) for each non-empty one.
  void ParallelFor(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

 private:
  void WorkerLoop(int index);

  std::vector<std::thread> workers_;
  const std::function<void(int)>* job_ = nullptr;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  std::atomic<bool> stop_{false};
};

}  // namespace baton

#endif  // BATON_ENGINE_THREAD_POOL_H_
