#include "server.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <random>

#include "log.h"
#include "net.h"
#include "size_class.h"

namespace kvtier {

namespace {

using wire::Header;

Status send_frame(int fd, uint16_t type, const std::vector<uint8_t>& payload, iovec* bulk = nullptr,
                  size_t n_bulk = 0) {
  uint8_t head[wire::kHeaderSize];
  Header h;
  h.type = type;
  h.length = static_cast<uint32_t>(payload.size());
  wire::encode_header(h, head);
  std::vector<iovec> iov{{head, sizeof head},
                         {const_cast<uint8_t*>(payload.data()), payload.size()}};
  iov.insert(iov.end(), bulk, bulk + n_bulk);
  return net::writev_all(fd, iov.data(), iov.size(), net::Deadline::max());
}

uint64_t random_u64() {
  static std::mutex mu;
  static std::mt19937_64 gen{std::random_device{}()};
  std::lock_guard lock(mu);
  return gen();
}

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

Status send_error(int fd, const Status& s) {
  wire::Writer w;
  w.i32(s.code());
  w.bytes(s.message().data(), std::min<size_t>(s.message().size(), 1024));
  return send_frame(fd, wire::kError | wire::kReply, w.data());
}

}  // namespace

Server::Server(ServerOptions options) : opt_(std::move(options)), boot_id_(random_u64()) {}

Server::~Server() {
  stop();
  if (arena_) munmap(arena_, opt_.capacity);
}

Status Server::start(uint16_t* port) {
  // Reserved, not touched: pages of the arena are backed as they are first written.
  void* p = mmap(nullptr, opt_.capacity, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED)
    return {KVTIER_ERR_NO_MEMORY, "cannot map an arena of " + std::to_string(opt_.capacity) +
                                      " bytes: " + std::strerror(errno)};
  arena_ = static_cast<std::byte*>(p);
  Status s = net::listen_on(opt_.host, opt_.port, &listen_fd_, port);
  if (!s.is_ok()) return s;
  if (opt_.rdma && rdma::available()) {
    const uint16_t rport = opt_.rdma_port ? opt_.rdma_port : static_cast<uint16_t>(*port + 1);
    s = rdma::Listener::start({opt_.host, rport, opt_.rdma_tos}, arena_, opt_.capacity, &rdma_);
    if (s.is_ok())
      log().info("server: RDMA data plane on port {}", rdma_->port());
    else
      log().warn("server: no RDMA data plane ({}); clients move bytes over TCP", s.message());
  }
  acceptor_ = std::thread([this] { accept_loop(); });
  return {};
}

void Server::stop() {
  if (stopping_.exchange(true)) return;
  if (listen_fd_ >= 0) ::shutdown(listen_fd_, SHUT_RDWR);
  if (acceptor_.joinable()) acceptor_.join();
  if (listen_fd_ >= 0) ::close(listen_fd_);
  std::map<int, std::thread> conns;
  {
    std::lock_guard lock(conns_mu_);
    for (auto& [fd, t] : conns_) ::shutdown(fd, SHUT_RDWR);  // wakes their blocked reads
    conns.swap(conns_);
  }
  for (auto& [fd, t] : conns) t.join();
  {
    std::lock_guard lock(conns_mu_);
    for (auto& t : finished_) t.join();
    finished_.clear();
  }
  rdma_.reset();  // before the arena it registered goes
}

void Server::accept_loop() {
  while (!stopping_) {
    int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (stopping_) return;
      log().error("server: accept: {}", std::strerror(errno));
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      continue;
    }
    int one = 1;  // replies are small frames: never hold one back waiting for an ACK
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    std::lock_guard lock(conns_mu_);
    for (auto& t : finished_) t.join();
    finished_.clear();
    conns_.emplace(
        fd, std::thread([this, fd] {
          serve(fd);
          std::lock_guard l(conns_mu_);
          auto it = conns_.find(fd);
          if (it != conns_.end()) {  // not being stopped: park the thread to be joined later
            finished_.push_back(std::move(it->second));
            conns_.erase(it);
          }
          ::close(fd);
        }));
  }
}

