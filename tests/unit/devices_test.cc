// --device names: the CPU always, CUDA only where built and present, and a
// clear error for anything else.
#include "engine/devices.h"

#include "absl/strings/match.h"
#include "gtest/gtest.h"

namespace baton {
namespace {

TEST(DevicesTest, CpuIsAlwaysThere) {
  auto backend = CreateBackend("cpu", {});
  ASSERT_TRUE(backend.ok()) << backend.status();
  EXPECT_EQ((*backend)->name(), "cpu");
}

TEST(DevicesTest, NamesThatAreNoDeviceAreRefusedNamingTheFlag) {
  for (const char* name : {"", "gpu", "cuda:", "cuda:-1", "cuda:x", "CPU", "cuda0"}) {
    auto backend = CreateBackend(name, {});
    ASSERT_FALSE(backend.ok()) << name;
    EXPECT_EQ(backend.status().code(), absl::StatusCode::kInvalidArgument) << name;
    EXPECT_TRUE(absl::StrContains(backend.status().message(), "--device")) << name;
  }
}

TEST(DevicesTest, CudaWithoutTheBackendOrAGpuSaysWhich) {
  for (const char* name : {"cuda", "cuda:0", "cuda:7"}) {
    auto backend = CreateBackend(name, {});
    if (backend.ok()) {  // A GPU machine with the CUDA build.
      EXPECT_TRUE(HasCudaBackend());
      EXPECT_TRUE(absl::StartsWith((*backend)->name(), "cuda:"));
      continue;
    }
    EXPECT_EQ(backend.status().code(), absl::StatusCode::kFailedPrecondition) << name;
    EXPECT_TRUE(absl::StrContains(backend.status().message(),
                                  HasCudaBackend() ? "CUDA device" : "no CUDA backend"))
        << backend.status();
  }
}

}  // namespace
}  // namespace baton
