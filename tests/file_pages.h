// The pages the crash test writes: their bytes follow from their key, so a reader in another
// process can tell right bytes from wrong ones.
#pragma once

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

}  // namespace kvtier_test
