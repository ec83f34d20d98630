// kvtier-server's requests: what each frame does. The RDMA control plane is in rdma_control.cpp,
// the arena in arena.cpp, its start and stop in start.cpp; the connections themselves (event
// loops, deadlines, caps) are the remote backend's one server model (serve/event_loop.h).
#include <netinet/in.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <xxhash.h>

#include <algorithm>
#include <cstring>
#include <random>

#include "log.h"
#include "server.h"
#include "yielding.h"

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

}  // namespace

size_t Server::Ids::operator()(const Key& k) const {
  const uint64_t words[3] = {k.first, k.second.hi, k.second.lo};
  return static_cast<size_t>(XXH3_64bits_withSeed(words, sizeof words, seed));
}

// ---- frames ------------------------------------------------------------------------------

void Server::count_error(const Status& s) {
  {
    std::lock_guard lock(mu_);
    ++errors_;
  }
  warn_limited("server: closing a connection: " + s.message());
}

void Server::reply_error(Conn& c, const Status& s) {
  count_error(s);
  serve::reply_error(c, s);
}

void Server::on_frame(serve::Conn& conn) {
  Conn& c = static_cast<Conn&>(conn);
  wire::Writer out;
  Status s = c.hello ? handle(c, out) : handle_hello(c, out);
  if (!s.is_ok()) return reply_error(c, s);
  if (c.phase == Conn::Phase::kPayload)  // not set up by a PUT or GET: a plain reply
    serve::reply(c, static_cast<uint16_t>(c.h.type | wire::kReply), out.data());
}

// Every connection starts with the HELLO handshake (auth.h): first the server proves it holds
// the token, then the client does and names its namespace.
Status Server::handle_hello(Conn& c, wire::Writer& out) {
  if (!c.challenged) {
    if (c.payload.size() != wire::kNonceSize) return {KVTIER_ERR_DENIED, "malformed HELLO"};
    std::memcpy(c.client_nonce.data(), c.payload.data(), wire::kNonceSize);
    c.server_nonce = wire::make_nonce();
    c.challenged = true;
    out.bytes(c.server_nonce.data(), c.server_nonce.size());
    out.u64(boot_id_);
    const wire::Proof mine = wire::server_proof(opt_.token, c.client_nonce, c.server_nonce, boot_id_);
    out.bytes(mine.data(), mine.size());
    return {};
  }
  wire::Proof theirs{};
  if (c.payload.size() != wire::kProofSize + 8) return {KVTIER_ERR_DENIED, "malformed HELLO"};
  std::memcpy(theirs.data(), c.payload.data(), theirs.size());
  uint64_t ns = 0;
  std::memcpy(&ns, c.payload.data() + theirs.size(), 8);
  if (!wire::same_proof(theirs, wire::client_proof(opt_.token, c.client_nonce, c.server_nonce)))
    return {KVTIER_ERR_DENIED, "wrong or missing token"};
  if (Status s = loops_->admit(c); !s.is_ok()) return s;
  c.ns = ns;
  c.client = client_key(c.fd, ns);
  return {};
}

Status Server::handle_exists(Conn& c, wire::Writer& out) {
  const uint64_t ns = c.ns;
  std::vector<KeyId> ids;
  Status s = wire::decode_ids(c.payload, &ids);
  if (!s.is_ok()) return s;
  std::vector<uint8_t> present(ids.size());
  {
    Yielding lock(mu_);
    for (size_t i = 0; i < ids.size(); ++i, lock.step()) present[i] = has_page({ns, ids[i]});
  }
  disk_exists(ns, ids, present);
  out.u32(static_cast<uint32_t>(ids.size()));
  for (uint8_t p : present) out.u8(p);
  return {};
}

Status Server::handle_remove(Conn& c, wire::Writer& out) {
  const uint64_t ns = c.ns;
  std::vector<KeyId> ids;
  Status s = wire::decode_ids(c.payload, &ids);
  if (!s.is_ok()) return s;
  std::vector<int32_t> codes(ids.size(), KVTIER_ERR_NOT_FOUND);
  {
    Yielding lock(mu_);
    for (size_t i = 0; i < ids.size(); ++i, lock.step()) {
      const uint32_t page = pages_.find({ns, ids[i]});
      if (page == Pages::kNone) continue;
      codes[i] = KVTIER_OK;
      drop(page);
    }
  }
  disk_remove(ns, ids, codes);
  out.u32(static_cast<uint32_t>(ids.size()));
  for (int32_t code : codes) out.i32(code);
  return {};
}

Status Server::handle(Conn& c, wire::Writer& out) {
  const uint64_t ns = c.ns;
  switch (c.h.type) {
    case wire::kExists:
      return handle_exists(c, out);
    case wire::kPut:
      return begin_put(c);
    case wire::kGet:
      return begin_get(c, out);
    case wire::kRemove:
      return handle_remove(c, out);
    case wire::kClear: {
      if (!c.payload.empty()) return {KVTIER_ERR_INVALID_ARG, "CLEAR takes no payload"};
      {
        Yielding lock(mu_);
        for (auto list = ns_pages_.find(ns); list != ns_pages_.end(); list = ns_pages_.find(ns)) {
          drop(list->second.front());  // the last one erases the list itself
          lock.step();
        }
      }
      disk_clear(ns);
      return {};
    }
    case wire::kStats: {
      if (!c.payload.empty()) return {KVTIER_ERR_INVALID_ARG, "STATS takes no payload"};
      std::lock_guard lock(mu_);
      out.u64(pages_.size());
      out.u64(used_);
      out.u64(opt_.capacity);
      out.u64(evictions_);
      out.u64(errors_);
      out.u64(expired_);
      // Since issue 15 (older clients stop reading before these).
      out.u64(hits_);
      out.u64(misses_);
      out.u64(pending_.size() + leases_.size());
      out.u64(loops_->authenticated());
      return {};
    }
    case wire::kCommit:
      return commit(c, out);
    default:
      return handle_rdma(c, out);
  }
}

