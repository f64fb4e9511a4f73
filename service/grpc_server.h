// A gRPC server with the standard health service (grpc.health.v1) and
// reflection, on a port the caller picks or the OS chooses; plus the SIGTERM
// wait that every baton process drains on.
#ifndef BATON_SERVICE_GRPC_SERVER_H_
#define BATON_SERVICE_GRPC_SERVER_H_

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"

namespace baton {

struct GrpcServerOptions {
  std::string host = "0.0.0.0";
  int port = 0;  // 0: the OS chooses.
  int max_receive_message_bytes = 4 << 20;
};

class GrpcServer {
 public:
  // Serves `services` (not owned; must outlive the server). Health reports
  // NOT_SERVING until SetServing(true).
  static absl::StatusOr<std::unique_ptr<GrpcServer>> Start(
      const GrpcServerOptions& options, const std::vector<grpc::Service*>& services);
  ~GrpcServer();

  int port() const { return port_; }
  void SetServing(bool serving);
  // Stops accepting calls and cancels those still running after `grace`.
  void Shutdown(absl::Duration grace);
  // The SIGTERM drain: health turns NOT_SERVING, then waits until `busy`
  // returns false (running calls finished) or `timeout` passes, then shuts
  // down. Callers refuse new work (StartDraining) before calling this.
  void Drain(const std::function<bool()>& busy, absl::Duration timeout);

 private:
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
};

// Blocks SIGTERM and SIGINT in the calling thread and the threads it starts
// later, so that WaitForTerminationSignal() receives them. Call first in main.
void BlockTerminationSignals();
// Waits for SIGTERM or SIGINT; returns its number.
int WaitForTerminationSignal();

}  // namespace baton

#endif  // BATON_SERVICE_GRPC_SERVER_H_
