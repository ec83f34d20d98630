#include "pool.h"

#include <unistd.h>

#include <algorithm>

#include "log.h"

namespace kvtier::remote {

namespace {

// Reply frames this thread has begun to read: a call that saw none failed before any reply,
// so it can run again on another connection without anything having happened twice.
thread_local uint64_t t_replies = 0;

}  // namespace

void Conn::drop() {
  if (fd >= 0) ::close(fd);
  fd = -1;
}

ServerRef::~ServerRef() {
  for (auto& c : conns) c->drop();
}

Status read_reply(int fd, uint16_t type, Deadline dl, const OnReply& on_reply) {
  std::vector<uint8_t> payload;
  bool begun = false;
  Status s = wire::read_frame(fd, type | wire::kReply, dl, &payload, &begun);
  if (begun) ++t_replies;
  if (!s.is_ok()) return s;
  wire::Reader rd(payload);
  s = on_reply(fd, rd);
  if (s.is_ok() && !rd.ok()) s = {KVTIER_ERR_INVALID_ARG, "truncated reply"};
  return s;
}

Status roundtrip(int fd, uint16_t type, const std::vector<uint8_t>& payload, Deadline dl,
                 const OnReply& on_reply) {
  Status s = wire::send_frame(fd, type, payload, {}, dl);
  return s.is_ok() ? read_reply(fd, type, dl, on_reply) : s;
}

Status Pool::handshake(ServerRef& s, Conn& c, Deadline dl) const {
  const int64_t now = Clock::now().time_since_epoch().count();
  if (now < s.down_until.load())
    return {KVTIER_ERR_UNAVAILABLE, "server " + s.name + " was unreachable moments ago"};
  Status st = net::connect_to(s.host, s.port, dl, &c.fd);
  if (st.is_ok()) {
    wire::Writer w;
    w.u32(static_cast<uint32_t>(token_.size()));
    w.bytes(token_.data(), token_.size());
    w.u64(ns_);
    uint64_t boot = 0;
    st = roundtrip(c.fd, wire::kHello, w.data(), dl, [&](int, wire::Reader& rd) {
      if (rd.left() >= 8) boot = rd.u64();
      return Status{};
    });
    c.boot = boot;
    // A server that started again has a new arena: an RDMA channel to the old one is stale,
    // and so are the other connections to it (with_conn drops them before use).
    if (st.is_ok() && s.boot_id.exchange(boot) != boot) {
      std::lock_guard lock(s.rdma.mu);
      s.rdma.channel.reset();
      s.rdma.tcp_only = false;
      s.rdma.retry_at = s.rdma.backoff_s = 0;
    }
  }
  if (!st.is_ok()) {
    c.drop();
    // Fail fast for a short while instead of paying a connect per call to a dead server.
    s.down_until = now + std::chrono::nanoseconds(
                             std::chrono::milliseconds(std::min<unsigned>(timeout_ms_, 250)))
                             .count();
    log().warn("remote tier: server {}: {}", s.name, st.message());
  }
  return st;
}

Status Pool::with_conn(ServerRef& s, const Call& f) const {
  const Deadline dl = deadline();
  Conn* conn = take_conn(s, dl);
  if (!conn)
    return {KVTIER_ERR_TIMEOUT, "server " + s.name + ": no connection free before the deadline"};
  struct Held {  // given back however the call ends
    ServerRef& s;
    Conn* conn;
    ~Held() { give_back(s, conn); }
  } held{s, conn};
  Status st;
  for (int attempt = 0; attempt < 2; ++attempt) {
    if (conn->fd >= 0 && conn->boot != s.boot_id.load()) conn->drop();  // to an earlier start
    if (conn->fd >= 0 && net::peer_closed(conn->fd)) conn->drop();      // the server's idle timeout
    const bool pooled = conn->fd >= 0;
    if (!pooled) st = handshake(s, *conn, dl);
    const uint64_t replies = t_replies;
    if (st.is_ok()) st = f(conn->fd, dl);
    if (st.is_ok()) break;
    conn->drop();
    log().debug("remote tier: {}: {}", s.name, st.message());
    if (!pooled || st.code() != KVTIER_ERR_UNAVAILABLE || t_replies != replies) break;
  }
  return st;
}

Status Pool::exchange(ServerRef& s, uint16_t type, const std::vector<uint8_t>& payload,
                      const OnReply& on_reply) const {
  return with_conn(s,
                   [&](int fd, Deadline dl) { return roundtrip(fd, type, payload, dl, on_reply); });
}

// A free connection of `s`, marked busy, waiting for one until the deadline; NULL if none.
Conn* Pool::take_conn(ServerRef& s, Deadline dl) {
  const size_t n = s.conns.size();
  const size_t start = s.next.fetch_add(1, std::memory_order_relaxed);
  Conn* got = nullptr;
  std::unique_lock lock(s.pool_mu);
  s.pool_cv.wait_until(lock, dl, [&] {
    for (size_t k = 0; k < n && !got; ++k)
      if (!s.conns[(start + k) % n]->busy) got = s.conns[(start + k) % n].get();
    return got != nullptr;
  });
  if (got) got->busy = true;
  return got;
}

void Pool::give_back(ServerRef& s, Conn* conn) {
  {
    std::lock_guard lock(s.pool_mu);
    conn->busy = false;
  }
  s.pool_cv.notify_one();
}

}  // namespace kvtier::remote
