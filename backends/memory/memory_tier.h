// The DRAM tier: pages in 4 KiB-aligned blocks, a byte budget, LRU eviction. It is also the
// oracle the conformance suite checks every other tier against.
#pragma once

#include <atomic>
#include <list>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "tier.h"

namespace kvtier {

class MemoryTier final : public Tier {
 public:
  explicit MemoryTier(uint64_t capacity);
  ~MemoryTier() override;

  std::string_view name() const override { return "memory"; }
  Caps caps() const override { return {}; }
  void put(std::span<PutOp> ops) override;
  void get(std::span<GetOp> ops) override;
  void exists(std::span<const KeyId> ids, std::span<uint8_t> present) override;
  void remove(std::span<const KeyId> ids, std::span<int> results) override;
  void clear() override;
  TierStats stats() const override;
  void set_eviction_sink(EvictionSink sink) override;

 private:
  struct Block;
  using BlockRef = std::shared_ptr<Block>;
  struct Entry {
    BlockRef block;
    std::list<KeyId>::iterator lru;  // front = most recent
  };

  BlockRef new_block(size_t size);
  void release(std::byte* data, size_t alloc);
  // Evicts from the LRU tail until the budget holds; REQUIRES mu_.
  void evict_locked(std::vector<std::pair<KeyId, BlockRef>>* evicted);
  void demote(std::vector<std::pair<KeyId, BlockRef>>& evicted);

  const uint64_t capacity_;

  mutable std::mutex mu_;
  std::unordered_map<KeyId, Entry, KeyIdHash> map_;
  std::list<KeyId> lru_;
  std::atomic<uint64_t> bytes_{0};  // written under mu_, read by release()
  uint64_t evictions_ = 0;
  uint64_t errors_ = 0;
  EvictionSink sink_;

  // Freed blocks are kept for reuse (pages of a model share one size): fresh memory costs a
  // page fault per 4 KiB on first touch, several times slower than a copy into warm memory.
  std::mutex pool_mu_;
  std::unordered_map<size_t, std::vector<std::byte*>> pool_;
  uint64_t pooled_bytes_ = 0;
};

}  // namespace kvtier
