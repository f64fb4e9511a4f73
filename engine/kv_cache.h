// The paged MLA KV cache: per layer and token, the normalized latent
// (kv_lora_rank) followed by the roped key (qk_rope_head_dim), as f32 or as
// bf16 (half the memory and bandwidth; what bf16 activations use). Memory is
// split into fixed-size blocks; a sequence owns a list of blocks (its block
// table) through a KvBlocks handle, which frees them when destroyed.
//
// Thread-safety: not thread-safe; owned by the engine loop thread.
#ifndef BATON_ENGINE_KV_CACHE_H_
#define BATON_ENGINE_KV_CACHE_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "engine/dtype.h"
#include "engine/tensor.h"

namespace baton {

class KvCache;

// Where a cache's rows live: host memory, which the CPU engine reads in
// place, or a device's, which only its backend reads (engine/backend.h).
class KvMemory {
 public:
  virtual ~KvMemory() = default;
  // The bytes, when they are in host memory; nullptr when on a device.
  virtual uint8_t* host_data() = 0;
  // Copies rows of `row_bytes` at byte offsets `offsets` to a dense host
  // buffer, and from one.
  virtual absl::Status ReadRows(const std::vector<int64_t>& offsets, int64_t row_bytes,
                                void* out) const = 0;
  virtual absl::Status WriteRows(const std::vector<int64_t>& offsets, int64_t row_bytes,
                                 const void* in) = 0;
};

// KvMemory in host memory (huge pages where the kernel gives them).
class HostKvMemory : public KvMemory {
 public:
  explicit HostKvMemory(size_t bytes) : storage_(bytes) {}
  uint8_t* host_data() override { return storage_.data(); }
  absl::Status ReadRows(const std::vector<int64_t>& offsets, int64_t row_bytes,
                        void* out) const override;
  absl::Status WriteRows(const std::vector<int64_t>& offsets, int64_t row_bytes,
                         const void* in) override;

 private:
  AlignedBuffer storage_;
};

// Owns a sequence's blocks; move-only, frees them on destruction.
class KvBlocks {
 public:
  KvBlocks() = default;
  explicit KvBlocks(KvCache* cache) : cache_(cache) {}
  ~KvBlocks() { Release(); }
  KvBlocks(KvBlocks&& other) noexcept;
  KvBlocks& operator=(KvBlocks&& other) noexcept;
  KvBlocks(const KvBlocks&) = delete;
  KvBlocks& operator=(const KvBlocks&) = delete;

  // Grows the table to hold `num_tokens` tokens. All or nothing: returns
  // false (and allocates nothing) when the cache has too few free blocks.
  bool Reserve(int64_t num_tokens);
  // Returns every block to the cache.
  void Release();

  const std::vector<int32_t>& table() const { return table_; }
  int64_t capacity_tokens() const;

 private:
  KvCache* cache_ = nullptr;
  std::vector<int32_t> table_;
};

class KvCache {
 public:
  // `dtype` is DType::kF32 or DType::kBF16 (any other is taken as kF32).
  // The rows live in host memory.
  KvCache(int num_layers, int width, int block_size, int64_t num_blocks, DType dtype = DType::kF32);
  // The rows live in `memory`, which holds Bytes(...) bytes.
  KvCache(int num_layers, int width, int block_size, int64_t num_blocks, DType dtype,
          std::unique_ptr<KvMemory> memory);
  // What a cache of these dimensions occupies.
  static size_t Bytes(int num_layers, int width, int block_size, int64_t num_blocks, DType dtype);

  int num_layers() const { return num_layers_; }
  int width() const { return width_; }
  DType dtype() const { return dtype_; }
  // "f32" or "bf16": how the KV layout names the element type on the wire.
  const char* dtype_name() const { return dtype_ == DType::kBF16 ? "bf16" : "f32"; }
  // Bytes of one token's row in one layer.
  int64_t row_bytes() const { return width_ * static_cast<int64_t>(DTypeSize(dtype_)); }
  int block_size() const { return block_size_; }
  int64_t num_blocks() const { return num_blocks_; }
  int64_t free_blocks() const { return static_cast<int64_t>(free_list_.size()); }
  int64_t used_blocks() const { return num_blocks_ - free_blocks(); }
  int64_t BlocksFor(int64_t num_tokens) const {
    return (num_tokens + block_size_ - 1) / block_size_;
  }
  size_t bytes() const { return bytes_; }
  KvMemory& memory() { return *memory_; }

  // The cache row of token `pos` of a sequence with block table `table`;
  // T is float for an f32 cache and uint16_t (bf16 bits) for a bf16 one.
  // Only for a cache in host memory (memory().host_data() != nullptr).
  template <typename T>
  T* Row(int layer, const std::vector<int32_t>& table, int64_t pos) {
    return reinterpret_cast<T*>(host_ + RowOffset(layer, table, pos));
  }
  template <typename T>
  const T* Row(int layer, const std::vector<int32_t>& table, int64_t pos) const {
    return reinterpret_cast<const T*>(host_ + RowOffset(layer, table, pos));
  }
  // Byte offset of a row in the cache's memory: layer-major, then block,
  // then the row's slot in its block.
  int64_t RowOffset(int layer, const std::vector<int32_t>& table, int64_t pos) const {
    const int64_t block = table[pos / block_size_], slot = pos % block_size_;
    return ((layer * num_blocks_ + block) * block_size_ + slot) * row_bytes();
  }

  // Copies tokens [begin, end) of one layer of a sequence to/from a dense
  // host buffer of (end-begin) * row_bytes() bytes: the unit of the
  // disaggregated KV handoff. Fails only where the memory is a device's.
  absl::Status ExportLayer(int layer, const std::vector<int32_t>& table, int64_t begin, int64_t end,
                           void* out) const;
  absl::Status ImportLayer(int layer, const std::vector<int32_t>& table, int64_t begin, int64_t end,
                           const void* in);

 private:
  friend class KvBlocks;
  // RowOffset of tokens [begin, end) of one layer.
  std::vector<int64_t> RowOffsets(int layer, const std::vector<int32_t>& table, int64_t begin,
                                  int64_t end) const;

  int num_layers_;
  int width_;
  DType dtype_;
  int block_size_;
  int64_t num_blocks_;
  size_t bytes_;
  std::unique_ptr<KvMemory> memory_;
  uint8_t* host_;  // memory_->host_data()
  std::vector<int32_t> free_list_;
};

}  // namespace baton

#endif  // BATON_ENGINE_KV_CACHE_H_
