#include "service/kv_transport.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace baton {
namespace {

constexpr char kMagic[8] = {'B', 'A', 'T', 'O', 'N', 'K', 'V', '2'};
constexpr uint32_t kDoneLayer = 0xffffffffu;
// Reply codes: accepted; refused (the handshake: secret, model or layout);
// a start no decode call has named.
constexpr uint32_t kReplyAccepted = 0;
constexpr uint32_t kReplyRefused = 1;
constexpr uint32_t kReplyUnknownTransfer = 2;
constexpr uint32_t kStartLayer = 0xfffffffeu;
constexpr uint32_t kMaxHelloBytes = 64 << 10;
// Frames up to this size may be written by the thread that hands them over
// (KvSender::Enqueue); larger ones always go through the sender thread, so
// that computing never waits on a long copy.
constexpr size_t kInlineFrameBytes = 256 << 10;

struct FrameHeader {
  uint32_t layer;
  uint32_t closing_bytes;  // The end marker's message length; 0 in data frames.
  uint64_t begin;
  uint64_t end;
};
static_assert(sizeof(FrameHeader) == 24);

// Wakes a reader blocked on `fd` only once `bytes` have arrived (at most
// kMaxWakeBytes, so that a large transfer still drains while it streams in),
// instead of once per TCP segment or frame: on two cores, every wake-up of
// the decode worker's receiver takes a core from the prefill's compute.
constexpr size_t kMaxWakeBytes = size_t{256} << 10;
void SetWakeThreshold(int fd, size_t bytes) {
  const int low = static_cast<int>(std::clamp<size_t>(bytes, 1, kMaxWakeBytes));
  setsockopt(fd, SOL_SOCKET, SO_RCVLOWAT, &low, sizeof low);
}

// Reads exactly n bytes; fails when no byte arrives for timeout_ms. The
// socket's receive timeout does the waiting, so a large frame costs one
// system call per kernel buffer, not two. It waits in slices of at most a
// second because a receive that times out returns the bytes held below the
// wake threshold: a sender that goes silent after a few bytes is then cut
// off a slice after timeout_ms, not a whole timeout later.
absl::Status ReadFull(int fd, void* data, size_t n, int timeout_ms) {
  const int slice_ms = std::min(timeout_ms, 1000);
  timeval tv{slice_ms / 1000, (slice_ms % 1000) * 1000};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  auto* p = static_cast<uint8_t*>(data);
  int silent_ms = 0;
  while (n > 0) {
    const ssize_t got = recv(fd, p, n, MSG_WAITALL);
    if (got == 0) return absl::UnavailableError("the peer closed the data channel");
    if (got < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        silent_ms += slice_ms;
        if (silent_ms >= timeout_ms) return absl::DeadlineExceededError("the peer went silent");
        continue;
      }
      return absl::UnavailableError(absl::StrCat("read failed: ", std::strerror(errno)));
    }
    p += got;
    n -= static_cast<size_t>(got);
    silent_ms = 0;
  }
  return absl::OkStatus();
}

absl::Status WriteFull(int fd, const void* data, size_t n) {
  const auto* p = static_cast<const uint8_t*>(data);
  while (n > 0) {
    const ssize_t put = send(fd, p, n, MSG_NOSIGNAL);
    if (put < 0) {
      if (errno == EINTR) continue;
      return absl::UnavailableError(absl::StrCat("write failed: ", std::strerror(errno)));
    }
    p += put;
    n -= static_cast<size_t>(put);
  }
  return absl::OkStatus();
}

