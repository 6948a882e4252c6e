// The paged KV storage (model/kv_cache.h) and the block allocator that decides what each block
// holds (model/block_allocator.h): sizing and layout, copy_block, reference counts, copy on write,
// and a pool whose pages were given back to the OS being used again.
#include <gtest/gtest.h>

#include <set>
#include <utility>
#include <vector>

#include "model/block_allocator.h"
#include "model/config.h"
#include "model/kv_cache.h"

namespace zr {
namespace {

ModelConfig small_config() {  // 2 layers, kv_dim 16
  ModelConfig c;
  c.num_layers = 2;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 8;
  return c;
}
constexpr int kBs = 4;                                            // positions per block
constexpr size_t kFloatsPerHalf = static_cast<size_t>(kBs) * 16;  // one layer's keys (or values) of a block

// A value unique to (layer, block, keys|values, element): a layout bug shows as a wrong value.
float tag(int layer, int block, int kv, size_t i) {
  return static_cast<float>(((layer * 1000 + block) * 2 + kv) * 1000 + static_cast<int>(i) + 1);
}
void fill_block(KvCache& kv, int block, int salt = 0) {
  for (int l = 0; l < 2; ++l)
    for (size_t i = 0; i < kFloatsPerHalf; ++i) {
      kv.keys(l, block)[i] = tag(l, block, 0, i) + salt;
      kv.values(l, block)[i] = tag(l, block, 1, i) + salt;
    }
}
// True when `block` holds what fill_block(kv, as_block, salt) wrote.
bool holds(KvCache& kv, int block, int as_block, int salt = 0) {
  for (int l = 0; l < 2; ++l)
    for (size_t i = 0; i < kFloatsPerHalf; ++i)
      if (kv.keys(l, block)[i] != tag(l, as_block, 0, i) + salt ||
          kv.values(l, block)[i] != tag(l, as_block, 1, i) + salt)
        return false;
  return true;
}
bool all_zero(KvCache& kv, int block) {
  for (int l = 0; l < 2; ++l)
    for (size_t i = 0; i < kFloatsPerHalf; ++i)
      if (kv.keys(l, block)[i] != 0.0f || kv.values(l, block)[i] != 0.0f) return false;
  return true;
}

TEST(KvCache, SizedByTheBudgetWithAtLeastOneBlock) {
  KvCache kv(small_config(), kBs, 10 * 1024 + 100);
  EXPECT_EQ(kv.bytes_per_block(), 2u * 2 * kBs * 16 * sizeof(float));  // layers * (k, v) * bs * kv_dim
  EXPECT_EQ(kv.num_blocks(), 10);
  EXPECT_EQ(kv.bytes(), 10 * kv.bytes_per_block());
  EXPECT_EQ(kv.blocks_for(0), 0);
  EXPECT_EQ(kv.blocks_for(kBs), 1);
  EXPECT_EQ(kv.blocks_for(kBs + 1), 2);
  EXPECT_EQ(KvCache(small_config(), kBs, 1).num_blocks(), 1);
}

// A bf16 cache: half the bytes per block (twice the blocks for a budget), its own elements per
// layer, block and half, copied by copy_block.
TEST(KvCache, Bf16HoldsHalfTheBytesPerBlock) {
  KvCache f32(small_config(), kBs, 10 * 1024 + 100), bf(small_config(), kBs, 10 * 1024 + 100, DType::bf16);
  EXPECT_EQ(bf.dtype(), DType::bf16);
  EXPECT_EQ(bf.bytes_per_block() * 2, f32.bytes_per_block());
  EXPECT_EQ(bf.num_blocks(), 2 * f32.num_blocks());
  auto tag16 = [](int l, int b, int kv, size_t i) { return static_cast<uint16_t>(((l * 64 + b) * 2 + kv) * 100 + i); };
  for (int b = 0; b < bf.num_blocks(); ++b)
    for (int l = 0; l < 2; ++l)
      for (size_t i = 0; i < kFloatsPerHalf; ++i) {
        bf.keys_bf16(l, b)[i] = tag16(l, b, 0, i);
        bf.values_bf16(l, b)[i] = tag16(l, b, 1, i);
      }
  bf.copy_block(3, 6);
  for (int b = 0; b < bf.num_blocks(); ++b)
    for (int l = 0; l < 2; ++l)
      for (size_t i = 0; i < kFloatsPerHalf; ++i) {
        const int src = b == 6 ? 3 : b;
        ASSERT_EQ(bf.keys_bf16(l, b)[i], tag16(l, src, 0, i)) << "block " << b << " layer " << l;
        ASSERT_EQ(bf.values_bf16(l, b)[i], tag16(l, src, 1, i)) << "block " << b << " layer " << l;
      }
}

TEST(KvCache, EveryLayerBlockAndHalfHasItsOwnStorage) {
  KvCache kv(small_config(), kBs, 16 * 1024);
  for (int b = 0; b < kv.num_blocks(); ++b) fill_block(kv, b);
  for (int b = 0; b < kv.num_blocks(); ++b) EXPECT_TRUE(holds(kv, b, b)) << "block " << b;
}

TEST(KvCache, CopyBlockCopiesEveryLayerAndNothingElse) {
  KvCache kv(small_config(), kBs, 8 * 1024);
  for (int b = 0; b < kv.num_blocks(); ++b) fill_block(kv, b);
  kv.copy_block(2, 5);
  EXPECT_TRUE(holds(kv, 5, 2));
  EXPECT_TRUE(holds(kv, 2, 2));  // the source is unchanged
  for (int b = 0; b < kv.num_blocks(); ++b)
    if (b != 5) {
      EXPECT_TRUE(holds(kv, b, b)) << "block " << b;
    }
}

TEST(KvCache, ReleasedPagesComeBackZeroedAndUsable) {
  KvCache kv(small_config(), kBs, 64 * 1024);
  for (int b = 0; b < kv.num_blocks(); ++b) fill_block(kv, b);
  EXPECT_EQ(kv.release_pages(), kv.bytes());
  for (int b = 0; b < kv.num_blocks(); ++b) EXPECT_TRUE(all_zero(kv, b)) << "block " << b;
  fill_block(kv, 7, 3);  // reuse after release
  kv.copy_block(7, 1);
  EXPECT_TRUE(holds(kv, 1, 7, 3));
  EXPECT_EQ(kv.prefault(), kv.bytes());  // faults pages in, contents unchanged
  EXPECT_TRUE(holds(kv, 7, 7, 3));
  EXPECT_TRUE(all_zero(kv, 0));
}

TEST(BlockAllocator, HandsOutEachBlockOnceUntilReleased) {
  BlockAllocator a(5, kBs);
  std::set<int> got;
  for (int i = 0; i < 5; ++i) {
    int b = a.allocate();
    ASSERT_GE(b, 0);
    ASSERT_LT(b, 5);
    EXPECT_TRUE(got.insert(b).second) << "block " << b << " handed out twice";
    EXPECT_EQ(a.refcount(b), 1);
  }
  EXPECT_EQ(a.allocate(), -1);
  EXPECT_EQ(a.num_free(), 0);
  a.release(3);
  EXPECT_EQ(a.num_free(), 1);
  EXPECT_EQ(a.allocate(), 3);
}

TEST(BlockAllocator, SharedBlocksAreFreedByTheirLastHolder) {
  BlockAllocator a(8, kBs);
  BlockTable t;
  ASSERT_TRUE(a.prepare_write(t, 0, 3 * kBs - 1));
  EXPECT_EQ(t.size(), 3u);
  EXPECT_EQ(a.num_used(), 3);
  BlockTable u = a.share(t), v = a.share(t);
  EXPECT_EQ(u, t);
  for (int b : t) EXPECT_EQ(a.refcount(b), 3);
  a.free_table(u);
  EXPECT_TRUE(u.empty());
  EXPECT_EQ(a.num_used(), 3);
  a.free_table(t);
  for (int b : v) EXPECT_EQ(a.refcount(b), 1);
  EXPECT_EQ(a.num_used(), 3);
  a.free_table(v);
  EXPECT_EQ(a.num_used(), 0);
  EXPECT_EQ(a.num_free(), 8);
}

// n samples share a prompt of 1.5 blocks: a sample writing position 6 needs its own copy of the
// half-full block (recorded, not made), never of the full block 0, and the other holders keep theirs.
TEST(BlockAllocator, CopyOnWriteReplacesOnlySharedBlocksBeingWritten) {
  BlockAllocator a(8, kBs);
  BlockTable prompt;
  ASSERT_TRUE(a.prepare_write(prompt, 0, 6));
  EXPECT_TRUE(a.take_copies().empty());  // nothing shared yet: no copies
  BlockTable s1 = a.share(prompt);
  const BlockTable before = s1;
  const int free_before = a.num_free();
  const int need = a.blocks_needed(s1, 6, 2 * kBs + 1);  // one copy (block 1) + one new block (block 2)
  EXPECT_EQ(need, 2);
  ASSERT_TRUE(a.prepare_write(s1, 6, 2 * kBs + 1));
  EXPECT_EQ(free_before - a.num_free(), need);
  ASSERT_EQ(s1.size(), 3u);
  EXPECT_EQ(s1[0], before[0]);  // not written: still shared
  EXPECT_NE(s1[1], before[1]);
  EXPECT_EQ(a.refcount(s1[0]), 2);
  EXPECT_EQ(a.refcount(s1[1]), 1);
  EXPECT_EQ(a.refcount(prompt[1]), 1);  // the prompt holds its block alone again
  auto copies = a.take_copies();
  ASSERT_EQ(copies.size(), 1u);
  EXPECT_EQ(copies[0], std::make_pair(prompt[1], s1[1]));
  EXPECT_TRUE(a.take_copies().empty());
  // Writing again into the now private block copies nothing.
  ASSERT_TRUE(a.prepare_write(s1, 7, 2 * kBs + 2));
  EXPECT_TRUE(a.take_copies().empty());
}

TEST(BlockAllocator, PrepareWriteIsAllOrNothing) {
  BlockAllocator a(4, kBs);
  BlockTable t;
  ASSERT_TRUE(a.prepare_write(t, 0, kBs + 1));  // 2 blocks
  BlockTable s = a.share(t);
  const BlockTable before = s;
  // Growing s to 4 blocks needs a copy of block 1 and two new blocks: 3 > 2 free.
  EXPECT_EQ(a.blocks_needed(s, kBs + 1, 4 * kBs), 3);
  EXPECT_FALSE(a.prepare_write(s, kBs + 1, 4 * kBs));
  EXPECT_EQ(s, before);
  EXPECT_EQ(a.num_free(), 2);
  EXPECT_TRUE(a.take_copies().empty());
  for (int b : t) EXPECT_EQ(a.refcount(b), 2);
}

// The allocator's recorded copies applied to the storage: the writer gets the shared contents,
// the other holder's block is untouched by the writer's new data.
TEST(BlockAllocator, RecordedCopiesAppliedByTheCacheKeepSharersApart) {
  KvCache kv(small_config(), kBs, 8 * 1024);
  BlockAllocator a(kv.num_blocks(), kBs);
  BlockTable p;
  ASSERT_TRUE(a.prepare_write(p, 0, 3));
  fill_block(kv, p[0]);
  BlockTable s = a.share(p);
  ASSERT_TRUE(a.prepare_write(s, 3, 4));
  for (auto [src, dst] : a.take_copies()) kv.copy_block(src, dst);
  ASSERT_NE(s[0], p[0]);
  EXPECT_TRUE(holds(kv, s[0], p[0]));
  kv.keys(1, s[0])[3] = -1.0f;  // the writer's new position
  EXPECT_TRUE(holds(kv, p[0], p[0]));
  // Everything freed, pages released, then the same blocks used again from zero.
  a.free_table(p);
  a.free_table(s);
  ASSERT_EQ(a.num_used(), 0);
  kv.release_pages();
  BlockTable again;
  ASSERT_TRUE(a.prepare_write(again, 0, kv.num_blocks() * kBs));
  for (int b : again) EXPECT_TRUE(all_zero(kv, b)) << "block " << b;
}

}  // namespace
}  // namespace zr
