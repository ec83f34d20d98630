// The DRAM tier: pages in aligned blocks, a byte budget, LRU eviction. It is also the oracle the
// conformance suite checks every other tier against.
//
// Small pages are common (1-16 KiB per layer fragment), so the hot path does no allocation, no
// hash-map node and no lock per key: entries live in one array, indexed by an open-addressing
// table of their positions, linked into the LRU list by position; freed blocks are kept for
// reuse; one lock is taken a few times per batch, never held while bytes are copied. A page
// being copied out (or handed to the eviction sink) is pinned: removing or evicting it unlinks
// it at once and frees its block when the last pin goes.
#pragma once

#include <cstdint>
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
  static constexpr uint32_t kNone = UINT32_MAX;
  struct Entry {
    KeyId id;
    std::byte* data = nullptr;
    uint64_t size = 0;
    uint64_t checksum = 0;
    uint32_t prev = kNone, next = kNone;  // LRU neighbours; head_ is the most recent
    uint32_t pins = 0;                    // copies in flight out of this block
    bool has_checksum = false;
    bool linked = false;  // in the index and the LRU list (false: free, or unlinked but pinned)
  };

  // The index: open addressing with linear probing over entry positions; REQUIRES mu_.
  uint32_t find(const KeyId& id) const;
  void index_insert(uint32_t e);
  void index_erase(const KeyId& id);
  void index_grow();

  // LRU list; REQUIRES mu_.
  void lru_push_front(uint32_t e);
  void lru_unlink(uint32_t e);
  void touch(uint32_t e);

  // Entries and blocks; REQUIRES mu_.
  uint32_t new_entry();
  // Blocks the budget has no room to keep go to *to_free, freed after the lock is released.
  void unlink(uint32_t e);  // out of the index and the LRU list, and out of the budget
  void unpin(uint32_t e, std::vector<std::byte*>* to_free);  // the last pin of an unlinked one frees it
  void drop(uint32_t e, std::vector<std::byte*>* to_free);   // unlink, freed now or at its last unpin
  void free_entry(uint32_t e);
  std::byte* take_block(size_t alloc);
  void give_block(std::byte* data, size_t alloc, std::vector<std::byte*>* to_free);
  // Evicts from the LRU tail until the budget holds. With an eviction sink the evicted entries
  // go to *evicted, pinned for demote(); without one they are dropped.
  void evict_locked(std::vector<uint32_t>* evicted, std::vector<std::byte*>* to_free);
  void demote(const std::vector<uint32_t>& evicted);

  const uint64_t capacity_;

  mutable std::mutex mu_;
  std::vector<Entry> entries_;
  std::vector<uint32_t> free_entries_;
  std::vector<uint32_t> table_;  // entry positions, kNone = empty; size a power of two
  uint64_t live_ = 0;            // linked entries
  uint32_t head_ = kNone, tail_ = kNone;
  uint64_t bytes_ = 0;  // bytes of linked pages
  uint64_t evictions_ = 0;
  uint64_t errors_ = 0;
  EvictionSink sink_;

  // Freed blocks by allocation size, kept for reuse while the budget allows (pages of a model
  // share a few sizes): fresh memory costs a page fault per 4 KiB on first touch, several times
  // slower than a copy into warm memory.
  std::unordered_map<size_t, std::vector<std::byte*>> pool_;
  uint64_t held_bytes_ = 0;  // bytes of pooled blocks
};

}  // namespace kvtier