// Buffer sizes are left to the kernel's autotuning: fixing SO_RCVBUF turns
// it off and measured slower on loopback.
void TuneSocket(int fd) {
  const int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

absl::Status SendReply(int fd, uint32_t status, const std::string& message) {
  uint32_t head[2] = {status, static_cast<uint32_t>(message.size())};
  if (absl::Status s = WriteFull(fd, head, sizeof head); !s.ok()) return s;
  return WriteFull(fd, message.data(), message.size());
}

std::string PeerName(int fd) {
  sockaddr_storage addr{};
  socklen_t len = sizeof addr;
  if (getpeername(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) return "?";
  char host[NI_MAXHOST], port[NI_MAXSERV];
  if (getnameinfo(reinterpret_cast<sockaddr*>(&addr), len, host, sizeof host, port, sizeof port,
                  NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
    return "?";
  }
  return absl::StrCat(host, ":", port);
}

}  // namespace

std::string ModelFingerprint(const std::string& model_dir, size_t weight_bytes) {
  std::ifstream in(model_dir + "/config.json", std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  uint64_t h = 1469598103934665603ull;  // FNV-1a
  for (unsigned char ch : text.str()) h = (h ^ ch) * 1099511628211ull;
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(h));
  return absl::StrCat(hex, "-", weight_bytes);
}

// ---------------------------------------------------------------- receiver

absl::StatusOr<std::unique_ptr<KvReceiver>> KvReceiver::Start(const std::string& host, int port,
                                                              KvLayout layout, const PeerAuth* auth,
                                                              KvImportSink* sink,
                                                              KvTransferObserver observer) {
  auto r = std::unique_ptr<KvReceiver>(new KvReceiver());
  r->layout_ = std::move(layout);
  r->auth_ = auth;
  r->sink_ = sink;
  r->observer_ = std::move(observer);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  addrinfo* found = nullptr;
  const std::string port_text = std::to_string(port);
  if (getaddrinfo(host.empty() ? nullptr : host.c_str(), port_text.c_str(), &hints, &found) != 0 ||
      found == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("data channel: cannot resolve ", host));
  }
  const int fd = socket(found->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  const int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  const bool bound = bind(fd, found->ai_addr, found->ai_addrlen) == 0 && listen(fd, 64) == 0;
  freeaddrinfo(found);
  if (!bound) {
    close(fd);
    return absl::UnavailableError(absl::StrCat("data channel: cannot listen on ", host, ":", port,
                                               ": ", std::strerror(errno)));
  }
  sockaddr_storage addr{};
  socklen_t len = sizeof addr;
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  r->port_ = ntohs(addr.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&addr)->sin6_port
                                              : reinterpret_cast<sockaddr_in*>(&addr)->sin_port);
  r->listen_fd_ = fd;
  r->accept_thread_ = std::thread([raw = r.get()] { raw->AcceptLoop(); });
  return r;
}

KvReceiver::~KvReceiver() {
  stopping_.store(true);
  shutdown(listen_fd_, SHUT_RDWR);
  close(listen_fd_);
  accept_thread_.join();
  std::vector<Connection> connections;
  {
    absl::MutexLock lock(&mu_);
    for (int fd : open_fds_) shutdown(fd, SHUT_RDWR);
    connections.swap(connections_);
  }
  for (Connection& c : connections) c.thread.join();
}

void KvReceiver::AcceptLoop() {
  while (!stopping_.load()) {
    const int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) {
      if (stopping_.load()) return;
      continue;
    }
    TuneSocket(fd);
    connections_accepted_.fetch_add(1);
    std::vector<std::thread> finished;
    {
      absl::MutexLock lock(&mu_);
      for (auto it = connections_.begin(); it != connections_.end();) {
        if (it->finished->load()) {
          finished.push_back(std::move(it->thread));
          it = connections_.erase(it);
        } else {
          ++it;
        }
      }
      open_fds_.push_back(fd);
      auto done = std::make_shared<std::atomic<bool>>(false);
      connections_.push_back({std::thread([this, fd, done] {
                                Serve(fd);
                                done->store(true);
                              }),
                              done});
    }
    for (std::thread& t : finished) t.join();
  }
}

absl::Status KvReceiver::Expect(uint64_t transfer_id, int64_t request_id, int64_t tokens,
                                DoneCallback on_done, bool ready) {
  absl::MutexLock lock(&mu_);
  if (!expected_.emplace(transfer_id, Expected{request_id, tokens, std::move(on_done), ready, -1})
           .second) {
    return absl::AlreadyExistsError(
        absl::StrCat("KV transfer ", transfer_id, " is expected already"));
  }
  return absl::OkStatus();
}

void KvReceiver::Ready(uint64_t transfer_id, int64_t request_id) {
  absl::MutexLock lock(&mu_);
  auto it = expected_.find(transfer_id);
  if (it == expected_.end()) return;
  it->second.request_id = request_id;
  it->second.ready = true;
}

