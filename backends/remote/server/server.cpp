// kvtier-server's requests: what each frame does, on the arena (arena.h) and the disk under it
// (disk.h). The RDMA control plane and its leases are in rdma_control.cpp, its start and stop in
// start.cpp; the connections themselves (event loops, deadlines, caps) are the remote backend's
// one server model (serve/event_loop.h).
#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstring>
#include <iterator>

#include "src/log.h"
#include "backends/remote/server/server.h"
#include "backends/remote/server/yielding.h"

namespace kvtier {

namespace {

using wire::Header;
constexpr uint64_t kScratch = 64ull << 20;  // bytes of pages a promotion reads from disk at once

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
    const wire::Proof mine =
        wire::server_proof(opt_.token, c.client_nonce, c.server_nonce, boot_id_);
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
    for (size_t i = 0; i < ids.size(); ++i, lock.step()) present[i] = arena_.has_page({ns, ids[i]});
  }
  if (disk_) disk_->exists(ns, ids, present);
  out.u32(static_cast<uint32_t>(ids.size()));
  for (uint8_t p : present) out.u8(p);
  return {};
}

// A size costs a lookup, not the value's bytes: Mooncake Store's get(key) asks it before every
// read. Neither a hit nor a promotion, as EXISTS.
Status Server::handle_sizes(Conn& c, wire::Writer& out) {
  std::vector<KeyId> ids;
  Status s = wire::decode_ids(c.payload, &ids);
  if (!s.is_ok()) return s;
  std::vector<int64_t> sizes(ids.size(), KVTIER_ERR_NOT_FOUND);
  {
    Yielding lock(mu_);
    for (size_t i = 0; i < ids.size(); ++i, lock.step())
      if (const uint32_t page = arena_.find({c.ns, ids[i]}); page != Arena::kNone)
        sizes[i] = static_cast<int64_t>(arena_.page(page).length);
  }
  if (disk_) disk_->sizes(c.ns, ids, sizes);
  out.u32(static_cast<uint32_t>(ids.size()));
  for (int64_t size : sizes) out.i64(size);
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
      const uint32_t page = arena_.find({ns, ids[i]});
      if (page == Arena::kNone) continue;
      codes[i] = KVTIER_OK;
      arena_.drop(page);
    }
  }
  if (disk_) disk_->remove(ns, ids, codes);
  out.u32(static_cast<uint32_t>(ids.size()));
  for (int32_t code : codes) out.i32(code);
  return {};
}

Status Server::handle(Conn& c, wire::Writer& out) {
  const uint64_t ns = c.ns;
  switch (c.h.type) {
    case wire::kExists:
      return handle_exists(c, out);
    case wire::kSizes:
      return handle_sizes(c, out);
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
        for (uint32_t page; (page = arena_.any_page(ns)) != Arena::kNone; lock.step())
          arena_.drop(page);
      }
      if (disk_) disk_->clear(ns);
      return {};
    }
    case wire::kStats: {
      if (!c.payload.empty()) return {KVTIER_ERR_INVALID_ARG, "STATS takes no payload"};
      std::lock_guard lock(mu_);
      out.u64(arena_.pages());
      out.u64(arena_.used());
      out.u64(arena_.capacity());
      out.u64(arena_.evictions());
      out.u64(errors_);
      out.u64(leases_.expired());
      // Since issue 15 (older clients stop reading before these).
      out.u64(hits_);
      out.u64(misses_);
      out.u64(leases_.size());
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
    if (arena_.has_page({c.ns, c.put[i].id})) {
      c.codes[i] = wire::kPresent;  // present: the bytes are drained, the answer is OK
    } else if (arena_.allocate(c.put[i].length, &c.offsets[i], &c.slots[i])) {
      c.codes[i] = KVTIER_OK;
      c.bulk[i].iov_base = arena_.base() + c.offsets[i];
    } else {
      c.codes[i] = KVTIER_ERR_NO_SPACE;  // drained
    }
  }
}