void Server::serve(int fd) {
  Session ss{fd};
  // Every connection starts with HELLO: protocol version, token and the client's namespace.
  uint64_t& ns = ss.ns;
  bool hello = false;
  struct End {  // whatever way the connection ends, its leases and tickets end with it
    Server* server;
    Session& ss;
    ~End() {
      std::lock_guard lock(server->mu_);
      server->end_session(ss);
    }
  } end{this, ss};
  std::vector<uint8_t> payload;
  for (;;) {
    uint8_t head[wire::kHeaderSize];
    if (!net::read_all(fd, head, sizeof head, net::Deadline::max()).is_ok()) return;
    Header h;
    Status s = wire::decode_header(head, &h);
    if (s.is_ok()) {
      payload.resize(h.length);
      if (!net::read_all(fd, payload.data(), payload.size(), net::Deadline::max()).is_ok()) return;
    }
    if (s.is_ok() && !hello) {
      std::string token;
      if (h.type != wire::kHello) {
        s = {KVTIER_ERR_DENIED, "the first frame must be HELLO"};
      } else if (s = wire::decode_hello(payload, &token, &ns); s.is_ok()) {
        ss.client = client_key(fd, ns);
        if (token != opt_.token) {
          s = {KVTIER_ERR_DENIED, "wrong or missing token"};
        } else {
          hello = true;
          wire::Writer w;
          w.u64(boot_id_);
          s = send_frame(fd, wire::kHello | wire::kReply, w.data());
          if (!s.is_ok()) return;
          continue;
        }
      }
    } else if (s.is_ok()) {
      s = handle(ss, h, payload);
      if (s.is_ok()) continue;
    }
    // A malformed or refused frame: say why and drop the connection.
    std::lock_guard lock(mu_);
    ++errors_;
    log().warn("server: closing a connection: {}", s.message());
    send_error(fd, s);
    return;
  }
}

