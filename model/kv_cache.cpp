#include "model/kv_cache.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "comm/status.h"

namespace zr {

KvCache::KvCache(const ModelConfig& cfg, int block_size, size_t budget_bytes)
    : num_layers_(cfg.num_layers), kv_dim_(cfg.kv_dim()), block_size_(block_size) {
  ZR_CHECK(block_size > 0);
  size_t per_block = bytes_per_block();
  num_blocks_ = static_cast<int>(std::max<size_t>(1, budget_bytes / per_block));
  bytes_ = per_block * num_blocks_;
  // Anonymous mapping: pages are faulted on first write, so an unused budget costs nothing.
  void* p = mmap(nullptr, bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ZR_CHECK_MSG(p != MAP_FAILED, "KV cache allocation failed");
  data_ = static_cast<float*>(p);
  refs_.assign(num_blocks_, 0);
  free_.reserve(num_blocks_);
  for (int b = num_blocks_ - 1; b >= 0; --b) free_.push_back(b);
}

KvCache::~KvCache() {
  if (data_) munmap(data_, bytes_);
}

size_t KvCache::bytes_per_block() const {
  return static_cast<size_t>(num_layers_) * 2 * block_size_ * kv_dim_ * sizeof(float);
}

float* KvCache::keys(int layer, int block) {
  size_t layer_stride = static_cast<size_t>(2) * num_blocks_ * block_size_ * kv_dim_;
  return data_ + layer * layer_stride + static_cast<size_t>(block) * block_size_ * kv_dim_;
}

float* KvCache::values(int layer, int block) {
  size_t layer_stride = static_cast<size_t>(2) * num_blocks_ * block_size_ * kv_dim_;
  size_t half = static_cast<size_t>(num_blocks_) * block_size_ * kv_dim_;
  return data_ + layer * layer_stride + half + static_cast<size_t>(block) * block_size_ * kv_dim_;
}

size_t KvCache::release_pages() {
  ZR_CHECK(num_used() == 0);
  madvise(data_, bytes_, MADV_DONTNEED);
  return bytes_;
}

size_t KvCache::prefault() {
#ifdef MADV_POPULATE_WRITE
  if (madvise(data_, bytes_, MADV_POPULATE_WRITE) == 0) return bytes_;
#endif
  // Older kernel: a write of what is there faults the page in without changing it.
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  volatile uint8_t* p = reinterpret_cast<uint8_t*>(data_);
  for (size_t i = 0; i < bytes_; i += page) p[i] = p[i];
  return bytes_;
}

int KvCache::allocate() {
  if (free_.empty()) return -1;
  int b = free_.back();
  free_.pop_back();
  refs_[b] = 1;
  return b;
}

void KvCache::retain(int block) {
  ZR_CHECK(refs_[block] > 0);
  ++refs_[block];
}

void KvCache::release(int block) {
  ZR_CHECK(refs_[block] > 0);
  if (--refs_[block] == 0) free_.push_back(block);
}

void KvCache::copy_block(int src, int dst) {
  if (log_copies_) copies_.emplace_back(src, dst);
  size_t n = static_cast<size_t>(block_size_) * kv_dim_ * sizeof(float);
  for (int l = 0; l < num_layers_; ++l) {
    std::memcpy(keys(l, dst), keys(l, src), n);
    std::memcpy(values(l, dst), values(l, src), n);
  }
}

int KvCache::blocks_needed(const std::vector<int>& table, int write_from, int new_len) const {
  int have = static_cast<int>(table.size());
  int want = blocks_for(new_len);
  int need = std::max(0, want - have);
  int first = write_from / block_size_;
  for (int i = first; i < std::min(have, want); ++i)
    if (refs_[table[i]] > 1) ++need;
  return need;
}

bool KvCache::prepare_write(std::vector<int>& table, int write_from, int new_len) {
  if (blocks_needed(table, write_from, new_len) > num_free()) return false;
  int have = static_cast<int>(table.size());
  int want = blocks_for(new_len);
  for (int i = write_from / block_size_; i < std::min(have, want); ++i) {
    if (refs_[table[i]] > 1) {
      int fresh = allocate();
      copy_block(table[i], fresh);
      release(table[i]);
      table[i] = fresh;
    }
  }
  while (static_cast<int>(table.size()) < want) table.push_back(allocate());
  return true;
}

void KvCache::free_table(std::vector<int>& table) {
  for (int b : table) release(b);
  table.clear();
}

std::vector<int> KvCache::share(const std::vector<int>& table) {
  for (int b : table) retain(b);
  return table;
}

}  // namespace zr
