// The caller memory registered for zero-copy calls: a set of disjoint [start, end) ranges.
#pragma once

#include <cstdint>
#include <map>
#include <shared_mutex>

#include "keys.h"
#include "status.h"

namespace kvtier {

class Regions {
 public:
  Status add(const void* addr, size_t len);
  Status remove(const void* addr);
  // OK if every fragment lies inside one registered range; else KVTIER_ERR_NOT_REGISTERED
  // naming the first fragment that does not.
  Status check(Frags frags) const;
  bool contains(const void* addr, size_t len) const;

 private:
  bool contains_locked(uintptr_t p, size_t len) const;

  mutable std::shared_mutex mu_;
  std::map<uintptr_t, uintptr_t> ranges_;  // start -> end
};

}  // namespace kvtier
