// The p2p endpoint's serving side: a service on the remote backend's event loops
// (serve/event_loop.h), as kvtier-server is: it admits peers (token and page format), stages
// their writes and copies them into its pool on COMMIT, answers their reads straight from it,
// and ends their connections. The loops hold the connections, their caps and deadlines.
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

#include "backends/remote/wire/auth.h"
#include "backends/remote/serve/event_loop.h"
#include "src/log.h"
#include "backends/remote/wire/net.h"
#include "backends/remote/p2p/p2p_internal.h"
#include "backends/remote/wire/protocol.h"
#include "backends/remote/rdma/rdma.h"

namespace kvtier::p2p {

namespace {

Status decode_request(const std::vector<uint8_t>& payload, Request* r) {
  wire::Reader rd(payload);
  r->layer = rd.i32();
  const uint32_t n = rd.count(8);
  r->pages.resize(n);
  for (auto& p : r->pages) p = rd.u64();
  if (!rd.done() || n == 0 || n > kChunk) return {KVTIER_ERR_INVALID_ARG, "malformed request"};
  return {};
}

// A peer's connection: its handshake, its request, and a write's bytes staged until its COMMIT.
struct PeerConn : serve::Conn {
  bool challenged = false;  // the handshake's first half is done
  wire::Nonce peer_nonce{}, nonce{};
  uint64_t format_of_peer = 0;
  Request r;
  std::vector<Frag> frags;  // the request's pages in the pool
  // A write's bytes, grown as they arrive (at most kChunkBytes, or one page), kept for the
  // connection's next write.
  std::vector<uint8_t> staging;
  bool staged = false;           // a write is staged and answered: only COMMIT may follow
  Clock::time_point answered{};  // when its staged answer was set up
};

constexpr size_t kStagingStep = size_t{4} << 20;  // staging grows by this as bytes arrive

class Service final : public serve::Service {
 public:
  explicit Service(Shared* sh) : sh_(*sh) {}

  std::unique_ptr<serve::Conn> make_conn() override { return std::make_unique<PeerConn>(); }

  void on_frame(serve::Conn& conn) override {
    PeerConn& c = static_cast<PeerConn&>(conn);
    Status s = c.hello ? request(c) : hello(c);
    if (!s.is_ok()) refuse(c, s);
  }

  // The staging buffer grows by a step once the bytes before it are in: it follows the bytes
  // that arrived, not the length claimed.
  void on_bulk_more(serve::Conn& conn) override {
    PeerConn& c = static_cast<PeerConn&>(conn);
    if (c.ready > c.bulk_at || c.ready == c.bulk.size()) return;
    const size_t at = c.ready * kStagingStep;
    if (c.staging.size() < at + c.bulk[c.ready].iov_len)
      c.staging.resize(at + c.bulk[c.ready].iov_len);
    c.bulk[c.ready].iov_base = c.staging.data() + at;
    ++c.ready;
  }

  // A write's bytes are staged: say so; the pool sees none of them unless the writer, still in
  // its call, commits (p2p.h).
  void on_bulk_done(serve::Conn& conn) override {
    PeerConn& c = static_cast<PeerConn&>(conn);
    wire::Writer staged;
    for (size_t i = 0; i < c.r.pages.size(); ++i) staged.i32(KVTIER_OK);
    c.staged = true;
    // Taken before the answer goes: the writer cannot have it (and start waiting) any earlier.
    c.answered = Clock::now();
    serve::reply(c, wire::kP2pWrite | wire::kReply, staged.data());
  }

  void on_reply_sent(serve::Conn& conn) override {
    PeerConn& c = static_cast<PeerConn&>(conn);
    if (c.staged)  // the COMMIT comes at once from a live writer
      c.deadline = Clock::now() + std::chrono::milliseconds(sh_.opt.timeout_ms);
  }

  void on_refused(serve::Conn&, const Status& s) override { dropped(s); }

  // The peer's RDMA QPs end with its connection: none of its writes lands in the pool after.
  void on_close(serve::Conn& c) override {
    if (sh_.rdma_listener) sh_.rdma_listener->fence_session(c.id);
  }

 private:
  void dropped(const Status& s) {
    sh_.loops->warn("p2p endpoint " + sh_.address + ": peer dropped: " + s.message());
  }
  void refuse(PeerConn& c, const Status& s) {
    dropped(s);
    serve::reply_error(c, s);
  }