bool Server::allocate(uint64_t bytes, uint64_t* offset, uint64_t* slot_size) {
  const uint64_t size = slot_size_for(bytes);
  if (size > opt_.capacity) return false;
  for (;;) {
    auto& list = free_[size];
    if (!list.empty()) {
      *offset = list.back();
      list.pop_back();
      break;
    }
    if (bump_ + size <= opt_.capacity) {
      *offset = bump_;
      bump_ += size;
      break;
    }
    // Full: evict the least recently used unpinned page of this slot size.
    bool evicted = false;
    for (auto it = lru_list_.rbegin(); it != lru_list_.rend(); ++it) {
      auto e = map_.find(*it);
      if (pins_.count(e->second.offset) || e->second.slot_size != size) continue;
      drop(e);
      ++evictions_;
      evicted = true;
      break;
    }
    if (!evicted) return false;
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
  map_.erase(it);
}

void Server::free_slot(uint64_t offset, uint64_t slot_size) {
  free_[slot_size].push_back(offset);
  used_ -= slot_size;
}

Status Server::handle(Session& ss, const Header& h, std::vector<uint8_t>& payload) {
  const int fd = ss.fd;
  const uint64_t ns = ss.ns;
  wire::Writer out;
  switch (h.type) {
    case wire::kExists: {
      std::vector<KeyId> ids;
      Status s = wire::decode_ids(payload, &ids);
      if (!s.is_ok()) return s;
      out.u32(static_cast<uint32_t>(ids.size()));
      std::lock_guard lock(mu_);
      for (const KeyId& id : ids) out.u8(map_.count({ns, id}) ? 1 : 0);
      break;
    }
    case wire::kPut: {
      std::vector<wire::PutEntry> entries;
      uint64_t bulk = 0;
      Status s = wire::decode_put(payload, &entries, &bulk);
      if (!s.is_ok()) return s;
      // Reserve slots, then take the bytes straight into them, then commit.
      std::vector<int32_t> codes(entries.size(), KVTIER_OK);
      std::vector<uint64_t> offset(entries.size(), 0), slot(entries.size(), 0);
      {
        std::lock_guard lock(mu_);
        for (size_t i = 0; i < entries.size(); ++i) {
          if (map_.count({ns, entries[i].id})) {
            codes[i] = 1;  // present: the bytes are drained, the answer is OK
          } else if (!allocate(entries[i].length, &offset[i], &slot[i])) {
            codes[i] = KVTIER_ERR_NO_SPACE;
          }
        }
      }
      // One readv for the whole batch: straight into the reserved slots; bytes of keys that
      // are present already or found no room go to a small sink, over and over.
      // (In pieces of at most kIov entries, so a frame of huge refused values cannot make the
      // server build a huge iovec list.)
      constexpr size_t kIov = 1024;
      std::vector<uint8_t> sink(std::min<uint64_t>(bulk, 1 << 20));
      std::vector<iovec> iov;
      auto flush = [&] {
        if (s.is_ok() && !iov.empty())
          s = net::readv_all(fd, iov.data(), iov.size(), net::Deadline::max());
        iov.clear();
      };
      for (size_t i = 0; i < entries.size() && s.is_ok(); ++i) {
        if (codes[i] == KVTIER_OK) {
          iov.push_back({arena_ + offset[i], entries[i].length});
        } else {
          for (uint64_t left = entries[i].length; left && s.is_ok();) {
            const size_t n = std::min<uint64_t>(left, sink.size());
            iov.push_back({sink.data(), n});
            left -= n;
            if (iov.size() >= kIov) flush();
          }
        }
        if (iov.size() >= kIov) flush();
      }
      flush();
      std::lock_guard lock(mu_);
      for (size_t i = 0; i < entries.size(); ++i) {
        if (codes[i] != KVTIER_OK) continue;
        if (s.is_ok())
          publish({ns, entries[i].id}, offset[i], slot[i], entries[i].length, entries[i].checksum);
        else
          free_slot(offset[i], slot[i]);  // the client went away mid-put: nothing to show
      }
      if (!s.is_ok()) return {KVTIER_OK, ""};  // connection gone: nothing to answer
      out.u32(static_cast<uint32_t>(entries.size()));
      for (int32_t c : codes) out.i32(c == 1 ? KVTIER_OK : c);
      break;
    }
    case wire::kGet: {
      std::vector<KeyId> ids;
      Status s = wire::decode_ids(payload, &ids);
      if (!s.is_ok()) return s;
      std::vector<iovec> bulk;
      std::vector<uint64_t> pinned;
      out.u32(static_cast<uint32_t>(ids.size()));
      {
        std::lock_guard lock(mu_);
        for (const KeyId& id : ids) {
          auto it = map_.find({ns, id});
          if (it == map_.end()) {
            out.i32(KVTIER_ERR_NOT_FOUND);
            out.u64(0);
            out.u64(0);
            continue;
          }
          const Entry& e = pin(it->second);  // the slot stays this page's until the reply is sent
          pinned.push_back(e.offset);
          out.i32(KVTIER_OK);
          out.u64(e.length);
          out.u64(e.checksum);
          bulk.push_back({arena_ + e.offset, e.length});
        }
      }
      s = send_frame(fd, wire::kGet | wire::kReply, out.data(), bulk.data(), bulk.size());
      std::lock_guard lock(mu_);
      for (uint64_t offset : pinned) unpin(offset);
      return s.is_ok() ? s : Status{KVTIER_OK, ""};
    }
    case wire::kRemove: {
      std::vector<KeyId> ids;
      Status s = wire::decode_ids(payload, &ids);
      if (!s.is_ok()) return s;
      out.u32(static_cast<uint32_t>(ids.size()));
      std::lock_guard lock(mu_);
      for (const KeyId& id : ids) {
        auto it = map_.find({ns, id});
        if (it == map_.end()) {
          out.i32(KVTIER_ERR_NOT_FOUND);
          continue;
        }
        drop(it);
        out.i32(KVTIER_OK);
      }
      break;
    }
    case wire::kClear: {
      if (!payload.empty()) return {KVTIER_ERR_INVALID_ARG, "CLEAR takes no payload"};
      std::lock_guard lock(mu_);
      for (auto it = lru_list_.begin(); it != lru_list_.end();) {
        auto e = map_.find(*(it++));
        if (e->second.ns == ns) drop(e);
      }
      break;
    }
    case wire::kStats: {
      if (!payload.empty()) return {KVTIER_ERR_INVALID_ARG, "STATS takes no payload"};
      std::lock_guard lock(mu_);
      out.u64(map_.size());
      out.u64(used_);
      out.u64(opt_.capacity);
      out.u64(evictions_);
      out.u64(errors_);
      out.u64(expired_);
      break;
    }
    default: {
      Status s = handle_rdma(ss, h, payload, out);
      if (!s.is_ok()) return s;
    }
  }
  Status s = send_frame(fd, static_cast<uint16_t>(h.type | wire::kReply), out.data());
  return s.is_ok() ? s : Status{KVTIER_OK, ""};
}

// The control plane of the RDMA data plane: the bytes themselves never pass through here.
Status Server::handle_rdma(Session& ss, const Header& h, std::vector<uint8_t>& payload,
                           wire::Writer& out) {
  const uint64_t ns = ss.ns;
  const auto now = Clock::now();
  const auto lease = std::chrono::milliseconds(opt_.lease_ms);
  std::lock_guard lock(mu_);
  if (now >= next_reap_) {
    reap(now);
    next_reap_ = now + lease / 4;
  }
  switch (h.type) {
    case wire::kRdmaInfo: {
      if (!payload.empty()) return {KVTIER_ERR_INVALID_ARG, "RDMA_INFO takes no payload"};
      if (!rdma_ || !rdma_->serving()) {  // no device (left): the client falls back to TCP
        out.i32(KVTIER_ERR_UNSUPPORTED);
        out.u32(0);
        out.u64(0);
        break;
      }
      out.i32(KVTIER_OK);
      out.u32(rdma_->port());
      out.u64(rdma_->issue_ticket({ss.fd, ss.client}));
      break;
    }
    case wire::kAlloc: {
      std::vector<wire::PutEntry> entries;
      uint64_t bulk = 0;
      Status s = wire::decode_put(payload, &entries, &bulk);
      if (!s.is_ok()) return s;
      out.u32(static_cast<uint32_t>(entries.size()));
      for (const wire::PutEntry& e : entries) {
        uint64_t offset = 0, slot = 0;
        if (map_.count({ns, e.id})) {
          out.i32(wire::kPresent);
          out.u64(0);
          out.u64(0);
        } else if (!allocate(e.length, &offset, &slot)) {
          out.i32(KVTIER_ERR_NO_SPACE);
          out.u64(0);
          out.u64(0);
        } else {
          const uint64_t id = next_lease_++;
          pending_[id] = {{ns, e.id}, offset,      slot,  e.length,
                          e.checksum, now + lease, ss.fd, ss.client};
          out.i32(KVTIER_OK);
          out.u64(offset);
          out.u64(id);
        }
      }
      break;
    }
    case wire::kCommit: {
      std::vector<wire::CommitEntry> entries;
      Status s = wire::decode_commit(payload, &entries);
      if (!s.is_ok()) return s;
      out.u32(static_cast<uint32_t>(entries.size()));
      for (const wire::CommitEntry& e : entries) {
        auto it = pending_.find(e.lease);
        if (it == pending_.end() || it->second.conn != ss.fd) {
          out.i32(KVTIER_ERR_TIMEOUT);  // its lease ran out: the slot went back
          continue;
        }
        Pending p = it->second;
        pending_.erase(it);
        if (e.commit)
          publish(p.key, p.offset, p.slot_size, p.length, p.checksum);
        else
          free_slot(p.offset, p.slot_size);  // given back
        out.i32(KVTIER_OK);
      }
      break;
    }
    case wire::kLookup: {
      std::vector<KeyId> ids;
      Status s = wire::decode_ids(payload, &ids);
      if (!s.is_ok()) return s;
      out.u32(static_cast<uint32_t>(ids.size()));
      for (const KeyId& id : ids) {
        auto it = map_.find({ns, id});
        if (it == map_.end()) {
          out.i32(KVTIER_ERR_NOT_FOUND);
          for (int k = 0; k < 4; ++k) out.u64(0);
          continue;
        }
        const Entry& e = pin(it->second);
        const uint64_t id_ = next_lease_++;
        leases_[id_] = {e.offset, now + lease, ss.fd};
        out.i32(KVTIER_OK);
        out.u64(e.offset);
        out.u64(e.length);
        out.u64(e.checksum);
        out.u64(id_);
      }
      break;
    }
    case wire::kRelease: {
      std::vector<uint64_t> ids;
      Status s = wire::decode_u64s(payload, &ids);
      if (!s.is_ok()) return s;
      for (uint64_t id : ids) {
        auto it = leases_.find(id);
        if (it == leases_.end() || it->second.conn != ss.fd) continue;  // ran out already
        unpin(it->second.offset);
        leases_.erase(it);
      }
      break;
    }
    default:
      return {KVTIER_ERR_INVALID_ARG, "unknown frame type " + std::to_string(h.type)};
  }
  return {};
}

void Server::publish(const Key& key, uint64_t offset, uint64_t slot_size, uint64_t length,
                     uint64_t checksum) {
  if (map_.count(key)) {  // another put of the key won
    free_slot(offset, slot_size);
    return;
  }
  lru_list_.push_front(key);
  map_.emplace(key, Entry{offset, slot_size, length, checksum, key.first, lru_list_.begin()});
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

uint64_t Server::end_leases(const std::function<bool(Clock::time_point, int)>& ends) {
  uint64_t n = 0;
  n += std::erase_if(pending_, [&](const auto& p) {
    if (!ends(p.second.expiry, p.second.conn)) return false;
    // The client may still be writing into the slot: fence its QPs before anyone can reuse it.
    if (rdma_) rdma_->fence_client(p.second.client);
    free_slot(p.second.offset, p.second.slot_size);
    return true;
  });
  n += std::erase_if(leases_, [&](const auto& l) {
    if (!ends(l.second.expiry, l.second.conn)) return false;
    unpin(l.second.offset);
    return true;
  });
  return n;
}

void Server::reap(Clock::time_point now) {
  expired_ += end_leases([&](Clock::time_point expiry, int) { return expiry <= now; });
}

void Server::end_session(const Session& ss) {
  if (rdma_) rdma_->fence_session(ss.fd);  // its tickets and the QPs they admitted end with it
  end_leases([&](Clock::time_point, int conn) { return conn == ss.fd; });
}

}  // namespace kvtier
