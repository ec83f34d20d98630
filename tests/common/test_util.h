// Helpers shared by the C++ tests: random bytes and keys.
#pragma once

#include <stdlib.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

namespace kvtier_test {

inline std::mt19937_64& rng() {
  static thread_local std::mt19937_64 gen(std::random_device{}());
  return gen;
}

inline void fill_random(void* dst, size_t len) {
  auto* p = static_cast<unsigned char*>(dst);
  size_t i = 0;
  for (; i + 8 <= len; i += 8) {
    uint64_t v = rng()();
    std::memcpy(p + i, &v, 8);
  }
  for (; i < len; ++i) p[i] = static_cast<unsigned char>(rng()());
}

// Bytes shaped like bf16 KV activations: random mantissas, exponents in a narrow band, so they
// compress somewhat (as real KV pages do) but not to nothing.
inline void make_kv_like(void* dst, size_t len) {
  auto* p = static_cast<unsigned char*>(dst);
  for (size_t i = 0; i + 1 < len; i += 2) {
    const uint64_t r = rng()();
    p[i] = static_cast<unsigned char>(r);  // low mantissa
    p[i + 1] = static_cast<unsigned char>(0x3C + (r >> 8) % 3) | ((r >> 16) & 0x80);  // sign, exp
  }
}

inline std::vector<unsigned char> random_bytes(size_t len) {
  std::vector<unsigned char> v(len);
  fill_random(v.data(), len);
  return v;
}

// Keys shaped like the engine's: 64 hex characters, unique per (prefix, i).
inline std::string make_key(const std::string& prefix, size_t i) {
  static const char* hex = "0123456789abcdef";
  std::string k = prefix + "-" + std::to_string(i) + "-";
  std::mt19937_64 g(std::hash<std::string>{}(k));
  while (k.size() < 64) k.push_back(hex[g() & 15]);
  return k;
}

inline std::vector<const char*> c_keys(const std::vector<std::string>& keys) {
  std::vector<const char*> out;
  for (const auto& k : keys) out.push_back(k.c_str());
  return out;
}

// A fresh folder for this test process, removed at exit (under $TMPDIR, else /var/tmp, which is
// on disk where /tmp may be a tmpfs).
inline const std::string& test_dir() {
  static const std::string dir = [] {
    const char* base = getenv("TMPDIR");
    std::string tmpl = std::string(base && *base ? base : "/var/tmp") + "/kvtier-test-XXXXXX";
    if (!mkdtemp(tmpl.data())) abort();
    static struct Cleanup {
      std::string path;
      ~Cleanup() {
        std::error_code ec;
        std::filesystem::remove_all(path, ec);
      }
    } cleanup{tmpl};
    return tmpl;
  }();
  return dir;
}

// Replaces "{dir}" in a config string with test_dir().
inline std::string with_test_dir(std::string config) {
  for (size_t p; (p = config.find("{dir}")) != std::string::npos;) config.replace(p, 5, test_dir());
  return config;
}

}  // namespace kvtier_test
