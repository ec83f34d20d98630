// Cluster membership through etcd: a real etcd and real kvtier-servers that join and leave
// while a client writes and reads, every read compared byte for byte; etcd stopped and started
// again mid-run. Skips where etcd is not installed.
#include <gtest/gtest.h>
#include <kvtier/kvtier.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <deque>
#include <fstream>
#include <memory>
#include <mutex>
#include <set>
#include <thread>

#include "tests/cluster/etcd_process.h"
#include "tests/common/loopback.h"
#include "tests/common/raw_client.h"
#include "tests/common/server_process.h"
#include "tests/common/store.h"
#include "tests/common/test_util.h"

namespace {

using kvtier_test::Ctl;
using kvtier_test::EtcdProcess;
using kvtier_test::ServerProcess;
using std::chrono::milliseconds;

constexpr size_t kPage = 4 << 10;
constexpr size_t kBatch = 16;

using kvtier_test::open_store;

struct Page {
  std::string key;
  std::vector<unsigned char> bytes;
  uint64_t batch;  // the writer's batch number
};

// present[i] for keys on one server alone, asked through a store that knows only it.
std::vector<int> present_on(const std::string& server, const std::vector<Page>& pages) {
  kvtier_store_t* s = open_store("tiers=remote;remote_servers=" + server);
  std::vector<int> present(pages.size(), KVTIER_ERR_NOT_FOUND);
  if (!s) return present;
  std::vector<const char*> keys;
  for (const Page& p : pages) keys.push_back(p.key.c_str());
  if (!keys.empty()) {
    EXPECT_EQ(kvtier_batch_exists_each(s, keys.data(), keys.size(), present.data()), KVTIER_OK);
  }
  kvtier_close(s);
  return present;
}

// A writer that stores fresh random pages in batches and a reader that reads back random
// written ones, both continuously, until stop(). A read that returns bytes must return the
// written bytes (checked at once); a miss is recorded for the test to judge.
class Workload {
 public:
  explicit Workload(kvtier_store_t* s) : store_(s) {
    writer_ = std::thread([this] { write_loop(); });
    reader_ = std::thread([this] { read_loop(); });
  }
  ~Workload() { stop(); }
  void stop() {
    stopping_ = true;
    if (writer_.joinable()) writer_.join();
    if (reader_.joinable()) reader_.join();
  }
  // The batch being written now: batches before it are all in pages().
  uint64_t seq() const { return seq_.load(); }
  std::vector<Page> pages() const {
    std::lock_guard lock(mu_);
    return {written_.begin(), written_.end()};
  }
  std::vector<std::string> missed() const {
    std::lock_guard lock(mu_);
    return missed_;
  }
  std::vector<uint64_t> failed_batches() const {
    std::lock_guard lock(mu_);
    return failed_;
  }
  size_t reads() const { return reads_.load(); }

 private:
  void write_loop() {
    while (!stopping_) {
      const uint64_t b = ++seq_;
      std::vector<Page> batch;
      std::vector<const char*> keys;
      std::vector<const void*> ptrs;
      for (size_t i = 0; i < kBatch; ++i)
        batch.push_back(
            {kvtier_test::make_key("b", b * kBatch + i), kvtier_test::random_bytes(kPage), b});
      for (auto& p : batch) {
        keys.push_back(p.key.c_str());
        ptrs.push_back(p.bytes.data());
      }
      std::vector<size_t> sizes(kBatch, kPage);
      std::vector<int> res(kBatch);
      EXPECT_EQ(
          kvtier_batch_set(store_, keys.data(), kBatch, ptrs.data(), sizes.data(), res.data()),
          KVTIER_OK);
      {
        std::lock_guard lock(mu_);
        for (size_t i = 0; i < kBatch; ++i) {
          if (res[i] == KVTIER_OK)
            written_.push_back(std::move(batch[i]));
          else if (failed_.empty() || failed_.back() != b)
            failed_.push_back(b);
        }
      }
      // Paced so that a run stays far below the servers' capacity: an eviction is a miss too.
      std::this_thread::sleep_for(milliseconds(5));
    }
  }

