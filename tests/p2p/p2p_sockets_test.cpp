// Sockets of p2p connections: both ends send without Nagle, and a peer that stops mid-frame is
// dropped after the endpoint's timeout. Both endpoints live in this process, so the test can
// look at every socket of a connection.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <kvtier/kvtier.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "tests/common/loopback.h"
#include "tests/common/sampling.h"
#include "tests/common/wire_version.h"
#include "tests/p2p/p2p_local.h"

namespace kvtier_test {
namespace {

// Both ends of a connection send at once: a frame held back by Nagle until the peer's delayed
// ACK stalled small p2p reads by 40 ms when the accepting end lacked TCP_NODELAY.
TEST(P2pCheck, BothEndsOfAConnectionSendWithoutNagle) {
  Local a(kMha, kLocalSeed, kConfig), b(kMha, kPeerSeed, kConfig);
  kvtier_peer_t* peer = nullptr;
  ASSERT_EQ(kvtier_endpoint_connect(b.ep, a.address().c_str(), &peer), KVTIER_OK)
      << kvtier_last_error();
  EXPECT_EQ(move(peer, false, {1}, {2}, -1), std::vector<int>{KVTIER_OK});
  // Both ends live in this process: every connected TCP socket in it must have TCP_NODELAY.
  int connected = 0;
  for (const auto& fd_link : std::filesystem::directory_iterator("/proc/self/fd")) {
    const int fd = std::atoi(fd_link.path().filename().c_str());
    sockaddr_storage peer_addr{};
    socklen_t len = sizeof peer_addr;
    int type = 0;
    socklen_t tlen = sizeof type;
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tlen) != 0 || type != SOCK_STREAM ||
        getpeername(fd, reinterpret_cast<sockaddr*>(&peer_addr), &len) != 0 ||
        peer_addr.ss_family != AF_INET)
      continue;
    int nodelay = 0;
    socklen_t nlen = sizeof nodelay;
    ASSERT_EQ(getsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &nodelay, &nlen), 0);
    EXPECT_NE(nodelay, 0) << "socket " << fd;
    ++connected;
  }
  EXPECT_GE(connected, 2);  // the connecting end and the accepted one
  kvtier_peer_close(peer);
}

// Whether the other end closes `fd` within `ms` (whatever it sends first, an error frame say).
bool closed_within(int fd, int ms) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
  for (char buf[256];;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        end - std::chrono::steady_clock::now());
    pollfd p{fd, POLLIN, 0};
    if (left.count() <= 0 || poll(&p, 1, static_cast<int>(left.count())) != 1) return false;
    const ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n <= 0) return n == 0;
  }
}

// `from` connects to endpoint `to_port` through a relay in this test that passes the HELLO
// handshake (two HELLOs and their replies) along, then stops relaying; the relay's socket to `to_port` (the peer as the
// endpoint sees it) is returned in *to, and every socket to close in *fds.
void hello_through_relay(kvtier_endpoint_t* from, uint16_t to_port, kvtier_peer_t** peer, int* to,
                         std::vector<int>* fds) {
  uint16_t relay_port = 0;
  const int ls = listen_loopback(&relay_port, 1);
  ASSERT_GE(ls, 0);
  std::thread connecting([&] {
    EXPECT_EQ(kvtier_endpoint_connect(from, loopback_address(relay_port).c_str(), peer), KVTIER_OK);
  });
  const int from_fd = accept(ls, nullptr, nullptr);
  *to = loopback_connect(to_port);
  *fds = {ls, from_fd, *to};
  for (int replies = 0; replies < 2;) {  // both ways, until the second HELLO has its reply
    pollfd p[2] = {{from_fd, POLLIN, 0}, {*to, POLLIN, 0}};
    if (poll(p, 2, 5000) <= 0) break;
    char buf[4096];
    for (int k = 0; k < 2; ++k) {
      if (!(p[k].revents & POLLIN)) continue;
      const ssize_t n = recv(p[k].fd, buf, sizeof buf, 0);
      if (n <= 0 || send(p[1 - k].fd, buf, static_cast<size_t>(n), MSG_NOSIGNAL) != n) break;
      replies += k == 1;
    }
  }
  connecting.join();
}

