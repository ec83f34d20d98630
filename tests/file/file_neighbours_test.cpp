// The shared folder's neighbours: processes on the same namespace that did nothing wrong, beside
// one that deletes or scribbles its files, stops while holding a lock, or is another local user.
// Each of them may cost the others a miss or a bounded wait, never a crash, a hang or a wrong
// byte. Real processes throughout (file_writer, fork, SIGSTOP).
#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <kvtier/kvtier.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "tests/common/sampling.h"
#include "tests/common/test_util.h"
#include "tests/file/file_pages.h"
#include "tests/file/file_procs.h"

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

// The shared index this process maps, as a /proc/self/fd link: the memfd, or (before it was
// one) the INDEX file; "" if none.
std::string index_path() {
  std::string index;
  for (auto& e : fs::directory_iterator("/proc/self/fd")) {
    std::error_code ec;
    const std::string target = fs::read_symlink(e.path(), ec).string();
    if (target.find("kvtier-index") != std::string::npos ||
        (target.size() > 6 && target.compare(target.size() - 6, 6, "/INDEX") == 0))
      index = e.path();
  }
  return index;
}

// The index's memory itself scribbled (its hash chains and nodes; here by this process through
// /proc/self/fd, as any process of the user could): every link read from it is bounds-checked,
// the index is rebuilt from the records, and reads stay exact or a miss.
TEST(FileNeighbours, ScribbledIndexMemoryIsRebuiltNotFollowed) {
  const std::string dir = fresh("scribble");
  kvtier_store_t* s = open_dir(dir, ";file_capacity=64MiB");
  for (size_t k = 0; k < 40; ++k) ASSERT_EQ(put_page(s, k), KVTIER_OK);
  const std::string index = index_path();
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

// A page's entry in the index memory that no write makes (as a scribbling neighbour can leave
// one; the records never hold one): a rotation past the page's end made the read copy the slot's
// bytes past the end of the caller's buffer; fewer bytes stored than the page's length made it
// copy a bounce buffer's bytes past what was read into the caller's. Now such an entry is a
// miss whose bytes are not read, and the index is rebuilt from the records: the page is back.
TEST(FileNeighbours, ADamagedIndexEntryIsAMissThatReadsNothingAndIsRebuilt) {
  struct Damage {
    const char* name;
    size_t at;  // in the node (shared_index.h)
    uint64_t value;
    size_t len;
  };
  for (const Damage& d : {Damage{"rotation", 90, 40000, 2},  // past the page and the buffer
                          Damage{"stored", 40, 100, 8}}) {   // an uncompressed page's 16 KiB
    SCOPED_TRACE(d.name);
    const std::string dir = fresh(std::string("damaged-") + d.name);
    kvtier_store_t* s = open_dir(dir, ";file_capacity=64MiB");
    ASSERT_EQ(put_page(s, 0), KVTIER_OK);
    const uint64_t length = page_value(0).size();
    const std::string index = index_path();
    ASSERT_FALSE(index.empty()) << "no shared index among this process's files";
    // The page's node (length at 16, stored at 40, state at 88): the only live one of its length.
    std::ifstream in(index, std::ios::binary);
    const std::string mem((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    auto u64 = [&](size_t at) {
      uint64_t x;
      std::memcpy(&x, mem.data() + at, 8);
      return x;
    };
    std::vector<size_t> nodes;
    for (size_t at = 4096; at + 96 <= mem.size(); at += 8)
      if (u64(at + 16) == length && u64(at + 40) == length && mem[at + 88] == 2)
        nodes.push_back(at);
    ASSERT_EQ(nodes.size(), 1u) << "the page's node in the index";
    const int fd = ::open(index.c_str(), O_WRONLY | O_CLOEXEC);
    ASSERT_GE(fd, 0);
    const uint16_t no_rotation = 0;  // so that a short page is read flat, not through a SlotMap
    ASSERT_EQ(::pwrite(fd, &no_rotation, 2, static_cast<off_t>(nodes[0] + 90)), 2);
    ASSERT_EQ(::pwrite(fd, &d.value, d.len, static_cast<off_t>(nodes[0] + d.at)),
              static_cast<ssize_t>(d.len));
    ::close(fd);

    // The caller's buffer has room for the page and 4 KiB more, and lies in a larger one.
    std::vector<unsigned char> mine(128 << 10, 0xCC);
    size_t room = length + 4096;
    const std::string key = page_key(0);
    const char* ck = key.c_str();
    void* b = mine.data();
    int64_t r = 0;
    ASSERT_EQ(kvtier_batch_get(s, &ck, 1, &b, &room, &r), KVTIER_OK);
    EXPECT_EQ(r, KVTIER_ERR_NOT_FOUND);
    EXPECT_EQ(std::count(mine.begin() + room, mine.end(), 0xCC), mine.size() - room)
        << "bytes written past the caller's buffer";
    EXPECT_EQ(std::count(mine.begin(), mine.begin() + room, 0xCC), room)
        << "a damaged entry's bytes were read into the caller's buffer";
    EXPECT_EQ(count_present(s, 0, 1), 1u) << "the page's record brings it back";
    kvtier_close(s);
  }
}

// Whether process pid is stopped (SIGSTOP) within `seconds`.
bool becomes_stopped(pid_t pid, double seconds) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  while (std::chrono::steady_clock::now() < end) {
    const std::string stat = slurp("/proc/" + std::to_string(pid) + "/stat");
    const size_t paren = stat.rfind(')');
    if (paren != std::string::npos && paren + 2 < stat.size() && stat[paren + 2] == 'T')
      return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return false;
}

// Runs `calls` in a thread and waits `limit` seconds for it; false if it had not ended (it is
// then left to end after `unblock`, which resumes whoever blocks it).
bool ends_within(double limit, const std::function<void()>& calls,
                 const std::function<void()>& unblock) {
  std::atomic<bool> done{false};
  std::thread t([&] {
    calls();
    done = true;
  });
  const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(limit);
  while (!done && std::chrono::steady_clock::now() < end)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  const bool ended = done;
  if (!ended) unblock();
  t.join();
  return ended;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

constexpr const char* kShortLock = "file_lock_timeout_ms=500";

// Finding 5: a process stopped (SIGSTOP, Ctrl-Z, a debugger) while it holds the namespace's lock
// costs the others one timeout: then the index is made anew from the records without it, and
// every call of every other process goes on; resumed, the stopped one joins them.
TEST(FileNeighbours, AProcessStoppedHoldingTheLockCostsOneTimeout) {
  const std::string dir = fresh("stopped-lock");
  kvtier_store_t* s = open_dir(dir, std::string(";file_capacity=64MiB;") + kShortLock);
  for (size_t k = 0; k < 20; ++k) ASSERT_EQ(put_page(s, k), KVTIER_OK);
  Proc stopped({"put", dir, "20", "8", kShortLock}, dir + "/stopped.log",
               "KVTIER_TEST_FILE_FAULTS=commit:1:stop");
  ASSERT_TRUE(becomes_stopped(stopped.pid, 30)) << slurp(stopped.log);
  double first = 0, rest = 0;
  const bool ended = ends_within(
      20,
      [&] {
        auto t0 = std::chrono::steady_clock::now();
        count_present(s, 0, 20);  // waits one timeout at most, then a miss or a hit
        first = seconds_since(t0);
        t0 = std::chrono::steady_clock::now();
        EXPECT_EQ(count_present(s, 0, 20), 20u) << "the index made anew holds every page";
        EXPECT_EQ(exists_run(s, 0, 20), 20);
        for (size_t k = 30; k < 40; ++k) EXPECT_EQ(put_page(s, k), KVTIER_OK);
        EXPECT_EQ(count_present(s, 30, 10), 10u);
        rest = seconds_since(t0);
      },
      [&] { ::kill(stopped.pid, SIGCONT); });
  ASSERT_TRUE(ended) << "a call waited for the stopped process";
  EXPECT_LT(first, 5.0) << "the first call waits one timeout (0.5 s) and a rebuild";
  EXPECT_LT(rest, 5.0) << "the calls after it wait for nobody";
  // Other processes too: one that opens now, and one that was open all along.
  Proc later({"put", dir, "40", "8", kShortLock}, dir + "/later.log");
  ASSERT_TRUE(exited_ok(later.wait_for(20))) << slurp(later.log);
  EXPECT_EQ(count_present(s, 40, 8), 8u);
  EXPECT_TRUE(ends_within(
      10, [&] { EXPECT_EQ(kvtier_clear(s), KVTIER_OK) << kvtier_last_error(); },
      [&] { ::kill(stopped.pid, SIGCONT); }))
      << "clear waited for the stopped process";
  // Resumed, it finishes without harm (its interrupted batch may fail) and shares the new index.
  ASSERT_EQ(::kill(stopped.pid, SIGCONT), 0);
  ASSERT_TRUE(exited_ok(stopped.wait_for(30))) << slurp(stopped.log);
  for (size_t k = 50; k < 58; ++k) ASSERT_EQ(put_page(s, k), KVTIER_OK);
  Proc reader({"count", dir, "50", "8"}, dir + "/reader.log");
  ASSERT_TRUE(exited_ok(reader.wait_for(20))) << slurp(reader.log);
  EXPECT_EQ(last_count(reader.log, "present"), 8u) << slurp(reader.log);
  kvtier_close(s);
}

// Finding 5: a process stopped in the middle of a put (its slots reserved, no lock held) holds
// up neither the others' puts of the same keys nor a clear.
TEST(FileNeighbours, AProcessStoppedMidPutHoldsUpNoPutAndNoClear) {
  const std::string dir = fresh("stopped-put");
  kvtier_store_t* s = open_dir(dir, std::string(";file_capacity=64MiB;") + kShortLock);
  Proc stopped({"put", dir, "0", "8", kShortLock}, dir + "/stopped.log",
               "KVTIER_TEST_FILE_FAULTS=sync:1:stop");
  ASSERT_TRUE(becomes_stopped(stopped.pid, 30)) << slurp(stopped.log);
  const bool ended = ends_within(
      20,
      [&] {
        auto t0 = std::chrono::steady_clock::now();
        for (size_t k = 0; k < 8; ++k) EXPECT_EQ(put_page(s, k), KVTIER_OK);
        EXPECT_EQ(count_present(s, 0, 8), 8u);
        EXPECT_LT(seconds_since(t0), 5.0);
        t0 = std::chrono::steady_clock::now();
        EXPECT_EQ(kvtier_clear(s), KVTIER_OK) << kvtier_last_error();
        EXPECT_EQ(exists_run(s, 0, 8), 0);
        EXPECT_LT(seconds_since(t0), 5.0);
        for (size_t k = 0; k < 8; ++k) EXPECT_EQ(put_page(s, k), KVTIER_OK);
      },
      [&] { ::kill(stopped.pid, SIGCONT); });
  ASSERT_TRUE(ended) << "a put or the clear waited for the stopped process";
  ASSERT_EQ(::kill(stopped.pid, SIGCONT), 0);
  ASSERT_TRUE(exited_ok(stopped.wait_for(30))) << slurp(stopped.log);
  count_present(s, 0, 8);  // whatever the resumed writer did: exact or a miss
  Proc reader({"count", dir, "0", "8"}, dir + "/reader.log");
  ASSERT_TRUE(exited_ok(reader.wait_for(20))) << slurp(reader.log);
  kvtier_close(s);
}

// Whether the log shows `word` within `seconds`.
bool logs_within(const std::string& log, const std::string& word, double seconds) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  while (slurp(log).find(word) == std::string::npos) {
    if (std::chrono::steady_clock::now() > end) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return true;
}

// Processes of two pid namespaces on one folder (containers on one host volume): the pids the
// shared index speaks in (a write's owner, the lock's holder, the roster's members) mean nothing
// across them, so they would take each other's slots and rewrite each other's roster. The folder
// is one namespace's at a time: an open from another fails with KVTIER_ERR_UNSUPPORTED while the
// first one's processes live, and works once they are gone (closed or killed); the pages are the
// records', read byte for byte on either side.
// Whether this test may start processes in pid namespaces of their own (as root); the probe
// opens dir from one and leaves (its claim is stale then).
bool own_pid_ns_permitted(const std::string& dir) {
  Proc probe({"count", dir, "0", "1"}, dir + "/probe.log", "", true);
  const int status = probe.wait_for(60);
  if (WIFEXITED(status) && WEXITSTATUS(status) == kNoPidNamespace) return false;
  EXPECT_TRUE(exited_ok(status)) << "status " << status << ": " << slurp(probe.log);
  return true;
}
constexpr const char* kNoUnshare =
    "unshare(CLONE_NEWPID | CLONE_NEWNS) is not permitted here (not root)";

TEST(FileNeighbours, AnotherPidNamespaceIsRefusedWhileOneHoldsTheFolder) {
  const std::string dir = fresh("pid-namespaces");
  const std::string config = ";file_capacity=64MiB";
  if (!own_pid_ns_permitted(dir)) GTEST_SKIP() << kNoUnshare;
  // This namespace holds the folder (the probe's, gone, is taken over).
  kvtier_store_t* s = open_dir(dir, config);
  for (size_t k = 0; k < 24; ++k) ASSERT_EQ(put_page(s, k), KVTIER_OK);
  Proc other({"put", dir, "24", "16"}, dir + "/other.log", "", true);
  const int status = other.wait_for(60);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 3)
      << "the other pid namespace's open was not refused; status " << status << ": "
      << slurp(other.log);
  EXPECT_NE(slurp(other.log).find("KVTIER_ERR_UNSUPPORTED"), std::string::npos) << slurp(other.log);
  EXPECT_NE(slurp(other.log).find("another pid namespace"), std::string::npos) << slurp(other.log);
  // This namespace's processes go on sharing, unharmed.
  EXPECT_EQ(count_present(s, 0, 24), 24u);
  Proc same({"put", dir, "24", "16"}, dir + "/same.log");
  ASSERT_TRUE(exited_ok(same.wait_for(60))) << slurp(same.log);
  EXPECT_EQ(count_present(s, 24, 16), 16u);
  kvtier_close(s);
  // Closed here, the folder is the other namespace's: every page read there, and more written.
  Proc reader({"count", dir, "0", "40"}, dir + "/reader.log", "", true);
  ASSERT_TRUE(exited_ok(reader.wait_for(60))) << slurp(reader.log);
  EXPECT_EQ(last_count(reader.log, "present"), 40u) << slurp(reader.log);
  Proc writer({"put", dir, "40", "16", config.substr(1)}, dir + "/writer.log", "", true);
  ASSERT_TRUE(exited_ok(writer.wait_for(60))) << slurp(writer.log);
  EXPECT_EQ(slurp(writer.log).find("failed"), std::string::npos) << slurp(writer.log);
  // While a process of another namespace holds it, this one's open is refused; killed, its claim
  // goes with it.
  Proc holder({"hold", dir}, dir + "/holder.log", "", true);
  ASSERT_TRUE(logs_within(holder.log, "ready", 60)) << slurp(holder.log);
  kvtier_store_t* refused = nullptr;
  EXPECT_EQ(kvtier_open(("tiers=file;file_dir=" + dir + config).c_str(), &refused),
            KVTIER_ERR_UNSUPPORTED)
      << kvtier_last_error();
  kvtier_close(refused);
  // SIGKILL for file_writer itself (pid 1 there): the child that reaps it ends after it.
  const std::string self = std::to_string(holder.pid);
  const pid_t inner = std::atoi(slurp("/proc/" + self + "/task/" + self + "/children").c_str());
  ASSERT_GT(inner, 0);
  ASSERT_EQ(::kill(inner, SIGKILL), 0);
  EXPECT_EQ(holder.wait_for(30), (128 + SIGKILL) << 8);
  s = open_dir(dir, config);
  ASSERT_NE(s, nullptr);
  EXPECT_EQ(count_present(s, 0, 56), 56u) << "the pages of both namespaces, byte for byte";
  kvtier_close(s);
}

// The start time of process pid (/proc/<pid>/stat's 22nd field), as a roster names a member.
uint64_t start_time(pid_t pid) {
  const std::string stat = slurp("/proc/" + std::to_string(pid) + "/stat");
  const char* p = std::strrchr(stat.c_str(), ')');
  for (int field = 0; field < 20 && p; ++field) p = std::strchr(p + 1, ' ');
  return p ? std::strtoull(p + 1, nullptr, 10) : 0;
}

// INDEX as a kvtier of index `version` writes it (the roster's layout is the same in every
// version), naming one member: `pid`, started at `start`.
void write_roster(const std::string& ns, uint32_t version, pid_t pid, uint64_t start) {
  struct Member {
    int32_t pid, fd;
    uint64_t start, dev, ino;
  };
  struct Roster {
    uint32_t magic, version;
    uint64_t count;
    Member members[127];
    uint64_t sum;
  } r{};
  r.magic = 0x52495856;  // "VXIR"
  r.version = version;
  r.count = 1;
  r.members[0] = {pid, 3, start, 0, 0};
  r.sum = XXH3_64bits(&r, offsetof(Roster, sum));
  std::ofstream(ns + "/INDEX", std::ios::binary | std::ios::trunc)
      .write(reinterpret_cast<const char*>(&r), sizeof r);
}

// A rolling upgrade: processes of an older kvtier (index version 1) and of this one on one
// folder. Their shared indexes are laid out differently, so two of them over the same page files
// would hand out the same slots twice: an open while the other version's processes live (its
// roster names them) is refused, in this process and in another alike; once they are gone, this
// version takes the folder over and finds the pages in the records.
TEST(FileNeighbours, AnotherIndexVersionIsRefusedWhileItsProcessesLive) {
  const std::string dir = fresh("index-version");
  const std::string config = ";file_capacity=64MiB";
  kvtier_store_t* s = open_dir(dir, config);
  for (size_t k = 0; k < 16; ++k) ASSERT_EQ(put_page(s, k), KVTIER_OK);
  kvtier_close(s);
  const std::string ns = ns_dir(dir);
  ASSERT_FALSE(ns.empty());
  // The older version's process: a child that sleeps, the member of its roster.
  const pid_t old = fork();
  if (old == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    for (;;) pause();
  }
  ASSERT_GT(old, 0);
  const uint64_t start = start_time(old);
  ASSERT_GT(start, 0u);
  write_roster(ns, 1, old, start);
  const std::string said = "in use by processes of another kvtier index version (1";
  kvtier_store_t* refused = nullptr;
  EXPECT_EQ(kvtier_open(("tiers=file;file_dir=" + dir + config).c_str(), &refused),
            KVTIER_ERR_UNSUPPORTED);
  EXPECT_NE(std::string(kvtier_last_error()).find(said), std::string::npos)
      << kvtier_last_error();
  kvtier_close(refused);
  Proc other({"count", dir, "0", "16"}, dir + "/other.log");
  EXPECT_EQ(other.wait_for(60), 3 << 8) << slurp(other.log);
  EXPECT_NE(slurp(other.log).find("KVTIER_ERR_UNSUPPORTED"), std::string::npos) << slurp(other.log);
  EXPECT_NE(slurp(other.log).find(said), std::string::npos) << slurp(other.log);
  // Gone, it leaves its roster behind: this version takes the folder over.
  ASSERT_EQ(::kill(old, SIGKILL), 0);
  int status = 0;
  ASSERT_EQ(::waitpid(old, &status, 0), old);
  s = open_dir(dir, config);
  ASSERT_NE(s, nullptr);
  EXPECT_EQ(count_present(s, 0, 16), 16u) << "the pages of the records, byte for byte";
  for (size_t k = 16; k < 24; ++k) EXPECT_EQ(put_page(s, k), KVTIER_OK);
  Proc reader({"count", dir, "0", "24"}, dir + "/reader.log");
  ASSERT_TRUE(exited_ok(reader.wait_for(60))) << slurp(reader.log);
  EXPECT_EQ(last_count(reader.log, "present"), 24u) << slurp(reader.log);
  kvtier_close(s);
}

// The index version INDEX names (0 if it is missing or short).
uint32_t roster_version(const std::string& ns) {
  const std::string r = slurp(ns + "/INDEX");
  uint32_t version = 0;
  if (r.size() >= 8) std::memcpy(&version, r.data() + 4, sizeof version);
  return version;
}

// A library that predates the refusal opens beside this version's processes (it found their
// roster unreadable and wrote its own): they log it once and leave its roster be, so that no
// more processes of this version come in; once it is gone they write theirs again.
TEST(FileNeighbours, AnotherIndexVersionsRosterIsLeftBeWhileItsProcessesLive) {
  const std::string dir = fresh("index-version-beside");
  const std::string config = ";file_capacity=64MiB";
  kvtier_store_t* s = open_dir(dir, config);
  for (size_t k = 0; k < 8; ++k) ASSERT_EQ(put_page(s, k), KVTIER_OK);
  const std::string ns = ns_dir(dir);
  const uint32_t ours = roster_version(ns);
  ASSERT_GT(ours, 1u);
  const pid_t old = fork();
  if (old == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    for (;;) pause();
  }
  ASSERT_GT(old, 0);
  write_roster(ns, 1, old, start_time(old));
  std::this_thread::sleep_for(std::chrono::milliseconds(150));
  testing::internal::CaptureStderr();
  count_present(s, 0, 8);  // a call: the roster's check
  std::this_thread::sleep_for(std::chrono::milliseconds(150));
  count_present(s, 0, 8);
  const std::string said = testing::internal::GetCapturedStderr();
  EXPECT_NE(said.find("another kvtier index version (1"), std::string::npos) << said;
  EXPECT_EQ(said.find("another kvtier index version (1"),
            said.rfind("another kvtier index version (1"))
      << "logged more than once: " << said;
  EXPECT_EQ(roster_version(ns), 1u) << "the other version's roster was written over";
  Proc refused({"count", dir, "0", "8"}, dir + "/refused.log");
  EXPECT_EQ(refused.wait_for(60), 3 << 8) << slurp(refused.log);
  ASSERT_EQ(::kill(old, SIGKILL), 0);
  int status = 0;
  ASSERT_EQ(::waitpid(old, &status, 0), old);
  std::this_thread::sleep_for(std::chrono::milliseconds(150));
  count_present(s, 0, 8);
  EXPECT_EQ(roster_version(ns), ours);
  Proc reader({"count", dir, "0", "8"}, dir + "/reader.log");
  ASSERT_TRUE(exited_ok(reader.wait_for(60))) << slurp(reader.log);
  EXPECT_EQ(last_count(reader.log, "present"), 8u) << slurp(reader.log);
  kvtier_close(s);
}

// The inode of this process's pid namespace, as the claims in a folder name it.
uint64_t pid_namespace() {
  struct stat st {};
  EXPECT_EQ(::stat("/proc/self/ns/pid", &st), 0);
  return st.st_ino;
}

// The claims ("pidns-*") in the namespace folder ns, sorted.
std::vector<std::string> claims(const std::string& ns) {
  std::vector<std::string> names;
  for (auto& e : fs::directory_iterator(ns))
    if (e.path().filename().string().rfind("pidns-", 0) == 0)
      names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

// A process of an older kvtier (index version 1, whose libraries already hold a claim) on the
// folder: it holds a shared flock on the claim as it names it, "pidns-<inode>", with no version
// in the name. Its roster, a plain file, is gone (a neighbour deleted it, and version 1 writes
// it again only at its next check): the claim, which the kernel holds for the process, is what
// tells. An open meanwhile is refused, naming that version; once the process is gone, its claim
// is deleted and every page is found.
TEST(FileNeighbours, AnOlderVersionsClaimIsRefusedWhileItsProcessLives) {
  const std::string dir = fresh("index-version-claim");
  const std::string config = ";file_capacity=64MiB";
  kvtier_store_t* s = open_dir(dir, config);
  for (size_t k = 0; k < 16; ++k) ASSERT_EQ(put_page(s, k), KVTIER_OK);
  kvtier_close(s);
  const std::string ns = ns_dir(dir);
  ASSERT_FALSE(ns.empty());
  const std::string old_claim = "pidns-" + std::to_string(pid_namespace());
  const std::string claim_path = ns + "/" + old_claim;  // made before the fork: no malloc after
  int ready[2];
  ASSERT_EQ(::pipe(ready), 0);
  const pid_t old = fork();
  if (old == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    const int fd = ::open(claim_path.c_str(), O_RDONLY | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0 || ::flock(fd, LOCK_SH) != 0) _exit(1);
    if (::write(ready[1], "r", 1) != 1) _exit(1);
    for (;;) pause();
  }
  ASSERT_GT(old, 0);
  ::close(ready[1]);
  char byte = 0;
  ASSERT_EQ(::read(ready[0], &byte, 1), 1) << "the old version's process did not take its claim";
  ::close(ready[0]);
  ASSERT_EQ(::unlink((ns + "/INDEX").c_str()), 0);
  const std::string said = "in use by processes of another kvtier index version (1, this library";
  kvtier_store_t* refused = nullptr;
  EXPECT_EQ(kvtier_open(("tiers=file;file_dir=" + dir + config).c_str(), &refused),
            KVTIER_ERR_UNSUPPORTED);
  EXPECT_NE(std::string(kvtier_last_error()).find(said), std::string::npos)
      << kvtier_last_error();
  kvtier_close(refused);
  Proc other({"count", dir, "0", "16"}, dir + "/other.log");
  EXPECT_EQ(other.wait_for(60), 3 << 8) << slurp(other.log);
  EXPECT_NE(slurp(other.log).find(said), std::string::npos) << slurp(other.log);
  ASSERT_EQ(::kill(old, SIGKILL), 0);
  int status = 0;
  ASSERT_EQ(::waitpid(old, &status, 0), old);
  s = open_dir(dir, config);
  ASSERT_NE(s, nullptr);
  EXPECT_EQ(count_present(s, 0, 16), 16u) << "the pages of the records, byte for byte";
  for (const std::string& name : claims(ns)) EXPECT_NE(name, old_claim) << "a dead claim stayed";
  kvtier_close(s);
}

// What a library of index version 1 does at open (its rule, re-implemented here as it was
// released): every "pidns-*" file in the folder other than its own claim, "pidns-<inode>", is
// another pid namespace's; one it can lock exclusively is a dead one's and is deleted, one it
// cannot is live, and then it refuses to open.
bool version1_refuses(const std::string& ns, uint64_t inode) {
  const std::string own = "pidns-" + std::to_string(inode);
  bool live = false;
  for (const std::string& name : claims(ns)) {
    if (name == own) continue;
    const std::string path = ns + "/" + name;
    const int fd = ::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) continue;
    if (::flock(fd, LOCK_EX | LOCK_NB) == 0)
      ::unlink(path.c_str());
    else
      live |= errno == EWOULDBLOCK;
    ::close(fd);
  }
  return live;
}

// The other direction of a rolling upgrade: an older library (index version 1) opens the folder
// while a process of this version holds it. It predates the check of index versions, but it
// refuses an open while another claim is held: this version's claim has another name than its
// own, so it refuses (saying "another pid namespace") rather than make an index of its own over
// the same page files. Once this version's processes are gone, it takes the folder over.
TEST(FileNeighbours, AnOlderLibraryFindsThisVersionsClaimAnotherOne) {
  const std::string dir = fresh("index-version-old-open");
  Proc holder({"hold", dir}, dir + "/holder.log");
  ASSERT_TRUE(logs_within(holder.log, "ready", 60)) << slurp(holder.log);
  const std::string ns = ns_dir(dir);
  ASSERT_FALSE(ns.empty());
  const uint64_t inode = pid_namespace();
  EXPECT_EQ(claims(ns), std::vector<std::string>{"pidns-" + std::to_string(inode) + ".v2"});
  EXPECT_TRUE(version1_refuses(ns, inode)) << "a version 1 library would open beside it";
  EXPECT_EQ(claims(ns).size(), 1u) << "a live claim was deleted";
  holder.kill_now();
  EXPECT_FALSE(version1_refuses(ns, inode)) << "the claim of a process gone still keeps it out";
  EXPECT_TRUE(claims(ns).empty());
}

// A process of this version stops (SIGSTOP) holding the index's lock while a library older than
// the claims (index version 1) has the folder open beside this one (its roster is in INDEX). The
// others do not make the index anew without the stopped one, which would publish a roster of
// this version over the other's and let more processes of this version in beside it: their
// calls miss or time out, boundedly, and the other version's roster stays. Once it is gone and
// the stopped one resumes, they go on with every page.
TEST(FileNeighbours, AStoppedLockHolderIsNotAbandonedBesideAnotherIndexVersion) {
  const std::string dir = fresh("index-version-abandon");
  const std::string config = std::string(";file_capacity=64MiB;") + kShortLock;
  kvtier_store_t* s = open_dir(dir, config);
  for (size_t k = 0; k < 20; ++k) ASSERT_EQ(put_page(s, k), KVTIER_OK);
  const std::string ns = ns_dir(dir);
  const uint32_t ours = roster_version(ns);
  ASSERT_GT(ours, 1u);
  Proc stopped({"put", dir, "20", "8", kShortLock}, dir + "/stopped.log",
               "KVTIER_TEST_FILE_FAULTS=commit:1:stop");
  ASSERT_TRUE(becomes_stopped(stopped.pid, 30)) << slurp(stopped.log);
  const pid_t old = fork();
  if (old == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    for (;;) pause();
  }
  ASSERT_GT(old, 0);
  write_roster(ns, 1, old, start_time(old));
  std::this_thread::sleep_for(std::chrono::milliseconds(150));
  testing::internal::CaptureStderr();
  const bool ended = ends_within(
      20,
      [&] {
        const auto t0 = std::chrono::steady_clock::now();
        count_present(s, 0, 20);  // misses: the lock is not had
        EXPECT_NE(put_page(s, 30), KVTIER_OK);
        count_present(s, 0, 20);
        EXPECT_LT(seconds_since(t0), 5.0) << "one timeout (0.5 s), then brief waits";
      },
      [&] { ::kill(stopped.pid, SIGCONT); });
  const std::string said = testing::internal::GetCapturedStderr();
  ASSERT_TRUE(ended) << "a call waited for the stopped process";
  EXPECT_EQ(roster_version(ns), 1u) << "the index was made anew over the other version's roster";
  EXPECT_NE(said.find("is not made anew without thread"), std::string::npos) << said;
  EXPECT_EQ(said.find("the index is made anew"), std::string::npos) << said;
  Proc refused({"count", dir, "0", "20"}, dir + "/refused.log");
  EXPECT_EQ(refused.wait_for(60), 3 << 8) << slurp(refused.log);
  // The other version gone and the stopped process resumed: every page, one index again.
  ASSERT_EQ(::kill(old, SIGKILL), 0);
  int status = 0;
  ASSERT_EQ(::waitpid(old, &status, 0), old);
  ASSERT_EQ(::kill(stopped.pid, SIGCONT), 0);
  ASSERT_TRUE(exited_ok(stopped.wait_for(30))) << slurp(stopped.log);
  std::this_thread::sleep_for(std::chrono::milliseconds(150));
  EXPECT_EQ(count_present(s, 0, 20), 20u);
  EXPECT_EQ(roster_version(ns), ours);
  Proc reader({"count", dir, "0", "20"}, dir + "/reader.log");
  ASSERT_TRUE(exited_ok(reader.wait_for(60))) << slurp(reader.log);
  EXPECT_EQ(last_count(reader.log, "present"), 20u) << slurp(reader.log);
  kvtier_close(s);
}

// Deletes the pid namespace claims in the namespace folder ns.
void remove_claims(const std::string& ns) {
  for (auto& e : fs::directory_iterator(ns))
    if (e.path().filename().string().rfind("pidns-", 0) == 0) ::unlink(e.path().c_str());
}

// A neighbour deletes the claim of the pid namespace holding the folder: its processes make it
// again at their next call (0.1 s), so another namespace's open is refused again; one that came
// in between is logged as an error by them, and reads stay exact or a miss.
TEST(FileNeighbours, ADeletedPidNamespaceClaimIsMadeAgain) {
  const std::string dir = fresh("pid-namespace-claim");
  if (!own_pid_ns_permitted(dir)) GTEST_SKIP() << kNoUnshare;
  kvtier_store_t* s = open_dir(dir, ";file_capacity=64MiB");
  for (size_t k = 0; k < 16; ++k) ASSERT_EQ(put_page(s, k), KVTIER_OK);
  const std::string ns = ns_dir(dir);
  remove_claims(ns);
  std::this_thread::sleep_for(std::chrono::milliseconds(150));
  EXPECT_EQ(count_present(s, 0, 16), 16u);  // a call: the roster's check makes the claim again
  Proc refused({"count", dir, "0", "16"}, dir + "/refused.log", "", true);
  EXPECT_EQ(refused.wait_for(60), 3 << 8) << slurp(refused.log);
  EXPECT_NE(slurp(refused.log).find("KVTIER_ERR_UNSUPPORTED"), std::string::npos)
      << slurp(refused.log);
  // Deleted again, and another namespace's process opens before anyone here makes a call.
  remove_claims(ns);
  Proc intruder({"hold", dir}, dir + "/intruder.log", "", true);
  ASSERT_TRUE(logs_within(intruder.log, "ready", 60)) << slurp(intruder.log);
  std::this_thread::sleep_for(std::chrono::milliseconds(150));
  testing::internal::CaptureStderr();
  count_present(s, 0, 16);  // exact or a miss
  const std::string said = testing::internal::GetCapturedStderr();
  EXPECT_NE(said.find("another pid namespace"), std::string::npos) << said;
  EXPECT_NE(said.find("they opened it while pidns-"), std::string::npos) << said;
  intruder.kill_now();
  count_present(s, 0, 16);
  kvtier_close(s);
}

// The neighbours soak: three honest processes of mixed put/get/exists/remove (every read checked
// byte for byte; one of them forks mid-run and its child works on with a store of its own) and
// this one, on one folder, for KVTIER_TEST_SOAK_SECONDS (default 12) while a
// fourth process is stopped and resumed (also while it holds the lock), now and then SIGKILLed
// and restarted, and this process
// deletes LOCK, INDEX and the pid namespace's claim, truncates and scribbles INDEX. No process
// crashes, no read is wrong, and no honest call waits past the lock timeout's bound (0.5 s here; a
// call may meet it twice and a rebuild: 5 s is the limit checked).
TEST(FileNeighbours, SoakHonestProcessesBesideACarelessOne) {
  const char* env = getenv("KVTIER_TEST_SOAK_SECONDS");
  const double seconds = env ? std::atof(env) : 12;
  const std::string dir = fresh("neighbours-soak");
  const std::string config = std::string("file_capacity=64MiB;") + kShortLock;
  kvtier_store_t* s = open_dir(dir, ";" + config);
  const std::string ns = ns_dir(dir);
  ASSERT_FALSE(ns.empty());
  const std::string end = until(seconds + 1);
  std::mt19937_64 g(std::random_device{}());
  std::vector<std::unique_ptr<Proc>> honest;
  // The last honest one forks a third of the way: its child finds the inherited handle closed,
  // opens its own store and works on to the end beside its parent.
  const std::string forked_log = dir + "/forked-child.log";
  for (int i = 0; i < 3; ++i) {
    std::vector<std::string> args{"mixed", dir, std::to_string(g()), end, config};
    if (i == 2) args.push_back(forked_log);
    honest.push_back(std::make_unique<Proc>(args, dir + "/honest-" + std::to_string(i) + ".log"));
  }
  int runs = 0;
  auto careless = [&] {
    return std::make_unique<Proc>(
        std::vector<std::string>{"mixed", dir, std::to_string(g()), end, config},
        dir + "/careless-" + std::to_string(runs++) + ".log",
        // and it stops itself once holding the lock, resumed by the next SIGCONT below
        "KVTIER_TEST_FILE_FAULTS=commit:" + std::to_string(20 + g() % 100) + ":stop");
  };
  auto neighbour = careless();
  const auto t_end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  size_t parent_hits = 0;
  Latencies parent;  // this process's reads
  for (int round = 0; std::chrono::steady_clock::now() < t_end && !HasFailure(); ++round) {
    const std::string index = ns + "/INDEX";
    switch (round % 6) {
      case 0:
        ::kill(neighbour->pid, SIGSTOP);
        break;
      case 1:
        ::unlink(index.c_str());
        ::unlink((ns + "/LOCK").c_str());
        remove_claims(ns);
        break;
      case 2:
        ::kill(neighbour->pid, SIGCONT);
        break;
      case 3:
        scribble(index, 0, 4096);
        break;
      case 4:
        ::truncate(index.c_str(), 0);
        break;
      default:
        if (round % 12 == 11) {  // killed, at any instant, and back
          neighbour->kill_now();
          neighbour = careless();
        }
    }
    const auto t0 = std::chrono::steady_clock::now();
    parent_hits += count_present(s, g() % 64, 16);
    parent.since(t0);
    std::this_thread::sleep_for(std::chrono::milliseconds(150 + g() % 200));
  }
  ::kill(neighbour->pid, SIGCONT);
  size_t verified = 0, slowest_ms = 0, made_anew = 0;
  for (auto* p : {&honest[0], &honest[1], &honest[2], &neighbour}) {
    for (size_t at = 0; (at = slurp((*p)->log).find("is made anew", at)) != std::string::npos; ++at)
      ++made_anew;
  }
  for (auto& p : honest) {
    slowest_ms = std::max(slowest_ms, last_count(p->log, "slowest_ms"));
    const int status = p->wait_for(seconds + 60);
    EXPECT_TRUE(exited_ok(status)) << "status " << status << ": " << slurp(p->log);
    EXPECT_EQ(slurp(p->log).find("WRONG BYTES"), std::string::npos) << slurp(p->log);
    EXPECT_LT(last_count(p->log, "slowest_ms"), 5000u) << "an honest call waited too long";
    verified += last_count(p->log, "verified");
  }
  // The forked child (its parent's status above includes its own).
  const std::string child = slurp(forked_log);
  EXPECT_NE(child.find("inherited handle: KVTIER_ERR_CLOSED KVTIER_ERR_CLOSED"), std::string::npos)
      << child;
  EXPECT_NE(child.find("done"), std::string::npos) << child;
  EXPECT_EQ(child.find("WRONG BYTES"), std::string::npos) << child;
  EXPECT_LT(last_count(forked_log, "slowest_ms"), 5000u) << "an honest call waited too long";
  EXPECT_GT(last_count(forked_log, "verified"), 0u) << child;
  verified += last_count(forked_log, "verified");
  // Its fault may stop it again after the last SIGCONT above: resume it until it ends.
  int status = -1;
  for (int i = 0; i < 10 * (static_cast<int>(seconds) + 60) && status == -1; ++i) {
    if (neighbour->pid > 0) ::kill(neighbour->pid, SIGCONT);
    status = neighbour->wait_for(0.1);
  }
  EXPECT_TRUE(exited_ok(status)) << "status " << status << ": " << slurp(neighbour->log);
  EXPECT_GT(verified, 100u) << "the honest processes verified too few reads to mean anything";
  EXPECT_LT(parent.slowest(), 5000.0) << "a read here waited too long";
  std::printf(
      "neighbours soak %.0f s: %zu reads verified in the processes (slowest call %zu ms), %zu "
      "hits here (slowest %.0f ms), %zu indexes made anew past a stopped holder\n",
      seconds, verified, slowest_ms, parent_hits, parent.slowest(), made_anew);
  kvtier_close(s);
}

}  // namespace
