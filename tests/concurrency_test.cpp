// Several threads on one store at once, as the engine's prefetch, I/O and backup threads do.
// Every byte read is checked; run under ThreadSanitizer by the test command.
#include <gtest/gtest.h>
#include <kvtier/kvtier.h>

#include <atomic>
#include <thread>

#include "server_process.h"
#include "test_util.h"

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
