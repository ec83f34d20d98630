// What the file tier does to a page's bytes between the engine's pool and the disk: O_DIRECT's
// alignment rules, pooled bounce buffers for pools that do not meet them, and zstd frames.
#pragma once

#include <cstddef>
#include <cstdint>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "keys.h"

namespace kvtier {

constexpr uint64_t kBlock = 4096;  // O_DIRECT alignment of offsets and sizes
constexpr size_t kMaxIov = 1024;   // IOV_MAX

inline uint64_t round_block(uint64_t n) {
  return (n + kBlock - 1) & ~(kBlock - 1);
}

// Whether O_DIRECT can move the fragments as they are: each one's address a multiple of the
// device's DMA alignment, each one's length a multiple of the I/O alignment.
bool aligned(Frags frags, uint64_t mem_align, uint64_t len_align);

// Compresses the fragments into dst (capacity cap); 0 if it fails or does not fit.
size_t compress_frags(Frags frags, std::byte* dst, size_t cap, int level);
// Decompresses a frame into the fragments; true if it produced exactly `length` bytes.
bool decompress_frags(const std::byte* src, size_t n, Frags frags, size_t length);
// The most bytes a frame of `n` bytes of page can take.
size_t compress_bound(size_t n);

// Aligned, pre-touched buffers reused across calls: fresh memory costs a page fault per 4 KiB.
// Thread-safe.
class BouncePool {
 public:
  BouncePool() = default;
  ~BouncePool();
  BouncePool(const BouncePool&) = delete;
  BouncePool& operator=(const BouncePool&) = delete;
  std::byte* get(size_t size);          // nullptr when out of memory
  void put(std::byte* b, size_t size);  // b may be nullptr

 private:
  std::mutex mu_;
  std::unordered_map<size_t, std::vector<std::byte*>> free_;
};

}  // namespace kvtier
