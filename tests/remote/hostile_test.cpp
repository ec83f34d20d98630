// kvtier-server against hostile clients, each finding of the security review as a test against
// a real server on loopback: unauthenticated memory, connection floods, leases that never end,
// slow clients, commits without writes, space that never comes back, colliding key ids.
#include <fcntl.h>
#include <grp.h>
#include <gtest/gtest.h>
#include <kvtier/kvtier.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <deque>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <thread>

#include "tests/common/loopback.h"
#include "tests/common/raw_client.h"
#include "tests/common/sampling.h"
#include "tests/common/server_process.h"
#include "tests/common/store.h"
#include "tests/common/test_util.h"
#include "tests/remote/fake_server.h"

namespace {

using Clock = std::chrono::steady_clock;
using kvtier_test::closed_within;
using kvtier_test::Ctl;
using kvtier_test::fd_count;
using kvtier_test::kWireVersion;
using kvtier_test::Latencies;
using kvtier_test::proc_status;
using kvtier_test::raw_connect;
using kvtier_test::ServerProcess;
using std::chrono::milliseconds;

constexpr int kError = 100 | 0x80;

using kvtier_test::open_store;

// Pages of random bytes under their own keys, written and read back byte for byte.
struct Pages {
  std::vector<std::string> keys;
  std::vector<const char*> ck;
  std::vector<std::vector<unsigned char>> vals;
  Pages(const std::string& prefix, size_t n, size_t size) {
    for (size_t i = 0; i < n; ++i) {
      keys.push_back(kvtier_test::make_key(prefix, i));
      vals.push_back(kvtier_test::random_bytes(size));
    }
    for (auto& k : keys) ck.push_back(k.c_str());
  }
  // How many keys were stored.
  size_t set(kvtier_store_t* s) {
    std::vector<const void*> ptrs;
    std::vector<size_t> sizes;
    for (auto& v : vals) ptrs.push_back(v.data()), sizes.push_back(v.size());
    std::vector<int> r(keys.size());
    EXPECT_EQ(kvtier_batch_set(s, ck.data(), ck.size(), ptrs.data(), sizes.data(), r.data()),
              KVTIER_OK);
    return static_cast<size_t>(std::count(r.begin(), r.end(), KVTIER_OK));
  }
  // How many keys read back exactly; wrong bytes fail the test.
  size_t get(kvtier_store_t* s) {
    std::vector<std::vector<unsigned char>> out;
    std::vector<void*> bufs;
    std::vector<size_t> caps;
    for (auto& v : vals) out.emplace_back(v.size());
    for (auto& o : out) bufs.push_back(o.data()), caps.push_back(o.size());
    std::vector<int64_t> r(keys.size());
    EXPECT_EQ(kvtier_batch_get(s, ck.data(), ck.size(), bufs.data(), caps.data(), r.data()),
              KVTIER_OK);
    size_t good = 0;
    for (size_t i = 0; i < keys.size(); ++i) {
      if (r[i] != static_cast<int64_t>(vals[i].size())) continue;
      EXPECT_EQ(out[i], vals[i]) << "WRONG BYTES for key " << i;
      good += out[i] == vals[i];
    }
    return good;
  }
};

// Stores 4 KiB of random bytes under "k"; the key's result.
int set_one(kvtier_store_t* s) {
  const char* key = "k";
  const auto page = kvtier_test::random_bytes(4096);
  const void* ptr = page.data();
  size_t size = page.size();
  int r = -1;
  EXPECT_EQ(kvtier_batch_set(s, &key, 1, &ptr, &size, &r), KVTIER_OK);
  return r;
}

// A raw frame header.
std::vector<uint8_t> header(uint16_t type, uint32_t length) {
  std::vector<uint8_t> h = {0x4b, 0x56, 0x54, 0x52, kWireVersion, 0};
  Ctl::put(h, type, 2);
  Ctl::put(h, length, 4);
  Ctl::put(h, 0, 4);
  return h;
}

// A PUT of two values of 4 MiB (ids all `tag` and all `tag + 1`) with 100 of their bytes: a
// client whose bytes stop.
std::vector<uint8_t> stalled_put(uint8_t tag) {
  std::vector<uint8_t> p;
  Ctl::put(p, 2, 4);
  for (uint8_t t : {tag, static_cast<uint8_t>(tag + 1)}) {
    Ctl::put_id(p, t);
    Ctl::put(p, 4 << 20, 8);
    Ctl::put(p, 0, 8);
  }
  auto f = Ctl::frame(3, p);
  f.resize(f.size() + 100, 0x11);
  return f;
}

int reply_type(int fd) {
  uint8_t h[16];
  return recv(fd, h, 16, MSG_WAITALL) == 16 ? h[6] | (h[7] << 8) : -1;
}

// ---- 6. unauthenticated memory ----------------------------------------------------------

TEST(Hostile, BeforeHelloOnlyAHelloSizedFrameIsRead) {
  ServerProcess srv("64MiB", "s3cret", 0, {"--idle-timeout-ms", "1000"});
  // A frame claiming 4 MiB before HELLO, of either type: refused at its header, closed at once.
  for (uint16_t type : {uint16_t{1}, uint16_t{3}}) {
    int fd = raw_connect(srv.port());
    auto h = header(type, 4u << 20);
    send(fd, h.data(), h.size(), MSG_NOSIGNAL);
    EXPECT_EQ(reply_type(fd), kError) << "type " << type;
    EXPECT_TRUE(closed_within(fd, 1000));
    close(fd);
  }
  // 300 connections that each send such a header and then megabytes: the server holds none.
  const uint64_t rss0 = proc_status(srv.pid(), "VmRSS");
  std::vector<int> fds;
  std::vector<uint8_t> junk(1 << 20, 0x5a);
  for (int i = 0; i < 300; ++i) {
    int fd = raw_connect(srv.port());
    auto h = header(1, 4u << 20);
    send(fd, h.data(), h.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    send(fd, junk.data(), junk.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    fds.push_back(fd);
  }
  std::this_thread::sleep_for(milliseconds(300));
  EXPECT_LT(proc_status(srv.pid(), "VmRSS"), rss0 + 16 * 1024) << "KiB held for refused frames";
  for (int fd : fds) close(fd);
  // A client that connects and says nothing is closed within the idle timeout (1 s here).
  int fd = raw_connect(srv.port());
  const auto t0 = Clock::now();
  EXPECT_TRUE(closed_within(fd, 4000)) << "a silent connection must be closed";
  EXPECT_GE(Clock::now() - t0, milliseconds(800));
  close(fd);
  // So is one that sends half a HELLO.
  fd = raw_connect(srv.port());
  auto h = header(1, 20);
  send(fd, h.data(), h.size(), MSG_NOSIGNAL);
  EXPECT_TRUE(closed_within(fd, 4000)) << "a half HELLO must not hold the connection";
  close(fd);
  // The right token still gets in.
  Ctl ok(srv.port(), 0, "s3cret");
  EXPECT_EQ(ok.stat(2), 64u << 20);
}

// ---- 8. connection exhaustion ----------------------------------------------------------------

TEST(Hostile, IdleConnectionFloodCostsNoThreadsAndLocksNobodyOut) {
  const std::string log = kvtier_test::test_dir() + "/flood.log";
  ServerProcess srv("64MiB", "", 0, {"--max-connections", "200", "--idle-timeout-ms", "2000"}, log);
  const uint64_t threads0 = proc_status(srv.pid(), "Threads");
  // 2,000 connections that never say HELLO (the server keeps the newest 50), plus 150 that
  // say HELLO and then idle.
  std::vector<int> fds;
  for (int i = 0; i < 2000; ++i) fds.push_back(raw_connect(srv.port()));
  std::vector<std::unique_ptr<Ctl>> idle;
  for (int i = 0; i < 150; ++i) idle.push_back(std::make_unique<Ctl>(srv.port()));
  std::this_thread::sleep_for(milliseconds(200));
  EXPECT_EQ(proc_status(srv.pid(), "Threads"), threads0) << "threads grew with connections";
  EXPECT_LE(fd_count(srv.pid()), 200u + 50u + 32u) << "connections over the caps are held";
  // A real client gets in and is served.
  kvtier_store_t* s = open_store("tiers=remote;remote_servers=" + srv.address());
  Pages p("flood", 16, 32 << 10);
  EXPECT_EQ(p.set(s), 16u);
  EXPECT_EQ(p.get(s), 16u);
  kvtier_close(s);
  // At the cap of authenticated connections, HELLO is refused with BUSY, not left hanging.
  std::vector<std::unique_ptr<Ctl>> more;
  for (int i = 0; i < 50; ++i) more.push_back(std::make_unique<Ctl>(srv.port()));
  {
    int fd = raw_connect(srv.port());
    auto [type, r] = kvtier_test::raw_hello(fd, 0);
    EXPECT_EQ(type, kError);
    ASSERT_GE(r.size(), 4u);
    EXPECT_EQ(static_cast<int32_t>(Ctl::get(r, 0, 4)), KVTIER_ERR_BUSY);
    close(fd);
  }
  // Idle ones time out (5 s here), and then there is room again.
  EXPECT_TRUE(closed_within(idle[0]->fd(), 8000)) << "an idle authenticated connection stays";
  std::this_thread::sleep_for(milliseconds(300));
  s = open_store("tiers=remote;remote_servers=" + srv.address());
  EXPECT_EQ(p.get(s), 16u);
  kvtier_close(s);
  for (int fd : fds) close(fd);
  // 500 connections that each send garbage: each is refused with a reason, not each logged.
  for (int i = 0; i < 500; ++i) {
    int fd = raw_connect(srv.port());
    std::vector<uint8_t> junk(16, 0xAB);
    send(fd, junk.data(), junk.size(), MSG_NOSIGNAL);
    EXPECT_EQ(reply_type(fd), kError);
    close(fd);
  }
  // The flood was logged in a few lines, not one per connection.
  std::ifstream in(log);
  size_t lines = 0;
  for (std::string line; std::getline(in, line);) ++lines;
  EXPECT_LE(lines, 30u) << "the log grew with the flood";
}

// The idle timeout closes an honest client's pooled connections too; its next calls reconnect
// instead of failing.
TEST(Hostile, HonestClientOutlivesTheIdleTimeout) {
  ServerProcess srv("64MiB", "", 0, {"--idle-timeout-ms", "500"});
  kvtier_store_t* s = open_store("tiers=remote;remote_servers=" + srv.address());
  Pages p("idle", 4, 8192);
  for (int i = 0; i < 8; ++i) EXPECT_EQ(p.set(s), 4u);  // every pooled connection in use
  std::this_thread::sleep_for(milliseconds(1500));
  for (int i = 0; i < 8; ++i) EXPECT_EQ(p.get(s), 4u) << "call " << i << " after the idle time";
  kvtier_close(s);
}

// ---- 4. leases run out on their own; capped per connection ---------------------------------

TEST(Hostile, LeasesRunOutWithNoOtherTraffic) {
  ServerProcess srv("64MiB", "", 0, {"--lease-ms", "1000"});
  Ctl c(srv.port());
  ASSERT_EQ(c.alloc(1, 1 << 20).first, KVTIER_OK);  // a write lease never committed
  auto [code, lease] = c.alloc(2, 4096);
  ASSERT_EQ(code, KVTIER_OK);
  ASSERT_EQ(c.commit(lease, true), KVTIER_OK);
  ASSERT_EQ(std::get<0>(c.lookup(2)), KVTIER_OK);  // a read lease never released
  EXPECT_EQ(c.stat(5), 0u);
  // Nobody sends an RDMA frame. Within two lease periods (plus slack for a loaded machine) both
  // leases have run out; STATS and REMOVE are not RDMA frames and reap nothing themselves.
  const auto t0 = Clock::now();
  while (c.stat(5) < 2 && Clock::now() - t0 < milliseconds(2500))
    std::this_thread::sleep_for(milliseconds(50));
  EXPECT_EQ(c.stat(5), 2u) << "leases still held after two lease periods";
  EXPECT_LE(Clock::now() - t0, milliseconds(2500));
  EXPECT_EQ(c.remove(2), KVTIER_OK);
  EXPECT_EQ(c.stat(1), 0u) << "the reserved slot and the pinned page must be free";
}

TEST(Hostile, LeasesPerConnectionAreCapped) {
  // Leases long enough to outlast the test however slowly it runs (a sanitizer build on a busy
  // machine): none may end and make room for more than the cap.
  ServerProcess srv("64MiB", "", 0, {"--max-leases", "1000", "--lease-ms", "600000"});
  Ctl c(srv.port());
  auto [code, lease] = c.alloc(5, 4096);
  ASSERT_EQ(code, KVTIER_OK);
  ASSERT_EQ(c.commit(lease, true), KVTIER_OK);
  const uint64_t rss0 = proc_status(srv.pid(), "VmRSS");
  std::vector<uint8_t> lookup;  // 65,536 pins of one page per frame
  Ctl::put(lookup, 65536, 4);
  for (int i = 0; i < 65536; ++i) Ctl::put_id(lookup, 5);
  size_t granted = 0, busy = 0;
  for (int f = 0; f < 20; ++f) {
    auto [type, r] = c.call(11, lookup);
    ASSERT_EQ(type, 11 | 0x80);
    for (size_t k = 0; k < 65536; ++k) {
      const auto code_k = static_cast<int32_t>(Ctl::get(r, 4 + k * 36, 4));
      granted += code_k == KVTIER_OK;
      busy += code_k == KVTIER_ERR_BUSY;
    }
  }
  EXPECT_EQ(granted, 1000u);
  EXPECT_EQ(busy, 20u * 65536 - 1000);
#ifndef __SANITIZE_ADDRESS__  // ASan's quarantine keeps freed frames resident: RSS says nothing
  EXPECT_LT(proc_status(srv.pid(), "VmRSS"), rss0 + 24 * 1024) << "KiB grown by 20 LOOKUPs";
#else
  (void)rss0;
#endif
  // ALLOC counts against the same cap; the connection's end gives everything back.
  EXPECT_EQ(c.alloc(6, 4096).first, KVTIER_ERR_BUSY);
  Ctl d(srv.port());
  EXPECT_EQ(d.alloc(6, 4096).first, KVTIER_OK) << "the cap is per connection";
}

// ---- 5. slow clients ----------------------------------------------------------------------

TEST(Hostile, StalledPutIsCutAndItsSlotsFreed) {
  ServerProcess srv("64MiB", "", 0, {"--bulk-timeout-ms", "1000"});
  Ctl c(srv.port());
  const auto f = stalled_put(1);
  send(c.fd(), f.data(), f.size(), MSG_NOSIGNAL);
  Ctl watcher(srv.port());
  const auto t0 = Clock::now();
  while (watcher.stat(1) == 0 && Clock::now() - t0 < milliseconds(1000))
    std::this_thread::sleep_for(milliseconds(10));
  // Slots are reserved as their bytes come: the stalled PUT holds its first value's, not 8 MiB.
  EXPECT_EQ(watcher.stat(1), 4u << 20);
  EXPECT_TRUE(closed_within(c.fd(), 4000)) << "a stalled PUT must be cut";
  EXPECT_EQ(watcher.stat(1), 0u) << "its slots must be free";
  EXPECT_FALSE(watcher.exists(1));
}

// A PUT that keeps sending, a byte at a time, is cut too: past the bulk timeout its bytes must
// average 16 MiB/s.
TEST(Hostile, TricklingPutIsCut) {
  ServerProcess srv("64MiB", "", 0, {"--bulk-timeout-ms", "1000"});
  Ctl c(srv.port());
  std::vector<uint8_t> p;
  Ctl::put(p, 1, 4);
  Ctl::put_id(p, 1);
  Ctl::put(p, 1 << 20, 8);
  Ctl::put(p, 0, 8);
  auto f = Ctl::frame(3, p);
  send(c.fd(), f.data(), f.size(), MSG_NOSIGNAL);
  const auto t0 = Clock::now();
  bool cut = false;
  while (!cut && Clock::now() - t0 < std::chrono::seconds(6)) {
    const uint8_t one = 1;
    cut = send(c.fd(), &one, 1, MSG_NOSIGNAL) != 1 || closed_within(c.fd(), 200);
  }
  EXPECT_TRUE(cut) << "a trickling PUT held its slot for 6 s";
  EXPECT_LT(Clock::now() - t0, std::chrono::seconds(4));
  Ctl watcher(srv.port());
  EXPECT_EQ(watcher.stat(1), 0u);
}

TEST(Hostile, UnreadGetReplyIsCutAndItsPinsReleased) {
  ServerProcess srv("256MiB", "", 0, {"--bulk-timeout-ms", "1000"});
  Ctl writer(srv.port());
  const auto page = kvtier_test::random_bytes(64 << 20);
  ASSERT_EQ(writer.put_page(7, std::vector<uint8_t>(page.begin(), page.end())), KVTIER_OK);
  // A reader with a tiny receive buffer asks for the page and never reads it.
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int small = 4096;
  setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
  const sockaddr_in a = kvtier_test::loopback(srv.port());
  ASSERT_EQ(connect(fd, reinterpret_cast<const sockaddr*>(&a), sizeof a), 0);
  ASSERT_EQ(kvtier_test::raw_hello(fd, 0).first, 1 | 0x80);
  std::vector<uint8_t> get;
  Ctl::put(get, 1, 4);
  Ctl::put_id(get, 7);
  auto g = Ctl::frame(4, get);
  send(fd, g.data(), g.size(), MSG_NOSIGNAL);
  std::this_thread::sleep_for(milliseconds(200));
  // The page is pinned by the reply: removing it keeps its slot until the reply ends.
  EXPECT_EQ(writer.remove(7), KVTIER_OK);
  EXPECT_EQ(writer.stat(1), 64u << 20);
  const auto t0 = Clock::now();
  while (writer.stat(1) != 0 && Clock::now() - t0 < milliseconds(4000))
    std::this_thread::sleep_for(milliseconds(50));
  EXPECT_EQ(writer.stat(1), 0u) << "the unread reply must be cut and its pin released";
  close(fd);
}

// The defaults: a silent connection, a stalled PUT and an unread reply are all cut within
// 10 s (plus slack for a loaded machine), with no settings given.
TEST(Hostile, DefaultBoundsHold) {
  ServerProcess srv("256MiB");
  {
    Ctl writer(srv.port());
    ASSERT_EQ(writer.put_page(9, std::vector<uint8_t>(32 << 20, 0x42)), KVTIER_OK);
  }
  int silent = raw_connect(srv.port());
  Ctl stall(srv.port()), reader(srv.port());
  std::vector<uint8_t> p;
  Ctl::put(p, 1, 4);
  Ctl::put_id(p, 10);
  Ctl::put(p, 1 << 20, 8);
  Ctl::put(p, 0, 8);
  auto f = Ctl::frame(3, p);  // a PUT of 1 MiB whose bytes never come
  send(stall.fd(), f.data(), f.size(), MSG_NOSIGNAL);
  std::vector<uint8_t> get;  // a GET of 32 MiB never read
  Ctl::put(get, 1, 4);
  Ctl::put_id(get, 9);
  auto g = Ctl::frame(4, get);
  send(reader.fd(), g.data(), g.size(), MSG_NOSIGNAL);
  const auto t0 = Clock::now();
  EXPECT_TRUE(closed_within(silent, 13000)) << "a silent connection outlived the default";
  EXPECT_TRUE(closed_within(stall.fd(), 13000)) << "a stalled PUT outlived the default";
  EXPECT_LT(Clock::now() - t0, std::chrono::seconds(13));
  // The unread reply: once cut, the page it pinned can be removed and its slot freed.
  Ctl check(srv.port());
  EXPECT_EQ(check.remove(9), KVTIER_OK);
  while (check.stat(1) != 0 && Clock::now() - t0 < std::chrono::seconds(13))
    std::this_thread::sleep_for(milliseconds(100));
  EXPECT_EQ(check.stat(1), 0u) << "an unread reply outlived the default";
  close(silent);
}

// ---- 2. stale pages across namespaces ---------------------------------------------------

TEST(Hostile, CommitWithoutWriteNeverPublishesAnotherNamespacesBytes) {
  ServerProcess srv("64MiB");
  Ctl a(srv.port(), 0xA), b(srv.port(), 0xB);
  const auto page = kvtier_test::random_bytes(64 << 10);
  const std::vector<uint8_t> secret(page.begin(), page.end());
  ASSERT_EQ(a.put_page(1, secret), KVTIER_OK);
  ASSERT_EQ(a.remove(1), KVTIER_OK);  // its slot is free again, with its bytes in it
  // B reserves the same size and commits without writing, promising whatever it likes.
  for (uint64_t sum : {kvtier_test::zeros_checksum(64 << 10), uint64_t{0}, uint64_t{42}}) {
    auto [code, lease] = b.alloc(2, 64 << 10, sum);
    ASSERT_EQ(code, KVTIER_OK);
    EXPECT_EQ(b.commit(lease, true), KVTIER_ERR_CORRUPT) << "a commit of bytes never written";
    EXPECT_FALSE(b.exists(2));
    auto [gc, bytes] = b.get_page(2);
    EXPECT_EQ(gc, KVTIER_ERR_NOT_FOUND);
    EXPECT_NE(bytes, secret) << "namespace B read namespace A's removed page";
  }
  EXPECT_EQ(b.stat(1), 0u) << "refused slots go back";
  // A commit of what the slot really holds is published.
  auto [code, lease] = b.alloc(3, 64 << 10, kvtier_test::page_checksum(secret.data(), 64 << 10));
  ASSERT_EQ(code, KVTIER_OK);
  EXPECT_EQ(b.commit(lease, true), KVTIER_OK);
}

// ---- 3. space freed by one size serves every size -----------------------------------------

TEST(Hostile, FreedSpaceServesAnySize) {
  ServerProcess srv("8MiB");
  kvtier_store_t* s = open_store("tiers=remote;remote_servers=" + srv.address());
  Pages small("small", 2040, 4096);
  EXPECT_EQ(small.set(s), 2040u);
  ASSERT_EQ(kvtier_clear(s), KVTIER_OK);
  Pages big("big", 120, 64 << 10);
  EXPECT_EQ(big.set(s), 120u) << "an empty arena refused 64 KiB pages";
  EXPECT_EQ(big.get(s), 120u);
  // Mixed sizes over the same space, evicting as they go: every put lands.
  for (int round = 0; round < 3; ++round) {
    Pages mid("mid" + std::to_string(round), 100, 40000),
        tiny("tiny" + std::to_string(round), 300, 3000);
    EXPECT_EQ(mid.set(s), 100u);
    EXPECT_EQ(tiny.set(s), 300u);
    EXPECT_EQ(tiny.get(s), 300u);
  }
  kvtier_close(s);
}

// ---- 7. hash flooding ----------------------------------------------------------------------

// Seconds one EXISTS of these ids takes, after a PUT of them (tiny values).
double put_and_time_exists(Ctl& c, const std::vector<std::pair<uint64_t, uint64_t>>& ids) {
  std::vector<uint8_t> put, exists;
  Ctl::put(put, ids.size(), 4);
  Ctl::put(exists, ids.size(), 4);
  for (auto [hi, lo] : ids) {
    Ctl::put(put, hi, 8);
    Ctl::put(put, lo, 8);
    Ctl::put(put, 16, 8);
    Ctl::put(put, 0, 8);
    Ctl::put(exists, hi, 8);
    Ctl::put(exists, lo, 8);
  }
  EXPECT_EQ(c.call(3, put, std::vector<uint8_t>(16 * ids.size(), 1)).first, 3 | 0x80);
  const auto t0 = Clock::now();
  auto [type, r] = c.call(2, exists);
  EXPECT_EQ(type, 2 | 0x80);
  EXPECT_EQ(std::count(r.begin() + 4, r.end(), 1), static_cast<long>(ids.size()));
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

TEST(Hostile, CollidingKeyIdsCostNoMoreThanRandomOnes) {
  ServerProcess srv("512MiB");
  Ctl attacker(srv.port(), 0, "", 60), honest(srv.port(), 1, "", 60);
  const size_t n = 30000;
  std::vector<std::pair<uint64_t, uint64_t>> colliding, random;
  for (size_t i = 0; i < n; ++i) {
    colliding.push_back({i + 1, 0});  // same low word: one bucket for an unseeded table
    random.push_back({kvtier_test::rng()(), kvtier_test::rng()()});
  }
  const double t_random = put_and_time_exists(honest, random);
  const double t_colliding = put_and_time_exists(attacker, colliding);
  EXPECT_LT(t_colliding, 10 * t_random + 0.2)
      << "colliding ids took " << t_colliding << " s against " << t_random << " s";
}

// ---- 1. the file tier's folder, prepared by another local user ---------------------------

namespace fs = std::filesystem;
constexpr uid_t kNobody = 65534;

// Runs f as uid/gid 65534 in a child process, like another local user would; its exit code.
template <class F>
int as_other_user(F&& f) {
  pid_t pid = fork();
  if (pid == 0) {
    if (setgroups(0, nullptr) != 0 || setgid(kNobody) != 0 || setuid(kNobody) != 0) _exit(99);
    _exit(f() ? 0 : 1);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

class FileFolder : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "needs root to act as another user (uid 65534)";
    base_ = kvtier_test::test_dir() + "/folder-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name();
    fs::create_directories(base_);
    chmod(kvtier_test::test_dir().c_str(), 0711);  // the other user may pass through, no more
    // A root-owned file the attacker wants overwritten, and a shared sticky folder like /var/tmp.
    precious_ = base_ + "/precious";
    std::ofstream(precious_) << "root's own bytes\n";
    fs::create_directory(base_ + "/tmp");
    chmod((base_ + "/tmp").c_str(), 01777);
    // The namespace folder's name, as the file tier makes it (default namespace).
    kvtier_store_t* s = nullptr;
    const std::string probe = base_ + "/probe";
    if (kvtier_open(("tiers=file;file_dir=" + probe).c_str(), &s) != KVTIER_OK)
      GTEST_SKIP() << "no file tier in this build: " << kvtier_last_error();
    kvtier_close(s);
    for (auto& e : fs::directory_iterator(probe)) ns_dir_ = e.path().filename();
    ASSERT_FALSE(ns_dir_.empty());
  }
  // Opening the store on dir fails with `code`, names the folder, and leaves precious alone.
  void expect_refused(const std::string& dir, int code) {
    kvtier_store_t* s = nullptr;
    EXPECT_EQ(kvtier_open(("tiers=file;file_dir=" + dir).c_str(), &s), code) << dir;
    const std::string msg = kvtier_last_error();
    EXPECT_NE(msg.find(base_), std::string::npos) << "the message must name the path: " << msg;
    if (s) kvtier_close(s);
    EXPECT_EQ(slurp(precious_), "root's own bytes\n") << "the planted link's target was written";
  }
  // Links named like the tier's files, pointing at precious, in folder.
  bool plant_links(const std::string& folder) {
    for (const char* name : {"LOCK", "pages-4096.dat", "pages-4096.idx"})
      if (symlink(precious_.c_str(), (folder + "/" + name).c_str()) != 0) return false;
    return true;
  }
  std::string base_, precious_, ns_dir_;
};

TEST_F(FileFolder, AFolderAnotherUserMadeIsRefused) {
  const std::string dir = base_ + "/tmp/kvtier";
  ASSERT_EQ(as_other_user([&] {
              return mkdir(dir.c_str(), 0755) == 0 &&
                     mkdir((dir + "/" + ns_dir_).c_str(), 0755) == 0 &&
                     plant_links(dir + "/" + ns_dir_);
            }),
            0);
  expect_refused(dir, KVTIER_ERR_DENIED);
  // The same links one level down: our folder, the namespace folder theirs.
  const std::string ours = base_ + "/ours";
  ASSERT_EQ(mkdir(ours.c_str(), 0711), 0);  // ours, and others may pass through
  ASSERT_EQ(mkdir((ours + "/" + ns_dir_).c_str(), 0755), 0);
  ASSERT_EQ(chown((ours + "/" + ns_dir_).c_str(), kNobody, kNobody), 0);
  ASSERT_EQ(as_other_user([&] { return plant_links(ours + "/" + ns_dir_); }), 0);
  expect_refused(ours, KVTIER_ERR_DENIED);
}

TEST_F(FileFolder, AFolderOthersCanWriteIsRefused) {
  const std::string dir = base_ + "/open";
  ASSERT_EQ(mkdir(dir.c_str(), 0700), 0);
  chmod(dir.c_str(), 0777);
  expect_refused(dir, KVTIER_ERR_DENIED);
  chmod(dir.c_str(), 0770);
  expect_refused(dir, KVTIER_ERR_DENIED);
}

TEST_F(FileFolder, ALinkOnTheWayMadeByAnotherUserIsRefused) {
  const std::string safe = base_ + "/safe";
  ASSERT_EQ(mkdir(safe.c_str(), 0700), 0);
  const std::string link = base_ + "/tmp/cache";
  ASSERT_EQ(as_other_user([&] { return symlink(safe.c_str(), link.c_str()) == 0; }), 0);
  expect_refused(link + "/kv", KVTIER_ERR_DENIED);
  expect_refused(link, KVTIER_ERR_DENIED);
}

TEST_F(FileFolder, FilesAreNeverOpenedThroughALink) {
  // Our own folder, with links left in it (by whatever means): opening refuses, no write.
  const std::string dir = base_ + "/mine";
  ASSERT_EQ(mkdir(dir.c_str(), 0700), 0);
  ASSERT_EQ(mkdir((dir + "/" + ns_dir_).c_str(), 0700), 0);
  ASSERT_TRUE(plant_links(dir + "/" + ns_dir_));
  expect_refused(dir, KVTIER_ERR_IO);
  // Only the page files linked: the LOCK opens, the page files found on open do not.
  ASSERT_EQ(unlink((dir + "/" + ns_dir_ + "/LOCK").c_str()), 0);
  expect_refused(dir, KVTIER_ERR_IO);
}

TEST_F(FileFolder, FoldersAreMadePrivateAndTheDefaultIsTheUsersOwn) {
  const std::string cache = base_ + "/xdg";
  setenv("XDG_CACHE_HOME", cache.c_str(), 1);
  unsetenv("KVTIER_FILE_DIR");
  kvtier_store_t* s = nullptr;
  ASSERT_EQ(kvtier_open("tiers=file;file_capacity=64MiB", &s), KVTIER_OK) << kvtier_last_error();
  EXPECT_EQ(set_one(s), KVTIER_OK);
  kvtier_close(s);
  struct stat st {};
  ASSERT_EQ(stat((cache + "/kvtier").c_str(), &st), 0) << "the default is $XDG_CACHE_HOME/kvtier";
  EXPECT_EQ(st.st_mode & 0777, 0700u);
  for (auto& e : fs::recursive_directory_iterator(cache + "/kvtier")) {
    ASSERT_EQ(lstat(e.path().c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 077, 0u) << e.path() << " is open to others";
  }
}

// Pages of a restore (or an older version) left readable: the open makes every folder and file
// private again, after which the other user reads nothing.
TEST_F(FileFolder, ReadableLeftoversAreMadePrivate) {
  const std::string dir = base_ + "/restored";
  ASSERT_EQ(mkdir(dir.c_str(), 0700), 0);
  const auto page = kvtier_test::random_bytes(8192);
  const char* key = "k";
  auto put_and_get = [&](bool put) {
    kvtier_store_t* s = nullptr;
    EXPECT_EQ(kvtier_open(("tiers=file;file_capacity=64MiB;file_dir=" + dir).c_str(), &s),
              KVTIER_OK)
        << kvtier_last_error();
    if (!s) return;
    const void* ptr = page.data();
    size_t size = page.size();
    int r = -1;
    if (put) {
      EXPECT_EQ(kvtier_batch_set(s, &key, 1, &ptr, &size, &r), KVTIER_OK);
    }
    std::vector<unsigned char> got(page.size());
    void* out = got.data();
    int64_t n = 0;
    EXPECT_EQ(kvtier_batch_get(s, &key, 1, &out, &size, &n), KVTIER_OK);
    EXPECT_EQ(n, static_cast<int64_t>(page.size()));
    EXPECT_EQ(got, page);
    kvtier_close(s);
  };
  put_and_get(true);
  std::string pages;
  chmod(dir.c_str(), 0755);
  for (auto& e : fs::recursive_directory_iterator(dir)) {
    chmod(e.path().c_str(), e.is_directory() ? 0755 : 0644);
    if (e.path().extension() == ".dat") pages = e.path();
  }
  ASSERT_FALSE(pages.empty());
  chmod(base_.c_str(), 0755);
  auto other_reads = [&] {
    return as_other_user([&] {
      const int fd = open(pages.c_str(), O_RDONLY);
      if (fd >= 0) close(fd);
      return fd >= 0;
    });
  };
  ASSERT_EQ(other_reads(), 0) << "the restored pages are readable by others before the open";
  put_and_get(false);
  struct stat st {};
  ASSERT_EQ(stat(dir.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 077, 0u) << dir;
  for (auto& e : fs::recursive_directory_iterator(dir)) {
    ASSERT_EQ(lstat(e.path().c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 077, 0u) << e.path() << " is still open to others";
  }
  EXPECT_NE(other_reads(), 0) << "the other user still reads the pages";
}

// The namespace folders' names show no tenant or model (a hash, the name kept inside), and a
// folder holding another namespace's name is refused.
TEST_F(FileFolder, NamespaceFoldersNameNoTenantOrModel) {
  const std::string dir = base_ + "/names";
  ASSERT_EQ(mkdir(dir.c_str(), 0700), 0);
  const std::string ns = "acme-corp/llama-3-70b";
  kvtier_store_t* s = nullptr;
  ASSERT_EQ(kvtier_open(("tiers=file;file_dir=" + dir + ";namespace=" + ns).c_str(), &s), KVTIER_OK)
      << kvtier_last_error();
  set_one(s);
  kvtier_close(s);
  std::string folder;
  for (auto& e : fs::directory_iterator(dir)) {
    const std::string name = e.path().filename();
    EXPECT_EQ(name.find("acme"), std::string::npos) << name;
    EXPECT_EQ(name.find("llama"), std::string::npos) << name;
    folder = e.path();
  }
  ASSERT_FALSE(folder.empty());
  EXPECT_EQ(slurp(folder + "/NAME"), ns);
  // The same folder claiming another namespace: refused, never read as this one's.
  std::ofstream(folder + "/NAME", std::ios::trunc) << "someone-else";
  s = nullptr;
  EXPECT_EQ(kvtier_open(("tiers=file;file_dir=" + dir + ";namespace=" + ns).c_str(), &s),
            KVTIER_ERR_DENIED);
  EXPECT_NE(std::string(kvtier_last_error()).find(folder), std::string::npos)
      << kvtier_last_error();
  if (s) kvtier_close(s);
}

// Another user who makes the default folder (/var/tmp/kvtier-<uid>, with no HOME) first: the
// victim's processes fall back to one private folder beside it, and share it.
TEST_F(FileFolder, ADefaultTakenByAnotherUserFallsBackToAPrivateOne) {
  constexpr uid_t kVictim = 65533;
  const std::string taken = "/var/tmp/kvtier-" + std::to_string(kVictim);
  auto tidy = [&] {
    for (int k = 0; k <= 8; ++k) fs::remove_all(k ? taken + "-" + std::to_string(k) : taken);
  };
  tidy();
  ASSERT_EQ(as_other_user([&] { return mkdir(taken.c_str(), 0700) == 0; }), 0);
  const auto page = kvtier_test::random_bytes(8192);
  // A process of the victim: opens the default folder, stores (or finds) the page.
  auto victim = [&](bool put) {
    pid_t pid = fork();
    if (pid == 0) {
      if (setgroups(0, nullptr) != 0 || setgid(kVictim) != 0 || setuid(kVictim) != 0) _exit(99);
      unsetenv("HOME");
      unsetenv("XDG_CACHE_HOME");
      unsetenv("KVTIER_FILE_DIR");
      kvtier_store_t* s = nullptr;
      if (kvtier_open("tiers=file;file_capacity=64MiB", &s) != KVTIER_OK) {
        std::fprintf(stderr, "victim: %s\n", kvtier_last_error());
        _exit(2);
      }
      const char* key = "k";
      const void* ptr = page.data();
      size_t size = page.size();
      int r = -1;
      if (put && (kvtier_batch_set(s, &key, 1, &ptr, &size, &r) != KVTIER_OK || r != KVTIER_OK))
        _exit(3);
      std::vector<unsigned char> got(page.size());
      void* out = got.data();
      int64_t n = 0;
      if (kvtier_batch_get(s, &key, 1, &out, &size, &n) != KVTIER_OK || got != page) _exit(4);
      kvtier_close(s);
      _exit(0);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  };
  EXPECT_EQ(victim(true), 0) << "the victim's open failed on the taken default";
  EXPECT_EQ(victim(false), 0) << "a second process of the victim did not find the page";
  struct stat st {};
  EXPECT_EQ(stat((taken + "-1").c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, kVictim);
  EXPECT_EQ(st.st_mode & 0777, 0700u);
  tidy();
}

// ---- the soak: honest clients beside every attack at once --------------------------------

// One honest client: its own store and namespace; each round writes 8 new pages of random bytes,
// reads them back byte for byte and removes them. Every call's latency is recorded.
struct Honest {
  size_t verified = 0, failed = 0;
  Latencies calls;
  void round(kvtier_store_t* s, const std::string& prefix) {
    Pages p(prefix, 8, 32 << 10);
    auto t0 = Clock::now();
    failed += 8 - p.set(s);
    calls.since(t0);
    t0 = Clock::now();
    const size_t good = p.get(s);
    calls.since(t0);
    verified += good;
    failed += 8 - good;
    std::vector<int> r(8);
    kvtier_batch_remove(s, p.ck.data(), 8, r.data());
  }
};

// Runs 16 honest clients for `seconds`; returns them once done.
std::vector<Honest> run_honest(const std::string& addr, double seconds, const std::string& tag) {
  std::vector<Honest> honest(16);
  std::vector<std::thread> threads;
  const auto end = Clock::now() + std::chrono::duration<double>(seconds);
  for (size_t i = 0; i < honest.size(); ++i)
    threads.emplace_back([&, i] {
      kvtier_store_t* s = open_store("tiers=remote;namespace=honest-" + std::to_string(i) +
                                     ";remote_servers=" + addr);
      for (size_t round = 0; Clock::now() < end; ++round)
        honest[i].round(s, tag + std::to_string(i) + "-" + std::to_string(round));
      kvtier_close(s);
    });
  for (auto& t : threads) t.join();
  return honest;
}

// Every attack of the review, in turn, until stop: each one's connections are kept for a while
// (up to a bound per kind), so they pile up as a hostile client would make them.
void attack(uint16_t port, const std::atomic<bool>& stop) {
  std::deque<int> idle;
  std::deque<std::unique_ptr<Ctl>> held;
  auto keep = [](auto& q, auto v, size_t max, auto drop) {
    q.push_back(std::move(v));
    if (q.size() > max) drop(q.front()), q.pop_front();
  };
  auto close_fd = [](int fd) { close(fd); };
  auto drop_ctl = [](std::unique_ptr<Ctl>&) {};
  Ctl owner(port, 0xBAD, "", 10);
  const auto big = kvtier_test::random_bytes(8 << 20);
  owner.put_page(1, std::vector<uint8_t>(big.begin(), big.end()));
  std::vector<uint8_t> lookup;
  Ctl::put(lookup, 65536, 4);
  for (int i = 0; i < 65536; ++i) Ctl::put_id(lookup, 1);
  std::vector<uint8_t> colliding, colliding_bulk(2000 * 16, 7);
  Ctl::put(colliding, 2000, 4);
  for (uint64_t i = 0; i < 2000; ++i) {
    Ctl::put(colliding, i + (uint64_t{kvtier_test::rng()()} << 16), 8);
    Ctl::put(colliding, 0, 8);
    Ctl::put(colliding, 16, 8);
    Ctl::put(colliding, 0, 8);
  }
  for (int step = 0; !stop; ++step) {
    switch (step % 8) {
      case 0: {  // a 4 MiB frame before HELLO, and bytes after it
        int fd = raw_connect(port);
        auto h = header(3, 4u << 20);
        h.resize(h.size() + (64 << 10), 0x33);
        send(fd, h.data(), h.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
        keep(idle, fd, 400, close_fd);
        break;
      }
      case 1:  // idle connections that never say HELLO
        for (int i = 0; i < 40; ++i) keep(idle, raw_connect(port), 400, close_fd);
        break;
      case 2: {  // a PUT whose bytes stop
        auto c = std::make_unique<Ctl>(port, 0xBAD, "", 10);
        const auto f = stalled_put(2);
        send(c->fd(), f.data(), f.size(), MSG_NOSIGNAL);
        keep(held, std::move(c), 20, drop_ctl);
        break;
      }
      case 3: {  // a GET whose reply is never read
        auto c = std::make_unique<Ctl>(port, 0xBAD, "", 10);
        int small = 4096;
        setsockopt(c->fd(), SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
        std::vector<uint8_t> g;
        Ctl::put(g, 1, 4);
        Ctl::put_id(g, 1);
        auto f = Ctl::frame(4, g);
        send(c->fd(), f.data(), f.size(), MSG_NOSIGNAL);
        keep(held, std::move(c), 20, drop_ctl);
        break;
      }
      case 4: {  // 65,536 read leases on one page, never released
        auto c = std::make_unique<Ctl>(port, 0xBAD, "", 10);
        c->call(11, lookup);
        keep(held, std::move(c), 20, drop_ctl);
        break;
      }
      case 5:  // ids chosen to collide
        owner.call(3, colliding, colliding_bulk);
        break;
      case 6: {  // a commit of bytes never written
        auto [code, lease] = owner.alloc(4, 64 << 10, 0);
        if (code == KVTIER_OK) owner.commit(lease, true);
        break;
      }
      case 7: {  // garbage
        int fd = raw_connect(port);
        std::vector<uint8_t> junk(64, 0xAB);
        send(fd, junk.data(), junk.size(), MSG_NOSIGNAL);
        close(fd);
        break;
      }
    }
    std::this_thread::sleep_for(milliseconds(20));
  }
  for (int fd : idle) close(fd);
}

// Finding 26.7: a server's reply claiming a 1 GiB value made the client zero-fill 1 GiB before
// its first byte came. The client here is a child process, so its peak memory is its own.
TEST(Hostile, ClaimedLengthsCostTheClientNothing) {
  uint16_t port = 0;
  const pid_t rogue = kvtier_test::fake_server("", 1ull << 30, &port);
  ASSERT_GT(rogue, 0);
  const pid_t client = fork();
  if (client == 0) {
    kvtier_store_t* s = nullptr;
    const std::string cfg =
        "tiers=remote;remote_transport=tcp;remote_timeout_ms=1000;"
        "remote_servers=127.0.0.1:" +
        std::to_string(port);
    if (kvtier_open(cfg.c_str(), &s) != KVTIER_OK) _exit(2);
    const char* key = "claimed";
    std::vector<char> buf(4096);
    void* ptr = buf.data();
    size_t cap = buf.size();
    int64_t got = 0;
    kvtier_batch_get(s, &key, 1, &ptr, &cap, &got);
    kvtier_close(s);
    _exit(got >= 0 ? 3 : 0);  // never a hit
  }
  int status = 0;
  rusage use{};
  ASSERT_EQ(wait4(client, &status, 0, &use), client);
  kill(rogue, SIGKILL);
  waitpid(rogue, nullptr, 0);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  EXPECT_LT(use.ru_maxrss, 256 << 10) << "KiB at the client's peak";
}

TEST(HostileSoak, HonestClientsKeepTheirBytesAndTheirLatency) {
  const char* env = getenv("KVTIER_TEST_SOAK_SECONDS");
  const double seconds = env ? std::atof(env) : 20;  // the review asks for 60: set it so
  ServerProcess srv("512MiB", "", 0, {"--max-connections", "256"},
                    kvtier_test::test_dir() + "/soak.log");
  const auto quiet = run_honest(srv.address(), std::max(5.0, seconds / 4), "quiet");
  Latencies quiet_ms;
  for (auto& h : quiet) quiet_ms.add(h.calls);
  const uint64_t rss_quiet = proc_status(srv.pid(), "VmRSS");

  std::atomic<bool> stop{false};
  std::thread hostile([&] { attack(srv.port(), stop); });
  kvtier_test::PeakSampler sampler({srv.pid()}, 1, milliseconds(200));
  const auto loaded = run_honest(srv.address(), seconds, "loaded");
  stop = true;
  sampler.stop();
  hostile.join();
  const uint64_t rss_max = sampler.peak(0, 0).rss;
  const size_t fds_max = sampler.peak(0, 0).fds;

  Latencies loaded_ms;
  size_t verified = 0, failed = 0;
  for (auto& h : loaded) {
    loaded_ms.add(h.calls);
    verified += h.verified;
    failed += h.failed;
  }
  const double q99 = quiet_ms.p99(), l99 = loaded_ms.p99();
  std::printf(
      "soak %.0f s: %zu pages verified, %zu failed; p99 quiet %.2f ms, under attack %.2f ms;"
      " server RSS %llu -> max %llu KiB, fds max %zu\n",
      seconds, verified, failed, q99, l99, static_cast<unsigned long long>(rss_quiet),
      static_cast<unsigned long long>(rss_max), fds_max);
  EXPECT_GT(verified, 16u * 8) << "the honest clients hardly ran";
  EXPECT_EQ(failed, 0u) << "honest keys failed under attack";
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
  // A sanitizer makes the hostile client's own work (in this process) cost 5-20x: its latency
  // figures are printed, not judged.
#else
  EXPECT_LE(l99, 3 * q99) << "honest p99 latency more than 3x the quiet run";
#endif
  EXPECT_LE(rss_max, (512u << 10) + (128u << 10)) << "server RSS beyond its arena";
  EXPECT_LE(fds_max, 256u + 64u + 32u) << "server fds beyond its caps";
}

}  // namespace
