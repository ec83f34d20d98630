// The remote tier against real kvtier-server processes on loopback (TCP): a dead or hung
// server, tokens, malformed frames, replicas, and prefill-to-decode between two processes.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <kvtier/kvtier.h>
#include <netinet/in.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <sys/mount.h>
#include <sched.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <mutex>
#include <set>
#include <thread>
#include <tuple>

#include "tests/common/loopback.h"
#include "tests/common/raw_client.h"
#include "tests/common/server_process.h"
#include "tests/common/store.h"
#include "tests/common/tcp_bytes.h"
#include "tests/common/test_util.h"

namespace {

using Clock = std::chrono::steady_clock;
using kvtier_test::Ctl;
using kvtier_test::kWireVersion;
using kvtier_test::raw_connect;
using kvtier_test::ServerProcess;
using kvtier_test::Traffic;
using kvtier_test::traffic_to;

using kvtier_test::open_store;

struct Batch {
  std::vector<std::string> keys;
  std::vector<const char*> ck;
  std::vector<std::vector<unsigned char>> vals;
  std::vector<const void*> ptrs;
  std::vector<size_t> sizes;
  Batch(const std::string& prefix, size_t n, size_t size) {
    for (size_t i = 0; i < n; ++i) {
      keys.push_back(kvtier_test::make_key(prefix, i));
      vals.push_back(kvtier_test::random_bytes(size));
    }
    for (size_t i = 0; i < n; ++i) {
      ck.push_back(keys[i].c_str());
      ptrs.push_back(vals[i].data());
      sizes.push_back(size);
    }
  }
  std::vector<int> set(kvtier_store_t* s) {
    std::vector<int> r(keys.size());
    EXPECT_EQ(kvtier_batch_set(s, ck.data(), ck.size(), ptrs.data(), sizes.data(), r.data()),
              KVTIER_OK);
    return r;
  }
  // Per key: 1 read back exactly, 0 miss, negative code; wrong bytes fail the test.
  std::vector<int> get(kvtier_store_t* s) {
    std::vector<std::vector<unsigned char>> out(keys.size(), std::vector<unsigned char>(sizes[0]));
    std::vector<void*> bufs;
    for (auto& o : out) bufs.push_back(o.data());
    std::vector<int64_t> r(keys.size());
    EXPECT_EQ(kvtier_batch_get(s, ck.data(), ck.size(), bufs.data(), sizes.data(), r.data()),
              KVTIER_OK);
    std::vector<int> res;
    for (size_t i = 0; i < keys.size(); ++i) {
      if (r[i] == static_cast<int64_t>(sizes[i])) {
        EXPECT_EQ(out[i], vals[i]) << "WRONG BYTES for key " << i;
        res.push_back(1);
      } else {
        res.push_back(r[i] == KVTIER_ERR_NOT_FOUND ? 0 : static_cast<int>(r[i]));
      }
    }
    return res;
  }
};

// Polls until every key of b reads back exactly (a server back up, probed back into use), for
// up to `seconds`.
bool served_again(Batch& b, kvtier_store_t* s, double seconds = 2) {
  const auto until = Clock::now() + std::chrono::duration<double>(seconds);
  while (Clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    auto r = b.get(s);
    if (std::all_of(r.begin(), r.end(), [](int x) { return x == 1; })) return true;
  }
  return false;
}

TEST(Remote, RoundTripAndStats) {
  ServerProcess srv;
  kvtier_store_t* s = open_store("tiers=remote;remote_servers=" + srv.address());
  Batch b("rt", 20, 70000);
  for (int r : b.set(s)) EXPECT_EQ(r, KVTIER_OK);
  for (int r : b.get(s)) EXPECT_EQ(r, 1);
  size_t hits = 0;
  ASSERT_EQ(kvtier_batch_exists(s, b.ck.data(), b.ck.size(), &hits), KVTIER_OK);
  EXPECT_EQ(hits, 20u);
  char* js = nullptr;
  ASSERT_EQ(kvtier_stats_json(s, &js), KVTIER_OK);
  EXPECT_NE(std::string(js).find("\"name\":\"remote\",\"keys\":20"), std::string::npos) << js;
  kvtier_free(js);
  kvtier_close(s);
}

TEST(Remote, DeadServerFailsWithinTheTimeoutAndRecovers) {
  ServerProcess srv;
  const std::string cfg = "tiers=remote;remote_timeout_ms=500;remote_servers=" + srv.address();
  kvtier_store_t* s = open_store(cfg);
  Batch b("dead", 16, 256 * 1024);
  // Keep writing while the server is killed mid-batch.
  std::atomic<bool> stop{false};
  std::atomic<int> failures{0};
  std::atomic<long long> worst_ms{0};
  std::thread writer([&] {
    while (!stop) {
      auto t0 = Clock::now();
      auto r = b.set(s);
      long long ms =
          std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0).count();
      if (r[0] != KVTIER_OK) {
        ++failures;
        worst_ms = std::max(worst_ms.load(), ms);
      }
      kvtier_clear(s);
    }
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  srv.kill_now(SIGKILL);
  std::this_thread::sleep_for(std::chrono::milliseconds(700));
  stop = true;
  writer.join();
  EXPECT_GT(failures.load(), 0) << "writes kept succeeding with the server dead";
  EXPECT_LE(worst_ms.load(), 500 + 300) << "a failing call took longer than the timeout";
  // Reads of a dead server: an error per key within the timeout, never wrong bytes.
  auto t0 = Clock::now();
  for (int r : b.get(s)) EXPECT_EQ(r, KVTIER_ERR_UNAVAILABLE);
  EXPECT_LE(Clock::now() - t0, std::chrono::milliseconds(800));
  // The server comes back on the same port: the client reconnects by itself.
  ASSERT_TRUE(srv.restart());
  bool back = false;
  for (int i = 0; i < 40 && !back; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    back = b.set(s)[0] == KVTIER_OK;
  }
  ASSERT_TRUE(back) << "the client did not reconnect";
  for (int r : b.get(s)) EXPECT_EQ(r, 1);
  kvtier_close(s);
}

TEST(Remote, HungServerTimesOut) {
  ServerProcess srv;
  kvtier_store_t* s =
      open_store("tiers=remote;remote_timeout_ms=300;remote_servers=" + srv.address());
  Batch b("hung", 4, 4096);
  for (int r : b.set(s)) ASSERT_EQ(r, KVTIER_OK);
  srv.kill_now(SIGSTOP);
  auto t0 = Clock::now();
  for (int r : b.get(s)) EXPECT_EQ(r, KVTIER_ERR_TIMEOUT);
  const auto took = Clock::now() - t0;
  srv.kill_now(SIGCONT);
  EXPECT_LE(took, std::chrono::milliseconds(700));
  EXPECT_GE(took, std::chrono::milliseconds(250));
  // Down now: served again once it answers a probe (the first after 250 ms).
  EXPECT_TRUE(served_again(b, s)) << "not served again once the server runs";
  kvtier_close(s);
}

// One of three servers stopped (SIGSTOP): the first call that touches it pays one timeout; from
// then on its keys fail at once with UNAVAILABLE (no call waits for it again until it answers a
// probe), keys on the others keep their quiet latency, and mixed batches are not held up.
TEST(Remote, AStoppedMemberCostsOneTimeoutThenFailsFast) {
  ServerProcess a, b, c;
  constexpr int kTimeoutMs = 600;
  kvtier_store_t* s = open_store("tiers=remote;remote_timeout_ms=" + std::to_string(kTimeoutMs) +
                                 ";remote_servers=" + a.address() + "," + b.address() + "," +
                                 c.address());
  Batch batch("breaker", 48, 4096);  // spread over the three by hashing
  for (int r : batch.set(s)) ASSERT_EQ(r, KVTIER_OK);
  b.kill_now(SIGSTOP);
  auto t0 = Clock::now();
  auto first = batch.get(s);
  const auto first_took = Clock::now() - t0;
  EXPECT_LE(first_took, std::chrono::milliseconds(kTimeoutMs + 300));
  size_t down = 0, served = 0;
  for (int r : first) {
    if (r == 1) ++served;
    else if (r == KVTIER_ERR_TIMEOUT || r == KVTIER_ERR_UNAVAILABLE) ++down;
    else ADD_FAILURE() << "code " << r;
  }
  ASSERT_GT(down, 0u) << "no key was on the stopped server: the test checked nothing";
  ASSERT_GT(served, 0u);
  std::vector<long long> ms;
  for (int call = 0; call < 20; ++call) {  // 20 more mixed batches
    auto t1 = Clock::now();
    auto again = batch.get(s);
    ms.push_back(
        std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t1).count());
    for (size_t i = 0; i < again.size(); ++i) {
      if (first[i] == 1) EXPECT_EQ(again[i], 1) << "a key on a healthy server, call " << call;
      else EXPECT_TRUE(again[i] == KVTIER_ERR_UNAVAILABLE || again[i] == KVTIER_ERR_TIMEOUT);
    }
  }
  // Only the calls that probe the stopped server (one per breaker wait: 250 ms, 500 ms, ...)
  // may wait; the median mixed batch is as quick as one without it.
  std::sort(ms.begin(), ms.end());
  EXPECT_LT(ms[ms.size() / 2], 60) << "the median mixed batch waited for the stopped server";
  EXPECT_LT(ms.back(), kTimeoutMs + 300);
  b.kill_now(SIGCONT);
  EXPECT_TRUE(served_again(batch, s, 5)) << "the resumed server was not probed back into use";
  kvtier_close(s);
}

// A member named by host name whose resolver never answers: name resolution is bounded by the
// call's deadline like the rest of it (getaddrinfo alone would wait its own retries, 10 s), and
// the next calls fail fast. The child process gets a resolv.conf of its own (a mount namespace)
// that points at a UDP socket that reads nothing.
TEST(Remote, ASilentResolverCostsOneDeadlineNotItsOwnRetries) {
  const std::string dir = kvtier_test::test_dir() + "/resolver";
  std::filesystem::create_directories(dir);
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    if (unshare(CLONE_NEWNS) != 0 || mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr))
      _exit(77);  // no mount namespace here (not root): skipped below
    const int dns = socket(AF_INET, SOCK_DGRAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(53);
    a.sin_addr.s_addr = htonl(0x7f000035);  // 127.0.0.53
    if (dns < 0 || bind(dns, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) _exit(78);
    const std::string conf = dir + "/resolv.conf";
    FILE* f = fopen(conf.c_str(), "w");
    if (!f) _exit(79);
    fputs("nameserver 127.0.0.53\noptions timeout:5 attempts:2\n", f);
    fclose(f);
    if (mount(conf.c_str(), "/etc/resolv.conf", nullptr, MS_BIND, nullptr) != 0) _exit(77);
    kvtier_store_t* s = nullptr;
    if (kvtier_open("tiers=remote;remote_timeout_ms=500;remote_servers=kv-member.example:7471",
                    &s) != KVTIER_OK)
      _exit(80);
    const char* key = "a-key-on-an-unresolvable-member";
    std::vector<unsigned char> buf(64);
    void* b = buf.data();
    size_t cap = buf.size();
    for (int call = 0; call < 4; ++call) {
      int64_t r = 0;
      const auto t0 = Clock::now();
      kvtier_batch_get(s, &key, 1, &b, &cap, &r);
      const auto ms =
          std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0).count();
      if (r != KVTIER_ERR_TIMEOUT && r != KVTIER_ERR_UNAVAILABLE) _exit(81);
      if (ms > (call == 0 ? 1200 : 100)) _exit(90 + call);  // one deadline, then fast
    }
    kvtier_close(s);
    _exit(0);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  if (WEXITSTATUS(status) == 77) GTEST_SKIP() << "no mount namespace for a resolv.conf of its own";
  EXPECT_EQ(WEXITSTATUS(status), 0)
      << "80: open failed; 81: wrong code; 90: the first call took over one deadline; 91-93: a "
         "later call waited again";
}

// Calls that are not held by a probe: with the server stopped, the median call of a batch that
// touches it is fast once the breaker is open.
TEST(Remote, CallsToADownServerDoNotEachWaitTheTimeout) {
  ServerProcess srv;
  constexpr int kTimeoutMs = 500;
  kvtier_store_t* s = open_store("tiers=remote;remote_timeout_ms=" + std::to_string(kTimeoutMs) +
                                 ";remote_servers=" + srv.address());
  Batch b("fast-fail", 2, 4096);
  for (int r : b.set(s)) ASSERT_EQ(r, KVTIER_OK);
  srv.kill_now(SIGSTOP);
  std::vector<long long> ms;
  for (int call = 0; call < 12; ++call) {
    auto t0 = Clock::now();
    for (int r : b.get(s)) EXPECT_TRUE(r == KVTIER_ERR_TIMEOUT || r == KVTIER_ERR_UNAVAILABLE);
    ms.push_back(
        std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0).count());
  }
  srv.kill_now(SIGCONT);
  std::sort(ms.begin(), ms.end());
  EXPECT_LT(ms[ms.size() / 2], 50) << "the median call to a stopped server waited";
  kvtier_close(s);
}

