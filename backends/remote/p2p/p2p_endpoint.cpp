// The p2p endpoint's serving side: it listens, admits peers (token and page format), serves
// their writes into its pool and reads from it, and ends their connections.
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

#include "log.h"
#include "net.h"
#include "p2p_internal.h"
#include "protocol.h"
#include "rdma.h"

namespace kvtier::p2p {

namespace {

bool same_token(const std::string& a, const std::string& b) {
  unsigned char diff = a.size() != b.size();
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) diff |= a[i] ^ b[i];
  return diff == 0;
}

Status send_error(int fd, const Status& s, Deadline dl) {
  wire::Writer w;
  w.i32(s.code());
  w.bytes(s.message().data(), std::min<size_t>(s.message().size(), 1024));
  return wire::send_frame(fd, wire::kError | wire::kReply, w.data(), {}, dl);
}

Status decode_request(const std::vector<uint8_t>& payload, Request* r) {
  wire::Reader rd(payload);
  r->layer = rd.i32();
  const uint32_t n = rd.count(8);
  r->pages.resize(n);
  for (auto& p : r->pages) p = rd.u64();
  if (!rd.done() || n == 0 || n > kChunk) return {KVTIER_ERR_INVALID_ARG, "malformed request"};
  return {};
}

}  // namespace

void Shared::reap() {
  std::lock_guard lock(mu);
  for (auto it = conns.begin(); it != conns.end();) {
    if (!it->done) {
      ++it;
      continue;
    }
    it->thread.join();
    ::close(it->fd);
    it = conns.erase(it);
  }
}

void Shared::accept_loop() {
  while (!stopping) {
    // Non-blocking, so every read and write waits in poll up to its deadline: a peer that stops
    // mid-frame is dropped after the timeout instead of holding its serving thread for good.
    const int fd = ::accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0) {
      if (stopping) return;
      if (errno == EINTR || errno == ECONNABORTED) continue;
      log().warn("p2p endpoint {}: accept: {}", address, std::strerror(errno));
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      continue;
    }
    net::no_delay(fd);
    reap();
    std::lock_guard lock(mu);
    if (!make_room()) {
      ::close(fd);
      continue;
    }
    Conn& c = conns.emplace_back();
    c.fd = fd;
    // The fd is closed only once the thread is joined (reap, ~Endpoint): a number closed here
    // could be reused by anything in the engine's process before a late shutdown() hits it.
    c.thread = std::thread([this, &c] {
      serve(c);
      ::shutdown(c.fd, SHUT_RDWR);  // the peer sees the end now
      c.done = true;
    });
  }
}

// A flood of connections must not start a thread each: at opt.max_peers, the oldest connection
// that has not said HELLO is shut down (its thread ends at once); when every one has, the new
// connection is refused.
bool Shared::make_room() {
  size_t serving = 0;
  for (const Conn& c : conns) serving += !c.done && !c.dropped;
  if (serving < opt.max_peers) return true;
  for (Conn& c : conns) {
    if (c.done || c.dropped || c.said_hello) continue;
    c.dropped = true;
    ::shutdown(c.fd, SHUT_RDWR);
    return true;
  }
  if (Clock::now() - last_refusal > std::chrono::seconds(1))  // a flood logs once a second
    log().warn("p2p endpoint {}: {} peers connected already, a new one is refused", address,
               serving);
  last_refusal = Clock::now();
  return false;
}

Status Shared::hello(int fd) {
  std::vector<uint8_t> payload;
  // A peer that does not say HELLO within the timeout is dropped; before it has proved its
  // token, a frame bigger than a HELLO is refused unread.
  Status s = wire::read_frame(fd, wire::kP2pHello, deadline(), &payload, nullptr, kMaxHello);
  if (!s.is_ok()) return s;
  wire::Reader rd(payload);
  const uint32_t len = rd.u32();
  std::string token = len <= wire::kMaxToken ? rd.str(len) : std::string();
  const uint64_t format_of_peer = rd.u64();
  const uint32_t version = rd.left() == 4 ? rd.u32() : 1;  // protocol 1 sent none
  if (!rd.done() || len > wire::kMaxToken) s = {KVTIER_ERR_INVALID_ARG, "malformed HELLO"};
  if (s.is_ok() && !same_token(token, opt.token)) s = {KVTIER_ERR_DENIED, "wrong token"};
  if (s.is_ok() && version != kProtocol)
    s = {KVTIER_ERR_DENIED, "the peer speaks p2p protocol " + std::to_string(version) +
                                ", this endpoint " + std::to_string(kProtocol) +
                                " (both ends need the same kvtier)"};
  if (s.is_ok() && format_of_peer != format)
    s = {KVTIER_ERR_DENIED,
         "the two pools have different page formats (this one: " + pool.describe() + ")"};
  if (!s.is_ok()) {
    send_error(fd, s, deadline());
    return s;
  }
  wire::Writer w;
  w.u64(pool.pool_tokens / pool.page_size);
  w.u32(rdma_listener ? rdma_listener->port() : 0);
  // One-time RDMA admission for this peer's channel; it ends with this connection.
  w.u64(rdma_listener ? rdma_listener->issue_ticket({static_cast<uint64_t>(fd), 0}) : 0);
  return wire::send_frame(fd, wire::kP2pHello | wire::kReply, w.data(), {}, deadline());
}

