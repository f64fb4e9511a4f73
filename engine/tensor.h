// Owned, 64-byte-aligned buffers and the weight matrices built on them.
#ifndef BATON_ENGINE_TENSOR_H_
#define BATON_ENGINE_TENSOR_H_

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "engine/dtype.h"

namespace baton {

class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  explicit AlignedBuffer(size_t bytes) : bytes_(bytes) {
    if (bytes > 0) {
      data_.reset(static_cast<uint8_t*>(std::aligned_alloc(64, (bytes + 63) / 64 * 64)));
      std::memset(data_.get(), 0, bytes);
    }
  }
  uint8_t* data() { return data_.get(); }
  const uint8_t* data() const { return data_.get(); }
  size_t size() const { return bytes_; }

 private:
  struct Free {
    void operator()(uint8_t* p) const { std::free(p); }
  };
  std::unique_ptr<uint8_t[], Free> data_;
  size_t bytes_ = 0;
};

// A row-major [rows][cols] matrix of F32 or BF16. Linear layers store their
// weight as [out][in], as checkpoints do, so y = x W^T reads rows.
struct Matrix {
  DType dtype = DType::kF32;
  int64_t rows = 0;
  int64_t cols = 0;
  AlignedBuffer storage;

  Matrix() = default;
  Matrix(DType t, int64_t r, int64_t c)
      : dtype(t), rows(r), cols(c), storage(static_cast<size_t>(r * c) * DTypeSize(t)) {}

  bool empty() const { return rows == 0; }
  float* f32() { return reinterpret_cast<float*>(storage.data()); }
  const float* f32() const { return reinterpret_cast<const float*>(storage.data()); }
  uint16_t* bf16() { return reinterpret_cast<uint16_t*>(storage.data()); }
  const uint16_t* bf16() const { return reinterpret_cast<const uint16_t*>(storage.data()); }
  size_t bytes() const { return storage.size(); }
  float At(int64_t r, int64_t c) const {
    return dtype == DType::kF32 ? f32()[r * cols + c] : Bf16ToFloat(bf16()[r * cols + c]);
  }
};

// A float vector (norm weights, biases).
struct Vector {
  AlignedBuffer storage;
  int64_t size = 0;
  Vector() = default;
  explicit Vector(int64_t n) : storage(static_cast<size_t>(n) * 4), size(n) {}
  float* data() { return reinterpret_cast<float*>(storage.data()); }
  const float* data() const { return reinterpret_cast<const float*>(storage.data()); }
};

}  // namespace baton

#endif  // BATON_ENGINE_TENSOR_H_
