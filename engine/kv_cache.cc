#include "engine/kv_cache.h"

#include <algorithm>
#include <cstring>

namespace baton {

KvBlocks::KvBlocks(KvBlocks&& other) noexcept
    : cache_(other.cache_), table_(std::move(other.table_)) {
  other.table_.clear();
}

KvBlocks& KvBlocks::operator=(KvBlocks&& other) noexcept {
  if (this != &other) {
    Release();
    cache_ = other.cache_;
    table_ = std::move(other.table_);
    other.table_.clear();
  }
  return *this;
}

int64_t KvBlocks::capacity_tokens() const {
  return cache_ == nullptr ? 0 : static_cast<int64_t>(table_.size()) * cache_->block_size();
}

bool KvBlocks::Reserve(int64_t num_tokens) {
  if (cache_ == nullptr) return num_tokens == 0;
  const int64_t needed = cache_->BlocksFor(num_tokens) - static_cast<int64_t>(table_.size());
  if (needed <= 0) return true;
  if (needed > cache_->free_blocks()) return false;
  for (int64_t i = 0; i < needed; ++i) {
    table_.push_back(cache_->free_list_.back());
    cache_->free_list_.pop_back();
  }
  return true;
}

void KvBlocks::Release() {
  if (cache_ == nullptr) return;
  // Reverse order so that a sequence allocated and freed alone gets the same
  // blocks back next time (stable memory for tests and caches).
  for (auto it = table_.rbegin(); it != table_.rend(); ++it) cache_->free_list_.push_back(*it);
  table_.clear();
}

absl::Status HostKvMemory::ReadRows(const std::vector<int64_t>& offsets, int64_t row_bytes,
                                    void* out) const {
  for (size_t i = 0; i < offsets.size(); ++i) {
    std::memcpy(static_cast<uint8_t*>(out) + i * row_bytes, storage_.data() + offsets[i],
                row_bytes);
  }
  return absl::OkStatus();
}

absl::Status HostKvMemory::WriteRows(const std::vector<int64_t>& offsets, int64_t row_bytes,
                                     const void* in) {
  for (size_t i = 0; i < offsets.size(); ++i) {
    std::memcpy(storage_.data() + offsets[i], static_cast<const uint8_t*>(in) + i * row_bytes,
                row_bytes);
  }
  return absl::OkStatus();
}

size_t KvCache::Bytes(int num_layers, int width, int block_size, int64_t num_blocks, DType dtype) {
  return static_cast<size_t>(num_layers) * num_blocks * block_size * width *
         DTypeSize(dtype == DType::kBF16 ? DType::kBF16 : DType::kF32);
}

KvCache::KvCache(int num_layers, int width, int block_size, int64_t num_blocks, DType dtype)
    : KvCache(
          num_layers, width, block_size, num_blocks, dtype,
          std::make_unique<HostKvMemory>(Bytes(num_layers, width, block_size, num_blocks, dtype))) {
}

KvCache::KvCache(int num_layers, int width, int block_size, int64_t num_blocks, DType dtype,
                 std::unique_ptr<KvMemory> memory)
    : num_layers_(num_layers),
      width_(width),
      dtype_(dtype == DType::kBF16 ? DType::kBF16 : DType::kF32),
      block_size_(block_size),
      num_blocks_(num_blocks),
      bytes_(Bytes(num_layers, width, block_size, num_blocks, dtype)),
      memory_(std::move(memory)),
      host_(memory_->host_data()) {
  free_list_.reserve(num_blocks);
  for (int64_t b = num_blocks - 1; b >= 0; --b) free_list_.push_back(static_cast<int32_t>(b));
}

std::vector<int64_t> KvCache::RowOffsets(int layer, const std::vector<int32_t>& table,
                                         int64_t begin, int64_t end) const {
  std::vector<int64_t> offsets;
  offsets.reserve(end - begin);
  for (int64_t pos = begin; pos < end; ++pos) offsets.push_back(RowOffset(layer, table, pos));
  return offsets;
}

absl::Status KvCache::ExportLayer(int layer, const std::vector<int32_t>& table, int64_t begin,
                                  int64_t end, void* out) const {
  return memory_->ReadRows(RowOffsets(layer, table, begin, end), row_bytes(), out);
}

absl::Status KvCache::ImportLayer(int layer, const std::vector<int32_t>& table, int64_t begin,
                                  int64_t end, const void* in) {
  return memory_->WriteRows(RowOffsets(layer, table, begin, end), row_bytes(), in);
}

}  // namespace baton
