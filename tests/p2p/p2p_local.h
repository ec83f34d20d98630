// This process's side of the p2p tests: a pool behind its own endpoint, a move of pages to or
// from a peer, and the shapes and settings the suites share.
#pragma once

#include <gtest/gtest.h>
#include <kvtier/kvtier.h>

#include <cstdint>
#include <string>
#include <vector>

#include "tests/common/loopback.h"
#include "tests/common/test_util.h"
#include "tests/p2p/p2p_pool.h"

namespace kvtier_test {

// This side: a pool filled from `seed` behind its own endpoint.
struct Local {
  P2pShape shape;
  std::vector<unsigned char> pool;
  kvtier_endpoint_t* ep = nullptr;
  Local(const P2pShape& s, uint64_t seed, const char* config, const char* dtype = "bfloat16")
      : shape(s), pool(s.pool_bytes()) {
    kvtier_test::fill_pattern(pool.data(), pool.size(), seed);
    kvtier_pool_layout_t l = s.layout(pool.data(), dtype);
    EXPECT_EQ(kvtier_endpoint_open(config, &l, &ep), KVTIER_OK) << kvtier_last_error();
  }
  ~Local() { kvtier_endpoint_close(ep); }
  // Closes the endpoint now; the pool stays, to be looked at.
  void close() {
    kvtier_endpoint_close(ep);
    ep = nullptr;
  }
  // Where the endpoint listens: "ip:port", and the port.
  std::string address() const {
    char a[256] = {};
    EXPECT_EQ(kvtier_endpoint_address(ep, a, sizeof a), KVTIER_OK) << kvtier_last_error();
    return a;
  }
  uint16_t port() const { return port_of(address()); }
};

inline std::vector<int> move(kvtier_peer_t* peer, bool write, std::vector<int64_t> local,
                             std::vector<int64_t> remote, int layer) {
  std::vector<int> res(local.size(), 99);
  auto call = write ? kvtier_peer_write_pages : kvtier_peer_read_pages;
  call(peer, local.data(), remote.data(), local.size(), layer, res.data());
  return res;
}

inline constexpr uint64_t kPeerSeed = 0xdec0de, kLocalSeed = 0x9ef111;
inline constexpr const char* kConfig = "p2p_token=secret;p2p_timeout_ms=2000;p2p_transport=tcp";
inline const P2pShape kMha{KVTIER_POOL_MHA, KVTIER_LAYOUT_PAGE_FIRST, 4, 3, 2, 8, 0, 2, 64};

}  // namespace kvtier_test
