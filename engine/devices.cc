#include "engine/devices.h"

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

#ifdef BATON_HAVE_CUDA
#include "engine/cuda/cuda_backend.h"
#endif

namespace baton {

bool HasCudaBackend() {
#ifdef BATON_HAVE_CUDA
  return true;
#else
  return false;
#endif
}

absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(const std::string& device,
                                                       const CpuBackendOptions& cpu) {
  if (device == "cpu") return std::make_unique<CpuBackend>(cpu);
  int ordinal = 0;
  if (device != "cuda") {
    if (!absl::StartsWith(device, "cuda:") || !absl::SimpleAtoi(device.substr(5), &ordinal) ||
        ordinal < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("--device: '", device, "' is not a device (cpu, cuda or cuda:N)"));
    }
  }
#ifdef BATON_HAVE_CUDA
  return cuda::NewCudaBackend(ordinal);
#else
  return absl::FailedPreconditionError(
      absl::StrCat("--device ", device,
                   ": this build has no CUDA backend (nvcc was not found when it was configured; "
                   "build with the `cuda` preset)"));
#endif
}

}  // namespace baton
