#include "keys.h"

#include <algorithm>
#include <vector>

#define XXH_STATIC_LINKING_ONLY  // XXH3_state_t on the stack, no malloc per page
#include <xxhash.h>

#include <cstring>

namespace kvtier {

#if KVTIER_HAVE_AVX2_CHECKSUM
namespace detail {
uint64_t checksum_avx2(const void* data, size_t len);
uint64_t checksum_avx2(Frags frags);
}  // namespace detail
static const bool kAvx2 = __builtin_cpu_supports("avx2");
#else
static constexpr bool kAvx2 = false;
namespace detail {
inline uint64_t checksum_avx2(const void*, size_t) {
  return 0;
}
inline uint64_t checksum_avx2(Frags) {
  return 0;
}
}  // namespace detail
#endif

uint64_t namespace_seed(std::string_view ns) {
  return XXH3_64bits(ns.data(), ns.size());
}

uint64_t format_hash(std::string_view format) {
  return format.empty() ? 0 : XXH3_64bits_withSeed(format.data(), format.size(), 0x6b76666d74);
}

uint64_t format_seed(uint64_t ns_seed, uint64_t format) {
  return format ? XXH3_64bits_withSeed(&format, sizeof format, ns_seed) : ns_seed;
}

KeyId key_id(uint64_t ns_seed, std::string_view key) {
  XXH128_hash_t h = XXH3_128bits_withSeed(key.data(), key.size(), ns_seed);
  return {h.high64, h.low64};
}

uint64_t checksum(const void* data, size_t len) {
  return kAvx2 ? detail::checksum_avx2(data, len) : XXH3_64bits(data, len);
}

uint64_t checksum(Frags frags) {
  if (frags.size() == 1) return checksum(frags[0].ptr, frags[0].len);
  if (kAvx2) return detail::checksum_avx2(frags);
  XXH3_state_t state;
  XXH3_INITSTATE(&state);
  XXH3_64bits_reset(&state);
  for (const Frag& f : frags) XXH3_64bits_update(&state, f.ptr, f.len);
  return XXH3_64bits_digest(&state);
}

uint64_t checksum(Frags frags, size_t len) {
  if (len == total_len(frags)) return checksum(frags);
  std::vector<Frag> head;
  for (const Frag& f : frags) {
    if (!len) break;
    head.push_back({f.ptr, std::min(len, f.len)});
    len -= head.back().len;
  }
  return checksum(head);
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
