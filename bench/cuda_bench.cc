// GPU benchmarks (built where nvcc exists; run by scripts/gpu-check): the MLA
// decode attention kernels' achieved memory bandwidth, counting each cached
// latent row once per token (the bytes a decode step must read), against
// the device's peak given on the command line (from its datasheet: H100 SXM
// 3350 GB/s, H200 4800 GB/s).
//   baton-cuda-bench [PEAK_GB_PER_S]
#include <cstdio>
#include <cstdlib>
#include <string>

#include "engine/cuda/cuda_ops.h"

int main(int argc, char** argv) {
  const double peak = argc > 1 ? std::atof(argv[1]) : 0.0;
  std::string why;
  if (baton::cuda::DeviceCount(&why) == 0) {
    std::printf("no usable CUDA device: %s\n", why.c_str());
    return 0;
  }
  std::printf("MLA decode attention, 128 heads, latent 576 (BF16 cache), median of 20:\n");
  for (const int64_t tokens : {1, 32, 128}) {
    for (const int64_t context : {2048, 8192}) {
      auto seconds = baton::cuda::TimeMlaDecodeAttention(tokens, 128, context, 20);
      if (!seconds.ok()) {
        std::printf("  batch %3ld ctx %5ld: %s\n", static_cast<long>(tokens),
                    static_cast<long>(context), std::string(seconds.status().message()).c_str());
        return 1;
      }
      const double gbps = static_cast<double>(tokens) * context * 576 * 2 / *seconds / 1e9;
      std::printf("  batch %3ld ctx %5ld: %9.1f us  %7.1f GB/s", static_cast<long>(tokens),
                  static_cast<long>(context), *seconds * 1e6, gbps);
      if (peak > 0) std::printf("  %.2f of peak", gbps / peak);
      std::printf("\n");
    }
  }
  return 0;
}