void Server::on_bulk_done(serve::Conn& conn) {
  Conn& c = static_cast<Conn&>(conn);
  if (disk_) {  // to disk before the reply, from slots no one else can see yet
    std::vector<Disk::Page> pages;
    std::vector<size_t> which;
    for (size_t i = 0; i < c.put.size(); ++i)
      if (c.codes[i] == KVTIER_OK) {
        pages.push_back(
            {c.put[i].id, arena_.base() + c.offsets[i], c.put[i].length, c.put[i].checksum});
        which.push_back(i);
      }
    std::vector<int32_t> results(pages.size());
    write_through(c.ns, pages, results);
    std::lock_guard lock(mu_);
    for (size_t k = 0; k < which.size(); ++k)
      if (results[k]) {  // not acknowledged: the slot goes back
        arena_.free_slot(c.offsets[which[k]], c.slots[which[k]]);
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
        arena_.publish({c.ns, c.put[i].id}, c.offsets[i], c.slots[i], c.put[i].length,
                       c.put[i].checksum);
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
      const uint32_t page = arena_.find({c.ns, id});
      if (page == Arena::kNone) {
        ++misses_;
        out.i32(KVTIER_ERR_NOT_FOUND);
        out.u64(0);
        out.u64(0);
        continue;
      }
      ++hits_;
      const Arena::Page& e = arena_.pin(page);  // the slot stays this page's until the reply is out
      c.pinned.push_back(page);
      out.i32(KVTIER_OK);
      out.u64(e.length);
      out.u64(e.checksum);
      bulk.push_back({arena_.base() + e.offset, e.length});
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
  for (uint32_t page : c.pinned) arena_.unpin(page);
  c.pinned.clear();
}

void Server::on_close(serve::Conn& conn) {
  Conn& c = static_cast<Conn&>(conn);
  // Its tickets, and the RDMA QPs they admitted, end with the control connection.
  if (rdma_) rdma_->fence_session(c.id);
  std::lock_guard lock(mu_);
  if (c.phase == Conn::Phase::kBulkIn)  // the client went away mid-put: nothing to show
    for (size_t i = 0; i < c.ready; ++i)
      if (c.codes[i] == KVTIER_OK) arena_.free_slot(c.offsets[i], c.slots[i]);
  for (uint32_t page : c.pinned) arena_.unpin(page);
  c.pinned.clear();
  leases_.end_connection(c.id);
}

// ---- the disk under the arena ------------------------------------------------------------

void Server::write_through(uint64_t ns, std::span<const Disk::Page> pages,
                           std::span<int32_t> results) {
  disk_->write(ns, pages, results);
  const auto failed = std::count_if(results.begin(), results.end(), [](int32_t r) { return r; });
  if (!failed) return;
  std::lock_guard lock(mu_);
  errors_ += static_cast<uint64_t>(failed);
}

// A GET or LOOKUP of a page the arena lacks reads it from disk into an arena slot first, then
// serves it as any arena page: the RDMA path keeps reading the arena one-sided, and the file
// tier checks the page's checksum on the way, as it does in the library.
void Server::promote(uint64_t ns, std::span<const KeyId> ids) {
  std::shared_ptr<Tier> t = disk_ ? disk_->tier(ns, false) : nullptr;
  if (!t) return;
  std::vector<KeyId> missing;
  {
    std::lock_guard lock(mu_);
    for (const KeyId& id : ids)
      if (!arena_.has_page({ns, id})) missing.push_back(id);
  }
  // Pages of unknown size: read with room for the largest seen, more if the disk says so.
  size_t room = std::max<size_t>(arena_.largest_page(), 1 << 20);
  while (!missing.empty()) {
    const size_t n = std::min(missing.size(), std::max<size_t>(1, kScratch / room));
    std::unique_ptr<std::byte[]> scratch(new std::byte[n * room]);
    std::vector<Frag> frags;
    std::vector<GetOp> ops(n);
    for (size_t i = 0; i < n; ++i) frags.push_back({scratch.get() + i * room, room});
    for (size_t i = 0; i < n; ++i) {
      ops[i].id = missing[i];
      ops[i].frags = Frags(&frags[i], 1);
      ops[i].capacity = room;
    }
    t->get(ops);
    std::vector<KeyId> larger;
    std::lock_guard lock(mu_);
    for (GetOp& op : ops) {
      if (op.result == KVTIER_ERR_BUFFER_TOO_SMALL) larger.push_back(op.id);
      uint64_t offset = 0, slot = 0;
      if (op.result <= 0 || arena_.has_page({ns, op.id})) continue;
      const uint64_t len = static_cast<uint64_t>(op.result);
      if (!arena_.allocate(len, &offset, &slot)) continue;  // the arena is full of pinned pages
      std::memcpy(arena_.base() + offset, op.frags[0].ptr, len);
      arena_.publish({ns, op.id}, offset, slot, len, op.checksum);
    }
    missing.erase(missing.begin(), missing.begin() + static_cast<ptrdiff_t>(n));
    if (!larger.empty() && room < wire::kMaxValue) {
      room = std::min<size_t>(room * 4, wire::kMaxValue);
      missing.insert(missing.end(), larger.begin(), larger.end());
    }
  }
}

std::string Server::metrics_text() {
  ServerCounters c;
  {
    std::lock_guard lock(mu_);
    c = {.pages = arena_.pages(),
         .bytes = arena_.used(),
         .capacity = arena_.capacity(),
         .hits = hits_,
         .misses = misses_,
         .evictions = arena_.evictions(),
         .errors = errors_,
         .expired_leases = leases_.expired(),
         .leases = leases_.size(),
         .connections = loops_ ? loops_->authenticated() : 0};
  }
  std::string out;
  render_counters(c, &out);
  out += "# HELP kvtier_server_request_seconds request latency, header in to reply out\n";
  out += "# TYPE kvtier_server_request_seconds histogram\n";
  static const char* const kOps[] = {"",       "hello",  "exists", "put",       "get",
                                     "remove", "clear",  "stats",  "rdma_info", "alloc",
                                     "commit", "lookup", "release", "sizes"};
  static_assert(std::size(kOps) == wire::kSizes + 1);
  for (size_t t = wire::kHello; t < latency_.size(); ++t)
    latency_[t].render("kvtier_server_request_seconds", kOps[t], &out);
  return out;
}

}  // namespace kvtier
