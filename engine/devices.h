// The devices a model can run on (--device): "cpu", and "cuda" or "cuda:N"
// where this build has the CUDA backend. The one place that knows which
// backends were built.
//
// Thread-safety: thread-safe.
#ifndef BATON_ENGINE_DEVICES_H_
#define BATON_ENGINE_DEVICES_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "engine/backend.h"
#include "engine/cpu_backend.h"

namespace baton {

// Whether this build has the CUDA backend.
bool HasCudaBackend();

// The backend `device` names; `cpu` configures the CPU backend. Errors:
// INVALID_ARGUMENT for a name that is no device, FAILED_PRECONDITION for a
// device this build or machine lacks.
absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(const std::string& device,
                                                       const CpuBackendOptions& cpu);

}  // namespace baton

#endif  // BATON_ENGINE_DEVICES_H_
