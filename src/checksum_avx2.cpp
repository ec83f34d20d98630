// XXH3 built for AVX2 (Debian's libxxhash is built for the SSE2 baseline): keys.cpp calls these
// only when the CPU has AVX2. The digests are the same either way; only the speed differs.
// Templates from headers are instantiated here only with this file's own lambdas, so no AVX2
// copy of an instantiation another file shares can be picked by the linker.
#define XXH_INLINE_ALL
#include <xxhash.h>

#include <algorithm>

#include "src/keys.h"

namespace kvtier::detail {

uint64_t checksum_avx2(const void* data, size_t len) {
  return XXH3_64bits(data, len);
}

uint64_t checksum_avx2(Frags frags) {
  XXH3_state_t state;
  XXH3_INITSTATE(&state);
  XXH3_64bits_reset(&state);
  for (const Frag& f : frags) XXH3_64bits_update(&state, f.ptr, f.len);
  return XXH3_64bits_digest(&state);
}

namespace {
// Hashed right after it is copied: small enough to still be in L1/L2 then.
constexpr size_t kPiece = size_t{16} << 10;

struct Hash {
  XXH3_state_t state;
  Hash() {
    XXH3_INITSTATE(&state);
    XXH3_64bits_reset(&state);
  }
  // Copies n bytes from src to dst piece by piece, hashing each source piece after its copy.
  void copy(std::byte* dst, const std::byte* src, size_t n, bool stream) {
    for (size_t at = 0; at < n; at += kPiece) {
      const size_t len = std::min(kPiece, n - at);
      copy_run(dst + at, src + at, len, stream);
      XXH3_64bits_update(&state, src + at, len);
    }
  }
};
}  // namespace

uint64_t gather_checksum_avx2(Frags frags, std::byte* dst) {
  Hash h;
  gather_runs(frags, dst, [&](std::byte* d, const std::byte* s, size_t n, bool stream) {
    h.copy(d, s, n, stream);
  });
  return XXH3_64bits_digest(&h.state);
}

uint64_t scatter_checksum_avx2(const std::byte* src, size_t len, Frags frags) {
  Hash h;
  scatter_runs(src, len, frags, [&](std::byte* d, const std::byte* s, size_t n, bool stream) {
    h.copy(d, s, n, stream);
  });
  return XXH3_64bits_digest(&h.state);
}

}  // namespace kvtier::detail