  void read_loop() {
    while (!stopping_) {
      std::vector<Page> pick;
      {
        std::lock_guard lock(mu_);
        for (size_t i = 0; i < kBatch && !written_.empty(); ++i)
          pick.push_back(written_[kvtier_test::rng()() % written_.size()]);
      }
      if (pick.empty()) {
        std::this_thread::sleep_for(milliseconds(5));
        continue;
      }
      std::vector<std::string> misses = read_and_check(store_, pick);
      reads_ += pick.size();
      std::lock_guard lock(mu_);
      missed_.insert(missed_.end(), misses.begin(), misses.end());
    }
  }

 public:
  // Reads pages back; fails the test on any wrong byte; returns the keys that missed.
  static std::vector<std::string> read_and_check(kvtier_store_t* s,
                                                 const std::vector<Page>& pages) {
    std::vector<std::string> misses;
    for (size_t b = 0; b < pages.size(); b += 64) {
      const size_t n = std::min<size_t>(64, pages.size() - b);
      std::vector<std::vector<unsigned char>> out(n, std::vector<unsigned char>(kPage));
      std::vector<const char*> keys;
      std::vector<void*> bufs;
      for (size_t i = 0; i < n; ++i) {
        keys.push_back(pages[b + i].key.c_str());
        bufs.push_back(out[i].data());
      }
      std::vector<size_t> caps(n, kPage);
      std::vector<int64_t> res(n);
      EXPECT_EQ(kvtier_batch_get(s, keys.data(), n, bufs.data(), caps.data(), res.data()),
                KVTIER_OK);
      for (size_t i = 0; i < n; ++i) {
        if (res[i] == static_cast<int64_t>(kPage))
          EXPECT_TRUE(out[i] == pages[b + i].bytes) << "WRONG BYTES for " << pages[b + i].key;
        else
          misses.push_back(pages[b + i].key);
      }
    }
    return misses;
  }

 private:
  kvtier_store_t* store_;
  std::atomic<bool> stopping_{false};
  std::atomic<uint64_t> seq_{0};
  std::atomic<size_t> reads_{0};
  mutable std::mutex mu_;
  std::deque<Page> written_;
  std::vector<std::string> missed_;
  std::vector<uint64_t> failed_;
  std::thread writer_, reader_;
};

// 64 fresh random pages under `tag`.
std::vector<Page> fresh_pages(const std::string& tag, size_t n = 64) {
  std::vector<Page> pages;
  for (size_t i = 0; i < n; ++i)
    pages.push_back({kvtier_test::make_key(tag, i), kvtier_test::random_bytes(kPage), 0});
  return pages;
}

// Writes the pages; the per-key results.
std::vector<int> write_pages(kvtier_store_t* s, const std::vector<Page>& pages) {
  std::vector<const char*> keys;
  std::vector<const void*> ptrs;
  for (auto& p : pages) {
    keys.push_back(p.key.c_str());
    ptrs.push_back(p.bytes.data());
  }
  std::vector<size_t> sizes(pages.size(), kPage);
  std::vector<int> res(pages.size(), 1);
  EXPECT_EQ(kvtier_batch_set(s, keys.data(), keys.size(), ptrs.data(), sizes.data(), res.data()),
            KVTIER_OK);
  return res;
}

class Cluster : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!kvtier_test::etcd_installed())
      GTEST_SKIP() << "etcd is not installed (Debian: apt-get install etcd-server etcd-client; "
                      "cmake/install-deps.sh installs it)";
    const std::string dir = kvtier_test::test_dir() + "/" +
                            ::testing::UnitTest::GetInstance()->current_test_info()->name();
    etcd_ = std::make_unique<EtcdProcess>(dir);
    ASSERT_TRUE(etcd_->start()) << "etcd did not start; see " << dir << "/etcd.log";
    cluster_ = "c" + std::to_string(getpid());
  }

  // A server that registers in this test's cluster with a lease of 2 s.
  std::unique_ptr<ServerProcess> join() {
    return std::make_unique<ServerProcess>("256MiB", "", 0, etcd_->registration(cluster_));
  }
  std::string prefix() const { return "/kvtier/" + cluster_ + "/servers/"; }

  // Waits (up to 20 s) until etcd lists exactly these servers.
  bool members_are(std::vector<const ServerProcess*> servers) {
    std::vector<std::string> want;
    for (auto* s : servers) want.push_back(prefix() + s->address());
    return etcd_->lists(prefix(), want);
  }

  std::string client_config() const {
    return "tiers=remote;remote_etcd=" + etcd_->endpoint() + ";remote_cluster=" + cluster_ +
           ";remote_timeout_ms=5000;log_level=error";  // each miss of b's pages would log a line
  }

  std::unique_ptr<EtcdProcess> etcd_;
  std::string cluster_;
};

