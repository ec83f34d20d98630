// How a server's page bytes move: one Transport per way, chosen per server by the tier (TCP, or
// RDMA when both ends have a device), so the tier's operations have no transport branches.
// The control plane is TCP frames either way (protocol.h).
#pragma once

#include <atomic>
#include <memory>
#include <span>
#include <vector>

#include "backends/remote/client/pool.h"
#include "src/tier.h"

namespace kvtier::remote {

// Per op of a put batch: stored, or the best error seen (a later replica may still store it).
struct PutOutcome {
  std::vector<int> best;
  std::vector<uint8_t> stored;
};

class Transport {
 public:
  virtual ~Transport() = default;
  Transport(const Transport&) = delete;
  Transport& operator=(const Transport&) = delete;

  // Writes ops[i] for i in idx to `s`: out.stored[i] = 1, or out.best[i] = the error.
  // Thread-safe; checksums are computed here (ensure_checksum) if the ops have none.
  virtual void put(ServerRef& s, std::span<PutOp> ops, std::span<const size_t> idx,
                   PutOutcome& out) = 0;
  // Reads ops[i] for i in idx from `s`. A key the server has: done[i] = 1 and op.result its
  // length (verified) or a size error. A key it lacks keeps its result. A failed call: the
  // keys not read get op.result = the error and done[i] = 0 (the next replica may answer).
  virtual void get(ServerRef& s, std::span<GetOp> ops, std::span<const size_t> idx,
                   std::vector<uint8_t>& done) = 0;

 protected:
  Transport() = default;
};

// Frames that carry the bytes (writev/readv straight from and into the fragments).
// `errors` counts the keys of failed reads.
std::unique_ptr<Transport> make_tcp_transport(const Pool& pool, std::atomic<uint64_t>& errors);

// One-sided RDMA WRITEs and READs into the server's arena (rdma.h), with ALLOC / COMMIT and
// LOOKUP / RELEASE frames on a control connection around them.
class RdmaTransport : public Transport {
 public:
  // Whether to move `s`'s bytes over RDMA, making the channel on first use. False with *err OK:
  // use TCP (the server has none, or RDMA failed and is backed off). False with an error: RDMA
  // is required (KVTIER_REMOTE_TRANSPORT=rdma) and failed.
  virtual bool ready(ServerRef& s, Status* err) = 0;
  // The engine's buffers, registered with every device a channel uses.
  virtual void register_memory(const void* addr, size_t len) = 0;
  virtual void unregister_memory(const void* addr) = 0;
};

// required: no TCP fallback (KVTIER_REMOTE_TRANSPORT=rdma); tos: KVTIER_REMOTE_RDMA_TOS.
std::unique_ptr<RdmaTransport> make_rdma_transport(const Pool& pool, std::atomic<uint64_t>& errors,
                                                   bool required, int tos);

// A stored value of `len` bytes found for op: whether it fits its fragments (the result is
// then its length, else the size error).
inline bool take_hit(GetOp& op, uint64_t len, uint64_t sum) {
  if (const int fit = fits(op, len); fit != KVTIER_OK) {
    op.result = fit;
    return false;
  }
  op.result = static_cast<int64_t>(len);
  op.checksum = sum;
  return true;
}

}  // namespace kvtier::remote
