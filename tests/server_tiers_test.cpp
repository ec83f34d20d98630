// kvtier-server with its pages on disk too (--tiers memory,file): a server whose arena holds a
// fraction of the pages serves them all, and a restarted server (even after SIGKILL) comes back
// with them; removed and cleared pages stay gone across a restart.
#include <gtest/gtest.h>
#include <kvtier/kvtier.h>
#include <sys/stat.h>

#include "server_process.h"
#include "test_util.h"

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

// Stops the server with `sig`, starts it again on its port, and opens a new store on it.
kvtier_store_t* restart(ServerProcess& srv, int sig) {
  srv.kill_now(sig);
  EXPECT_TRUE(srv.restart());
  return open_store(srv);
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

TEST(ServerTiers, RestartedServerKeepsItsPages) {
  if (const std::string why = no_file_tier(); !why.empty()) GTEST_SKIP() << why;
  ServerProcess srv("4MiB", "", 0, {"--tiers", "memory,file", "--file-dir", server_dir("keep")});
  Pages pages;
  kvtier_store_t* s = open_store(srv);
  ASSERT_NE(s, nullptr);
  pages.set(s);
  // More pages than the arena holds: the evicted ones come back from disk.
  for (bool hit : pages.get(s)) EXPECT_TRUE(hit);
  kvtier_close(s);

  s = restart(srv, SIGKILL);  // no clean stop: each page was on disk before its put was answered
  ASSERT_NE(s, nullptr);
  size_t hits = 0;
  ASSERT_EQ(kvtier_batch_exists(s, pages.ck.data(), kPages, &hits), KVTIER_OK);
  EXPECT_EQ(hits, kPages);
  for (bool hit : pages.get(s)) EXPECT_TRUE(hit);

  // Removed pages are gone from disk too, cleared ones as well, across a restart.
  std::vector<int> removed(8);
  ASSERT_EQ(kvtier_batch_remove(s, pages.ck.data(), 8, removed.data()), KVTIER_OK);
  for (int r : removed) EXPECT_EQ(r, KVTIER_OK);
  kvtier_close(s);
  s = restart(srv, SIGTERM);
  ASSERT_NE(s, nullptr);
  const std::vector<bool> after = pages.get(s);
  for (size_t i = 0; i < kPages; ++i) EXPECT_EQ(after[i], i >= 8) << "key " << i;
  ASSERT_EQ(kvtier_clear(s), KVTIER_OK);
  kvtier_close(s);
  s = restart(srv, SIGTERM);
  ASSERT_NE(s, nullptr);
  for (bool hit : pages.get(s)) EXPECT_FALSE(hit);
  kvtier_close(s);
}

TEST(ServerTiers, MemoryOnlyServerComesBackEmpty) {  // the contrast: what the file tier adds
  ServerProcess srv("64MiB");
  Pages pages;
  kvtier_store_t* s = open_store(srv);
  ASSERT_NE(s, nullptr);
  pages.set(s);
  kvtier_close(s);
  s = restart(srv, SIGTERM);
  ASSERT_NE(s, nullptr);
  for (bool hit : pages.get(s)) EXPECT_FALSE(hit);
  kvtier_close(s);
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

}  // namespace