TEST_F(Cluster, JoinLeaveAndEtcdRestartWhileWriting) {
  auto a = join(), b = join(), c = join();
  ASSERT_TRUE(members_are({a.get(), b.get(), c.get()}));
  kvtier_store_t* s = open_store(client_config());
  ASSERT_NE(s, nullptr);
  Workload work(s);
  std::this_thread::sleep_for(milliseconds(1000));

  // b leaves. Every page written before batch s0 is either on b (then it may be lost) or must
  // stay readable; batches from s0 to s1 raced b's departure and may be lost too.
  const uint64_t s0 = work.seq();
  const std::vector<Page> before = work.pages();
  const std::vector<int> on_b = present_on(b->address(), before);
  b->kill_now(SIGTERM);
  const uint64_t s1 = work.seq();
  std::set<std::string> may_miss;
  for (size_t i = 0; i < before.size(); ++i)
    if (on_b[i] == KVTIER_OK) may_miss.insert(before[i].key);
  EXPECT_GT(may_miss.size(), before.size() / 8) << "b held too few pages: placement is skewed";
  EXPECT_TRUE(members_are({a.get(), c.get()}));
  std::this_thread::sleep_for(milliseconds(1000));

  // etcd stops: the client keeps the servers it knows and keeps working.
  etcd_->stop(SIGTERM);
  std::this_thread::sleep_for(milliseconds(1500));
  ASSERT_TRUE(etcd_->start());
  EXPECT_TRUE(members_are({a.get(), c.get()}));

  // d joins after etcd's restart: the client sees it and gives it its share of new pages.
  auto d = join();
  ASSERT_TRUE(members_are({a.get(), c.get(), d.get()}));
  std::this_thread::sleep_for(milliseconds(1000));  // the client's watch reports d
  const uint64_t s3 = work.seq();
  std::this_thread::sleep_for(milliseconds(1000));
  work.stop();

  const std::vector<Page> all = work.pages();
  std::vector<Page> after_join;
  for (const Page& p : all)
    if (p.batch > s3) after_join.push_back(p);
  ASSERT_GT(after_join.size(), 30u);
  size_t on_d = 0;
  for (int code : present_on(d->address(), after_join)) on_d += code == KVTIER_OK;
  EXPECT_GT(on_d, after_join.size() / 8) << "d got " << on_d << " of " << after_join.size();
  EXPECT_LT(on_d, after_join.size() * 3 / 4) << "d got " << on_d << " of " << after_join.size();

  // Every miss, while running and at the end, is a page that lived on b or raced its leaving.
  std::vector<std::string> misses = work.missed();
  const std::vector<std::string> final_misses = Workload::read_and_check(s, all);
  misses.insert(misses.end(), final_misses.begin(), final_misses.end());
  std::set<std::string> raced;
  for (const Page& p : all)
    if (p.batch >= s0 && p.batch <= s1) raced.insert(p.key);
  for (const std::string& k : misses)
    EXPECT_TRUE(may_miss.count(k) || raced.count(k)) << "lost a page that was not on b: " << k;
  // And b's pages are gone for real: the test would not notice a lost page otherwise.
  EXPECT_GE(final_misses.size(), may_miss.size());
  // b answers for a second after it deregisters, while clients notice: no write fails, not
  // while b leaves, nor while etcd is down, nor when d joins.
  for (uint64_t f : work.failed_batches()) ADD_FAILURE() << "a write failed in batch " << f;
  EXPECT_GT(work.reads(), 100u);
  kvtier_close(s);
}

