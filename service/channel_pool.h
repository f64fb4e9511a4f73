// gRPC channels to peer workers, one per address, with keepalives tuned to
// notice a dead or hung peer within about two seconds.
//
// Thread-safety: thread-safe.
#ifndef BATON_SERVICE_CHANNEL_POOL_H_
#define BATON_SERVICE_CHANNEL_POOL_H_

#include <map>
#include <memory>
#include <string>

#include "absl/synchronization/mutex.h"
#include "grpcpp/grpcpp.h"

namespace baton {

class ChannelPool {
 public:
  std::shared_ptr<grpc::Channel> Get(const std::string& address);

 private:
  absl::Mutex mu_;
  std::map<std::string, std::shared_ptr<grpc::Channel>> channels_ ABSL_GUARDED_BY(mu_);
};

// Channel arguments for worker-to-worker calls: 1 s keepalive pings, 1 s to
// answer, also without calls in flight.
grpc::ChannelArguments PeerChannelArguments();

}  // namespace baton

#endif  // BATON_SERVICE_CHANNEL_POOL_H_
