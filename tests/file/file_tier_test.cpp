// The file tier through the C ABI: restart, SIGKILL mid-batch, rot, tmpfs, a full disk, two
// processes on one namespace (more in file_shared_test.cpp), aligned and unaligned pools, and
// the memory-over-file chain.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <kvtier/kvtier.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <fstream>
#include <thread>

#include "tests/file/file_pages.h"
#include "tests/common/store.h"
#include "tests/common/test_util.h"

namespace fs = std::filesystem;
using kvtier_test::page_key;
using kvtier_test::page_value;

namespace {

using kvtier_test::open_store;

std::string fresh_dir(const std::string& name) {
  std::string d = kvtier_test::test_dir() + "/" + name;
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

void set_pages(kvtier_store_t* s, const std::vector<size_t>& ks, std::vector<int>* res = nullptr) {
  std::vector<std::string> keys;
  std::vector<std::vector<unsigned char>> vals;
  std::vector<const char*> ck;
  std::vector<const void*> ptrs;
  std::vector<size_t> sizes;
  for (size_t k : ks) {
    keys.push_back(page_key(k));
    vals.push_back(page_value(k));
  }
  for (size_t i = 0; i < ks.size(); ++i) {
    ck.push_back(keys[i].c_str());
    ptrs.push_back(vals[i].data());
    sizes.push_back(vals[i].size());
  }
  std::vector<int> r(ks.size());
  ASSERT_EQ(kvtier_batch_set(s, ck.data(), ks.size(), ptrs.data(), sizes.data(), r.data()),
            KVTIER_OK);
  if (res) {
    *res = r;
  } else {
    for (int x : r) ASSERT_EQ(x, KVTIER_OK) << kvtier_last_error();
  }
}

// Reads page k: 1 if it reads back exactly, 0 if it is a miss; fails the test on wrong bytes.
int read_page(kvtier_store_t* s, size_t k) {
  const auto want = page_value(k);
  std::vector<unsigned char> buf;
  const int64_t r = kvtier_test::get_page(s, k, &buf);
  if (r == KVTIER_ERR_NOT_FOUND) return 0;
  EXPECT_EQ(r, static_cast<int64_t>(want.size()))
      << "page " << k << ": " << kvtier_error_name(static_cast<int>(r));
  EXPECT_EQ(0, memcmp(buf.data(), want.data(), want.size())) << "WRONG BYTES for page " << k;
  return 1;
}

struct Child {
  pid_t pid = -1;
  // Starts the helper and waits for its "ready" line; `env` ("NAME=value") is added to its
  // environment.
  Child(std::vector<std::string> args, const std::string& env = "") {
    int fds[2];
    EXPECT_EQ(pipe(fds), 0);
    pid = fork();
    if (pid == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlive a test that crashed
      dup2(fds[1], 1);
      close(fds[0]);
      if (!env.empty()) putenv(const_cast<char*>(env.c_str()));
      std::vector<char*> argv{const_cast<char*>(KVTIER_FILE_WRITER)};
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(KVTIER_FILE_WRITER, argv.data());
      _exit(127);
    }
    close(fds[1]);
    char line[16] = {};
    ssize_t n = read(fds[0], line, sizeof line - 1);
    close(fds[0]);
    EXPECT_GT(n, 0) << "helper did not start";
  }
  void kill_now() {
    if (pid > 0) {
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
      pid = -1;
    }
  }
  ~Child() { kill_now(); }
};

std::string stats(kvtier_store_t* s) {
  char* j = nullptr;
  EXPECT_EQ(kvtier_stats_json(s, &j), KVTIER_OK);
  std::string out(j ? j : "");
  kvtier_free(j);
  return out;
}

TEST(FileTier, RestartKeepsTheContents) {
  const std::string cfg = "tiers=file;file_dir=" + fresh_dir("restart");
  std::vector<size_t> ks;
  for (size_t k = 0; k < 60; ++k) ks.push_back(k);
  kvtier_store_t* s = open_store(cfg);
  set_pages(s, ks);
  kvtier_close(s);
  s = open_store(cfg);
  EXPECT_NE(stats(s).find("\"name\":\"file\",\"keys\":60"), std::string::npos) << stats(s);
  for (size_t k : ks) EXPECT_EQ(read_page(s, k), 1) << k;
  // Removed pages stay removed across a restart.
  const std::string k3 = page_key(3);
  const char* ck = k3.c_str();
  int r;
  ASSERT_EQ(kvtier_batch_remove(s, &ck, 1, &r), KVTIER_OK);
  ASSERT_EQ(r, KVTIER_OK);
  kvtier_close(s);
  s = open_store(cfg);
  EXPECT_EQ(read_page(s, 3), 0);
  EXPECT_EQ(read_page(s, 4), 1);
  ASSERT_EQ(kvtier_clear(s), KVTIER_OK);
  kvtier_close(s);
  s = open_store(cfg);
  EXPECT_EQ(read_page(s, 4), 0) << "clear is durable too";
  kvtier_close(s);
}

TEST(FileTier, SigkillMidBatchNeverYieldsWrongBytes) {
  const std::string dir = fresh_dir("crash");
  const std::string cfg = "tiers=file;file_dir=" + dir;
  std::mt19937_64 g(std::random_device{}());
  size_t present_total = 0;
  for (int round = 0; round < 24; ++round) {
    {
      Child writer({"write", dir, std::to_string(g())});
      std::this_thread::sleep_for(std::chrono::milliseconds(5 + g() % 120));
      writer.kill_now();
    }
    kvtier_store_t* s = open_store(cfg);
    ASSERT_NE(s, nullptr);
    for (size_t k = 0; k < kvtier_test::kUniverse; ++k) present_total += read_page(s, k);
    kvtier_close(s);
    if (HasFailure()) FAIL() << "round " << round;
  }
  EXPECT_GT(present_total, 0u) << "the writer never got a page down: the test checked nothing";
}

TEST(FileTier, FlippedBytesAreAMissNotWrongBytes) {
  const std::string dir = fresh_dir("rot");
  const std::string cfg = "tiers=file;file_dir=" + dir;
  kvtier_store_t* s = open_store(cfg);
  set_pages(s, {0});  // 16 KiB page: slot class 20 KiB
  kvtier_close(s);
  std::string file, index;
  for (auto& e : fs::recursive_directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    if (name.rfind("pages-", 0) == 0 && name.ends_with(".dat")) file = e.path();
    if (name.rfind("pages-", 0) == 0 && name.ends_with(".idx")) index = e.path();
  }
  ASSERT_FALSE(file.empty());
  ASSERT_FALSE(index.empty());
  {
    std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(1234);
    char c;
    f.read(&c, 1);
    c ^= 0x10;
    f.seekp(1234);
    f.write(&c, 1);
  }
  s = open_store(cfg);
  EXPECT_EQ(read_page(s, 0), 0) << "a rotten page must read as a miss";
  EXPECT_NE(stats(s).find("\"errors\":1"), std::string::npos) << stats(s);
  set_pages(s, {0});  // and can be written again
  EXPECT_EQ(read_page(s, 0), 1);
  kvtier_close(s);
  // A rotten record: the page is not in the index after a restart.
  {
    std::fstream f(index, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(20);
    f.write("\x7f", 1);
  }
  s = open_store(cfg);
  size_t hits = 1;
  const std::string key = kvtier_test::page_key(0);
  const char* k = key.c_str();
  ASSERT_EQ(kvtier_batch_exists(s, &k, 1, &hits), KVTIER_OK);
  EXPECT_EQ(hits, 0u) << "a page whose record fails its checksum is not indexed";
  EXPECT_EQ(read_page(s, 0), 0);
  kvtier_close(s);
}

TEST(FileTier, FilesOfAnOlderFormatAreDropped) {
  const std::string dir = fresh_dir("old-format");
  const std::string cfg = "tiers=file;file_dir=" + dir;
  kvtier_store_t* s = open_store(cfg);
  set_pages(s, {1, 2});
  kvtier_close(s);
  std::string ns_dir;
  for (auto& e : fs::directory_iterator(dir)) ns_dir = e.path();
  ASSERT_FALSE(ns_dir.empty());
  { std::ofstream(ns_dir + "/slots-20480.dat") << std::string(20480, 'x'); }
  s = open_store(cfg);
  EXPECT_FALSE(fs::exists(ns_dir + "/slots-20480.dat"));
  EXPECT_EQ(read_page(s, 1), 1);
  EXPECT_EQ(read_page(s, 2), 1);
  kvtier_close(s);
}

struct Tmpfs {
  std::string dir;
  bool mounted = false;
  explicit Tmpfs(const std::string& name, const char* size) : dir(fresh_dir(name)) {
    mounted = mount("tmpfs", dir.c_str(), "tmpfs", 0, size) == 0;
  }
  ~Tmpfs() {
    if (mounted) umount2(dir.c_str(), MNT_DETACH);
  }
};

TEST(FileTier, WorksOnTmpfsWithOrWithoutODirect) {
  Tmpfs t("tmpfs", "size=64m");
  if (!t.mounted) GTEST_SKIP() << "mounting a tmpfs needs root (CAP_SYS_ADMIN)";
  kvtier_store_t* s = open_store("tiers=file;file_dir=" + t.dir + "/kv");
  set_pages(s, {0, 1, 2, 3, 4});
  for (size_t k = 0; k < 5; ++k) EXPECT_EQ(read_page(s, k), 1);
  kvtier_close(s);
}

TEST(FileTier, FullDiskFailsKeysAndKeepsWorking) {
  Tmpfs t("full", "size=2m");
  if (!t.mounted) GTEST_SKIP() << "mounting a size-limited tmpfs needs root (CAP_SYS_ADMIN)";
  kvtier_store_t* s = open_store("tiers=file;file_capacity=1GiB;file_dir=" + t.dir + "/kv");
  // Pages of one size class (k % 5 == 0, k % 3 == 0: 16 KiB) until the disk is full: the
  // tier then reuses its least recently used slots.
  std::vector<size_t> same;
  for (size_t k = 0; k < 3000; k += 15) same.push_back(k);  // 200 pages, 4 MB
  for (size_t k : same) set_pages(s, {k});
  EXPECT_EQ(stats(s).find("\"evictions\":0"), std::string::npos)
      << "a full disk should have made room by eviction: " << stats(s);
  // A page of a size class with nothing to evict fails alone; the rest of its batch goes in.
  std::vector<int> res;
  set_pages(s, {4, 15}, &res);  // 4: an 80 KiB page, a class of its own
  EXPECT_EQ(res[0], KVTIER_ERR_NO_SPACE) << kvtier_error_name(res[0]);
  EXPECT_EQ(res[1], KVTIER_OK);
  // Whatever is present reads back exactly.
  size_t present = 0;
  for (size_t k : same) present += read_page(s, k);
  EXPECT_GT(present, 10u);
  // Clearing frees the disk; the big page fits again.
  ASSERT_EQ(kvtier_clear(s), KVTIER_OK);
  set_pages(s, {4});
  EXPECT_EQ(read_page(s, 4), 1);
  kvtier_close(s);
}

TEST(FileTier, ProcessesShareTheNamespaceAndStoresOfOneProcessShareItsHandle) {
  const std::string dir = fresh_dir("shared");
  {
    Child holder({"hold", dir});  // another process has the namespace open: no BUSY
    kvtier_store_t* s = open_store("tiers=file;file_dir=" + dir);
    set_pages(s, {7});
    EXPECT_EQ(read_page(s, 7), 1);
    kvtier_close(s);
  }
  kvtier_store_t* s = open_store("tiers=file;file_dir=" + dir);
  kvtier_store_t* s2 = open_store("tiers=file;file_dir=" + dir);  // same process: shared
  set_pages(s, {8});
  EXPECT_EQ(read_page(s2, 7), 1);
  EXPECT_EQ(read_page(s2, 8), 1);
  kvtier_close(s);
  kvtier_close(s2);
}

TEST(FileTier, AlignedAndUnalignedPoolsRoundTrip) {
  kvtier_store_t* s = open_store("tiers=file;file_dir=" + fresh_dir("align"));
  const size_t page = 256 * 1024, n = 8;
  void* mem = nullptr;
  ASSERT_EQ(posix_memalign(&mem, 4096, 2 * n * page + 8192), 0);
  // 0: 4 KiB-aligned; 512: aligned only to a sector (direct where the disk's DMA alignment
  // allows, as on NVMe); 64: bounce buffers on most disks; 3: odd, always bounce buffers.
  for (size_t shift : {size_t{0}, size_t{512}, size_t{64}, size_t{3}}) {
    auto* base = static_cast<unsigned char*>(mem) + shift;
    kvtier_test::fill_random(base, 2 * n * page);
    ASSERT_EQ(kvtier_register_buffer(s, base, 2 * n * page), KVTIER_OK);
    std::vector<std::string> keys;
    for (size_t i = 0; i < n; ++i)
      keys.push_back("align-" + std::to_string(shift) + "-" + std::to_string(i));
    auto ck = kvtier_test::c_keys(keys);
    // Two fragments per page (K and V halves), as page_first pools give.
    std::vector<void*> src, dst;
    std::vector<size_t> sizes(2 * n, page / 2);
    for (size_t i = 0; i < n; ++i) {
      src.push_back(base + i * page);
      src.push_back(base + i * page + page / 2);
      dst.push_back(base + (n + i) * page);
      dst.push_back(base + (n + i) * page + page / 2);
    }
    std::vector<int> res(n);
    ASSERT_EQ(kvtier_batch_set_v1(s, ck.data(), n, src.data(), sizes.data(), 2 * n, res.data()),
              KVTIER_OK);
    for (int r : res) ASSERT_EQ(r, KVTIER_OK);
    ASSERT_EQ(kvtier_batch_get_v1(s, ck.data(), n, dst.data(), sizes.data(), 2 * n, res.data()),
              KVTIER_OK);
    for (int r : res) ASSERT_EQ(r, KVTIER_OK);
    EXPECT_EQ(0, memcmp(base, base + n * page, n * page)) << "shift " << shift;
    ASSERT_EQ(kvtier_unregister_buffer(s, base), KVTIER_OK);
  }
  free(mem);
  kvtier_close(s);
}

TEST(FileTier, MemoryOverFileChain) {
  const std::string dir = fresh_dir("chain");
  // write_back: the memory tier holds ~3 pages; evicted ones go down to the file tier.
  const std::string cfg =
      "tiers=memory,file;write_policy=write_back;memory_capacity=64KiB;file_dir=" + dir;
  kvtier_store_t* s = open_store(cfg);
  std::vector<size_t> ks;
  for (size_t k = 0; k < 20; k += 5) ks.push_back(k);  // 16 KiB pages
  for (size_t k : ks) set_pages(s, {k});
  for (size_t k : ks) EXPECT_EQ(read_page(s, k), 1);
  kvtier_close(s);
  // After a restart the memory tier is empty and the file tier serves and promotes.
  s = open_store("tiers=memory,file;file_dir=" + dir);
  size_t on_disk = 0;
  for (size_t k : ks) on_disk += read_page(s, k);
  EXPECT_GE(on_disk, 1u);
  EXPECT_NE(stats(s).find("\"name\":\"memory\",\"keys\":" + std::to_string(on_disk)),
            std::string::npos)
      << stats(s);
  kvtier_close(s);
}

TEST(FileTier, ZstdStoresKvLikePagesSmallerAndReadsThemBack) {
  const size_t page = 256 * 1024, n = 12;
  std::vector<std::vector<unsigned char>> vals(n, std::vector<unsigned char>(page));
  for (auto& v : vals) kvtier_test::make_kv_like(v.data(), page);
  std::vector<std::string> keys;
  for (size_t i = 0; i < n; ++i) keys.push_back("zstd-" + std::to_string(i));
  auto ck = kvtier_test::c_keys(keys);
  std::vector<const void*> ptrs;
  std::vector<size_t> sizes(n, page);
  for (auto& v : vals) ptrs.push_back(v.data());
  auto bytes_of = [](const std::string& js) {
    size_t at = js.find("\"bytes\":");
    return std::stoull(js.substr(at + 8));
  };
  uint64_t plain_bytes = 0, zstd_bytes = 0;
  for (const char* comp : {"none", "zstd:1"}) {
    const std::string dir = fresh_dir(std::string("zstd-") + comp);
    const std::string cfg = "tiers=file;file_compression=" + std::string(comp) + ";file_dir=" + dir;
    kvtier_store_t* s = open_store(cfg);
    std::vector<int> res(n);
    ASSERT_EQ(kvtier_batch_set(s, ck.data(), n, ptrs.data(), sizes.data(), res.data()), KVTIER_OK);
    for (int r : res) ASSERT_EQ(r, KVTIER_OK);
    (std::string(comp) == "none" ? plain_bytes : zstd_bytes) = bytes_of(stats(s));
    kvtier_close(s);
    s = open_store(cfg);  // and after a restart
    for (size_t i = 0; i < n; ++i) {
      std::vector<unsigned char> out(page + 100, 0);
      void* b = out.data();
      size_t cap = out.size();
      int64_t r;
      ASSERT_EQ(kvtier_batch_get(s, &ck[i], 1, &b, &cap, &r), KVTIER_OK);
      ASSERT_EQ(r, static_cast<int64_t>(page)) << comp;
      ASSERT_EQ(0, memcmp(out.data(), vals[i].data(), page)) << comp << " page " << i;
    }
    kvtier_close(s);
    if (std::string(comp) == "none") continue;
    // A damaged frame is a miss, never wrong bytes.
    std::string file;
    for (auto& e : fs::recursive_directory_iterator(dir))
      if (e.path().filename().string().ends_with(".dat")) file = e.path();
    {
      std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
      for (std::streamoff off = 100; off < 20000; off += 997) {
        f.seekp(off);
        f.write("\x55", 1);
      }
    }
    s = open_store(cfg);
    size_t hits = 0;
    for (size_t i = 0; i < n; ++i) {
      std::vector<unsigned char> out(page, 0);
      void* b = out.data();
      size_t cap = out.size();
      int64_t r;
      ASSERT_EQ(kvtier_batch_get(s, &ck[i], 1, &b, &cap, &r), KVTIER_OK);
      if (r == KVTIER_ERR_NOT_FOUND) continue;
      ASSERT_EQ(r, static_cast<int64_t>(page));
      ASSERT_EQ(0, memcmp(out.data(), vals[i].data(), page)) << "WRONG BYTES, page " << i;
      ++hits;
    }
    EXPECT_LT(hits, n) << "the damaged page should have been a miss";
    kvtier_close(s);
  }
  EXPECT_LT(zstd_bytes, plain_bytes * 7 / 8) << "zstd " << zstd_bytes << " plain " << plain_bytes;
}

// ---- issue 11: one value per key, durable removal and clear, unreadable pages, bad files ----

// One key, one value: batch_set's result list, and what a get gives back (empty: a miss).
std::vector<int> set_values(kvtier_store_t* s, const std::vector<std::string>& keys,
                            const std::vector<std::vector<unsigned char>>& vals) {
  auto ck = kvtier_test::c_keys(keys);
  std::vector<const void*> ptrs;
  std::vector<size_t> sizes;
  for (const auto& v : vals) {
    ptrs.push_back(v.data());
    sizes.push_back(v.size());
  }
  std::vector<int> res(keys.size(), 99);
  EXPECT_EQ(kvtier_batch_set(s, ck.data(), keys.size(), ptrs.data(), sizes.data(), res.data()),
            KVTIER_OK);
  return res;
}

std::vector<unsigned char> get_value(kvtier_store_t* s, const std::string& key, int64_t* code) {
  std::vector<unsigned char> buf(1 << 20);
  const char* ck = key.c_str();
  void* b = buf.data();
  size_t cap = buf.size();
  EXPECT_EQ(kvtier_batch_get(s, &ck, 1, &b, &cap, code), KVTIER_OK);
  buf.resize(*code > 0 ? static_cast<size_t>(*code) : 0);
  return buf;
}

std::vector<unsigned char> get_value(kvtier_store_t* s, const std::string& key) {
  int64_t code = 0;
  return get_value(s, key, &code);
}

size_t present(kvtier_store_t* s, const std::string& key) {
  const char* ck = key.c_str();
  size_t hits = 99;
  EXPECT_EQ(kvtier_batch_exists(s, &ck, 1, &hits), KVTIER_OK);
  return hits;
}

TEST(FileTier, SameKeyTwiceInABatchKeepsTheFirstValueAcrossRestarts) {
  const std::string cfg = "tiers=file;file_dir=" + fresh_dir("same-key");
  const auto a = kvtier_test::random_bytes(20000), b = kvtier_test::random_bytes(20000);
  kvtier_store_t* s = open_store(cfg);
  EXPECT_EQ(set_values(s, {"D", "D"}, {a, b}), (std::vector<int>{0, 0}));
  EXPECT_EQ(get_value(s, "D"), a);
  kvtier_close(s);
  s = open_store(cfg);
  EXPECT_EQ(get_value(s, "D"), a) << "after a restart D must still read its first value";
  const char* k = "D";
  int r = 99;
  ASSERT_EQ(kvtier_batch_remove(s, &k, 1, &r), KVTIER_OK);
  ASSERT_EQ(r, KVTIER_OK);
  kvtier_close(s);
  s = open_store(cfg);
  int64_t code = 0;
  get_value(s, "D", &code);
  EXPECT_EQ(code, KVTIER_ERR_NOT_FOUND) << "a removed key came back after a restart";
  kvtier_close(s);
}

TEST(FileTier, RacingPutsOfOneKeyKeepOneValueAcrossRestarts) {
  const std::string cfg = "tiers=file;file_dir=" + fresh_dir("race");
  constexpr size_t kThreads = 8, kKeys = 32;
  std::vector<std::string> keys;
  for (size_t k = 0; k < kKeys; ++k) keys.push_back(kvtier_test::make_key("race", k));
  // Each thread its own value for every key, of one size class (so slots get reused).
  std::vector<std::vector<std::vector<unsigned char>>> vals(kThreads);
  for (auto& v : vals)
    for (size_t k = 0; k < kKeys; ++k) v.push_back(kvtier_test::random_bytes(12000));
  kvtier_store_t* s = open_store(cfg);
  std::atomic<size_t> bad{0};
  std::vector<std::thread> threads;
  for (size_t t = 0; t < kThreads; ++t)
    threads.emplace_back([&, t] {
      for (int round = 0; round < 3; ++round) {
        // Each thread its own order, so they collide on every key.
        std::vector<std::string> ks = keys;
        std::vector<std::vector<unsigned char>> vs = vals[t];
        std::rotate(ks.begin(), ks.begin() + (t * 5) % kKeys, ks.end());
        std::rotate(vs.begin(), vs.begin() + (t * 5) % kKeys, vs.end());
        for (int r : set_values(s, ks, vs)) bad += r != KVTIER_OK;
      }
    });
  for (auto& th : threads) th.join();
  EXPECT_EQ(bad.load(), 0u);
  std::vector<std::vector<unsigned char>> seen;
  for (size_t k = 0; k < kKeys; ++k) {
    seen.push_back(get_value(s, keys[k]));
    bool one_of_them = false;
    for (auto& v : vals) one_of_them |= v[k] == seen.back();
    EXPECT_TRUE(one_of_them) << "key " << k << " reads bytes no thread wrote";
  }
  kvtier_close(s);
  s = open_store(cfg);
  size_t changed = 0;
  for (size_t k = 0; k < kKeys; ++k) changed += get_value(s, keys[k]) != seen[k];
  EXPECT_EQ(changed, 0u) << "keys that read another value after a restart";
  EXPECT_NE(stats(s).find("\"keys\":32,"), std::string::npos) << stats(s);
  kvtier_close(s);
}

TEST(FileTier, WhatClearRemovedNeverComesBack) {
  const std::string cfg = "tiers=file;file_dir=" + fresh_dir("clear-race");
  kvtier_store_t* s = open_store(cfg);
  // Two writers put batches of 8 pages of one size class while the main thread clears. A page
  // whose write was in flight during the last clear must not come back after a restart.
  constexpr size_t kBatch = 8, kPerWriter = 1000000;
  std::atomic<bool> stop{false};
  std::atomic<size_t> put_ok{0};
  std::atomic<size_t> batches[2] = {0, 0};
  std::vector<std::thread> writers;
  for (size_t t = 0; t < 2; ++t)
    writers.emplace_back([&, t] {
      for (size_t b = 0; !stop; ++b) {
        std::vector<size_t> ks;
        for (size_t j = 0; j < kBatch; ++j) ks.push_back(15 * (t * kPerWriter + b * kBatch + j));
        std::vector<int> res;
        set_pages(s, ks, &res);
        for (int r : res) put_ok += r == KVTIER_OK;
        batches[t] = b + 1;
      }
    });
  for (int c = 0; c < 6; ++c) {
    std::this_thread::sleep_for(std::chrono::milliseconds(60));
    ASSERT_EQ(kvtier_clear(s), KVTIER_OK);
  }
  stop = true;
  for (auto& w : writers) w.join();
  ASSERT_GT(put_ok.load(), 100u) << "the writers got too little done to race the clears";
  set_pages(s, {15 * 3 * kPerWriter});  // a write after the clears (it grows the page file)
  // What is there now is all that may be there after a restart.
  std::vector<size_t> before{15 * 3 * kPerWriter};
  for (size_t t = 0; t < 2; ++t)
    for (size_t k = 0; k < batches[t] * kBatch; ++k)
      if (present(s, page_key(15 * (t * kPerWriter + k))))
        before.push_back(15 * (t * kPerWriter + k));
  kvtier_close(s);
  s = open_store(cfg);
  const std::string st = stats(s);
  EXPECT_NE(st.find("\"keys\":" + std::to_string(before.size()) + ","), std::string::npos)
      << before.size() << " keys before the restart: " << st;
  for (size_t k : before) EXPECT_EQ(read_page(s, k), 1) << k;
  EXPECT_NE(stats(s).find("\"errors\":0"), std::string::npos) << stats(s);
  kvtier_close(s);
}

std::string only_file(const std::string& dir, const std::string& suffix) {
  std::string out;
  for (auto& e : fs::recursive_directory_iterator(dir))
    if (e.path().filename().string().ends_with(suffix)) out = e.path();
  return out;
}

TEST(FileTier, UnreadablePageIsDroppedAndTheNextSetStoresIt) {
  const std::string dir = fresh_dir("cut-short");
  kvtier_store_t* s = open_store("tiers=file;file_dir=" + dir);
  set_pages(s, {0, 15, 30});  // 16 KiB pages: one size class, one file
  const std::string dat = only_file(dir, ".dat");
  ASSERT_FALSE(dat.empty());
  fs::resize_file(dat, 0);  // the page file cut short under the open store
  for (size_t k : {0, 15, 30}) {
    int64_t code = 0;
    get_value(s, page_key(k), &code);
    EXPECT_EQ(code, KVTIER_ERR_IO) << kvtier_error_name(static_cast<int>(code));
    EXPECT_EQ(present(s, page_key(k)), 0u) << "an unreadable page must not count as present";
  }
  set_pages(s, {0, 15, 30});  // the engine's re-backup stores them again
  for (size_t k : {0, 15, 30}) EXPECT_EQ(read_page(s, k), 1) << k;
  kvtier_close(s);
  s = open_store("tiers=file;file_dir=" + dir);
  for (size_t k : {0, 15, 30}) EXPECT_EQ(read_page(s, k), 1) << k;
  kvtier_close(s);
}

TEST(FileTier, PageFileThatCannotBeCreatedIsAnIoErrorNotNoMemory) {
  const std::string dir = fresh_dir("readonly");
  kvtier_store_t* s = open_store("tiers=file;file_dir=" + dir);
  set_pages(s, {0});  // 16 KiB: the 16 KiB class exists
  const std::string ns = fs::path(only_file(dir, ".dat")).parent_path();
  // A folder made read-only while the store is open. Root ignores the mode bits, so there the
  // next class's file name is taken by a folder instead: the same failed open.
  const bool root = geteuid() == 0;
  if (root)
    fs::create_directory(ns + "/pages-32768.dat");
  else
    fs::permissions(ns, fs::perms::owner_read | fs::perms::owner_exec);
  std::vector<int> res;
  set_pages(s, {6, 15}, &res);  // 6: a 32 KiB page, a new class; 15: 16 KiB, the old one
  EXPECT_EQ(res[0], KVTIER_ERR_IO) << kvtier_error_name(res[0]);
  EXPECT_EQ(res[1], KVTIER_OK) << kvtier_error_name(res[1]);
  EXPECT_EQ(read_page(s, 15), 1);
  kvtier_close(s);
  if (!root) fs::permissions(ns, fs::perms::owner_all);
}

TEST(FileTier, HugeSparsePageFileCostsWhatTheCapacityAllows) {
  const std::string dir = fresh_dir("sparse");
  const std::string cfg = "tiers=file;file_capacity=64MiB;file_dir=" + dir;
  kvtier_store_t* s = open_store(cfg);
  set_pages(s, {0});
  kvtier_close(s);
  const std::string ns = fs::path(only_file(dir, ".dat")).parent_path();
  { std::ofstream(ns + "/pages-4096.dat"); }
  fs::resize_file(ns + "/pages-4096.dat", 32ull << 30);  // sparse: 8 Mi slots of 4 KiB
  rusage before{}, after{};
  getrusage(RUSAGE_SELF, &before);
  s = open_store(cfg);
  getrusage(RUSAGE_SELF, &after);
  ASSERT_NE(s, nullptr);
  // 8 Mi slots cost ~72 MB of index to scan; the capacity allows 16 Ki (+ one growth step).
  EXPECT_LT(after.ru_maxrss - before.ru_maxrss, 24 * 1024) << "KiB more at peak";
  EXPECT_LE(fs::file_size(ns + "/pages-4096.dat"), 128ull << 20);
  EXPECT_EQ(read_page(s, 0), 1);
  set_pages(s, {3});
  EXPECT_EQ(read_page(s, 3), 1);
  kvtier_close(s);
}

// The fault-injection hook: every Nth read or write fails or moves short, every Nth sync fails.
// Under that, a store gives per-key codes and never wrong bytes, keeps working, and a restart
// without faults finds exactly what it held, every page intact.
TEST(FileTier, InjectedFaultsGiveCodesNeverWrongBytes) {
  const std::string dir = fresh_dir("faults");
  const std::string cfg = "tiers=file;file_capacity=8MiB;file_dir=" + dir;
  setenv("KVTIER_TEST_FILE_FAULTS",
         "read:5:eio,read:3:short,write:7:eio,write:4:short,sync:6:enospc", 1);
  kvtier_store_t* s = open_store(cfg);
  unsetenv("KVTIER_TEST_FILE_FAULTS");
  ASSERT_NE(s, nullptr);
  std::mt19937_64 g(std::random_device{}());
  size_t set_failed = 0, get_failed = 0, hits = 0;
  for (int round = 0; round < 300; ++round) {
    std::vector<size_t> ks;
    for (size_t n = 1 + g() % 6; n > 0; --n) ks.push_back(g() % kvtier_test::kUniverse);
    const int op = static_cast<int>(g() % 4);
    if (op == 0) {
      std::vector<int> res;
      set_pages(s, ks, &res);
      for (int r : res) {
        EXPECT_TRUE(r == KVTIER_OK || r == KVTIER_ERR_IO || r == KVTIER_ERR_NO_SPACE)
            << kvtier_error_name(r);
        set_failed += r != KVTIER_OK;
      }
    } else if (op == 1) {
      std::vector<std::string> keys;
      for (size_t k : ks) keys.push_back(page_key(k));
      auto ck = kvtier_test::c_keys(keys);
      std::vector<int> res(ks.size());
      ASSERT_EQ(kvtier_batch_remove(s, ck.data(), ck.size(), res.data()), KVTIER_OK);
    } else {
      for (size_t k : ks) {
        int64_t code = 0;
        auto got = get_value(s, page_key(k), &code);
        if (code > 0) {
          ASSERT_EQ(got, page_value(k)) << "WRONG BYTES for page " << k;
          ++hits;
        } else {
          EXPECT_TRUE(code == KVTIER_ERR_NOT_FOUND || code == KVTIER_ERR_IO)
              << kvtier_error_name(static_cast<int>(code));
          get_failed += code == KVTIER_ERR_IO;
          if (code == KVTIER_ERR_IO) {
            EXPECT_EQ(present(s, page_key(k)), 0u);
          }
        }
      }
    }
  }
  EXPECT_GT(set_failed, 0u) << "no injected write or sync fault was seen";
  EXPECT_GT(get_failed, 0u) << "no injected read fault was seen";
  EXPECT_GT(hits, 0u);
  std::vector<size_t> held;
  for (size_t k = 0; k < kvtier_test::kUniverse; ++k)
    if (present(s, page_key(k))) held.push_back(k);
  kvtier_close(s);
  s = open_store(cfg);
  for (size_t k = 0; k < kvtier_test::kUniverse; ++k) {
    const bool was = std::find(held.begin(), held.end(), k) != held.end();
    // Exactly what was held before the close: nothing lost, nothing back.
    if (was) {
      EXPECT_EQ(read_page(s, k), 1) << "page " << k << " was lost by the restart";
    } else {
      EXPECT_EQ(present(s, page_key(k)), 0u) << "page " << k << " came back";
    }
  }
  EXPECT_NE(stats(s).find("\"errors\":0"), std::string::npos) << stats(s);
  kvtier_close(s);
}

// Group commit under failing syncs: threads put at once, so they share fdatasyncs, and a sync
// that fails fails every put it covered. With every sync failing no put may succeed (a put that
// waited for another's sync included); with every 5th failing, every page reported stored reads
// back byte for byte, every page that failed is absent, and a restart finds exactly the same.
TEST(FileTier, PutsThatShareAFailedSyncAllFailAndNoneShows) {
  for (const char* faults : {"sync:1:eio", "sync:5:eio"}) {
    const std::string dir = fresh_dir("group-sync");
    const std::string cfg = "tiers=file;file_dir=" + dir;
    setenv("KVTIER_TEST_FILE_FAULTS", faults, 1);
    kvtier_store_t* s = open_store(cfg);
    unsetenv("KVTIER_TEST_FILE_FAULTS");
    ASSERT_NE(s, nullptr);
    constexpr size_t kThreads = 4, kRounds = 60, kBatch = 3;
    std::vector<std::vector<std::pair<size_t, int>>> done(kThreads);
    std::vector<std::thread> threads;
    for (size_t t = 0; t < kThreads; ++t)
      threads.emplace_back([&, t] {
        for (size_t r = 0; r < kRounds; ++r) {
          std::vector<size_t> ks;
          for (size_t j = 0; j < kBatch; ++j) ks.push_back(1000000 * (t + 1) + r * kBatch + j);
          std::vector<int> res;
          set_pages(s, ks, &res);
          for (size_t j = 0; j < kBatch; ++j) done[t].push_back({ks[j], res[j]});
        }
      });
    for (auto& t : threads) t.join();
    size_t ok = 0, failed = 0;
    auto check = [&](kvtier_store_t* st) {
      ok = failed = 0;
      for (const auto& keys : done)
        for (auto [k, r] : keys) {
          ASSERT_TRUE(r == KVTIER_OK || r == KVTIER_ERR_IO) << kvtier_error_name(r);
          if (r == KVTIER_OK) {
            ++ok;
            EXPECT_EQ(read_page(st, k), 1) << "page " << k << " was reported stored";
          } else {
            ++failed;
            EXPECT_EQ(present(st, page_key(k)), 0u) << "page " << k << " failed but shows";
          }
        }
    };
    check(s);
    if (std::string(faults) == "sync:1:eio") {
      EXPECT_EQ(ok, 0u) << "a put succeeded although every fdatasync failed";
    } else {
      EXPECT_GT(ok, 0u);
      EXPECT_GT(failed, 0u) << "no injected sync fault was seen";
    }
    kvtier_close(s);
    s = open_store(cfg);
    check(s);
    kvtier_close(s);
  }
}

TEST(FileTier, CrashLoopUnderInjectedFaultsReopensClean) {
  const std::string dir = fresh_dir("fault-crash");
  const std::string cfg = "tiers=file;file_dir=" + dir;
  std::mt19937_64 g(std::random_device{}());
  size_t present_total = 0;
  for (int round = 0; round < 12; ++round) {
    {
      Child writer({"write", dir, std::to_string(g())},
                   "KVTIER_TEST_FILE_FAULTS=read:4:eio,write:3:short,write:5:eio,sync:7:eio");
      std::this_thread::sleep_for(std::chrono::milliseconds(20 + g() % 100));
      writer.kill_now();
    }
    kvtier_store_t* s = open_store(cfg);
    ASSERT_NE(s, nullptr);
    for (size_t k = 0; k < kvtier_test::kUniverse; ++k) present_total += read_page(s, k);
    EXPECT_NE(stats(s).find("\"errors\":0"), std::string::npos) << "round " << round << stats(s);
    kvtier_close(s);
    if (HasFailure()) FAIL() << "round " << round;
  }
  EXPECT_GT(present_total, 0u) << "the writer never got a page down: the test checked nothing";
}

}  // namespace

// Pools off O_DIRECT's alignment (issue 30): a page is stored rotated in its slot so that its
// middle moves straight between the disk and the pool, and only its edges are bounced.
namespace {

// A page's fragments in a pool `shift` bytes past a 4 KiB boundary: `lens[i]` bytes each,
// `gap` bytes apart (0: touching in memory, so they read as one run).
struct PoolPage {
  std::vector<unsigned char> mem;
  std::vector<void*> ptrs;
  std::vector<size_t> sizes;
  size_t len = 0;

  PoolPage(size_t shift, const std::vector<size_t>& lens, size_t gap) {
    size_t total = 0;
    for (size_t l : lens) total += l + gap;
    mem.assign(total + shift + 2 * 4096, 0);
    const auto base = reinterpret_cast<uintptr_t>(mem.data());
    unsigned char* p = mem.data() + ((4096 - base % 4096) % 4096) + shift;
    for (size_t l : lens) {
      ptrs.push_back(p);
      sizes.push_back(l);
      p += l + gap;
      len += l;
    }
  }
  std::vector<unsigned char> bytes() const {
    std::vector<unsigned char> out;
    for (size_t i = 0; i < ptrs.size(); ++i) {
      auto* p = static_cast<unsigned char*>(ptrs[i]);
      out.insert(out.end(), p, p + sizes[i]);
    }
    return out;
  }
  void randomize() {
    for (size_t i = 0; i < ptrs.size(); ++i) kvtier_test::fill_random(ptrs[i], sizes[i]);
  }
  void scribble() {
    for (size_t i = 0; i < ptrs.size(); ++i) std::memset(ptrs[i], 0xA5, sizes[i]);
  }
};

int set_v1(kvtier_store_t* s, const std::string& key, PoolPage& p) {
  const char* k = key.c_str();
  EXPECT_EQ(kvtier_register_buffer(s, p.mem.data(), p.mem.size()), KVTIER_OK);
  int r = 1;
  EXPECT_EQ(kvtier_batch_set_v1(s, &k, 1, p.ptrs.data(), p.sizes.data(), p.ptrs.size(), &r),
            KVTIER_OK);
  EXPECT_EQ(kvtier_unregister_buffer(s, p.mem.data()), KVTIER_OK);
  return r;
}

int get_v1(kvtier_store_t* s, const std::string& key, PoolPage& p) {
  const char* k = key.c_str();
  EXPECT_EQ(kvtier_register_buffer(s, p.mem.data(), p.mem.size()), KVTIER_OK);
  int r = 1;
  EXPECT_EQ(kvtier_batch_get_v1(s, &k, 1, p.ptrs.data(), p.sizes.data(), p.ptrs.size(), &r),
            KVTIER_OK);
  EXPECT_EQ(kvtier_unregister_buffer(s, p.mem.data()), KVTIER_OK);
  return r;
}

// Shapes of a page: fragment lengths and the gap between them.
struct Shape {
  std::vector<size_t> lens;
  size_t gap;
};
const std::vector<Shape> kShapes = {
    {{size_t{1} << 20}, 0},              // one fragment, a whole number of blocks
    {{128 << 10, 128 << 10}, 0},         // K and V halves, touching (page_first)
    {{100000, 60000}, 4096},             // halves apart, neither a multiple of a block
    {{3000, 2000, 1500, 9000}, 64},      // fragments shorter than a block
    {{4096 + 17}, 0},                    // a block and a bit
    {{300}, 0},                          // shorter than a block
    {{(256 << 10) + 100, 777}, 8192},    // not a multiple of 4 KiB
};

}  // namespace

TEST(FileTier, UnalignedPoolsRoundTripByteExactIntoAnyPool) {
  const std::string dir = fresh_dir("misaligned");
  const std::string cfg = "tiers=file;file_dir=" + dir;
  kvtier_store_t* s = open_store(cfg);
  struct Stored {
    std::string key;
    Shape shape;
    std::vector<unsigned char> bytes;
  };
  std::vector<Stored> stored;
  for (size_t shift : {size_t{64}, size_t{512}, size_t{4095}, size_t{1001}}) {
    for (size_t k = 0; k < kShapes.size(); ++k) {
      PoolPage src(shift, kShapes[k].lens, kShapes[k].gap);
      src.randomize();
      const std::string key = "mis-" + std::to_string(shift) + "-" + std::to_string(k);
      ASSERT_EQ(set_v1(s, key, src), KVTIER_OK) << key;
      stored.push_back({key, kShapes[k], src.bytes()});
      // Read back into a pool at the same shift (the middle straight), into an aligned one and
      // into one at another shift (all through bounce blocks, turned back).
      for (size_t into : {shift, size_t{0}, size_t{7}}) {
        PoolPage dst(into, kShapes[k].lens, kShapes[k].gap);
        dst.scribble();
        ASSERT_EQ(get_v1(s, key, dst), KVTIER_OK) << key << " into shift " << into;
        ASSERT_TRUE(dst.bytes() == stored.back().bytes) << key << " into shift " << into;
      }
    }
  }
  kvtier_close(s);
  // After a restart the rotations come back from the records; and kvtier_batch_get reads each
  // page flat into a buffer with room to spare.
  s = open_store(cfg);
  for (const Stored& st : stored) {
    PoolPage dst(64, st.shape.lens, st.shape.gap);
    dst.scribble();
    ASSERT_EQ(get_v1(s, st.key, dst), KVTIER_OK) << st.key;
    ASSERT_TRUE(dst.bytes() == st.bytes) << st.key;
    int64_t code = 0;
    const auto flat = get_value(s, st.key, &code);
    ASSERT_EQ(code, static_cast<int64_t>(st.bytes.size())) << st.key;
    ASSERT_TRUE(std::equal(st.bytes.begin(), st.bytes.end(), flat.begin())) << st.key;
  }
  kvtier_close(s);
}

// The slot holds the page from its first block boundary in the pool on, then its head: the
// layout that lets O_DIRECT move the middle in place. A page 3 bytes past a boundary, of a
// length no disk's O_DIRECT takes as it is.
TEST(FileTier, UnalignedPageIsStoredRotatedToItsPoolsBlocks) {
  const std::string dir = fresh_dir("rotated");
  kvtier_store_t* s = open_store("tiers=file;file_dir=" + dir);
  PoolPage src(3, {(64 << 10) + 100}, 0);
  src.randomize();
  ASSERT_EQ(set_v1(s, "rotated", src), KVTIER_OK);
  kvtier_close(s);
  const auto page = src.bytes();
  const std::string file = only_file(dir, ".dat");
  std::ifstream f(file, std::ios::binary);
  std::vector<unsigned char> slot(page.size());
  f.read(reinterpret_cast<char*>(slot.data()), static_cast<std::streamsize>(slot.size()));
  ASSERT_TRUE(f.good());
  const size_t rotation = 4096 - 3;
  EXPECT_TRUE(std::equal(page.begin() + rotation, page.end(), slot.begin()))
      << "the slot starts with the page's first byte on a block boundary in the pool";
  EXPECT_TRUE(std::equal(page.begin(), page.begin() + rotation, slot.end() - rotation))
      << "the page's head follows its tail";
}

// A rotated page damaged on disk, in its middle (read straight into the pool) or in its head
// (read through a bounce block), is a miss, never a hit; its destination's bytes are not used.
TEST(FileTier, DamagedRotatedPageIsAMissNotAHit) {
  for (const bool in_head : {false, true}) {
    const std::string dir = fresh_dir(in_head ? "rot-head" : "rot-middle");
    const std::string cfg = "tiers=file;file_dir=" + dir;
    kvtier_store_t* s = open_store(cfg);
    PoolPage src(64, {256 << 10, 256 << 10}, 0);
    src.randomize();
    ASSERT_EQ(set_v1(s, "damaged", src), KVTIER_OK);
    kvtier_close(s);
    {
      // The head (rotation 4032) sits at the slot's end.
      const std::streamoff at = in_head ? (512 << 10) - 100 : 300000;
      std::fstream f(only_file(dir, ".dat"), std::ios::in | std::ios::out | std::ios::binary);
      f.seekg(at);
      char c;
      f.read(&c, 1);
      c ^= 0x01;
      f.seekp(at);
      f.write(&c, 1);
    }
    s = open_store(cfg);
    PoolPage dst(64, {256 << 10, 256 << 10}, 0);
    EXPECT_EQ(get_v1(s, "damaged", dst), KVTIER_ERR_NOT_FOUND) << (in_head ? "head" : "middle");
    EXPECT_NE(stats(s).find("\"errors\":1"), std::string::npos) << stats(s);
    EXPECT_EQ(present(s, "damaged"), 0u) << "a damaged page is dropped";
    kvtier_close(s);
  }
}

// Pages stored as they are (the layout before rotations, still what an aligned pool or the page
// cache writes) read into an unaligned pool byte for byte.
TEST(FileTier, UnrotatedPagesReadIntoAnUnalignedPool) {
  const std::string dir = fresh_dir("unrotated");
  kvtier_store_t* s = open_store("tiers=file;file_direct=off;file_dir=" + dir);
  PoolPage src(64, {128 << 10, 128 << 10}, 0);
  src.randomize();
  ASSERT_EQ(set_v1(s, "plain", src), KVTIER_OK);
  kvtier_close(s);
  {
    std::ifstream f(only_file(dir, ".dat"), std::ios::binary);
    std::vector<unsigned char> slot(src.len);
    f.read(reinterpret_cast<char*>(slot.data()), static_cast<std::streamsize>(slot.size()));
    ASSERT_TRUE(slot == src.bytes()) << "written unrotated";
  }
  s = open_store("tiers=file;file_dir=" + dir);
  for (size_t into : {size_t{64}, size_t{0}, size_t{1001}}) {
    PoolPage dst(into, {128 << 10, 128 << 10}, 0);
    dst.scribble();
    ASSERT_EQ(get_v1(s, "plain", dst), KVTIER_OK) << into;
    EXPECT_TRUE(dst.bytes() == src.bytes()) << into;
  }
  kvtier_close(s);
}