// A server killed outright (no deregistration) drops out when its lease expires: writes that
// failed on it all succeed again soon after, and the other server's pages stay readable.
TEST_F(Cluster, LeaseExpiryDropsAKilledServer) {
  auto a = join(), b = join();
  ASSERT_TRUE(members_are({a.get(), b.get()}));
  kvtier_store_t* s = open_store(client_config());
  ASSERT_NE(s, nullptr);
  b->kill_now(SIGKILL);
  ASSERT_TRUE(members_are({a.get()})) << "b's lease did not expire";
  std::this_thread::sleep_for(milliseconds(600));  // the client's watch reports b's expiry
  const auto pages = fresh_pages("k");
  const auto res = write_pages(s, pages);
  for (size_t i = 0; i < res.size(); ++i) EXPECT_EQ(res[i], KVTIER_OK) << "key " << i;
  EXPECT_TRUE(Workload::read_and_check(s, pages).empty());
  for (int code : present_on(a->address(), pages)) EXPECT_EQ(code, KVTIER_OK);
  kvtier_close(s);
}

// Where etcd cannot be reached at open, the store opens with no servers (writes fail with a
// code, reads miss) and picks the servers up once etcd answers.
// What the process writes to its standard error (the library's log) while this lives.
class StderrCapture {
 public:
  explicit StderrCapture(std::string path) : path_(std::move(path)), saved_(dup(2)) {
    std::fflush(stderr);
    int fd = open(path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    dup2(fd, 2);
    close(fd);
  }
  ~StderrCapture() {
    std::fflush(stderr);
    dup2(saved_, 2);
    close(saved_);
  }
  // How many lines so far contain `what`.
  size_t count(const std::string& what) {
    std::fflush(stderr);
    std::ifstream in(path_);
    size_t n = 0;
    for (std::string line; std::getline(in, line);) n += line.find(what) != std::string::npos;
    return n;
  }

 private:
  std::string path_;
  int saved_;
};

TEST_F(Cluster, OpensWhileEtcdIsDown) {
  auto a = join();
  ASSERT_TRUE(members_are({a.get()}));
  etcd_->stop(SIGTERM);
  StderrCapture log(kvtier_test::test_dir() + "/client.log");
  kvtier_store_t* s = open_store(client_config() + ";log_level=warn");
  ASSERT_NE(s, nullptr);
  std::this_thread::sleep_for(milliseconds(1000));  // four reads of etcd, all refused
  // Said once, however many reads fail.
  EXPECT_EQ(log.count("etcd unreachable at start"), 1u);
  EXPECT_EQ(log.count("keeping the last known servers"), 1u);
  const std::string key = kvtier_test::make_key("down", 0);
  const auto value = kvtier_test::random_bytes(kPage);
  const char* k = key.c_str();
  const void* p = value.data();
  size_t size = kPage;
  int res = 0;
  ASSERT_EQ(kvtier_batch_set(s, &k, 1, &p, &size, &res), KVTIER_OK);
  EXPECT_EQ(res, KVTIER_ERR_UNAVAILABLE);
  ASSERT_TRUE(etcd_->start());
  bool stored = false;
  for (int i = 0; i < 100 && !stored; ++i) {
    std::this_thread::sleep_for(milliseconds(100));
    ASSERT_EQ(kvtier_batch_set(s, &k, 1, &p, &size, &res), KVTIER_OK);
    stored = res == KVTIER_OK;
  }
  ASSERT_TRUE(stored) << "the client never picked up the server after etcd came back";
  EXPECT_TRUE(Workload::read_and_check(s, {{key, value, 0}}).empty());
  kvtier_close(s);
}

// ---- issue 26: who is a member --------------------------------------------------------------

// Random bytes in a page of `n` (the rogue's forgeries).
std::vector<uint8_t> forged_page(size_t n) {
  std::vector<uint8_t> v(n);
  for (auto& b : v) b = static_cast<uint8_t>(kvtier_test::rng()());
  return v;
}

// A rogue member: a TCP listener that someone who can write to etcd registered, answering like a
// kvtier-server that has no token: the handshake (proved with the empty key), PUT acknowledged,
// EXISTS all present, GET answered with forged pages (their checksums right). It records every
// byte it receives and the requests that came after a handshake.
class Rogue {
 public:
  Rogue() {
    listen_fd_ = kvtier_test::listen_loopback(&port_, 64);
    EXPECT_GE(listen_fd_, 0);
    acceptor_ = std::thread([this] { accept_loop(); });
  }
  ~Rogue() {
    stop_ = true;
    shutdown(listen_fd_, SHUT_RDWR);
    acceptor_.join();
    for (auto& t : conns_) t.join();
    close(listen_fd_);
  }
  std::string address() const { return kvtier_test::loopback_address(port_); }
  size_t requests() const { return requests_.load(); }  // frames other than HELLO
  size_t pages_in() const { return pages_in_.load(); }
  size_t pages_out() const { return pages_out_.load(); }
  bool received(const std::string& what) {
    std::lock_guard lock(mu_);
    return std::search(bytes_.begin(), bytes_.end(), what.begin(), what.end()) != bytes_.end();
  }