// A peer that connects and then sends half a HELLO, or nothing, or half a request's header
// after its HELLO, is dropped once the endpoint's timeout (2 s here) has passed, and the
// endpoint keeps serving others.
TEST(P2pCheck, APeerThatStopsMidFrameIsDroppedAfterTheTimeout) {
  Local a(kMha, kLocalSeed, kConfig), b(kMha, kPeerSeed, kConfig);
  const std::string addr = a.address();
  const uint16_t port = port_of(addr);
  const unsigned char head[7] = {0x4b,         0x56, 0x54, 0x52,
                                 kWireVersion, 0,    32};  // a header's first bytes
  for (const size_t sent : {size_t{0}, size_t{7}}) {
    const int fd = loopback_connect(port);
    ASSERT_EQ(send(fd, head, sent, MSG_NOSIGNAL), static_cast<ssize_t>(sent));
    EXPECT_TRUE(closed_within(fd, 6000)) << "still open after 6 s, " << sent << " bytes sent";
    close(fd);
  }
  kvtier_peer_t* relayed = nullptr;
  int to_a = -1;
  std::vector<int> fds;
  hello_through_relay(b.ep, port, &relayed, &to_a, &fds);
  ASSERT_NE(relayed, nullptr);
  ASSERT_EQ(send(to_a, head, sizeof head, MSG_NOSIGNAL), static_cast<ssize_t>(sizeof head));
  EXPECT_TRUE(closed_within(to_a, 6000)) << "still open after 6 s with half a request header";
  for (int fd : fds) close(fd);
  kvtier_peer_close(relayed);
  kvtier_peer_t* peer = nullptr;  // and it still serves a real peer
  ASSERT_EQ(kvtier_endpoint_connect(b.ep, addr.c_str(), &peer), KVTIER_OK) << kvtier_last_error();
  EXPECT_EQ(move(peer, false, {1}, {2}, -1), std::vector<int>{KVTIER_OK});
  kvtier_peer_close(peer);
}

// A flood of connections that never say HELLO: past KVTIER_P2P_MAX_PEERS the oldest of them
// are dropped at once (long before the timeout), and a real peer still gets through.
TEST(P2pCheck, AFloodOfSilentConnectionsMakesRoomForRealPeers) {
  const std::string config = std::string(kConfig) + ";p2p_timeout_ms=30000;p2p_max_peers=8";
  Local a(kMha, kLocalSeed, config.c_str()), b(kMha, kPeerSeed, config.c_str());
  const std::string addr = a.address();
  const uint16_t port = port_of(addr);
  std::vector<int> flood;
  for (int i = 0; i < 20; ++i) flood.push_back(loopback_connect(port));
  std::vector<bool> gone(flood.size(), false);
  int closed = 0;
  const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (closed < 20 - 8 && std::chrono::steady_clock::now() < end)
    for (size_t i = 0; i < flood.size(); ++i)
      if (!gone[i] && closed_within(flood[i], 10)) gone[i] = true, ++closed;
  EXPECT_EQ(closed, 20 - 8) << "8 silent connections are served, the older ones dropped";
  kvtier_peer_t* peer = nullptr;
  ASSERT_EQ(kvtier_endpoint_connect(b.ep, addr.c_str(), &peer), KVTIER_OK) << kvtier_last_error();
  EXPECT_EQ(move(peer, false, {1}, {2}, -1), std::vector<int>{KVTIER_OK});
  kvtier_peer_close(peer);
  for (int fd : flood) close(fd);
}

// The threads of this process.
int threads_now() {
  return static_cast<int>(proc_status(getpid(), "Threads"));
}

