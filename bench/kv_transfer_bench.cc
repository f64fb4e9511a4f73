// baton-kv-transfer-bench: the KV data channel's throughput on loopback
// against a raw TCP socket moving the same bytes in the same write sizes,
// measured in the same run.
//
//   baton-kv-transfer-bench [--tokens 2048] [--layers 61] [--width 576] [--reps 5]
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <future>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/synchronization/notification.h"
#include "service/kv_transport.h"

namespace baton::bench {
namespace {

// Accepts rows and throws them away (after touching them, as a copy into
// the cache would).
class DiscardSink : public KvImportSink {
 public:
  absl::Status ImportKv(int64_t, int, int64_t begin, int64_t end, const void* rows,
                        size_t) override {
    float first;
    std::memcpy(&first, rows, sizeof first);
    checksum_ += first + static_cast<float>(end - begin);
    return absl::OkStatus();
  }
  float checksum_ = 0;
};

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

double KvChannel(int tokens, int layers, int width) {
  KvLayout layout{"bench", layers, width, 16, "f32"};
  PeerAuth auth("secret");
  DiscardSink sink;
  auto receiver = KvReceiver::Start("127.0.0.1", 0, layout, &auth, &sink, {});
  if (!receiver.ok()) return 0;
  const uint64_t transfer = 42;
  std::promise<absl::Status> done;
  (void)(*receiver)->Expect(transfer, 1, tokens,
                            [&](absl::Status s, std::string) { done.set_value(s); });
  // One buffer per layer, made before the clock starts: the engine hands
  // the sender each layer's rows by move.
  std::vector<std::vector<uint8_t>> rows(
      layers, std::vector<uint8_t>(static_cast<size_t>(tokens) * width * sizeof(float), 0x3f));
  const double bytes = static_cast<double>(tokens) * width * sizeof(float) * layers;
  const double start = Now();
  std::promise<absl::Status> sent;
  {
    KvSender sender("127.0.0.1:" + std::to_string((*receiver)->port()), transfer, layout, "secret",
                    [&](absl::Status s) { sent.set_value(s); });
    for (int layer = 0; layer < layers; ++layer)
      sender.Send(layer, 0, tokens, std::move(rows[layer]));
    sender.Finish(tokens, "", [&](absl::Status s) { sent.set_value(s); });
    if (!sent.get_future().get().ok()) return 0;
    if (!done.get_future().get().ok()) return 0;
  }
  return bytes / (Now() - start);
}

// The same bytes in the same write sizes over a plain socket.
double RawTcp(int tokens, int layers, int width) {
  const int listener = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  listen(listener, 1);
  socklen_t len = sizeof addr;
  getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len);
  const size_t layer_bytes = static_cast<size_t>(tokens) * width * sizeof(float);
  const size_t total = layer_bytes * layers;
  std::thread reader([&] {
    const int fd = accept(listener, nullptr, nullptr);
    std::vector<char> buffer(layer_bytes);
    size_t got = 0;
    while (got < total) {
      const ssize_t n = read(fd, buffer.data(), std::min(buffer.size(), total - got));
      if (n <= 0) break;
      got += static_cast<size_t>(n);
    }
    close(fd);
  });
  // One buffer per layer, as the channel gets: re-sending one cache-warm
  // buffer 61 times would flatter the baseline.
  std::vector<std::vector<float>> rows(
      layers, std::vector<float>(static_cast<size_t>(tokens) * width, 0.5f));
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  const double start = Now();
  connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  for (int layer = 0; layer < layers; ++layer) {
    size_t off = 0;
    const char* p = reinterpret_cast<const char*>(rows[layer].data());
    while (off < layer_bytes) {
      const ssize_t n = write(fd, p + off, layer_bytes - off);
      if (n <= 0) break;
      off += static_cast<size_t>(n);
    }
  }
  shutdown(fd, SHUT_WR);
  reader.join();
  const double seconds = Now() - start;
  close(fd);
  close(listener);
  return static_cast<double>(total) / seconds;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

int Main(int argc, char** argv) {
  int tokens = 2048, layers = 61, width = 576, reps = 5;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    int* target = flag == "--tokens"   ? &tokens
                  : flag == "--layers" ? &layers
                  : flag == "--width"  ? &width
                  : flag == "--reps"   ? &reps
                                       : nullptr;
    if (target == nullptr || !absl::SimpleAtoi(argv[i + 1], target)) {
      std::fprintf(
          stderr,
          "usage: baton-kv-transfer-bench [--tokens N] [--layers N] [--width N] [--reps N]\n");
      return 2;
    }
  }
  std::vector<double> kv, raw;
  for (int r = 0; r < reps; ++r) {  // Interleaved, so both see the same machine.
    raw.push_back(RawTcp(tokens, layers, width));
    kv.push_back(KvChannel(tokens, layers, width));
  }
  const double mb = static_cast<double>(tokens) * width * 4 * layers / 1e6;
  std::printf("%d tokens x %d layers x %d f32 (%.0f MB per transfer), median of %d:\n", tokens,
              layers, width, mb, reps);
  std::printf("  raw TCP       %.2f GB/s\n", Median(raw) / 1e9);
  std::printf("  KV channel    %.2f GB/s  (%.2f of raw TCP)\n", Median(kv) / 1e9,
              Median(kv) / Median(raw));
  return 0;
}

}  // namespace
}  // namespace baton::bench

int main(int argc, char** argv) { return baton::bench::Main(argc, argv); }
