// kvtier-server's pages on disk (--tiers memory,file): the library's file tier (through the
// tier registry), one per client namespace, under the arena. The server writes a page through
// to it before its PUT or COMMIT is answered, so it outlives an eviction from the arena and a
// restart; a page the disk refused is refused to the client too, never acknowledged. A GET or
// LOOKUP of a page the arena lacks reads it from disk into an arena slot first (promotion).
//
// Each namespace with pages on disk has its own folder, "ns-<16 hex digits>", in --file-dir,
// made by its first write: reads (exists, tier(ns, false)), remove and clear never make one.
// The folders together stay within --file-capacity (the bytes their files take on disk): a
// write that needs more room first deletes the least recently used other namespaces whole.
// Their file tiers are open while recently used, at most max_open at once (the server's fd
// budget), the least recently used closed first; all held by requests in flight: refused.
//
// Thread-safe: every call takes the disk's own lock (never the server's mu_), and none holds
// it over a file tier's I/O.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <unordered_map>

#include "src/keys.h"
#include "src/log.h"
#include "src/status.h"
#include "src/tier.h"

namespace kvtier {

class Disk {
 public:
  // fds one open namespace may take: its folder, index, lock, rings and two files per size
  // class (the file tier's kMaxClasses).
  static constexpr uint64_t kFdsPerNamespace = 5 + 2 * 64;

  struct Page {
    KeyId id;
    std::byte* bytes;  // in the arena, only read: the caller's until write() returns
    uint64_t length, checksum;
  };

  // `dir`: --file-dir; `capacity`: --file-capacity bytes, all namespaces together. Warnings go
  // to `warnings` (rate-limited: a flood of bad clients must not fill the log).
  Disk(std::string dir, uint64_t capacity, LimitedWarnings& warnings);
  ~Disk();
  Disk(const Disk&) = delete;
  Disk& operator=(const Disk&) = delete;

  // Checks the folder (the file tier's checks: a bad --file-dir fails the start, not the first
  // request) and finds the namespaces already on it, oldest written first in the LRU.
  Status open();
  // File tiers open at once (the fd budget); 64 unless set. Call before serving.
  void set_max_open(size_t n) { max_open_ = n; }

  // The namespace's file tier, opened if its folder exists, made first when `create` (a write);
  // null: none (a read misses on disk, a write is refused). The holder keeps it open.
  std::shared_ptr<Tier> tier(uint64_t ns, bool create);
  // results[i]: 0 (on disk, durable) or why not; a page that failed must not be acknowledged.
  void write(uint64_t ns, std::span<const Page> pages, std::span<int32_t> results);
  // present[i] |= on disk.
  void exists(uint64_t ns, std::span<const KeyId> ids, std::span<uint8_t> present);
  // sizes[i], where NOT_FOUND: the value's size on disk, or still NOT_FOUND (or another code).
  void sizes(uint64_t ns, std::span<const KeyId> ids, std::span<int64_t> sizes);
  // results[i] = OK where removed from disk.
  void remove(uint64_t ns, std::span<const KeyId> ids, std::span<int32_t> results);
  void clear(uint64_t ns);

  uint64_t bytes();  // what the namespaces' files take on disk, as last measured

 private:
  struct Namespace {             // a namespace with a folder on disk
    std::shared_ptr<Tier> tier;  // its file tier; null: closed (its fds given back)
    uint64_t bytes = 0;          // what its files take on disk, as last measured
    std::list<uint64_t>::iterator lru;
  };
  // Room for `bytes` more within the capacity: other namespaces go whole, least recently used
  // first.
  void make_room(uint64_t ns, uint64_t bytes);
  void measure(uint64_t ns);  // after its files changed
  // Bytes the namespace's folder takes on disk; with `erase`, deletes it. REQUIRES mu_ when
  // erasing.
  uint64_t folder_bytes(uint64_t ns, bool erase);

  const std::string dir_;
  const uint64_t capacity_;
  LimitedWarnings& warnings_;
  int root_ = -1;                // dir_
  std::atomic<size_t> open_{0};  // file tiers alive, also those closed but still in use
  size_t max_open_ = 64;
  std::mutex mu_;
  std::unordered_map<uint64_t, Namespace> namespaces_;  // guarded by mu_, as are the two below
  std::list<uint64_t> lru_;                             // most recently used first
  uint64_t bytes_ = 0;                                  // what they all take
};

}  // namespace kvtier