void KvReceiver::Forget(uint64_t transfer_id) {
  absl::MutexLock lock(&mu_);
  if (forgotten_.insert(transfer_id).second) forgotten_order_.push_back(transfer_id);
  if (forgotten_order_.size() > kForgottenKept) {
    forgotten_.erase(forgotten_order_.front());
    forgotten_order_.pop_front();
  }
  auto it = expected_.find(transfer_id);
  if (it == expected_.end()) return;
  if (it->second.fd >= 0) shutdown(it->second.fd, SHUT_RDWR);  // Unblocks its reader.
  expected_.erase(it);
}

void KvReceiver::Complete(uint64_t transfer_id, const absl::Status& status, std::string closing) {
  DoneCallback on_done;
  {
    absl::MutexLock lock(&mu_);
    auto it = expected_.find(transfer_id);
    if (it == expected_.end()) return;
    on_done = std::move(it->second.on_done);
    expected_.erase(it);
  }
  if (!status.ok() && observer_.on_failure) observer_.on_failure(std::string(status.message()));
  if (on_done) on_done(status, std::move(closing));
}

void KvReceiver::Serve(int fd) {
  const std::string peer = PeerName(fd);
  auto close_connection = [&] {
    absl::MutexLock lock(&mu_);
    open_fds_.erase(std::remove(open_fds_.begin(), open_fds_.end(), fd), open_fds_.end());
    close(fd);
  };
  // Handshake, once per connection.
  char magic[8];
  uint32_t hello_len = 0;
  if (!ReadFull(fd, magic, 8, kIdleTimeoutMs).ok() || std::memcmp(magic, kMagic, 8) != 0 ||
      !ReadFull(fd, &hello_len, 4, kIdleTimeoutMs).ok() || hello_len > kMaxHelloBytes) {
    if (observer_.on_failure) observer_.on_failure("bad_handshake");
    close_connection();
    return;
  }
  std::string hello_text(hello_len, '\0');
  if (!ReadFull(fd, hello_text.data(), hello_len, kIdleTimeoutMs).ok()) {
    close_connection();
    return;
  }
  nlohmann::json hello = nlohmann::json::parse(hello_text, nullptr, false);
  auto field = [&](const char* name) -> std::string {
    if (!hello.is_object() || !hello.contains(name)) return "";
    const auto& v = hello[name];
    return v.is_string() ? v.get<std::string>() : v.dump();
  };
  std::string refusal;
  if (!auth_->Allow(field("secret"), "KV data channel", peer)) {
    refusal = "refused: wrong or missing shared secret";
  } else if (field("fingerprint") != layout_.fingerprint) {
    refusal = absl::StrCat("refused: model mismatch (decode serves ", layout_.fingerprint,
                           ", prefill sends ", field("fingerprint"), ")");
  } else if (field("layers") != std::to_string(layout_.layers) ||
             field("width") != std::to_string(layout_.width) ||
             field("block_size") != std::to_string(layout_.block_size) ||
             field("dtype") != layout_.dtype) {
    refusal = absl::StrCat("refused: KV layout mismatch (decode: ", layout_.layers, " layers x ",
                           layout_.width, " ", layout_.dtype, ", block ", layout_.block_size,
                           "; prefill: ", field("layers"), " x ", field("width"), " ",
                           field("dtype"), ", block ", field("block_size"), ")");
  }
  if (!refusal.empty()) {
    if (observer_.on_failure) observer_.on_failure("refused");
    (void)SendReply(fd, kReplyRefused, refusal);
    close_connection();
    return;
  }
  if (!SendReply(fd, kReplyAccepted, "ok").ok()) {
    close_connection();
    return;
  }
  // Transfers, one after another, until the sender closes the connection
  // (or leaves it idle too long) or a transfer fails.
  while (ServeTransfer(fd)) {
  }
  close_connection();
}

