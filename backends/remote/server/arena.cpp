// kvtier-server's arena: slots by size class, the pages' table, pins and leases, and the
// counters /metrics renders.
#include <algorithm>
#include <iterator>

#include "log.h"
#include "server.h"
#include "size_class.h"

namespace kvtier {

// ---- the arena -----------------------------------------------------------------------------

bool Server::allocate(uint64_t bytes, uint64_t* offset, uint64_t* slot_size) {
  if (bytes > largest_page_.load(std::memory_order_relaxed)) largest_page_ = bytes;
  const uint64_t size = slot_size_for(bytes);
  if (size > opt_.capacity) return false;
  while (!free_.take(size, offset)) {
    // Full: evict the least recently used unpinned page, of any size; freed neighbours merge.
    uint32_t victim = pages_.lru_tail();
    while (victim != Pages::kNone && pages_.pinned(victim)) victim = pages_.more_recent(victim);
    if (victim == Pages::kNone) return false;
    drop(victim);
    ++evictions_;
  }
  *slot_size = size;
  used_ += size;
  return true;
}

void Server::drop(uint32_t page) {
  auto list = ns_pages_.find(pages_.key(page).first);
  list->second.erase(pages_.page(page).in_ns);
  if (list->second.empty()) ns_pages_.erase(list);
  pages_.pin(page);
  pages_.unlink(page);
  unpin(page);  // the slot is freed now, or when the last reply sending its bytes is out
}

void Server::free_slot(uint64_t offset, uint64_t slot_size) {
  free_.give(offset, slot_size);
  used_ -= slot_size;
}

void Server::publish(const Key& key, uint64_t offset, uint64_t slot_size, uint64_t length,
                     uint64_t checksum) {
  if (has_page(key)) {  // another put of the key won
    free_slot(offset, slot_size);
    return;
  }
  const uint32_t page = pages_.insert(key, {offset, slot_size, length, checksum, {}});
  auto& list = ns_pages_[key.first];
  list.push_front(page);
  pages_.page(page).in_ns = list.begin();
}

const Server::Page& Server::pin(uint32_t page) {
  pages_.pin(page);
  pages_.touch(page);
  return pages_.page(page);
}

void Server::unpin(uint32_t page) {
  if (!pages_.unpin(page)) return;
  free_slot(pages_.page(page).offset, pages_.page(page).slot_size);
  pages_.release(page);
}

bool Server::end_lease(uint64_t id) {
  uint64_t conn = 0;
  if (auto p = pending_.find(id); p != pending_.end()) {
    // The client may still be writing into the slot: fence its QPs before anyone can reuse it.
    if (rdma_) rdma_->fence_client(p->second.client);
    free_slot(p->second.offset, p->second.slot_size);
    conn = p->second.conn;
    pending_.erase(p);
  } else if (auto l = leases_.find(id); l != leases_.end()) {
    unpin(l->second.page);
    conn = l->second.conn;
    leases_.erase(l);
  } else {
    return false;
  }
  if (auto h = held_.find(conn); h != held_.end()) h->second.erase(id);
  return true;
}

void Server::reap(Clock::time_point now) {
  while (!expiries_.empty() && expiries_.front().first <= now) {
    expired_ += end_lease(expiries_.front().second);
    expiries_.pop_front();
  }
}

std::string Server::metrics_text() {
  ServerCounters c;
  {
    std::lock_guard lock(mu_);
    c = {.pages = pages_.size(),
         .bytes = used_,
         .capacity = opt_.capacity,
         .hits = hits_,
         .misses = misses_,
         .evictions = evictions_,
         .errors = errors_,
         .expired_leases = expired_,
         .leases = pending_.size() + leases_.size(),
         .connections = loops_ ? loops_->authenticated() : 0};
  }
  std::string out;
  render_counters(c, &out);
  out += "# HELP kvtier_server_request_seconds request latency, header in to reply out\n";
  out += "# TYPE kvtier_server_request_seconds histogram\n";
  static const char* const kOps[] = {"",       "hello",  "exists", "put",       "get",
                                     "remove", "clear",  "stats",  "rdma_info", "alloc",
                                     "commit", "lookup", "release"};
  static_assert(std::size(kOps) == wire::kRelease + 1);
  for (size_t t = wire::kHello; t < latency_.size(); ++t)
    latency_[t].render("kvtier_server_request_seconds", kOps[t], &out);
  return out;
}

}  // namespace kvtier