Status Shared::serve_write(int fd, const Request& r, std::vector<uint8_t>* staging) {
  // The sender checked every id against this pool; one that is not valid here is a hostile
  // or broken peer, and its bytes are not read.
  std::vector<Frag> frags;
  for (uint64_t page : r.pages)
    if (Status s = frags_of(pool, static_cast<int64_t>(page), r.layer, &frags); !s.is_ok())
      return s;
  size_t bytes = 0;
  for (const Frag& f : frags) bytes += f.len;
  if (r.pages.size() > 1 && bytes > kChunkBytes)
    return {KVTIER_ERR_INVALID_ARG, "a write of " + std::to_string(bytes) + " bytes in one frame"};
  // Staged first, grown as the bytes arrive (not as claimed): the pool sees none of them unless
  // the writer, still in its call, commits (p2p.h).
  constexpr size_t kStep = size_t{4} << 20;
  for (size_t got = 0; got < bytes;) {
    const size_t step = std::min(bytes - got, kStep);
    if (staging->size() < got + step) staging->resize(got + step);
    if (Status s = net::read_all(fd, staging->data() + got, step, quiet()); !s.is_ok()) return s;
    got += step;
  }
  wire::Writer staged;
  for (size_t i = 0; i < r.pages.size(); ++i) staged.i32(KVTIER_OK);
  // Taken before the answer goes: the writer cannot have it (and start waiting) any earlier.
  const auto answered = Clock::now();
  Status s = wire::send_frame(fd, wire::kP2pWrite | wire::kReply, staged.data(), {}, quiet());
  std::vector<uint8_t> none;
  if (s.is_ok()) s = wire::read_frame(fd, wire::kP2pCommit, quiet(), &none, nullptr, 0);
  if (!s.is_ok()) return s;
  // The writer waits a whole timeout for the answer to COMMIT from when it sent it, which was
  // after this side's answer: a COMMIT seen within half of it, from a writer that has not hung
  // up, is one whose call is still running (a process stopped for longer is told TIMEOUT).
  const bool live = Clock::now() - answered < std::chrono::milliseconds(opt.timeout_ms) / 2 &&
                    !net::peer_closed(fd) && !stopping;
  if (live) {
    size_t at = 0;
    for (const Frag& f : frags) {
      std::memcpy(f.ptr, staging->data() + at, f.len);
      at += f.len;
    }
    for (uint64_t page : r.pages)
      landed[page].fetch_add(r.layer < 0 ? pool.layer_num : 1, std::memory_order_release);
  }
  wire::Writer w;
  for (size_t i = 0; i < r.pages.size(); ++i) w.i32(live ? KVTIER_OK : KVTIER_ERR_TIMEOUT);
  return wire::send_frame(fd, wire::kP2pCommit | wire::kReply, w.data(), {}, quiet());
}

Status Shared::serve_read(int fd, const Request& r) {
  wire::Writer w;
  std::vector<Frag> frags;
  for (uint64_t page : r.pages)
    w.i32(frags_of(pool, static_cast<int64_t>(page), r.layer, &frags).code());
  std::vector<iovec> iov;
  append_iov(frags, &iov);
  return wire::send_frame(fd, wire::kP2pRead | wire::kReply, w.data(), iov, quiet());
}

void Shared::serve(Conn& c) {
  const int fd = c.fd;
  Status s = hello(fd);
  c.said_hello = s.is_ok();
  std::vector<uint8_t> payload, staging;
  while (s.is_ok() && !stopping) {
    uint8_t head[wire::kHeaderSize];
    wire::Header h;
    // An idle peer may wait for good; a frame, once begun, arrives within the timeout.
    s = net::read_all(fd, head, 1, Deadline::max());
    if (s.is_ok()) s = net::read_all(fd, head + 1, sizeof head - 1, quiet());
    if (s.is_ok()) s = wire::decode_header(head, &h);
    if (s.is_ok() && h.type != wire::kP2pWrite && h.type != wire::kP2pRead)
      s = {KVTIER_ERR_INVALID_ARG, "unexpected frame type " + std::to_string(h.type)};
    if (s.is_ok() && h.length > kMaxRequest)
      s = {KVTIER_ERR_INVALID_ARG, "a request of " + std::to_string(h.length) + " bytes"};
    if (s.is_ok()) {
      payload.resize(h.length);
      s = net::read_all(fd, payload.data(), payload.size(), quiet());
    }
    Request r;
    if (s.is_ok()) s = decode_request(payload, &r);
    if (s.is_ok()) s = h.type == wire::kP2pWrite ? serve_write(fd, r, &staging) : serve_read(fd, r);
    if (!s.is_ok() && s.code() != KVTIER_ERR_UNAVAILABLE) send_error(fd, s, deadline());
  }
  if (!stopping && s.code() != KVTIER_ERR_UNAVAILABLE)
    dropped.warn("p2p endpoint " + address + ": peer dropped: " + s.message());
  // The peer's RDMA QPs end with its connection: none of its writes lands in the pool after.
  if (rdma_listener) rdma_listener->fence_session(fd);
}

