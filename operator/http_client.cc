#include "operator/http_client.h"

#include <curl/curl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <mutex>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace baton::op {
namespace {

constexpr size_t kMaxIdleHandles = 8;

struct Transfer {
  CURL* curl = nullptr;
  HttpClientResponse* response = nullptr;
  const std::function<bool(const std::string&)>* on_line = nullptr;
  CancelToken* cancel = nullptr;
  std::string partial;
  bool decided = false;  // Whether the status code chose lines or body.
  bool lines = false;
  bool stopped = false;  // on_line asked to stop.
};

bool DeliverLines(Transfer* t, bool flush) {
  size_t start = 0;
  while (true) {
    const size_t nl = t->partial.find('\n', start);
    if (nl == std::string::npos) break;
    std::string line = t->partial.substr(start, nl - start);
    start = nl + 1;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (!line.empty() && !(*t->on_line)(line)) {
      t->stopped = true;
      return false;
    }
  }
  t->partial.erase(0, start);
  if (flush && !t->partial.empty()) {
    std::string line = std::move(t->partial);
    t->partial.clear();
    if (!(*t->on_line)(line)) t->stopped = true;
  }
  return !t->stopped;
}

size_t OnWrite(char* data, size_t size, size_t count, void* user) {
  auto* t = static_cast<Transfer*>(user);
  const size_t n = size * count;
  if (t->cancel != nullptr && t->cancel->cancelled()) return 0;
  if (t->on_line != nullptr && !t->decided) {
    long code = 0;
    curl_easy_getinfo(t->curl, CURLINFO_RESPONSE_CODE, &code);
    t->lines = code >= 200 && code < 300;
    t->decided = true;
  }
  if (!t->lines) {
    t->response->body.append(data, n);
    return n;
  }
  t->partial.append(data, n);
  return DeliverLines(t, /*flush=*/false) ? n : 0;
}

size_t OnHeader(char* data, size_t size, size_t count, void* user) {
  auto* t = static_cast<Transfer*>(user);
  const size_t n = size * count;
  const std::string line(data, n);
  const size_t colon = line.find(':');
  if (colon != std::string::npos) {
    t->response->headers[absl::AsciiStrToLower(line.substr(0, colon))] =
        std::string(absl::StripAsciiWhitespace(line.substr(colon + 1)));
  }
  return n;
}

curl_socket_t OnOpenSocket(void* user, curlsocktype, curl_sockaddr* address) {
  return static_cast<CancelToken*>(user)->OpenSocket(address->family, address->socktype,
                                                     address->protocol);
}

int OnCloseSocket(void* user, curl_socket_t fd) {
  static_cast<CancelToken*>(user)->CloseSocket(fd);
  return 0;
}

void SetBlob(CURL* curl, CURLoption option, const std::string& pem) {
  curl_blob blob{const_cast<char*>(pem.data()), pem.size(), CURL_BLOB_COPY};
  curl_easy_setopt(curl, option, &blob);
}

}  // namespace

void CancelToken::Cancel() {
  absl::MutexLock lock(&mu_);
  cancelled_ = true;
  if (fd_ >= 0) shutdown(fd_, SHUT_RDWR);
}

bool CancelToken::cancelled() const {
  absl::MutexLock lock(&mu_);
  return cancelled_;
}

int CancelToken::OpenSocket(int domain, int type, int protocol) {
  absl::MutexLock lock(&mu_);
  if (cancelled_) return CURL_SOCKET_BAD;
  const int fd = socket(domain, type | SOCK_CLOEXEC, protocol);
  if (fd >= 0) fd_ = fd;
  return fd;
}

void CancelToken::CloseSocket(int fd) {
  absl::MutexLock lock(&mu_);
  if (fd_ == fd) fd_ = -1;
  close(fd);
}