 private:
  void accept_loop() {
    for (;;) {
      const int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) return;
      timeval tv{0, 200000};
      setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
      conns_.emplace_back([this, fd] { serve(fd); });
    }
  }
  bool read_n(int fd, void* buf, size_t n) {
    size_t got = 0;
    while (got < n) {
      const ssize_t r = recv(fd, static_cast<char*>(buf) + got, n - got, 0);
      if (r > 0) {
        std::lock_guard lock(mu_);
        bytes_.insert(bytes_.end(), static_cast<char*>(buf) + got, static_cast<char*>(buf) + got + r);
        got += static_cast<size_t>(r);
      } else if (r < 0 && (errno == EAGAIN || errno == EINTR) && !stop_) {
        continue;
      } else {
        return false;
      }
    }
    return true;
  }
  void reply(int fd, uint16_t type, const std::vector<uint8_t>& payload,
             const std::vector<uint8_t>& bulk = {}) {
    std::vector<uint8_t> f = Ctl::frame(type, payload);
    f.insert(f.end(), bulk.begin(), bulk.end());
    send(fd, f.data(), f.size(), MSG_NOSIGNAL);
  }
  void serve(int fd) {
    std::vector<uint8_t> client_nonce;
    for (;;) {
      uint8_t h[16];
      if (!read_n(fd, h, 16)) break;
      const uint16_t type = static_cast<uint16_t>(h[6] | (h[7] << 8));
      const uint32_t len = static_cast<uint32_t>(Ctl::get({h, h + 16}, 8, 4));
      if (len > (1u << 20)) break;
      std::vector<uint8_t> p(len);
      if (len && !read_n(fd, p.data(), len)) break;
      if (type == 1) {
        std::vector<uint8_t> out;
        if (len == 32 && client_nonce.empty()) {  // the handshake: proved with no token
          client_nonce = p;
          const std::vector<uint8_t> mine = forged_page(32);
          std::vector<uint8_t> id;
          Ctl::put(id, 0x0BAD, 8);
          out = mine;
          out.insert(out.end(), id.begin(), id.end());
          const auto proof = kvtier_test::hello_proof("", "kvtier server", client_nonce, mine, id);
          out.insert(out.end(), proof.begin(), proof.end());
        } else if (len != 40) {
          Ctl::put(out, 0x0BAD, 8);  // a HELLO of the protocol before proofs: its boot id
        }
        reply(fd, 1 | 0x80, out);
        continue;
      }
      ++requests_;
      const uint32_t n = static_cast<uint32_t>(Ctl::get(p, 0, 4));
      std::vector<uint8_t> out;
      Ctl::put(out, n, 4);
      if (type == 2) {  // EXISTS: all of them
        for (uint32_t i = 0; i < n; ++i) Ctl::put(out, 1, 1);
        reply(fd, type | 0x80, out);
      } else if (type == 3) {  // PUT: take the bytes, acknowledge
        uint64_t bulk = 0;
        for (uint32_t i = 0; i < n; ++i) bulk += Ctl::get(p, 4 + 32 * i + 16, 8);
        std::vector<uint8_t> sink(bulk);
        if (bulk && !read_n(fd, sink.data(), sink.size())) break;
        pages_in_ += n;
        for (uint32_t i = 0; i < n; ++i) Ctl::put(out, 0, 4);
        reply(fd, type | 0x80, out);
      } else if (type == 4) {  // GET: a forged page for each
        std::vector<uint8_t> bulk;
        for (uint32_t i = 0; i < n; ++i) {
          const auto page = forged_page(kPage);
          Ctl::put(out, 0, 4);
          Ctl::put(out, kPage, 8);
          Ctl::put(out, kvtier_test::page_checksum(page.data(), page.size()), 8);
          bulk.insert(bulk.end(), page.begin(), page.end());
        }
        pages_out_ += n;
        reply(fd, type | 0x80, out, bulk);
      } else {
        std::vector<uint8_t> err;
        Ctl::put(err, static_cast<uint32_t>(KVTIER_ERR_UNSUPPORTED), 4);
        reply(fd, 100 | 0x80, err);
        break;
      }
    }
    close(fd);
  }

