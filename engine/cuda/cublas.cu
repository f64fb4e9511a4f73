#include <cublas_v2.h>  // Types only: the library is opened at run time.
#include <dlfcn.h>

#include <limits>
#include <string>

#include "absl/strings/str_cat.h"
#include "engine/cuda/cublas.h"

namespace baton::cuda {

struct Cublas::Api {
  void* library = nullptr;
  cublasHandle_t handle = nullptr;
  cublasStatus_t (*create)(cublasHandle_t*) = nullptr;
  cublasStatus_t (*destroy)(cublasHandle_t) = nullptr;
  cublasStatus_t (*set_stream)(cublasHandle_t, cudaStream_t) = nullptr;
  cublasStatus_t (*gemm_ex)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int,
                            const void*, const void*, cudaDataType, int, const void*, cudaDataType,
                            int, const void*, void*, cudaDataType, int, cublasComputeType_t,
                            cublasGemmAlgo_t) = nullptr;
  cublasStatus_t (*gemm_strided_batched_ex)(cublasHandle_t, cublasOperation_t, cublasOperation_t,
                                            int, int, int, const void*, const void*, cudaDataType,
                                            int, long long, const void*, cudaDataType, int,
                                            long long, const void*, void*, cudaDataType, int,
                                            long long, int, cublasComputeType_t,
                                            cublasGemmAlgo_t) = nullptr;

  template <typename F>
  bool Resolve(F* f, const char* symbol) {
    *f = reinterpret_cast<F>(dlsym(library, symbol));
    return *f != nullptr;
  }
};

Cublas::Cublas() : api_(std::make_unique<Api>()) {}

Cublas::~Cublas() {
  if (api_->handle != nullptr) api_->destroy(api_->handle);
  if (api_->library != nullptr) dlclose(api_->library);
}

absl::StatusOr<std::unique_ptr<Cublas>> Cublas::Open() {
  std::string errors;
  auto failed = [&](const std::string& why) {
    absl::StrAppend(&errors, errors.empty() ? "" : "; ", why);
  };
  // A library that opens but cannot create a handle (say, one newer than
  // the driver) gives way to the next.
  for (const char* name : {"libcublas.so.13", "libcublas.so.12", "libcublas.so"}) {
    auto cublas = std::unique_ptr<Cublas>(new Cublas());
    Api& api = *cublas->api_;
    api.library = dlopen(name, RTLD_NOW | RTLD_LOCAL);
    if (api.library == nullptr) {
      failed(dlerror());
      continue;
    }
    if (!api.Resolve(&api.create, "cublasCreate_v2") ||
        !api.Resolve(&api.destroy, "cublasDestroy_v2") ||
        !api.Resolve(&api.set_stream, "cublasSetStream_v2") ||
        !api.Resolve(&api.gemm_ex, "cublasGemmEx") ||
        !api.Resolve(&api.gemm_strided_batched_ex, "cublasGemmStridedBatchedEx")) {
      failed(absl::StrCat(name, " lacks cublasCreate_v2, cublasDestroy_v2, cublasSetStream_v2, ",
                          "cublasGemmEx or cublasGemmStridedBatchedEx"));
      continue;
    }
    if (const cublasStatus_t s = api.create(&api.handle); s != CUBLAS_STATUS_SUCCESS) {
      api.handle = nullptr;
      failed(absl::StrCat(name, ": cublasCreate: status ", s));
      continue;
    }
    return cublas;
  }
  return absl::NotFoundError(absl::StrCat("cuBLAS: ", errors));
}

absl::Status Cublas::GemmBf16(int64_t m, int64_t n, int64_t k, const uint16_t* x, int64_t ldx,
                              const uint16_t* w, int64_t ldw, float* y, int64_t ldy, float beta,
                              cudaStream_t s, int64_t batch, int64_t stride_x, int64_t stride_w,
                              int64_t stride_y) {
  constexpr int64_t kMax = std::numeric_limits<int>::max();
  if (m > kMax || n > kMax || k > kMax || ldx > kMax || ldw > kMax || ldy > kMax || batch > kMax) {
    return absl::InvalidArgumentError("GemmBf16: a dimension over cuBLAS's int range");
  }
  if (const cublasStatus_t r = api_->set_stream(api_->handle, s); r != CUBLAS_STATUS_SUCCESS) {
    return absl::InternalError(absl::StrCat("cublasSetStream: status ", r));
  }
  // cuBLAS is column-major: row-major y [m][n] is column-major y^T [n][m],
  // and y^T = w x^T, where row-major w [n][k] read column-major is w^T.
  const float alpha = 1.f;
  const int cm = static_cast<int>(n), cn = static_cast<int>(m), ck = static_cast<int>(k);
  const cublasStatus_t r =
      batch == 1 ? api_->gemm_ex(api_->handle, CUBLAS_OP_T, CUBLAS_OP_N, cm, cn, ck, &alpha, w,
                                 CUDA_R_16BF, static_cast<int>(ldw), x, CUDA_R_16BF,
                                 static_cast<int>(ldx), &beta, y, CUDA_R_32F, static_cast<int>(ldy),
                                 CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT)
                 : api_->gemm_strided_batched_ex(
                       api_->handle, CUBLAS_OP_T, CUBLAS_OP_N, cm, cn, ck, &alpha, w, CUDA_R_16BF,
                       static_cast<int>(ldw), stride_w, x, CUDA_R_16BF, static_cast<int>(ldx),
                       stride_x, &beta, y, CUDA_R_32F, static_cast<int>(ldy), stride_y,
                       static_cast<int>(batch), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
  if (r == CUBLAS_STATUS_NOT_SUPPORTED || r == CUBLAS_STATUS_ARCH_MISMATCH) {
    return absl::UnimplementedError(absl::StrCat("cuBLAS has no BF16 product here: status ", r));
  }
  if (r != CUBLAS_STATUS_SUCCESS) {
    return absl::InternalError(absl::StrCat("cublasGemm: status ", r));
  }
  return absl::OkStatus();
}

}  // namespace baton::cuda