bool KvReceiver::ServeTransfer(int fd) {
  SetWakeThreshold(fd, 1);  // Between transfers: any byte is news.
  FrameHeader h;
  if (!ReadFull(fd, &h, sizeof h, kIdleConnectionMs).ok()) return false;  // Closed or idle.
  if (h.layer != kStartLayer) {
    if (observer_.on_failure) observer_.on_failure("bad_frame");
    return false;
  }
  const uint64_t transfer_id = h.begin;
  {
    absl::MutexLock lock(&mu_);
    // A transfer the router started at the same time as the decode call may
    // be announced here a moment before that call registers it.
    // (One that ended before it came is refused at once.)
    auto known = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return stopping_.load() || expected_.count(transfer_id) > 0 ||
             forgotten_.count(transfer_id) > 0;
    };
    mu_.AwaitWithTimeout(absl::Condition(&known), absl::Milliseconds(kAnnounceWaitMs));
    auto it = expected_.find(transfer_id);
    if (it == expected_.end() || it->second.fd >= 0) {
      if (observer_.on_failure) observer_.on_failure("refused");
      // The connection stays usable: the sender sends nothing for this one.
      return SendReply(fd, kReplyUnknownTransfer, "refused: unknown or already served transfer")
          .ok();
    }
    it->second.fd = fd;
  }
  // Once claimed, the transfer ends exactly once, here.
  auto fail = [&](const absl::Status& status) {
    Complete(transfer_id, status);
    return false;
  };
  if (!SendReply(fd, kReplyAccepted, "ok").ok()) {
    return fail(absl::UnavailableError("the prefill worker left at the start of the transfer"));
  }
  int64_t request_id = 0, tokens = 0;
  bool in_time, gone;
  {
    absl::MutexLock lock(&mu_);
    // Until the blocks are reserved, the frames wait in the socket (and the
    // sender's queue): the engine has nowhere to put them yet.
    auto ready_or_gone = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      auto it = expected_.find(transfer_id);
      return stopping_.load() || it == expected_.end() || it->second.ready;
    };
    in_time =
        mu_.AwaitWithTimeout(absl::Condition(&ready_or_gone), absl::Milliseconds(kIdleTimeoutMs));
    auto it = expected_.find(transfer_id);
    gone = it == expected_.end() || stopping_.load();
    if (!gone) {
      request_id = it->second.request_id;
      tokens = it->second.tokens;
    }
  }
  if (gone) return fail(absl::CancelledError("the request ended before its KV arrived"));
  if (!in_time) {
    return fail(absl::ResourceExhaustedError(
        absl::StrCat("no KV blocks were free for the transfer within ", kIdleTimeoutMs, " ms")));
  }
  // Frames.
  const auto start = std::chrono::steady_clock::now();
  std::vector<int64_t> rows_per_layer(layout_.layers, 0);
  std::vector<uint8_t> rows;
  uint64_t bytes = 0;
  // The receiver sleeps until what is surely still to come is in (or
  // kMaxWakeBytes of it): the frames' least total (one per layer; more
  // frames only add headers) and the end marker's header. Never more: on a
  // kept-open connection nothing else would wake it.
  const uint64_t frame_bytes =
      static_cast<uint64_t>(layout_.layers) * (sizeof h + tokens * layout_.row_bytes());
  uint64_t consumed = 0;
  auto expect_rest = [&] {
    SetWakeThreshold(fd, (consumed < frame_bytes ? frame_bytes - consumed : 0) + sizeof h);
  };
  while (true) {
    expect_rest();
    if (absl::Status s = ReadFull(fd, &h, sizeof h, kIdleTimeoutMs); !s.ok()) {
      return fail(absl::UnavailableError(absl::StrCat("KV transfer broke: ", s.message())));
    }
    consumed += sizeof h;
    if (h.layer == kDoneLayer) {
      SetWakeThreshold(fd, 1);  // The closing message may be shorter than any bound.
      std::string closing(std::min<size_t>(h.closing_bytes, KvSender::kMaxClosingBytes), '\0');
      if (h.closing_bytes > KvSender::kMaxClosingBytes ||
          !ReadFull(fd, closing.data(), closing.size(), kIdleTimeoutMs).ok()) {
        return fail(absl::DataLossError("KV transfer: bad closing message"));
      }
      for (int layer = 0; layer < layout_.layers; ++layer) {
        if (rows_per_layer[layer] != tokens || static_cast<int64_t>(h.end) != tokens) {
          return fail(
              absl::DataLossError(absl::StrCat("KV transfer incomplete: layer ", layer, " has ",
                                               rows_per_layer[layer], " of ", tokens, " rows")));
        }
      }
      if (observer_.on_success) {
        observer_.on_success(
            bytes, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
      }
      Complete(transfer_id, absl::OkStatus(), std::move(closing));
      return true;
    }
    if (h.layer >= static_cast<uint32_t>(layout_.layers) || h.begin >= h.end ||
        static_cast<int64_t>(h.end) > tokens) {
      return fail(absl::DataLossError("KV frame outside the transfer"));
    }
    const size_t count = static_cast<size_t>((h.end - h.begin) * layout_.row_bytes());
    rows.resize(count);
    expect_rest();
    if (absl::Status s = ReadFull(fd, rows.data(), count, kIdleTimeoutMs); !s.ok()) {
      return fail(absl::UnavailableError(absl::StrCat("KV transfer broke: ", s.message())));
    }
    consumed += count;
    bytes += sizeof h + count;
    if (absl::Status s =
            sink_->ImportKv(request_id, static_cast<int>(h.layer), static_cast<int64_t>(h.begin),
                            static_cast<int64_t>(h.end), rows.data(), rows.size());
        !s.ok()) {
      return fail(s);
    }
    rows_per_layer[h.layer] += static_cast<int64_t>(h.end - h.begin);
  }
}

