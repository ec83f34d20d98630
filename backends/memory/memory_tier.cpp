#include "memory_tier.h"

#include <cstdlib>

namespace kvtier {

namespace {
// Pages of 4 KiB and up sit on 4 KiB boundaries (what O_DIRECT and RDMA like when they are
// demoted); small values on cache lines, so a 1 KiB block does not cost 4 KiB.
size_t align_for(size_t n) {
  return n >= 4096 ? 4096 : 64;
}
size_t round_up(size_t n) {
  return (n + align_for(n) - 1) & ~(align_for(n) - 1);
}
size_t slot_of(const KeyId& id, size_t mask) {
  return static_cast<size_t>(id.lo) & mask;  // ids are XXH3-128 output: uniform already
}
void free_all(const std::vector<std::byte*>& blocks) {
  for (std::byte* b : blocks) std::free(b);
}
}  // namespace

MemoryTier::MemoryTier(uint64_t capacity) : capacity_(capacity) {}

MemoryTier::~MemoryTier() {
  for (Entry& e : entries_) std::free(e.data);  // no call is in flight: nothing is pinned
  for (auto& [alloc, blocks] : pool_) free_all(blocks);
}

// --- the index -------------------------------------------------------------------------------

uint32_t MemoryTier::find(const KeyId& id) const {
  if (table_.empty()) return kNone;
  const size_t mask = table_.size() - 1;
  for (size_t i = slot_of(id, mask);; i = (i + 1) & mask) {
    const uint32_t e = table_[i];
    if (e == kNone || entries_[e].id == id) return e;
  }
}

void MemoryTier::index_grow() {
  std::vector<uint32_t> old;
  old.swap(table_);
  table_.assign(std::max<size_t>(1024, old.size() * 2), kNone);
  const size_t mask = table_.size() - 1;
  for (uint32_t e : old) {
    if (e == kNone) continue;
    size_t i = slot_of(entries_[e].id, mask);
    while (table_[i] != kNone) i = (i + 1) & mask;
    table_[i] = e;
  }
}

void MemoryTier::index_insert(uint32_t e) {
  if ((live_ + 1) * 2 > table_.size()) index_grow();  // load factor at most 1/2
  const size_t mask = table_.size() - 1;
  size_t i = slot_of(entries_[e].id, mask);
  while (table_[i] != kNone) i = (i + 1) & mask;
  table_[i] = e;
  ++live_;
}

void MemoryTier::index_erase(const KeyId& id) {
  const size_t mask = table_.size() - 1;
  size_t hole = slot_of(id, mask);
  while (entries_[table_[hole]].id != id) hole = (hole + 1) & mask;
  // Backward-shift deletion: later members of the probe run move up so no lookup stops early
  // (no tombstones to clean up later).
  for (size_t j = (hole + 1) & mask; table_[j] != kNone; j = (j + 1) & mask) {
    const size_t home = slot_of(entries_[table_[j]].id, mask);
    const bool stays = hole <= j ? (hole < home && home <= j) : (hole < home || home <= j);
    if (stays) continue;
    table_[hole] = table_[j];
    hole = j;
  }
  table_[hole] = kNone;
  --live_;
}

// --- the LRU list ----------------------------------------------------------------------------

void MemoryTier::lru_push_front(uint32_t e) {
  Entry& x = entries_[e];
  x.prev = kNone;
  x.next = head_;
  if (head_ != kNone) entries_[head_].prev = e;
  head_ = e;
  if (tail_ == kNone) tail_ = e;
}

void MemoryTier::lru_unlink(uint32_t e) {
  Entry& x = entries_[e];
  (x.prev != kNone ? entries_[x.prev].next : head_) = x.next;
  (x.next != kNone ? entries_[x.next].prev : tail_) = x.prev;
  x.prev = x.next = kNone;
}

void MemoryTier::touch(uint32_t e) {
  if (head_ == e) return;
  lru_unlink(e);
  lru_push_front(e);
}

// --- entries and blocks ----------------------------------------------------------------------

uint32_t MemoryTier::new_entry() {
  if (!free_entries_.empty()) {
    const uint32_t e = free_entries_.back();
    free_entries_.pop_back();
    return e;
  }
  entries_.emplace_back();
  return static_cast<uint32_t>(entries_.size() - 1);
}

std::byte* MemoryTier::take_block(size_t alloc) {
  auto it = pool_.find(alloc);
  if (it == pool_.end() || it->second.empty()) return nullptr;
  std::byte* data = it->second.back();
  it->second.pop_back();
  held_bytes_ -= alloc;
  return data;
}

void MemoryTier::give_block(std::byte* data, size_t alloc, std::vector<std::byte*>* to_free) {
  if (bytes_ + held_bytes_ + alloc <= capacity_) {
    pool_[alloc].push_back(data);
    held_bytes_ += alloc;
  } else {
    to_free->push_back(data);
  }
}

void MemoryTier::free_entry(uint32_t e) {
  entries_[e] = Entry{};
  free_entries_.push_back(e);
}

void MemoryTier::unlink(uint32_t e) {
  Entry& x = entries_[e];
  index_erase(x.id);
  lru_unlink(e);
  x.linked = false;
  bytes_ -= x.size;
}

void MemoryTier::unpin(uint32_t e, std::vector<std::byte*>* to_free) {
  Entry& x = entries_[e];
  if (--x.pins > 0 || x.linked) return;
  give_block(x.data, round_up(x.size), to_free);
  free_entry(e);
}

void MemoryTier::drop(uint32_t e, std::vector<std::byte*>* to_free) {
  ++entries_[e].pins;
  unlink(e);
  unpin(e, to_free);  // frees the block now unless a copy out of it is in flight
}

void MemoryTier::evict_locked(std::vector<uint32_t>* evicted, std::vector<std::byte*>* to_free) {
  while (bytes_ > capacity_ && tail_ != kNone) {
    const uint32_t e = tail_;
    ++evictions_;
    if (!sink_) {
      drop(e, to_free);
      continue;
    }
    ++entries_[e].pins;  // kept alive for the eviction sink; released by demote()
    unlink(e);
    evicted->push_back(e);
  }
}

void MemoryTier::set_eviction_sink(EvictionSink sink) {
  std::lock_guard lock(mu_);
  sink_ = std::move(sink);
}

void MemoryTier::demote(const std::vector<uint32_t>& evicted) {
  if (evicted.empty()) return;
  EvictionSink sink;
  std::vector<Frag> frags(evicted.size());
  std::vector<PutOp> ops;
  {
    std::lock_guard lock(mu_);
    sink = sink_;
    for (size_t i = 0; i < evicted.size(); ++i) {
      const Entry& x = entries_[evicted[i]];
      frags[i] = {x.data, x.size};
      ops.push_back({.id = x.id,
                     .frags = Frags(&frags[i], 1),
                     .size = x.size,
                     .checksum = x.checksum,
                     .has_checksum = x.has_checksum});
    }
  }
  if (sink) sink(ops);  // outside the lock: the sink writes to a slower tier
  std::vector<std::byte*> to_free;
  {
    std::lock_guard lock(mu_);
    for (uint32_t e : evicted) unpin(e, &to_free);
  }
  free_all(to_free);
}

// --- the tier --------------------------------------------------------------------------------

void MemoryTier::put(std::span<PutOp> ops) {
  // Three steps so the copies run outside the lock: find what is new and take blocks for it,
  // copy, insert.
  std::vector<std::byte*> blocks(ops.size(), nullptr);
  std::vector<uint8_t> is_new(ops.size(), 0);
  {
    std::lock_guard lock(mu_);
    for (size_t i = 0; i < ops.size(); ++i) {
      if (const uint32_t e = find(ops[i].id); e != kNone) {
        touch(e);
        ops[i].result = KVTIER_OK;
      } else if (ops[i].size > capacity_) {
        ops[i].result = KVTIER_ERR_NO_SPACE;
        ++errors_;
      } else {
        is_new[i] = 1;
        blocks[i] = take_block(round_up(ops[i].size));
      }
    }
  }
  for (size_t i = 0; i < ops.size(); ++i) {
    if (!is_new[i]) continue;
    const size_t alloc = round_up(ops[i].size);
    if (!blocks[i]) blocks[i] = static_cast<std::byte*>(std::aligned_alloc(align_for(alloc), alloc));
    if (blocks[i]) gather(ops[i].frags, blocks[i]);
  }
  std::vector<uint32_t> evicted;
  std::vector<std::byte*> to_free;
  {
    std::lock_guard lock(mu_);
    for (size_t i = 0; i < ops.size(); ++i) {
      if (!is_new[i]) continue;
      if (!blocks[i]) {
        ops[i].result = KVTIER_ERR_NO_MEMORY;
        ++errors_;
        continue;
      }
      ops[i].result = KVTIER_OK;
      if (find(ops[i].id) != kNone) {  // another thread (or an earlier op) stored it meanwhile
        give_block(blocks[i], round_up(ops[i].size), &to_free);
        continue;
      }
      const uint32_t e = new_entry();
      Entry& x = entries_[e];
      x.id = ops[i].id;
      x.data = blocks[i];
      x.size = ops[i].size;
      x.checksum = ops[i].checksum;
      x.has_checksum = ops[i].has_checksum;
      x.linked = true;
      index_insert(e);
      lru_push_front(e);
      bytes_ += x.size;
      evict_locked(&evicted, &to_free);
    }
  }
  free_all(to_free);
  demote(evicted);
}

void MemoryTier::get(std::span<GetOp> ops) {
  // Pin the hits, copy them out without the lock, unpin.
  std::vector<uint32_t> pinned(ops.size(), kNone);
  std::vector<const std::byte*> src(ops.size(), nullptr);
  {
    std::lock_guard lock(mu_);
    for (size_t i = 0; i < ops.size(); ++i) {
      GetOp& op = ops[i];
      const uint32_t e = find(op.id);
      if (e == kNone) {
        op.result = KVTIER_ERR_NOT_FOUND;
        continue;
      }
      Entry& x = entries_[e];
      touch(e);
      if (const int fit = fits(op, x.size); fit != KVTIER_OK) {
        op.result = fit;
      } else {
        ++x.pins;
        pinned[i] = e;
        src[i] = x.data;
        op.result = static_cast<int64_t>(x.size);
        op.checksum = x.checksum;
      }
    }
  }
  bool any = false;
  for (size_t i = 0; i < ops.size(); ++i) {
    if (pinned[i] == kNone) continue;
    scatter(src[i], static_cast<size_t>(ops[i].result), ops[i].frags);
    any = true;
  }
  if (!any) return;
  std::vector<std::byte*> to_free;
  {
    std::lock_guard lock(mu_);
    for (uint32_t e : pinned)
      if (e != kNone) unpin(e, &to_free);
  }
  free_all(to_free);
}

void MemoryTier::exists(std::span<const KeyId> ids, std::span<uint8_t> present) {
  std::lock_guard lock(mu_);
  for (size_t i = 0; i < ids.size(); ++i) present[i] = find(ids[i]) != kNone ? 1 : 0;
}

void MemoryTier::remove(std::span<const KeyId> ids, std::span<int> results) {
  std::vector<std::byte*> to_free;
  {
    std::lock_guard lock(mu_);
    for (size_t i = 0; i < ids.size(); ++i) {
      const uint32_t e = find(ids[i]);
      if (e == kNone) {
        results[i] = KVTIER_ERR_NOT_FOUND;
        continue;
      }
      drop(e, &to_free);
      results[i] = KVTIER_OK;
    }
  }
  free_all(to_free);
}

void MemoryTier::clear() {
  std::vector<std::byte*> to_free;
  {
    std::lock_guard lock(mu_);
    while (head_ != kNone) drop(head_, &to_free);
  }
  free_all(to_free);
}

TierStats MemoryTier::stats() const {
  std::lock_guard lock(mu_);
  return {live_, bytes_, capacity_, evictions_, errors_};
}

namespace {
Status make_memory_tier(const Config& config, std::unique_ptr<Tier>* out) {
  *out = std::make_unique<MemoryTier>(config.memory_capacity);
  return {};
}
}  // namespace

KVTIER_REGISTER_TIER("memory", make_memory_tier);

}  // namespace kvtier
