// The paged MLA KV cache: per layer and token, the normalized latent
// (kv_lora_rank) followed by the roped key (qk_rope_head_dim). Memory is
// split into fixed-size blocks; a sequence owns a list of blocks (its block
// table) through a KvBlocks handle, which frees them when destroyed.
//
// Thread-safety: not thread-safe; owned by the engine loop thread.
#ifndef BATON_ENGINE_KV_CACHE_H_
#define BATON_ENGINE_KV_CACHE_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
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
  KvCache(int num_layers, int width, int block_size, int64_t num_blocks);

  int num_layers() const { return num_layers_; }
  int width() const { return width_; }
  int block_size() const { return block_size_; }
  int64_t num_blocks() const { return num_blocks_; }
  int64_t free_blocks() const { return static_cast<int64_t>(free_list_.size()); }
  int64_t used_blocks() const { return num_blocks_ - free_blocks(); }
  int64_t BlocksFor(int64_t num_tokens) const {
    return (num_tokens + block_size_ - 1) / block_size_;
  }
  size_t bytes() const { return storage_.size(); }

  // The cache row of token `pos` of a sequence with block table `table`.
  float* Row(int layer, const std::vector<int32_t>& table, int64_t pos) {
    return data() + RowOffset(layer, table[pos / block_size_], pos % block_size_);
  }
  const float* Row(int layer, const std::vector<int32_t>& table, int64_t pos) const {
    return data() + RowOffset(layer, table[pos / block_size_], pos % block_size_);
  }

  // Copies tokens [begin, end) of one layer of a sequence to/from a dense
  // [end-begin][width] buffer: the unit of the disaggregated KV handoff.
  void ExportLayer(int layer, const std::vector<int32_t>& table, int64_t begin, int64_t end,
                   float* out) const;
  void ImportLayer(int layer, const std::vector<int32_t>& table, int64_t begin, int64_t end,
                   const float* in);

 private:
  friend class KvBlocks;
  float* data() { return reinterpret_cast<float*>(storage_.data()); }
  const float* data() const { return reinterpret_cast<const float*>(storage_.data()); }
  int64_t RowOffset(int layer, int64_t block, int64_t slot) const {
    return ((layer * num_blocks_ + block) * block_size_ + slot) * width_;
  }

  int num_layers_;
  int width_;
  int block_size_;
  int64_t num_blocks_;
  AlignedBuffer storage_;
  std::vector<int32_t> free_list_;
};

}  // namespace baton

#endif  // BATON_ENGINE_KV_CACHE_H_
