// Several threads on one store at once, as the engine's prefetch, I/O and backup threads do.
// Every byte read is checked; run under ThreadSanitizer by the test command.
#include <gtest/gtest.h>
#include <kvtier/kvtier.h>

#include <sys/mman.h>

#include <atomic>
#include <thread>

#include "tests/common/server_process.h"
#include "tests/common/test_util.h"

namespace {

constexpr size_t kPage = 16 * 1024;

// The value of key k is derived from k, so any thread can check what it reads.
void value_of(size_t k, unsigned char* out) {
  std::mt19937_64 g(k * 7919 + 1);
  for (size_t i = 0; i < kPage; i += 8) {
    uint64_t v = g();
    std::memcpy(out + i, &v, 8);
  }
}

struct Chain {
  const char* label;
  const char* config;  // {dir}: a fresh folder; {server}: a kvtier-server on loopback
};
void PrintTo(const Chain& c, std::ostream* os) {
  *os << c.label;
}

class Concurrency : public ::testing::TestWithParam<Chain> {};

TEST_P(Concurrency, SetGetExistsRemoveFromManyThreads) {
  std::string config = kvtier_test::with_test_dir(GetParam().config);
  if (size_t p = config.find("{server}"); p != std::string::npos)
    config.replace(p, 8, kvtier_test::shared_server().address());
  kvtier_store_t* s = nullptr;
  const int rc = kvtier_open(config.c_str(), &s);
  if (rc == KVTIER_ERR_UNSUPPORTED) GTEST_SKIP() << kvtier_last_error();  // a tier not built
  ASSERT_EQ(rc, KVTIER_OK) << kvtier_last_error();
  kvtier_clear(s);
  constexpr int kThreads = 6;
  constexpr size_t kKeys = 256;
  std::vector<std::string> keys;
  for (size_t k = 0; k < kKeys; ++k) keys.push_back(kvtier_test::make_key("conc", k));
  // A registered pool for the zero-copy threads: one page per thread.
  std::vector<unsigned char> pool(kThreads * kPage * 2);
  ASSERT_EQ(kvtier_register_buffer(s, pool.data(), pool.size()), KVTIER_OK);

  std::atomic<size_t> verified{0}, failures{0};
  auto worker = [&](int t) {
    std::mt19937_64 g(t);
    std::vector<unsigned char> val(kPage), got(kPage);
    unsigned char* mine = pool.data() + t * kPage * 2;
    for (int it = 0; it < 400; ++it) {
      const size_t k = g() % kKeys;
      const char* key = keys[k].c_str();
      const int op = static_cast<int>(g() % 10);
      int r = 0;
      if (op < 3) {
        value_of(k, val.data());
        const void* v = val.data();
        size_t sz = kPage;
        if (t % 2) {  // zero-copy from the pool in two fragments
          std::memcpy(mine, val.data(), kPage);
          void* ptrs[2] = {mine, mine + 1000};
          size_t sizes[2] = {1000, kPage - 1000};
          if (kvtier_batch_set_v1(s, &key, 1, ptrs, sizes, 2, &r) != KVTIER_OK || r) ++failures;
        } else if (kvtier_batch_set(s, &key, 1, &v, &sz, &r) != KVTIER_OK || r) {
          ++failures;
        }
      } else if (op < 7) {
        int64_t gr = 0;
        void* b = got.data();
        size_t cap = kPage;
        if (t % 2) {
          void* ptrs[1] = {mine + kPage};
          int r1 = 0;
          if (kvtier_batch_get_v1(s, &key, 1, ptrs, &cap, 1, &r1) != KVTIER_OK) ++failures;
          gr = r1 == KVTIER_OK ? static_cast<int64_t>(kPage) : r1;
          std::memcpy(got.data(), mine + kPage, kPage);
        } else if (kvtier_batch_get(s, &key, 1, &b, &cap, &gr) != KVTIER_OK) {
          ++failures;
        }
        if (gr == static_cast<int64_t>(kPage)) {
          value_of(k, val.data());
          if (got != val) ++failures;
          ++verified;
        } else if (gr != KVTIER_ERR_NOT_FOUND) {
          ++failures;
        }
      } else if (op < 9) {
        size_t hits = 0;
        const char* two[2] = {key, keys[(k + 1) % kKeys].c_str()};
        if (kvtier_batch_exists(s, two, 2, &hits) != KVTIER_OK || hits > 2) ++failures;
      } else {
        if (kvtier_batch_remove(s, &key, 1, &r) != KVTIER_OK ||
            (r != KVTIER_OK && r != KVTIER_ERR_NOT_FOUND))
          ++failures;
      }
    }
  };
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) threads.emplace_back(worker, t);
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0u);
  EXPECT_GT(verified.load(), 0u) << "no read hit anything: the test checked nothing";
  char* json = nullptr;
  ASSERT_EQ(kvtier_stats_json(s, &json), KVTIER_OK);
  kvtier_free(json);
  kvtier_close(s);
}

