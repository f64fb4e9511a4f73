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
#include <vector>

#include "absl/status/status.h"
#include "engine/dtype.h"
#include "engine/tensor.h"

namespace baton {

class KvCache;

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
  KvCache(int num_layers, int width, int block_size, int64_t num_blocks, DType dtype = DType::kF32);

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
  size_t bytes() const { return storage_.size(); }

  // The cache row of token `pos` of a sequence with block table `table`;
  // T is float for an f32 cache and uint16_t (bf16 bits) for a bf16 one.
  template <typename T>
  T* Row(int layer, const std::vector<int32_t>& table, int64_t pos) {
    return reinterpret_cast<T*>(storage_.data() + RowOffset(layer, table, pos));
  }
  template <typename T>
  const T* Row(int layer, const std::vector<int32_t>& table, int64_t pos) const {
    return reinterpret_cast<const T*>(storage_.data() + RowOffset(layer, table, pos));
  }

  // Copies tokens [begin, end) of one layer of a sequence to/from a dense
  // buffer of (end-begin) * row_bytes() bytes: the unit of the disaggregated
  // KV handoff.
  void ExportLayer(int layer, const std::vector<int32_t>& table, int64_t begin, int64_t end,
                   void* out) const;
  void ImportLayer(int layer, const std::vector<int32_t>& table, int64_t begin, int64_t end,
                   const void* in);

 private:
  friend class KvBlocks;
  // Byte offset of a row in storage_.
  int64_t RowOffset(int layer, const std::vector<int32_t>& table, int64_t pos) const {
    const int64_t block = table[pos / block_size_], slot = pos % block_size_;
    return ((layer * num_blocks_ + block) * block_size_ + slot) * row_bytes();
  }

  int num_layers_;
  int width_;
  DType dtype_;
  int block_size_;
  int64_t num_blocks_;
  AlignedBuffer storage_;
  std::vector<int32_t> free_list_;
};

}  // namespace baton

#endif  // BATON_ENGINE_KV_CACHE_H_
