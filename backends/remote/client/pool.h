// The client's servers and their connections: a pool of TCP control connections per server,
// each opened with the HELLO handshake (each end proves it holds the token; the namespace) and
// dropped when the server restarts (a new server id), plus the server's RDMA state, which the
// RDMA transport owns.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "src/deadline_lock.h"
#include "backends/remote/wire/net.h"
#include "backends/remote/wire/protocol.h"
#include "backends/remote/rdma/rdma.h"
#include "src/status.h"

namespace kvtier::remote {

using net::Clock;
using net::Deadline;

struct Conn {
  bool busy = false;  // a call holds it; guarded by ServerRef::pool_mu
  int fd = -1;        // used only by the call that holds it
  uint64_t boot = 0;  // the server start it was made to
  void drop();
};

// The RDMA data plane to one server (rdma_transport.cpp), reset when the server restarts.
struct RdmaLink {
  kvtier::DeadlineLock mu;  // timed: a batch waits for the channel only until its deadline
  std::unique_ptr<rdma::Channel> channel;  // guarded by mu
  bool tcp_only = false;                   // auto: the server has no RDMA
  int64_t retry_at = 0;                    // steady-clock ns: no new channel before
  int64_t backoff_s = 0;                   // grows 5 s, 10 s, ... 5 min while RDMA keeps failing
};

struct ServerRef {
  std::string name, host;
  uint16_t port = 0;
  uint64_t seed = 0;  // for rendezvous hashing (placement.h)
  std::vector<std::unique_ptr<Conn>> conns;
  // A call waits for a free connection with its deadline: a hung server holds them all.
  // (A condition variable, not timed mutexes: ThreadSanitizer cannot see clock-locked mutexes.)
  std::mutex pool_mu;
  std::condition_variable pool_cv;
  std::atomic<size_t> next{0};
  // The circuit breaker: a server that timed out or could not be reached is down; calls to it
  // fail fast with UNAVAILABLE until down_until, then one call at a time probes it (probing)
  // and the rest keep failing fast; each failed probe doubles the wait (up to kMaxDownMs).
  std::atomic<int64_t> down_until{0};  // steady-clock ns
  std::atomic<uint32_t> failures{0};   // in a row; 0: up
  std::atomic<bool> probing{false};
  // The id the server proved (new at each start): the start the connections were made to.
  std::atomic<uint64_t> boot_id{0};
  // The start that answered SIZES with an error (a server older than the frame): until it
  // restarts, sizes are asked it with a GET of no room.
  std::atomic<uint64_t> no_sizes{0};
  RdmaLink rdma;
  ~ServerRef();
};

// What a reply's payload is handed to (the fd: a GET reply's values follow on the socket).
using OnReply = std::function<Status(int fd, wire::Reader& reply)>;

// Reads the reply to a request of `type`: an ERROR reply becomes its code, a short payload
// INVALID_ARG.
Status read_reply(int fd, uint16_t type, Deadline dl, const OnReply& on_reply);
// One request (no bulk) and its reply.
Status roundtrip(int fd, uint16_t type, const std::vector<uint8_t>& payload, Deadline dl,
                 const OnReply& on_reply);

// Connections to the servers, for every call of one tier. Thread-safe.
class Pool {
 public:
  static constexpr int kConnsPerServer = 4;
  Pool(unsigned timeout_ms, std::string token, uint64_t ns_seed)
      : timeout_ms_(timeout_ms), token_(std::move(token)), ns_(ns_seed) {}

  // A call's deadline, from now: KVTIER_REMOTE_TIMEOUT_MS.
  Deadline deadline() const { return Clock::now() + std::chrono::milliseconds(timeout_ms_); }

  // Runs f(fd, deadline) on a connection of `s` (connecting it first); a failed connection is
  // closed, since whatever the stream held is lost; the next call reconnects. The deadline
  // covers the wait for a connection too. A pooled connection that fails before any reply
  // (the server restarted since it was made) is replaced once, within the same deadline.
  using Call = std::function<Status(int fd, Deadline dl)>;
  Status with_conn(ServerRef& s, const Call& f) const;

  // One request and its reply on a connection of `s`.
  Status exchange(ServerRef& s, uint16_t type, const std::vector<uint8_t>& payload,
                  const OnReply& on_reply) const;

 private:
  Status handshake(ServerRef& s, Conn& c, Deadline dl) const;
  // The HELLO handshake on a connected fd (auth.h): DENIED when the server does not prove it
  // holds the token, before anything else is sent; *server_id: the id it proved.
  Status prove(int fd, Deadline dl, uint64_t* server_id) const;
  // The breaker's answer before a call uses `s`: OK to go on (*probe: this call is the one
  // probe of a server that was down), else UNAVAILABLE at once.
  static Status admit(ServerRef& s, bool* probe);
  // The breaker after a call: a failure of the server itself (a timeout, a dead connection)
  // opens it; a success closes it.
  void record(ServerRef& s, bool probe, const Status& st) const;
  static Conn* take_conn(ServerRef& s, Deadline dl);
  static void give_back(ServerRef& s, Conn* conn);

  const unsigned timeout_ms_;
  const std::string token_;
  const uint64_t ns_;
};

}  // namespace kvtier::remote
