// kvtier-server's requests and arena: what each frame does. The connections themselves (event
// loops, deadlines, caps) are in loop.cpp.
#include <netinet/in.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <xxhash.h>

#include <algorithm>
#include <cstring>
#include <random>

#include "log.h"
#include "server.h"

#include <netinet/in.h>
#include <sys/socket.h>
#include "size_class.h"

namespace kvtier {

namespace {

using wire::Header;

// Who a control connection is, for fencing RDMA: its peer's address and its namespace (a
// client's pooled connections share both, while its QPs came through one of them).
uint64_t client_key(int fd, uint64_t ns) {
  sockaddr_storage peer{};
  socklen_t len = sizeof peer;
  uint64_t h = ns ^ 0x9E3779B97F4A7C15ull;
  if (getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &len) == 0 && peer.ss_family == AF_INET)
    h ^= uint64_t{reinterpret_cast<sockaddr_in*>(&peer)->sin_addr.s_addr} * 0xBF58476D1CE4E5B9ull;
  return h;
}

// Compares without an early exit, so the time taken does not tell how much of a guess is right.
bool same_token(const std::string& a, const std::string& b) {
  unsigned char diff = a.size() != b.size();
  for (size_t i = 0; i < a.size(); ++i) diff |= a[i] ^ b[i % std::max<size_t>(b.size(), 1)];
  return diff == 0;
}

// Holds a lock over a loop of up to 65,536 keys, letting others in every 1024, so that one
// client's big batch does not keep the table from everyone else for its whole length.
class Yielding {
 public:
  explicit Yielding(std::mutex& mu) : lock_(mu) {}
  void step() {
    if (++n_ % 1024) return;
    lock_.unlock();
    std::this_thread::yield();
    lock_.lock();
  }

 private:
  std::unique_lock<std::mutex> lock_;
  size_t n_ = 0;
};

}  // namespace

size_t Server::Ids::operator()(const Key& k) const {
  const uint64_t words[3] = {k.first, k.second.hi, k.second.lo};
  return static_cast<size_t>(XXH3_64bits_withSeed(words, sizeof words, seed));
}

// ---- frames ------------------------------------------------------------------------------

void Server::reply(Conn& c, uint16_t type, wire::Writer& out, const std::vector<iovec>& bulk) {
  Header h;
  h.type = type;
  h.length = static_cast<uint32_t>(out.data().size());
  c.reply.resize(wire::kHeaderSize);
  wire::encode_header(h, c.reply.data());
  c.reply.insert(c.reply.end(), out.data().begin(), out.data().end());
  c.out.clear();
  c.out.push_back({c.reply.data(), c.reply.size()});
  c.out.insert(c.out.end(), bulk.begin(), bulk.end());
  c.out_at = 0;
  c.phase = Conn::Phase::kReply;
  c.moved = Clock::now();
  c.bulk_end = Clock::time_point::max();
}

void Server::reply_error(Conn& c, const Status& s) {
  {
    std::lock_guard lock(mu_);
    ++errors_;
  }
  warn_limited("server: closing a connection: " + s.message());
  wire::Writer w;
  w.i32(s.code());
  w.bytes(s.message().data(), std::min<size_t>(s.message().size(), 1024));
  reply(c, wire::kError | wire::kReply, w);
  c.close_after = true;
}

void Server::on_frame(Conn& c) {
  wire::Writer out;
  Status s = c.hello ? handle(c, out) : handle_hello(c, out);
  if (!s.is_ok()) return reply_error(c, s);
  if (c.phase == Conn::Phase::kPayload)  // not set up by a PUT or GET: a plain reply
    reply(c, static_cast<uint16_t>(c.h.type | wire::kReply), out);
}

// Every connection starts with HELLO: protocol version, token and the client's namespace.
Status Server::handle_hello(Conn& c, wire::Writer& out) {
  std::string token;
  uint64_t ns = 0;
  Status s = wire::check_first_frame(c.h);
  if (s.is_ok()) s = wire::decode_hello(c.payload, &token, &ns);
  if (!s.is_ok()) return s;
  if (!same_token(token, opt_.token)) return {KVTIER_ERR_DENIED, "wrong or missing token"};
  if (authed_.fetch_add(1) >= opt_.max_connections) {
    authed_.fetch_sub(1);
    return {KVTIER_ERR_BUSY, "the server is at its limit of " +
                                 std::to_string(opt_.max_connections) + " connections"};
  }
  c.hello = true;
  c.ns = ns;
  c.client = client_key(c.fd, ns);
  out.u64(boot_id_);
  return {};
}

