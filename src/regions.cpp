#include "src/regions.h"

#include <mutex>
#include <sstream>

namespace kvtier {

Status Regions::add(const void* addr, size_t len) {
  const auto start = reinterpret_cast<uintptr_t>(addr);
  if (!addr || len == 0 || start + len < start)
    return {KVTIER_ERR_INVALID_ARG, "register_buffer needs a non-NULL address and length > 0"};
  const uintptr_t end = start + len;
  std::unique_lock lock(mu_);
  auto next = ranges_.lower_bound(start);
  bool overlaps = (next != ranges_.end() && next->first < end) ||
                  (next != ranges_.begin() && std::prev(next)->second > start);
  if (overlaps) {
    std::ostringstream msg;
    msg << "buffer [" << addr << ", +" << len << ") overlaps a registered region";
    return {KVTIER_ERR_INVALID_ARG, msg.str()};
  }
  ranges_.emplace(start, end);
  return {};
}

Regions::Hold::Hold(Regions& r) : r_(r) {
  std::lock_guard lock(r_.holds_mu_);
  ticket_ = r_.next_ticket_++;
  r_.holds_.insert(ticket_);
}

Regions::Hold::~Hold() {
  std::lock_guard lock(r_.holds_mu_);
  r_.holds_.erase(ticket_);
  r_.released_.notify_all();
}

Status Regions::remove(const void* addr) {
  {
    std::unique_lock lock(mu_);
    if (ranges_.erase(reinterpret_cast<uintptr_t>(addr)) == 0) {
      std::ostringstream msg;
      msg << "no registered region starts at " << addr;
      return {KVTIER_ERR_NOT_FOUND, msg.str()};
    }
  }
  // Calls from now on fail the region's check; wait for those that may have passed it. Each is
  // bounded by its own tiers' timeouts.
  std::unique_lock lock(holds_mu_);
  const uint64_t last = next_ticket_;
  released_.wait(lock, [&] { return holds_.empty() || *holds_.begin() >= last; });
  return {};
}

bool Regions::contains_locked(uintptr_t p, size_t len) const {
  auto it = ranges_.upper_bound(p);
  if (it == ranges_.begin()) return false;
  --it;
  return p >= it->first && p + len >= p && p + len <= it->second;
}

bool Regions::contains(const void* addr, size_t len) const {
  std::shared_lock lock(mu_);
  return contains_locked(reinterpret_cast<uintptr_t>(addr), len);
}

Status Regions::check(Frags frags) const {
  std::shared_lock lock(mu_);
  for (size_t i = 0; i < frags.size(); ++i) {
    if (contains_locked(reinterpret_cast<uintptr_t>(frags[i].ptr), frags[i].len)) continue;
    std::ostringstream msg;
    msg << "fragment " << i << " [" << static_cast<const void*>(frags[i].ptr) << ", +"
        << frags[i].len << ") is outside registered memory";
    return {KVTIER_ERR_NOT_REGISTERED, msg.str()};
  }
  return {};
}

}  // namespace kvtier
