// kvtier-server with its pages on disk too (--tiers memory,file): a server whose arena holds a
// fraction of the pages serves them all, and a restarted server (even after SIGKILL) comes back
// with them; removed and cleared pages stay gone across a restart.
#include <dirent.h>
#include <ftw.h>
#include <gtest/gtest.h>
#include <kvtier/kvtier.h>
#include <sys/stat.h>

#include <atomic>
#include <map>

#include "tests/common/raw_client.h"
#include "tests/common/server_process.h"
#include "tests/common/tcp_bytes.h"
#include "tests/common/test_util.h"

namespace {

using kvtier_test::ServerProcess;

constexpr size_t kPages = 64, kSize = 128 << 10;  // 8 MiB of pages over a 4 MiB arena

struct Pages {
  std::vector<std::string> keys;
  std::vector<std::vector<unsigned char>> vals;
  std::vector<const char*> ck;
  Pages() {
    for (size_t i = 0; i < kPages; ++i) {
      keys.push_back(kvtier_test::make_key("disk", i));
      vals.push_back(kvtier_test::random_bytes(kSize));
    }
    ck = kvtier_test::c_keys(keys);
  }
  void set(kvtier_store_t* s) {
    std::vector<const void*> ptrs;
    for (auto& v : vals) ptrs.push_back(v.data());
    std::vector<size_t> sizes(kPages, kSize);
    std::vector<int> res(kPages);
    ASSERT_EQ(kvtier_batch_set(s, ck.data(), kPages, ptrs.data(), sizes.data(), res.data()),
              KVTIER_OK);
    for (size_t i = 0; i < kPages; ++i) ASSERT_EQ(res[i], KVTIER_OK) << "key " << i;
  }
  // Per key: true if read back exactly; a wrong byte fails the test.
  std::vector<bool> get(kvtier_store_t* s) {
    std::vector<std::vector<unsigned char>> out(kPages, std::vector<unsigned char>(kSize));
    std::vector<void*> bufs;
    for (auto& o : out) bufs.push_back(o.data());
    std::vector<size_t> caps(kPages, kSize);
    std::vector<int64_t> res(kPages);
    EXPECT_EQ(kvtier_batch_get(s, ck.data(), kPages, bufs.data(), caps.data(), res.data()),
              KVTIER_OK);
    std::vector<bool> hit(kPages);
    for (size_t i = 0; i < kPages; ++i) {
      hit[i] = res[i] == static_cast<int64_t>(kSize);
      if (hit[i]) {
        EXPECT_TRUE(out[i] == vals[i]) << "WRONG BYTES for key " << i;
      }
    }
    return hit;
  }
};

kvtier_store_t* open_store(const ServerProcess& srv) {
  kvtier_store_t* s = nullptr;
  EXPECT_EQ(kvtier_open(("tiers=remote;remote_servers=" + srv.address()).c_str(), &s), KVTIER_OK)
      << kvtier_last_error();
  return s;
}

std::string server_dir(const char* name) {
  const std::string dir = kvtier_test::test_dir() + "/" + name;
  mkdir(dir.c_str(), 0700);
  return dir;
}

// Why a server cannot keep its pages on disk in this build ("" when it can): the server and this
// library come from one build, so the library answers for both.
std::string no_file_tier() {
  kvtier_store_t* s = nullptr;
  const std::string cfg = "tiers=file;file_dir=" + server_dir("probe");
  const int rc = kvtier_open(cfg.c_str(), &s);
  const std::string why = rc == KVTIER_ERR_UNSUPPORTED ? kvtier_last_error() : "";
  kvtier_close(s);
  return why;
}

// A server (ServerProcess's capacity and extra flags) and a store open on it into which
// `pages` were put: ok when both held.
struct ServerWithPages {
  ServerProcess srv;
  Pages pages;
  kvtier_store_t* s;
  bool ok;
  ServerWithPages(std::string capacity, std::vector<std::string> extra)
      : srv(std::move(capacity), "", 0, std::move(extra)), s(open_store(srv)) {
    if (s != nullptr) pages.set(s);
    ok = s != nullptr && !::testing::Test::HasFatalFailure();
  }
  ~ServerWithPages() { kvtier_close(s); }
  // Stops the server with `sig`, starts it again on its port, and opens a new store on it
  // (null if not).
  void restart(int sig) {
    kvtier_close(s);
    srv.kill_now(sig);
    EXPECT_TRUE(srv.restart());
    s = open_store(srv);
  }
};

// Flags for a server that keeps its pages on disk too, in `dir` under the test folder.
std::vector<std::string> on_disk(const char* dir) {
  return {"--tiers", "memory,file", "--file-dir", server_dir(dir)};
}

TEST(ServerTiers, RestartedServerKeepsItsPages) {
  if (const std::string why = no_file_tier(); !why.empty()) GTEST_SKIP() << why;
  ServerWithPages w("4MiB", on_disk("keep"));
  ASSERT_TRUE(w.ok);
  // More pages than the arena holds: the evicted ones come back from disk.
  for (bool hit : w.pages.get(w.s)) EXPECT_TRUE(hit);

  w.restart(SIGKILL);  // no clean stop: each page was on disk before its put was answered
  ASSERT_NE(w.s, nullptr);
  size_t hits = 0;
  ASSERT_EQ(kvtier_batch_exists(w.s, w.pages.ck.data(), kPages, &hits), KVTIER_OK);
  EXPECT_EQ(hits, kPages);
  for (bool hit : w.pages.get(w.s)) EXPECT_TRUE(hit);

  // Removed pages are gone from disk too, cleared ones as well, across a restart.
  std::vector<int> removed(8);
  ASSERT_EQ(kvtier_batch_remove(w.s, w.pages.ck.data(), 8, removed.data()), KVTIER_OK);
  for (int r : removed) EXPECT_EQ(r, KVTIER_OK);
  w.restart(SIGTERM);
  ASSERT_NE(w.s, nullptr);
  const std::vector<bool> after = w.pages.get(w.s);
  for (size_t i = 0; i < kPages; ++i) EXPECT_EQ(after[i], i >= 8) << "key " << i;
  ASSERT_EQ(kvtier_clear(w.s), KVTIER_OK);
  w.restart(SIGTERM);
  ASSERT_NE(w.s, nullptr);
  for (bool hit : w.pages.get(w.s)) EXPECT_FALSE(hit);
}

// Pages only the disk holds (the server restarted: its arena is empty) answer their sizes
// (kvtier_batch_size_each) from the disk's index: right, and without their bytes crossing.
TEST(ServerTiers, SizesOfPagesOnlyOnDisk) {
  if (const std::string why = no_file_tier(); !why.empty()) GTEST_SKIP() << why;
  ServerWithPages w("4MiB", on_disk("sizes"));
  ASSERT_TRUE(w.ok);
  w.restart(SIGTERM);
  ASSERT_NE(w.s, nullptr);

  std::vector<const char*> ck = w.pages.ck;
  ck.push_back("disk-missing");
  std::vector<int64_t> got(ck.size(), 99);
  // A first call makes the pooled connection, which then stays for the measured one.
  ASSERT_EQ(kvtier_batch_size_each(w.s, ck.data(), 1, got.data()), KVTIER_OK);
  const kvtier_test::Traffic before = kvtier_test::traffic_to({w.srv.port()});
  ASSERT_EQ(kvtier_batch_size_each(w.s, ck.data(), ck.size(), got.data()), KVTIER_OK)
      << kvtier_last_error();
  const kvtier_test::Traffic after = kvtier_test::traffic_to({w.srv.port()});
  ASSERT_TRUE(after.continues(before)) << "a pooled connection closed: nothing to compare";
  for (size_t i = 0; i < kPages; ++i) EXPECT_EQ(got[i], int64_t(kSize)) << "key " << i;
  EXPECT_EQ(got[kPages], KVTIER_ERR_NOT_FOUND);
  EXPECT_LT(after.received - before.received, kPages * kSize / 100);
  for (bool hit : w.pages.get(w.s)) EXPECT_TRUE(hit);
}

TEST(ServerTiers, MemoryOnlyServerComesBackEmpty) {  // the contrast: what the file tier adds
  ServerWithPages w("64MiB", {});
  ASSERT_TRUE(w.ok);
  w.restart(SIGTERM);
  ASSERT_NE(w.s, nullptr);
  for (bool hit : w.pages.get(w.s)) EXPECT_FALSE(hit);
}

TEST(ServerTiers, BadFlagsAreUsageErrors) {
  const std::string bin = KVTIER_SERVER_BIN;
  for (const std::string args : {"--tiers memory,file", "--tiers file",
                                 "--tiers memory,file "
                                 "--file-dir /tmp --file-capacity 1K"}) {
    const std::string cmd = bin + " --listen 127.0.0.1:0 " + args + " 2>/dev/null";
    EXPECT_EQ(WEXITSTATUS(system(cmd.c_str())), 2) << args;
  }
}

// The file tier's folder checks hold for the server too: a folder others can write is refused
// at start, not at the first request.
TEST(ServerTiers, UnsafeFolderFailsTheStart) {
  if (const std::string why = no_file_tier(); !why.empty()) GTEST_SKIP() << why;
  const std::string dir = server_dir("unsafe");
  chmod(dir.c_str(), 0777);
  const std::string cmd = std::string(KVTIER_SERVER_BIN) +
                          " --listen 127.0.0.1:0 --tiers memory,file --file-dir " + dir +
                          " >/dev/null 2>&1";
  EXPECT_EQ(WEXITSTATUS(system(cmd.c_str())), 1);
}

// ---- what reads, namespaces and fds cost the disk (issue 27) ---------------------------

using kvtier_test::Ctl;

// Bytes the files under `dir` take on disk (allocated blocks, not their lengths).
uint64_t disk_use(const std::string& dir) {
  static std::atomic<uint64_t> total;
  total = 0;
  nftw(
      dir.c_str(),
      [](const char*, const struct stat* st, int type, FTW*) {
        if (type == FTW_F) total += static_cast<uint64_t>(st->st_blocks) * 512;
        return 0;
      },
      16, FTW_PHYS);
  return total;
}

size_t entries(const std::string& dir) {
  size_t n = 0;
  if (DIR* d = opendir(dir.c_str())) {
    while (dirent* e = readdir(d)) n += e->d_name[0] != '.';
    closedir(d);
  }
  return n;
}

// One page of each of the 64 slot sizes the file tier has classes for (4 KiB .. 512 KiB): 11 MiB.
std::vector<std::vector<uint8_t>> one_page_per_class() {
  std::vector<std::vector<uint8_t>> pages;
  for (uint64_t size = 4096; pages.size() < 64;) {
    std::vector<uint8_t> v(size);
    kvtier_test::fill_random(v.data(), v.size());
    pages.push_back(std::move(v));
    size += size < 65536 ? 4096 : (uint64_t{1} << (63 - __builtin_clzll(size))) / 16;
  }
  return pages;
}

// Reads every page back (tags 1..n, in namespace ns) and compares byte for byte.
void expect_pages(uint16_t port, uint64_t ns,
                  const std::map<uint8_t, std::vector<uint8_t>>& pages) {
  Ctl c(port, ns);
  for (auto& [tag, bytes] : pages) {
    // Asked first, while the page may be on disk only (SIZES does not promote it).
    EXPECT_EQ(c.size(tag), int64_t(bytes.size())) << "page " << int(tag) << " of namespace " << ns;
    auto [code, got] = c.get_page(tag);
    EXPECT_EQ(code, 0) << "page " << int(tag) << " of namespace " << ns;
    if (code == 0) {
      EXPECT_TRUE(got == bytes) << "WRONG BYTES for page " << int(tag);
    }
  }
}

// Finding 27.1: read-only frames naming new namespaces made nothing readable of another
// namespace's durable pages, and its later acknowledged puts were lost at the next restart.
TEST(ServerTiers, ReadsMakeNothingOnDiskAndHideNoPages) {
  if (const std::string why = no_file_tier(); !why.empty()) GTEST_SKIP() << why;
  const std::string dir = server_dir("reads");
  ServerProcess srv("64MiB", "", 0,
                    {"--tiers", "memory,file", "--file-dir", dir, "--file-capacity", "256MiB"});
  constexpr uint64_t kVictim = 0x5eed;
  std::map<uint8_t, std::vector<uint8_t>> pages;
  {
    Ctl c(srv.port(), kVictim);
    for (uint8_t tag = 1; tag <= 32; ++tag) {
      pages[tag] = kvtier_test::random_bytes(16 << 10);
      ASSERT_EQ(c.put_page(tag, pages[tag]), 0) << "tag " << int(tag);
    }
  }
  const size_t folders = entries(dir);
  srv.kill_now(SIGTERM);
  ASSERT_TRUE(srv.restart());
  for (uint64_t i = 0; i < 256; ++i) {  // reads (and REMOVE) of namespaces never written
    Ctl r(srv.port(), 0x10000 + i);
    EXPECT_FALSE(r.exists(7));
    EXPECT_EQ(r.size(7), KVTIER_ERR_NOT_FOUND);
    EXPECT_EQ(r.get_page(7).first, KVTIER_ERR_NOT_FOUND);
    EXPECT_EQ(std::get<0>(r.lookup(7)), KVTIER_ERR_NOT_FOUND);
    EXPECT_EQ(r.remove(7), KVTIER_ERR_NOT_FOUND);
  }
  EXPECT_EQ(entries(dir), folders) << "reads made folders on disk";
  expect_pages(srv.port(), kVictim, pages);
  {
    Ctl c(srv.port(), kVictim);
    for (uint8_t tag = 33; tag <= 64; ++tag) {
      pages[tag] = kvtier_test::random_bytes(16 << 10);
      ASSERT_EQ(c.put_page(tag, pages[tag]), 0) << "tag " << int(tag);
    }
  }
  srv.kill_now(SIGKILL);  // acknowledged means on disk: no clean stop needed
  ASSERT_TRUE(srv.restart());
  expect_pages(srv.port(), kVictim, pages);
}

// A HELLO that may be refused: whether the server took the connection.
bool hello(int fd, uint64_t ns) {
  return kvtier_test::raw_hello(fd, ns).first == 0x81;
}

// Finding 27.1, the fds: with every connection the server allows held open, the file tier's
// files still open, so each acknowledged put is on disk (before: acknowledged and lost).
TEST(ServerTiers, ConnectionsLeaveTheDiskItsFds) {
  if (const std::string why = no_file_tier(); !why.empty()) GTEST_SKIP() << why;
  const std::string dir = server_dir("fds");
  ServerProcess srv("64MiB", "", 0,
                    {"--tiers", "memory,file", "--file-dir", dir, "--file-capacity", "256MiB"}, "",
                    256);
  constexpr uint64_t kNs = 0xfd;
  Ctl writer(srv.port(), kNs);
  std::vector<int> flood;
  for (int i = 0; i < 400; ++i) {
    const int fd = kvtier_test::raw_connect(srv.port());
    if (!hello(fd, 0xf100d + i)) {
      close(fd);
      break;
    }
    flood.push_back(fd);
  }
  EXPECT_GT(flood.size(), 8u);
  std::map<uint8_t, std::vector<uint8_t>> acked;
  const auto pages = one_page_per_class();  // 64 size classes: two files each
  for (size_t i = 0; i < pages.size(); ++i) {
    const uint8_t tag = static_cast<uint8_t>(i + 1);
    if (writer.put_page(tag, pages[i]) == 0) acked[tag] = pages[i];
  }
  EXPECT_EQ(acked.size(), pages.size()) << "the disk had no fds left";
  for (int fd : flood) close(fd);
  srv.kill_now(SIGKILL);
  ASSERT_TRUE(srv.restart());
  expect_pages(srv.port(), kNs, acked);  // every acknowledged page, after a restart
}

// Finding 27.2: disk follows the bytes stored. One page in each of 64 size classes took
// 64 file-growth steps; several namespaces took --file-capacity each.
TEST(ServerTiers, DiskFollowsTheBytesStored) {
  if (const std::string why = no_file_tier(); !why.empty()) GTEST_SKIP() << why;
  const std::string one = server_dir("one-namespace");
  {
    ServerProcess srv("64MiB", "", 0,
                      {"--tiers", "memory,file", "--file-dir", one, "--file-capacity", "256MiB"});
    const uint64_t before = disk_use(one);
    Ctl c(srv.port(), 1);
    uint64_t sent = 0;
    const auto pages = one_page_per_class();
    for (size_t i = 0; i < pages.size(); ++i) {
      ASSERT_EQ(c.put_page(static_cast<uint8_t>(i + 1), pages[i]), 0);
      sent += pages[i].size();
    }
    const uint64_t used = disk_use(one) - before;
    EXPECT_LE(used, sent * 5 / 4 + (2 << 20)) << sent << " bytes sent took " << used << " on disk";
  }

  // All namespaces together within --file-capacity; the newest one's pages all kept.
  const std::string all = server_dir("all-namespaces");
  constexpr uint64_t kCapacity = 32 << 20;
  ServerProcess srv("64MiB", "", 0,
                    {"--tiers", "memory,file", "--file-dir", all, "--file-capacity", "32MiB"});
  std::map<uint8_t, std::vector<uint8_t>> last;
  for (uint64_t ns = 1; ns <= 6; ++ns) {  // 8 MiB each, 48 MiB in all
    Ctl c(srv.port(), ns);
    last.clear();
    for (uint8_t tag = 1; tag <= 64; ++tag) {
      last[tag] = kvtier_test::random_bytes(128 << 10);
      ASSERT_EQ(c.put_page(tag, last[tag]), 0);
    }
    const uint64_t used = disk_use(all);
    EXPECT_LE(used, kCapacity + (4 << 20)) << "after namespace " << ns;
  }
  srv.kill_now(SIGKILL);
  ASSERT_TRUE(srv.restart());
  expect_pages(srv.port(), 6, last);
  EXPECT_LE(disk_use(all), kCapacity + (4 << 20));
}

}  // namespace
