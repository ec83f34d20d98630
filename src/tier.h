// The interface every tier implements, and the registry that names them.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "src/config.h"
#include "src/keys.h"
#include "src/status.h"

namespace kvtier {

// One key to store. The tier copies the bytes out of `frags` before put() returns.
struct PutOp {
  KeyId id;
  Frags frags;
  size_t size = 0;            // total_len(frags)
  uint64_t checksum = 0;      // XXH3-64 of the bytes, when has_checksum
  int result = 0;             // out: 0 (stored or already present) or a negative code
  bool has_checksum = false;  // false: a tier that can tear computes it (ensure_checksum)
};

// How a stored value must fit the fragments it is read into.
enum class Fit {
  kAtMost,  // at most their total (kvtier_batch_get: a buffer with room to spare)
  kExact,   // exactly their total (the _v1 gets: a page of the engine's pool)
};

// One key to read into `frags`.
struct GetOp {
  KeyId id;
  Frags frags;
  size_t capacity = 0;  // total_len(frags)
  Fit fit = Fit::kAtMost;
  int64_t result = 0;     // out: bytes copied or a negative code (NOT_FOUND on a miss)
  uint64_t checksum = 0;  // out: the checksum stored with the value
  uint64_t stored = 0;    // out: the value's size, once a tier found it (also when it did not fit)
};

// The one rule for reading a stored value of `size` bytes into op's fragments: KVTIER_OK, or
// KVTIER_ERR_SIZE_MISMATCH (Fit::kExact) or KVTIER_ERR_BUFFER_TOO_SMALL (Fit::kAtMost). A value
// that does not fit is not copied at all. Records the size in op.stored (Tier::sizes asks with
// capacity 0 to learn it).
inline int fits(GetOp& op, uint64_t size) {
  op.stored = size;
  if (op.fit == Fit::kExact) return size == op.capacity ? KVTIER_OK : KVTIER_ERR_SIZE_MISMATCH;
  return size <= op.capacity ? KVTIER_OK : KVTIER_ERR_BUFFER_TOO_SMALL;
}

// What a get with no room (capacity 0) learnt: the value's size, KVTIER_ERR_NOT_FOUND or a code.
inline int64_t size_found(const GetOp& op) {
  return op.result == KVTIER_ERR_BUFFER_TOO_SMALL ? static_cast<int64_t>(op.stored) : op.result;
}

// Helpers for tiers that can tear (Caps::can_tear): they check key by key while the bytes are in
// cache, instead of the store making a pass over the whole batch before or after them.
inline void ensure_checksum(PutOp& op) {
  if (op.has_checksum) return;
  op.checksum = checksum(op.frags);
  op.has_checksum = true;
}
// A hit must be exactly what was written; else it becomes KVTIER_ERR_CORRUPT (a miss for the
// store, which drops the page).
inline void verify(GetOp& op) {
  if (op.result > 0 && checksum(op.frags, static_cast<size_t>(op.result)) != op.checksum)
    op.result = KVTIER_ERR_CORRUPT;
}

struct TierStats {
  uint64_t keys = 0;
  uint64_t bytes = 0;
  uint64_t capacity = 0;
  uint64_t evictions = 0;
  uint64_t errors = 0;
  // Tiers on servers (remote) only, summed over the servers in use; servers < 0 elsewhere.
  int64_t servers = -1;
  uint64_t server_hits = 0, server_misses = 0;  // the servers' own, over all their clients
  uint64_t leases = 0, connections = 0;         // held on the servers now
};

// Called with pages a tier evicts, before their bytes are released (write_back demotion).
using EvictionSink = std::function<void(std::span<PutOp>)>;

class Tier {
 public:
  struct Caps {
    // Bytes may tear or rot (disk, network). Such a tier keeps a checksum with every page
    // (ensure_checksum) and verifies it before it reports a hit (verify): a page that fails
    // is KVTIER_ERR_CORRUPT, which the store drops and treats as a miss. Its hits' checksums
    // are then trusted by the tiers a page is promoted into.
    bool can_tear = false;
  };

  Tier() = default;
  virtual ~Tier() = default;
  Tier(const Tier&) = delete;
  Tier& operator=(const Tier&) = delete;

  virtual std::string_view name() const = 0;
  virtual Caps caps() const = 0;

  // All batch calls are thread-safe and fill one result per op. A key already present counts
  // as stored and keeps its bytes. A get that fails leaves the fragments' bytes unspecified
  // only for KVTIER_ERR_CORRUPT-class failures; size errors write nothing.
  virtual void put(std::span<PutOp> ops) = 0;
  virtual void get(std::span<GetOp> ops) = 0;
  // present[i] = 1 if ids[i] is stored.
  virtual void exists(std::span<const KeyId> ids, std::span<uint8_t> present) = 0;
  // sizes[i] = the stored value's size in bytes, KVTIER_ERR_NOT_FOUND or a code; nothing is
  // copied out and nothing promoted. By default a get with no room (fits() records the size,
  // and the tiers here check it before they read); a tier whose get must move a value to
  // check it asks its own way (the remote tier: SIZES).
  virtual void sizes(std::span<const KeyId> ids, std::span<int64_t> sizes) {
    std::byte none{};
    const Frag no_room{&none, 0};
    std::vector<GetOp> ops(ids.size());
    for (size_t i = 0; i < ids.size(); ++i) ops[i] = {.id = ids[i], .frags = Frags(&no_room, 1)};
    get(ops);
    for (size_t i = 0; i < ids.size(); ++i) sizes[i] = size_found(ops[i]);
  }
  // results[i] = 0 or KVTIER_ERR_NOT_FOUND.
  virtual void remove(std::span<const KeyId> ids, std::span<int> results) = 0;
  // Empties the tier; a failure (another process holds a shared tier too long) empties nothing.
  virtual Status clear() = 0;
  virtual TierStats stats() const = 0;

  // Optional: offer evicted pages to `sink` (the store sets it under write_back). A page stays
  // findable here (get, exists) until the sink has returned, so it is in some tier throughout.
  virtual void set_eviction_sink(EvictionSink sink) { (void)sink; }
  // Optional: hand every page to the eviction sink, as many as fit before `deadline` (the
  // store's clean close under write_back, so pages only this tier holds are not lost).
  // Returns the pages left.
  virtual size_t flush(std::chrono::steady_clock::time_point deadline) {
    (void)deadline;
    return 0;
  }

  // Optional: caller memory registered for zero-copy calls (kvtier_register_buffer), for tiers
  // that register it with hardware once instead of per transfer. Best effort: a tier that
  // cannot register it still moves those bytes, only slower.
  virtual void register_memory(const void* addr, size_t len) { (void)addr, (void)len; }
  virtual void unregister_memory(const void* addr) { (void)addr; }
};

using TierFactory = std::function<Status(const Config&, std::unique_ptr<Tier>*)>;

// The registry of named tiers. Each backend registers itself once with KVTIER_REGISTER_TIER.
bool register_tier(std::string name, TierFactory factory);
Status make_tier(const std::string& name, const Config& config, std::unique_ptr<Tier>* out);
std::string tier_names();  // "memory, file, ..." for messages

#define KVTIER_REGISTER_TIER(name, factory) \
  static const bool kvtier_registered_##factory = ::kvtier::register_tier(name, factory)

}  // namespace kvtier