kvtier_store_t* open_chain(const Chain& chain) {
  std::string config = kvtier_test::with_test_dir(chain.config);
  if (size_t p = config.find("{server}"); p != std::string::npos)
    config.replace(p, 8, kvtier_test::shared_server().address());
  kvtier_store_t* s = nullptr;
  if (kvtier_open(config.c_str(), &s) != KVTIER_OK) return nullptr;
  kvtier_clear(s);
  return s;
}

// An engine detaches its backend (kvtier_close) while its threads are inside calls on it: close
// waits for them, every call before it reads exact bytes, every call after it is refused with
// KVTIER_ERR_CLOSED in each result, and nothing touches freed memory (ASan checks that).
TEST_P(Concurrency, CloseWhileThreadsAreInCallsWaitsThenRefusesThem) {
  kvtier_store_t* s = open_chain(GetParam());
  if (!s) GTEST_SKIP() << kvtier_last_error();
  constexpr int kThreads = 3;
  constexpr size_t kKeys = 8;
  std::vector<std::string> keys;
  for (size_t k = 0; k < kKeys; ++k) keys.push_back(kvtier_test::make_key("close", k));
  auto ks = kvtier_test::c_keys(keys);
  std::atomic<int> running{0};
  std::atomic<size_t> verified{0}, closed{0}, wrong{0};
  auto engine = [&] {
    std::vector<std::vector<unsigned char>> vals(kKeys, std::vector<unsigned char>(kPage));
    std::vector<std::vector<unsigned char>> got(kKeys, std::vector<unsigned char>(kPage));
    std::vector<const void*> vp;
    std::vector<void*> gp;
    std::vector<size_t> sizes(kKeys, kPage);
    for (size_t k = 0; k < kKeys; ++k) {
      value_of(k, vals[k].data());
      vp.push_back(vals[k].data());
      gp.push_back(got[k].data());
    }
    ++running;
    for (;;) {
      std::vector<int> r(kKeys, 1);
      std::vector<int64_t> g(kKeys, 1);
      const int rc = kvtier_batch_set(s, ks.data(), kKeys, vp.data(), sizes.data(), r.data());
      const int gc = kvtier_batch_get(s, ks.data(), kKeys, gp.data(), sizes.data(), g.data());
      if (rc == KVTIER_ERR_CLOSED && gc == KVTIER_ERR_CLOSED) {
        for (size_t k = 0; k < kKeys; ++k)
          if (r[k] != KVTIER_ERR_CLOSED || g[k] != KVTIER_ERR_CLOSED) ++wrong;
        ++closed;
        return;
      }
      for (size_t k = 0; k < kKeys; ++k) {
        if (g[k] == static_cast<int64_t>(kPage)) {
          if (got[k] != vals[k]) ++wrong;
          ++verified;
        } else if (g[k] != KVTIER_ERR_NOT_FOUND && g[k] != KVTIER_ERR_CLOSED) {
          ++wrong;
        }
      }
    }
  };
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) threads.emplace_back(engine);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while ((running < kThreads || verified < 3 * kKeys) && std::chrono::steady_clock::now() < deadline)
    std::this_thread::yield();
  EXPECT_GE(verified.load(), 3 * kKeys) << "the engine threads read nothing before the close";
  kvtier_close(s);
  for (auto& th : threads) th.join();
  EXPECT_EQ(wrong.load(), 0u);
  EXPECT_EQ(closed.load(), size_t{kThreads});
  // The handle's bytes are kept: a late call and a second close are answered, not a crash.
  size_t hits = 7;
  EXPECT_EQ(kvtier_batch_exists(s, ks.data(), kKeys, &hits), KVTIER_ERR_CLOSED);
  EXPECT_NE(std::string(kvtier_last_error()).find("closed"), std::string::npos);
  kvtier_close(s);
}