// ------------------------------------------------------------------ sender

KvConnectionPool::~KvConnectionPool() {
  absl::MutexLock lock(&mu_);
  for (auto& [address, fds] : idle_) {
    for (int fd : fds) close(fd);
  }
}

int KvConnectionPool::Take(const std::string& address) {
  absl::MutexLock lock(&mu_);
  std::vector<int>& fds = idle_[address];
  while (!fds.empty()) {
    const int fd = fds.back();
    fds.pop_back();
    // An idle connection has nothing to read: readable means the peer
    // closed it (or broke the protocol).
    pollfd p{fd, POLLIN | POLLRDHUP, 0};
    if (poll(&p, 1, 0) == 0) return fd;
    close(fd);
  }
  return -1;
}

void KvConnectionPool::Put(const std::string& address, int fd) {
  absl::MutexLock lock(&mu_);
  std::vector<int>& fds = idle_[address];
  if (fds.size() >= kMaxIdlePerAddress) {
    close(fd);
    return;
  }
  fds.push_back(fd);
}

KvSender::KvSender(std::string address, uint64_t transfer_id, KvLayout layout, std::string secret,
                   std::function<void(absl::Status)> on_failure,
                   std::shared_ptr<KvConnectionPool> pool)
    : address_(std::move(address)),
      transfer_id_(transfer_id),
      layout_(std::move(layout)),
      secret_(std::move(secret)),
      pool_(std::move(pool)),
      on_failure_(std::move(on_failure)) {
  thread_ = std::thread([this] { Run(); });
}

KvSender::~KvSender() {
  Abort();
  // The last owner may let go from a callback on the sender thread itself.
  if (thread_.get_id() == std::this_thread::get_id()) {
    thread_.detach();
  } else {
    thread_.join();
  }
}

void KvSender::Send(int layer, int64_t begin, int64_t end, std::vector<uint8_t> rows) {
  Enqueue({layer, begin, end, std::move(rows), {}});
}

void KvSender::Finish(int64_t tokens, std::string closing,
                      std::function<void(absl::Status)> on_done) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    on_done_ = std::move(on_done);
    finishing_ = true;
  }
  closing.resize(std::min(closing.size(), kMaxClosingBytes));
  Enqueue({static_cast<int>(kDoneLayer), 0, tokens, {}, std::move(closing)});
}

void KvSender::Enqueue(Frame frame) {
  std::unique_lock<std::mutex> lock(mu_);
  if (aborted_ || failed_) return;
  // A small frame with nothing ahead of it leaves from this thread: waking
  // the sender thread first costs more than the copy on a busy small
  // machine, and the end marker is on the first token's path.
  // Never blocking: a decode worker that is not reading (its blocks not
  // reserved yet, or hung) must not stall this worker's engine.
  if (started_ && !writing_ && queue_.empty() && frame.rows.size() <= kInlineFrameBytes) {
    writing_ = true;
    lock.unlock();
    const absl::Status s = WriteFrame(frame, /*nonblocking=*/true);
    lock.lock();
    writing_ = false;
    if (!s.ok()) {
      inline_error_ = s;
    } else if (frame.sent < FrameBytes(frame)) {
      queue_.push_front(std::move(frame));  // The sender thread writes the rest.
    } else if (static_cast<uint32_t>(frame.layer) == kDoneLayer) {
      delivered_inline_ = true;
    }
    cv_.notify_one();
    return;
  }
  queue_.push_back(std::move(frame));
  cv_.notify_one();
}

