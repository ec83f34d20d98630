// kvtier-server: a memory arena on a memory node, shared by the remote tiers of many clients.
// Pages are put in two steps (bytes into a reserved slot, then commit), so a reader never sees
// half a page and a client that dies mid-put leaves nothing behind. Over RDMA the two steps are
// ALLOC (a slot under a lease), the client's one-sided writes, then COMMIT; a lease that runs
// out, or the end of the client's control connection, gives the slot back.
//
// Its parts, each a class of its own: the arena (arena.h: slots, the pages' table, pins,
// eviction), the leases on it (leases.h) and the disk under it (disk.h). This class wires them
// to the connections: what each request does, under one lock (mu_) over the arena and leases.
//
// Connections are served by the remote backend's event loops (serve/event_loop.h, which serve
// the p2p endpoint too), not a thread each: a front loop accepts and holds connections until
// their HELLO, a few worker loops serve the authenticated ones; this server is a serve::Service
// on them. Every connection is under a deadline at every step (HELLO, the next request, each
// bulk transfer), so neither a silent client nor a slow one holds a connection, a slot or a
// pin for long.
#pragma once

#include <sys/uio.h>

#include <chrono>
#include <cstddef>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "backends/remote/server/arena.h"
#include "backends/remote/wire/auth.h"
#include "backends/remote/server/disk.h"
#include "backends/remote/serve/event_loop.h"
#include "src/keys.h"
#include "backends/remote/server/leases.h"
#include "src/log.h"
#include "backends/remote/server/metrics.h"
#include "backends/remote/wire/protocol.h"
#include "backends/remote/rdma/rdma.h"
#include "src/status.h"
#include "src/tier.h"

namespace kvtier {

struct ServerOptions {
  std::string host = "127.0.0.1";  // --listen / KVTIER_SERVER_LISTEN
  uint16_t port = 7471;
  uint64_t capacity = 4ull << 30;  // --capacity / KVTIER_SERVER_CAPACITY
  std::string token;               // KVTIER_REMOTE_TOKEN (never a flag); empty: no check
  bool rdma = true;                // --rdma auto|off / KVTIER_SERVER_RDMA: serve RDMA if a device
  uint16_t rdma_port = 0;          // --rdma-port / KVTIER_SERVER_RDMA_PORT; 0: the TCP port + 1
  unsigned lease_ms = 10000;       // --lease-ms / KVTIER_SERVER_LEASE_MS: ALLOC and LOOKUP leases
  // --idle-timeout-ms / KVTIER_SERVER_IDLE_TIMEOUT_MS: a connection that has not completed
  // HELLO, or has sent no whole request, for this long is closed.
  unsigned idle_timeout_ms = 10000;
  // --bulk-timeout-ms / KVTIER_SERVER_BULK_TIMEOUT_MS: a PUT's bytes that stop arriving, or a
  // reply the client stops reading, for this long cut the connection and free its slots.
  unsigned bulk_timeout_ms = 10000;
  // --max-connections / KVTIER_SERVER_MAX_CONNECTIONS: authenticated connections; connections
  // still before HELLO are capped at a quarter of this (at least 16), the oldest closed first.
  unsigned max_connections = 1024;
  // --max-leases / KVTIER_SERVER_MAX_LEASES: ALLOC and LOOKUP leases one connection may hold.
  unsigned max_leases = 8192;
  unsigned threads = 0;  // --threads / KVTIER_SERVER_THREADS: worker loops; 0: min(4, cores)
  int rdma_tos = -1;     // --rdma-tos / KVTIER_SERVER_RDMA_TOS: 0..255; -1 the device's
  // --tiers memory,file / KVTIER_SERVER_TIERS: pages also on disk (disk.h), in the
  // library's file tier under file_dir (--file-dir), a folder per client namespace; all of
  // them together take at most file_capacity bytes of disk.
  bool file = false;
  std::string file_dir;
  uint64_t file_capacity = 16ull << 30;  // --file-capacity / KVTIER_SERVER_FILE_CAPACITY
};

class Server : private serve::Service {
 public:
  explicit Server(ServerOptions options);
  ~Server();
  // Binds and starts the loops; *port is the bound port (useful with port 0).
  Status start(uint16_t* port);
  // Stops accepting, closes every connection and waits for the loops.
  void stop();
  // The server's metrics in Prometheus' text format. Thread-safe.
  std::string metrics_text();

