// kvtier-server: a memory arena on a memory node, shared by the remote tiers of many clients.
// Pages are put in two steps (bytes into a reserved slot, then commit), so a reader never sees
// half a page and a client that dies mid-put leaves nothing behind. Over RDMA the two steps are
// ALLOC (a slot under a lease), the client's one-sided writes, then COMMIT; a lease that runs
// out, or the end of the client's control connection, gives the slot back.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "keys.h"
#include "protocol.h"
#include "rdma.h"
#include "status.h"

namespace kvtier {

struct ServerOptions {
  std::string host = "127.0.0.1";  // --listen / KVTIER_SERVER_LISTEN
  uint16_t port = 7471;
  uint64_t capacity = 4ull << 30;  // --capacity / KVTIER_SERVER_CAPACITY
  std::string token;               // --token / KVTIER_REMOTE_TOKEN; empty: no check
  bool rdma = true;                // --rdma auto|off / KVTIER_SERVER_RDMA: serve RDMA if a device
  uint16_t rdma_port = 0;          // --rdma-port / KVTIER_SERVER_RDMA_PORT; 0: the TCP port + 1
  unsigned lease_ms = 10000;       // --lease-ms / KVTIER_SERVER_LEASE_MS: ALLOC and LOOKUP leases
  int rdma_tos = -1;               // --rdma-tos / KVTIER_SERVER_RDMA_TOS: 0..255; -1 the default
};

class Server {
 public:
  explicit Server(ServerOptions options);
  ~Server();
  // Binds and starts accepting; *port is the bound port (useful with port 0).
  Status start(uint16_t* port);
  // Stops accepting, closes every connection and waits for their threads.
  void stop();

 private:
  struct Entry {
    uint64_t offset, slot_size, length, checksum, ns;
    std::list<std::pair<uint64_t, KeyId>>::iterator lru;
  };
  struct Ids {  // ids are per namespace: the client's namespace seed is part of the key
    size_t operator()(const std::pair<uint64_t, KeyId>& k) const { return k.second.lo ^ k.first; }
  };
  using Key = std::pair<uint64_t, KeyId>;

  using Clock = std::chrono::steady_clock;
  struct Session {  // one control connection
    int fd;
    uint64_t ns = 0;
    uint64_t client = 0;  // its peer host and namespace: whose RDMA QPs to fence (rdma::Owner)
  };
  // A slot handed out by ALLOC, written by the client, not yet committed.
  struct Pending {
    Key key;
    uint64_t offset, slot_size, length, checksum;
    Clock::time_point expiry;
    int conn;
    uint64_t client;  // Session::client: fenced before the slot goes back
  };
  struct ReadLease {  // a page pinned by LOOKUP until RELEASE
    uint64_t offset;
    Clock::time_point expiry;
    int conn;
  };

  void accept_loop();
  void serve(int fd);
  Status handle(Session& ss, const wire::Header& h, std::vector<uint8_t>& payload);
  Status handle_rdma(Session& ss, const wire::Header& h, std::vector<uint8_t>& payload,
                     wire::Writer& out);
  // REQUIRES mu_: a written slot becomes the key's page (or goes back if the key has one).
  void publish(const Key& key, uint64_t offset, uint64_t slot_size, uint64_t length,
               uint64_t checksum);
  const Entry& pin(Entry& e);           // REQUIRES mu_: most recent, and not evicted until unpin
  void unpin(uint64_t offset);          // REQUIRES mu_
  void reap(Clock::time_point now);     // REQUIRES mu_: ends leases that ran out
  void end_session(const Session& ss);  // REQUIRES mu_: ends its leases and tickets
  // REQUIRES mu_: ends the ALLOC and LOOKUP leases for which ends(expiry, conn); how many.
  uint64_t end_leases(const std::function<bool(Clock::time_point, int)>& ends);
  // REQUIRES mu_: a slot of `bytes`, evicting least-recently-used unpinned pages if needed.
  bool allocate(uint64_t bytes, uint64_t* offset, uint64_t* slot_size);
  void free_slot(uint64_t offset, uint64_t slot_size);  // REQUIRES mu_
  // REQUIRES mu_: drops a page from the index; its slot is freed now, or when the last reply
  // still sending its bytes is done.
  void drop(std::unordered_map<std::pair<uint64_t, KeyId>, Entry, Ids>::iterator it);

  ServerOptions opt_;
  std::byte* arena_ = nullptr;
  int listen_fd_ = -1;
  std::thread acceptor_;
  std::atomic<bool> stopping_{false};

  std::mutex conns_mu_;
  std::map<int, std::thread> conns_;
  std::vector<std::thread> finished_;

  std::mutex mu_;
  std::unordered_map<Key, Entry, Ids> map_;
  std::list<Key> lru_list_;                         // front = most recent
  std::map<uint64_t, std::vector<uint64_t>> free_;  // slot size -> offsets
  std::unordered_map<uint64_t, uint32_t> pins_;     // offset -> replies sending its bytes
  std::unordered_map<uint64_t, uint64_t> dropped_;  // offset -> slot size, freed at unpin
  std::unordered_map<uint64_t, Pending> pending_;   // offset -> reserved by ALLOC
  std::unordered_map<uint64_t, ReadLease> leases_;  // lease id -> pinned by LOOKUP
  uint64_t next_lease_ = 1;
  Clock::time_point next_reap_{};
  std::unique_ptr<rdma::Listener> rdma_;
  const uint64_t boot_id_;  // tells clients that RDMA channels to an earlier start are stale
  uint64_t bump_ = 0;
  uint64_t used_ = 0;
  uint64_t evictions_ = 0, errors_ = 0, expired_ = 0;
};

}  // namespace kvtier
