#include "model/block_allocator.h"

#include <algorithm>

#include "comm/status.h"

namespace zr {

BlockAllocator::BlockAllocator(int num_blocks, int block_size) : block_size_(block_size) {
  ZR_CHECK(num_blocks > 0 && block_size > 0);
  refs_.assign(num_blocks, 0);
  free_.reserve(num_blocks);
  for (int b = num_blocks - 1; b >= 0; --b) free_.push_back(b);
}

int BlockAllocator::allocate() {
  if (free_.empty()) return -1;
  int b = free_.back();
  free_.pop_back();
  refs_[b] = 1;
  return b;
}

void BlockAllocator::retain(int block) {
  ZR_CHECK(refs_[block] > 0);
  ++refs_[block];
}

void BlockAllocator::release(int block) {
  ZR_CHECK(refs_[block] > 0);
  if (--refs_[block] == 0) free_.push_back(block);
}

int BlockAllocator::blocks_needed(const BlockTable& table, int write_from, int new_len) const {
  const int have = static_cast<int>(table.size()), want = blocks_for(new_len);
  int need = std::max(0, want - have);
  for (int i = write_from / block_size_; i < std::min(have, want); ++i)
    if (refs_[table[i]] > 1) ++need;
  return need;
}

bool BlockAllocator::prepare_write(BlockTable& table, int write_from, int new_len) {
  if (blocks_needed(table, write_from, new_len) > num_free()) return false;
  const int have = static_cast<int>(table.size()), want = blocks_for(new_len);
  for (int i = write_from / block_size_; i < std::min(have, want); ++i) {
    if (refs_[table[i]] > 1) {
      int fresh = allocate();
      copies_.emplace_back(table[i], fresh);
      release(table[i]);
      table[i] = fresh;
    }
  }
  while (static_cast<int>(table.size()) < want) table.push_back(allocate());
  return true;
}

BlockTable BlockAllocator::share(const BlockTable& table) {
  for (int b : table) retain(b);
  return table;
}

void BlockAllocator::free_table(BlockTable& table) {
  for (int b : table) release(b);
  table.clear();
}

}  // namespace zr
