// The remote tier against real kvtier-server processes on loopback (TCP): a dead or hung
// server, tokens, malformed frames, replicas, and prefill-to-decode between two processes.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <kvtier/kvtier.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <atomic>
#include <chrono>
#include <thread>

#include "server_process.h"
#include "test_util.h"

namespace {

using Clock = std::chrono::steady_clock;
using kvtier_test::ServerProcess;

kvtier_store_t* open_store(const std::string& config) {
  kvtier_store_t* s = nullptr;
  EXPECT_EQ(kvtier_open(config.c_str(), &s), KVTIER_OK) << kvtier_last_error();
  return s;
}

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
  for (int r : b.get(s)) EXPECT_EQ(r, 1) << "served again once the server runs";
  kvtier_close(s);
}

TEST(Remote, TokenIsRequired) {
  ServerProcess srv("64MiB", "s3cret");
  Batch b("tok", 2, 1000);
  for (const char* token : {"", "wrong"}) {
    kvtier_store_t* s = open_store("tiers=remote;remote_token=" + std::string(token) +
                                   ";remote_servers=" + srv.address());
    for (int r : b.set(s)) EXPECT_EQ(r, KVTIER_ERR_DENIED) << "token '" << token << "'";
    kvtier_close(s);
  }
  kvtier_store_t* s =
      open_store("tiers=remote;remote_token=s3cret;remote_servers=" + srv.address());
  for (int r : b.set(s)) EXPECT_EQ(r, KVTIER_OK);
  for (int r : b.get(s)) EXPECT_EQ(r, 1);
  kvtier_close(s);
}

int raw_connect(uint16_t port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  timeval tv{2, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  return fd;
}

// Sends bytes; returns what the server answers before it closes (the type of its reply).
int send_raw(uint16_t port, const std::vector<uint8_t>& bytes, bool hello_first) {
  int fd = raw_connect(port);
  if (hello_first) {
    // magic, version 1, HELLO, payload 12: token length 0, namespace seed
    uint8_t h[28] = {0x4b, 0x56, 0x54, 0x52, 1, 0, 1, 0, 12, 0, 0, 0, 0, 0, 0, 0};
    send(fd, h, sizeof h, MSG_NOSIGNAL);
    uint8_t r[16];
    EXPECT_EQ(recv(fd, r, sizeof r, MSG_WAITALL), 16);
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
  std::vector<uint8_t> big = {0x4b, 0x56, 0x54, 0x52, 1, 0, 4, 0,
                              0xff, 0xff, 0xff, 0x7f, 0, 0, 0, 0};
  EXPECT_EQ(send_raw(srv.port(), big, true), kError);
  // A GET whose count claims more ids than the payload holds.
  std::vector<uint8_t> lie = {0x4b, 0x56, 0x54, 0x52, 1,    0,    4, 0, 8, 0, 0, 0,
                              0,    0,    0,    0,    0xff, 0xff, 0, 0, 1, 2, 3, 4};
  EXPECT_EQ(send_raw(srv.port(), lie, true), kError);
  // A request before HELLO.
  std::vector<uint8_t> early = {0x4b, 0x56, 0x54, 0x52, 1, 0, 6, 0, 0, 0, 0, 0, 0, 0, 0, 0};
  EXPECT_EQ(send_raw(srv.port(), early, false), kError);
  // A frame cut short, then the connection closed.
  std::vector<uint8_t> cut = {0x4b, 0x56, 0x54, 0x52, 1, 0, 3, 0, 64, 0, 0, 0, 0, 0, 0, 0, 1, 0};
  EXPECT_EQ(send_raw(srv.port(), cut, true), -1);
  // A PUT that declares bytes it never sends: the slot is released, nothing becomes visible.
  std::vector<uint8_t> put = {0x4b, 0x56, 0x54, 0x52, 1, 0, 3, 0, 36, 0,
                              0,    0,    0,    0,    0, 0, 1, 0, 0,  0};
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

TEST(Remote, RdmaTransportIsRefusedClearly) {
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

}  // namespace
