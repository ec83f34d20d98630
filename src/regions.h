// The caller memory registered for zero-copy calls: a set of disjoint [start, end) ranges.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <map>
#include <mutex>
#include <set>
#include <shared_mutex>

#include "src/keys.h"
#include "src/status.h"

namespace kvtier {

class Regions {
 public:
  // A call's hold on the memory it checked, from before its check to its last byte moved.
  // remove() returns only once every hold taken before it is released, so once
  // kvtier_unregister_buffer() returns no call writes into that memory (the engine may free it).
  class Hold {
   public:
    explicit Hold(Regions& r);
    ~Hold();
    Hold(const Hold&) = delete;
    Hold& operator=(const Hold&) = delete;

   private:
    Regions& r_;
    uint64_t ticket_;
  };

  Status add(const void* addr, size_t len);
  // Removes the region that starts at addr, then waits for the holds taken before.
  Status remove(const void* addr);
  // OK if every fragment lies inside one registered range; else KVTIER_ERR_NOT_REGISTERED
  // naming the first fragment that does not.
  Status check(Frags frags) const;
  bool contains(const void* addr, size_t len) const;

 private:
  bool contains_locked(uintptr_t p, size_t len) const;

  mutable std::shared_mutex mu_;
  std::map<uintptr_t, uintptr_t> ranges_;  // start -> end

  std::mutex holds_mu_;
  std::condition_variable released_;
  uint64_t next_ticket_ = 0;
  std::set<uint64_t> holds_;  // tickets of the holds not yet released
};

}  // namespace kvtier
