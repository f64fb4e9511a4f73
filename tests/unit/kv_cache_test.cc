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

TEST(KvCacheTest, ExportImportRoundTripsAcrossCaches) {
  KvCache src(2, 3, 4, 8), dst(2, 3, 4, 8);
  KvBlocks a(&src), filler(&dst), b(&dst);
  ASSERT_TRUE(filler.Reserve(5));  // Different physical blocks on each side.
  ASSERT_TRUE(a.Reserve(10));
  ASSERT_TRUE(b.Reserve(10));
  for (int layer = 0; layer < 2; ++layer) {
    for (int pos = 0; pos < 10; ++pos) {
      for (int d = 0; d < 3; ++d) src.Row(layer, a.table(), pos)[d] = layer * 100 + pos * 10 + d;
    }
  }
  std::vector<float> buffer(10 * 3);
  for (int layer = 0; layer < 2; ++layer) {
    src.ExportLayer(layer, a.table(), 0, 10, buffer.data());
    dst.ImportLayer(layer, b.table(), 0, 10, buffer.data());
  }
  for (int layer = 0; layer < 2; ++layer) {
    for (int pos = 0; pos < 10; ++pos) {
      for (int d = 0; d < 3; ++d) {
        EXPECT_EQ(dst.Row(layer, b.table(), pos)[d], layer * 100 + pos * 10 + d);
      }
    }
  }
}

}  // namespace
}  // namespace baton