// A warm pool whose server was restarted: the first call on each dead connection is retried
// once on a fresh one (it failed before any reply), so no call fails while the server is up.
TEST(Remote, RestartedServerCostsNoFailedCall) {
  ServerProcess srv;
  kvtier_store_t* s =
      open_store("tiers=remote;remote_timeout_ms=1000;remote_servers=" + srv.address());
  Batch b("warm", 4, 8192);
  for (int i = 0; i < 8; ++i)  // calls take the pool's connections in turn: all four are warm
    for (int r : b.set(s)) ASSERT_EQ(r, KVTIER_OK);
  for (int round = 0; round < 2; ++round) {
    srv.kill_now(SIGKILL);
    ASSERT_TRUE(srv.restart());
    for (int i = 0; i < 8; ++i) {
      for (int r : b.set(s)) EXPECT_EQ(r, KVTIER_OK) << "round " << round << " call " << i;
      for (int r : b.get(s)) EXPECT_EQ(r, 1) << "round " << round << " call " << i;
    }
  }
  kvtier_close(s);
}

// More callers than pooled connections against a hung server: each call fails within the
// timeout, the wait for a connection included.
TEST(Remote, HungServerFailsEveryCallWithinTheTimeout) {
  ServerProcess srv;
  constexpr int kTimeoutMs = 400;
  kvtier_store_t* s = open_store("tiers=remote;remote_timeout_ms=" + std::to_string(kTimeoutMs) +
                                 ";remote_servers=" + srv.address());
  Batch b("hung-many", 2, 4096);
  for (int r : b.set(s)) ASSERT_EQ(r, KVTIER_OK);
  srv.kill_now(SIGSTOP);
  for (int threads : {4, 16}) {
    std::atomic<long long> worst_ms{0};
    std::atomic<int> bad{0};
    std::vector<std::thread> ts;
    for (int t = 0; t < threads; ++t)
      ts.emplace_back([&] {
        for (int call = 0; call < 3; ++call) {
          auto t0 = Clock::now();
          for (int r : b.get(s))
            if (r != KVTIER_ERR_TIMEOUT && r != KVTIER_ERR_UNAVAILABLE) ++bad;
          const long long ms =
              std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0).count();
          long long w = worst_ms.load();
          while (ms > w && !worst_ms.compare_exchange_weak(w, ms)) {
          }
        }
      });
    for (auto& t : ts) t.join();
    EXPECT_EQ(bad.load(), 0);
    EXPECT_LE(worst_ms.load(), kTimeoutMs + 250) << threads << " threads: a call took longer";
  }
  srv.kill_now(SIGCONT);
  EXPECT_TRUE(served_again(b, s)) << "not served again once the server runs";
  kvtier_close(s);
}

