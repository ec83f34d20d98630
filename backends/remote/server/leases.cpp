// kvtier-server's leases (leases.h).
#include "backends/remote/server/leases.h"

#include <algorithm>

namespace kvtier {

Leases::Leases(Arena& arena, unsigned max_per_conn, std::function<void(uint64_t)> fence)
    : arena_(arena), max_per_conn_(max_per_conn), fence_(std::move(fence)) {}

bool Leases::full(uint64_t conn) const {
  auto h = held_.find(conn);
  return h != held_.end() && h->second.size() >= max_per_conn_;
}

uint64_t Leases::grant(uint64_t conn, Clock::time_point expiry) {
  const uint64_t id = next_++;
  held_[conn].insert(id);
  // Leases ended early stay queued until their time; drop them once they outnumber the live
  // ones, so granting and giving back in a loop cannot grow the queue without bound.
  if (expiries_.size() > 2 * size() + 4096)
    std::erase_if(expiries_, [&](const auto& e) {
      return !allocs_.count(e.second) && !lookups_.count(e.second);
    });
  expiries_.push_back({expiry, id});
  return id;
}

uint64_t Leases::grant_alloc(uint64_t conn, const Alloc& slot, Clock::time_point expiry) {
  const uint64_t id = grant(conn, expiry);
  allocs_[id] = {slot, conn};
  return id;
}

uint64_t Leases::grant_lookup(uint64_t conn, uint32_t page, Clock::time_point expiry) {
  arena_.pin(page);
  const uint64_t id = grant(conn, expiry);
  lookups_[id] = {page, conn};
  return id;
}

bool Leases::take(uint64_t conn, uint64_t id, Alloc* slot) {
  auto it = allocs_.find(id);
  if (it == allocs_.end() || it->second.conn != conn) return false;
  *slot = it->second;
  allocs_.erase(it);
  held_[conn].erase(id);
  return true;
}

bool Leases::release(uint64_t conn, uint64_t id) {
  auto it = lookups_.find(id);
  if (it == lookups_.end() || it->second.conn != conn) return false;  // ran out already
  return end(id);
}

void Leases::end_connection(uint64_t conn) {
  if (auto h = held_.find(conn); h != held_.end()) {
    const std::unordered_set<uint64_t> ids = std::move(h->second);
    held_.erase(h);
    for (uint64_t id : ids) end(id);
  }
}

bool Leases::end(uint64_t id) {
  uint64_t conn = 0;
  if (auto p = allocs_.find(id); p != allocs_.end()) {
    // The client may still be writing into the slot: fence its QPs before anyone can reuse it.
    fence_(p->second.client);
    arena_.free_slot(p->second.offset, p->second.slot_size);
    conn = p->second.conn;
    allocs_.erase(p);
  } else if (auto l = lookups_.find(id); l != lookups_.end()) {
    arena_.unpin(l->second.page);
    conn = l->second.conn;
    lookups_.erase(l);
  } else {
    return false;
  }
  if (auto h = held_.find(conn); h != held_.end()) h->second.erase(id);
  return true;
}

void Leases::expire(Clock::time_point now) {
  while (!expiries_.empty() && expiries_.front().first <= now) {
    expired_ += end(expiries_.front().second);
    expiries_.pop_front();
  }
}

}  // namespace kvtier
