// The remote tier's RDMA data plane: one-sided RDMA WRITE (puts) and READ (gets) between the
// client's registered memory and kvtier-server's arena. The TCP frames stay the control plane
// (ALLOC / COMMIT / LOOKUP / RELEASE in protocol.h); only the page bytes move here.
//
// How work is posted (the reason this is fast; docs/rdma.md):
//  - memory is registered once: the server's whole arena at start, the engine's buffers when it
//    calls kvtier_register_buffer, one staging buffer per channel for everything else;
//  - a batch becomes one plan: a work request per contiguous remote range of at most the
//    ports' max_msg_sz bytes, gathering up to max_sge fragments (READs: max_sge_rd), spread
//    over kQps queue pairs;
//  - each QP's requests are posted as chains of kSignalEvery linked requests with one
//    ibv_post_send, and only the last of a chain asks for a completion;
//  - no per-request state: a completion's wr_id names its chain.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <random>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "src/deadline_lock.h"
#include "src/keys.h"
#include "backends/remote/wire/net.h"
#include "src/status.h"

namespace kvtier::rdma {

constexpr uint32_t kQps = 4;            // queue pairs per client-server channel
constexpr uint32_t kDepth = 512;        // send queue entries per QP
constexpr uint32_t kSignalEvery = 32;   // requests per chain; one completion per chain
constexpr size_t kStaging = 16u << 20;  // per channel, for fragments outside registered memory
constexpr uint32_t kMaxSge = 16;        // SGEs per request, whatever more the NIC allows

// True when this build has RDMA and the host has an RDMA device.
bool available();

// ---- Pure logic, no verbs (unit-tested without a device: tests/remote/rdma_logic_test.cpp) ----

// What a device and port allow, as ibv_query_device / ibv_query_port report it.
struct DeviceCaps {
  int max_sge = 1;              // SGEs per send-queue request (WRITE)
  int max_sge_rd = 0;           // SGEs per RDMA READ request; 0: not reported
  int max_qp_rd_atom = 0;       // READs a QP answers at once (responder)
  int max_qp_init_rd_atom = 0;  // READs a QP has in flight at once (initiator)
  uint32_t max_msg_sz = 0;      // bytes per message on the port; 0: not reported
  bool iwarp = false;           // transport_type == IBV_TRANSPORT_IWARP
};

// SGEs per request: WRITEs take max_sge, READs min(max_sge, max_sge_rd) (a READ with more than
// max_sge_rd SGEs fails on NICs where it is lower, e.g. iWARP's 1); always 1..kMaxSge.
uint32_t sge_limit(const DeviceCaps& caps, bool write);

// Bytes per request: the smaller of the two ports' max_msg_sz (0: unknown, so 2 GiB, the
// largest any verbs message can be).
uint32_t msg_limit(uint32_t local_max_msg_sz, uint32_t remote_max_msg_sz);

// Access flags for memory the client reads into: an RDMA READ's response is placed like a
// tagged write on iWARP, so a READ sink there needs REMOTE_WRITE; IB and RoCE need only
// LOCAL_WRITE (and get nothing more, so no peer can write the engine's memory).
int sink_access(bool iwarp);

// The READ depths in rdma_conn_param. The client only initiates READs: initiator_depth is what
// its device allows (librdmacm refuses more than max_qp_init_rd_atom), responder_resources 0
// (librdmacm refuses more than max_qp_rd_atom; nobody READs the client). The CM swaps the two
// on the way: in the server's CONNECT_REQUEST event, responder_resources is the client's
// initiator_depth and initiator_depth the client's responder_resources.
struct Depths {
  uint8_t initiator_depth = 0;
  uint8_t responder_resources = 0;
};
Depths client_depths(const DeviceCaps& local);
// `requested`: the event's param.conn values, as the CM delivers them (already swapped).
Depths server_depths(Depths requested, const DeviceCaps& local);

// Whether [remote, remote + len) lies in an arena of `bytes` (no wraparound).
inline bool in_arena(uint64_t remote, uint64_t len, uint64_t bytes) {
  return !(len > bytes || remote > bytes - len);
}

// Whether `host` resolves to a loopback address (rdma_cm cannot serve RDMA on lo).
bool loopback_address(const std::string& host);

// A warning when RLIMIT_MEMLOCK (soft limit `limit`, RLIM_INFINITY as UINT64_MAX) is below the
// `need` bytes about to be pinned; empty when it is enough.
std::string memlock_warning(uint64_t limit, uint64_t need);

// Who an RDMA connection belongs to on the server: the control connection that asked for its
// ticket, and the client (its host and namespace), so the server can fence the QPs that could
// still write into slots it is about to reuse.
struct Owner {
  uint64_t session = 0;  // the control connection (its id, or its fd)
  uint64_t client = 0;
};

// Tickets for RDMA connections (the server's side). A ticket admits one channel: kQps
// connections, then it is gone; an unused one expires after `ttl`; the tickets of a control
// connection end with it. Thread-safe.
class TicketBook {
 public:
  using Clock = std::chrono::steady_clock;
  explicit TicketBook(Clock::duration ttl = std::chrono::seconds(30), uint32_t uses = kQps);
  uint64_t issue(Owner owner, Clock::time_point now);  // never 0
  // True (and *owner) when `ticket` is live: counts one use.
  bool redeem(uint64_t ticket, Clock::time_point now, Owner* owner);
  void end_session(uint64_t session);  // drops that control connection's tickets
  size_t size() const;

