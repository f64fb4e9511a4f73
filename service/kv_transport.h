// The KV data channel of disaggregated serving: a prefill worker pushes each
// layer's MLA KV rows to a decode worker over plain TCP in large binary
// frames (no per-element protobuf), after a handshake that checks the shared
// secret, the model identity and the KV layout.
//
// Wire format, little-endian. Once per connection:
//   hello   "BATONKV2", u32 n, n bytes of JSON {secret, fingerprint, layers,
//           width, block_size, dtype}
//   reply   u32 status (0: accepted, 1: refused), u32 n, n bytes of message
// then transfers, one at a time, each:
//   start   a frame header with layer 0xfffffffe and begin = transfer id;
//           answered with a reply (2: unknown, ended or already served,
//           once no decode call has named it for kAnnounceWaitMs)
//   frame   u32 layer, u32 zero, u64 begin, u64 end, (end-begin) rows of
//           width elements of dtype (f32 or bf16)
//   done    a frame with layer 0xffffffff, end = tokens sent and the
//           closing message's length in place of the zero; the message
// A prefill worker keeps its connections open between transfers
// (KvConnectionPool): a request pays no connect, handshake or thread start
// on the two cores its prefill computes on.
//
// This file is the one place that picks the transport; CUDA IPC and NCCL
// senders/receivers can join behind the same two classes.
#ifndef BATON_SERVICE_KV_TRANSPORT_H_
#define BATON_SERVICE_KV_TRANSPORT_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "engine/engine_loop.h"
#include "service/peer_auth.h"

namespace baton {

// What both ends must agree on.
struct KvLayout {
  std::string fingerprint;  // Model identity (config and weights).
  int layers = 0;
  int width = 0;  // Elements per token per layer.
  int block_size = 0;
  std::string dtype = "f32";  // "f32" or "bf16".

  // Bytes of one token's row in one layer.
  int64_t row_bytes() const { return int64_t{width} * (dtype == "bf16" ? 2 : 4); }
};

// A model identity from its config.json bytes and weight bytes.
std::string ModelFingerprint(const std::string& model_dir, size_t weight_bytes);

// Where received KV rows go: the decode worker's engine loop, or a sink that
// discards them in benchmarks. Must be thread-safe.
class KvImportSink {
 public:
  virtual ~KvImportSink() = default;
  // `rows`: (end - begin) rows of KvLayout::row_bytes() bytes, `bytes` in all.
  virtual absl::Status ImportKv(int64_t request_id, int layer, int64_t begin, int64_t end,
                                const void* rows, size_t bytes) = 0;
};

// Imports into an engine loop's reserved blocks.
class EngineLoopKvSink : public KvImportSink {
 public:
  explicit EngineLoopKvSink(EngineLoop* loop) : loop_(loop) {}
  absl::Status ImportKv(int64_t request_id, int layer, int64_t begin, int64_t end, const void* rows,
                        size_t bytes) override {
    return loop_->ImportKv(request_id, layer, begin, end, rows, bytes);
  }

 private:
  EngineLoop* loop_;
};

// Called with transfer outcomes and sizes, for metrics.
struct KvTransferObserver {
  std::function<void(uint64_t bytes, double seconds)> on_success;
  std::function<void(const std::string& reason)> on_failure;
};

// Decode side: accepts data channels and imports their frames into the
// blocks the engine reserved. Thread-safety: all methods are thread-safe.
class KvReceiver {
 public:
  static absl::StatusOr<std::unique_ptr<KvReceiver>> Start(const std::string& host, int port,
                                                           KvLayout layout, const PeerAuth* auth,
                                                           KvImportSink* sink,
                                                           KvTransferObserver observer);
  ~KvReceiver();

  int port() const { return port_; }
  // Connections accepted so far (each costs a handshake and a thread).
  int64_t connections_accepted() const { return connections_accepted_.load(); }
  // Frames for `transfer_id` go to engine request `request_id`, which awaits
  // `tokens` rows per layer. `on_done` runs once, on a receiver thread: OK
  // once every row of every layer was imported, with the sender's closing
  // message (see KvSender::Finish), or the failure.
  // With `ready` false the engine request has no blocks yet (the prefill
  // was started before it was submitted, so that the two overlap):
  // `request_id` is ignored and frames wait in the socket until Ready(), at
  // most kIdleTimeoutMs.
  // ALREADY_EXISTS if `transfer_id` is expected already (on_done never runs).
  using DoneCallback = std::function<void(absl::Status status, std::string closing)>;
  absl::Status Expect(uint64_t transfer_id, int64_t request_id, int64_t tokens,
                      DoneCallback on_done, bool ready = true);
  // Engine request `request_id` has reserved the blocks for an
  // Expect(..., ready = false) transfer.
  void Ready(uint64_t transfer_id, int64_t request_id);
  // The request ended: drop its transfer (and any connection still sending);
  // a start that names it later is refused at once.
  void Forget(uint64_t transfer_id);

  // A silent sender is cut off after this long within a transfer, and an
  // idle connection after kIdleConnectionMs between transfers. A transfer
  // announced before Expect() names it is refused after kAnnounceWaitMs.
  static constexpr int kIdleTimeoutMs = 5000;
  static constexpr int kAnnounceWaitMs = 2000;
  static constexpr int kIdleConnectionMs = 60000;

 private:
  struct Expected {
    int64_t request_id = 0;
    int64_t tokens = 0;
    DoneCallback on_done;
    bool ready = true;
    int fd = -1;  // The connection serving it, once one does.
  };
  KvReceiver() = default;
  void AcceptLoop();
  void Serve(int fd);
  // Receives one transfer on a connection; false when the connection must
  // close (the peer left or idled out, or the transfer failed).
  bool ServeTransfer(int fd);
  // Runs on_done once and forgets the transfer.
  void Complete(uint64_t transfer_id, const absl::Status& status, std::string closing = "");

