// Prefill -> decode straight between two processes' pools (kvtier_endpoint_*, kvtier_peer_*):
// every layout, whole pages and single layers, both directions, blocking and async; the token
// and format checks; ids out of range; a peer that goes silent, dies mid-transfer, comes back.
// The expected bytes come from a restatement of the pool layouts, not from the library.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <kvtier/kvtier.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "tests/p2p/p2p_local.h"
#include "tests/p2p/p2p_pool.h"
#include "tests/p2p/p2p_process.h"
#include "tests/common/test_util.h"

using kvtier_test::Connected;
using kvtier_test::kConfig;
using kvtier_test::kLocalSeed;
using kvtier_test::kMha;
using kvtier_test::kPeerSeed;
using kvtier_test::Local;
using kvtier_test::move;
using kvtier_test::P2pShape;
using kvtier_test::PeerProcess;

namespace kvtier_test {
void PrintTo(const P2pShape& s, std::ostream* os) {
  *os << "shape " << s.args();
}
}  // namespace kvtier_test

namespace {

using Ranges = std::vector<std::pair<size_t, size_t>>;  // (offset, length) in the pool

// Where page `page` (or one layer of it) lives, restated from the layout table.
Ranges ranges(const P2pShape& s, uint64_t page, int layer) {
  const bool mha = s.kind == KVTIER_POOL_MHA;
  const size_t tok = mha ? size_t{s.H} * s.D * s.E : size_t{s.C} * s.E;
  const size_t v_off = size_t{s.L} * s.S * tok, st = page * s.P;
  Ranges out[2];  // K, V (MLA: K only)
  for (uint32_t l = 0; l < s.L; ++l) {
    if (layer >= 0 && l != static_cast<uint32_t>(layer)) continue;
    if (s.order == KVTIER_LAYOUT_LAYER_FIRST) {
      out[0].push_back({(l * s.S + st) * tok, s.P * tok});
      if (mha) out[0].push_back({(l * s.S + st) * tok + v_off, s.P * tok});
    } else if (layer < 0) {
      out[0].push_back({st * s.L * tok, size_t{s.L} * s.P * tok});
      if (mha) out[1].push_back({st * s.L * tok + v_off, size_t{s.L} * s.P * tok});
      break;
    } else if (s.order == KVTIER_LAYOUT_PAGE_FIRST_DIRECT) {
      out[0].push_back({(st * s.L + l * s.P) * tok, s.P * tok});
      if (mha) out[1].push_back({(st * s.L + l * s.P) * tok + v_off, s.P * tok});
    } else {  // page_first: one run per token
      for (uint32_t t = 0; t < s.P; ++t) {
        out[0].push_back({((st + t) * s.L + l) * tok, tok});
        if (mha) out[1].push_back({((st + t) * s.L + l) * tok + v_off, tok});
      }
    }
  }
  out[0].insert(out[0].end(), out[1].begin(), out[1].end());
  return out[0];
}

std::vector<unsigned char> gather(const unsigned char* pool, const Ranges& r) {
  std::vector<unsigned char> v;
  for (auto [off, len] : r) v.insert(v.end(), pool + off, pool + off + len);
  return v;
}

class P2p : public ::testing::TestWithParam<P2pShape> {};

TEST_P(P2p, WholePagesAndLayersBothWaysByteForByte) {
  const P2pShape s = GetParam();
  Connected c(s);
  auto& [peer_proc, local, peer] = c;
  ASSERT_NE(peer, nullptr);
  std::vector<unsigned char> want(s.pool_bytes());
  kvtier_test::fill_pattern(want.data(), want.size(), kPeerSeed);
  auto expect_page = [&](uint64_t remote_page, uint64_t local_page, int layer) {
    const Ranges theirs = ranges(s, remote_page, layer), mine = ranges(s, local_page, layer);
    const auto v = gather(local.pool.data(), mine);
    size_t at = 0;
    for (auto [off, len] : theirs) {
      std::memcpy(&want[off], &v[at], len);
      at += len;
    }
  };
  // Whole pages, prefill -> decode.
  EXPECT_EQ(move(peer, true, {1, 2, 3}, {10, 5, 7}, -1), std::vector<int>(3, KVTIER_OK));
  expect_page(10, 1, -1), expect_page(5, 2, -1), expect_page(7, 3, -1);
  EXPECT_TRUE(peer_proc.dump() == want);  // those pages, and not a byte elsewhere
  // Layer by layer, as prefill computes them: after each layer only that layer has moved.
  for (uint32_t l = 0; l < s.L; ++l) {
    EXPECT_EQ(move(peer, true, {4}, {12}, static_cast<int>(l)), std::vector<int>{KVTIER_OK});
    expect_page(12, 4, static_cast<int>(l));
    EXPECT_TRUE(peer_proc.dump() == want) << "after layer " << l;
  }
  EXPECT_EQ(gather(want.data(), ranges(s, 12, -1)), gather(local.pool.data(), ranges(s, 4, -1)));
  // Decode pulls: pages of the peer into ours.
  EXPECT_EQ(move(peer, false, {8, 9}, {1, 14}, -1), std::vector<int>(2, KVTIER_OK));
  EXPECT_EQ(gather(local.pool.data(), ranges(s, 8, -1)), gather(want.data(), ranges(s, 1, -1)));
  EXPECT_EQ(gather(local.pool.data(), ranges(s, 9, -1)), gather(want.data(), ranges(s, 14, -1)));
  EXPECT_EQ(move(peer, false, {11}, {13}, 1), std::vector<int>{KVTIER_OK});
  EXPECT_EQ(gather(local.pool.data(), ranges(s, 11, 1)), gather(want.data(), ranges(s, 13, 1)));
  // Async, completion seen through the pollable fd.
  std::vector<int64_t> l{6, 15}, r{2, 3};
  std::vector<int> res(2, 99);
  kvtier_transfer_t* t = nullptr;
  ASSERT_EQ(kvtier_peer_write_pages_async(peer, l.data(), r.data(), 2, -1, res.data(), &t),
            KVTIER_OK);
  pollfd p{kvtier_transfer_fd(t), POLLIN, 0};
  ASSERT_EQ(poll(&p, 1, 10000), 1);
  int status = 99;
  ASSERT_EQ(kvtier_transfer_wait(t, 0, &status), KVTIER_OK);
  EXPECT_EQ(status, KVTIER_OK);
  EXPECT_EQ(res, std::vector<int>(2, KVTIER_OK));
  kvtier_transfer_free(t);
  expect_page(2, 6, -1), expect_page(3, 15, -1);
  EXPECT_TRUE(peer_proc.dump() == want);
  kvtier_peer_close(peer);
}

std::string shape_name(const ::testing::TestParamInfo<P2pShape>& info) {
  const char* orders[] = {"layer_first", "page_first", "page_first_direct"};
  return std::string(info.param.kind == KVTIER_POOL_MHA ? "MHA_" : "MLA_") +
         orders[info.param.order];
}

INSTANTIATE_TEST_SUITE_P(
    AllLayouts, P2p,
    ::testing::Values(
        P2pShape{KVTIER_POOL_MHA, KVTIER_LAYOUT_LAYER_FIRST, 4, 3, 2, 8, 0, 2, 64}, kMha,
        P2pShape{KVTIER_POOL_MHA, KVTIER_LAYOUT_PAGE_FIRST_DIRECT, 4, 3, 2, 8, 0, 2, 64},
        P2pShape{KVTIER_POOL_MLA, KVTIER_LAYOUT_LAYER_FIRST, 8, 5, 0, 0, 24, 2, 128},
        P2pShape{KVTIER_POOL_MLA, KVTIER_LAYOUT_PAGE_FIRST, 8, 5, 0, 0, 24, 2, 128},
        P2pShape{KVTIER_POOL_MLA, KVTIER_LAYOUT_PAGE_FIRST_DIRECT, 8, 5, 0, 0, 24, 2, 128}),
    shape_name);

TEST(P2pCheck, WrongTokenOrAnotherFormatIsDenied) {
  PeerProcess peer_proc(kMha, kPeerSeed, kConfig);
  kvtier_peer_t* peer = nullptr;
  {
    Local wrong(kMha, kLocalSeed, "p2p_token=guess;p2p_transport=tcp");
    EXPECT_EQ(kvtier_endpoint_connect(wrong.ep, peer_proc.address().c_str(), &peer),
              KVTIER_ERR_DENIED);
    EXPECT_EQ(peer, nullptr);
  }
  {
    Local fp16(kMha, kLocalSeed, kConfig, "float16");
    EXPECT_EQ(kvtier_endpoint_connect(fp16.ep, peer_proc.address().c_str(), &peer),
              KVTIER_ERR_DENIED);
    EXPECT_NE(std::string(kvtier_last_error()).find("page formats"), std::string::npos);
  }
  {
    P2pShape other = kMha;
    other.L = 4;
    Local layers(other, kLocalSeed, kConfig);
    EXPECT_EQ(kvtier_endpoint_connect(layers.ep, peer_proc.address().c_str(), &peer),
              KVTIER_ERR_DENIED);
  }
  std::vector<unsigned char> want(kMha.pool_bytes());
  kvtier_test::fill_pattern(want.data(), want.size(), kPeerSeed);
  EXPECT_TRUE(peer_proc.dump() == want);
}

TEST(P2pCheck, IdsOutOfRangeFailTheirPageAloneAndWriteNothing) {
  Connected c(kMha);
  auto& [peer_proc, local, peer] = c;
  ASSERT_NE(peer, nullptr);
  const int64_t pages = static_cast<int64_t>(kMha.S / kMha.P);
  EXPECT_EQ(move(peer, true, {1, 2, 3, pages, 4}, {-1, pages, 5, 6, 7}, -1),
            (std::vector<int>{KVTIER_ERR_OUT_OF_RANGE, KVTIER_ERR_OUT_OF_RANGE, KVTIER_OK,
                              KVTIER_ERR_OUT_OF_RANGE, KVTIER_OK}));
  EXPECT_EQ(move(peer, true, {1}, {2}, static_cast<int>(kMha.L)),
            std::vector<int>{KVTIER_ERR_OUT_OF_RANGE});
  std::vector<unsigned char> want(kMha.pool_bytes());
  kvtier_test::fill_pattern(want.data(), want.size(), kPeerSeed);
  for (auto [lp, rp] : {std::pair{3, 5}, std::pair{4, 7}}) {
    const auto v = gather(local.pool.data(), ranges(kMha, lp, -1));
    size_t at = 0;
    for (auto [off, len] : ranges(kMha, rp, -1)) {
      std::memcpy(&want[off], &v[at], len);
      at += len;
    }
  }
  EXPECT_TRUE(peer_proc.dump() == want);
  std::vector<int> res(1, 99);
  int64_t one = 1;
  EXPECT_EQ(kvtier_peer_write_pages(peer, &one, nullptr, 1, -1, res.data()),
            KVTIER_ERR_INVALID_ARG);
  EXPECT_EQ(res[0], KVTIER_ERR_INVALID_ARG);
  EXPECT_EQ(kvtier_peer_write_pages(nullptr, &one, &one, 1, -1, res.data()),
            KVTIER_ERR_INVALID_ARG);
  kvtier_peer_close(peer);
}

TEST(P2pFailure, SilentDeadAndRestartedPeers) {
  // A pool big enough that a transfer of all of it takes a while on loopback.
  const P2pShape big{KVTIER_POOL_MHA, KVTIER_LAYOUT_PAGE_FIRST, 16, 32, 8, 128, 0, 2, 128};
  const char* cfg = "p2p_token=secret;p2p_timeout_ms=1000;p2p_transport=tcp";
  auto peer_proc = std::make_unique<PeerProcess>(big, kPeerSeed, cfg);
  const std::string addr = peer_proc->address();
  Local local(big, kLocalSeed, cfg);
  kvtier_peer_t* peer = nullptr;
  ASSERT_EQ(kvtier_endpoint_connect(local.ep, addr.c_str(), &peer), KVTIER_OK);
  std::vector<int64_t> all(big.S / big.P);
  for (size_t i = 0; i < all.size(); ++i) all[i] = static_cast<int64_t>(i);
  using Clock = std::chrono::steady_clock;
  // Silent (stopped): every page fails with TIMEOUT within the timeout.
  peer_proc->kill_now(SIGSTOP);
  auto t0 = Clock::now();
  auto res = move(peer, true, all, all, -1);
  auto took = Clock::now() - t0;
  EXPECT_EQ(res, std::vector<int>(all.size(), KVTIER_ERR_TIMEOUT));
  EXPECT_LT(took, std::chrono::milliseconds(2500));
  EXPECT_EQ(kvtier_peer_connected(peer), 0);
  peer_proc->kill_now(SIGCONT);
  // Killed mid-transfer: the call fails within the timeout, and what failed says so.
  std::thread killer([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(30));
    peer_proc->kill_now(SIGKILL);
  });
  bool failed = false;
  for (int round = 0; round < 200 && !failed; ++round) {
    t0 = Clock::now();
    res = move(peer, true, all, all, -1);
    took = Clock::now() - t0;
    for (int r : res) failed |= r != KVTIER_OK;
  }
  killer.join();
  ASSERT_TRUE(failed);
  EXPECT_LT(took, std::chrono::milliseconds(2500));
  for (int r : res)
    EXPECT_TRUE(r == KVTIER_OK || r == KVTIER_ERR_UNAVAILABLE || r == KVTIER_ERR_TIMEOUT) << r;
  // Back on the same port: the next call connects again and moves the bytes.
  peer_proc.reset();
  peer_proc =
      std::make_unique<PeerProcess>(big, kPeerSeed, std::string(cfg) + ";p2p_listen=" + addr);
  ASSERT_EQ(peer_proc->address(), addr);
  EXPECT_EQ(move(peer, true, {3}, {5}, -1), std::vector<int>{KVTIER_OK});
  EXPECT_EQ(kvtier_peer_connected(peer), 1);
  const auto d = peer_proc->dump();
  EXPECT_EQ(gather(d.data(), ranges(big, 5, -1)), gather(local.pool.data(), ranges(big, 3, -1)));
  kvtier_peer_close(peer);
}

