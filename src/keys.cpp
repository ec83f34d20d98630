#include "keys.h"

#define XXH_STATIC_LINKING_ONLY  // XXH3_state_t on the stack, no malloc per page
#include <xxhash.h>

#include <cstring>

namespace kvtier {

uint64_t namespace_seed(std::string_view ns) { return XXH3_64bits(ns.data(), ns.size()); }

KeyId key_id(uint64_t ns_seed, std::string_view key) {
  XXH128_hash_t h = XXH3_128bits_withSeed(key.data(), key.size(), ns_seed);
  return {h.high64, h.low64};
}

uint64_t checksum(const void* data, size_t len) { return XXH3_64bits(data, len); }

uint64_t checksum(Frags frags) {
  if (frags.size() == 1) return XXH3_64bits(frags[0].ptr, frags[0].len);
  XXH3_state_t state;
  XXH3_INITSTATE(&state);
  XXH3_64bits_reset(&state);
  for (const Frag& f : frags) XXH3_64bits_update(&state, f.ptr, f.len);
  return XXH3_64bits_digest(&state);
}

void gather(Frags frags, std::byte* dst) {
  for (const Frag& f : frags) {
    std::memcpy(dst, f.ptr, f.len);
    dst += f.len;
  }
}

void scatter(const std::byte* src, size_t len, Frags frags) {
  for (const Frag& f : frags) {
    if (len == 0) break;
    size_t n = f.len < len ? f.len : len;
    std::memcpy(f.ptr, src, n);
    src += n;
    len -= n;
  }
}

}  // namespace kvtier
