// The shared folder's neighbours: processes on the same namespace that did nothing wrong, beside
// one that deletes or scribbles its files, stops while holding a lock, or is another local user.
// Each of them may cost the others a miss or a bounded wait, never a crash, a hang or a wrong
// byte. Real processes throughout (file_writer, fork, SIGSTOP).
#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <kvtier/kvtier.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <filesystem>
#include <random>
#include <string>

#include "file_pages.h"
#include "file_procs.h"
#include "test_util.h"

namespace fs = std::filesystem;
using namespace kvtier_test;

namespace {

// The namespace folder the store made in dir (there is one).
std::string ns_dir(const std::string& dir) {
  for (auto& e : fs::directory_iterator(dir))
    if (e.is_directory()) return e.path();
  return "";
}

std::string until(double seconds) {
  timespec now{};
  clock_gettime(CLOCK_REALTIME, &now);
  return std::to_string(now.tv_sec + static_cast<long>(seconds));
}

// Writes `len` random bytes at `off` into the file at path (an open fd's /proc link or a name),
// without changing its size.
void scribble(const std::string& path, uint64_t off, uint64_t len) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0) << path;
  const auto bytes = random_bytes(len);
  EXPECT_EQ(::pwrite(fd, bytes.data(), len, static_cast<off_t>(off)), static_cast<ssize_t>(len));
  ::close(fd);
}

// Finding 3: deleting LOCK, truncating, scribbling and deleting INDEX while processes run on the
// folder, and new processes joining after each. Every process survives, every read is exact or
// a miss, and afterwards the processes still share one index.
TEST(FileNeighbours, DamagedLockAndIndexCostAMissNeverACrash) {
  const std::string dir = fresh("damage");
  kvtier_store_t* s = open_dir(dir, ";file_capacity=64MiB");
  for (size_t k = 0; k < 40; ++k) ASSERT_EQ(put_page(s, k), KVTIER_OK);
  const std::string ns = ns_dir(dir);
  ASSERT_FALSE(ns.empty());
  const std::string end = until(6);
  std::mt19937_64 g(std::random_device{}());
  Proc a({"mixed", dir, std::to_string(g()), end}, dir + "/a.log");
  Proc b({"mixed", dir, std::to_string(g()), end}, dir + "/b.log");
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  for (int round = 0; round < 8; ++round) {
    const std::string index = ns + "/INDEX";
    switch (round % 4) {
      case 0:
        ::unlink((ns + "/LOCK").c_str());
        break;
      case 1:
        ASSERT_EQ(::truncate(index.c_str(), 0), 0) << index;
        break;
      case 2: {
        struct stat st {};
        if (::stat(index.c_str(), &st) == 0 && st.st_size > 0)
          scribble(index, 0, static_cast<uint64_t>(st.st_size));
        else
          scribble(index, 0, 8192);  // a file of random bytes, where the roster was
        break;
      }
      default:
        ::unlink(index.c_str());
    }
    // A process that joins after the damage reads right and leaves the others standing.
    Proc joiner({"count", dir, "0", "40"}, dir + "/join-" + std::to_string(round) + ".log");
    count_present(s, 0, 40);  // exact or a miss (checked inside)
    ASSERT_TRUE(exited_ok(joiner.wait_for(60))) << slurp(joiner.log);
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
  }
  for (Proc* p : {&a, &b}) {
    const int status = p->wait_for(60);
    EXPECT_TRUE(exited_ok(status)) << "status " << status << ": " << slurp(p->log);
    EXPECT_EQ(slurp(p->log).find("WRONG BYTES"), std::string::npos) << slurp(p->log);
    EXPECT_GT(last_count(p->log, "verified"), 0u) << slurp(p->log);
  }
  // One index again: what this process writes, a new process reads, and the other way.
  std::this_thread::sleep_for(std::chrono::milliseconds(250));
  for (size_t k = 40; k < 60; ++k) ASSERT_EQ(put_page(s, k), KVTIER_OK);
  Proc reader({"count", dir, "40", "20"}, dir + "/reader.log");
  ASSERT_TRUE(exited_ok(reader.wait_for(60))) << slurp(reader.log);
  EXPECT_EQ(last_count(reader.log, "present"), 20u) << slurp(reader.log);
  Proc writer({"put", dir, "60", "16"}, dir + "/writer.log");
  ASSERT_TRUE(exited_ok(writer.wait_for(60))) << slurp(writer.log);
  EXPECT_EQ(count_present(s, 60, 16), 16u);
  kvtier_close(s);
}

// The index's memory itself scribbled (its hash chains and nodes; here by this process through
// /proc/self/fd, as any process of the user could): every link read from it is bounds-checked,
// the index is rebuilt from the records, and reads stay exact or a miss.
TEST(FileNeighbours, ScribbledIndexMemoryIsRebuiltNotFollowed) {
  const std::string dir = fresh("scribble");
  kvtier_store_t* s = open_dir(dir, ";file_capacity=64MiB");
  for (size_t k = 0; k < 40; ++k) ASSERT_EQ(put_page(s, k), KVTIER_OK);
  // The index: the memfd, or (before it was one) the INDEX file this process maps.
  std::string index;
  for (auto& e : fs::directory_iterator("/proc/self/fd")) {
    std::error_code ec;
    const std::string target = fs::read_symlink(e.path(), ec).string();
    if (target.find("kvtier-index") != std::string::npos ||
        (target.size() > 6 && target.compare(target.size() - 6, 6, "/INDEX") == 0))
      index = e.path();
  }
  ASSERT_FALSE(index.empty()) << "no shared index among this process's files";
  struct stat st {};
  ASSERT_EQ(::stat(index.c_str(), &st), 0);
  ASSERT_GT(st.st_size, 8192);
  // Past the header (its lock): the chains' heads and every node.
  scribble(index, 4096, static_cast<uint64_t>(st.st_size) - 4096);
  count_present(s, 0, 40);
  exists_run(s, 0, 40);
  EXPECT_EQ(count_present(s, 0, 40), 40u) << "the records hold every page: a rebuild finds them";
  for (size_t k = 40; k < 60; ++k) ASSERT_EQ(put_page(s, k), KVTIER_OK);
  EXPECT_EQ(count_present(s, 40, 20), 20u);
  Proc reader({"count", dir, "0", "60"}, dir + "/reader.log");
  ASSERT_TRUE(exited_ok(reader.wait_for(60))) << slurp(reader.log);
  EXPECT_EQ(last_count(reader.log, "present"), 60u) << slurp(reader.log);
  kvtier_close(s);
}

}  // namespace
