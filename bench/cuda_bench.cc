// GPU benchmarks (built where nvcc exists; run by scripts/gpu-check):
// - the MLA decode attention kernels' achieved memory bandwidth, counting
//   each cached latent row once per token (the bytes a decode step must
//   read), against the device's peak given on the command line (from its
//   datasheet: H100 SXM 3350 GB/s, H200 4800 GB/s);
// - the backend's product kernel at prefill shapes, in TFLOP/s, against
//   cuBLAS on the same shapes in the same run (BF16 inputs, fp32
//   accumulation: the tensor-core peak a prefill GEMM is measured against;
//   skipped with a note where cuBLAS is missing).
//   baton-cuda-bench [PEAK_GB_PER_S]
#include <cstdio>
#include <cstdlib>
#include <string>

#include "engine/cuda/cuda_ops.h"

namespace {

int BenchMla(double peak) {
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

int BenchPrefillProducts() {
  struct Shape {
    const char* name;
    int64_t k, n;
  };
  // DeepSeek-V2-Lite's and V3's largest prefill products (in, out features).
  const Shape shapes[] = {{"V2-Lite q_proj", 2048, 3072},
                          {"V2-Lite dense gate+up", 2048, 21888},
                          {"V3 q_a+kv_a", 7168, 2112},
                          {"V3 dense gate+up", 7168, 36864}};
  std::printf(
      "\nPrefill products, BF16 weights, fp32 accumulation, median of 10 (TFLOP/s; baton's "
      "kernel takes fp32 activations, cuBLAS BF16 ones):\n");
  bool have_cublas = true;
  for (const Shape& shape : shapes) {
    for (const int64_t m : {512, 2048}) {
      const double flops = 2.0 * m * shape.k * shape.n;
      auto ours = baton::cuda::TimeMatMulBf16(m, shape.k, shape.n, 10);
      if (!ours.ok()) {
        std::printf("  %s: %s\n", shape.name, std::string(ours.status().message()).c_str());
        return 1;
      }
      std::printf("  %-22s m %4ld: baton %7.1f", shape.name, static_cast<long>(m),
                  flops / *ours / 1e12);
      if (have_cublas) {
        auto cublas = baton::cuda::TimeCublasGemmBf16(m, shape.k, shape.n, 10);
        if (cublas.ok()) {
          std::printf("  cuBLAS %7.1f  ratio %.3f", flops / *cublas / 1e12, *cublas / *ours);
        } else {
          std::printf("  (cuBLAS: %s)", std::string(cublas.status().message()).c_str());
          have_cublas = false;
        }
      }
      std::printf("\n");
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const double peak = argc > 1 ? std::atof(argv[1]) : 0.0;
  std::string why;
  if (baton::cuda::DeviceCount(&why) == 0) {
    std::printf("no usable CUDA device: %s\n", why.c_str());
    return 0;
  }
  const int mla = BenchMla(peak);
  const int products = BenchPrefillProducts();
  return mla != 0 ? mla : products;
}