// The loop takes a PUT's values straight into their slots, reserving each slot only when its
// bytes are about to arrive (on_bulk_more), so a client that stops sending holds at most a
// window of slots, not the whole batch; on_bulk_done publishes them.
Status Server::begin_put(Conn& c) {
  uint64_t total = 0;
  Status s = wire::decode_put(c.payload, &c.put, &total);
  if (!s.is_ok()) return s;
  const size_t n = c.put.size();
  c.codes.assign(n, kUndecided);
  c.offsets.assign(n, 0);
  c.slots.assign(n, 0);
  std::vector<iovec> bulk;
  for (const wire::PutEntry& e : c.put) bulk.push_back({nullptr, e.length});
  // However the bytes trickle in, at least 16 MiB/s once the first bulk timeout has passed.
  serve::expect_bulk(c, std::move(bulk),
                     Clock::now() + std::chrono::milliseconds(opt_.bulk_timeout_ms) +
                         std::chrono::milliseconds(total >> 14));
  return {};
}

void Server::on_bulk_more(serve::Conn& conn) {
  Conn& c = static_cast<Conn&>(conn);
  constexpr uint64_t kWindow = 1 << 20;  // bytes reserved ahead of what has arrived
  uint64_t ahead = 0;
  for (size_t i = c.bulk_at; i < c.ready; ++i) ahead += c.bulk[i].iov_len;
  if (c.ready >= c.put.size() || (c.ready > c.bulk_at && ahead >= kWindow)) return;
  std::lock_guard lock(mu_);
  while (c.ready < c.put.size() && (c.ready == c.bulk_at || ahead < kWindow)) {
    const size_t i = c.ready++;
    ahead += c.put[i].length;
    if (has_page({c.ns, c.put[i].id})) {
      c.codes[i] = wire::kPresent;  // present: the bytes are drained, the answer is OK
    } else if (allocate(c.put[i].length, &c.offsets[i], &c.slots[i])) {
      c.codes[i] = KVTIER_OK;
      c.bulk[i].iov_base = arena_ + c.offsets[i];
    } else {
      c.codes[i] = KVTIER_ERR_NO_SPACE;  // drained
    }
  }
}

void Server::on_bulk_done(serve::Conn& conn) {
  Conn& c = static_cast<Conn&>(conn);
  if (opt_.file) {  // to disk before the reply, from slots no one else can see yet
    std::vector<DiskPage> pages;
    std::vector<size_t> which;
    for (size_t i = 0; i < c.put.size(); ++i)
      if (c.codes[i] == KVTIER_OK) {
        pages.push_back({c.put[i].id, c.offsets[i], c.put[i].length, c.put[i].checksum});
        which.push_back(i);
      }
    std::vector<int32_t> results(pages.size());
    write_through(c.ns, pages, results);
    std::lock_guard lock(mu_);
    for (size_t k = 0; k < which.size(); ++k)
      if (results[k]) {  // not acknowledged: the slot goes back
        free_slot(c.offsets[which[k]], c.slots[which[k]]);
        c.codes[which[k]] = results[k];
      }
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
  serve::reply(c, wire::kPut | wire::kReply, out.data());
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
      const uint32_t page = pages_.find({c.ns, id});
      if (page == Pages::kNone) {
        ++misses_;
        out.i32(KVTIER_ERR_NOT_FOUND);
        out.u64(0);
        out.u64(0);
        continue;
      }
      ++hits_;
      const Page& e = pin(page);  // the slot stays this page's until the reply is out
      c.pinned.push_back(page);
      out.i32(KVTIER_OK);
      out.u64(e.length);
      out.u64(e.checksum);
      bulk.push_back({arena_ + e.offset, e.length});
      total += e.length;
    }
  }
  serve::reply(c, wire::kGet | wire::kReply, out.data(), bulk);
  c.bulk_end = c.moved + std::chrono::milliseconds(opt_.bulk_timeout_ms) +
               std::chrono::milliseconds(total >> 14);
  return {};
}

void Server::on_reply_sent(serve::Conn& conn) {
  Conn& c = static_cast<Conn&>(conn);
  if (c.h.type < latency_.size())
    latency_[c.h.type].observe(static_cast<uint64_t>(
        std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - c.started).count()));
  if (c.pinned.empty()) return;
  std::lock_guard lock(mu_);
  for (uint32_t page : c.pinned) unpin(page);
  c.pinned.clear();
}

void Server::on_close(serve::Conn& conn) {
  Conn& c = static_cast<Conn&>(conn);
  // Its tickets, and the RDMA QPs they admitted, end with the control connection.
  if (rdma_) rdma_->fence_session(c.id);
  std::lock_guard lock(mu_);
  if (c.phase == Conn::Phase::kBulkIn)  // the client went away mid-put: nothing to show
    for (size_t i = 0; i < c.ready; ++i)
      if (c.codes[i] == KVTIER_OK) free_slot(c.offsets[i], c.slots[i]);
  for (uint32_t page : c.pinned) unpin(page);
  c.pinned.clear();
  if (auto h = held_.find(c.id); h != held_.end()) {
    const std::unordered_set<uint64_t> ids = std::move(h->second);
    held_.erase(h);
    for (uint64_t id : ids) end_lease(id);
  }
}

}  // namespace kvtier
