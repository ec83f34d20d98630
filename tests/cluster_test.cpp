// Cluster membership through etcd: a real etcd and real kvtier-servers that join and leave
// while a client writes and reads, every read compared byte for byte; etcd stopped and started
// again mid-run. Skips where etcd is not installed.
#include <gtest/gtest.h>
#include <kvtier/kvtier.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <deque>
#include <fstream>
#include <memory>
#include <mutex>
#include <set>
#include <thread>

#include "etcd_process.h"
#include "server_process.h"
#include "test_util.h"

namespace {

using kvtier_test::EtcdProcess;
using kvtier_test::ServerProcess;
using std::chrono::milliseconds;

constexpr size_t kPage = 4 << 10;
constexpr size_t kBatch = 16;

kvtier_store_t* open_store(const std::string& config) {
  kvtier_store_t* s = nullptr;
  EXPECT_EQ(kvtier_open(config.c_str(), &s), KVTIER_OK) << kvtier_last_error();
  return s;
}

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
        batch.push_back({kvtier_test::make_key("b" + std::to_string(b), i),
                         kvtier_test::random_bytes(kPage), b});
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

class Cluster : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!kvtier_test::etcd_installed())
      GTEST_SKIP() << "etcd is not installed (Debian: apt-get install etcd-server etcd-client; "
                      "cmake/install-deps.sh installs it)";
    const std::string dir = kvtier_test::test_dir() + "/" +
                            ::testing::UnitTest::GetInstance()->current_test_info()->name();
    mkdir(dir.c_str(), 0700);
    etcd_ = std::make_unique<EtcdProcess>(dir);
    ASSERT_TRUE(etcd_->start()) << "etcd did not start; see " << dir << "/etcd.log";
    cluster_ = "c" + std::to_string(getpid());
  }

  // A server that registers in this test's cluster with a lease of 2 s.
  std::unique_ptr<ServerProcess> join() {
    return std::make_unique<ServerProcess>(
        "256MiB", "", 0,
        std::vector<std::string>{"--etcd", etcd_->endpoint(), "--cluster", cluster_, "--etcd-ttl",
                                 "2"});
  }
  std::string prefix() const { return "/kvtier/" + cluster_ + "/servers/"; }

  // Waits (up to 20 s) until etcd lists exactly these servers.
  bool members_are(std::vector<const ServerProcess*> servers) {
    std::set<std::string> want;
    for (auto* s : servers) want.insert(prefix() + s->address());
    for (int i = 0; i < 200; ++i) {
      auto keys = etcd_->keys(prefix());
      if (std::set<std::string>(keys.begin(), keys.end()) == want) return true;
      std::this_thread::sleep_for(milliseconds(100));
    }
    return false;
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
  std::vector<Page> pages;
  for (size_t i = 0; i < 64; ++i)
    pages.push_back({kvtier_test::make_key("k", i), kvtier_test::random_bytes(kPage), 0});
  std::vector<const char*> keys;
  std::vector<const void*> ptrs;
  for (auto& p : pages) {
    keys.push_back(p.key.c_str());
    ptrs.push_back(p.bytes.data());
  }
  std::vector<size_t> sizes(pages.size(), kPage);
  std::vector<int> res(pages.size());
  ASSERT_EQ(kvtier_batch_set(s, keys.data(), keys.size(), ptrs.data(), sizes.data(), res.data()),
            KVTIER_OK);
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
