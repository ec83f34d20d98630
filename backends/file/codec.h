// What the file tier does to a page's bytes between the engine's pool and the disk: O_DIRECT's
// alignment rules, pooled bounce buffers for pools that do not meet them, and zstd frames.
#pragma once

#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "src/keys.h"

namespace kvtier {

constexpr uint64_t kBlock = 4096;  // O_DIRECT alignment of offsets and sizes
constexpr size_t kMaxIov = 1024;   // IOV_MAX

inline uint64_t round_block(uint64_t n) {
  return (n + kBlock - 1) & ~(kBlock - 1);
}

// Whether O_DIRECT can move the fragments as they are: each one's address a multiple of the
// device's DMA alignment, each one's length a multiple of the I/O alignment.
bool aligned(Frags frags, uint64_t mem_align, uint64_t len_align);

// A page may sit in its slot rotated: the slot starts with page byte `rotation` and the page's
// first `rotation` bytes follow its last. A pool whose pages start off a block boundary (SGLang's
// are 64 bytes past one) then lines up with the slot's blocks, so O_DIRECT moves the page's
// middle straight to and from the pool and only its edges need bounce blocks. The rotation of a
// page written from `frags`: 0 when it starts aligned or is too short to gain a whole block.
size_t rotation_for(Frags frags, size_t length);

// One I/O over a slot's first round_block(length) bytes: each block of the slot that lands on a
// whole span of one fragment at an address O_DIRECT takes goes straight to or from the pool; the
// rest (the edges, a seam between fragments, the padding) through bounce blocks.
class SlotMap {
 public:
  // The first `length` bytes of `frags` stored with `rotation`; no block goes straight when
  // mem_align is 0. A length past the fragments' total or a rotation not below the length (a
  // damaged index's, say) makes a map that is not ok() and moves nothing: no byte outside the
  // fragments is ever named.
  SlotMap(Frags frags, size_t length, size_t rotation, uint64_t mem_align);
  bool ok() const { return ok_; }
  size_t direct_bytes() const { return direct_; }
  size_t bounce_bytes() const { return bounce_; }  // a multiple of kBlock
  size_t pieces() const { return pieces_.size(); }
  // The I/O's vector, bounce blocks placed in `buf` (bounce_bytes() long, aligned).
  void iov(std::byte* buf, std::vector<iovec>* out) const;
  // Before a write: the page's bytes that go through buf, and zeros in the padding.
  void fill(std::byte* buf) const;
  // After a read: buf's bytes into the page.
  void drain(const std::byte* buf) const;

 private:
  struct Run {  // fragments that touch in memory, as one
    std::byte* ptr;
    size_t start, len;  // in the page
  };
  struct Piece {
    bool bounce;
    std::byte* ptr;  // direct: the pool's bytes
    size_t off;      // bounce: the offset in the bounce buffer
    size_t len;
  };
  struct Edge {  // bounce bytes <-> page bytes
    size_t off, page, len;
  };
  void add_bounce_block(size_t s0, size_t length, size_t rotation);
  // fn(mem, bounce_off, n) over the pool's bytes of an edge.
  template <class F>
  void walk(const Edge& e, F fn) const;

  std::vector<Run> runs_;
  std::vector<Piece> pieces_;
  std::vector<Edge> edges_;
  bool ok_ = false;
  size_t direct_ = 0, bounce_ = 0;
  size_t pad_off_ = 0, pad_len_ = 0;  // in the bounce buffer
};

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
