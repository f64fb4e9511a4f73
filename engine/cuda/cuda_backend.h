// The CUDA backend: the forward pass's blocks on an NVIDIA GPU, weights and
// activations in device memory, the paged KV cache (BF16 latent rows) in
// device memory too. Built where nvcc exists; chosen with --device cuda[:N]
// (engine/devices.h). Every kernel it runs is in device_ops.h and tested
// against the CPU op it mirrors (tests/gpu/).
//
// This header has no CUDA types, so CPU-only code may include it.
//
// Thread-safety: the backend is driven by one thread (see Backend); the KV
// memory it allocates may be copied to and from by other threads.
#ifndef BATON_ENGINE_CUDA_CUDA_BACKEND_H_
#define BATON_ENGINE_CUDA_CUDA_BACKEND_H_

#include <memory>

#include "absl/status/statusor.h"
#include "engine/backend.h"

namespace baton::cuda {

// The backend on CUDA device `ordinal`; FAILED_PRECONDITION (saying why)
// when that device is not usable.
absl::StatusOr<std::unique_ptr<Backend>> NewCudaBackend(int ordinal);

}  // namespace baton::cuda

#endif  // BATON_ENGINE_CUDA_CUDA_BACKEND_H_