Status Server::handle(Conn& c, wire::Writer& out) {
  const uint64_t ns = c.ns;
  switch (c.h.type) {
    case wire::kExists: {
      std::vector<KeyId> ids;
      Status s = wire::decode_ids(c.payload, &ids);
      if (!s.is_ok()) return s;
      std::vector<uint8_t> present(ids.size());
      {
        Yielding lock(mu_);
        for (size_t i = 0; i < ids.size(); ++i, lock.step()) present[i] = map_.count({ns, ids[i]});
      }
      disk_exists(ns, ids, present);
      out.u32(static_cast<uint32_t>(ids.size()));
      for (uint8_t p : present) out.u8(p);
      return {};
    }
    case wire::kPut:
      return begin_put(c);
    case wire::kGet:
      return begin_get(c, out);
    case wire::kRemove: {
      std::vector<KeyId> ids;
      Status s = wire::decode_ids(c.payload, &ids);
      if (!s.is_ok()) return s;
      std::vector<int32_t> codes(ids.size(), KVTIER_ERR_NOT_FOUND);
      {
        Yielding lock(mu_);
        for (size_t i = 0; i < ids.size(); ++i, lock.step()) {
          auto it = map_.find({ns, ids[i]});
          if (it == map_.end()) continue;
          codes[i] = KVTIER_OK;
          drop(it);
        }
      }
      disk_remove(ns, ids, codes);
      out.u32(static_cast<uint32_t>(ids.size()));
      for (int32_t code : codes) out.i32(code);
      return {};
    }
    case wire::kClear: {
      if (!c.payload.empty()) return {KVTIER_ERR_INVALID_ARG, "CLEAR takes no payload"};
      {
        Yielding lock(mu_);
        for (auto keys = ns_keys_.find(ns); keys != ns_keys_.end(); keys = ns_keys_.find(ns)) {
          drop(map_.find(keys->second.front()));  // the last one erases the list itself
          lock.step();
        }
      }
      disk_clear(ns);
      return {};
    }
    case wire::kStats: {
      if (!c.payload.empty()) return {KVTIER_ERR_INVALID_ARG, "STATS takes no payload"};
      std::lock_guard lock(mu_);
      out.u64(map_.size());
      out.u64(used_);
      out.u64(opt_.capacity);
      out.u64(evictions_);
      out.u64(errors_);
      out.u64(expired_);
      // Since issue 15 (older clients stop reading before these).
      out.u64(hits_);
      out.u64(misses_);
      out.u64(pending_.size() + leases_.size());
      out.u64(authed_.load());
      return {};
    }
    case wire::kCommit:
      return commit(c, out);
    default:
      return handle_rdma(c, out);
  }
}

// The loop takes a PUT's values straight into their slots, reserving each slot only when its
// bytes are about to arrive (reserve_ahead), so a client that stops sending holds at most a
// window of slots, not the whole batch; on_put_bytes publishes them.
Status Server::begin_put(Conn& c) {
  uint64_t total = 0;
  Status s = wire::decode_put(c.payload, &c.put, &total);
  if (!s.is_ok()) return s;
  const size_t n = c.put.size();
  c.codes.assign(n, kUndecided);
  c.offsets.assign(n, 0);
  c.slots.assign(n, 0);
  c.bulk.clear();
  for (const wire::PutEntry& e : c.put) c.bulk.push_back({nullptr, e.length});
  c.bulk_at = c.decided = 0;
  c.phase = Conn::Phase::kBulkIn;
  const auto now = Clock::now();
  c.moved = now;
  // However the bytes trickle in, at least 16 MiB/s once the first bulk timeout has passed.
  c.bulk_end = now + std::chrono::milliseconds(opt_.bulk_timeout_ms) +
               std::chrono::milliseconds(total >> 14);
  if (n == 0) on_put_bytes(c);
  return {};
}

