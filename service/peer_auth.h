// Who may use the internal APIs and the KV data channel: peers presenting
// the deployment's shared secret. The one place that decides, so that mTLS
// can replace it later.
//
// Thread-safety: immutable after construction; Allow() is thread-safe.
#ifndef BATON_SERVICE_PEER_AUTH_H_
#define BATON_SERVICE_PEER_AUTH_H_

#include <atomic>
#include <string>

#include "absl/status/statusor.h"

namespace baton {

class PeerAuth {
 public:
  // The gRPC metadata key that carries the secret.
  static constexpr const char* kMetadataKey = "x-baton-secret";

  // An empty secret admits every peer (development only; logged at start).
  explicit PeerAuth(std::string secret) : secret_(std::move(secret)) {}
  // --secret wins over --secret-file; a file's trailing newline is dropped.
  static absl::StatusOr<std::string> ReadSecret(const std::string& secret,
                                                const std::string& secret_file);

  // Compares in constant time; counts and logs refusals with `what` (the
  // method or channel) and `peer`.
  bool Allow(const std::string& presented, const std::string& what, const std::string& peer) const;
  const std::string& secret() const { return secret_; }
  bool enabled() const { return !secret_.empty(); }
  int64_t refused() const { return refused_.load(); }

 private:
  std::string secret_;
  mutable std::atomic<int64_t> refused_{0};
};

}  // namespace baton

#endif  // BATON_SERVICE_PEER_AUTH_H_
