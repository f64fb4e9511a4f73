// A fork-join pool for the engine's kernels. A job is split into chunks that
// threads claim one at a time, and the calling thread claims chunks too: so a
// worker that the OS has descheduled (a shared 2-core machine) delays a job by
// at most the chunk it holds, never by a whole time slice before it starts.
// Idle workers spin briefly before sleeping on a futex, because a sleeping
// pool costs ~30 us per wake-up (research/limits.md) and a decode step runs
// hundreds of jobs.
//
// Thread-safety: ParallelFor() may be called from one thread at a time (the
// engine loop thread) and is not reentrant: a chunk must not call it.
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

  // Calls fn(begin, end) on disjoint ranges covering [0, n), each a multiple
  // of `grain` long (but the last), from any of the pool's threads, and
  // returns when all are done.
  void ParallelFor(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

  // Idle workers sleep now instead of spinning until the next job: for the
  // end of a burst of jobs (the engine is out of work), so that the cores go
  // to whoever needs them next, e.g. the threads that ship the result. The
  // next ParallelFor() wakes them as usual. Same thread as ParallelFor().
  void Rest() { resting_.store(true, std::memory_order_relaxed); }

 private:
  void WorkerLoop();
  // Claims and runs chunks of job `job_id` until none is left.
  void RunChunks(uint32_t job_id);

  std::vector<std::thread> workers_;
  // (job id << 32) | next chunk index: claiming a chunk is one CAS, and a
  // stale worker can never claim a chunk of a later job.
  std::atomic<uint64_t> ticket_{0};
  // Futex words (32-bit): the job id workers wait on, and chunks finished.
  std::atomic<uint32_t> job_signal_{0};
  std::atomic<uint32_t> chunks_done_{0};
  const std::function<void(int64_t, int64_t)>* fn_ = nullptr;
  int64_t n_ = 0;
  int64_t chunk_size_ = 0;
  std::atomic<uint32_t> num_chunks_{0};
  std::atomic<int> sleeping_workers_{0};
  std::atomic<bool> caller_sleeping_{false};
  std::atomic<bool> resting_{false};
  std::atomic<bool> stop_{false};
};

}  // namespace baton

#endif  // BATON_ENGINE_THREAD_POOL_H_
