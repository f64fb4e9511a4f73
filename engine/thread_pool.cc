#include "engine/thread_pool.h"

#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <climits>

namespace baton {
namespace {

// How long an idle worker spins before it sleeps: long enough to bridge the
// gap between the kernels of one step, short enough not to burn a core
// between steps.
constexpr auto kSpinTime = std::chrono::microseconds(200);
// Chunks per thread: enough to balance uneven progress, few enough that a
// chunk amortizes its claim.
constexpr int64_t kChunksPerThread = 4;

inline void CpuRelax() {
#if defined(__x86_64__)
  __builtin_ia32_pause();
#endif
}

void FutexWait(std::atomic<uint32_t>& word, uint32_t expected) {
  syscall(SYS_futex, reinterpret_cast<int*>(&word), FUTEX_WAIT_PRIVATE, static_cast<int>(expected),
          nullptr, nullptr, 0);
}

void FutexWakeAll(std::atomic<uint32_t>& word) {
  syscall(SYS_futex, reinterpret_cast<int*>(&word), FUTEX_WAKE_PRIVATE, INT_MAX, nullptr, nullptr,
          0);
}

}  // namespace

ThreadPool::ThreadPool(int num_threads) {
  if (num_threads <= 0) {
    num_threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  }
  for (int i = 1; i < num_threads; ++i) workers_.emplace_back([this] { WorkerLoop(); });
}

ThreadPool::~ThreadPool() {
  stop_.store(true);
  job_signal_.fetch_add(1);
  FutexWakeAll(job_signal_);
  for (std::thread& t : workers_) t.join();
}

void ThreadPool::RunChunks(uint32_t job_id) {
  uint64_t ticket = ticket_.load();
  while (true) {
    if (static_cast<uint32_t>(ticket >> 32) != job_id) return;
    const uint32_t chunk = static_cast<uint32_t>(ticket);
    if (chunk >= num_chunks_.load()) return;
    if (!ticket_.compare_exchange_weak(ticket, ticket + 1)) continue;
    // The job cannot finish while this chunk is unfinished, so its fields
    // are still this job's.
    const int64_t begin = static_cast<int64_t>(chunk) * chunk_size_;
    (*fn_)(begin, std::min(n_, begin + chunk_size_));
    if (chunks_done_.fetch_add(1) + 1 == num_chunks_.load() && caller_sleeping_.load()) {
      FutexWakeAll(chunks_done_);
    }
    ticket = ticket_.load();
  }
}

void ThreadPool::WorkerLoop() {
  uint32_t seen = 0;
  while (true) {
    uint32_t current = job_signal_.load();
    if (current == seen) {
      const auto deadline = std::chrono::steady_clock::now() + kSpinTime;
      int spins = 0;
      while ((current = job_signal_.load()) == seen) {
        CpuRelax();
        if (resting_.load(std::memory_order_relaxed) ||
            (++spins % 64 == 0 && std::chrono::steady_clock::now() > deadline)) {
          sleeping_workers_.fetch_add(1);
          if (job_signal_.load() == seen) FutexWait(job_signal_, seen);
          sleeping_workers_.fetch_sub(1);
        }
      }
    }
    seen = current;
    if (stop_.load()) return;
    RunChunks(current);
  }
}

void ThreadPool::ParallelFor(int64_t n, int64_t grain,
                             const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(grain, 1);
  const int64_t grains = (n + grain - 1) / grain;
  if (workers_.empty() || grains == 1) {
    fn(0, n);
    return;
  }
  const int64_t chunks = std::min<int64_t>(grains, num_threads() * kChunksPerThread);
  fn_ = &fn;
  n_ = n;
  chunk_size_ = (grains + chunks - 1) / chunks * grain;
  num_chunks_.store(static_cast<uint32_t>((n + chunk_size_ - 1) / chunk_size_));
  chunks_done_.store(0);
  resting_.store(false, std::memory_order_relaxed);
  const uint32_t job_id = job_signal_.load() + 1;
  ticket_.store(static_cast<uint64_t>(job_id) << 32);
  job_signal_.store(job_id);
  if (sleeping_workers_.load() > 0) FutexWakeAll(job_signal_);
  RunChunks(job_id);
  // Wait for chunks that workers still hold.
  int spins = 0;
  uint32_t done;
  while ((done = chunks_done_.load()) != num_chunks_.load()) {
    if (++spins < 20000) {
      CpuRelax();
    } else {
      caller_sleeping_.store(true);
      if (chunks_done_.load() == done) FutexWait(chunks_done_, done);
      caller_sleeping_.store(false);
    }
  }
  // Close the job: a worker still holding a ticket of it read before now
  // must fail its claim, or it could claim a chunk of this job against the
  // next job's fields while they are being written.
  ticket_.store((static_cast<uint64_t>(job_id) << 32) | 0xffffffffu);
  fn_ = nullptr;
}

}  // namespace baton
