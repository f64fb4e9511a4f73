#include "engine/kv_cache.h"

#include <vector>

#include "gtest/gtest.h"

namespace baton {
namespace {

TEST(KvCacheTest, ReserveIsAllOrNothingAndReleaseFreesEverything) {
  KvCache cache(/*num_layers=*/2, /*width=*/8, /*block_size=*/4, /*num_blocks=*/5);
  KvBlocks a(&cache), b(&cache);
  EXPECT_TRUE(a.Reserve(9));  // 3 blocks.
  EXPECT_EQ(cache.used_blocks(), 3);
  EXPECT_FALSE(b.Reserve(12));  // Needs 3, only 2 left.
  EXPECT_EQ(cache.used_blocks(), 3);
  EXPECT_TRUE(b.table().empty());
  EXPECT_TRUE(b.Reserve(8));
  EXPECT_EQ(cache.free_blocks(), 0);
  a.Release();
  EXPECT_EQ(cache.used_blocks(), 2);
  {
    KvBlocks moved = std::move(b);
    EXPECT_EQ(moved.capacity_tokens(), 8);
  }  // Destroyed: frees.
  EXPECT_EQ(cache.used_blocks(), 0);
}

// Rows of both element types: f32 and BF16 (half the bytes per row).
template <typename E>
void CheckExportImportRoundTrip(DType dtype) {
  KvCache src(2, 3, 4, 8, dtype), dst(2, 3, 4, 8, dtype);
  ASSERT_EQ(src.row_bytes(), 3 * static_cast<int64_t>(sizeof(E)));
  KvBlocks a(&src), filler(&dst), b(&dst);
  ASSERT_TRUE(filler.Reserve(5));  // Different physical blocks on each side.
  ASSERT_TRUE(a.Reserve(10));
  ASSERT_TRUE(b.Reserve(10));
  auto value = [](int layer, int pos, int d) { return static_cast<E>(layer * 100 + pos * 10 + d); };
  for (int layer = 0; layer < 2; ++layer) {
    for (int pos = 0; pos < 10; ++pos) {
      for (int d = 0; d < 3; ++d) src.Row<E>(layer, a.table(), pos)[d] = value(layer, pos, d);
    }
  }
  std::vector<uint8_t> buffer(10 * src.row_bytes());
  for (int layer = 0; layer < 2; ++layer) {
    ASSERT_TRUE(src.ExportLayer(layer, a.table(), 0, 10, buffer.data()).ok());
    ASSERT_TRUE(dst.ImportLayer(layer, b.table(), 0, 10, buffer.data()).ok());
  }
  for (int layer = 0; layer < 2; ++layer) {
    for (int pos = 0; pos < 10; ++pos) {
      for (int d = 0; d < 3; ++d) {
        EXPECT_EQ(dst.Row<E>(layer, b.table(), pos)[d], value(layer, pos, d));
      }
    }
  }
}

TEST(KvCacheTest, ExportImportRoundTripsAcrossCaches) {
  CheckExportImportRoundTrip<float>(DType::kF32);
  CheckExportImportRoundTrip<uint16_t>(DType::kBF16);
  EXPECT_EQ(KvCache(1, 576, 16, 2, DType::kBF16).bytes(), 576u * 16 * 2 * 2);
}

}  // namespace
}  // namespace baton
