// The remote tier's RDMA data plane: one-sided RDMA WRITE (puts) and READ (gets) between the
// client's registered memory and kvtier-server's arena. The TCP frames stay the control plane
// (ALLOC / COMMIT / LOOKUP / RELEASE in protocol.h); only the page bytes move here.
//
// How work is posted (the reason this is fast, see README "RDMA design"):
//  - memory is registered once: the server's whole arena at start, the engine's buffers when it
//    calls kvtier_register_buffer, one staging buffer per channel for everything else;
//  - a batch becomes one plan: a work request per contiguous remote range, gathering up to
//    max_sge fragments, spread over kQps queue pairs;
//  - each QP's requests are posted as chains of kSignalEvery linked requests with one
//    ibv_post_send, and only the last of a chain asks for a completion;
//  - no per-request state: a completion's wr_id names its chain.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "keys.h"
#include "net.h"
#include "status.h"

namespace kvtier::rdma {

constexpr uint32_t kQps = 4;            // queue pairs per client-server channel
constexpr uint32_t kDepth = 512;        // send queue entries per QP
constexpr uint32_t kSignalEvery = 32;   // requests per chain; one completion per chain
constexpr size_t kStaging = 16u << 20;  // per channel, for fragments outside registered memory

// True when this build has RDMA and the host has an RDMA device.
bool available();

// ---- Planning: pure logic, no verbs (unit-tested without a device) ----

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

// Plans the transfers; every fragment must have an lkey (else KVTIER_ERR_NOT_REGISTERED).
// Reuses `plan`'s vectors, so a caller that keeps one plan allocates nothing per batch.
Status make_plan(std::span<const Transfer> transfers, uint32_t max_sge, uint32_t qps,
                 uint32_t signal_every, const LkeyOf& lkey_of, Plan* plan);

// ---- Verbs (rdma.cpp; stubs that say UNSUPPORTED when built without RDMA) ----

// The caller's memory registered with every device a channel uses (engine host pools).
class Registry {
 public:
  static std::shared_ptr<Registry> create();
  virtual ~Registry() = default;
  virtual void add(const void* addr, size_t len) = 0;
  virtual void remove(const void* addr) = 0;
};

// The server side: accepts RDMA connections whose ticket `accept` approves and lets them
// read and write `arena` one-sided.
class Listener {
 public:
  static Status start(const std::string& host, uint16_t port, std::byte* arena, size_t bytes,
                      std::function<bool(uint64_t ticket)> accept, std::unique_ptr<Listener>* out);
  virtual ~Listener() = default;
  virtual uint16_t port() const = 0;
};

// The client side: kQps connected QPs to one server. Not thread-safe: one batch at a time.
class Channel {
 public:
  static Status connect(const std::string& host, uint16_t port, uint64_t ticket,
                        std::shared_ptr<Registry> registry, net::Deadline deadline,
                        std::unique_ptr<Channel>* out);
  virtual ~Channel() = default;
  // Moves every transfer (write: local -> arena; read: arena -> local). Fragments outside
  // registered memory pass through the staging buffer. Any failure kills the channel: its QPs
  // are moved to the error state and drained before this returns, so no request still in
  // flight can touch the caller's memory afterwards.
  virtual Status run(bool write, std::span<const Transfer> transfers, net::Deadline deadline) = 0;
  virtual bool dead() const = 0;
};

}  // namespace kvtier::rdma