// The endpoint is served by event loops, as kvtier-server is, not a thread per connection: 200
// connections that have not said HELLO and 24 authenticated peers leave this process's thread
// count where it was, and every peer is served.
TEST(P2pCheck, ConnectionsCostTheEndpointNoThreadEach) {
  Local a(kMha, kLocalSeed, kConfig), b(kMha, kPeerSeed, kConfig);
  const std::string addr = a.address();
  const uint16_t port = port_of(addr);
  const int before = threads_now();
  std::vector<int> silent;
  for (int i = 0; i < 200; ++i) silent.push_back(loopback_connect(port));
  std::vector<kvtier_peer_t*> peers(24, nullptr);
  for (auto& p : peers)
    ASSERT_EQ(kvtier_endpoint_connect(b.ep, addr.c_str(), &p), KVTIER_OK) << kvtier_last_error();
  std::this_thread::sleep_for(std::chrono::milliseconds(200));  // every connection accepted
  const int during = threads_now();
  EXPECT_LE(during, before + 2) << before << " threads before, " << during << " with 224 "
                                << "connections";
  for (size_t i = 0; i < peers.size(); ++i)
    EXPECT_EQ(move(peers[i], false, {static_cast<int64_t>(i % 8)}, {1}, -1),
              std::vector<int>{KVTIER_OK});
  for (int fd : silent) {  // held, not dropped: under the cap, within the HELLO timeout
    pollfd p{fd, POLLIN, 0};
    EXPECT_EQ(poll(&p, 1, 0), 0);
    close(fd);
  }
  for (auto* p : peers) kvtier_peer_close(p);
}

// Idle deadlines hold for the endpoint as for the server: a peer's connection with no request
// for KVTIER_P2P_IDLE_TIMEOUT_MS is closed by the endpoint, and a peer whose connection was
// closed so connects again at its next call, which succeeds.
TEST(P2pCheck, AnIdleConnectionIsClosedAndItsPeerConnectsAgain) {
  const std::string config = std::string(kConfig) + ";p2p_idle_timeout_ms=400";
  Local a(kMha, kLocalSeed, config.c_str()), b(kMha, kPeerSeed, config.c_str());
  const std::string addr = a.address();
  const uint16_t port = port_of(addr);
  kvtier_peer_t* relayed = nullptr;
  int to_a = -1;
  std::vector<int> fds;
  hello_through_relay(b.ep, port, &relayed, &to_a, &fds);
  ASSERT_NE(relayed, nullptr);
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_TRUE(closed_within(to_a, 3000)) << "an authenticated idle connection still open";
  EXPECT_GE(std::chrono::steady_clock::now() - t0, std::chrono::milliseconds(300));
  for (int fd : fds) close(fd);
  kvtier_peer_close(relayed);
  kvtier_peer_t* peer = nullptr;
  ASSERT_EQ(kvtier_endpoint_connect(b.ep, addr.c_str(), &peer), KVTIER_OK) << kvtier_last_error();
  for (int round = 0; round < 2; ++round) {
    EXPECT_EQ(move(peer, false, {1}, {2}, -1), std::vector<int>{KVTIER_OK}) << kvtier_last_error();
    EXPECT_EQ(move(peer, true, {3}, {4}, -1), std::vector<int>{KVTIER_OK}) << kvtier_last_error();
    std::this_thread::sleep_for(std::chrono::milliseconds(900));  // closed by the endpoint
  }
  const size_t page = a.pool.size() / (kMha.S / kMha.P) / 2;  // page_first: a K run, a V run
  for (size_t half : {size_t{0}, a.pool.size() / 2})
    EXPECT_EQ(std::memcmp(&a.pool[half + 4 * page], &b.pool[half + 3 * page], page), 0);
  kvtier_peer_close(peer);
}

}  // namespace
}  // namespace kvtier_test