  // One client connection (its loop's part in serve::Conn): the handshake, its namespace and
  // what it holds (a PUT's slots coming in, the pages a GET reply is sending).
  struct Conn : serve::Conn {
    // The handshake's first half is done: the nonces its second half's proof is over.
    bool challenged = false;
    wire::Nonce client_nonce{}, server_nonce{};
    uint64_t ns = 0;
    uint64_t client = 0;  // its peer host and namespace: whose RDMA QPs to fence (rdma::Owner)
    // A PUT's values coming in, each straight into its slot (bulk: iov_base nullptr, drained);
    // bulk entries up to `ready` have their slot reserved (or refused).
    std::vector<wire::PutEntry> put;
    std::vector<int32_t> codes;
    std::vector<uint64_t> offsets, slots;
    std::vector<uint32_t> pinned;  // pages a GET reply is sending: unpinned once it is out
  };

 private:
  using Clock = std::chrono::steady_clock;
  static constexpr int32_t kUndecided = 2;  // a PUT value whose slot is not reserved yet

  // ---- requests (server.cpp): serve::Service, called by the connection's loop ----
  std::unique_ptr<serve::Conn> make_conn() override { return std::make_unique<Conn>(); }
  // A whole frame is in: sets up the reply (phase kReply) or a PUT's bulk read (kBulkIn).
  void on_frame(serve::Conn& c) override;
  // Slots for the PUT's next values, before their bytes come.
  void on_bulk_more(serve::Conn& c) override;
  void on_bulk_done(serve::Conn& c) override;  // a PUT's values are all in: publish and answer
  void on_reply_sent(serve::Conn& c) override;
  void on_refused(serve::Conn&, const Status& s) override { count_error(s); }
  // Whatever way it ends: its slots, pins, leases and tickets go back.
  void on_close(serve::Conn& c) override;
  void on_tick() override;  // leases that ran out end
  Status handle_hello(Conn& c, wire::Writer& out);
  Status handle(Conn& c, wire::Writer& out);
  Status handle_exists(Conn& c, wire::Writer& out);
  Status handle_sizes(Conn& c, wire::Writer& out);
  Status handle_remove(Conn& c, wire::Writer& out);
  Status handle_rdma(Conn& c, wire::Writer& out);
  // ALLOC and LOOKUP: the leases they grant end at `expiry`.
  Status handle_alloc(Conn& c, wire::Writer& out, Clock::time_point expiry);
  Status handle_lookup(Conn& c, wire::Writer& out, Clock::time_point expiry);
  Status begin_put(Conn& c);
  Status begin_get(Conn& c, wire::Writer& out);
  Status commit(Conn& c, wire::Writer& out);
  void reply_error(Conn& c, const Status& s);
  void count_error(const Status& s);  // a connection closed for it: counted and logged

  // ---- the disk under the arena (server.cpp); none of them needs mu_ held ----
  // Written slots no one else can see yet, to disk before their put is answered (Disk::write);
  // the pages it refused are counted as errors.
  void write_through(uint64_t ns, std::span<const Disk::Page> pages, std::span<int32_t> results);
  void promote(uint64_t ns, std::span<const KeyId> ids);  // disk -> arena, for what it lacks

  // ---- the fd budget (start.cpp) ----
  void fit_fd_limit();  // raises the soft fd limit; lowers the caps where it cannot
  // Rate-limited warnings: a flood of bad clients must not fill the log.
  void warn_limited(const std::string& msg) { warnings_.warn(msg); }

  ServerOptions opt_;
  std::unique_ptr<serve::Loops> loops_;  // its connections
  unsigned max_unauth_ = 16;

  LimitedWarnings warnings_;

  // One lock over the arena, its leases and the counters below.
  std::mutex mu_;
  Arena arena_;
  Leases leases_;
  std::unique_ptr<Disk> disk_;  // --tiers memory,file; null: memory only
  std::unique_ptr<rdma::Listener> rdma_;
  // The server's id, new at each start: clients tell aliases of one server apart by it, and
  // that RDMA channels to an earlier start are stale.
  const uint64_t boot_id_;
  uint64_t errors_ = 0, hits_ = 0, misses_ = 0;
  // Per request type (wire::Type, HELLO .. RELEASE): observed when the reply is out.
  std::array<LatencyHistogram, wire::kSizes + 1> latency_;
};

}  // namespace kvtier
