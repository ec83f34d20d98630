// The store: the tier chain, key hashing, validation of every caller input, checksums,
// promotion on read and the write policy. The C ABI is a thin shell around it.
#pragma once

#include <atomic>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "config.h"
#include "layout.h"
#include "regions.h"
#include "tier.h"

namespace kvtier {

class Store {
 public:
  static Status open(const Config& config, std::unique_ptr<Store>* out);
  ~Store();

  // Batch calls over n = keys.size() keys; key i's value is frags[i*per_key, (i+1)*per_key).
  // results[i] must be 0 on entry, or a negative code for a key that failed upstream (that key
  // is skipped). `zero_copy` requires the fragments to lie in registered memory. `format` is
  // the caller's page format hash (format_hash(); 0 for none), part of every key's id. Each
  // call returns the first per-key failure (for the caller's detail message), OK if none.
  Status put(std::span<const char* const> keys, Frags frags, size_t per_key, bool zero_copy,
             std::span<int> results, uint64_t format = 0);
  // Get results: bytes read, KVTIER_ERR_NOT_FOUND or a code. `exact` (v1): the value must be
  // exactly its fragments' total.
  Status get(std::span<const char* const> keys, Frags frags, size_t per_key, bool exact,
             bool zero_copy, std::span<int64_t> results, uint64_t format = 0);
  // *hits: the leading run of present keys; a bad key ends it like a miss (and its code is
  // returned for the caller's detail).
  Status exists(std::span<const char* const> keys, size_t* hits, uint64_t format = 0);
  // present[i]: 0, KVTIER_ERR_NOT_FOUND or the key's own code; returns the first bad key's.
  Status exists_each(std::span<const char* const> keys, std::span<int> present,
                     uint64_t format = 0);
  Status remove(std::span<const char* const> keys, std::span<int> results, uint64_t format = 0);
  void clear();
  std::string stats_json() const;

  // Tiers that register memory with hardware (the remote tier's RDMA path) register it too.
  Status register_buffer(const void* addr, size_t len);
  Status unregister_buffer(const void* addr);
  bool is_registered(const void* addr, size_t len) const { return regions_.contains(addr, len); }

  // OK if the layout is valid and its whole pool lies in one registered buffer.
  Status check_layout(const PoolLayout& layout) const;

 private:
  explicit Store(const Config& config);
  struct TierSlot;

  // Caller input checks: OK, or the key's code and a message.
  Status check_key(const char* key) const;
  Status check_value(Frags frags, bool zero_copy) const;
  uint64_t seed_of(uint64_t format) const { return format_seed(ns_seed_, format); }
  // The keys whose name and fragments pass the checks; the others get their code in results
  // and the first failure in *first.
  template <class Result>
  std::vector<size_t> valid_keys(std::span<const char* const> keys, Frags frags, size_t per_key,
                                 bool zero_copy, std::span<Result> results, Status* first) const;

  Config config_;
  uint64_t ns_seed_;
  std::vector<std::unique_ptr<TierSlot>> tiers_;
  Regions regions_;
};

}  // namespace kvtier
