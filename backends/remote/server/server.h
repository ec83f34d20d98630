// kvtier-server: a memory arena on a memory node, shared by the remote tiers of many clients.
// Pages are put in two steps (bytes into a reserved slot, then commit), so a reader never sees
// half a page and a client that dies mid-put leaves nothing behind. Over RDMA the two steps are
// ALLOC (a slot under a lease), the client's one-sided writes, then COMMIT; a lease that runs
// out, or the end of the client's control connection, gives the slot back.
//
// Connections are served by the remote backend's event loops (serve/event_loop.h, which serve
// the p2p endpoint too), not a thread each: a front loop accepts and holds connections until
// their HELLO, a few worker loops serve the authenticated ones; this server is a serve::Service
// on them. Every connection is under a deadline at every step (HELLO, the next request, each
// bulk transfer), so neither a silent client nor a slow one holds a connection, a slot or a
// pin for long.
#pragma once

#include <sys/uio.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <deque>
#include <list>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "auth.h"
#include "event_loop.h"
#include "free_space.h"
#include "keys.h"
#include "log.h"
#include "metrics.h"
#include "page_table.h"
#include "protocol.h"
#include "rdma.h"
#include "status.h"
#include "tier.h"

namespace kvtier {

struct ServerOptions {
  std::string host = "127.0.0.1";  // --listen / KVTIER_SERVER_LISTEN
  uint16_t port = 7471;
  uint64_t capacity = 4ull << 30;  // --capacity / KVTIER_SERVER_CAPACITY
  std::string token;               // --token / KVTIER_REMOTE_TOKEN; empty: no check
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
  // --tiers memory,file / KVTIER_SERVER_TIERS: pages also on disk (disk.cpp), in the
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
  using Key = std::pair<uint64_t, KeyId>;   // (namespace, id)
  static constexpr int32_t kUndecided = 2;  // a PUT value whose slot is not reserved yet

  struct Page {
    uint64_t offset = 0, slot_size = 0, length = 0, checksum = 0;
    std::list<uint32_t>::iterator in_ns;  // in its namespace's list, so CLEAR visits only those
  };
  // Key ids come from clients, who can choose them: the table hashes them with a secret seed
  // drawn at start, so no client can make its keys (or another's) collide.
  struct Ids {
    uint64_t seed;
    size_t operator()(const Key& k) const;
    size_t operator()(uint64_t ns) const { return (*this)({ns, KeyId{}}); }
  };
  // A slot handed out by ALLOC, written by the client, not yet committed.
  struct Pending {
    Key key;
    uint64_t offset, slot_size, length, checksum;
    Clock::time_point expiry;
    uint64_t conn;
    uint64_t client;  // Conn::client: fenced before the slot goes back
  };
  struct ReadLease {  // a page pinned by LOOKUP until RELEASE
    uint32_t page;
    Clock::time_point expiry;
    uint64_t conn;
  };

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
  // REQUIRES mu_: a new lease of the connection's, ending at `expiry`.
  uint64_t grant_lease(uint64_t conn, Clock::time_point expiry);

  // ---- the arena (server.cpp), REQUIRES mu_ ----
  // A written slot becomes the key's page (or goes back if the key has one).
  void publish(const Key& key, uint64_t offset, uint64_t slot_size, uint64_t length,
               uint64_t checksum);
  const Page& pin(uint32_t page);  // most recent, and not evicted until unpin
  void unpin(uint32_t page);
  void reap(Clock::time_point now);  // ends leases that ran out, oldest first
  // Ends an ALLOC lease (its slot goes back) or a LOOKUP lease (its pin goes); false if none.
  bool end_lease(uint64_t id);
  // A slot of `bytes`, evicting least-recently-used unpinned pages if needed.
  bool allocate(uint64_t bytes, uint64_t* offset, uint64_t* slot_size);
  void free_slot(uint64_t offset, uint64_t slot_size);
  // Drops a page from the index; its slot is freed now, or when the last reply still sending
  // its bytes is done.
  void drop(uint32_t page);
  bool has_page(const Key& key) const { return pages_.find(key) != Pages::kNone; }

