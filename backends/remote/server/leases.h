// kvtier-server's leases, for the RDMA control plane: an ALLOC lease holds a slot the client
// writes one-sided until its COMMIT; a LOOKUP lease holds a pin on a page the client reads
// one-sided until its RELEASE. Each lease belongs to the control connection that asked for it
// and ends in exactly one way: taken by COMMIT, RELEASE, the end of its connection, or its time
// running out; what it held goes back to the arena then (a slot freed, a pin dropped).
//
// One lease time for all, so leases end in the order granted: a queue of (end, id) in that
// order lets expire() pop what ran out instead of scanning every lease. A connection holds at
// most max_per_conn leases, so one client cannot pin the whole arena.
//
// Not thread-safe: the server's mu_ guards every call, as it guards the arena.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include "backends/remote/server/arena.h"

namespace kvtier {

class Leases {
 public:
  using Clock = std::chrono::steady_clock;
  // A slot handed out by ALLOC, written by the client, not yet committed.
  struct Alloc {
    Arena::Key key;
    uint64_t offset, slot_size, length, checksum;
    uint64_t client;  // the client's RDMA identity (rdma::Owner): fenced before the slot goes back
  };

  // `fence(client)`: called before an ALLOC lease's slot goes back other than by COMMIT, so a
  // client still writing into it is cut off before the slot is anyone else's.
  Leases(Arena& arena, unsigned max_per_conn, std::function<void(uint64_t client)> fence);

  // Whether the connection holds its cap of leases (a new one is refused, BUSY).
  bool full(uint64_t conn) const;
  // A lease of the connection until `expiry` on a slot from arena.allocate(), now the lease's;
  // its id (never 0). REQUIRES !full(conn).
  uint64_t grant_alloc(uint64_t conn, const Alloc& slot, Clock::time_point expiry);
  // A lease of the connection until `expiry` pinning `page` (a page the arena found); its id.
  // REQUIRES !full(conn).
  uint64_t grant_lookup(uint64_t conn, uint32_t page, Clock::time_point expiry);

  // COMMIT: the connection's ALLOC lease `id` ends, its slot now the caller's (to publish or
  // free); false if it has no such lease (it ran out, or is another connection's).
  bool take(uint64_t conn, uint64_t id, Alloc* slot);
  // RELEASE: the connection's LOOKUP lease `id` ends, its pin dropped; false if none.
  bool release(uint64_t conn, uint64_t id);
  // The connection is gone: every lease it holds ends.
  void end_connection(uint64_t conn);
  // Ends the leases whose time ran out by `now`, oldest first.
  void expire(Clock::time_point now);

  size_t size() const { return allocs_.size() + lookups_.size(); }  // leases held
  uint64_t expired() const { return expired_; }  // leases that ran out, since start

 private:
  struct Lookup {
    uint32_t page;
    uint64_t conn;
  };
  struct Held : Alloc {
    uint64_t conn;
  };
  uint64_t grant(uint64_t conn, Clock::time_point expiry);
  bool end(uint64_t id);  // gives back what it holds; false if it ended already

  Arena& arena_;
  const unsigned max_per_conn_;
  const std::function<void(uint64_t)> fence_;
  std::unordered_map<uint64_t, Held> allocs_;     // lease id -> slot reserved by ALLOC
  std::unordered_map<uint64_t, Lookup> lookups_;  // lease id -> page pinned by LOOKUP
  // connection -> its leases; so a connection's end, and the cap, cost its own leases only
  std::unordered_map<uint64_t, std::unordered_set<uint64_t>> held_;
  // (end, lease id) in the order granted; ended ones are skipped when their time comes.
  std::deque<std::pair<Clock::time_point, uint64_t>> expiries_;
  uint64_t next_ = 1;
  uint64_t expired_ = 0;
};

}  // namespace kvtier
