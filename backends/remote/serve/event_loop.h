// The one server model of the remote backend: epoll event loops, not a thread per connection,
// serving kvtier-server (server/) and the p2p endpoint (p2p/) alike. A front loop owns the
// listening socket and every connection until it is authenticated (capped, the oldest closed
// first when full, only HELLO-sized frames of the HELLO type read); then a worker loop serves
// it. A connection goes through phases: a frame's header, its payload, then (if the service
// asks) bulk bytes straight into destinations the service gives, and a reply out of iovecs
// (the payload, then bytes straight from the service's memory). Every step has a deadline:
// authentication, each next request (idle), the rest of a frame once begun, each bulk transfer
// within the bulk timeout of its last progress (and by the end the service set). What a frame
// means is the service's (Service below); the loops, caps, deadlines and the frame reader and
// writer are here, once.
#pragma once

#include <sys/uio.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "src/log.h"
#include "backends/remote/wire/protocol.h"
#include "src/status.h"

namespace kvtier::serve {

using Clock = std::chrono::steady_clock;

// One connection, owned by one event loop at a time. A request is read whole (header, payload,
// then its bulk bytes if any) and answered before the next one is read. A service derives its
// own connection state from it (Service::make_conn).
struct Conn {
  enum class Phase { kHeader, kPayload, kBulkIn, kReply };
  virtual ~Conn() = default;
  uint64_t id = 0;  // unique for the loops' life: what leases and tickets name a connection by
  int fd = -1;
  bool hello = false;  // authenticated (Loops::admit): served by a worker loop from then on
  Phase phase = Phase::kHeader;
  uint8_t head[wire::kHeaderSize];
  size_t got = 0;  // bytes of the header, then of the payload, read so far
  wire::Header h;
  std::vector<uint8_t> payload;
  // Bulk bytes coming in: the destinations, in order (iov_base nullptr: drained); the first
  // `ready` have theirs set (Service::on_bulk_more sets more as the bytes come).
  std::vector<iovec> bulk;
  size_t bulk_at = 0;  // the entry bytes arrive for now
  size_t ready = 0;
  // The reply going out: header and payload, then the bulk iovecs given to reply().
  std::vector<uint8_t> reply;
  std::vector<iovec> out;
  size_t out_at = 0;
  bool close_after = false;    // an ERROR reply: the connection ends once it is out
  Clock::time_point started;   // the request's header in: its latency runs from here
  Clock::time_point deadline;  // of the next whole request (idle), or of authentication
  Clock::time_point moved;     // last progress of a bulk transfer or reply
  Clock::time_point bulk_end;  // a bulk transfer or reply ends by then, however it trickles
  int unacked = 0;             // of a reply: its bytes the peer had not acknowledged at a tick
  uint32_t events = 0;         // epoll interest
};

// Sets up the reply to the current frame: `type`, its payload, then `bulk` (not copied: it must
// stay valid until Service::on_reply_sent or on_close). Phase kReply.
void reply(Conn& c, uint16_t type, const std::vector<uint8_t>& payload,
           const std::vector<iovec>& bulk = {}, uint16_t version = wire::kVersion);
// An ERROR frame (code, message), in the wire version the peer spoke, after which the
// connection closes.
void reply_error(Conn& c, const Status& s);
// Starts reading `bulk` bytes for the current frame (phase kBulkIn), given silence of at most
// the bulk timeout and (when not max) an end by `end`.
void expect_bulk(Conn& c, std::vector<iovec> bulk, Clock::time_point end);

// What a frame means: implemented by kvtier-server and the p2p endpoint. Every call comes from
// the loop that owns the connection (front loop before authentication, a worker after); calls
// for one connection never overlap, calls for different ones may (several workers).
class Service {
 public:
  virtual ~Service() = default;
  virtual std::unique_ptr<Conn> make_conn() = 0;
  // A whole frame is in (c.h, c.payload): the service sets up a reply (serve::reply,
  // reply_error) or a bulk read (expect_bulk). Before authentication only a frame of
  // Settings::hello_type comes here; the service calls Loops::admit to authenticate.
  virtual void on_frame(Conn& c) = 0;
  // Before each read of bulk bytes: may set the destinations of entries from c.ready on, and
  // must set at least one when c.ready == c.bulk_at (or the connection is closed).
  virtual void on_bulk_more(Conn& c) = 0;
  // The bulk bytes are all in: set up the reply.
  virtual void on_bulk_done(Conn& c) = 0;
  // The reply is out (c.deadline: the idle deadline, which the service may shorten).
  virtual void on_reply_sent(Conn&) {}
  // A frame the loops refuse (bad header, a frame before authentication that is not a HELLO):
  // the service may count it; an ERROR reply follows.
  virtual void on_refused(Conn&, const Status&) {}
  // The connection ends, whatever way: what it holds goes back.
  virtual void on_close(Conn&) {}
  virtual void on_tick() {}  // the front loop's timer, every Settings::tick
};

struct Settings {
  std::string name;  // in log lines and refusals: "server", "p2p endpoint 127.0.0.1:7600"
  uint16_t hello_type = wire::kHello;  // the only frame read before authentication,
  uint32_t max_hello = wire::kMaxHelloPayload;  // of at most this payload
  uint32_t max_payload = wire::kMaxPayload;     // any frame's payload after it
  unsigned max_connections = 1024;              // authenticated, over all loops
  unsigned max_unauthenticated = 256;           // before it; the oldest closed first when full
  unsigned workers = 1;
  std::chrono::milliseconds hello_timeout{10000};  // to authenticate
  std::chrono::milliseconds idle_timeout{10000};   // to begin the next request
  std::chrono::milliseconds frame_timeout{10000};  // to finish a frame once its first byte came
  std::chrono::milliseconds bulk_timeout{10000};   // silence in bulk bytes or a reply
  std::chrono::milliseconds tick{100};             // deadlines are checked this often
};

class Loops {
 public:
  Loops(Settings settings, Service* service);
  ~Loops();  // stop()
  Loops(const Loops&) = delete;
  Loops& operator=(const Loops&) = delete;
  // Serves the listening socket `listen_fd` (the loops own it from here, also on failure).
  Status start(int listen_fd);
  // Stops accepting, closes every connection (Service::on_close) and joins the loops' threads:
  // after it no service call runs. Idempotent.
  void stop();
  bool stopping() const { return stopping_; }
  // Authenticates a connection (from Service::on_frame): BUSY at max_connections.
  Status admit(Conn& c);
  unsigned authenticated() const { return authed_.load(); }
  const Settings& settings() const { return opt_; }
  // Rate-limited warnings: a flood of bad peers must not fill the log.
  void warn(const std::string& msg) { warnings_.warn(msg); }

 private:
  class Loop;
  Settings opt_;
  Service* service_;
  int listen_fd_ = -1;
  std::vector<std::unique_ptr<Loop>> loops_;  // [0]: the front loop
  std::vector<std::thread> threads_;
  std::atomic<bool> stopping_{false};
  std::atomic<uint64_t> next_conn_{2};  // 0 and 1 tag the loops' own fds
  std::atomic<unsigned> authed_{0};
  LimitedWarnings warnings_;
};

}  // namespace kvtier::serve
