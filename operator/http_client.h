// HTTP(S) requests over libcurl: complete requests for the Kubernetes API,
// Prometheus and pod /metrics, and line-by-line streaming for watches.
// Transport failures become UNAVAILABLE; HTTP error statuses are returned in
// the response for the caller to interpret.
//
// Thread-safety: HttpClient is safe to use from many threads; it keeps a pool
// of curl handles so that connections (and TLS sessions) are reused. A
// CancelToken may be cancelled from any thread.
#ifndef BATON_OPERATOR_HTTP_CLIENT_H_
#define BATON_OPERATOR_HTTP_CLIENT_H_

#include <functional>
#include <map>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace baton::op {

struct TlsConfig {
  // Trust: a CA bundle file or PEM text; neither means the system store.
  std::string ca_file;
  std::string ca_pem;
  // Client certificate authentication (kubeconfig client-certificate).
  std::string client_cert_file;
  std::string client_cert_pem;
  std::string client_key_file;
  std::string client_key_pem;
  bool insecure_skip_verify = false;
};

struct HttpClientRequest {
  std::string method = "GET";
  std::string url;
  std::vector<std::string> headers;  // "Name: value".
  std::string body;
  absl::Duration timeout = absl::Seconds(30);
  absl::Duration connect_timeout = absl::Seconds(5);
};

struct HttpClientResponse {
  long status = 0;
  std::string body;
  std::map<std::string, std::string> headers;  // Names in lower case.
};

// Aborts a Stream() from another thread at once: it shuts the stream's
// socket down rather than waiting for curl's next progress callback.
class CancelToken {
 public:
  void Cancel();
  bool cancelled() const;

  // For the curl socket callbacks only: the socket is recorded so that
  // Cancel() can shut it down.
  int OpenSocket(int domain, int type, int protocol);
  void CloseSocket(int fd);

 private:
  mutable absl::Mutex mu_;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  int fd_ ABSL_GUARDED_BY(mu_) = -1;
};

class HttpClient {
 public:
  explicit HttpClient(TlsConfig tls = {});
  ~HttpClient();
  HttpClient(const HttpClient&) = delete;
  HttpClient& operator=(const HttpClient&) = delete;

  absl::StatusOr<HttpClientResponse> Do(const HttpClientRequest& request) const;

  // Streams a 2xx response body to `on_line` one line at a time (without the
  // newline) until the body ends, `on_line` returns false or `cancel` fires.
  // A non-2xx response is returned whole, with no call to `on_line`.
  // `request.timeout` bounds the whole stream.
  absl::StatusOr<HttpClientResponse> Stream(const HttpClientRequest& request,
                                            const std::function<bool(const std::string&)>& on_line,
                                            CancelToken* cancel) const;

 private:
  void* Acquire() const;
  void Release(void* handle) const;
  absl::StatusOr<HttpClientResponse> Perform(void* handle, const HttpClientRequest& request,
                                             const std::function<bool(const std::string&)>* on_line,
                                             CancelToken* cancel) const;

  const TlsConfig tls_;
  mutable absl::Mutex mu_;
  mutable std::vector<void*> idle_ ABSL_GUARDED_BY(mu_);  // CURL* handles.
};

}  // namespace baton::op

#endif  // BATON_OPERATOR_HTTP_CLIENT_H_