HttpClient::HttpClient(TlsConfig tls) : tls_(std::move(tls)) {
  // curl_global_init is not thread-safe; run it once per process before the
  // first handle.
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

HttpClient::~HttpClient() {
  absl::MutexLock lock(&mu_);
  for (void* h : idle_) curl_easy_cleanup(static_cast<CURL*>(h));
}

void* HttpClient::Acquire() const {
  {
    absl::MutexLock lock(&mu_);
    if (!idle_.empty()) {
      void* h = idle_.back();
      idle_.pop_back();
      curl_easy_reset(static_cast<CURL*>(h));
      return h;
    }
  }
  return curl_easy_init();
}

void HttpClient::Release(void* handle) const {
  absl::MutexLock lock(&mu_);
  if (idle_.size() < kMaxIdleHandles) {
    idle_.push_back(handle);
  } else {
    curl_easy_cleanup(static_cast<CURL*>(handle));
  }
}

absl::StatusOr<HttpClientResponse> HttpClient::Perform(
    void* handle, const HttpClientRequest& request,
    const std::function<bool(const std::string&)>* on_line, CancelToken* cancel) const {
  CURL* curl = static_cast<CURL*>(handle);
  HttpClientResponse response;
  Transfer t;
  t.curl = curl;
  t.response = &response;
  t.on_line = on_line;
  t.cancel = cancel;

  curl_easy_setopt(curl, CURLOPT_URL, request.url.c_str());
  curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS,
                   static_cast<long>(absl::ToInt64Milliseconds(request.timeout)));
  curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS,
                   static_cast<long>(absl::ToInt64Milliseconds(request.connect_timeout)));
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, OnWrite);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &t);
  curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, OnHeader);
  curl_easy_setopt(curl, CURLOPT_HEADERDATA, &t);
  if (request.method == "GET") {
    curl_easy_setopt(curl, CURLOPT_HTTPGET, 1L);
  } else {
    curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, request.method.c_str());
    if (!request.body.empty() || request.method != "DELETE") {
      curl_easy_setopt(curl, CURLOPT_POSTFIELDS, request.body.data());
      curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE,
                       static_cast<curl_off_t>(request.body.size()));
    }
  }
  curl_slist* headers = nullptr;
  for (const std::string& h : request.headers) headers = curl_slist_append(headers, h.c_str());
  headers = curl_slist_append(headers, "Expect:");
  curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);

  if (!tls_.ca_file.empty()) curl_easy_setopt(curl, CURLOPT_CAINFO, tls_.ca_file.c_str());
  if (!tls_.ca_pem.empty()) SetBlob(curl, CURLOPT_CAINFO_BLOB, tls_.ca_pem);
  if (!tls_.client_cert_file.empty()) {
    curl_easy_setopt(curl, CURLOPT_SSLCERT, tls_.client_cert_file.c_str());
  }
  if (!tls_.client_cert_pem.empty()) SetBlob(curl, CURLOPT_SSLCERT_BLOB, tls_.client_cert_pem);
  if (!tls_.client_key_file.empty()) {
    curl_easy_setopt(curl, CURLOPT_SSLKEY, tls_.client_key_file.c_str());
  }
  if (!tls_.client_key_pem.empty()) SetBlob(curl, CURLOPT_SSLKEY_BLOB, tls_.client_key_pem);
  if (tls_.insecure_skip_verify) {
    curl_easy_setopt(curl, CURLOPT_SSL_VERIFYPEER, 0L);
    curl_easy_setopt(curl, CURLOPT_SSL_VERIFYHOST, 0L);
  }

  if (cancel != nullptr) {
    // The token outlives the handle (Stream() cleans it up before
    // returning), so it can serve as the callbacks' data.
    curl_easy_setopt(curl, CURLOPT_OPENSOCKETFUNCTION, OnOpenSocket);
    curl_easy_setopt(curl, CURLOPT_OPENSOCKETDATA, cancel);
    curl_easy_setopt(curl, CURLOPT_CLOSESOCKETFUNCTION, OnCloseSocket);
    curl_easy_setopt(curl, CURLOPT_CLOSESOCKETDATA, cancel);
  }

  const CURLcode rc = curl_easy_perform(curl);
  curl_slist_free_all(headers);
  curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &response.status);
  if (cancel != nullptr && cancel->cancelled()) return absl::CancelledError("request cancelled");
  if (rc == CURLE_WRITE_ERROR && t.stopped) return response;
  if (rc == CURLE_OK && t.lines) DeliverLines(&t, /*flush=*/true);
  if (rc == CURLE_OPERATION_TIMEDOUT) {
    return absl::DeadlineExceededError(
        absl::StrCat(request.method, " ", request.url, ": ", curl_easy_strerror(rc)));
  }
  if (rc != CURLE_OK) {
    return absl::UnavailableError(
        absl::StrCat(request.method, " ", request.url, ": ", curl_easy_strerror(rc)));
  }
  return response;
}

absl::StatusOr<HttpClientResponse> HttpClient::Do(const HttpClientRequest& request) const {
  void* handle = Acquire();
  if (handle == nullptr) return absl::InternalError("curl_easy_init failed");
  absl::StatusOr<HttpClientResponse> result = Perform(handle, request, nullptr, nullptr);
  Release(handle);
  return result;
}

absl::StatusOr<HttpClientResponse> HttpClient::Stream(
    const HttpClientRequest& request, const std::function<bool(const std::string&)>& on_line,
    CancelToken* cancel) const {
  // A handle of its own, never pooled: its socket callbacks belong to this
  // call, and a watch holds its connection for minutes anyway.
  CURL* curl = curl_easy_init();
  if (curl == nullptr) return absl::InternalError("curl_easy_init failed");
  absl::StatusOr<HttpClientResponse> result = Perform(curl, request, &on_line, cancel);
  curl_easy_cleanup(curl);
  return result;
}

}  // namespace baton::op
