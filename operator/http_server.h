// A small HTTP/1.1 server: one thread per connection, one request per
// connection (Connection: close), complete or chunked streaming responses.
// It serves the operator's /metrics, /healthz and /readyz, and the fake API
// server of the tests (whose watch streams need chunked responses that run
// until the client leaves). prometheus::Exposer is not used because it
// cannot serve other paths and its destructor blocks for up to 2 s.
//
// Thread-safety: Start/Stop/port may be called from any thread; the handler
// runs concurrently on one thread per connection.
#ifndef BATON_OPERATOR_HTTP_SERVER_H_
#define BATON_OPERATOR_HTTP_SERVER_H_

#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace baton::op {

struct HttpRequest {
  std::string method;
  std::string path;                            // Percent-decoded, without the query.
  std::map<std::string, std::string> query;    // Percent-decoded.
  std::map<std::string, std::string> headers;  // Names in lower case.
  std::string body;
};

// Writes the one response of a connection: either Send(), or StartStream()
// followed by WriteChunk() calls.
class HttpResponseWriter {
 public:
  explicit HttpResponseWriter(int fd) : fd_(fd) {}
  HttpResponseWriter(const HttpResponseWriter&) = delete;
  HttpResponseWriter& operator=(const HttpResponseWriter&) = delete;

  void Send(int status, const std::string& content_type, const std::string& body,
            const std::map<std::string, std::string>& extra_headers = {});
  // Returns false when the peer has gone.
  bool StartStream(int status, const std::string& content_type);
  bool WriteChunk(const std::string& data);
  // True when the client closed its end (a streaming handler polls this).
  bool PeerClosed() const;
  bool responded() const { return responded_; }

 private:
  friend class HttpServer;
  bool WriteAll(const std::string& data);
  void Finish();

  int fd_;
  bool responded_ = false;
  bool streaming_ = false;
  bool broken_ = false;
};

using HttpHandler = std::function<void(const HttpRequest&, HttpResponseWriter&)>;

class HttpServer {
 public:
  // Listens on host:port (port 0: the OS chooses).
  static absl::StatusOr<std::unique_ptr<HttpServer>> Start(const std::string& host, int port,
                                                           HttpHandler handler);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  int port() const { return port_; }
  // Stops accepting, shuts every open connection down (handlers blocked in
  // a write return) and waits for the handlers to return. Idempotent.
  void Stop();

 private:
  HttpServer(int listen_fd, int wake_read, int wake_write, int port, HttpHandler handler);
  void AcceptLoop();
  void Serve(int fd);

  const int listen_fd_;
  const int wake_read_;
  const int wake_write_;
  const int port_;
  const HttpHandler handler_;
  std::thread acceptor_;

  absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::set<int> connections_ ABSL_GUARDED_BY(mu_);  // Open connection sockets.
  int active_ ABSL_GUARDED_BY(mu_) = 0;
};

// Percent-decodes `s` ('+' stays '+', as Kubernetes clients never send it
// for a space).
std::string PercentDecode(const std::string& s);
// Percent-encodes everything but RFC 3986 unreserved characters.
std::string PercentEncode(const std::string& s);

}  // namespace baton::op

#endif  // BATON_OPERATOR_HTTP_SERVER_H_
