// Key ids (XXH3-128 of the key, seeded by the namespace), fragments and page checksums.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string_view>
#include <vector>

namespace kvtier {

struct KeyId {
  uint64_t hi = 0;
  uint64_t lo = 0;
  bool operator==(const KeyId&) const = default;
};

struct KeyIdHash {
  size_t operator()(const KeyId& k) const { return static_cast<size_t>(k.lo); }
};

// One contiguous piece of a page in caller memory. A page's value is its fragments in order.
struct Frag {
  std::byte* ptr;
  size_t len;
};
using Frags = std::span<const Frag>;

uint64_t namespace_seed(std::string_view ns);
// A page format's hash (0 for none), and the seed of key ids in namespace `ns_seed` for pages of
// that format: pages of different formats get unrelated ids.
uint64_t format_hash(std::string_view format);
uint64_t format_seed(uint64_t ns_seed, uint64_t format);
KeyId key_id(uint64_t ns_seed, std::string_view key);

// XXH3-64 of the fragments' concatenation.
uint64_t checksum(Frags frags);
uint64_t checksum(const void* data, size_t len);
// XXH3-64 of the first `len` bytes of the fragments (at most their total).
uint64_t checksum(Frags frags, size_t len);

// The first `len` bytes of the fragments (at most their total), as fragments.
std::vector<Frag> leading(Frags frags, size_t len);

inline size_t total_len(Frags frags) {
  size_t n = 0;
  for (const Frag& f : frags) n += f.len;
  return n;
}

// Copies between a value laid out flat and the fragments it is split over. scatter() fills the
// fragments in order with `len` bytes (at most their total). Runs of kStreamMin bytes and up
// are copied with non-temporal stores: the destination (a tier's block, the engine's pool, a
// bounce buffer for DMA) is not read again by this CPU soon, so pulling it through the cache
// only evicts what is, and costs the read-for-ownership of every line.
constexpr size_t kStreamMin = size_t{64} << 10;
void gather(Frags frags, std::byte* dst);
void scatter(const std::byte* src, size_t len, Frags frags);
// The same copies that also return the XXH3-64 of the bytes copied, hashed piece by piece from
// the source right after the piece is copied, while it is in cache: one pass over memory where
// a copy and then a checksum of its streamed (uncached) destination would make two.
uint64_t gather_checksum(Frags frags, std::byte* dst);
uint64_t scatter_checksum(const std::byte* src, size_t len, Frags frags);

namespace detail {
// One run of bytes, with non-temporal stores when `stream`; after any streamed run the caller
// calls fence_streams() once, before the bytes are handed on.
void copy_run(std::byte* dst, const std::byte* src, size_t n, bool stream);
void fence_streams();

// The walks of gather() and scatter(): run(dst, src, n, stream) per fragment, streamed when the
// run is kStreamMin or more, fenced once at the end.
template <class Run>
void gather_runs(Frags frags, std::byte* dst, Run run) {
  bool streamed = false;
  for (const Frag& f : frags) {
    const bool stream = f.len >= kStreamMin;
    run(dst, f.ptr, f.len, stream);
    streamed |= stream;
    dst += f.len;
  }
  if (streamed) fence_streams();
}
template <class Run>
void scatter_runs(const std::byte* src, size_t len, Frags frags, Run run) {
  bool streamed = false;
  for (const Frag& f : frags) {
    if (len == 0) break;
    const size_t n = f.len < len ? f.len : len;
    const bool stream = n >= kStreamMin;
    run(f.ptr, src, n, stream);
    streamed |= stream;
    src += n;
    len -= n;
  }
  if (streamed) fence_streams();
}
}  // namespace detail

}  // namespace kvtier