  // The HELLO handshake (p2p.h), kvtier-server's own (auth.h): the endpoint proves it holds
  // the token first, then the peer does; the token itself never crosses the wire.
  Status hello(PeerConn& c) {
    wire::Reader rd(c.payload);
    if (!c.challenged) {
      uint32_t version = 0;
      if (c.payload.size() == kHelloSize) {
        rd.str(wire::kNonceSize);
        c.format_of_peer = rd.u64();
        version = rd.u32();
      }
      if (version != kProtocol) return refuse_older(c.payload);
      std::memcpy(c.peer_nonce.data(), c.payload.data(), wire::kNonceSize);
      c.nonce = wire::make_nonce();
      c.challenged = true;
      wire::Writer w;
      w.bytes(c.nonce.data(), c.nonce.size());
      w.u64(sh_.id);
      const wire::Proof mine = wire::server_proof(sh_.opt.token, c.peer_nonce, c.nonce, sh_.id);
      w.bytes(mine.data(), mine.size());
      serve::reply(c, wire::kP2pHello | wire::kReply, w.data());
      return {};
    }
    wire::Proof theirs{};
    if (c.payload.size() != theirs.size()) return {KVTIER_ERR_DENIED, "malformed HELLO"};
    std::memcpy(theirs.data(), c.payload.data(), theirs.size());
    if (!wire::same_proof(theirs, wire::client_proof(sh_.opt.token, c.peer_nonce, c.nonce)))
      return {KVTIER_ERR_DENIED, "wrong or missing token"};
    if (c.format_of_peer != sh_.format)
      return {KVTIER_ERR_DENIED,
              "the two pools have different page formats (this one: " + sh_.pool.describe() + ")"};
    if (Status s = sh_.loops->admit(c); !s.is_ok()) return s;
    wire::Writer w;
    w.u64(sh_.pool.pool_tokens / sh_.pool.page_size);
    w.u32(sh_.rdma_listener ? sh_.rdma_listener->port() : 0);
    // One-time RDMA admission for this peer's channel; it ends with this connection.
    w.u64(sh_.rdma_listener ? sh_.rdma_listener->issue_ticket({c.id, 0}) : 0);
    serve::reply(c, wire::kP2pHello | wire::kReply, w.data());
    return {};
  }

  // A HELLO of an earlier protocol (token length u32, token, format hash u64, then the version
  // u32 from protocol 2 on) is told why it is refused, never half understood.
  static Status refuse_older(const std::vector<uint8_t>& payload) {
    wire::Reader rd(payload);
    const uint32_t len = rd.u32();
    if (len <= wire::kMaxToken) rd.str(len);
    rd.u64();
    const uint32_t version = rd.left() == 4 ? rd.u32() : 1;  // protocol 1 sent none
    if (!rd.done() || len > wire::kMaxToken) return {KVTIER_ERR_INVALID_ARG, "malformed HELLO"};
    return {KVTIER_ERR_DENIED, "the peer speaks p2p protocol " + std::to_string(version) +
                                   ", this endpoint " + std::to_string(kProtocol) +
                                   " (both ends need the same kvtier)"};
  }

  Status request(PeerConn& c) {
    if (c.staged != (c.h.type == wire::kP2pCommit))
      return {KVTIER_ERR_INVALID_ARG, c.staged ? "a staged write's COMMIT expected"
                                               : "a COMMIT with no staged write"};
    if (c.h.type == wire::kP2pCommit) return commit(c);
    if (c.h.type != wire::kP2pWrite && c.h.type != wire::kP2pRead)
      return {KVTIER_ERR_INVALID_ARG, "unexpected frame type " + std::to_string(c.h.type)};
    if (Status s = decode_request(c.payload, &c.r); !s.is_ok()) return s;
    c.frags.clear();
    if (c.h.type == wire::kP2pRead) {  // a code per page, then the bytes straight from the pool
      wire::Writer w;
      for (uint64_t page : c.r.pages)
        w.i32(frags_of(sh_.pool, static_cast<int64_t>(page), c.r.layer, &c.frags).code());
      std::vector<iovec> iov;
      append_iov(c.frags, &iov);
      serve::reply(c, wire::kP2pRead | wire::kReply, w.data(), iov);
      return {};
    }
    // The sender checked every id against this pool; one that is not valid here is a hostile
    // or broken peer, and its bytes are not read.
    for (uint64_t page : c.r.pages)
      if (Status s = frags_of(sh_.pool, static_cast<int64_t>(page), c.r.layer, &c.frags);
          !s.is_ok())
        return s;
    size_t bytes = 0;
    for (const Frag& f : c.frags) bytes += f.len;
    if (c.r.pages.size() > 1 && bytes > kChunkBytes)
      return {KVTIER_ERR_INVALID_ARG, "a write of " + std::to_string(bytes) + " bytes in one frame"};
    std::vector<iovec> steps;  // staged first (on_bulk_more), a step at a time
    for (size_t at = 0; at < bytes; at += kStagingStep)
      steps.push_back({nullptr, std::min(bytes - at, kStagingStep)});
    // Silence is bounded, not the transfer's length (p2p.h).
    serve::expect_bulk(c, std::move(steps), Clock::time_point::max());
    return {};
  }