  // ---- the disk under the arena (disk.cpp); none of them needs mu_ held ----
  struct DiskPage {
    KeyId id;
    uint64_t offset, length, checksum;  // the page's bytes in the arena
  };
  struct DiskNs {                // a namespace with a folder on disk
    std::shared_ptr<Tier> tier;  // its file tier; null: closed (its fds given back)
    uint64_t bytes = 0;          // what its files take on disk, as last measured
    std::list<uint64_t>::iterator lru;
  };
  Status open_disk();  // checks --file-dir at start and finds the namespaces on it
  // The namespace's file tier, opened if its folder exists, made first when `create` (a write);
  // null: none (a read misses on disk, a write is refused).
  std::shared_ptr<Tier> disk(uint64_t ns, bool create);
  // Room for `bytes` more within --file-capacity: other namespaces go whole, least recently
  // used first.
  void make_disk_room(uint64_t ns, uint64_t bytes);
  void measure_disk(uint64_t ns);  // after its files changed
  // Bytes the namespace's folder takes on disk; with `erase`, deletes it. REQUIRES disk_mu_
  // when erasing.
  uint64_t folder_bytes(uint64_t ns, bool erase);
  // results[i]: 0 (on disk, durable) or why not; a page that failed must not be acknowledged.
  void write_through(uint64_t ns, std::span<const DiskPage> pages, std::span<int32_t> results);
  void promote(uint64_t ns, std::span<const KeyId> ids);  // disk -> arena, for what it lacks
  void disk_exists(uint64_t ns, std::span<const KeyId> ids, std::span<uint8_t> present);
  void disk_remove(uint64_t ns, std::span<const KeyId> ids, std::span<int32_t> results);
  void disk_clear(uint64_t ns);

  // ---- connections (loop.cpp) ----
  void fit_fd_limit();  // raises the soft fd limit; lowers the caps where it cannot
  // Rate-limited warnings: a flood of bad clients must not fill the log.
  void warn_limited(const std::string& msg) { warnings_.warn(msg); }

  ServerOptions opt_;
  std::byte* arena_ = nullptr;
  std::unique_ptr<serve::Loops> loops_;  // its connections
  unsigned max_unauth_ = 16;

  LimitedWarnings warnings_;

  std::mutex mu_;
  const uint64_t hash_seed_;
  using Pages = PageTable<Key, Page, Ids>;
  Pages pages_;  // pinned by GET replies being sent and by LOOKUP leases
  std::unordered_map<uint64_t, std::list<uint32_t>, Ids> ns_pages_;  // namespace -> its pages
  FreeSpace free_;
  std::unordered_map<uint64_t, Pending> pending_;   // lease id -> reserved by ALLOC
  std::unordered_map<uint64_t, ReadLease> leases_;  // lease id -> pinned by LOOKUP
  // connection -> its leases; so a connection's end, and the cap, cost its own leases only
  std::unordered_map<uint64_t, std::unordered_set<uint64_t>> held_;
  // (end, lease id) in the order granted, which is the order they end (one lease time for all):
  // the timer pops what ran out instead of scanning every lease. Ended ones are skipped.
  std::deque<std::pair<Clock::time_point, uint64_t>> expiries_;
  uint64_t next_lease_ = 1;
  Clock::time_point next_reap_{};
  std::unique_ptr<rdma::Listener> rdma_;
  // The server's id, new at each start: clients tell aliases of one server apart by it, and
  // that RDMA channels to an earlier start are stale.
  const uint64_t boot_id_;
  uint64_t used_ = 0;
  uint64_t evictions_ = 0, errors_ = 0, expired_ = 0, hits_ = 0, misses_ = 0;
  // Per request type (wire::Type, HELLO .. RELEASE): observed when the reply is out.
  std::array<LatencyHistogram, wire::kRelease + 1> latency_;
  std::atomic<uint64_t> largest_page_{0};  // what promotion reads room for first
  int disk_root_ = -1;                     // --file-dir
  std::atomic<size_t> disks_open_{0};      // file tiers alive, also those closed but still in use
  size_t max_open_disks_ = 64;             // set by fit_fd_limit
  std::mutex disk_mu_;
  std::unordered_map<uint64_t, DiskNs> disks_;  // guarded by disk_mu_, as are the three below
  std::list<uint64_t> disk_lru_;                // namespaces on disk, most recently used first
  uint64_t disk_bytes_ = 0;                     // what they all take
};

}  // namespace kvtier
