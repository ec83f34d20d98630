#include "p2p.h"

#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <list>
#include <mutex>
#include <thread>
#include <vector>

#include "log.h"
#include "net.h"
#include "protocol.h"
#include "rdma.h"

namespace kvtier::p2p {

namespace {

using net::Clock;
using net::Deadline;

constexpr size_t kChunk = 1024;  // pages per frame

// The fragments of page `page` (a page id, not a token slot) of `pool`: the whole page, or one
// layer of it. OUT_OF_RANGE for an id outside the pool or a layer past the last.
Status frags_of(const PoolLayout& pool, int64_t page, int32_t layer, std::vector<Frag>* out) {
  const uint64_t pages = pool.pool_tokens / pool.page_size;
  if (page < 0 || static_cast<uint64_t>(page) >= pages)
    return {KVTIER_ERR_OUT_OF_RANGE,
            "page " + std::to_string(page) + " of a pool of " + std::to_string(pages) + " pages"};
  const int64_t slot = page * static_cast<int64_t>(pool.page_size);
  if (layer >= 0) return pool.layer_frags(slot, static_cast<uint64_t>(layer), out);
  const size_t at = out->size();
  out->resize(at + pool.frags_per_page());
  return pool.page_frags(slot, out->data() + at);
}

void append_iov(const std::vector<Frag>& frags, std::vector<iovec>* iov) {
  for (const Frag& f : frags) iov->push_back({f.ptr, f.len});
}

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

// A request's layer and page ids.
struct Request {
  int32_t layer = -1;
  std::vector<uint64_t> pages;
};

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

// The endpoint's state, shared with its connection threads.
struct Shared {
  Options opt;
  PoolLayout pool;
  uint64_t format = 0;
  int listen_fd = -1;
  std::string address;
  std::atomic<bool> stopping{false};
  std::thread acceptor;
  std::mutex mu;  // guards conns
  struct Conn {
    int fd;
    std::thread thread;
    std::atomic<bool> done{false};
    std::atomic<bool> said_hello{false};
    bool dropped = false;  // shut down to make room (guarded by mu)
  };
  std::list<Conn> conns;
  Clock::time_point last_refusal{};  // guarded by mu
  std::unique_ptr<rdma::Listener> rdma_listener;
  std::shared_ptr<rdma::Registry> rdma_registry;