size_t KvSender::FrameBytes(const Frame& frame) {
  return sizeof(FrameHeader) + frame.rows.size() + frame.closing.size();
}

absl::Status KvSender::WriteFrame(Frame& frame, bool nonblocking) {
  FrameHeader h{static_cast<uint32_t>(frame.layer), static_cast<uint32_t>(frame.closing.size()),
                static_cast<uint64_t>(frame.begin), static_cast<uint64_t>(frame.end)};
  const iovec whole[3] = {{&h, sizeof h},
                          {frame.rows.data(), frame.rows.size()},
                          {frame.closing.data(), frame.closing.size()}};
  const size_t total = FrameBytes(frame);
  while (frame.sent < total) {
    // The parts not yet written, the first one from where it stopped.
    iovec left[3];
    int count = 0;
    size_t skip = frame.sent;
    for (const iovec& part : whole) {
      if (skip >= part.iov_len) {
        skip -= part.iov_len;
        continue;
      }
      left[count++] = {static_cast<uint8_t*>(part.iov_base) + skip, part.iov_len - skip};
      skip = 0;
    }
    msghdr message{};
    message.msg_iov = left;
    message.msg_iovlen = count;
    const ssize_t put = sendmsg(fd_, &message, MSG_NOSIGNAL | (nonblocking ? MSG_DONTWAIT : 0));
    if (put < 0) {
      if (errno == EINTR) continue;
      if (nonblocking && (errno == EAGAIN || errno == EWOULDBLOCK)) return absl::OkStatus();
      return absl::UnavailableError(
          absl::StrCat("decode worker ", address_, " closed the data channel"));
    }
    frame.sent += static_cast<size_t>(put);
  }
  bytes_sent_.fetch_add(sizeof h + frame.rows.size());
  return absl::OkStatus();
}

void KvSender::Abort() {
  std::lock_guard<std::mutex> lock(mu_);
  aborted_ = true;
  if (fd_ >= 0) shutdown(fd_, SHUT_RDWR);
  cv_.notify_one();
}

absl::Status KvSender::Connect() {
  const size_t colon = address_.rfind(':');
  if (colon == std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat("bad data address ", address_));
  }
  std::string host = address_.substr(0, colon);
  if (host.size() > 2 && host.front() == '[') host = host.substr(1, host.size() - 2);
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  if (getaddrinfo(host.c_str(), address_.substr(colon + 1).c_str(), &hints, &found) != 0) {
    return absl::UnavailableError(absl::StrCat("cannot resolve ", address_));
  }
  const int fd = socket(found->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  const bool connected = connect(fd, found->ai_addr, found->ai_addrlen) == 0;
  freeaddrinfo(found);
  if (!connected) {
    close(fd);
    return absl::UnavailableError(
        absl::StrCat("cannot connect to the data channel ", address_, ": ", std::strerror(errno)));
  }
  TuneSocket(fd);
  if (absl::Status s = Adopt(fd); !s.ok()) return s;
  nlohmann::json hello = {
      {"secret", secret_},      {"fingerprint", layout_.fingerprint}, {"layers", layout_.layers},
      {"width", layout_.width}, {"block_size", layout_.block_size},   {"dtype", layout_.dtype}};
  const std::string text = hello.dump();
  const uint32_t len = static_cast<uint32_t>(text.size());
  if (absl::Status s = WriteFull(fd, kMagic, 8); !s.ok()) return s;
  if (absl::Status s = WriteFull(fd, &len, 4); !s.ok()) return s;
  if (absl::Status s = WriteFull(fd, text.data(), text.size()); !s.ok()) return s;
  return AwaitReply();
}