void Server::reserve_ahead(Conn& c) {
  constexpr uint64_t kWindow = 1 << 20;  // bytes reserved ahead of what has arrived
  uint64_t ahead = 0;
  for (size_t i = c.bulk_at; i < c.decided; ++i) ahead += c.bulk[i].iov_len;
  if (c.decided >= c.put.size() || (c.decided > c.bulk_at && ahead >= kWindow)) return;
  std::lock_guard lock(mu_);
  while (c.decided < c.put.size() && (c.decided == c.bulk_at || ahead < kWindow)) {
    const size_t i = c.decided++;
    ahead += c.put[i].length;
    if (map_.count({c.ns, c.put[i].id})) {
      c.codes[i] = wire::kPresent;  // present: the bytes are drained, the answer is OK
    } else if (allocate(c.put[i].length, &c.offsets[i], &c.slots[i])) {
      c.codes[i] = KVTIER_OK;
      c.bulk[i].iov_base = arena_ + c.offsets[i];
    } else {
      c.codes[i] = KVTIER_ERR_NO_SPACE;  // drained
    }
  }
}

void Server::on_put_bytes(Conn& c) {
  if (opt_.file) {  // to disk before the reply, from slots no one else can see yet
    std::vector<DiskPage> pages;
    for (size_t i = 0; i < c.put.size(); ++i)
      if (c.codes[i] == KVTIER_OK)
        pages.push_back({c.put[i].id, c.offsets[i], c.put[i].length, c.put[i].checksum});
    write_through(c.ns, pages);
  }
  wire::Writer out;
  out.u32(static_cast<uint32_t>(c.put.size()));
  {
    Yielding lock(mu_);
    for (size_t i = 0; i < c.put.size(); ++i) {
      lock.step();
      if (c.codes[i] == KVTIER_OK)
        publish({c.ns, c.put[i].id}, c.offsets[i], c.slots[i], c.put[i].length, c.put[i].checksum);
    }
  }
  for (int32_t code : c.codes) out.i32(code == wire::kPresent ? KVTIER_OK : code);
  c.put.clear();  // published: no longer the connection's to give back
  c.bulk.clear();
  reply(c, wire::kPut | wire::kReply, out);
}

Status Server::begin_get(Conn& c, wire::Writer& out) {
  std::vector<KeyId> ids;
  Status s = wire::decode_ids(c.payload, &ids);
  if (!s.is_ok()) return s;
  promote(c.ns, ids);
  std::vector<iovec> bulk;
  uint64_t total = 0;
  out.u32(static_cast<uint32_t>(ids.size()));
  {
    Yielding lock(mu_);
    for (const KeyId& id : ids) {
      lock.step();
      auto it = map_.find({c.ns, id});
      if (it == map_.end()) {
        ++misses_;
        out.i32(KVTIER_ERR_NOT_FOUND);
        out.u64(0);
        out.u64(0);
        continue;
      }
      ++hits_;
      const Entry& e = pin(it->second);  // the slot stays this page's until the reply is out
      c.pinned.push_back(e.offset);
      out.i32(KVTIER_OK);
      out.u64(e.length);
      out.u64(e.checksum);
      bulk.push_back({arena_ + e.offset, e.length});
      total += e.length;
    }
  }
  reply(c, wire::kGet | wire::kReply, out, bulk);
  c.bulk_end = c.moved + std::chrono::milliseconds(opt_.bulk_timeout_ms) +
               std::chrono::milliseconds(total >> 14);
  return {};
}

void Server::on_reply_sent(Conn& c) {
  if (c.h.type < latency_.size())
    latency_[c.h.type].observe(static_cast<uint64_t>(
        std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - c.started).count()));
  if (c.pinned.empty()) return;
  std::lock_guard lock(mu_);
  for (uint64_t offset : c.pinned) unpin(offset);
  c.pinned.clear();
}

void Server::on_close(Conn& c) {
  // Its tickets, and the RDMA QPs they admitted, end with the control connection.
  if (rdma_) rdma_->fence_session(c.id);
  std::lock_guard lock(mu_);
  if (c.phase == Conn::Phase::kBulkIn)  // the client went away mid-put: nothing to show
    for (size_t i = 0; i < c.decided; ++i)
      if (c.codes[i] == KVTIER_OK) free_slot(c.offsets[i], c.slots[i]);
  for (uint64_t offset : c.pinned) unpin(offset);
  c.pinned.clear();
  if (auto h = held_.find(c.id); h != held_.end()) {
    const std::unordered_set<uint64_t> ids = std::move(h->second);
    held_.erase(h);
    for (uint64_t id : ids) end_lease(id);
  }
}

// ---- the RDMA control plane: the bytes themselves never pass through here -----------------

