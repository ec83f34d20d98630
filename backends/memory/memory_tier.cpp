#include "backends/memory/memory_tier.h"

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
void free_all(const std::vector<std::byte*>& blocks) {
  for (std::byte* b : blocks) std::free(b);
}
}  // namespace

MemoryTier::MemoryTier(uint64_t capacity) : capacity_(capacity) {}

MemoryTier::~MemoryTier() {
  // No call is in flight: nothing is pinned, every page is linked.
  for (uint32_t e = table_.lru_tail(); e != kNone; e = table_.more_recent(e))
    std::free(table_.page(e).data);
  for (auto& [alloc, blocks] : pool_) free_all(blocks);
}

// --- pages and blocks ------------------------------------------------------------------------

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

void MemoryTier::unlink(uint32_t e) {
  bytes_ -= table_.page(e).size;
  table_.unlink(e);
}

void MemoryTier::unpin(uint32_t e, std::vector<std::byte*>* to_free) {
  if (!table_.unpin(e)) return;
  give_block(table_.page(e).data, round_up(table_.page(e).size), to_free);
  table_.release(e);
}

void MemoryTier::drop(uint32_t e, std::vector<std::byte*>* to_free) {
  table_.pin(e);
  unlink(e);
  unpin(e, to_free);  // frees the block now unless a copy out of it is in flight
}

void MemoryTier::evict_locked(std::vector<uint32_t>* evicted, std::vector<std::byte*>* to_free) {
  while (bytes_ > capacity_ && table_.lru_tail() != kNone) {
    const uint32_t e = table_.lru_tail();
    ++evictions_;
    if (!sink_) {
      drop(e, to_free);
      continue;
    }
    leave(e, evicted);
  }
}

void MemoryTier::leave(uint32_t e, std::vector<uint32_t>* evicted) {
  table_.pin(e);  // kept alive for the eviction sink and readers; released by demote()
  unlink(e);
  leaving_.emplace(table_.key(e), e);
  evicted->push_back(e);
}

uint32_t MemoryTier::find_any(const KeyId& id) const {
  if (const uint32_t e = table_.find(id); e != kNone) return e;
  const auto it = leaving_.find(id);
  return it != leaving_.end() ? it->second : kNone;
}

size_t MemoryTier::flush(std::chrono::steady_clock::time_point deadline) {
  constexpr size_t kBatch = 64;
  for (;;) {
    std::vector<uint32_t> batch;
    {
      std::lock_guard lock(mu_);
      if (!sink_) return 0;
      if (std::chrono::steady_clock::now() >= deadline) return table_.size();
      while (batch.size() < kBatch && table_.lru_tail() != kNone) leave(table_.lru_tail(), &batch);
    }
    if (batch.empty()) return 0;
    demote(batch);
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
      const Page& x = table_.page(evicted[i]);
      frags[i] = {x.data, x.size};
      ops.push_back({.id = table_.key(evicted[i]),
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
    for (uint32_t e : evicted) {
      // Written down (or failed there): no longer this tier's, unless a remove took it already.
      if (auto it = leaving_.find(table_.key(e)); it != leaving_.end() && it->second == e)
        leaving_.erase(it);
      unpin(e, &to_free);
    }
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
      if (const uint32_t e = table_.find(ops[i].id); e != kNone) {
        table_.touch(e);
        ops[i].result = KVTIER_OK;
      } else if (leaving_.count(ops[i].id)) {
        ops[i].result = KVTIER_OK;  // on its way down: the lower tier will hold it
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
    if (!blocks[i])
      blocks[i] = static_cast<std::byte*>(std::aligned_alloc(align_for(alloc), alloc));
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
      if (find_any(ops[i].id) != kNone) {  // another thread (or an earlier op) stored it meanwhile
        give_block(blocks[i], round_up(ops[i].size), &to_free);
        continue;
      }
      table_.insert(ops[i].id, {.data = blocks[i],
                                .size = ops[i].size,
                                .checksum = ops[i].checksum,
                                .has_checksum = ops[i].has_checksum});
      bytes_ += ops[i].size;
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
      const uint32_t e = find_any(op.id);
      if (e == kNone) {
        op.result = KVTIER_ERR_NOT_FOUND;
        continue;
      }
      const Page& x = table_.page(e);
      if (table_.find(op.id) == e) table_.touch(e);  // a leaving page has no LRU place
      if (const int fit = fits(op, x.size); fit != KVTIER_OK) {
        op.result = fit;
      } else {
        table_.pin(e);
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
  for (size_t i = 0; i < ids.size(); ++i) present[i] = find_any(ids[i]) != kNone ? 1 : 0;
}

void MemoryTier::remove(std::span<const KeyId> ids, std::span<int> results) {
  std::vector<std::byte*> to_free;
  {
    std::lock_guard lock(mu_);
    for (size_t i = 0; i < ids.size(); ++i) {
      const uint32_t e = table_.find(ids[i]);
      if (e != kNone) {
        drop(e, &to_free);
        results[i] = KVTIER_OK;
      } else {
        results[i] = leaving_.erase(ids[i]) ? KVTIER_OK : KVTIER_ERR_NOT_FOUND;
      }
    }
  }
  free_all(to_free);
}

Status MemoryTier::clear() {
  std::vector<std::byte*> to_free;
  {
    std::lock_guard lock(mu_);
    while (table_.lru_head() != kNone) drop(table_.lru_head(), &to_free);
    leaving_.clear();  // demote() still holds their pins
  }
  free_all(to_free);
  return {};
}

TierStats MemoryTier::stats() const {
  std::lock_guard lock(mu_);
  return {table_.size(), bytes_, capacity_, evictions_, errors_};
}

namespace {
Status make_memory_tier(const Config& config, std::unique_ptr<Tier>* out) {
  *out = std::make_unique<MemoryTier>(config.section<MemoryOptions>().capacity);
  return {};
}
}  // namespace

KVTIER_REGISTER_TIER("memory", make_memory_tier);
KVTIER_REGISTER_OPTIONS(memory, {size_option<MemoryOptions>("MEMORY_CAPACITY", "",
                                                            &MemoryOptions::capacity, 1)});

}  // namespace kvtier