  int listen_fd_ = -1;
  uint16_t port_ = 0;
  std::atomic<bool> stop_{false};
  std::thread acceptor_;
  std::vector<std::thread> conns_;  // only the acceptor adds, only the destructor joins
  std::atomic<size_t> requests_{0}, pages_in_{0}, pages_out_{0};
  std::mutex mu_;
  std::string bytes_;
};

// Finding 26.3(a): one unauthenticated write to etcd made a member that got the token, pages and
// read requests, and whose forged pages were taken as hits. Now it must prove it holds the token
// first: it gets a nonce, and nothing else.
TEST_F(Cluster, AMemberRecordIsAClaimUntilTheServerProvesIt) {
  const std::string token = "clustersecret-" + std::to_string(getpid());
  auto real = std::make_unique<ServerProcess>("256MiB", token, 0, etcd_->registration(cluster_));
  Rogue rogue;
  etcd_->ctl("put " + prefix() + rogue.address() + " x");  // what anyone who can write to etcd does
  ASSERT_TRUE(etcd_->lists(prefix(), {prefix() + real->address(), prefix() + rogue.address()}))
      << "the real server did not register";
  StderrCapture log(kvtier_test::test_dir() + "/rogue-client.log");
  kvtier_store_t* s = open_store(client_config() + ";remote_token=" + token + ";log_level=warn");
  ASSERT_NE(s, nullptr);
  const auto pages = fresh_pages("rogue");
  for (int r : write_pages(s, pages)) EXPECT_EQ(r, KVTIER_OK);
  EXPECT_TRUE(Workload::read_and_check(s, pages).empty()) << "pages missed";
  size_t present = 0;
  const std::string absent = kvtier_test::make_key("never-written", 0);
  const char* k = absent.c_str();
  EXPECT_EQ(kvtier_batch_exists(s, &k, 1, &present), KVTIER_OK);
  kvtier_close(s);
  EXPECT_FALSE(rogue.received(token)) << "the token went to an unproven member";
  EXPECT_EQ(rogue.requests(), 0u) << "requests went to an unproven member";
  EXPECT_EQ(rogue.pages_in(), 0u);
  EXPECT_EQ(rogue.pages_out(), 0u);
  EXPECT_GE(log.count(rogue.address()), 1u) << "no log line names the member left out";
}

// Finding 26.3(c): deleting a live server's key removed it for good. It puts it back at its next
// renewal (a third of its TTL).
TEST_F(Cluster, ALiveServerWhoseKeyVanishedRegistersAgain) {
  auto a = join();
  ASSERT_TRUE(members_are({a.get()}));
  for (int round = 0; round < 2; ++round) {
    ASSERT_NE(etcd_->ctl("del " + prefix() + a->address()).find('1'), std::string::npos);
    const auto t0 = std::chrono::steady_clock::now();
    bool back = false;
    while (!back && std::chrono::steady_clock::now() - t0 < std::chrono::seconds(5)) {
      std::this_thread::sleep_for(milliseconds(100));
      back = etcd_->keys(prefix()).size() == 1;
    }
    EXPECT_TRUE(back) << "the server's key did not come back";
  }
  // Still under its lease: a server killed now drops out when the lease runs out.
  a->kill_now(SIGKILL);
  EXPECT_TRUE(members_are({}));
}

