// kvtier-server's arena (arena.h): its slots and the table of its pages.
#include "backends/remote/server/arena.h"

#include <sys/mman.h>
#include <xxhash.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "src/size_class.h"

namespace kvtier {

size_t Arena::Ids::operator()(const Key& k) const {
  const uint64_t words[3] = {k.first, k.second.hi, k.second.lo};
  return static_cast<size_t>(XXH3_64bits_withSeed(words, sizeof words, seed));
}

Arena::Arena(uint64_t capacity, uint64_t seed)
    : capacity_(capacity), pages_(Ids{seed}), ns_pages_(16, Ids{seed}), free_(capacity) {}

Arena::~Arena() {
  if (base_) munmap(base_, capacity_);
}

Status Arena::map() {
  void* p = mmap(nullptr, capacity_, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED)
    return {KVTIER_ERR_NO_MEMORY, "cannot map an arena of " + std::to_string(capacity_) +
                                      " bytes: " + std::strerror(errno)};
  base_ = static_cast<std::byte*>(p);
  return {};
}

bool Arena::allocate(uint64_t bytes, uint64_t* offset, uint64_t* slot_size) {
  if (bytes > largest_page_.load(std::memory_order_relaxed)) largest_page_ = bytes;
  const uint64_t size = slot_size_for(bytes);
  if (size > capacity_) return false;
  while (!free_.take(size, offset)) {
    // Full: evict the least recently used unpinned page, of any size; freed neighbours merge.
    uint32_t victim = pages_.lru_tail();
    while (victim != kNone && pages_.pinned(victim)) victim = pages_.more_recent(victim);
    if (victim == kNone) return false;
    drop(victim);
    ++evictions_;
  }
  *slot_size = size;
  used_ += size;
  return true;
}

void Arena::drop(uint32_t page) {
  auto list = ns_pages_.find(pages_.key(page).first);
  list->second.erase(pages_.page(page).in_ns);
  if (list->second.empty()) ns_pages_.erase(list);
  pages_.pin(page);
  pages_.unlink(page);
  unpin(page);  // the slot is freed now, or when the last reply sending its bytes is out
}

uint32_t Arena::any_page(uint64_t ns) const {
  auto list = ns_pages_.find(ns);
  return list == ns_pages_.end() ? kNone : list->second.front();
}

void Arena::free_slot(uint64_t offset, uint64_t slot_size) {
  free_.give(offset, slot_size);
  used_ -= slot_size;
}

void Arena::publish(const Key& key, uint64_t offset, uint64_t slot_size, uint64_t length,
                    uint64_t checksum) {
  if (has_page(key)) {  // another put of the key won
    free_slot(offset, slot_size);
    return;
  }
  const uint32_t page = pages_.insert(key, {{offset, slot_size, length, checksum}, {}});
  auto& list = ns_pages_[key.first];
  list.push_front(page);
  pages_.page(page).in_ns = list.begin();
}

const Arena::Page& Arena::pin(uint32_t page) {
  pages_.pin(page);
  pages_.touch(page);
  return pages_.page(page);
}

void Arena::unpin(uint32_t page) {
  if (!pages_.unpin(page)) return;
  free_slot(pages_.page(page).offset, pages_.page(page).slot_size);
  pages_.release(page);
}

}  // namespace kvtier