// kvtier_unregister_buffer while another thread's get is reading into that region: unregister
// returns only once no call moves bytes there, so the engine may free the memory at once. Here
// the memory is made inaccessible the moment unregister returns: a late byte is a crash.
TEST_P(Concurrency, UnregisterWaitsForTheGetsThatWriteIntoTheRegion) {
  kvtier_store_t* s = open_chain(GetParam());
  if (!s) GTEST_SKIP() << kvtier_last_error();
  constexpr size_t kKeys = 16;
  std::vector<std::string> keys;
  for (size_t k = 0; k < kKeys; ++k) keys.push_back(kvtier_test::make_key("unreg", k));
  auto ks = kvtier_test::c_keys(keys);
  std::vector<std::vector<unsigned char>> vals(kKeys, std::vector<unsigned char>(kPage));
  std::vector<const void*> vp;
  std::vector<size_t> sizes(kKeys, kPage);
  for (size_t k = 0; k < kKeys; ++k) {
    value_of(k, vals[k].data());
    vp.push_back(vals[k].data());
  }
  std::vector<int> r(kKeys);
  ASSERT_EQ(kvtier_batch_set(s, ks.data(), kKeys, vp.data(), sizes.data(), r.data()), KVTIER_OK);
  const size_t len = kKeys * kPage;
  auto* pool = static_cast<unsigned char*>(
      mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  ASSERT_NE(pool, MAP_FAILED);
  std::vector<void*> frags;
  for (size_t k = 0; k < kKeys; ++k) frags.push_back(pool + k * kPage);
  std::atomic<bool> registered{false}, stop{false};
  std::atomic<size_t> verified{0}, wrong{0};
  std::thread getter([&] {
    std::vector<int> g(kKeys);
    while (!stop) {
      if (!registered) continue;
      if (kvtier_batch_get_v1(s, ks.data(), kKeys, frags.data(), sizes.data(), kKeys, g.data()) !=
          KVTIER_OK)
        ++wrong;
      for (size_t k = 0; k < kKeys; ++k) {
        if (g[k] != KVTIER_OK && g[k] != KVTIER_ERR_NOT_REGISTERED && g[k] != KVTIER_ERR_NOT_FOUND)
          ++wrong;
        if (g[k] == KVTIER_OK) ++verified;  // bytes checked below, while the region is held
      }
    }
  });
  for (int round = 0; round < 200; ++round) {
    ASSERT_EQ(mprotect(pool, len, PROT_READ | PROT_WRITE), 0);
    ASSERT_EQ(kvtier_register_buffer(s, pool, len), KVTIER_OK);
    registered = true;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
    registered = false;
    ASSERT_EQ(kvtier_unregister_buffer(s, pool), KVTIER_OK);
    ASSERT_EQ(mprotect(pool, len, PROT_NONE), 0);  // as if freed: a late write faults
  }
  stop = true;
  getter.join();
  ASSERT_EQ(mprotect(pool, len, PROT_READ | PROT_WRITE), 0);
  ASSERT_EQ(kvtier_register_buffer(s, pool, len), KVTIER_OK);
  std::vector<int> g(kKeys);
  ASSERT_EQ(kvtier_batch_get_v1(s, ks.data(), kKeys, frags.data(), sizes.data(), kKeys, g.data()),
            KVTIER_OK);
  for (size_t k = 0; k < kKeys; ++k) {
    ASSERT_EQ(g[k], KVTIER_OK);
    EXPECT_EQ(std::memcmp(pool + k * kPage, vals[k].data(), kPage), 0) << k;
  }
  EXPECT_EQ(wrong.load(), 0u);
  EXPECT_GT(verified.load(), 0u) << "no get overlapped a registration: the test checked nothing";
  ASSERT_EQ(kvtier_unregister_buffer(s, pool), KVTIER_OK);
  munmap(pool, len);
  kvtier_close(s);
}

// write_back moves pages from the memory tier down to the file tier as it evicts them: a page
// acknowledged by a put must be found, with its bytes, at every instant of that move.
TEST(WriteBack, APageMovingDownIsFoundThroughout) {
  const std::string config = kvtier_test::with_test_dir(
      "tiers=memory,file;write_policy=write_back;memory_capacity=256KiB;"
      "file_dir={dir}/moving;file_capacity=256MiB");
  kvtier_store_t* s = nullptr;
  const int rc = kvtier_open(config.c_str(), &s);
  if (rc == KVTIER_ERR_UNSUPPORTED) GTEST_SKIP() << kvtier_last_error();
  ASSERT_EQ(rc, KVTIER_OK) << kvtier_last_error();
  constexpr size_t kKeys = 1500;
  std::vector<std::string> keys;
  for (size_t k = 0; k < kKeys; ++k) keys.push_back(kvtier_test::make_key("moving", k));
  std::atomic<size_t> acked{0};
  std::atomic<size_t> checked{0}, missed{0}, wrong{0};
  std::thread writer([&] {
    std::vector<unsigned char> val(kPage);
    for (size_t k = 0; k < kKeys; ++k) {
      value_of(k, val.data());
      const char* key = keys[k].c_str();
      const void* v = val.data();
      size_t sz = kPage;
      int r = 1;
      if (kvtier_batch_set(s, &key, 1, &v, &sz, &r) != KVTIER_OK || r != KVTIER_OK) ++wrong;
      acked = k + 1;
    }
  });
  auto reader = [&](int seed) {
    std::mt19937_64 g(seed);
    std::vector<unsigned char> got(kPage), want(kPage);
    while (acked < kKeys) {
      const size_t n = acked;
      if (n == 0) continue;
      const size_t k = n - 1 - g() % std::min<size_t>(n, 64);  // the pages being demoted now
      const char* key = keys[k].c_str();
      int present = 1;
      if (kvtier_batch_exists_each(s, &key, 1, &present) != KVTIER_OK || present != KVTIER_OK)
        ++missed;
      void* b = got.data();
      size_t cap = kPage;
      int64_t r = 0;
      kvtier_batch_get(s, &key, 1, &b, &cap, &r);
      value_of(k, want.data());
      if (r != static_cast<int64_t>(kPage)) ++missed;
      else if (got != want) ++wrong;
      ++checked;
    }
  };
  std::thread r1(reader, 1), r2(reader, 2);
  writer.join();
  r1.join();
  r2.join();
  EXPECT_GT(checked.load(), 100u);
  EXPECT_EQ(missed.load(), 0u) << "of " << checked.load() << " lookups of acknowledged pages";
  EXPECT_EQ(wrong.load(), 0u);
  kvtier_close(s);
}

// A clean close under write_back writes down the pages only the memory tier holds: a store
// opened on the file tier alone then reads every one.
TEST(WriteBack, ACleanCloseWritesDownWhatOnlyMemoryHeld) {
  const std::string dir = kvtier_test::with_test_dir("{dir}/closing");
  kvtier_store_t* s = nullptr;
  const int rc = kvtier_open(("tiers=memory,file;write_policy=write_back;memory_capacity=64MiB;"
                              "file_capacity=64MiB;file_dir=" + dir).c_str(), &s);
  if (rc == KVTIER_ERR_UNSUPPORTED) GTEST_SKIP() << kvtier_last_error();
  ASSERT_EQ(rc, KVTIER_OK) << kvtier_last_error();
  constexpr size_t kKeys = 40;
  std::vector<std::string> keys;
  std::vector<std::vector<unsigned char>> vals;
  for (size_t k = 0; k < kKeys; ++k) {
    keys.push_back(kvtier_test::make_key("closing", k));
    vals.push_back(kvtier_test::random_bytes(kPage));
    const char* key = keys[k].c_str();
    const void* v = vals[k].data();
    size_t sz = kPage;
    int r = 1;
    ASSERT_EQ(kvtier_batch_set(s, &key, 1, &v, &sz, &r), KVTIER_OK);
    ASSERT_EQ(r, KVTIER_OK);
  }
  kvtier_close(s);
  ASSERT_EQ(kvtier_open(("tiers=file;file_capacity=64MiB;file_dir=" + dir).c_str(), &s), KVTIER_OK);
  std::vector<unsigned char> got(kPage);
  for (size_t k = 0; k < kKeys; ++k) {
    const char* key = keys[k].c_str();
    void* b = got.data();
    size_t cap = kPage;
    int64_t r = 0;
    ASSERT_EQ(kvtier_batch_get(s, &key, 1, &b, &cap, &r), KVTIER_OK);
    ASSERT_EQ(r, static_cast<int64_t>(kPage)) << k;
    EXPECT_EQ(got, vals[k]) << k;
  }
  kvtier_close(s);
}

// Small budgets, so eviction (and, under write_back, demotion) runs concurrently with the rest.
INSTANTIATE_TEST_SUITE_P(
    Chains, Concurrency,
    ::testing::Values(Chain{"memory", "tiers=memory;memory_capacity=2MiB"},
                      Chain{"file", "tiers=file;file_dir={dir}/file;file_capacity=2MiB"},
                      Chain{"memory_file_write_back",
                            "tiers=memory,file;write_policy=write_back;memory_capacity=1MiB;"
                            "file_dir={dir}/wb;file_capacity=3MiB"},
                      Chain{"remote_tcp",
                            "tiers=remote;remote_transport=tcp;remote_servers={server}"},
                      Chain{"memory_remote",
                            "tiers=memory,remote;memory_capacity=1MiB;"
                            "remote_transport=tcp;remote_servers={server}"}),
    [](const auto& info) { return std::string(info.param.label); });

}  // namespace