// Finding 26.12: one server registered under three spellings counted as three members, so with
// two replicas many pages had both copies on it. Members are told apart by the id they prove:
// killing the server loses nothing.
TEST_F(Cluster, OneServerUnderSeveralNamesIsOneMember) {
  const uint16_t port = kvtier_test::free_port();
  const std::string p = std::to_string(port);
  std::vector<std::string> flags{"--listen", "0.0.0.0:" + p, "--advertise", "127.0.0.1:" + p};
  for (const auto& f : etcd_->registration(cluster_)) flags.push_back(f);
  auto a = std::make_unique<ServerProcess>("256MiB", "", port, flags);
  auto b = join();
  ASSERT_TRUE(members_are({a.get(), b.get()}));
  for (const char* alias : {"127.0.0.2:", "127.0.0.3:"}) etcd_->ctl("put " + prefix() + alias + p + " x");
  ASSERT_EQ(etcd_->keys(prefix()).size(), 4u);
  kvtier_store_t* s = open_store(client_config() + ";remote_replicas=2;remote_timeout_ms=1000");
  ASSERT_NE(s, nullptr);
  const auto pages = fresh_pages("alias");
  for (int r : write_pages(s, pages)) EXPECT_EQ(r, KVTIER_OK);
  a->kill_now(SIGKILL);
  const auto misses = Workload::read_and_check(s, pages);
  EXPECT_TRUE(misses.empty()) << misses.size() << " of 64 pages lost with one server of two";
  kvtier_close(s);
}

// Finding 26.8: 60 values of 1 MiB under the member prefix left a new client with no servers
// (its listing timed out). Members are listed by key, within limits; bad records are skipped.
TEST_F(Cluster, BigRecordsUnderThePrefixCostNothing) {
  auto a = join();
  ASSERT_TRUE(members_are({a.get()}));
  for (int i = 0; i < 60; ++i) etcd_->put(prefix() + "big-" + std::to_string(i), 1 << 20);
  etcd_->ctl("put " + prefix() + std::string(100000, 'k') + " x");  // a long key
  kvtier_store_t* s = open_store(client_config());
  ASSERT_NE(s, nullptr);
  const auto pages = fresh_pages("big");
  for (int r : write_pages(s, pages)) EXPECT_EQ(r, KVTIER_OK) << "the client has no servers";
  EXPECT_TRUE(Workload::read_and_check(s, pages).empty());
  // A big value written while the client watches, then a server that joins: still followed.
  etcd_->put(prefix() + "big-late", 1 << 20);
  auto b = join();
  std::this_thread::sleep_for(milliseconds(1500));
  const auto more = fresh_pages("big-more");
  for (int r : write_pages(s, more)) EXPECT_EQ(r, KVTIER_OK);
  size_t on_b = 0;
  for (int code : present_on(b->address(), more)) on_b += code == KVTIER_OK;
  EXPECT_GT(on_b, 0u) << "the server that joined after the big value was not seen";
  kvtier_close(s);
}

// Runs f with the variable set, then unset (the servers a test forks inherit it).
template <class F>
void with_env(const char* name, const std::string& value, F f) {
  setenv(name, value.c_str(), 1);
  f();
  unsetenv(name);
}

// Finding 26.3(b): etcd with authentication. Servers register and clients list as an etcd user;
// an etcd token that runs out is renewed.
TEST(ClusterAuth, EtcdWithUsersAndShortTokens) {
  if (!kvtier_test::etcd_installed()) GTEST_SKIP() << "etcd is not installed";
  EtcdProcess etcd(kvtier_test::test_dir() + "/etcd-auth", {"--auth-token-ttl", "1"});
  ASSERT_TRUE(etcd.start());
  const std::string pw = "pw-" + std::to_string(getpid());
  etcd.ctl("user add root:" + pw);
  ASSERT_NE(etcd.ctl("auth enable").find("Enabled"), std::string::npos);
  etcd.set_ctl_flags("--user root:" + pw);
  const std::string cluster = "auth" + std::to_string(getpid());
  const std::string prefix = "/kvtier/" + cluster + "/servers/";
  std::unique_ptr<ServerProcess> a;
  with_env("KVTIER_SERVER_ETCD_PASSWORD", pw, [&] {
    auto flags = etcd.registration(cluster);
    flags.insert(flags.end(), {"--etcd-user", "root"});
    a = std::make_unique<ServerProcess>("256MiB", "", 0, flags);
  });
  ASSERT_TRUE(etcd.lists(prefix, {prefix + a->address()})) << "the server did not register as root";
  kvtier_store_t* s = open_store("tiers=remote;remote_etcd=" + etcd.endpoint() +
                                 ";remote_cluster=" + cluster + ";remote_etcd_user=root" +
                                 ";remote_etcd_password=" + pw + ";log_level=error");
  ASSERT_NE(s, nullptr);
  // Past the etcd tokens' life (1 s) and the lease's (2 s): both sides authenticated again.
  std::this_thread::sleep_for(milliseconds(3000));
  EXPECT_EQ(etcd.keys(prefix), std::vector<std::string>{prefix + a->address()})
      << "the registration lapsed when its etcd token ran out";
  const auto pages = fresh_pages("auth");
  for (int r : write_pages(s, pages)) EXPECT_EQ(r, KVTIER_OK);
  EXPECT_TRUE(Workload::read_and_check(s, pages).empty());
  kvtier_close(s);
}