uint64_t Server::grant_lease(uint64_t conn, Clock::time_point expiry) {
  const uint64_t id = next_lease_++;
  held_[conn].insert(id);
  // Leases ended early stay queued until their time; drop them once they outnumber the live
  // ones, so granting and giving back in a loop cannot grow the queue without bound.
  if (expiries_.size() > 2 * (pending_.size() + leases_.size()) + 4096)
    std::erase_if(expiries_, [&](const auto& e) {
      return !pending_.count(e.second) && !leases_.count(e.second);
    });
  expiries_.push_back({expiry, id});
  return id;
}

Status Server::handle_rdma(Conn& c, wire::Writer& out) {
  const uint64_t ns = c.ns;
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
    case wire::kAlloc: {
      std::vector<wire::PutEntry> entries;
      uint64_t bulk = 0;
      Status s = wire::decode_put(c.payload, &entries, &bulk);
      if (!s.is_ok()) return s;
      out.u32(static_cast<uint32_t>(entries.size()));
      Yielding lock(mu_);
      auto& held = held_[c.id];
      for (const wire::PutEntry& e : entries) {
        lock.step();
        uint64_t offset = 0, slot = 0, id = 0;
        int32_t code = KVTIER_OK;
        if (map_.count({ns, e.id}))
          code = wire::kPresent;
        else if (held.size() >= opt_.max_leases)
          code = KVTIER_ERR_BUSY;  // this connection holds its cap of leases
        else if (!allocate(e.length, &offset, &slot))
          code = KVTIER_ERR_NO_SPACE;
        if (code == KVTIER_OK) {
          id = grant_lease(c.id, now + lease);
          pending_[id] = {{ns, e.id}, offset,      slot, e.length,
                          e.checksum, now + lease, c.id, c.client};
        }
        out.i32(code);
        out.u64(offset);
        out.u64(id);
      }
      return {};
    }
    case wire::kLookup: {
      std::vector<KeyId> ids;
      Status s = wire::decode_ids(c.payload, &ids);
      if (!s.is_ok()) return s;
      promote(ns, ids);
      out.u32(static_cast<uint32_t>(ids.size()));
      Yielding lock(mu_);
      auto& held = held_[c.id];
      for (const KeyId& id : ids) {
        lock.step();
        auto it = map_.find({ns, id});
        const bool found = it != map_.end();
        ++(found ? hits_ : misses_);
        if (!found || held.size() >= opt_.max_leases) {
          out.i32(found ? KVTIER_ERR_BUSY : KVTIER_ERR_NOT_FOUND);
          for (int k = 0; k < 4; ++k) out.u64(0);
          continue;
        }
        const Entry& e = pin(it->second);
        const uint64_t id_ = grant_lease(c.id, now + lease);
        leases_[id_] = {e.offset, now + lease, c.id};
        out.i32(KVTIER_OK);
        out.u64(e.offset);
        out.u64(e.length);
        out.u64(e.checksum);
        out.u64(id_);
      }
      return {};
    }
    case wire::kRelease: {
      std::vector<uint64_t> ids;
      Status s = wire::decode_u64s(c.payload, &ids);
      if (!s.is_ok()) return s;
      Yielding lock(mu_);
      for (uint64_t id : ids) {
        lock.step();
        auto it = leases_.find(id);
        if (it == leases_.end() || it->second.conn != c.id) continue;  // ran out already
        end_lease(id);
      }
      return {};
    }
    default:
      return {KVTIER_ERR_INVALID_ARG, "unknown frame type " + std::to_string(c.h.type)};
  }
}

