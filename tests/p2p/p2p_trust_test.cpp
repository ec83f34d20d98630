// The p2p endpoint against failing and unlucky peers, with real processes on loopback: a peer
// whose endpoint (or itself) is closed under a call, a decode process stopped while a write is
// in flight, claimed lengths before HELLO, an endpoint with no token beyond loopback, and a
// transfer that lasts longer than the timeout while it keeps moving.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <kvtier/kvtier.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "tests/common/loopback.h"
#include "tests/common/sampling.h"
#include "tests/common/test_util.h"
#include "tests/common/wire_version.h"
#include "tests/p2p/p2p_local.h"
#include "tests/p2p/p2p_pool.h"
#include "tests/p2p/p2p_process.h"

namespace kvtier_test {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

std::vector<int64_t> first_pages(size_t n) {
  std::vector<int64_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<int64_t>(i);
  return v;
}

std::vector<unsigned char> pattern(const P2pShape& s, uint64_t seed) {
  std::vector<unsigned char> v(s.pool_bytes());
  fill_pattern(v.data(), v.size(), seed);
  return v;
}

const P2pShape kBig{KVTIER_POOL_MHA, KVTIER_LAYOUT_PAGE_FIRST, 16, 32, 8, 128, 0, 2, 128};

// Finding: a peer outlived its endpoint and wrote into whatever was at the old pool's address.
// Now every call on it is refused (CLOSED) and the pool, kept here to look at, keeps its bytes.
TEST(P2pLifetime, APeerOfAClosedEndpointRefusesEveryCall) {
  Connected c(kMha);
  auto& [decode, local, peer] = c;
  ASSERT_NE(peer, nullptr);
  EXPECT_EQ(move(peer, false, {1}, {2}, -1), std::vector<int>{KVTIER_OK});
  local.close();
  const std::vector<unsigned char> before = local.pool;
  EXPECT_EQ(move(peer, false, {3, 4}, {5, 6}, -1), std::vector<int>(2, KVTIER_ERR_CLOSED));
  EXPECT_EQ(move(peer, true, {3}, {5}, 0), std::vector<int>{KVTIER_ERR_CLOSED});
  int64_t one = 1;
  int res = 99;
  EXPECT_EQ(kvtier_peer_read_pages(peer, &one, &one, 1, -1, &res), KVTIER_ERR_CLOSED);
  EXPECT_EQ(kvtier_peer_connected(peer), 0);
  EXPECT_TRUE(local.pool == before) << "a read through a peer of a closed endpoint wrote into the pool";
  EXPECT_TRUE(decode.dump() == pattern(kMha, kPeerSeed));
  kvtier_peer_close(peer);
}

// The endpoint closed while a read of its peer waits on a stopped decode process: the close
// ends that call (CLOSED) and returns after it, and nothing lands once it has returned.
TEST(P2pLifetime, ClosingAnEndpointEndsItsPeersCallsInFlight) {
  Connected c(kBig);
  auto& [decode, local, peer] = c;
  ASSERT_NE(peer, nullptr);
  decode.kill_now(SIGSTOP);
  const auto all = first_pages(kBig.S / kBig.P);
  std::vector<int> res;
  std::thread reader([&] { res = move(peer, false, all, all, -1); });
  std::this_thread::sleep_for(milliseconds(200));
  const auto t0 = Clock::now();
  local.close();
  const auto took = Clock::now() - t0;
  const std::vector<unsigned char> at_close = local.pool;
  decode.kill_now(SIGCONT);
  reader.join();
  std::this_thread::sleep_for(milliseconds(300));
  EXPECT_LT(took, milliseconds(1000)) << "the close waited for the call's own timeout";
  EXPECT_EQ(res, std::vector<int>(all.size(), KVTIER_ERR_CLOSED));
  EXPECT_TRUE(local.pool == at_close) << "bytes landed in the pool after its endpoint was closed";
  EXPECT_TRUE(local.pool == pattern(kBig, kLocalSeed));
  kvtier_peer_close(peer);
}

// Issue 27's p2p part: kvtier_peer_close with a blocking and a background transfer in flight
// waits for both (they end with CLOSED), never frees what they use, and nothing lands after.
TEST(P2pLifetime, ClosingAPeerWaitsForItsTransfersInFlight) {
  Connected c(kBig);
  auto& [decode, local, peer] = c;
  ASSERT_NE(peer, nullptr);
  decode.kill_now(SIGSTOP);
  const auto all = first_pages(kBig.S / kBig.P);
  std::vector<int> blocking, background(all.size(), 99);
  std::thread reader([&] { blocking = move(peer, false, all, all, -1); });
  kvtier_transfer_t* t = nullptr;
  ASSERT_EQ(kvtier_peer_read_pages_async(peer, all.data(), all.data(), all.size(), -1,
                                         background.data(), &t),
            KVTIER_OK);
  std::this_thread::sleep_for(milliseconds(200));
  kvtier_peer_close(peer);
  int status = 99;
  EXPECT_EQ(kvtier_transfer_wait(t, 0, &status), KVTIER_OK) << "still running after the close";
  const std::vector<unsigned char> at_close = local.pool;
  decode.kill_now(SIGCONT);
  reader.join();
  kvtier_transfer_wait(t, -1, &status);
  EXPECT_EQ(status, KVTIER_ERR_CLOSED);
  EXPECT_EQ(background, std::vector<int>(all.size(), KVTIER_ERR_CLOSED));
  EXPECT_EQ(blocking, std::vector<int>(all.size(), KVTIER_ERR_CLOSED));
  kvtier_transfer_free(t);
  std::this_thread::sleep_for(milliseconds(300));
  EXPECT_TRUE(local.pool == at_close) << "bytes landed after the peer was closed";
}

// Finding: with the decode process stopped, write_pages said TIMEOUT, and when the process went
// on, every page landed. Now a page whose write failed keeps its old bytes, ever; the next
// write lands whole.
TEST(P2pFailure, PagesOfAFailedWriteNeverLandLater) {
  const char* cfg = "p2p_token=secret;p2p_timeout_ms=1000;p2p_transport=tcp";
  Connected c(kBig, cfg);
  auto& [decode, local, peer] = c;
  ASSERT_NE(peer, nullptr);
  const std::vector<int64_t> mine{0, 1, 2, 3}, theirs{4, 5, 6, 7};
  decode.kill_now(SIGSTOP);
  const auto t0 = Clock::now();
  EXPECT_EQ(move(peer, true, mine, theirs, -1), std::vector<int>(4, KVTIER_ERR_TIMEOUT));
  EXPECT_LT(Clock::now() - t0, milliseconds(2500));
  decode.kill_now(SIGCONT);
  std::this_thread::sleep_for(milliseconds(500));  // the stopped process reads what was sent
  EXPECT_TRUE(decode.dump() == pattern(kBig, kPeerSeed)) << "pages landed after TIMEOUT";
  EXPECT_EQ(move(peer, true, {1}, {5}, -1), std::vector<int>{KVTIER_OK});
  std::vector<unsigned char> want = pattern(kBig, kPeerSeed);
  const size_t page = kBig.pool_bytes() / (kBig.S / kBig.P);  // page_first: K run, V run
  const size_t half = kBig.pool_bytes() / 2, run = page / 2;
  std::memcpy(&want[5 * run], &local.pool[1 * run], run);
  std::memcpy(&want[half + 5 * run], &local.pool[half + 1 * run], run);
  EXPECT_TRUE(decode.dump() == want);
  kvtier_peer_close(peer);
}

// The same kind, one step later: the decode process stops right after it has staged a write
// and said so (a relay stops it as that answer passes). The writer's COMMIT waits in the
// socket, the writer is told TIMEOUT, and when the process goes on it publishes nothing, even
// with the relay's connection to it still open (no hang-up to see: its own clock tells).
TEST(P2pFailure, AWriteStagedBeforeTheReceiverStoppedIsNotPublishedLater) {
  const char* cfg = "p2p_token=secret;p2p_timeout_ms=1000;p2p_transport=tcp";
  PeerProcess decode(kMha, kPeerSeed, cfg);
  Local prefill(kMha, kLocalSeed, cfg);
  uint16_t relay_port = 0;
  const int ls = listen_loopback(&relay_port, 1);
  ASSERT_GE(ls, 0);
  std::atomic<bool> stopped{false}, release{false};
  std::thread relay([&] {
    const int a = accept(ls, nullptr, nullptr);
    const int b = loopback_connect(decode.port());
    char buf[65536];
    for (int replies = 0;;) {  // both ways; stop the decode process at its third reply
      pollfd p[2] = {{a, POLLIN, 0}, {b, POLLIN, 0}};
      if (poll(p, 2, 5000) <= 0) break;
      bool gone = false;
      for (int k = 0; k < 2 && !gone; ++k) {
        if (!(p[k].revents & (POLLIN | POLLHUP))) continue;
        const ssize_t n = recv(p[k].fd, buf, sizeof buf, 0);
        if (n > 0 && k == 1 && ++replies == 3) {  // after the handshake's two
          decode.kill_now(SIGSTOP);
          stopped = true;
        }
        gone = n <= 0 || send(p[1 - k].fd, buf, static_cast<size_t>(n), MSG_NOSIGNAL) != n;
      }
      if (gone) break;
    }
    close(a);
    while (!release) std::this_thread::sleep_for(milliseconds(10));
    close(b);
  });
  kvtier_peer_t* peer = nullptr;
  ASSERT_EQ(kvtier_endpoint_connect(prefill.ep, loopback_address(relay_port).c_str(), &peer),
            KVTIER_OK);
  EXPECT_EQ(move(peer, true, {1, 2}, {5, 6}, -1), std::vector<int>(2, KVTIER_ERR_TIMEOUT));
  kvtier_peer_close(peer);
  EXPECT_TRUE(stopped);
  decode.kill_now(SIGCONT);
  std::this_thread::sleep_for(milliseconds(300));  // it reads the COMMIT that waited
  EXPECT_TRUE(decode.dump() == pattern(kMha, kPeerSeed)) << "staged pages published after TIMEOUT";
  release = true;
  relay.join();
  close(ls);
}

// Finding: a HELLO header claiming 4 MiB cost 3.7 MiB per connection before any check. Now
// before its token is proved a connection costs a HELLO-sized buffer: 64 such headers leave the
// endpoint's process within a few MiB of where it was, and each connection is dropped.
TEST(P2pCheck, BeforeHelloNothingAPeerClaimsIsAllocated) {
  PeerProcess decode(kMha, kPeerSeed, kConfig);
  const std::string addr = decode.address();
  const uint16_t port = decode.port();
  const auto before = static_cast<long>(proc_status(decode.pid(), "VmRSS"));
  unsigned char head[17] = {0x4b,         0x56, 0x54, 0x52,
                            kWireVersion, 0,    32,   0};  // magic, version, P2P_HELLO
  const uint32_t claimed = 4u << 20;
  std::memcpy(head + 8, &claimed, 4);
  std::vector<int> fds;
  for (int i = 0; i < 64; ++i) {
    fds.push_back(loopback_connect(port));
    ASSERT_EQ(send(fds.back(), head, sizeof head, MSG_NOSIGNAL), 17);
  }
  std::this_thread::sleep_for(milliseconds(500));
  const auto after = static_cast<long>(proc_status(decode.pid(), "VmRSS"));
  EXPECT_LT(after - before, 16 * 1024) << "RSS " << before << " -> " << after << " KiB";
  for (int fd : fds) {
    pollfd p{fd, POLLIN, 0};
    EXPECT_EQ(poll(&p, 1, 1000), 1) << "a HELLO claiming 4 MiB is not dropped";
    close(fd);
  }
  Local local(kMha, kLocalSeed, kConfig);  // a real peer still gets through
  kvtier_peer_t* peer = nullptr;
  ASSERT_EQ(kvtier_endpoint_connect(local.ep, addr.c_str(), &peer), KVTIER_OK);
  EXPECT_EQ(move(peer, false, {1}, {2}, -1), std::vector<int>{KVTIER_OK});
  kvtier_peer_close(peer);
}

// Writes now land on COMMIT: a writer of the protocol before it would take the staged answer
// for done. Its HELLO (no version) is refused with a message that says why.
TEST(P2pCheck, APeerOfTheProtocolBeforeCommitIsRefused) {
  Local decode(kMha, kPeerSeed, kConfig);
  const int fd = loopback_connect(decode.port());
  unsigned char hello[16 + 4 + 6 + 8] = {0x4b, 0x56, 0x54, 0x52, kWireVersion, 0, 32, 0, 18};
  hello[16] = 6;
  std::memcpy(hello + 20, "secret", 6);  // the right token, any format, no version
  ASSERT_EQ(send(fd, hello, sizeof hello, MSG_NOSIGNAL), static_cast<ssize_t>(sizeof hello));
  std::string reply;
  char buf[2048];
  for (ssize_t n; (n = recv(fd, buf, sizeof buf, 0)) > 0;)
    reply.append(buf, static_cast<size_t>(n));
  close(fd);
  ASSERT_GE(reply.size(), 20u);
  EXPECT_EQ(static_cast<unsigned char>(reply[6]), 100 | 0x80);  // ERROR
  int32_t code = 0;
  std::memcpy(&code, reply.data() + 16, 4);
  EXPECT_EQ(code, KVTIER_ERR_DENIED);
  EXPECT_NE(reply.find("protocol 1"), std::string::npos) << reply.substr(20);
}

// The handshake proves the token both ways and the endpoint goes first: a rogue endpoint that
// answers the first HELLO without holding the token is refused (DENIED), and all it ever got
// from the peer is that first HELLO, with no token in it.
TEST(P2pCheck, AnEndpointWithoutTheTokenIsSentNothing) {
  Local prefill(kMha, kLocalSeed, kConfig);
  uint16_t rogue_port = 0;
  const int ls = listen_loopback(&rogue_port, 1);
  ASSERT_GE(ls, 0);
  std::string got;
  std::thread rogue([&] {
    const int a = accept(ls, nullptr, nullptr);
    char buf[4096];
    for (bool answered = false;;) {  // whatever comes, until the peer hangs up or goes quiet
      pollfd p{a, POLLIN, 0};
      if (poll(&p, 1, 1000) != 1) break;
      const ssize_t n = recv(a, buf, sizeof buf, 0);
      if (n <= 0) break;
      got.append(buf, static_cast<size_t>(n));
      if (answered || got.size() < 16) continue;
      // A challenge of the right shape: a nonce, an id and a proof, all guessed.
      unsigned char reply[16 + 72] = {0x4b, 0x56, 0x54, 0x52, 1, 0, 32 | 0x80, 0, 72};
      kvtier_test::fill_pattern(reply + 16, 72, 7);
      answered = send(a, reply, sizeof reply, MSG_NOSIGNAL) == sizeof reply;
    }
    close(a);
  });
  kvtier_peer_t* peer = nullptr;
  EXPECT_EQ(kvtier_endpoint_connect(prefill.ep, loopback_address(rogue_port).c_str(), &peer),
            KVTIER_ERR_DENIED)
      << kvtier_last_error();
  EXPECT_EQ(peer, nullptr);
  rogue.join();
  close(ls);
  EXPECT_EQ(got.find("secret"), std::string::npos) << "the token crossed the wire";
  EXPECT_EQ(got.size(), 16u + 32 + 8 + 4) << "more than the first HELLO";
}

// Finding: an endpoint on 0.0.0.0 with no token admitted anyone's writes, silently. Now it is
// refused unless KVTIER_P2P_ALLOW_NO_TOKEN says otherwise; loopback needs no token.
TEST(P2pCheck, NoTokenBeyondLoopbackIsRefusedUnlessAllowed) {
  std::vector<unsigned char> pool(kMha.pool_bytes());
  kvtier_pool_layout_t l = kMha.layout(pool.data());
  kvtier_endpoint_t* ep = nullptr;
  EXPECT_EQ(kvtier_endpoint_open("p2p_listen=0.0.0.0:0;p2p_transport=tcp", &l, &ep),
            KVTIER_ERR_CONFIG);
  EXPECT_EQ(ep, nullptr);
  EXPECT_NE(std::string(kvtier_last_error()).find("KVTIER_P2P_TOKEN"), std::string::npos)
      << kvtier_last_error();
  for (const char* ok :
       {"p2p_listen=0.0.0.0:0;p2p_transport=tcp;p2p_token=secret",
        "p2p_listen=0.0.0.0:0;p2p_transport=tcp;p2p_allow_no_token=on",
        "p2p_listen=127.0.0.1:0;p2p_transport=tcp", "p2p_listen=localhost:0;p2p_transport=tcp"}) {
    EXPECT_EQ(kvtier_endpoint_open(ok, &l, &ep), KVTIER_OK) << ok << ": " << kvtier_last_error();
    kvtier_endpoint_close(ep);
    ep = nullptr;
  }
  EXPECT_EQ(kvtier_endpoint_open("p2p_allow_no_token=maybe", &l, &ep), KVTIER_ERR_CONFIG);
}

// A relay that passes bytes both ways at about 3 MB/s: a transfer through it keeps moving but
// lasts far longer than the timeout. Its sockets' buffers are small, as a slow link's are in
// effect: the ends see their bytes taken (acknowledged) at the relay's pace.
class SlowRelay {
 public:
  explicit SlowRelay(uint16_t to_port) : to_port_(to_port) {
    uint16_t port = 0;
    ls_ = listen_loopback(&port, 4, kBuffers);
    EXPECT_GE(ls_, 0);
    address_ = loopback_address(port);
    thread_ = std::thread([this] { run(); });
  }
  ~SlowRelay() {
    stop_ = true;
    shutdown(ls_, SHUT_RDWR);
    thread_.join();
    close(ls_);
  }
  const std::string& address() const { return address_; }