// Finding 26.3(b): etcd over TLS that wants client certificates (a CA and certificates made here).
TEST(ClusterAuth, EtcdOverTlsWithClientCertificates) {
  if (!kvtier_test::etcd_installed() || access("/usr/bin/openssl", X_OK) != 0)
    GTEST_SKIP() << "etcd or openssl is not installed";
  const std::string dir = kvtier_test::test_dir() + "/etcd-tls";
  mkdir(dir.c_str(), 0700);
  const std::string make =
      "cd " + dir +
      " && openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=kvtier-test-ca "
      "-keyout ca.key -out ca.crt"
      " && printf 'subjectAltName=IP:127.0.0.1\\nextendedKeyUsage=serverAuth,clientAuth\\n' > ext"
      " && for n in server client; do openssl req -newkey rsa:2048 -nodes -subj /CN=$n "
      "-keyout $n.key -out $n.csr && openssl x509 -req -in $n.csr -CA ca.crt -CAkey ca.key "
      "-CAcreateserial -days 1 -extfile ext -out $n.crt || exit 1; done";
  ASSERT_EQ(system(("(" + make + ") >/dev/null 2>&1").c_str()), 0) << make;
  EtcdProcess etcd(dir,
                   {"--cert-file", dir + "/server.crt", "--key-file", dir + "/server.key",
                    "--client-cert-auth", "--trusted-ca-file", dir + "/ca.crt"},
                   true,
                   "--cacert " + dir + "/ca.crt --cert " + dir + "/client.crt --key " + dir +
                       "/client.key");
  ASSERT_TRUE(etcd.start()) << "see " << dir << "/etcd.log";
  const std::string cluster = "tls" + std::to_string(getpid());
  const std::string prefix = "/kvtier/" + cluster + "/servers/";
  auto flags = etcd.registration(cluster);
  flags.insert(flags.end(), {"--etcd-ca-file", dir + "/ca.crt", "--etcd-cert-file",
                             dir + "/client.crt", "--etcd-key-file", dir + "/client.key"});
  ServerProcess a("256MiB", "", 0, flags);
  ASSERT_TRUE(etcd.lists(prefix, {prefix + a.address()})) << "the server did not register over TLS";
  const std::string tls = ";remote_etcd_ca_file=" + dir + "/ca.crt;remote_etcd_cert_file=" + dir +
                          "/client.crt;remote_etcd_key_file=" + dir + "/client.key";
  kvtier_store_t* s = open_store("tiers=remote;remote_etcd=" + etcd.url() + ";remote_cluster=" +
                                 cluster + tls + ";log_level=error");
  ASSERT_NE(s, nullptr);
  const auto pages = fresh_pages("tls");
  for (int r : write_pages(s, pages)) EXPECT_EQ(r, KVTIER_OK);
  EXPECT_TRUE(Workload::read_and_check(s, pages).empty());
  kvtier_close(s);
}

TEST(ClusterConfig, BadValuesFailTheOpenWithTheirName) {
  for (const char* cfg : {"tiers=remote;remote_etcd=nohost", "tiers=remote;remote_etcd=",
                          "tiers=remote;remote_etcd=127.0.0.1:1;remote_cluster=a/b"}) {
    kvtier_store_t* s = nullptr;
    EXPECT_EQ(kvtier_open(cfg, &s), KVTIER_ERR_CONFIG) << cfg;
    EXPECT_NE(std::string(kvtier_last_error()).find("KVTIER_REMOTE_"), std::string::npos)
        << kvtier_last_error();
    EXPECT_EQ(s, nullptr);
  }
}

}  // namespace