Status Endpoint::open(const Options& options, const PoolLayout& pool,
                      std::unique_ptr<Endpoint>* out) {
  if (Status s = pool.validate(); !s.is_ok()) return s;
  auto sh = std::make_shared<Shared>();
  sh->opt = options;
  sh->pool = pool;
  sh->format = format_hash(pool.describe());
  sh->landed = std::make_unique<std::atomic<uint64_t>[]>(pool.pool_tokens / pool.page_size);
  std::string host;
  uint16_t port = 0;
  if (Status s = net::split_host_port(options.listen, &host, &port); !s.is_ok()) return s;
  // With no token, whoever reaches the port writes into the pool: only loopback, unless asked.
  if (options.token.empty() && !net::is_loopback(host)) {
    if (!options.allow_no_token)
      return {KVTIER_ERR_CONFIG,
              "KVTIER_P2P_LISTEN=" + options.listen +
                  " is not a loopback address and KVTIER_P2P_TOKEN is empty: anyone who reaches "
                  "it could write into the pool (set a token, or KVTIER_P2P_ALLOW_NO_TOKEN=on)"};
    log().warn(
        "p2p endpoint on {} with no token (KVTIER_P2P_ALLOW_NO_TOKEN=on): anyone who "
        "reaches it can write into and read from the pool",
        options.listen);
  }
  if (Status s = net::listen_on(host, port, &sh->listen_fd, &port); !s.is_ok()) return s;
  sh->address = host + ":" + std::to_string(port);
  if (options.transport != "tcp" && rdma::available()) {
    // The pool is the arena the peer reads and writes one-sided; admission by one-time ticket.
    Status s = rdma::Listener::start({host, static_cast<uint16_t>(port + 1), -1}, pool.base,
                                     pool.pool_bytes(), &sh->rdma_listener);
    if (!s.is_ok() && options.transport == "rdma") {
      ::close(sh->listen_fd);
      return s;
    }
    if (!s.is_ok()) log().warn("p2p endpoint {}: RDMA off: {}", sh->address, s.message());
    sh->rdma_registry = rdma::Registry::create();
    sh->rdma_registry->add(pool.base, pool.pool_bytes());
  } else if (options.transport == "rdma") {
    ::close(sh->listen_fd);
    return {KVTIER_ERR_UNSUPPORTED, "transport=rdma but this host has no RDMA device"};
  }
  sh->acceptor = std::thread([raw = sh.get()] { raw->accept_loop(); });
  out->reset(new Endpoint(std::move(sh)));
  return {};
}

void Shared::adopt_fd(int* fd, int from) {
  std::lock_guard lock(fds_mu);
  peer_fds.insert(from);
  *fd = from;
}

void Shared::close_fd(int* fd) {
  std::lock_guard lock(fds_mu);
  if (*fd < 0) return;
  peer_fds.erase(*fd);
  ::close(*fd);
  *fd = -1;
}

void Shared::shut_fd(const int* fd) {
  std::lock_guard lock(fds_mu);
  if (*fd >= 0) ::shutdown(*fd, SHUT_RDWR);
}

Endpoint::~Endpoint() {
  Shared& sh = *shared_;
  // The peers made from this endpoint first: their calls end (their sockets shut down) and are
  // waited for, so none reads into or writes from the pool once this returns.
  sh.calls.close([&] {
    std::lock_guard lock(sh.fds_mu);
    for (int fd : sh.peer_fds) ::shutdown(fd, SHUT_RDWR);
  });
  sh.stopping = true;
  ::shutdown(sh.listen_fd, SHUT_RDWR);
  ::close(sh.listen_fd);
  if (sh.acceptor.joinable()) sh.acceptor.join();
  std::lock_guard lock(sh.mu);
  for (auto& c : sh.conns) ::shutdown(c.fd, SHUT_RDWR);  // wakes the serving threads
  for (auto& c : sh.conns) {
    c.thread.join();
    ::close(c.fd);
  }
  sh.conns.clear();
  sh.rdma_listener.reset();
}

Status Endpoint::landed(std::span<const int64_t> pages, std::span<uint64_t> layers) const {
  const Shared& sh = *shared_;
  const uint64_t count = sh.pool.pool_tokens / sh.pool.page_size;
  for (size_t i = 0; i < pages.size(); ++i) {
    if (pages[i] < 0 || static_cast<uint64_t>(pages[i]) >= count)
      return {KVTIER_ERR_OUT_OF_RANGE, "pages[" + std::to_string(i) +
                                           "] = " + std::to_string(pages[i]) + " of a pool of " +
                                           std::to_string(count) + " pages"};
    layers[i] = sh.landed[pages[i]].load(std::memory_order_acquire);
  }
  return {};
}

const std::string& Endpoint::address() const {
  return shared_->address;
}

}  // namespace kvtier::p2p
