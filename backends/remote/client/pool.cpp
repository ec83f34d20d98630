#include "backends/remote/client/pool.h"

#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "backends/remote/wire/auth.h"
#include "src/log.h"

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

namespace {

constexpr int64_t kFirstDownMs = 250, kMaxDownMs = 5000;

int64_t now_ns() {
  return Clock::now().time_since_epoch().count();
}

}  // namespace

Status Pool::admit(ServerRef& s, bool* probe) {
  *probe = false;
  if (s.failures.load() == 0) return {};
  if (now_ns() >= s.down_until.load() && !s.probing.exchange(true)) {
    *probe = true;
    return {};
  }
  return {KVTIER_ERR_UNAVAILABLE,
          "server " + s.name + " is down (it timed out or could not be reached); its keys fail "
          "at once until it answers a probe"};
}

void Pool::record(ServerRef& s, bool probe, const Status& st) const {
  const int c = st.code();
  if (c == KVTIER_ERR_TIMEOUT || c == KVTIER_ERR_UNAVAILABLE) {
    const uint32_t n = s.failures.fetch_add(1) + 1;
    const int64_t ms = std::min<int64_t>(kMaxDownMs, kFirstDownMs << std::min<uint32_t>(n - 1, 8));
    s.down_until = now_ns() + ms * 1'000'000;
    if (n == 1) log().warn("remote tier: server {} is down: {}", s.name, st.message());
  } else if (st.is_ok() && s.failures.exchange(0) != 0) {
    log().warn("remote tier: server {} answers again", s.name);
  }
  if (probe) s.probing = false;
}

Status Pool::handshake(ServerRef& s, Conn& c, Deadline dl) const {
  Status st = net::connect_to(s.host, s.port, dl, &c.fd);
  uint64_t boot = 0;
  if (st.is_ok()) st = prove(c.fd, dl, &boot);
  if (st.is_ok()) {
    c.boot = boot;
    // A server that started again has a new arena: an RDMA channel to the old one is stale,
    // and so are the other connections to it (with_conn drops them before use).
    if (s.boot_id.exchange(boot) != boot) {
      std::lock_guard lock(s.rdma.mu);
      s.rdma.channel.reset();
      s.rdma.tcp_only = false;
      s.rdma.retry_at = s.rdma.backoff_s = 0;
    }
  }
  if (!st.is_ok()) {
    c.drop();
    if (st.code() == KVTIER_ERR_DENIED)
      log().warn("remote tier: server {}: {}", s.name, st.message());
    else
      log().debug("remote tier: server {}: {}", s.name, st.message());
  }
  return st;
}

Status Pool::prove(int fd, Deadline dl, uint64_t* server_id) const {
  const wire::Nonce mine = wire::make_nonce();
  wire::Nonce theirs{};
  wire::Proof proof{};
  std::vector<uint8_t> hello(mine.begin(), mine.end());
  Status st = roundtrip(fd, wire::kHello, hello, dl, [&](int, wire::Reader& rd) {
    if (rd.left() != theirs.size() + 8 + proof.size())
      return Status{KVTIER_ERR_DENIED, "a HELLO reply of the wrong size"};
    std::memcpy(theirs.data(), rd.str(theirs.size()).data(), theirs.size());
    *server_id = rd.u64();
    std::memcpy(proof.data(), rd.str(proof.size()).data(), proof.size());
    return Status{};
  });
  if (!st.is_ok()) return st;
  // Nothing of value (the client's proof, its namespace, a page or a request) before this.
  if (!wire::same_proof(proof, wire::server_proof(token_, mine, theirs, *server_id)))
    return {KVTIER_ERR_DENIED,
            "it does not prove it holds the cluster's token (KVTIER_REMOTE_TOKEN): nothing sent "
            "to it"};
  const wire::Proof answer = wire::client_proof(token_, mine, theirs);
  wire::Writer w;
  w.bytes(answer.data(), answer.size());
  w.u64(ns_);
  return roundtrip(fd, wire::kHello, w.data(), dl, [](int, wire::Reader&) { return Status{}; });
}

Status Pool::with_conn(ServerRef& s, const Call& f) const {
  bool probe = false;
  if (Status st = admit(s, &probe); !st.is_ok()) return st;
  struct Probe {  // a probe that ends without an answer either way lets the next call probe
    ServerRef& s;
    bool armed;
    ~Probe() {
      if (armed) s.probing = false;
    }
  } probe_guard{s, probe};
  const Deadline dl = deadline();
  Conn* conn = take_conn(s, dl);
  if (!conn)
    return {KVTIER_ERR_TIMEOUT, "server " + s.name + ": no connection free before the deadline"};
  struct Held {  // given back however the call ends
    ServerRef& s;
    Conn* conn;
    ~Held() { give_back(s, conn); }
  } held{s, conn};
  // The server may have gone down while this call waited for a connection.
  if (!probe && s.failures.load() != 0)
    return {KVTIER_ERR_UNAVAILABLE, "server " + s.name + " went down while this call waited"};
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
  probe_guard.armed = false;
  record(s, probe, st);
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
