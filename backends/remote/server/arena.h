// kvtier-server's arena: one mapping of --capacity bytes, cut into slots (size classes, best
// fit from the free extents), and the table of the pages published in them, by (namespace, key
// id), in LRU order.
//
// A slot's life: allocate() (evicting least recently used unpinned pages if the arena is full)
// -> written by its owner (a PUT's bytes, an RDMA client under an ALLOC lease, a promotion from
// disk) -> publish() makes it the key's page, or free_slot() gives it back. A page's slot is
// never handed out again while the page is pinned (a GET reply sending its bytes, a LOOKUP
// lease): drop() takes it out of the table at once, and its slot goes back at its last unpin().
//
// Not thread-safe: the server's mu_ guards every call (one lock over the arena and the leases),
// except base(), capacity() and largest_page().
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <list>
#include <unordered_map>
#include <utility>

#include "backends/remote/server/free_space.h"
#include "src/keys.h"
#include "src/page_table.h"
#include "src/status.h"

namespace kvtier {

class Arena {
 public:
  using Key = std::pair<uint64_t, KeyId>;  // (namespace, id)
  struct Page {
    uint64_t offset = 0, slot_size = 0, length = 0, checksum = 0;  // bytes at base() + offset
  };
  static constexpr uint32_t kNone = UINT32_MAX;  // no page

  // `seed`: the secret the table hashes keys with (clients choose key ids; see Ids).
  Arena(uint64_t capacity, uint64_t seed);
  ~Arena();
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;

  // Reserves the memory (not touched: backed as it is first written). NO_MEMORY if it cannot.
  Status map();
  std::byte* base() const { return base_; }
  uint64_t capacity() const { return capacity_; }

  // A slot of at least `bytes` at *offset, of *slot_size bytes, evicting least recently used
  // unpinned pages (of any size) until one fits; false if none does.
  bool allocate(uint64_t bytes, uint64_t* offset, uint64_t* slot_size);
  // A slot from allocate() that was never published goes back.
  void free_slot(uint64_t offset, uint64_t slot_size);
  // A written slot becomes the key's page, the most recently used; if the key has a page
  // already (another put of it won), the slot goes back instead.
  void publish(const Key& key, uint64_t offset, uint64_t slot_size, uint64_t length,
               uint64_t checksum);

  uint32_t find(const Key& key) const { return pages_.find(key); }  // the key's page, or kNone
  bool has_page(const Key& key) const { return find(key) != kNone; }
  const Page& page(uint32_t page) const { return pages_.page(page); }
  // The page becomes the most recently used, and is neither evicted nor freed until unpin().
  const Page& pin(uint32_t page);
  void unpin(uint32_t page);
  // Out of the table now (REMOVE, CLEAR, eviction); its slot goes back now, or at the last
  // unpin() of a reply or lease still reading it.
  void drop(uint32_t page);
  uint32_t any_page(uint64_t ns) const;  // one page of the namespace (CLEAR), or kNone

  size_t pages() const { return pages_.size(); }
  uint64_t used() const { return used_; }  // bytes of slots handed out and not back yet
  uint64_t evictions() const { return evictions_; }
  // The largest page ever asked a slot for: what a promotion from disk reads room for first.
  // Thread-safe.
  uint64_t largest_page() const { return largest_page_.load(std::memory_order_relaxed); }

 private:
  // Key ids come from clients, who can choose them: the table hashes them with a secret seed
  // drawn at start, so no client can make its keys (or another's) collide.
  struct Ids {
    uint64_t seed;
    size_t operator()(const Key& k) const;
    size_t operator()(uint64_t ns) const { return (*this)({ns, KeyId{}}); }
  };
  struct Entry : Page {
    std::list<uint32_t>::iterator in_ns;  // in its namespace's list, so CLEAR visits only those
  };
  using Pages = PageTable<Key, Entry, Ids>;
  static_assert(Pages::kNone == kNone);

  const uint64_t capacity_;
  std::byte* base_ = nullptr;
  Pages pages_;
  std::unordered_map<uint64_t, std::list<uint32_t>, Ids> ns_pages_;  // namespace -> its pages
  FreeSpace free_;
  uint64_t used_ = 0, evictions_ = 0;
  std::atomic<uint64_t> largest_page_{0};
};

}  // namespace kvtier