  Deadline deadline() const { return Clock::now() + std::chrono::milliseconds(opt.timeout_ms); }
  void accept_loop();
  void serve(Conn& c);
  bool make_room();  // REQUIRES mu
  Status hello(int fd);
  Status serve_write(int fd, const Request& r);
  Status serve_read(int fd, const Request& r);
  void reap();
};

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
  // A peer that does not say HELLO within the timeout is dropped.
  Status s = wire::read_frame(fd, wire::kP2pHello, deadline(), &payload);
  if (!s.is_ok()) return s;
  wire::Reader rd(payload);
  const uint32_t len = rd.u32();
  std::string token = len <= wire::kMaxToken ? rd.str(len) : std::string();
  const uint64_t format_of_peer = rd.u64();
  if (!rd.done() || len > wire::kMaxToken) s = {KVTIER_ERR_INVALID_ARG, "malformed HELLO"};
  if (s.is_ok() && !same_token(token, opt.token)) s = {KVTIER_ERR_DENIED, "wrong token"};
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

Status Shared::serve_write(int fd, const Request& r) {
  // The sender checked every id against this pool; one that is not valid here is a hostile
  // or broken peer, and its bytes are not read.
  std::vector<Frag> frags;
  for (uint64_t page : r.pages)
    if (Status s = frags_of(pool, static_cast<int64_t>(page), r.layer, &frags); !s.is_ok())
      return s;
  std::vector<iovec> iov;
  append_iov(frags, &iov);
  // The bytes land in the pool straight from the socket.
  if (Status s = net::readv_all(fd, iov.data(), iov.size(), deadline()); !s.is_ok()) return s;
  wire::Writer w;
  for (size_t i = 0; i < r.pages.size(); ++i) w.i32(KVTIER_OK);
  return wire::send_frame(fd, wire::kP2pWrite | wire::kReply, w.data(), {}, deadline());
}

Status Shared::serve_read(int fd, const Request& r) {
  wire::Writer w;
  std::vector<Frag> frags;
  for (uint64_t page : r.pages)
    w.i32(frags_of(pool, static_cast<int64_t>(page), r.layer, &frags).code());
  std::vector<iovec> iov;
  append_iov(frags, &iov);
  return wire::send_frame(fd, wire::kP2pRead | wire::kReply, w.data(), iov, deadline());
}

void Shared::serve(Conn& c) {
  const int fd = c.fd;
  Status s = hello(fd);
  c.said_hello = s.is_ok();
  std::vector<uint8_t> payload;
  while (s.is_ok() && !stopping) {
    uint8_t head[wire::kHeaderSize];
    wire::Header h;
    // An idle peer may wait for good; a frame, once begun, arrives within the timeout.
    s = net::read_all(fd, head, 1, Deadline::max());
    if (s.is_ok()) s = net::read_all(fd, head + 1, sizeof head - 1, deadline());
    if (s.is_ok()) s = wire::decode_header(head, &h);
    if (s.is_ok() && h.type != wire::kP2pWrite && h.type != wire::kP2pRead)
      s = {KVTIER_ERR_INVALID_ARG, "unexpected frame type " + std::to_string(h.type)};
    if (s.is_ok()) {
      payload.resize(h.length);
      s = net::read_all(fd, payload.data(), payload.size(), deadline());
    }
    Request r;
    if (s.is_ok()) s = decode_request(payload, &r);
    if (s.is_ok()) s = h.type == wire::kP2pWrite ? serve_write(fd, r) : serve_read(fd, r);
    if (!s.is_ok() && s.code() != KVTIER_ERR_UNAVAILABLE) send_error(fd, s, deadline());
  }
  if (!stopping && s.code() != KVTIER_ERR_UNAVAILABLE)
    log().warn("p2p endpoint {}: peer dropped: {}", address, s.message());
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
  std::string host;
  uint16_t port = 0;
  if (Status s = net::split_host_port(options.listen, &host, &port); !s.is_ok()) return s;
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

Endpoint::~Endpoint() {
  Shared& sh = *shared_;
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

const std::string& Endpoint::address() const {
  return shared_->address;
}

// ---- the connecting side ---------------------------------------------------------------------

struct Peer::Impl {
  std::shared_ptr<Shared> local;
  std::string address, host;
  uint16_t port = 0;
  DeadlineLock mu;  // one transfer at a time on the connection; waiters give up at the deadline
  int fd = -1;
  std::atomic<bool> up{false};
  uint64_t remote_pages = 0;
  std::unique_ptr<rdma::Channel> channel;

  ~Impl() { drop(); }
  void drop() {
    if (fd >= 0) ::close(fd);
    fd = -1;
    up = false;
    channel.reset();
  }
  Status connect(Deadline dl);
  Status run(bool write, std::span<const int64_t> local_pages, std::span<const int64_t> remote,
             int32_t layer, std::span<int> results);
  Status tcp_chunk(bool write, const std::vector<size_t>& idx, const Request& req,
                   const std::vector<std::vector<Frag>>& local_frags, std::span<int> results,
                   Deadline dl);
  Status rdma_batch(bool write, const std::vector<size_t>& idx, const Request& req,
                    const std::vector<std::vector<Frag>>& local_frags, Deadline dl);
};

Status Peer::Impl::connect(Deadline dl) {
  Status s = net::connect_to(host, port, dl, &fd);
  if (!s.is_ok()) return s;
  wire::Writer w;
  w.u32(static_cast<uint32_t>(local->opt.token.size()));
  w.bytes(local->opt.token.data(), local->opt.token.size());
  w.u64(local->format);
  std::vector<uint8_t> reply;
  s = wire::send_frame(fd, wire::kP2pHello, w.data(), {}, dl);
  if (s.is_ok()) s = wire::read_frame(fd, wire::kP2pHello | wire::kReply, dl, &reply);
  wire::Reader rd(reply);
  remote_pages = rd.u64();
  const uint32_t rdma_port = rd.u32();
  const uint64_t ticket = rd.u64();
  if (s.is_ok() && !rd.done()) s = {KVTIER_ERR_INVALID_ARG, "malformed HELLO reply"};
  if (s.is_ok() && rdma_port && local->rdma_registry && local->opt.transport != "tcp") {
    Status r = rdma::Channel::connect(host, static_cast<uint16_t>(rdma_port), ticket, -1,
                                      local->rdma_registry, dl, &channel);
    if (!r.is_ok() && local->opt.transport == "rdma") s = r;
    if (!r.is_ok())
      log().warn("p2p peer {}: RDMA connect failed, TCP instead: {}", address, r.message());
  }
  if (!s.is_ok()) drop();
  up = s.is_ok();
  return s;
}

Status Peer::Impl::tcp_chunk(bool write, const std::vector<size_t>& idx, const Request& req,
                             const std::vector<std::vector<Frag>>& local_frags,
                             std::span<int> results, Deadline dl) {
  wire::Writer w;
  w.i32(req.layer);
  w.u32(static_cast<uint32_t>(req.pages.size()));
  for (uint64_t p : req.pages) w.u64(p);
  std::vector<iovec> iov;
  for (size_t i : idx) append_iov(local_frags[i], &iov);
  const uint16_t type = write ? wire::kP2pWrite : wire::kP2pRead;
  Status s = wire::send_frame(fd, type, w.data(),
                              write ? std::span<const iovec>(iov) : std::span<const iovec>(), dl);
  std::vector<uint8_t> reply;
  if (s.is_ok()) s = wire::read_frame(fd, type | wire::kReply, dl, &reply);
  if (!s.is_ok()) return s;
  wire::Reader rd(reply);
  std::vector<iovec> sink;  // a read: the pages the peer sends, straight into ours
  for (size_t i : idx) {
    results[i] = rd.i32();
    if (!write && results[i] == KVTIER_OK) append_iov(local_frags[i], &sink);
  }
  if (!rd.done()) return {KVTIER_ERR_INVALID_ARG, "malformed reply"};
  return write ? Status() : net::readv_all(fd, sink.data(), sink.size(), dl);
}

Status Peer::Impl::rdma_batch(bool write, const std::vector<size_t>& idx, const Request& req,
                              const std::vector<std::vector<Frag>>& local_frags, Deadline dl) {
  // Both pools have one format, so the i-th fragment of a page here has the size of the i-th
  // there; the remote side is addressed by offsets into the peer's pool.
  PoolLayout remote_pool = local->pool;
  remote_pool.base = nullptr;
  remote_pool.pool_tokens = remote_pages * remote_pool.page_size;
  std::vector<rdma::Transfer> transfers;
  std::vector<Frag> theirs;
  for (size_t k = 0; k < idx.size(); ++k) {
    theirs.clear();
    if (Status s = frags_of(remote_pool, static_cast<int64_t>(req.pages[k]), req.layer, &theirs);
        !s.is_ok())
      return s;
    const auto& mine = local_frags[idx[k]];
    for (size_t f = 0; f < theirs.size(); ++f)
      transfers.push_back(
          {Frags(&mine[f], 1), reinterpret_cast<uint64_t>(theirs[f].ptr), theirs[f].len});
  }
  return channel->run(write, transfers, dl);
}

Status Peer::Impl::run(bool write, std::span<const int64_t> local_pages,
                       std::span<const int64_t> remote, int32_t layer, std::span<int> results) {
  const Deadline dl = local->deadline();
  std::unique_lock lock(mu, std::defer_lock);
  if (!lock.try_lock_until(dl)) {
    std::fill(results.begin(), results.end(), KVTIER_ERR_TIMEOUT);
    return {KVTIER_ERR_TIMEOUT, "the peer connection stayed busy past the deadline"};
  }
  if (fd < 0) {
    if (Status s = connect(dl); !s.is_ok()) {
      std::fill(results.begin(), results.end(), s.code());
      return s;
    }
  }
  // Every id checked on both pools first: a bad one fails its page alone, nothing moves for it.
  Status first;
  std::vector<std::vector<Frag>> local_frags(local_pages.size());
  std::vector<size_t> ok;
  PoolLayout remote_pool = local->pool;
  remote_pool.base = nullptr;
  remote_pool.pool_tokens = remote_pages * remote_pool.page_size;
  std::vector<Frag> scratch;
  for (size_t i = 0; i < local_pages.size(); ++i) {
    scratch.clear();
    Status s = frags_of(local->pool, local_pages[i], layer, &local_frags[i]);
    if (s.is_ok()) s = frags_of(remote_pool, remote[i], layer, &scratch);
    results[i] = s.code();
    if (s.is_ok()) {
      ok.push_back(i);
    } else if (first.is_ok()) {
      first = {s.code(), "page " + std::to_string(i) + ": " + s.message()};
    }
  }
  for (size_t at = 0; at < ok.size();) {
    std::vector<size_t> idx(ok.begin() + at, ok.begin() + std::min(ok.size(), at + kChunk));
    Request req{layer, {}};
    for (size_t i : idx) req.pages.push_back(static_cast<uint64_t>(remote[i]));
    Status s = channel ? rdma_batch(write, idx, req, local_frags, dl)
                       : tcp_chunk(write, idx, req, local_frags, results, dl);
    if (!s.is_ok()) {
      // The connection's state is unknown: drop it (an RDMA channel drains before it returns,
      // a TCP read stops here), fail what did not finish, reconnect on the next call.
      drop();
      for (size_t k = at; k < ok.size(); ++k) results[ok[k]] = s.code();
      return first.is_ok() ? s : first;
    }
    if (channel)
      for (size_t i : idx) results[i] = KVTIER_OK;
    at += idx.size();
  }
  return first;
}

Peer::Peer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Peer::~Peer() = default;

Status Peer::write_pages(std::span<const int64_t> local, std::span<const int64_t> remote,
                         int32_t layer, std::span<int> results) {
  return impl_->run(true, local, remote, layer, results);
}

Status Peer::read_pages(std::span<const int64_t> local, std::span<const int64_t> remote,
                        int32_t layer, std::span<int> results) {
  return impl_->run(false, local, remote, layer, results);
}

bool Peer::connected() const {
  return impl_->up;
}

const std::string& Peer::address() const {
  return impl_->address;
}

Status Endpoint::connect(const std::string& address, std::unique_ptr<Peer>* out) {
  auto impl = std::make_unique<Peer::Impl>();
  impl->local = shared_;
  impl->address = address;
  if (Status s = net::split_host_port(address, &impl->host, &impl->port); !s.is_ok()) return s;
  if (Status s = impl->connect(shared_->deadline()); !s.is_ok()) return s;
  out->reset(new Peer(std::move(impl)));
  return {};
}

}  // namespace kvtier::p2p
