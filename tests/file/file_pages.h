// The pages the crash test writes: their bytes follow from their key, so a reader in another
// process can tell right bytes from wrong ones.
#pragma once

#include <kvtier/kvtier.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace kvtier_test {

constexpr size_t kUniverse = 96;

inline std::string page_key(size_t k) {
  return "crash-page-" + std::to_string(k);
}

inline std::vector<unsigned char> page_value(size_t k) {
  // Sizes vary across size classes and are not all multiples of 4 KiB.
  const size_t size = 16384 * (1 + k % 5) + (k % 3) * 1000;
  std::vector<unsigned char> v(size);
  uint64_t x = k * 0x9E3779B97F4A7C15ull + 7;
  for (size_t i = 0; i < size; i += 8) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    std::memcpy(v.data() + i, &x, std::min<size_t>(8, size - i));
  }
  return v;
}

// Reads page k into *buf (its size plus 4 KiB, pre-filled with 0xCC); the per-key result.
inline int64_t get_page(kvtier_store_t* s, size_t k, std::vector<unsigned char>* buf) {
  buf->assign(page_value(k).size() + 4096, 0xCC);
  const std::string key = page_key(k);
  const char* ck = key.c_str();
  void* b = buf->data();
  size_t cap = buf->size();
  int64_t r = 0;
  const int rc = kvtier_batch_get(s, &ck, 1, &b, &cap, &r);
  return rc != KVTIER_OK ? rc : r;
}

// Stores page k alone; the per-key result.
inline int put_page(kvtier_store_t* s, size_t k) {
  const auto v = page_value(k);
  const std::string key = page_key(k);
  const char* ck = key.c_str();
  const void* p = v.data();
  size_t n = v.size();
  int r = 0;
  const int rc = kvtier_batch_set(s, &ck, 1, &p, &n, &r);
  return rc != KVTIER_OK ? rc : r;
}

}  // namespace kvtier_test