  // The writer waits a whole timeout for the answer to COMMIT from when it sent it, which was
  // after this side's staged answer: a COMMIT seen within half of it, from a writer that has
  // not hung up, is one whose call is still running (a process stopped for longer is told
  // TIMEOUT). Only then do the staged bytes go into the pool.
  Status commit(PeerConn& c) {
    if (!c.payload.empty()) return {KVTIER_ERR_INVALID_ARG, "COMMIT takes no payload"};
    c.staged = false;
    const bool live =
        Clock::now() - c.answered < std::chrono::milliseconds(sh_.opt.timeout_ms) / 2 &&
        !net::peer_closed(c.fd) && !sh_.loops->stopping();
    if (live) {
      size_t at = 0;
      for (const Frag& f : c.frags) {
        std::memcpy(f.ptr, c.staging.data() + at, f.len);
        at += f.len;
      }
      for (uint64_t page : c.r.pages)
        sh_.landed[page].fetch_add(c.r.layer < 0 ? sh_.pool.layer_num : 1,
                                   std::memory_order_release);
    }
    wire::Writer w;
    for (size_t i = 0; i < c.r.pages.size(); ++i) w.i32(live ? KVTIER_OK : KVTIER_ERR_TIMEOUT);
    serve::reply(c, wire::kP2pCommit | wire::kReply, w.data());
    return {};
  }

  Shared& sh_;
};

}  // namespace

Status Endpoint::open(const Options& options, const PoolLayout& pool,
                      std::unique_ptr<Endpoint>* out) {
  if (Status s = pool.validate(); !s.is_ok()) return s;
  auto sh = std::make_shared<Shared>();
  sh->opt = options;
  sh->pool = pool;
  sh->format = format_hash(pool.describe());
  const wire::Nonce id = wire::make_nonce();
  std::memcpy(&sh->id, id.data(), sizeof sh->id);
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
  int listen_fd = -1;
  if (Status s = net::listen_on(host, port, &listen_fd, &port); !s.is_ok()) return s;
  sh->address = host + ":" + std::to_string(port);
  if (options.transport != "tcp" && rdma::available()) {
    // The pool is the arena the peer reads and writes one-sided; admission by one-time ticket.
    Status s = rdma::Listener::start({host, static_cast<uint16_t>(port + 1), -1}, pool.base,
                                     pool.pool_bytes(), &sh->rdma_listener);
    if (!s.is_ok() && options.transport == "rdma") {
      ::close(listen_fd);
      return s;
    }
    if (!s.is_ok()) log().warn("p2p endpoint {}: RDMA off: {}", sh->address, s.message());
    sh->rdma_registry = rdma::Registry::create();
    sh->rdma_registry->add(pool.base, pool.pool_bytes());
  } else if (options.transport == "rdma") {
    ::close(listen_fd);
    return {KVTIER_ERR_UNSUPPORTED, "transport=rdma but this host has no RDMA device"};
  }
  const auto ms = [](unsigned n) { return std::chrono::milliseconds(n); };
  const unsigned timeout = options.timeout_ms;
  sh->service = std::make_unique<Service>(sh.get());
  sh->loops = std::make_unique<serve::Loops>(
      serve::Settings{.name = "p2p endpoint " + sh->address,
                      .hello_type = wire::kP2pHello,
                      .max_hello = kMaxHello,
                      .max_payload = kMaxRequest,
                      .max_connections = options.max_peers,
                      .max_unauthenticated = options.max_peers,
                      // several peers' transfers at once, as the server's clients'
                      .workers = std::clamp(std::thread::hardware_concurrency(), 1u, 4u),
                      .hello_timeout = ms(timeout),
                      .idle_timeout = ms(options.idle_timeout_ms),
                      .frame_timeout = ms(timeout),
                      .bulk_timeout = ms(timeout),
                      .tick = ms(std::clamp(timeout / 4, 5u, 100u))},
      sh->service.get());
  if (Status s = sh->loops->start(listen_fd); !s.is_ok()) return s;
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
  // Then its own connections: the loops stop and close them, after which nothing serves a
  // byte from or into the pool.
  sh.loops->stop();
  sh.loops.reset();
  sh.service.reset();
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