// A slot is published only with the bytes its owner wrote: the checksum the client gave at
// ALLOC must match the slot's bytes, else the slot may hold another namespace's freed page (a
// commit without a write) or a torn write. The slot is out of pending_ while it is hashed, so
// no lease expiry can free it under us, and mu_ is not held for the hashing.
Status Server::commit(Conn& c, wire::Writer& out) {
  std::vector<wire::CommitEntry> entries;
  Status s = wire::decode_commit(c.payload, &entries);
  if (!s.is_ok()) return s;
  std::vector<Pending> taken;
  std::vector<int32_t> codes(entries.size(), KVTIER_ERR_TIMEOUT);  // lease ran out: slot gone
  {
    std::lock_guard lock(mu_);
    for (size_t i = 0; i < entries.size(); ++i) {
      auto it = pending_.find(entries[i].lease);
      if (it == pending_.end() || it->second.conn != c.id) continue;
      taken.push_back(it->second);
      pending_.erase(it);
      held_[c.id].erase(entries[i].lease);
      codes[i] = static_cast<int32_t>(taken.size() - 1);  // index into taken, for now
    }
  }
  std::vector<uint8_t> good(taken.size(), 0);
  for (size_t i = 0; i < entries.size(); ++i)
    if (codes[i] >= 0 && entries[i].commit) {
      const Pending& p = taken[static_cast<size_t>(codes[i])];
      good[codes[i]] = checksum(arena_ + p.offset, p.length) == p.checksum;
    }
  if (opt_.file) {  // the slots are this call's until published below
    std::vector<DiskPage> pages;
    for (size_t k = 0; k < taken.size(); ++k)
      if (good[k])
        pages.push_back({taken[k].key.second, taken[k].offset, taken[k].length, taken[k].checksum});
    write_through(c.ns, pages);
  }
  std::lock_guard lock(mu_);
  for (size_t i = 0; i < entries.size(); ++i) {
    if (codes[i] < 0) continue;
    const size_t k = static_cast<size_t>(codes[i]);
    const Pending& p = taken[k];
    if (entries[i].commit && good[k]) {
      publish(p.key, p.offset, p.slot_size, p.length, p.checksum);
      codes[i] = KVTIER_OK;
    } else {
      free_slot(p.offset, p.slot_size);  // given back, or not the bytes promised
      codes[i] = entries[i].commit ? KVTIER_ERR_CORRUPT : KVTIER_OK;
      if (entries[i].commit) ++errors_;
    }
  }
  out.u32(static_cast<uint32_t>(entries.size()));
  for (int32_t code : codes) out.i32(code);
  return {};
}

// ---- the arena -----------------------------------------------------------------------------

bool Server::allocate(uint64_t bytes, uint64_t* offset, uint64_t* slot_size) {
  if (bytes > largest_page_.load(std::memory_order_relaxed)) largest_page_ = bytes;
  const uint64_t size = slot_size_for(bytes);
  if (size > opt_.capacity) return false;
  while (!free_.take(size, offset)) {
    // Full: evict the least recently used unpinned page, of any size; freed neighbours merge.
    auto victim = std::find_if(lru_list_.rbegin(), lru_list_.rend(), [&](const Key& k) {
      return !pins_.count(map_.find(k)->second.offset);
    });
    if (victim == lru_list_.rend()) return false;
    drop(map_.find(*victim));
    ++evictions_;
  }
  *slot_size = size;
  used_ += size;
  return true;
}

void Server::drop(std::unordered_map<Key, Entry, Ids>::iterator it) {
  if (pins_.count(it->second.offset)) {
    dropped_[it->second.offset] = it->second.slot_size;
  } else {
    free_slot(it->second.offset, it->second.slot_size);
  }
  lru_list_.erase(it->second.lru);
  auto keys = ns_keys_.find(it->second.ns);
  keys->second.erase(it->second.in_ns);
  if (keys->second.empty()) ns_keys_.erase(keys);
  map_.erase(it);
}

void Server::free_slot(uint64_t offset, uint64_t slot_size) {
  free_.give(offset, slot_size);
  used_ -= slot_size;
}

void Server::publish(const Key& key, uint64_t offset, uint64_t slot_size, uint64_t length,
                     uint64_t checksum) {
  if (map_.count(key)) {  // another put of the key won
    free_slot(offset, slot_size);
    return;
  }
  lru_list_.push_front(key);
  auto& keys = ns_keys_[key.first];
  keys.push_front(key);
  map_.emplace(
      key, Entry{offset, slot_size, length, checksum, key.first, lru_list_.begin(), keys.begin()});
}

const Server::Entry& Server::pin(Entry& e) {
  ++pins_[e.offset];
  lru_list_.splice(lru_list_.begin(), lru_list_, e.lru);
  return e;
}

void Server::unpin(uint64_t offset) {
  if (--pins_[offset]) return;
  pins_.erase(offset);
  if (auto d = dropped_.find(offset); d != dropped_.end()) {
    free_slot(offset, d->second);
    dropped_.erase(d);
  }
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
    unpin(l->second.offset);
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
    c = {.pages = map_.size(),
         .bytes = used_,
         .capacity = opt_.capacity,
         .hits = hits_,
         .misses = misses_,
         .evictions = evictions_,
         .errors = errors_,
         .expired_leases = expired_,
         .leases = pending_.size() + leases_.size(),
         .connections = authed_.load()};
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