 private:
  void run() {
    const int a = accept(ls_, nullptr, nullptr);
    if (a < 0) return;
    const int b = loopback_connect(to_port_, kBuffers);
    char buf[16384];
    while (!stop_) {
      pollfd p[2] = {{a, POLLIN, 0}, {b, POLLIN, 0}};
      if (poll(p, 2, 100) < 0) break;
      bool gone = false;
      for (int k = 0; k < 2; ++k) {
        if (!(p[k].revents & (POLLIN | POLLHUP))) continue;
        const ssize_t n = recv(p[k].fd, buf, sizeof buf, 0);
        gone |= n <= 0 || send(p[1 - k].fd, buf, static_cast<size_t>(n), MSG_NOSIGNAL) != n;
      }
      if (gone) break;
      std::this_thread::sleep_for(milliseconds(5));
    }
    close(a);
    close(b);
  }
  static constexpr int kBuffers = 32 << 10;
  uint16_t to_port_;
  int ls_ = -1;
  std::string address_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

// Finding: KVTIER_P2P_TIMEOUT_MS bounded the whole transfer, so a healthy one longer than it
// failed. Now it bounds silence: 4 MiB each way at ~3 MB/s (over a second) with a 300 ms
// timeout moves, byte for byte.
TEST(P2pFailure, TheTimeoutBoundsSilenceNotALongTransfer) {
  const P2pShape s{KVTIER_POOL_MHA, KVTIER_LAYOUT_PAGE_FIRST, 16, 32, 8, 128, 0, 2, 64};
  const char* cfg = "p2p_token=secret;p2p_timeout_ms=300;p2p_transport=tcp";
  PeerProcess decode(s, kPeerSeed, cfg);
  Local prefill(s, kLocalSeed, cfg);
  SlowRelay relay(decode.port());
  kvtier_peer_t* peer = nullptr;
  ASSERT_EQ(kvtier_endpoint_connect(prefill.ep, relay.address().c_str(), &peer), KVTIER_OK)
      << kvtier_last_error();
  const auto t0 = Clock::now();
  EXPECT_EQ(move(peer, true, {0, 1}, {2, 3}, -1), std::vector<int>(2, KVTIER_OK))
      << kvtier_last_error();
  EXPECT_EQ(move(peer, false, {0, 1}, {0, 1}, -1), std::vector<int>(2, KVTIER_OK))
      << kvtier_last_error();
  EXPECT_GT(Clock::now() - t0, milliseconds(900)) << "too fast to test the timeout";
  const std::vector<unsigned char> theirs = pattern(s, kPeerSeed), mine = pattern(s, kLocalSeed);
  const size_t half = s.pool_bytes() / 2, run = half / (s.S / s.P);
  const auto d = decode.dump();
  for (size_t side : {size_t{0}, half}) {
    EXPECT_EQ(std::memcmp(&d[side + 2 * run], &mine[side], 2 * run), 0);
    EXPECT_EQ(std::memcmp(&prefill.pool[side], &theirs[side], 2 * run), 0);
  }
  kvtier_peer_close(peer);
}

// A relay that passes the HELLO handshake (two HELLOs and their replies), then only the first
// `cut` bytes the connecting side sends after it, and then hangs up on both: a writer that
// stops mid-page.
class CuttingRelay {
 public:
  CuttingRelay(uint16_t to_port, size_t cut) : to_port_(to_port), cut_(cut) {
    uint16_t port = 0;
    ls_ = listen_loopback(&port, 4);
    EXPECT_GE(ls_, 0);
    address_ = loopback_address(port);
    thread_ = std::thread([this] { run(); });
  }
  ~CuttingRelay() {
    thread_.join();
    close(ls_);
  }
  const std::string& address() const { return address_; }

