// A kvtier-server client speaking raw frames, for tests that must do what the remote tier never
// would: frames out of order, half sent, never read, ids chosen to collide.
#pragma once

#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <sys/socket.h>
#include <unistd.h>
#include <xxhash.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "tests/common/loopback.h"
#include "tests/common/wire_version.h"

namespace kvtier_test {

// A connected socket; replies wait at most `timeout_s` seconds.
inline int raw_connect(uint16_t port, int timeout_s = 2) {
  const int fd = loopback_connect(port);
  timeval tv{timeout_s, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  return fd;
}

// recv(MSG_WAITALL) that goes on after a signal (the library's threads may send some).
inline ssize_t recv_all(int fd, void* buf, size_t len) {
  size_t got = 0;
  while (got < len) {
    const ssize_t n = recv(fd, static_cast<char*>(buf) + got, len - got, MSG_WAITALL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return got ? static_cast<ssize_t>(got) : n;
    got += static_cast<size_t>(n);
  }
  return static_cast<ssize_t>(got);
}

// The checksum the server verifies at COMMIT: XXH3-64 of the page's bytes.
inline uint64_t page_checksum(const void* p, size_t n) {
  return XXH3_64bits(p, n);
}
inline uint64_t zeros_checksum(size_t n) {
  return page_checksum(std::vector<char>(n).data(), n);
}

// HMAC-SHA256(key, label | a | b | extra): the handshake's proofs (backends/remote/wire/auth.h).
inline std::vector<uint8_t> hello_proof(const std::string& key, const std::string& label,
                                        const std::vector<uint8_t>& a,
                                        const std::vector<uint8_t>& b,
                                        const std::vector<uint8_t>& extra = {}) {
  std::vector<uint8_t> msg(label.begin(), label.end());
  msg.insert(msg.end(), a.begin(), a.end());
  msg.insert(msg.end(), b.begin(), b.end());
  msg.insert(msg.end(), extra.begin(), extra.end());
  std::vector<uint8_t> out(32);
  unsigned len = 0;
  static const char kNoKey = 0;
  HMAC(EVP_sha256(), key.empty() ? &kNoKey : key.data(), static_cast<int>(key.size()), msg.data(),
       msg.size(), out.data(), &len);
  return out;
}

// One frame on fd and the reply's {type, payload} (type -1: none).
inline std::pair<int, std::vector<uint8_t>> raw_call(int fd, uint16_t type,
                                                     const std::vector<uint8_t>& payload) {
  std::vector<uint8_t> f = {0x4b,
                            0x56,
                            0x54,
                            0x52,
                            kWireVersion,
                            0,
                            static_cast<uint8_t>(type),
                            static_cast<uint8_t>(type >> 8)};
  for (int k = 0; k < 4; ++k) f.push_back(static_cast<uint8_t>(payload.size() >> (8 * k)));
  f.insert(f.end(), 4, 0);
  f.insert(f.end(), payload.begin(), payload.end());
  if (send(fd, f.data(), f.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(f.size())) return {-1, {}};
  uint8_t h[16];
  if (recv_all(fd, h, 16) != 16) return {-1, {}};
  uint32_t len = 0;
  std::memcpy(&len, h + 8, 4);
  std::vector<uint8_t> reply(len);
  if (len && recv_all(fd, reply.data(), len) != static_cast<ssize_t>(len)) return {-1, {}};
  return {h[6] | (h[7] << 8), reply};
}

// The HELLO handshake as the remote tier does it: a nonce out, the server's nonce, id and proof
// back, then this end's proof and namespace seed. The second reply's {type, payload}, or the
// first's when it was refused.
inline std::pair<int, std::vector<uint8_t>> raw_hello(int fd, uint64_t ns,
                                                      const std::string& token = "") {
  std::vector<uint8_t> mine(32);
  for (auto& b : mine) b = static_cast<uint8_t>(std::rand());
  auto first = raw_call(fd, 1, mine);
  if (first.first != (1 | 0x80) || first.second.size() != 72) return first;
  const std::vector<uint8_t> theirs(first.second.begin(), first.second.begin() + 32);
  std::vector<uint8_t> second = hello_proof(token, "kvtier client", mine, theirs);
  for (int k = 0; k < 8; ++k) second.push_back(static_cast<uint8_t>(ns >> (8 * k)));
  return raw_call(fd, 1, second);
}

// A control connection: the HELLO handshake with a token and a namespace seed, then frames.
class Ctl {
 public:
  explicit Ctl(uint16_t port, uint64_t ns = 0, const std::string& token = "", int timeout_s = 2)
      : fd_(raw_connect(port, timeout_s)) {
    EXPECT_EQ(raw_hello(fd_, ns, token).first, 1 | 0x80);
  }
  ~Ctl() { close(fd_); }
  Ctl(const Ctl&) = delete;
  Ctl& operator=(const Ctl&) = delete;
  int fd() const { return fd_; }

  static std::vector<uint8_t> frame(uint16_t type, const std::vector<uint8_t>& payload) {
    std::vector<uint8_t> f = {0x4b, 0x56, 0x54, 0x52, kWireVersion, 0};
    put(f, type, 2);
    put(f, payload.size(), 4);
    put(f, 0, 4);
    f.insert(f.end(), payload.begin(), payload.end());
    return f;
  }
  // Sends a frame (and bulk bytes after it); returns the reply's type and payload (type -1: no
  // reply).
  std::pair<int, std::vector<uint8_t>> call(uint16_t type, const std::vector<uint8_t>& payload,
                                            const std::vector<uint8_t>& bulk = {}) {
    std::vector<uint8_t> f = frame(type, payload);
    f.insert(f.end(), bulk.begin(), bulk.end());
    send(fd_, f.data(), f.size(), MSG_NOSIGNAL);
    return read_reply();
  }
  std::pair<int, std::vector<uint8_t>> read_reply(std::vector<uint8_t>* bulk = nullptr,
                                                  size_t bulk_len = 0) {
    uint8_t h[16];
    if (recv_all(fd_, h, 16) != 16) return {-1, {}};
    uint32_t len = 0;
    std::memcpy(&len, h + 8, 4);
    std::vector<uint8_t> reply(len);
    if (len && recv_all(fd_, reply.data(), len) != static_cast<ssize_t>(len)) return {-1, {}};
    if (bulk) {
      bulk->resize(bulk_len);
      if (bulk_len && recv_all(fd_, bulk->data(), bulk_len) != static_cast<ssize_t>(bulk_len))
        return {-1, {}};
    }
    return {h[6] | (h[7] << 8), reply};
  }
  static void put(std::vector<uint8_t>& v, uint64_t x, int bytes) {
    for (int k = 0; k < bytes; ++k) v.push_back(static_cast<uint8_t>(x >> (8 * k)));
  }
  static uint64_t get(const std::vector<uint8_t>& v, size_t at, int bytes) {
    uint64_t x = 0;
    for (int k = 0; k < bytes && at + k < v.size(); ++k) x |= uint64_t{v[at + k]} << (8 * k);
    return x;
  }
  static void put_id(std::vector<uint8_t>& v, uint8_t tag) { v.insert(v.end(), 16, tag); }

  // ALLOC of one key (id bytes all `tag`) promising `sum` (default: the checksum of `len` zero
  // bytes, what a fresh slot holds); returns {code, lease}.
  std::pair<int32_t, uint64_t> alloc(uint8_t tag, uint64_t len, uint64_t sum) {
    std::vector<uint8_t> p;
    put(p, 1, 4);
    put_id(p, tag);
    put(p, len, 8);
    put(p, sum, 8);
    auto [type, r] = call(9, p);
    EXPECT_EQ(type, 9 | 0x80);
    return {static_cast<int32_t>(get(r, 4, 4)), get(r, 16, 8)};
  }
  std::pair<int32_t, uint64_t> alloc(uint8_t tag, uint64_t len) {
    return alloc(tag, len, zeros_checksum(len));
  }
  int32_t commit(uint64_t lease, bool keep) {
    std::vector<uint8_t> p;
    put(p, 1, 4);
    put(p, lease, 8);
    put(p, keep ? 1 : 0, 1);
    auto [type, r] = call(10, p);
    EXPECT_EQ(type, 10 | 0x80);
    return static_cast<int32_t>(get(r, 4, 4));
  }
  // A TCP PUT of one page; its code.
  int32_t put_page(uint8_t tag, const std::vector<uint8_t>& bytes) {
    std::vector<uint8_t> p;
    put(p, 1, 4);
    put_id(p, tag);
    put(p, bytes.size(), 8);
    put(p, page_checksum(bytes.data(), bytes.size()), 8);
    auto [type, r] = call(3, p, bytes);
    EXPECT_EQ(type, 3 | 0x80);
    return type == (3 | 0x80) ? static_cast<int32_t>(get(r, 4, 4)) : INT32_MIN;  // no answer
  }
  // A TCP GET of one page: {code, bytes}.
  std::pair<int32_t, std::vector<uint8_t>> get_page(uint8_t tag) {
    std::vector<uint8_t> p;
    put(p, 1, 4);
    put_id(p, tag);
    std::vector<uint8_t> f = frame(4, p);
    send(fd_, f.data(), f.size(), MSG_NOSIGNAL);
    uint8_t h[16];
    if (recv_all(fd_, h, 16) != 16) return {-1, {}};
    std::vector<uint8_t> r(24);
    if (recv_all(fd_, r.data(), 24) != 24) return {-1, {}};
    const int32_t code = static_cast<int32_t>(get(r, 4, 4));
    std::vector<uint8_t> bytes(code == 0 ? get(r, 8, 8) : 0);
    if (!bytes.empty() &&
        recv_all(fd_, bytes.data(), bytes.size()) != static_cast<ssize_t>(bytes.size()))
      return {-1, {}};
    return {code, bytes};
  }
  // A request of `type` for one key (id bytes all `tag`); the reply's payload.
  std::vector<uint8_t> one_key(uint16_t type, uint8_t tag) {
    std::vector<uint8_t> p;
    put(p, 1, 4);
    put_id(p, tag);
    auto [reply_type, r] = call(type, p);
    EXPECT_EQ(reply_type, type | 0x80);
    return r;
  }
  bool exists(uint8_t tag) {
    auto r = one_key(2, tag);
    return r.size() == 5 && r[4] == 1;
  }
  // LOOKUP of one key: {code, length, lease}.
  std::tuple<int32_t, uint64_t, uint64_t> lookup(uint8_t tag) {
    auto r = one_key(11, tag);
    return {static_cast<int32_t>(get(r, 4, 4)), get(r, 16, 8), get(r, 32, 8)};
  }
  // SIZES of one key: its size, or a code.
  int64_t size(uint8_t tag) { return static_cast<int64_t>(get(one_key(13, tag), 4, 8)); }
  int remove(uint8_t tag) { return static_cast<int32_t>(get(one_key(5, tag), 4, 4)); }
  // STATS field `field` (protocol.h): 0 pages, 1 bytes, 2 capacity, 3 evictions, 4 errors,
  // 5 leases expired, 6 hits, 7 misses, 8 leases held, 9 connections.
  uint64_t stat(int field) {
    auto [type, r] = call(7, {});
    EXPECT_EQ(type, 7 | 0x80);
    return get(r, 8 * field, 8);
  }

 private:
  int fd_;
};

// Whether the server closed fd (EOF or reset) within `ms`; an ERROR frame before is skipped.
inline bool closed_within(int fd, int ms) {
  timeval tv{ms / 1000, (ms % 1000) * 1000};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  char buf[4096];
  for (;;) {
    ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n == 0) return true;
    if (n < 0) return errno == ECONNRESET;  // EAGAIN: still open at the deadline
  }
}

}  // namespace kvtier_test
