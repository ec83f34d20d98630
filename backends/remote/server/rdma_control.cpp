// kvtier-server's RDMA control plane: RDMA_INFO, ALLOC, COMMIT, LOOKUP and RELEASE, on the arena
// and its leases (leases.h). The bytes themselves move one-sided between the client and the arena
// (rdma/listener.cpp).
#include <algorithm>

#include "src/log.h"
#include "backends/remote/server/server.h"
#include "backends/remote/server/yielding.h"

namespace kvtier {

// ---- the RDMA control plane: the bytes themselves never pass through here -----------------

Status Server::handle_rdma(Conn& c, wire::Writer& out) {
  const auto now = Clock::now();
  const auto lease = std::chrono::milliseconds(opt_.lease_ms);
  switch (c.h.type) {
    case wire::kRdmaInfo: {
      if (!c.payload.empty()) return {KVTIER_ERR_INVALID_ARG, "RDMA_INFO takes no payload"};
      if (!rdma_ || !rdma_->serving()) {  // no device (left): the client moves bytes over TCP
        out.i32(KVTIER_ERR_UNSUPPORTED);
        out.u32(0);
        out.u64(0);
        return {};
      }
      out.i32(KVTIER_OK);
      out.u32(rdma_->port());
      out.u64(rdma_->issue_ticket({c.id, c.client}));  // one channel; ends with this connection
      return {};
    }
    case wire::kAlloc:
      return handle_alloc(c, out, now + lease);
    case wire::kLookup:
      return handle_lookup(c, out, now + lease);
    case wire::kRelease: {
      std::vector<uint64_t> ids;
      Status s = wire::decode_u64s(c.payload, &ids);
      if (!s.is_ok()) return s;
      Yielding lock(mu_);
      for (uint64_t id : ids) {
        lock.step();
        leases_.release(c.id, id);  // or it ran out already
      }
      return {};
    }
    default:
      return {KVTIER_ERR_INVALID_ARG, "unknown frame type " + std::to_string(c.h.type)};
  }
}

// ALLOC: a slot per page under a lease until `expiry`, or the code saying why not.
Status Server::handle_alloc(Conn& c, wire::Writer& out, Clock::time_point expiry) {
  const uint64_t ns = c.ns;
  std::vector<wire::PutEntry> entries;
  uint64_t bulk = 0;
  Status s = wire::decode_put(c.payload, &entries, &bulk);
  if (!s.is_ok()) return s;
  out.u32(static_cast<uint32_t>(entries.size()));
  Yielding lock(mu_);
  for (const wire::PutEntry& e : entries) {
    lock.step();
    uint64_t offset = 0, slot = 0, id = 0;
    int32_t code = KVTIER_OK;
    if (arena_.has_page({ns, e.id}))
      code = wire::kPresent;
    else if (leases_.full(c.id))
      code = KVTIER_ERR_BUSY;  // this connection holds its cap of leases
    else if (!arena_.allocate(e.length, &offset, &slot))
      code = KVTIER_ERR_NO_SPACE;
    if (code == KVTIER_OK)
      id = leases_.grant_alloc(c.id, {{ns, e.id}, offset, slot, e.length, e.checksum, c.client},
                               expiry);
    out.i32(code);
    out.u64(offset);
    out.u64(id);
  }
  return {};
}

// LOOKUP: each page found is pinned under a lease until `expiry` for the client's RDMA reads.
Status Server::handle_lookup(Conn& c, wire::Writer& out, Clock::time_point expiry) {
  const uint64_t ns = c.ns;
  std::vector<KeyId> ids;
  Status s = wire::decode_ids(c.payload, &ids);
  if (!s.is_ok()) return s;
  promote(ns, ids);
  out.u32(static_cast<uint32_t>(ids.size()));
  Yielding lock(mu_);
  for (const KeyId& id : ids) {
    lock.step();
    const uint32_t page = arena_.find({ns, id});
    const bool found = page != Arena::kNone;
    ++(found ? hits_ : misses_);
    if (!found || leases_.full(c.id)) {
      out.i32(found ? KVTIER_ERR_BUSY : KVTIER_ERR_NOT_FOUND);
      for (int k = 0; k < 4; ++k) out.u64(0);
      continue;
    }
    const uint64_t lease = leases_.grant_lookup(c.id, page, expiry);  // pins the page
    const Arena::Page& e = arena_.page(page);
    out.i32(KVTIER_OK);
    out.u64(e.offset);
    out.u64(e.length);
    out.u64(e.checksum);
    out.u64(lease);
  }
  return {};
}

// A slot is published only with the bytes its owner wrote: the checksum the client gave at
// ALLOC must match the slot's bytes, else the slot may hold another namespace's freed page (a
// commit without a write) or a torn write. The slot is taken out of its lease while it is
// hashed, so no lease expiry can free it under us, and mu_ is not held for the hashing.
Status Server::commit(Conn& c, wire::Writer& out) {
  std::vector<wire::CommitEntry> entries;
  Status s = wire::decode_commit(c.payload, &entries);
  if (!s.is_ok()) return s;
  std::vector<Leases::Alloc> taken;
  std::vector<int32_t> codes(entries.size(), KVTIER_ERR_TIMEOUT);  // lease ran out: slot gone
  {
    std::lock_guard lock(mu_);
    for (size_t i = 0; i < entries.size(); ++i) {
      Leases::Alloc slot;
      if (!leases_.take(c.id, entries[i].lease, &slot)) continue;
      taken.push_back(slot);
      codes[i] = static_cast<int32_t>(taken.size() - 1);  // index into taken, for now
    }
  }
  std::vector<uint8_t> good(taken.size(), 0);
  for (size_t i = 0; i < entries.size(); ++i)
    if (codes[i] >= 0 && entries[i].commit) {
      const Leases::Alloc& p = taken[static_cast<size_t>(codes[i])];
      good[codes[i]] = checksum(arena_.base() + p.offset, p.length) == p.checksum;
    }
  std::vector<int32_t> disk_code(taken.size(), KVTIER_OK);
  if (disk_) {  // the slots are this call's until published below
    std::vector<Disk::Page> pages;
    std::vector<size_t> which;
    for (size_t k = 0; k < taken.size(); ++k)
      if (good[k]) {
        pages.push_back({taken[k].key.second, arena_.base() + taken[k].offset, taken[k].length,
                         taken[k].checksum});
        which.push_back(k);
      }
    std::vector<int32_t> results(pages.size());
    write_through(c.ns, pages, results);
    for (size_t j = 0; j < which.size(); ++j) disk_code[which[j]] = results[j];
  }
  std::lock_guard lock(mu_);
  for (size_t i = 0; i < entries.size(); ++i) {
    if (codes[i] < 0) continue;
    const size_t k = static_cast<size_t>(codes[i]);
    const Leases::Alloc& p = taken[k];
    if (entries[i].commit && good[k] && disk_code[k] == KVTIER_OK) {
      arena_.publish(p.key, p.offset, p.slot_size, p.length, p.checksum);
      codes[i] = KVTIER_OK;
    } else if (entries[i].commit && good[k]) {  // not on disk: not acknowledged
      arena_.free_slot(p.offset, p.slot_size);
      codes[i] = disk_code[k];
    } else {
      arena_.free_slot(p.offset, p.slot_size);  // given back, or not the bytes promised
      codes[i] = entries[i].commit ? KVTIER_ERR_CORRUPT : KVTIER_OK;
      if (entries[i].commit) ++errors_;
    }
  }
  out.u32(static_cast<uint32_t>(entries.size()));
  for (int32_t code : codes) out.i32(code);
  return {};
}

}  // namespace kvtier
