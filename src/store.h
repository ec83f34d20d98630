// The store: the tier chain, key hashing, validation of every caller input, checksums,
// promotion on read and the write policy. The C ABI is a thin shell around it.
#pragma once

#include <atomic>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "src/config.h"
#include "src/layout.h"
#include "src/regions.h"
#include "src/tier.h"

namespace kvtier {

// Where a batch's fragments lie, and so what the store checks of them before a tier sees them.
enum class Memory {
  kAny,         // the caller's buffers, which the tiers copy (kvtier_batch_set / _get)
  kRegistered,  // zero-copy: every fragment must lie in a registered region, else its key fails
                // with KVTIER_ERR_NOT_REGISTERED and none of its bytes is touched
  kPool,        // zero-copy, computed from a layout whose whole pool the caller found registered
};

// One batch call: every Store batch call takes one. n = keys.size() = results.size().
struct Batch {
  std::span<const char* const> keys;  // NUL-terminated, 1..KVTIER_MAX_KEY_LEN bytes each
  // Key i's value is frags[i*per_key, (i+1)*per_key) (value(i)): put reads it, get writes it.
  // Empty, with per_key 0, for the calls that move no bytes (exists_each, remove).
  Frags frags = {};
  size_t per_key = 0;
  Memory memory = Memory::kAny;
  Fit fit = Fit::kAtMost;  // get only: how a stored value must fit its key's fragments
  uint64_t format = 0;     // the caller's page format hash (format_hash(); 0 for none)
  // Per key, in and out. In: 0, or a negative code for a key that failed upstream (the call
  // skips it and leaves the code). Out: what each call's comment says.
  std::span<int64_t> results;

  Frags value(size_t i) const { return frags.subspan(i * per_key, per_key); }
};

class Store {
 public:
  static Status open(const Config& config, std::unique_ptr<Store>* out);
  ~Store();

  // The batch calls. `format` is part of every key's id: pages of one format never read as
  // another's. A key whose name or fragments fail the checks gets its code (INVALID_ARG,
  // KEY_TOO_LONG, NOT_REGISTERED) and is not touched. Each call returns the first per-key
  // failure (for the caller's detail message), OK if none; a miss is not a failure.
  //
  // put results: 0 (stored, or present already) or a code.
  Status put(const Batch& batch);
  // get results: bytes read, KVTIER_ERR_NOT_FOUND, KVTIER_ERR_SIZE_MISMATCH (Fit::kExact) or
  // KVTIER_ERR_BUFFER_TOO_SMALL (Fit::kAtMost) with nothing written, or another code.
  Status get(const Batch& batch);
  // exists_each results: 0 (in some tier), KVTIER_ERR_NOT_FOUND or the key's code.
  Status exists_each(const Batch& batch);
  // sizes results: the stored value's size in bytes, KVTIER_ERR_NOT_FOUND or a code. Moves no
  // byte into the caller's memory and promotes nothing (Tier::sizes, tier by tier).
  Status sizes(const Batch& batch);
  // remove results: 0 (removed from every tier that had it) or KVTIER_ERR_NOT_FOUND.
  Status remove(const Batch& batch);
  // *hits: the leading run of present keys; a bad key ends it like a miss (and its code is
  // returned for the caller's detail).
  Status exists(std::span<const char* const> keys, size_t* hits, uint64_t format = 0);
  Status clear();  // every tier; the first failure
  std::string stats_json() const;
  const Config& config() const { return config_; }

  // Tiers that register memory with hardware (the remote tier's RDMA path) register it too.
  Status register_buffer(const void* addr, size_t len);
  Status unregister_buffer(const void* addr);
  bool is_registered(const void* addr, size_t len) const { return regions_.contains(addr, len); }
  // Held by a call that moves bytes in registered memory, from before its check of that memory
  // to its end (put and get take one; a caller that checks memory itself takes it first).
  Regions::Hold hold_memory() { return Regions::Hold(regions_); }

  // OK if the layout is valid and its whole pool lies in one registered buffer.
  Status check_layout(const PoolLayout& layout) const;

 private:
  explicit Store(const Config& config);
  struct TierSlot;

  // Caller input checks: OK, or the key's code and a message.
  Status check_key(const char* key) const;
  Status check_value(Frags frags, Memory memory) const;
  uint64_t seed_of(uint64_t format) const { return format_seed(ns_seed_, format); }
  // The keys of `batch` to run: those whose result is 0 on entry and whose name and (when the
  // batch has fragments) value pass the checks. The others that fail get their code in results
  // and the first failure in *first.
  std::vector<size_t> valid_keys(const Batch& batch, Status* first) const;
  // Takes tier `slot`'s answer for op, the batch's key `key`, into *result (what the caller
  // gets unless a lower tier answers). Returns true if a lower tier is asked next.
  bool take_answer(TierSlot& slot, GetOp& op, size_t key, int64_t* result);
  // Asks the tiers top-down about the valid keys of `batch`, each tier only about the keys no
  // tier above answered: ask(Tier&, ids, answers) sets answers[a], which comes in as
  // KVTIER_ERR_NOT_FOUND (look lower), to ids[a]'s result. A key no tier answers stays
  // KVTIER_ERR_NOT_FOUND. Returns the first bad key's or negative answer's code, OK if none.
  template <class Ask>
  Status ask_down(const Batch& batch, Ask ask);
  // Writes tier t's hits into every tier above it.
  void promote(size_t t, std::span<const GetOp* const> hits);

  Config config_;
  uint64_t ns_seed_;
  std::vector<std::unique_ptr<TierSlot>> tiers_;
  Regions regions_;
};

}  // namespace kvtier
