#include "memory_tier.h"

#include <cstdlib>
#include <string>

#include "log.h"

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
}  // namespace

struct MemoryTier::Block {
  Block(MemoryTier* o, std::byte* d, size_t s, size_t a) : owner(o), data(d), size(s), alloc(a) {}
  Block(const Block&) = delete;
  Block& operator=(const Block&) = delete;
  ~Block() { owner->release(data, alloc); }

  MemoryTier* owner;
  std::byte* data;
  size_t size;
  size_t alloc;
  uint64_t checksum = 0;
  bool has_checksum = false;
};

MemoryTier::MemoryTier(uint64_t capacity) : capacity_(capacity) {}

MemoryTier::~MemoryTier() {
  clear();
  for (auto& [size, blocks] : pool_)
    for (std::byte* b : blocks) std::free(b);
}

MemoryTier::BlockRef MemoryTier::new_block(size_t size) {
  const size_t alloc = round_up(size);
  std::byte* data = nullptr;
  {
    std::lock_guard lock(pool_mu_);
    auto it = pool_.find(alloc);
    if (it != pool_.end() && !it->second.empty()) {
      data = it->second.back();
      it->second.pop_back();
      pooled_bytes_ -= alloc;
    }
  }
  if (!data) data = static_cast<std::byte*>(std::aligned_alloc(align_for(alloc), alloc));
  if (!data) return nullptr;
  return std::make_shared<Block>(this, data, size, alloc);
}

void MemoryTier::release(std::byte* data, size_t alloc) {
  {
    std::lock_guard lock(pool_mu_);
    const uint64_t live = bytes_.load(std::memory_order_relaxed);
    if (pooled_bytes_ + alloc + live <= capacity_) {
      pool_[alloc].push_back(data);
      pooled_bytes_ += alloc;
      return;
    }
  }
  std::free(data);
}

void MemoryTier::set_eviction_sink(EvictionSink sink) {
  std::lock_guard lock(mu_);
  sink_ = std::move(sink);
}

void MemoryTier::evict_locked(std::vector<std::pair<KeyId, BlockRef>>* evicted) {
  while (bytes_.load(std::memory_order_relaxed) > capacity_ && !lru_.empty()) {
    auto it = map_.find(lru_.back());
    bytes_ -= it->second.block->size;
    evicted->emplace_back(it->first, std::move(it->second.block));
    map_.erase(it);
    lru_.pop_back();
    ++evictions_;
  }
}

void MemoryTier::demote(std::vector<std::pair<KeyId, BlockRef>>& evicted) {
  EvictionSink sink;
  {
    std::lock_guard lock(mu_);
    sink = sink_;
  }
  if (!sink || evicted.empty()) return;
  std::vector<Frag> frags;
  std::vector<PutOp> ops;
  frags.reserve(evicted.size());
  ops.reserve(evicted.size());
  for (auto& [id, block] : evicted) {
    frags.push_back({block->data, block->size});
    ops.push_back(
        {id, Frags(&frags.back(), 1), block->size, block->checksum, 0, block->has_checksum});
  }
  sink(ops);
}

void MemoryTier::put(std::span<PutOp> ops) {
  // Three steps so the copies run outside the lock: find what is new, copy it, insert it.
  std::vector<uint8_t> is_new(ops.size(), 0);
  {
    std::lock_guard lock(mu_);
    for (size_t i = 0; i < ops.size(); ++i) {
      auto it = map_.find(ops[i].id);
      if (it != map_.end()) {
        lru_.splice(lru_.begin(), lru_, it->second.lru);
        ops[i].result = KVTIER_OK;
      } else {
        is_new[i] = 1;
      }
    }
  }
  std::vector<BlockRef> blocks(ops.size());
  for (size_t i = 0; i < ops.size(); ++i) {
    if (!is_new[i]) continue;
    if (ops[i].size > capacity_) {
      ops[i].result = KVTIER_ERR_NO_SPACE;
      continue;
    }
    blocks[i] = new_block(ops[i].size);
    if (!blocks[i]) {
      ops[i].result = KVTIER_ERR_NO_MEMORY;
      continue;
    }
    gather(ops[i].frags, blocks[i]->data);
    blocks[i]->checksum = ops[i].checksum;
    blocks[i]->has_checksum = ops[i].has_checksum;
  }
  std::vector<std::pair<KeyId, BlockRef>> evicted;
  {
    std::lock_guard lock(mu_);
    for (size_t i = 0; i < ops.size(); ++i) {
      if (!blocks[i]) {
        if (is_new[i] && ops[i].result != KVTIER_OK) ++errors_;
        continue;
      }
      ops[i].result = KVTIER_OK;
      if (map_.count(ops[i].id)) continue;  // another thread stored it meanwhile
      lru_.push_front(ops[i].id);
      map_.emplace(ops[i].id, Entry{std::move(blocks[i]), lru_.begin()});
      bytes_ += ops[i].size;
      evict_locked(&evicted);
    }
  }
  demote(evicted);
}

void MemoryTier::get(std::span<GetOp> ops) {
  std::vector<BlockRef> found(ops.size());
  {
    std::lock_guard lock(mu_);
    for (size_t i = 0; i < ops.size(); ++i) {
      auto it = map_.find(ops[i].id);
      if (it == map_.end()) continue;
      lru_.splice(lru_.begin(), lru_, it->second.lru);
      found[i] = it->second.block;
    }
  }
  for (size_t i = 0; i < ops.size(); ++i) {
    GetOp& op = ops[i];
    const Block* b = found[i].get();
    if (!b) {
      op.result = KVTIER_ERR_NOT_FOUND;
    } else if (op.exact && b->size != op.capacity) {
      op.result = KVTIER_ERR_SIZE_MISMATCH;
    } else if (b->size > op.capacity) {
      op.result = KVTIER_ERR_BUFFER_TOO_SMALL;
    } else {
      scatter(b->data, b->size, op.frags);
      op.checksum = b->checksum;
      op.result = static_cast<int64_t>(b->size);
    }
  }
}

void MemoryTier::exists(std::span<const KeyId> ids, std::span<uint8_t> present) {
  std::lock_guard lock(mu_);
  for (size_t i = 0; i < ids.size(); ++i) present[i] = map_.count(ids[i]) ? 1 : 0;
}

void MemoryTier::remove(std::span<const KeyId> ids, std::span<int> results) {
  std::vector<BlockRef> dropped;  // released after the lock
  std::lock_guard lock(mu_);
  for (size_t i = 0; i < ids.size(); ++i) {
    auto it = map_.find(ids[i]);
    if (it == map_.end()) {
      results[i] = KVTIER_ERR_NOT_FOUND;
      continue;
    }
    bytes_ -= it->second.block->size;
    lru_.erase(it->second.lru);
    dropped.push_back(std::move(it->second.block));
    map_.erase(it);
    results[i] = KVTIER_OK;
  }
}

void MemoryTier::clear() {
  std::unordered_map<KeyId, Entry, KeyIdHash> dropped;
  std::lock_guard lock(mu_);
  dropped.swap(map_);
  lru_.clear();
  bytes_ = 0;
}

TierStats MemoryTier::stats() const {
  std::lock_guard lock(mu_);
  return {map_.size(), bytes_.load(), capacity_, evictions_, errors_};
}

namespace {
Status make_memory_tier(const Config& config, std::unique_ptr<Tier>* out) {
  *out = std::make_unique<MemoryTier>(config.memory_capacity);
  return {};
}
}  // namespace

KVTIER_REGISTER_TIER("memory", make_memory_tier);

}  // namespace kvtier
