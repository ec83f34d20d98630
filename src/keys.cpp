#include "src/keys.h"

#include <algorithm>
#include <vector>

#define XXH_STATIC_LINKING_ONLY  // XXH3_state_t on the stack, no malloc per page
#include <xxhash.h>

#include <cstring>

#if defined(__x86_64__)
#include <emmintrin.h>
#endif

namespace kvtier {

#if KVTIER_HAVE_AVX2_CHECKSUM
namespace detail {
uint64_t checksum_avx2(const void* data, size_t len);
uint64_t checksum_avx2(Frags frags);
uint64_t gather_checksum_avx2(Frags frags, std::byte* dst);
uint64_t scatter_checksum_avx2(const std::byte* src, size_t len, Frags frags);
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
inline uint64_t gather_checksum_avx2(Frags, std::byte*) {
  return 0;
}
inline uint64_t scatter_checksum_avx2(const std::byte*, size_t, Frags) {
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

std::vector<Frag> leading(Frags frags, size_t len) {
  std::vector<Frag> head;
  for (const Frag& f : frags) {
    if (!len) break;
    head.push_back({f.ptr, std::min(len, f.len)});
    len -= head.back().len;
  }
  return head;
}

uint64_t checksum(Frags frags, size_t len) {
  if (len == total_len(frags)) return checksum(frags);
  return checksum(leading(frags, len));
}

namespace detail {
#if defined(__x86_64__)
namespace {
// SSE2 (the x86-64 baseline): 64 bytes per round, loads unaligned, streaming stores aligned.
void copy_stream(std::byte* dst, const std::byte* src, size_t n) {
  const size_t head = std::min(n, (16 - reinterpret_cast<uintptr_t>(dst) % 16) % 16);
  std::memcpy(dst, src, head);
  dst += head, src += head, n -= head;
  for (; n >= 64; n -= 64, dst += 64, src += 64) {
    const auto* s = reinterpret_cast<const __m128i*>(src);
    auto* d = reinterpret_cast<__m128i*>(dst);
    const __m128i a = _mm_loadu_si128(s), b = _mm_loadu_si128(s + 1);
    const __m128i c = _mm_loadu_si128(s + 2), e = _mm_loadu_si128(s + 3);
    _mm_stream_si128(d, a);
    _mm_stream_si128(d + 1, b);
    _mm_stream_si128(d + 2, c);
    _mm_stream_si128(d + 3, e);
  }
  std::memcpy(dst, src, n);
}
}  // namespace
void fence_streams() {
  _mm_sfence();  // streaming stores are weakly ordered: done before anyone else looks
}
#else
namespace {
void copy_stream(std::byte* dst, const std::byte* src, size_t n) {
  std::memcpy(dst, src, n);
}
}  // namespace
void fence_streams() {}
#endif

void copy_run(std::byte* dst, const std::byte* src, size_t n, bool stream) {
  if (stream)
    copy_stream(dst, src, n);
  else
    std::memcpy(dst, src, n);
}
}  // namespace detail

void gather(Frags frags, std::byte* dst) {
  detail::gather_runs(frags, dst, detail::copy_run);
}

void scatter(const std::byte* src, size_t len, Frags frags) {
  detail::scatter_runs(src, len, frags, detail::copy_run);
}

// Without AVX2 (rare where GPUs are): the copy, then the checksum in a second pass.
uint64_t gather_checksum(Frags frags, std::byte* dst) {
  if (kAvx2) return detail::gather_checksum_avx2(frags, dst);
  gather(frags, dst);
  return checksum(dst, total_len(frags));
}

uint64_t scatter_checksum(const std::byte* src, size_t len, Frags frags) {
  len = std::min(len, total_len(frags));
  if (kAvx2) return detail::scatter_checksum_avx2(src, len, frags);
  scatter(src, len, frags);
  return checksum(src, len);
}

}  // namespace kvtier
