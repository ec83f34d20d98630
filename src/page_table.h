// The page table of pages kept in this process's memory: the memory tier's blocks and
// kvtier-server's arena slots. Entries live in one array, found through an open-addressing
// index of their positions (linear probing, at most half full, backward-shift deletion so no
// tombstones pile up), linked into an LRU list by position, and pinned while a copy out of their
// bytes is in flight. No allocation or hash-map node per page. Not thread-safe: the owner's lock
// guards every call.
//
// An entry that is unlinked (removed, evicted, cleared) leaves the index and the LRU list at
// once; while it is pinned it stays, and the owner frees what its page holds at the last unpin.
#pragma once

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

namespace kvtier {

// Key: equality-comparable; Hash(key) -> size_t, uniform in its low bits; Page: what the owner
// keeps per page (where its bytes are, their length, checksum, ...).
template <class Key, class Page, class Hash>
class PageTable {
 public:
  static constexpr uint32_t kNone = UINT32_MAX;

  explicit PageTable(Hash hash = {}) : hash_(std::move(hash)) {}

  size_t size() const { return live_; }  // linked entries
  Page& page(uint32_t e) { return entries_[e].page; }
  const Page& page(uint32_t e) const { return entries_[e].page; }
  const Key& key(uint32_t e) const { return entries_[e].key; }
  bool pinned(uint32_t e) const { return entries_[e].pins > 0; }

  // The linked entry of `key`, or kNone.
  uint32_t find(const Key& key) const {
    if (table_.empty()) return kNone;
    const size_t mask = table_.size() - 1;
    for (size_t i = home(key, mask);; i = (i + 1) & mask) {
      const uint32_t e = table_[i];
      if (e == kNone || entries_[e].key == key) return e;
    }
  }

  // A new linked entry, the most recently used. REQUIRES: no linked entry has `key`.
  uint32_t insert(const Key& key, Page page) {
    uint32_t e;
    if (!free_.empty()) {
      e = free_.back();
      free_.pop_back();
    } else {
      e = static_cast<uint32_t>(entries_.size());
      entries_.emplace_back();
    }
    Entry& x = entries_[e];
    x.key = key;
    x.page = std::move(page);
    x.linked = true;
    if ((live_ + 1) * 2 > table_.size()) grow();
    place(e, table_.size() - 1);
    ++live_;
    lru_push_front(e);
    return e;
  }

  void touch(uint32_t e) {  // the most recently used
    if (head_ == e) return;
    lru_unlink(e);
    lru_push_front(e);
  }

  // The LRU list: from the most recent (head) to the least recent (tail); kNone ends it.
  uint32_t lru_head() const { return head_; }
  uint32_t lru_tail() const { return tail_; }
  uint32_t more_recent(uint32_t e) const { return entries_[e].prev; }

  void pin(uint32_t e) { ++entries_[e].pins; }

  // Out of the index and the LRU list; the entry stays until release().
  void unlink(uint32_t e) {
    Entry& x = entries_[e];
    erase_from_index(x.key);
    lru_unlink(e);
    x.linked = false;
  }

  // Drops one pin. True when the entry is now unlinked and unpinned: the owner frees what its
  // page holds, then calls release(e).
  bool unpin(uint32_t e) {
    Entry& x = entries_[e];
    return --x.pins == 0 && !x.linked;
  }

  // An unlinked, unpinned entry back to the free list.
  void release(uint32_t e) {
    entries_[e] = Entry{};
    free_.push_back(e);
  }

 private:
  struct Entry {
    Key key{};
    Page page{};
    uint32_t prev = kNone, next = kNone;  // LRU neighbours; head_ is the most recent
    uint32_t pins = 0;                    // copies in flight out of this page's bytes
    bool linked = false;  // in the index and the LRU list (false: free, or unlinked but pinned)
  };

  size_t home(const Key& key, size_t mask) const { return static_cast<size_t>(hash_(key)) & mask; }

  void place(uint32_t e, size_t mask) {
    size_t i = home(entries_[e].key, mask);
    while (table_[i] != kNone) i = (i + 1) & mask;
    table_[i] = e;
  }

  void grow() {
    std::vector<uint32_t> old;
    old.swap(table_);
    table_.assign(std::max<size_t>(1024, old.size() * 2), kNone);
    for (uint32_t e : old)
      if (e != kNone) place(e, table_.size() - 1);
  }

  void erase_from_index(const Key& key) {
    const size_t mask = table_.size() - 1;
    size_t hole = home(key, mask);
    while (entries_[table_[hole]].key != key) hole = (hole + 1) & mask;
    // Backward shift: later members of the probe run move up so no lookup stops early.
    for (size_t j = (hole + 1) & mask; table_[j] != kNone; j = (j + 1) & mask) {
      const size_t h = home(entries_[table_[j]].key, mask);
      const bool stays = hole <= j ? (hole < h && h <= j) : (hole < h || h <= j);
      if (stays) continue;
      table_[hole] = table_[j];
      hole = j;
    }
    table_[hole] = kNone;
    --live_;
  }

  void lru_push_front(uint32_t e) {
    Entry& x = entries_[e];
    x.prev = kNone;
    x.next = head_;
    if (head_ != kNone) entries_[head_].prev = e;
    head_ = e;
    if (tail_ == kNone) tail_ = e;
  }

  void lru_unlink(uint32_t e) {
    Entry& x = entries_[e];
    (x.prev != kNone ? entries_[x.prev].next : head_) = x.next;
    (x.next != kNone ? entries_[x.next].prev : tail_) = x.prev;
    x.prev = x.next = kNone;
  }

  Hash hash_;
  std::vector<Entry> entries_;
  std::vector<uint32_t> free_;   // released entries, reused first
  std::vector<uint32_t> table_;  // entry positions, kNone = empty; size a power of two
  size_t live_ = 0;
  uint32_t head_ = kNone, tail_ = kNone;
};

}  // namespace kvtier
