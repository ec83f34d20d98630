// A host pool for the transfer tests, shared by the test and the peer process it starts: the
// pool's bytes follow from (seed, offset) alone, so either side knows what the other holds.
#pragma once

#include <kvtier/kvtier.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace kvtier_test {

struct P2pShape {
  int kind, order;
  uint32_t P, L, H, D, C, E;
  uint64_t S;

  size_t pool_bytes() const {
    const size_t token = kind == KVTIER_POOL_MHA ? size_t{H} * D * E : size_t{C} * E;
    return (kind == KVTIER_POOL_MHA ? 2 : 1) * size_t{L} * S * token;
  }
  std::string args() const {
    char b[160];
    snprintf(b, sizeof b, "%d %d %u %u %u %u %u %u %llu", kind, order, P, L, H, D, C, E,
             static_cast<unsigned long long>(S));
    return b;
  }
  static bool parse(char** argv, P2pShape* s) {
    unsigned long long S = 0;
    if (sscanf(argv[0], "%d", &s->kind) != 1 || sscanf(argv[1], "%d", &s->order) != 1) return false;
    uint32_t* f[] = {&s->P, &s->L, &s->H, &s->D, &s->C, &s->E};
    for (int i = 0; i < 6; ++i)
      if (sscanf(argv[2 + i], "%u", f[i]) != 1) return false;
    if (sscanf(argv[8], "%llu", &S) != 1) return false;
    s->S = S;
    return true;
  }
  kvtier_pool_layout_t layout(void* base, const char* dtype = "bfloat16") const {
    kvtier_pool_layout_t l = {};
    l.struct_size = sizeof l;
    l.base = base;
    l.pool_kind = kind;
    l.layout = order;
    l.page_size = P;
    l.layer_num = L;
    l.head_num = H;
    l.head_dim = D;
    l.kv_cache_dim = C;
    l.dtype_size = E;
    l.pool_tokens = S;
    l.dtype_name = dtype;
    return l;
  }
};

// The byte at `offset` of a pool filled from `seed` (splitmix64 of the 8-byte word).
inline unsigned char pattern_byte(uint64_t seed, size_t offset) {
  uint64_t z = seed * 0x9E3779B97F4A7C15ull + offset / 8 + 1;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return static_cast<unsigned char>(z >> (8 * (offset % 8)));
}

inline void fill_pattern(unsigned char* p, size_t n, uint64_t seed) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {  // a word at a time: the same bytes as pattern_byte
    uint64_t z = seed * 0x9E3779B97F4A7C15ull + i / 8 + 1;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    std::memcpy(p + i, &z, 8);
  }
  for (; i < n; ++i) p[i] = pattern_byte(seed, i);
}

}  // namespace kvtier_test
