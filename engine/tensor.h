// Owned, 64-byte-aligned buffers and the weight matrices built on them.
#ifndef BATON_ENGINE_TENSOR_H_
#define BATON_ENGINE_TENSOR_H_

#include <sys/mman.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "engine/dtype.h"

namespace baton {

class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  // Buffers of 2 MiB and more are aligned to 2 MiB and asked for huge pages
  // (before first touch): weights and KV stream through gigabytes per step,
  // and 4 KiB pages cost a TLB miss every 4 KiB.
  explicit AlignedBuffer(size_t bytes) : bytes_(bytes) {
    if (bytes == 0) return;
    constexpr size_t kHugePage = size_t{2} << 20;
    const size_t alignment = bytes >= kHugePage ? kHugePage : 64;
    const size_t rounded = (bytes + alignment - 1) / alignment * alignment;
    data_.reset(static_cast<uint8_t*>(std::aligned_alloc(alignment, rounded)));
    // Only the pages the buffer fills: a huge page for a partial tail would
    // make up to 2 MiB resident that nothing uses.
    if (alignment == kHugePage && data_ != nullptr) {
      madvise(data_.get(), bytes / kHugePage * kHugePage, MADV_HUGEPAGE);
    }
    std::memset(data_.get(), 0, bytes);
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

// A [rows][cols] matrix of F32 or BF16. Linear layers store their weight as
// [out][in], as checkpoints do, so y = x W^T reads rows.
//
// Storage is row-major, or, after ToPanels(), in panels: groups of
// kPanelRows rows whose columns interleave in kPanelCols-wide slices (row
// group g, column slice s holds rows 4g..4g+3 of columns 32s..32s+31, one
// row after the other), with rows and columns padded by zeros to whole
// panels. 32 columns of BF16 are one 64-byte vector: the unit of a BF16
// dot-product instruction. A kernel tile of kPanelRows rows then reads one sequential stream
// instead of four rows far apart, which is what lets a decode GEMV run at the
// memory bandwidth. Index() and At() hide the layout.
inline constexpr int64_t kPanelRows = 4;
inline constexpr int64_t kPanelCols = 32;

struct Matrix {
  DType dtype = DType::kF32;
  int64_t rows = 0;
  int64_t cols = 0;
  bool panels = false;
  AlignedBuffer storage;

  Matrix() = default;
  Matrix(DType t, int64_t r, int64_t c)
      : dtype(t), rows(r), cols(c), storage(static_cast<size_t>(r * c) * DTypeSize(t)) {}

  bool empty() const { return rows == 0; }
  float* f32() { return reinterpret_cast<float*>(storage.data()); }
  const float* f32() const { return reinterpret_cast<const float*>(storage.data()); }
  uint16_t* bf16() { return reinterpret_cast<uint16_t*>(storage.data()); }
  const uint16_t* bf16() const { return reinterpret_cast<const uint16_t*>(storage.data()); }
  // Bytes of the matrix's values (what a pass over it reads), padding excluded.
  size_t bytes() const { return static_cast<size_t>(rows * cols) * DTypeSize(dtype); }
  // Columns per stored row: padded to whole panels in the panel layout.
  int64_t padded_cols() const {
    return panels ? (cols + kPanelCols - 1) / kPanelCols * kPanelCols : cols;
  }
  // The element index of (r, c) in storage.
  int64_t Index(int64_t r, int64_t c) const {
    if (!panels) return r * cols + c;
    return (r / kPanelRows) * kPanelRows * padded_cols() +
           (c / kPanelCols) * kPanelRows * kPanelCols + (r % kPanelRows) * kPanelCols +
           c % kPanelCols;
  }
  float At(int64_t r, int64_t c) const {
    const int64_t i = Index(r, c);
    return dtype == DType::kF32 ? f32()[i] : Bf16ToFloat(bf16()[i]);
  }
  // The same values in the panel layout (a copy; this one is unchanged).
  Matrix ToPanels() const {
    Matrix out;
    out.dtype = dtype;
    out.rows = rows;
    out.cols = cols;
    out.panels = true;
    const int64_t padded_rows = (rows + kPanelRows - 1) / kPanelRows * kPanelRows;
    const size_t elem = DTypeSize(dtype);
    out.storage = AlignedBuffer(static_cast<size_t>(padded_rows * out.padded_cols()) * elem);
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t c = 0; c < cols; c += kPanelCols) {
        const int64_t n = std::min(kPanelCols, cols - c);
        std::memcpy(out.storage.data() + out.Index(r, c) * elem,
                    storage.data() + Index(r, c) * elem, static_cast<size_t>(n) * elem);
      }
    }
    return out;
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
