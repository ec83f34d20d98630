// The DRAM tier: pages in aligned blocks, a byte budget, LRU eviction. It is also the oracle the
// conformance suite checks every other tier against.
//
// Small pages are common (1-16 KiB per layer fragment), so the hot path does no allocation, no
// hash-map node and no lock per key: pages are found through the PageTable (page_table.h);
// freed blocks are kept for reuse; one lock is taken a few times per batch, never held while
// bytes are copied. A page being copied out (or handed to the eviction sink) is pinned: removing
// or evicting it unlinks it at once and frees its block when the last pin goes.
#pragma once

#include <cstdint>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "src/page_table.h"
#include "src/tier.h"

namespace kvtier {

// The memory tier's settings, its section of the Config: config.section<MemoryOptions>().
struct MemoryOptions {
  // KVTIER_MEMORY_CAPACITY: bytes the memory tier may hold, e.g. 4GiB.
  uint64_t capacity = 4ull << 30;
};

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
  Status clear() override;
  TierStats stats() const override;
  void set_eviction_sink(EvictionSink sink) override;
  size_t flush(std::chrono::steady_clock::time_point deadline) override;

 private:
  struct Page {
    std::byte* data = nullptr;
    uint64_t size = 0;
    uint64_t checksum = 0;
    bool has_checksum = false;
  };
  using Table = PageTable<KeyId, Page, KeyIdHash>;  // ids are XXH3-128 output: uniform already
  static constexpr uint32_t kNone = Table::kNone;

  // Pages and blocks; REQUIRES mu_.
  // Blocks the budget has no room to keep go to *to_free, freed after the lock is released.
  void unlink(uint32_t e);  // out of the table's index and LRU list, and out of the budget
  // The last pin of an unlinked page frees its block.
  void unpin(uint32_t e, std::vector<std::byte*>* to_free);
  // Unlinks a page; its block is freed now, or at its last unpin.
  void drop(uint32_t e, std::vector<std::byte*>* to_free);
  std::byte* take_block(size_t alloc);
  void give_block(std::byte* data, size_t alloc, std::vector<std::byte*>* to_free);
  // Evicts from the LRU tail until the budget holds. With an eviction sink the evicted entries
  // go to *evicted, pinned for demote(); without one they are dropped.
  void evict_locked(std::vector<uint32_t>* evicted, std::vector<std::byte*>* to_free);
  // Out of the LRU and the budget, into leaving_, pinned; demote() writes it down.
  void leave(uint32_t e, std::vector<uint32_t>* evicted);
  void demote(const std::vector<uint32_t>& evicted);
  // The entry that holds `id` for a reader: linked, or leaving; kNone.
  uint32_t find_any(const KeyId& id) const;

  const uint64_t capacity_;

  mutable std::mutex mu_;
  Table table_;
  uint64_t bytes_ = 0;  // bytes of linked pages
  uint64_t evictions_ = 0;
  uint64_t errors_ = 0;
  EvictionSink sink_;
  // Pages handed to the sink and not yet written down there. They are still found by get and
  // exists (a page moving down is in some tier at every instant) and a put of one counts as
  // written; out of the LRU list and the budget, pinned until demote() is done with them.
  std::unordered_map<KeyId, uint32_t, KeyIdHash> leaving_;

  // Freed blocks by allocation size, kept for reuse while the budget allows (pages of a model
  // share a few sizes): fresh memory costs a page fault per 4 KiB on first touch, several times
  // slower than a copy into warm memory.
  std::unordered_map<size_t, std::vector<std::byte*>> pool_;
  uint64_t held_bytes_ = 0;  // bytes of pooled blocks
};

}  // namespace kvtier