 private:
  void run() {
    const int a = accept(ls_, nullptr, nullptr);
    const int b = loopback_connect(to_port_);
    char buf[4096];
    int replies = 0;  // the handshake's are two
    size_t passed = 0;
    while (passed < cut_) {
      pollfd p[2] = {{a, POLLIN, 0}, {b, POLLIN, 0}};
      if (poll(p, 2, 5000) <= 0) break;
      if (p[1].revents & POLLIN) {  // the endpoint's HELLO replies
        const ssize_t n = recv(b, buf, sizeof buf, 0);
        if (n <= 0 || send(a, buf, static_cast<size_t>(n), MSG_NOSIGNAL) != n) break;
        ++replies;
      }
      if (p[0].revents & POLLIN) {
        const bool hello = replies < 2;
        const size_t room = hello ? sizeof buf : std::min(sizeof buf, cut_ - passed);
        const ssize_t n = recv(a, buf, room, 0);
        if (n <= 0 || send(b, buf, static_cast<size_t>(n), MSG_NOSIGNAL) != n) break;
        if (!hello) passed += static_cast<size_t>(n);
      }
    }
    shutdown(a, SHUT_RDWR);
    shutdown(b, SHUT_RDWR);
    close(a);
    close(b);
  }
  uint16_t to_port_;
  size_t cut_;
  int ls_ = -1;
  std::string address_;
  std::thread thread_;
};

std::vector<uint64_t> landed(kvtier_endpoint_t* ep, std::vector<int64_t> pages) {
  std::vector<uint64_t> out(pages.size(), 99);
  EXPECT_EQ(kvtier_endpoint_layers_landed(ep, pages.data(), pages.size(), out.data()), KVTIER_OK)
      << kvtier_last_error();
  return out;
}

// Finding: a writer that stopped mid-page left a torn page in the pool and the receiving side
// was never told. Now the page keeps its old bytes, and the receiving side can poll which pages
// arrived whole: a page's count of landed layers rises by layer_num for a whole page, by 1 for
// one layer, and not at all for a write cut short.
TEST(P2pFailure, AWriteCutMidPageLeavesNoTornPageAndTheReceiverSeesWhatLanded) {
  Local decode(kMha, kPeerSeed, kConfig), prefill(kMha, kLocalSeed, kConfig);
  const uint16_t port = decode.port();
  const size_t page = kMha.pool_bytes() / (kMha.S / kMha.P);
  EXPECT_EQ(landed(decode.ep, {5, 6}), (std::vector<uint64_t>{0, 0}));
  {
    // The write's header (16) and request (4 + 4 + 8), then half of the page.
    CuttingRelay relay(port, 32 + page / 2);
    kvtier_peer_t* cut = nullptr;
    ASSERT_EQ(kvtier_endpoint_connect(prefill.ep, relay.address().c_str(), &cut), KVTIER_OK)
        << kvtier_last_error();
    const int code = move(cut, true, {1}, {5}, -1)[0];
    EXPECT_TRUE(code == KVTIER_ERR_UNAVAILABLE || code == KVTIER_ERR_TIMEOUT) << code;
    kvtier_peer_close(cut);
  }
  std::this_thread::sleep_for(milliseconds(200));
  EXPECT_TRUE(decode.pool == pattern(kMha, kPeerSeed)) << "a torn page in the pool";
  EXPECT_EQ(landed(decode.ep, {5, 6}), (std::vector<uint64_t>{0, 0}));
  kvtier_peer_t* peer = nullptr;
  ASSERT_EQ(
      kvtier_endpoint_connect(prefill.ep, loopback_address(port).c_str(), &peer),
      KVTIER_OK);
  EXPECT_EQ(move(peer, true, {1}, {5}, -1), std::vector<int>{KVTIER_OK});
  EXPECT_EQ(move(peer, true, {2}, {6}, 0), std::vector<int>{KVTIER_OK});
  EXPECT_EQ(landed(decode.ep, {5, 6}), (std::vector<uint64_t>{kMha.L, 1}));
  const size_t half = kMha.pool_bytes() / 2, run = page / 2;  // page_first: K run, V run
  EXPECT_EQ(std::memcmp(&decode.pool[5 * run], &prefill.pool[1 * run], run), 0);
  EXPECT_EQ(std::memcmp(&decode.pool[half + 5 * run], &prefill.pool[half + 1 * run], run), 0);
  int64_t outside = static_cast<int64_t>(kMha.S / kMha.P);
  uint64_t n = 0;
  EXPECT_EQ(kvtier_endpoint_layers_landed(decode.ep, &outside, 1, &n), KVTIER_ERR_OUT_OF_RANGE);
  EXPECT_EQ(kvtier_endpoint_layers_landed(decode.ep, nullptr, 1, &n), KVTIER_ERR_INVALID_ARG);
  kvtier_peer_close(peer);
}

}  // namespace
}  // namespace kvtier_test
