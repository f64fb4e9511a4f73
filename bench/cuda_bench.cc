// GPU benchmarks (built where nvcc exists; run by scripts/gpu-check):
// - the MLA decode attention kernels' achieved memory bandwidth, counting
//   each cached latent row once per token (the bytes a decode step must
//   read), against the device's peak given on the command line (from its
//   datasheet: H100 SXM 3350 GB/s, H200 4800 GB/s);
// - the backend's products at prefill shapes, in TFLOP/s: its GEMV kernel,
//   its tensor-core path, and one plain cuBLAS product of BF16 activations
//   in the same run (the tensor cores' peak a prefill GEMM is measured
//   against); the last two skipped with a note where cuBLAS is missing.
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
      "\nPrefill products, BF16 weights, fp32 activations and accumulation, median of 10, "
      "TFLOP/s: baton's GEMV kernel (decode's), baton's tensor-core path (fp32 activations as "
      "two BF16 halves: two cuBLAS products), and one cuBLAS product of BF16 activations (the "
      "tensor cores' peak for the shape):\n");
  bool have_cublas = true;
  for (const Shape& shape : shapes) {
    for (const int64_t m : {512, 2048}) {
      const double flops = 2.0 * m * shape.k * shape.n;
      auto gemv = baton::cuda::TimeMatMulBf16(m, shape.k, shape.n, 10, /*tensor_cores=*/false);
      if (!gemv.ok()) {
        std::printf("  %s: %s\n", shape.name, std::string(gemv.status().message()).c_str());
        return 1;
      }
      std::printf("  %-22s m %4ld: gemv %7.1f", shape.name, static_cast<long>(m),
                  flops / *gemv / 1e12);
      if (have_cublas) {
        auto split = baton::cuda::TimeMatMulBf16(m, shape.k, shape.n, 10, /*tensor_cores=*/true);
        auto cublas = baton::cuda::TimeCublasGemmBf16(m, shape.k, shape.n, 10);
        if (split.ok() && cublas.ok()) {
          std::printf("  tensor cores %7.1f  cuBLAS bf16 %7.1f  (tensor cores at %.2f of it)",
                      flops / *split / 1e12, flops / *cublas / 1e12, *cublas / *split);
        } else {
          const absl::Status& why = split.ok() ? cublas.status() : split.status();
          std::printf("  (cuBLAS: %s)", std::string(why.message()).c_str());
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