 private:
  struct Entry {
    Owner owner;
    Clock::time_point expiry;
    uint32_t uses_left;
  };
  void expire(Clock::time_point now);  // REQUIRES mu_

  const Clock::duration ttl_;
  const uint32_t uses_;
  mutable std::mutex mu_;
  std::mt19937_64 rng_;
  std::unordered_map<uint64_t, Entry> live_;
};

// ---- Planning ----
// `local` holds `len` bytes that go to (or come from) the arena at `remote` (an offset).
struct Transfer {
  Frags local;
  uint64_t remote = 0;
  size_t len = 0;
};
struct Sge {
  uint64_t addr;
  uint32_t length;
  uint32_t lkey;
};
struct Wr {
  uint32_t first_sge, num_sge;
  uint64_t remote;  // arena offset
  uint64_t len;
};
struct Chain {  // posted with one ibv_post_send; only its last request is signalled
  uint32_t qp, first_wr, count;
};
struct Plan {
  std::vector<Sge> sges;
  std::vector<Wr> wrs;
  std::vector<Chain> chains;
};
// The lkey of the memory region holding [addr, addr+len), or false if none does.
using LkeyOf = std::function<bool(const std::byte* addr, size_t len, uint32_t* lkey)>;

// Limits of one request: SGEs (sge_limit) and bytes (msg_limit; a port's max_msg_sz can be as
// low as a few MiB, soft-RoCE's is 8 MiB, while a staged round is 16 MiB and a page up to 1 GiB).
struct PlanLimits {
  uint32_t max_sge = 1;
  uint32_t max_msg = 1u << 31;
};
// Plans the transfers: a request per run of at most max_sge SGEs and max_msg bytes (a fragment
// larger than what is left of a request is split between requests), each request one
// contiguous remote range. Every fragment must have an lkey (else KVTIER_ERR_NOT_REGISTERED).
// Reuses `plan`'s vectors, so a caller that keeps one plan allocates nothing per batch.
Status make_plan(std::span<const Transfer> transfers, PlanLimits limits, uint32_t qps,
                 uint32_t signal_every, const LkeyOf& lkey_of, Plan* plan);

// ---- Verbs: verbs.cpp (shared helpers), registry.cpp, channel.cpp (the client's),
// listener.cpp (the server's); rdma_off.cpp: stubs that say UNSUPPORTED without RDMA ----

// The caller's memory registered with every device a channel uses (engine host pools).
class Registry {
 public:
  static std::shared_ptr<Registry> create();
  virtual ~Registry() = default;
  virtual void add(const void* addr, size_t len) = 0;
  virtual void remove(const void* addr) = 0;
};

// The server side: accepts RDMA connections that bring a ticket it issued and lets them read
// and write `arena` one-sided. The arena is registered with every RDMA device at start (not at
// a client's first connect), so start() can take a while for a large arena.
struct ListenOptions {
  std::string host;  // an address of the NIC (a loopback address gets a warning: it cannot work)
  uint16_t port = 0;
  int tos = -1;  // RDMA_OPTION_ID_TOS of the listener (0..255); -1: the device's default
};
class Listener {
 public:
  static Status start(const ListenOptions& options, std::byte* arena, size_t bytes,
                      std::unique_ptr<Listener>* out);
  virtual ~Listener() = default;
  virtual uint16_t port() const = 0;
  // False while no device can take connections (every device with the arena was removed):
  // tickets are then not issued and clients move their bytes over TCP.
  virtual bool serving() const = 0;
  // A ticket for one channel of the client on control connection `owner.session`.
  virtual uint64_t issue_ticket(Owner owner) = 0;
  // Fences: moves the QPs admitted for that control connection (its unused tickets end too),
  // or for that client, to the error state before returning, so that none of their RDMA
  // WRITEs can land in the arena afterwards; the QPs are destroyed soon after. Thread-safe.
  virtual size_t fence_session(uint64_t session) = 0;
  virtual size_t fence_client(uint64_t client) = 0;
};

// The client side: kQps connected QPs to one server. Not thread-safe: one batch at a time.
class Channel {
 public:
  // tos: RDMA_OPTION_ID_TOS (0..255, KVTIER_REMOTE_RDMA_TOS); -1: the device's default.
  static Status connect(const std::string& host, uint16_t port, uint64_t ticket, int tos,
                        std::shared_ptr<Registry> registry, net::Deadline deadline,
                        std::unique_ptr<Channel>* out);
  virtual ~Channel() = default;
  // Moves every transfer (write: local -> arena; read: arena -> local). Fragments outside
  // registered memory pass through the staging buffer. A deadline that has passed before a
  // round is posted fails the call with KVTIER_ERR_TIMEOUT and leaves the channel up. Any
  // failure once requests are in flight kills the channel: its QPs are moved to the error
  // state and drained before this returns, so no request still in flight can touch the
  // caller's memory afterwards.
  virtual Status run(bool write, std::span<const Transfer> transfers, net::Deadline deadline) = 0;
  virtual bool dead() const = 0;
};

// Runs one batch on `*channel` under `mu`, waiting for the lock only until `deadline`: past it
// (another batch holds the channel) or with the deadline already gone, the batch fails with
// KVTIER_ERR_TIMEOUT before anything is posted and the channel stays up, busy is not broken.
// A channel that died in the run is reset (and *lost set), so the next call makes a new one.
Status run_locked(kvtier::DeadlineLock& mu, std::unique_ptr<Channel>& channel, bool write,
                  std::span<const Transfer> transfers, net::Deadline deadline, bool* lost);

}  // namespace kvtier::rdma