// A value larger than a server takes is refused by the client, at once, with its own code;
// the connection and the other keys are unharmed.
TEST(Remote, ValueLargerThanAServerTakesIsRefusedByTheClient) {
  ServerProcess srv;
  kvtier_store_t* s = open_store("tiers=remote;remote_servers=" + srv.address());
  const size_t huge = size_t{3} << 29;  // 1.5 GiB, mapped but never touched past its ends
  void* mem = mmap(nullptr, huge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(mem, MAP_FAILED);
  kvtier_test::fill_random(mem, 4096);
  kvtier_test::fill_random(static_cast<char*>(mem) + huge - 4096, 4096);
  Batch b("beside-huge", 1, 10000);
  const char* keys[] = {"huge", b.ck[0]};
  const void* vals[] = {mem, b.ptrs[0]};
  size_t sizes[] = {huge, b.sizes[0]};
  int res[2] = {99, 99};
  auto t0 = Clock::now();
  ASSERT_EQ(kvtier_batch_set(s, keys, 2, vals, sizes, res), KVTIER_OK);
  EXPECT_LT(Clock::now() - t0, std::chrono::milliseconds(500)) << "the value was sent";
  EXPECT_EQ(res[0], KVTIER_ERR_NO_SPACE) << kvtier_error_name(res[0]);
  EXPECT_EQ(res[1], KVTIER_OK) << kvtier_error_name(res[1]);
  munmap(mem, huge);
  for (int r : b.get(s)) EXPECT_EQ(r, 1);
  size_t hits = 99;
  ASSERT_EQ(kvtier_batch_exists(s, keys, 1, &hits), KVTIER_OK);
  EXPECT_EQ(hits, 0u);
  kvtier_close(s);
}

// The server's token comes from its environment (KVTIER_REMOTE_TOKEN): its command line, which
// every local user can read in /proc/PID/cmdline, does not carry it, and it still holds.
TEST(Remote, TokenIsRequired) {
  const std::string secret = "s3cret" + std::to_string(getpid()) + std::to_string(rand());
  ServerProcess srv("64MiB", secret);
  {
    std::ifstream f("/proc/" + std::to_string(srv.pid()) + "/cmdline", std::ios::binary);
    const std::string cmdline{std::istreambuf_iterator<char>(f), {}};
    ASSERT_FALSE(cmdline.empty());
    EXPECT_EQ(cmdline.find(secret), std::string::npos) << "the token is on the command line";
  }
  Batch b("tok", 2, 1000);
  for (const std::string& token : {std::string(), std::string("wrong"), secret + "x"}) {
    kvtier_store_t* s = open_store("tiers=remote;remote_token=" + token +
                                   ";remote_servers=" + srv.address());
    for (int r : b.set(s)) EXPECT_EQ(r, KVTIER_ERR_DENIED) << "token '" << token << "'";
    kvtier_close(s);
  }
  kvtier_store_t* s =
      open_store("tiers=remote;remote_token=" + secret + ";remote_servers=" + srv.address());
  for (int r : b.set(s)) EXPECT_EQ(r, KVTIER_OK);
  for (int r : b.get(s)) EXPECT_EQ(r, 1);
  kvtier_close(s);
}

// Sends bytes; returns what the server answers before it closes (the type of its reply).
int send_raw(uint16_t port, const std::vector<uint8_t>& bytes, bool hello_first) {
  int fd = raw_connect(port);
  if (hello_first) {
    EXPECT_EQ(kvtier_test::raw_hello(fd, 0).first, 1 | 0x80);
  }
  send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
  shutdown(fd, SHUT_WR);
  uint8_t r[16] = {};
  ssize_t n = recv(fd, r, sizeof r, MSG_WAITALL);
  close(fd);
  return n == 16 ? r[6] | (r[7] << 8) : -1;
}

TEST(Remote, MalformedFramesAreRejectedWithoutACrash) {
  ServerProcess srv;
  const int kError = 100 | 0x80;
  std::vector<uint8_t> garbage(64, 0xAB);
  EXPECT_EQ(send_raw(srv.port(), garbage, false), kError);
  // Valid magic, oversized payload length.
  std::vector<uint8_t> big = {0x4b, 0x56, 0x54, 0x52, kWireVersion, 0, 4, 0, 0xff, 0xff, 0xff, 0x7f,
                              0,    0,    0,    0};
  EXPECT_EQ(send_raw(srv.port(), big, true), kError);
  // A GET whose count claims more ids than the payload holds.
  std::vector<uint8_t> lie = {0x4b, 0x56, 0x54, 0x52, kWireVersion, 0,    4, 0, 8, 0, 0, 0,
                              0,    0,    0,    0,    0xff,         0xff, 0, 0, 1, 2, 3, 4};
  EXPECT_EQ(send_raw(srv.port(), lie, true), kError);
  // A request before HELLO.
  std::vector<uint8_t> early = {0x4b, 0x56, 0x54, 0x52, kWireVersion, 0, 6, 0, 0, 0, 0, 0,
                                0,    0,    0,    0};
  EXPECT_EQ(send_raw(srv.port(), early, false), kError);
  // A frame cut short, then the connection closed.
  std::vector<uint8_t> cut = {0x4b, 0x56, 0x54, 0x52, kWireVersion, 0, 3, 0, 64, 0, 0, 0, 0, 0,
                              0,    0,    1,    0};
  EXPECT_EQ(send_raw(srv.port(), cut, true), -1);
  // A PUT that declares bytes it never sends: the slot is released, nothing becomes visible.
  std::vector<uint8_t> put = {
      0x4b, 0x56, 0x54, 0x52, kWireVersion, 0, 3, 0, 36, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0};
  for (int i = 0; i < 16; ++i) put.push_back(static_cast<uint8_t>(i));  // id
  for (uint64_t v : {uint64_t{8192}, uint64_t{0}})
    for (int k = 0; k < 8; ++k) put.push_back(static_cast<uint8_t>(v >> (8 * k)));
  put.resize(put.size() + 100, 0x11);  // 100 of the 8192 bytes
  EXPECT_EQ(send_raw(srv.port(), put, true), -1);
  // The server is alive and well.
  kvtier_store_t* s = open_store("tiers=remote;remote_servers=" + srv.address());
  Batch b("after", 3, 5000);
  for (int r : b.set(s)) EXPECT_EQ(r, KVTIER_OK);
  for (int r : b.get(s)) EXPECT_EQ(r, 1);
  char* js = nullptr;
  ASSERT_EQ(kvtier_stats_json(s, &js), KVTIER_OK);
  EXPECT_NE(std::string(js).find("\"keys\":3,"), std::string::npos)
      << "the half-sent PUT must not be visible: " << js;
  kvtier_free(js);
  kvtier_close(s);
}

// A client of the wire version before (its HELLO sent the token itself) is told, in its own
// version so that it can read it, that the versions differ: not DENIED for a token, not a
// reply it cannot parse.
TEST(Remote, AClientOfAnotherWireVersionIsToldSoInItsVersion) {
  ServerProcess srv("64MiB", "s3cret");
  const int fd = kvtier_test::raw_connect(srv.port());
  std::vector<uint8_t> hello = {0x4b, 0x56, 0x54, 0x52, kWireVersion - 1, 0, 1, 0, 10, 0, 0, 0,
                                0,    0,    0,    0};
  hello.push_back(6);
  hello.insert(hello.end(), {0, 0, 0, 's', '3', 'c', 'r', 'e', 't'});  // a token, as v1 sent it
  ASSERT_EQ(send(fd, hello.data(), hello.size(), MSG_NOSIGNAL), static_cast<ssize_t>(hello.size()));
  uint8_t h[16];
  ASSERT_EQ(kvtier_test::recv_all(fd, h, 16), 16);
  EXPECT_EQ(h[4] | (h[5] << 8), kWireVersion - 1) << "the refusal is not in the client's version";
  EXPECT_EQ(h[6] | (h[7] << 8), 100 | 0x80);  // ERROR
  uint32_t len = 0;
  std::memcpy(&len, h + 8, 4);
  ASSERT_GE(len, 4u);
  ASSERT_LE(len, 4u + 1024);
  std::vector<char> reply(len);
  ASSERT_EQ(kvtier_test::recv_all(fd, reply.data(), len), static_cast<ssize_t>(len));
  close(fd);
  int32_t code = 0;
  std::memcpy(&code, reply.data(), 4);
  EXPECT_EQ(code, KVTIER_ERR_DENIED);
  EXPECT_EQ(std::string(reply.begin() + 4, reply.end()),
            "the client speaks wire version " + std::to_string(kWireVersion - 1) +
                ", this server " + std::to_string(kWireVersion));
}

TEST(Remote, ReplicasServeReadsWhenAServerDies) {
  ServerProcess a, b;
  const std::string servers = a.address() + "," + b.address();
  kvtier_store_t* s =
      open_store("tiers=remote;remote_replicas=2;remote_timeout_ms=500;remote_servers=" + servers);
  Batch pages("replica", 40, 8192);
  for (int r : pages.set(s)) ASSERT_EQ(r, KVTIER_OK);
  a.kill_now(SIGKILL);
  for (int r : pages.get(s)) EXPECT_EQ(r, 1);
  kvtier_close(s);
  // Without replicas the keys spread over both servers.
  ServerProcess c, d;
  s = open_store("tiers=remote;remote_servers=" + c.address() + "," + d.address());
  for (int r : pages.set(s)) ASSERT_EQ(r, KVTIER_OK);
  kvtier_close(s);
  for (ServerProcess* one : {&c, &d}) {
    s = open_store("tiers=remote;remote_servers=" + one->address());
    size_t present = 0;
    for (int r : pages.get(s)) present += r == 1;
    EXPECT_GT(present, 5u);
    EXPECT_LT(present, 35u);
    kvtier_close(s);
  }
}

// Finding 26.12 with a static list: one server listed under three spellings counted as three
// members, so with replicas = 2 most pages had both copies on it. Members are told apart by the
// id each proves in its HELLO: the three are one, every page has a copy on the second server,
// and killing the first loses none.
TEST(Remote, OneServerListedUnderSeveralSpellingsIsOneMember) {
  ServerProcess a, b;
  if (kvtier_test::test_host() != "127.0.0.1") GTEST_SKIP() << "the spellings are of loopback";
  const std::string port = std::to_string(a.port());
  const std::string servers =
      "127.0.0.1:" + port + ",localhost:" + port + ",127.1:" + port + "," + b.address();
  kvtier_store_t* s =
      open_store("tiers=remote;remote_replicas=2;remote_timeout_ms=500;remote_servers=" + servers);
  Batch pages("aliases", 64, 8192);
  for (int r : pages.set(s)) ASSERT_EQ(r, KVTIER_OK);
  a.kill_now(SIGKILL);
  size_t lost = 0;
  for (int r : pages.get(s)) lost += r != 1;
  EXPECT_EQ(lost, 0u) << "pages whose copies were all on the one server under its other names";
  kvtier_close(s);
}

TEST(Remote, NamespacesOnOneServerAreSeparate) {
  ServerProcess srv;
  kvtier_store_t* a = open_store("tiers=remote;namespace=model-a;remote_servers=" + srv.address());
  kvtier_store_t* b = open_store("tiers=remote;namespace=model-b;remote_servers=" + srv.address());
  Batch p("ns", 5, 3000);
  for (int r : p.set(a)) ASSERT_EQ(r, KVTIER_OK);
  for (int r : p.get(b)) EXPECT_EQ(r, 0) << "another namespace must not see these keys";
  for (int r : p.set(b)) ASSERT_EQ(r, KVTIER_OK);
  ASSERT_EQ(kvtier_clear(a), KVTIER_OK);  // clears model-a only
  for (int r : p.get(a)) EXPECT_EQ(r, 0);
  for (int r : p.get(b)) EXPECT_EQ(r, 1);
  kvtier_close(a);
  kvtier_close(b);
}

// The RDMA control plane (ALLOC / COMMIT / LOOKUP / RELEASE) over raw frames: its semantics
// hold over TCP whether or not a device moves the bytes. A fresh slot holds zeros, so a COMMIT
// promising the checksum of zeros is a COMMIT of what the slot holds.
TEST(RemoteControlPlane, AllocatedSlotIsInvisibleUntilCommit) {
  ServerProcess srv("64MiB");
  Ctl c(srv.port());
  auto [code, lease_w] = c.alloc(7, 100000);
  ASSERT_EQ(code, KVTIER_OK);
  EXPECT_FALSE(c.exists(7)) << "a reserved slot must not be visible";
  EXPECT_EQ(std::get<0>(c.lookup(7)), KVTIER_ERR_NOT_FOUND);
  EXPECT_GT(c.stat(1), 0u) << "the slot is reserved";
  EXPECT_EQ(c.commit(lease_w, true), KVTIER_OK);
  EXPECT_TRUE(c.exists(7));
  auto [lc, len, lease] = c.lookup(7);
  EXPECT_EQ(lc, KVTIER_OK);
  EXPECT_EQ(len, 100000u);
  // A second ALLOC of a stored key says it is present.
  EXPECT_EQ(c.alloc(7, 100000).first, 1);
  // A committed slot cannot be committed again; an aborted one goes back.
  EXPECT_EQ(c.commit(lease_w, true), KVTIER_ERR_TIMEOUT);
  auto [code2, lease2] = c.alloc(8, 5000);
  ASSERT_EQ(code2, KVTIER_OK);
  EXPECT_EQ(c.commit(lease2, false), KVTIER_OK);
  EXPECT_FALSE(c.exists(8));
  // Release the read lease; the page stays.
  std::vector<uint8_t> rel;
  Ctl::put(rel, 1, 4);
  Ctl::put(rel, lease, 8);
  EXPECT_EQ(c.call(12, rel).first, 12 | 0x80);
  EXPECT_TRUE(c.exists(7));
  EXPECT_EQ(c.stat(0), 1u);
}

TEST(RemoteControlPlane, DeadClientMidPutLeavesNothing) {
  ServerProcess srv("64MiB");
  {
    Ctl c(srv.port());
    ASSERT_EQ(c.alloc(9, 1 << 20).first, KVTIER_OK);
    ASSERT_EQ(c.alloc(10, 1 << 20).first, KVTIER_OK);
  }  // the connection drops without COMMIT
  Ctl d(srv.port());
  const auto until = Clock::now() + std::chrono::seconds(5);
  while (d.stat(1) != 0 && Clock::now() < until)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_EQ(d.stat(1), 0u) << "the reserved slots must go back when the client goes";
  EXPECT_FALSE(d.exists(9));
  EXPECT_FALSE(d.exists(10));
}

TEST(RemoteControlPlane, LeasesRunOut) {
  ServerProcess srv("64MiB", "", 0, {"--lease-ms", "100"});
  Ctl c(srv.port());
  auto [code, lease_w] = c.alloc(11, 4096);
  ASSERT_EQ(code, KVTIER_OK);
  auto [c2, o2] = c.alloc(12, 4096);
  ASSERT_EQ(c2, KVTIER_OK);
  ASSERT_EQ(c.commit(o2, true), KVTIER_OK);
  ASSERT_EQ(std::get<0>(c.lookup(12)), KVTIER_OK);  // pinned by a lease never released
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  c.alloc(13, 4096);  // any control frame lets the server reap
  EXPECT_EQ(c.commit(lease_w, true), KVTIER_ERR_TIMEOUT) << "a lease that ran out cannot commit";
  EXPECT_FALSE(c.exists(11));
  EXPECT_GE(c.stat(5), 2u) << "one write lease and one read lease expired";
  // The read lease's pin is gone: the page can be removed and its slot reused.
  EXPECT_EQ(c.remove(12), KVTIER_OK);
}

TEST(RemoteControlPlane, RdmaInfoWithoutRdmaSaysUnsupported) {
  ServerProcess srv("64MiB", "", 0, {"--rdma", "off"});
  Ctl c(srv.port());
  auto [type, r] = c.call(8, {});
  ASSERT_EQ(type, 8 | 0x80);
  EXPECT_EQ(static_cast<int32_t>(Ctl::get(r, 0, 4)), KVTIER_ERR_UNSUPPORTED);
  // A COMMIT of a slot this connection never reserved is refused per entry, not a crash.
  EXPECT_EQ(c.commit(12345, true), KVTIER_ERR_TIMEOUT);  // no such lease
}

bool rdma_device() {
  std::error_code ec;
  for (auto& e : std::filesystem::directory_iterator("/dev/infiniband", ec))
    if (e.path().filename().string().rfind("uverbs", 0) == 0) return true;
  return false;
}

// The RDMA tests need a device and an address of its NIC to listen on (rdma_cm serves no
// RDMA on 127.0.0.1): they skip, saying which is missing.
#define REQUIRE_RDMA()                                                                         \
  if (!KVTIER_TEST_RDMA)                                                                       \
    GTEST_SKIP() << "this build of kvtier has no RDMA transport (KVTIER_WITH_RDMA off)";       \
  if (!rdma_device())                                                                          \
    GTEST_SKIP() << "no RDMA device under /dev/infiniband: the RDMA data plane is built but "  \
                    "not exercised on this host";                                              \
  if (!std::getenv("KVTIER_TEST_RDMA_ADDR"))                                                   \
  GTEST_SKIP() << "set KVTIER_TEST_RDMA_ADDR to an IP address of this host's RDMA NIC to run " \
                  "the RDMA tests (they cannot listen on loopback)"

// The RDMA data plane end to end: copies, zero-copy from a registered pool, pages larger than
// the staging buffer, and a server killed mid-use.
TEST(RemoteRdma, RoundTripsOverRdma) {
  REQUIRE_RDMA();
  ServerProcess srv("1GiB");
  kvtier_store_t* s =
      open_store("tiers=remote;remote_transport=rdma;remote_servers=" + srv.address());
  Batch small("rdma-small", 300, 1024), big("rdma-big", 3, 20 << 20);
  for (Batch* b : {&small, &big}) {
    for (int r : b->set(s)) EXPECT_EQ(r, KVTIER_OK);
    for (int r : b->get(s)) EXPECT_EQ(r, 1);
  }
  // Zero-copy: 64 pages of a registered pool go out and come back into another.
  const size_t page = 256 << 10, n = 64;
  std::vector<unsigned char> pool(page * n), back(page * n);
  kvtier_test::fill_random(pool.data(), pool.size());
  ASSERT_EQ(kvtier_register_buffer(s, pool.data(), pool.size()), KVTIER_OK);
  ASSERT_EQ(kvtier_register_buffer(s, back.data(), back.size()), KVTIER_OK);
  std::vector<std::string> keys;
  std::vector<const char*> ck;
  std::vector<void*> in, out;
  std::vector<size_t> sizes(n, page);
  for (size_t i = 0; i < n; ++i) keys.push_back(kvtier_test::make_key("rdma-zc", i));
  for (size_t i = 0; i < n; ++i) {
    ck.push_back(keys[i].c_str());
    in.push_back(pool.data() + i * page);
    out.push_back(back.data() + i * page);
  }
  std::vector<int> res(n);
  std::vector<int> got(n);
  ASSERT_EQ(kvtier_batch_set_v1(s, ck.data(), n, in.data(), sizes.data(), n, res.data()), KVTIER_OK)
      << kvtier_last_error();
  ASSERT_EQ(kvtier_batch_get_v1(s, ck.data(), n, out.data(), sizes.data(), n, got.data()),
            KVTIER_OK)
      << kvtier_last_error();
  for (size_t i = 0; i < n; ++i) EXPECT_EQ(got[i], KVTIER_OK);
  EXPECT_EQ(pool, back);
  // The server dies: calls fail within the timeout, then work again once it is back.
  srv.kill_now(SIGKILL);
  Batch after("rdma-after", 4, 8192);
  const auto t0 = Clock::now();
  for (int r : after.set(s)) EXPECT_LT(r, 0);
  EXPECT_LT(Clock::now() - t0, std::chrono::seconds(5));
  ASSERT_TRUE(srv.restart());
  std::this_thread::sleep_for(std::chrono::milliseconds(500));  // past the fail-fast window
  for (int r : after.set(s)) EXPECT_EQ(r, KVTIER_OK);
  for (int r : after.get(s)) EXPECT_EQ(r, 1);
  kvtier_close(s);
}

TEST(Remote, RdmaTransportIsRefusedClearly) {
  if (KVTIER_TEST_RDMA && rdma_device())
    GTEST_SKIP() << "this host has an RDMA device: RemoteRdma covers it";
  kvtier_store_t* s = nullptr;
  EXPECT_EQ(kvtier_open("tiers=remote;remote_transport=rdma", &s), KVTIER_ERR_UNSUPPORTED);
  EXPECT_NE(std::string(kvtier_last_error()).find("KVTIER_REMOTE_TRANSPORT"), std::string::npos);
}

int run(const std::string& cmd) {
  return std::system(cmd.c_str());
}

TEST(Remote, PrefillToDecodeAcrossProcesses) {
  ServerProcess srv;
  ASSERT_EQ(run(std::string(KVTIER_PD_PREFILL) + " " + srv.address() + " 42 20 >/dev/null"), 0);
  ASSERT_EQ(run(std::string(KVTIER_PD_DECODE) + " " + srv.address() + " 42 20 >/dev/null"), 0);
  // A decode that expects other bytes (another seed's pages) does not find them.
  EXPECT_NE(run(std::string(KVTIER_PD_DECODE) + " " + srv.address() + " 43 20 2>/dev/null"), 0);
}

TEST(Remote, ServerStopsCleanlyOnSigterm) {
  ServerProcess srv;
  kvtier_store_t* s = open_store("tiers=remote;remote_servers=" + srv.address());
  Batch p("term", 2, 1000);
  for (int r : p.set(s)) ASSERT_EQ(r, KVTIER_OK);
  srv.kill_now(SIGTERM);  // with a client connected
  EXPECT_TRUE(WIFEXITED(srv.exit_status()));
  EXPECT_EQ(WEXITSTATUS(srv.exit_status()), 0);
  kvtier_close(s);
}


// A key a server holds keeps its first value, so putting it again must not send its bytes:
// engines back up every page of a finished request, its prefix pages read from here included.
TEST(Remote, RePutsOfHeldKeysMoveNoBytes) {
  ServerProcess a, b, c;
  std::vector<ServerProcess*> all{&a, &b, &c};
  const std::set<uint16_t> ports{a.port(), b.port(), c.port()};
  kvtier_store_t* s = open_store("tiers=remote;remote_servers=" + a.address() + "," +
                                 b.address() + "," + c.address());
  constexpr size_t kPage = 1 << 20, kPages = 16;
  Batch held("held", kPages, kPage);
  for (int r : held.set(s)) ASSERT_EQ(r, KVTIER_OK);

  Traffic before = traffic_to(ports);
  for (int r : held.set(s)) EXPECT_EQ(r, KVTIER_OK);
  Traffic after = traffic_to(ports);
  ASSERT_TRUE(after.continues(before)) << "a pooled connection closed: nothing to compare";
  const uint64_t again = after.sent - before.sent;
  EXPECT_LT(again, kPage * kPages / 100) << "a re-put of 16 MiB the servers hold sent " << again
                                         << " bytes";

  // Half held, half new: only the new half crosses, and every page reads back exactly.
  Batch mixed("held", kPages, kPage);
  for (size_t i = kPages / 2; i < kPages; ++i) {
    mixed.keys[i] = kvtier_test::make_key("new", i);
    mixed.ck[i] = mixed.keys[i].c_str();
  }
  for (size_t i = 0; i < kPages / 2; ++i) mixed.vals[i] = held.vals[i];
  before = traffic_to(ports);
  for (int r : mixed.set(s)) EXPECT_EQ(r, KVTIER_OK);
  after = traffic_to(ports);
  ASSERT_TRUE(after.continues(before)) << "a pooled connection closed: nothing to compare";
  const uint64_t half = after.sent - before.sent;
  EXPECT_GE(half, kPage * kPages / 2);
  EXPECT_LT(half, kPage * kPages / 2 + kPage * kPages / 100);
  for (int r : mixed.get(s)) EXPECT_EQ(r, 1);
  for (int r : held.get(s)) EXPECT_EQ(r, 1);
  kvtier_close(s);
}

// kvtier_batch_size_each (Mooncake Store's get(key) asks it before every read) moves the keys
// and their sizes, not the values: asking a 16 MiB value's size sends and receives under 1% of
// it on the client's sockets (a GET of no room received the whole value and dropped it).
TEST(Remote, SizeQueriesMoveKeysNotValues) {
  ServerProcess srv;
  kvtier_store_t* s =
      open_store("tiers=remote;remote_transport=tcp;remote_servers=" + srv.address());
  constexpr size_t kBig = 16 << 20;
  const std::vector<size_t> sizes = {1, (5 << 20) + 1, kBig};
  std::vector<std::string> keys;
  std::vector<std::vector<unsigned char>> vals;
  std::vector<const void*> ptrs;
  for (size_t i = 0; i < sizes.size(); ++i) {
    keys.push_back(kvtier_test::make_key("size", i));
    vals.push_back(kvtier_test::random_bytes(sizes[i]));
    ptrs.push_back(vals[i].data());
  }
  std::vector<const char*> ck = kvtier_test::c_keys(keys);
  std::vector<int> stored(keys.size());
  ASSERT_EQ(kvtier_batch_set(s, ck.data(), ck.size(), ptrs.data(), sizes.data(), stored.data()),
            KVTIER_OK);
  for (int r : stored) ASSERT_EQ(r, KVTIER_OK);

  ck.insert(ck.begin(), "size-missing");
  std::vector<int64_t> got(ck.size(), 99);
  const Traffic before = traffic_to({srv.port()});
  ASSERT_EQ(kvtier_batch_size_each(s, ck.data(), ck.size(), got.data()), KVTIER_OK)
      << kvtier_last_error();
  const Traffic after = traffic_to({srv.port()});
  ASSERT_TRUE(after.continues(before)) << "a pooled connection closed: nothing to compare";
  EXPECT_EQ(got[0], KVTIER_ERR_NOT_FOUND);
  for (size_t i = 0; i < sizes.size(); ++i) EXPECT_EQ(got[i + 1], int64_t(sizes[i])) << i;
  EXPECT_LT(after.sent - before.sent, kBig / 100) << "sent for sizes";
  EXPECT_LT(after.received - before.received, kBig / 100)
      << "received for sizes: " << after.received - before.received << " bytes";

  // The largest reads back whole into a buffer of the size given.
  std::vector<unsigned char> out(static_cast<size_t>(got.back()));
  void* buf = out.data();
  size_t cap = out.size();
  int64_t r = 0;
  ASSERT_EQ(kvtier_batch_get(s, &ck.back(), 1, &buf, &cap, &r), KVTIER_OK);
  EXPECT_EQ(r, int64_t(kBig));
  EXPECT_TRUE(out == vals.back()) << "WRONG BYTES";
  kvtier_close(s);
}

// A kvtier-server older than the SIZES frame, played by a relay in front of a real one: it
// answers SIZES as such a server does (ERROR INVALID_ARG, an unknown frame type, then the close)
// and passes every other frame along, both ways. (No PUT goes through it: its bulk would not be
// framed.)
class ServerWithoutSizes {
 public:
  explicit ServerWithoutSizes(uint16_t to) : to_(to), lfd_(kvtier_test::listen_loopback(&port_)) {
    accepting_ = std::thread([this] {
      for (int c; (c = accept(lfd_, nullptr, nullptr)) >= 0;) {
        {
          std::lock_guard lock(mu_);
          clients_.push_back(c);
        }
        relays_.emplace_back([this, c] { relay(c); });
      }
    });
  }
  ~ServerWithoutSizes() {
    shutdown(lfd_, SHUT_RDWR);  // ends the accept
    accepting_.join();
    {
      std::lock_guard lock(mu_);  // a test that stopped early left its store's connections open
      for (int c : clients_) shutdown(c, SHUT_RDWR);
    }
    for (std::thread& t : relays_) t.join();
    close(lfd_);
    for (int c : clients_) close(c);
  }
  std::string address() const { return kvtier_test::loopback_address(port_); }
  int refused() const { return refused_.load(); }

 private:
  static bool send_all(int fd, const void* p, size_t n) {
    for (const char* b = static_cast<const char*>(p); n;) {
      const ssize_t k = send(fd, b, n, MSG_NOSIGNAL);
      if (k <= 0) return false;
      b += k;
      n -= static_cast<size_t>(k);
    }
    return true;
  }
  void relay(int c) {
    const int s = kvtier_test::loopback_connect(to_);
    std::thread back([c, s] {
      char buf[1 << 16];
      for (ssize_t n; (n = recv(s, buf, sizeof buf, 0)) > 0;)
        if (!send_all(c, buf, static_cast<size_t>(n))) break;
      shutdown(c, SHUT_RDWR);
    });
    for (;;) {
      std::vector<uint8_t> h(16);
      if (kvtier_test::recv_all(c, h.data(), 16) != 16) break;
      const uint64_t type = Ctl::get(h, 6, 2), len = Ctl::get(h, 8, 4);
      std::vector<uint8_t> p(len);
      if (len && kvtier_test::recv_all(c, p.data(), len) != static_cast<ssize_t>(len)) break;
      if (type == 13) {  // SIZES
        ++refused_;
        std::vector<uint8_t> e;
        Ctl::put(e, static_cast<uint32_t>(KVTIER_ERR_INVALID_ARG), 4);
        const std::string why = "unknown frame type 13";
        e.insert(e.end(), why.begin(), why.end());
        const auto f = Ctl::frame(100 | 0x80, e);
        send_all(c, f.data(), f.size());
        break;
      }
      if (!send_all(s, h.data(), h.size()) || !send_all(s, p.data(), p.size())) break;
    }
    shutdown(s, SHUT_RDWR);
    shutdown(c, SHUT_RDWR);
    back.join();
    close(s);
  }

  const uint16_t to_;
  uint16_t port_ = 0;
  const int lfd_;
  std::atomic<int> refused_{0};
  std::thread accepting_;
  std::vector<std::thread> relays_;  // only the accepting thread adds to it
  std::mutex mu_;
  std::vector<int> clients_;  // guarded by mu_; closed last, so no fd is reused while relayed
};

// A client asks a server older than SIZES for sizes the old way (a GET of no room): the sizes
// are right, and it keeps asking that server so without sending SIZES again.
TEST(Remote, ServersOlderThanSizesAreAskedTheOldWay) {
  ServerProcess srv;
  const std::string tcp = "tiers=remote;remote_transport=tcp;remote_servers=";
  Batch held("old", 3, (5 << 20) + 1);
  kvtier_store_t* w = open_store(tcp + srv.address());
  for (int r : held.set(w)) ASSERT_EQ(r, KVTIER_OK);
  kvtier_close(w);

  ServerWithoutSizes old(srv.port());
  kvtier_store_t* s = open_store(tcp + old.address());
  std::vector<const char*> ck = held.ck;
  ck.push_back("old-missing");
  for (int round = 0; round < 2; ++round) {
    std::vector<int64_t> got(ck.size(), 99);
    ASSERT_EQ(kvtier_batch_size_each(s, ck.data(), ck.size(), got.data()), KVTIER_OK)
        << kvtier_last_error();
    for (size_t i = 0; i < held.keys.size(); ++i) EXPECT_EQ(got[i], int64_t(held.sizes[i])) << i;
    EXPECT_EQ(got.back(), KVTIER_ERR_NOT_FOUND);
    EXPECT_EQ(old.refused(), 1) << "round " << round;
  }
  for (int r : held.get(s)) EXPECT_EQ(r, 1);
  kvtier_close(s);
}

}  // namespace