  KvLayout layout_;
  const PeerAuth* auth_ = nullptr;
  KvImportSink* sink_ = nullptr;
  KvTransferObserver observer_;
  int listen_fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stopping_{false};
  std::atomic<int64_t> connections_accepted_{0};
  std::thread accept_thread_;
  absl::Mutex mu_;
  std::map<uint64_t, Expected> expected_ ABSL_GUARDED_BY(mu_);
  // The last kForgottenKept transfers forgotten.
  static constexpr size_t kForgottenKept = 256;
  std::set<uint64_t> forgotten_ ABSL_GUARDED_BY(mu_);
  std::deque<uint64_t> forgotten_order_ ABSL_GUARDED_BY(mu_);
  struct Connection {
    std::thread thread;
    std::shared_ptr<std::atomic<bool>> finished;
  };
  // Finished connections are joined at the next accept, so a long-running
  // worker holds threads only for live transfers.
  std::vector<Connection> connections_ ABSL_GUARDED_BY(mu_);
  std::vector<int> open_fds_ ABSL_GUARDED_BY(mu_);
};

// A prefill worker's idle data-channel connections, by decode address, each
// through the handshake already. Thread-safe.
class KvConnectionPool {
 public:
  KvConnectionPool() = default;
  ~KvConnectionPool();
  KvConnectionPool(const KvConnectionPool&) = delete;
  KvConnectionPool& operator=(const KvConnectionPool&) = delete;

  // An open connection to `address` for the caller to use, or -1; ones the
  // peer has closed since (a restart, its idle timeout) are dropped.
  int Take(const std::string& address);
  // Keeps `fd`, between transfers, for the next Take (closes it if
  // kMaxIdlePerAddress are kept already).
  void Put(const std::string& address, int fd);
  static constexpr size_t kMaxIdlePerAddress = 16;

 private:
  absl::Mutex mu_;
  std::map<std::string, std::vector<int>> idle_ ABSL_GUARDED_BY(mu_);
};

// Prefill side: one transfer. Large frames are queued by the engine thread
// and written by the sender's own thread, so computing never waits for the
// network; small ones with nothing ahead of them are written at once by the
// thread that hands them over. Thread-safety: all methods are thread-safe.
class KvSender {
 public:
  // Connects to `address` (host:port) and handshakes on the sender thread,
  // or takes a connection from `pool` and returns it there after a
  // successful transfer; `on_failure` runs once if the channel fails before
  // Finish completes.
  KvSender(std::string address, uint64_t transfer_id, KvLayout layout, std::string secret,
           std::function<void(absl::Status)> on_failure,
           std::shared_ptr<KvConnectionPool> pool = nullptr);
  ~KvSender();

  // `rows`: (end - begin) rows of KvLayout::row_bytes() bytes.
  void Send(int layer, int64_t begin, int64_t end, std::vector<uint8_t> rows);
  // Queues the end marker with a closing message for the receiver (at most
  // kMaxClosingBytes; prefill sends the first token there, so that decode
  // has it with the last layer); `on_done` runs on the sender thread once
  // all is written (OK) or the channel failed.
  void Finish(int64_t tokens, std::string closing, std::function<void(absl::Status)> on_done);
  static constexpr size_t kMaxClosingBytes = 1 << 16;
  // Stops at once and closes the connection.
  void Abort();
  uint64_t bytes_sent() const { return bytes_sent_.load(); }

 private:
  struct Frame {
    int layer;
    int64_t begin, end;
    std::vector<uint8_t> rows;
    std::string closing;  // The end marker's message.
    size_t sent = 0;      // Bytes of the frame (header included) written so far.
  };
  void Run();
  // Writes `frame` on this thread when nothing is queued or being written,
  // it is small and the socket takes it without waiting; what the socket
  // does not take at once (and any other frame) goes to the sender thread.
  void Enqueue(Frame frame);
  // Writes what is left of `frame`; with `nonblocking`, only what the socket
  // takes now. Done when frame.sent == FrameBytes(frame).
  absl::Status WriteFrame(Frame& frame, bool nonblocking);
  static size_t FrameBytes(const Frame& frame);
  // A fresh connection through the handshake, or the connection's error.
  absl::Status Connect();
  // Uses `fd` as the connection; an error if aborted meanwhile.
  absl::Status Adopt(int fd);
  // Announces this transfer on the connection and awaits the answer.
  absl::Status StartTransfer();
  // The receiver's answer to a hello or a start: OK, or why it refused.
  absl::Status AwaitReply();
  // The callback to run for the transfer's outcome, once; null if already
  // reported or aborted by the owner.
  std::function<void(absl::Status)> TakeNotifier(bool success);

  const std::string address_;
  const uint64_t transfer_id_;
  const KvLayout layout_;
  const std::string secret_;
  const std::shared_ptr<KvConnectionPool> pool_;
  std::function<void(absl::Status)> on_failure_;
  std::function<void(absl::Status)> on_done_;

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Frame> queue_;
  bool finishing_ = false;
  bool started_ = false;           // The transfer is accepted: frames may be written.
  bool writing_ = false;           // A thread is writing a frame.
  bool delivered_inline_ = false;  // The end marker left from Enqueue().
  absl::Status inline_error_;      // A write from Enqueue() failed.
  bool aborted_ = false;
  bool failed_ = false;
  int fd_ = -1;
  std::atomic<uint64_t> bytes_sent_{0};
  std::thread thread_;
};

}  // namespace baton

#endif  // BATON_SERVICE_KV_TRANSPORT_H_