TEST(P2pRdma, PagesMoveOneSidedBetweenTwoPools) {
  // rdma_cm cannot bind loopback: the address of an RDMA-capable interface comes from the
  // environment, as for the remote tier's RDMA tests.
  const char* addr = std::getenv("KVTIER_TEST_RDMA_ADDR");
  const std::string cfg = std::string("p2p_token=secret;p2p_transport=rdma;p2p_listen=") +
                          (addr ? addr : "127.0.0.1") + ":0";
  std::vector<unsigned char> pool(kMha.pool_bytes());
  kvtier_pool_layout_t l = kMha.layout(pool.data());
  kvtier_endpoint_t* probe = nullptr;
  const int rc = kvtier_endpoint_open(cfg.c_str(), &l, &probe);
  kvtier_endpoint_close(probe);
  if (rc == KVTIER_ERR_UNSUPPORTED)
    GTEST_SKIP() << (KVTIER_TEST_RDMA ? "no RDMA device on this host"
                                      : "this build of kvtier has no RDMA transport");
  if (!addr) GTEST_SKIP() << "set KVTIER_TEST_RDMA_ADDR to an RDMA-capable address";
  Connected c(kMha, cfg);
  auto& [peer_proc, local, peer] = c;
  ASSERT_NE(peer, nullptr);
  EXPECT_EQ(move(peer, true, {1, 2}, {3, 4}, -1), std::vector<int>(2, KVTIER_OK));
  EXPECT_EQ(move(peer, true, {5}, {6}, 1), std::vector<int>{KVTIER_OK});
  EXPECT_EQ(move(peer, false, {7}, {0}, -1), std::vector<int>{KVTIER_OK});
  const auto d = peer_proc.dump();
  EXPECT_EQ(gather(d.data(), ranges(kMha, 3, -1)), gather(local.pool.data(), ranges(kMha, 1, -1)));
  EXPECT_EQ(gather(d.data(), ranges(kMha, 4, -1)), gather(local.pool.data(), ranges(kMha, 2, -1)));
  EXPECT_EQ(gather(d.data(), ranges(kMha, 6, 1)), gather(local.pool.data(), ranges(kMha, 5, 1)));
  EXPECT_EQ(gather(local.pool.data(), ranges(kMha, 7, -1)), gather(d.data(), ranges(kMha, 0, -1)));
  kvtier_peer_close(peer);
}

}  // namespace