absl::Status KvSender::AwaitReply() {
  uint32_t head[2];
  if (absl::Status s = ReadFull(fd_, head, sizeof head, KvReceiver::kIdleTimeoutMs); !s.ok()) {
    return s;
  }
  std::string message(std::min<uint32_t>(head[1], kMaxHelloBytes), '\0');
  if (absl::Status s = ReadFull(fd_, message.data(), message.size(), KvReceiver::kIdleTimeoutMs);
      !s.ok()) {
    return s;
  }
  if (head[0] == kReplyUnknownTransfer) {
    // The decode call that names it did not come in time, or ended: worth
    // retrying, unlike a refused handshake.
    return absl::AbortedError(absl::StrCat("decode worker ", address_, ": ", message));
  }
  if (head[0] != kReplyAccepted) {
    return absl::FailedPreconditionError(absl::StrCat("decode worker ", address_, ": ", message));
  }
  return absl::OkStatus();
}

absl::Status KvSender::Adopt(int fd) {
  std::lock_guard<std::mutex> lock(mu_);
  fd_ = fd;
  if (aborted_) return absl::CancelledError("aborted");
  return absl::OkStatus();
}

absl::Status KvSender::StartTransfer() {
  const FrameHeader start{kStartLayer, 0, transfer_id_, 0};
  if (absl::Status s = WriteFull(fd_, &start, sizeof start); !s.ok()) return s;
  return AwaitReply();
}

std::function<void(absl::Status)> KvSender::TakeNotifier(bool success) {
  std::lock_guard<std::mutex> lock(mu_);
  if (failed_) return nullptr;
  failed_ = true;  // Report once.
  if (success) return on_done_;
  if (aborted_) return nullptr;  // The owner stopped us: nothing to report.
  return finishing_ && on_done_ ? on_done_ : on_failure_;
}

void KvSender::Run() {
  std::function<void(absl::Status)> notify;
  absl::Status result;
  const int pooled = pool_ != nullptr ? pool_->Take(address_) : -1;
  if (pooled >= 0) {
    result = Adopt(pooled);
    if (result.ok()) result = StartTransfer();
  }
  // A pooled connection the receiver closed a moment ago (its idle timeout)
  // fails at the start: nothing was sent, so a fresh one takes over. (A
  // refused transfer is the receiver's answer, not a stale connection.)
  if (pooled < 0 || (!result.ok() && !absl::IsFailedPrecondition(result) &&
                     !absl::IsCancelled(result) && !absl::IsAborted(result))) {
    if (pooled >= 0) {
      std::lock_guard<std::mutex> lock(mu_);
      close(fd_);
      fd_ = -1;
    }
    result = Connect();
    if (result.ok()) result = StartTransfer();
  }
  bool delivered = false;
  if (!result.ok()) {
    notify = TakeNotifier(false);
  } else {
    {
      std::lock_guard<std::mutex> lock(mu_);
      started_ = true;
    }
    while (true) {
      Frame frame;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] {
          return aborted_ || !inline_error_.ok() || delivered_inline_ ||
                 (!writing_ && !queue_.empty());
        });
        if (aborted_) break;
        if (!inline_error_.ok() || delivered_inline_) {
          result = inline_error_;
          delivered = delivered_inline_;
          lock.unlock();
          notify = TakeNotifier(delivered);
          break;
        }
        frame = std::move(queue_.front());
        queue_.pop_front();
        writing_ = true;
      }
      result = WriteFrame(frame, /*nonblocking=*/false);
      {
        std::lock_guard<std::mutex> lock(mu_);
        writing_ = false;
      }
      if (!result.ok()) {
        notify = TakeNotifier(false);
        break;
      }
      if (static_cast<uint32_t>(frame.layer) == kDoneLayer) {
        delivered = true;
        notify = TakeNotifier(true);
        break;
      }
    }
  }
  {
    std::unique_lock<std::mutex> lock(mu_);
    // An inline write still under way must end before the descriptor closes
    // (its number could be reused at once).
    cv_.wait(lock, [&] { return !writing_; });
    if (fd_ >= 0) {
      // Only a connection left between transfers may serve another.
      if (delivered && !aborted_ && pool_ != nullptr) {
        pool_->Put(address_, fd_);
      } else {
        close(fd_);
      }
    }
    fd_ = -1;
  }
  // Last: the callback may destroy this sender.
  if (notify) notify(result);
}

}  // namespace baton
