// XXH3 built for AVX2 (Debian's libxxhash is built for the SSE2 baseline): keys.cpp calls these
// only when the CPU has AVX2. The digests are the same either way; only the speed differs.
#define XXH_INLINE_ALL
#include <xxhash.h>

#include "keys.h"

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

}  // namespace kvtier::detail
