// One namespace, many processes (TP ranks, DP ranks, engine instances on one node): real
// helper processes (file_writer) through the C ABI. Pages one writes the others see at once;
// clear and capacity are the namespace's; a process SIGKILLed at any instant, holding the lock
// or not, never makes another read wrong bytes or wait for ever.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <kvtier/kvtier.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "tests/file/file_pages.h"
#include "tests/file/file_procs.h"
#include "tests/common/test_util.h"

namespace fs = std::filesystem;
using namespace kvtier_test;

namespace {

TEST(FileShared, PagesOneProcessWritesTheOthersReadAtOnce) {
  const std::string dir = fresh("share");
  kvtier_store_t* s = open_dir(dir);  // open first: the others join a live namespace
  Proc writer({"put", dir, "0", "40"}, dir + "/writer.log");
  ASSERT_TRUE(exited_ok(writer.wait_for(60))) << slurp(dir + "/writer.log");
  // Visible as soon as the writer's put returned: no polling, no reopen.
  EXPECT_EQ(exists_run(s, 0, 40), 40);
  EXPECT_EQ(count_present(s, 0, 40), 40u);
  // And the other way, to a process that joins later.
  for (size_t k = 40; k < 60; ++k) ASSERT_EQ(kvtier_test::put_page(s, k), KVTIER_OK);
  Proc reader({"count", dir, "0", "60"}, dir + "/reader.log");
  ASSERT_TRUE(exited_ok(reader.wait_for(60))) << slurp(dir + "/reader.log");
  EXPECT_EQ(last_count(dir + "/reader.log", "present"), 60u) << slurp(dir + "/reader.log");
  EXPECT_EQ(file_stat(s, "keys"), 60u);
  kvtier_close(s);
}

TEST(FileShared, ClearInOneProcessIsSeenByTheOthers) {
  const std::string dir = fresh("clear");
  kvtier_store_t* s = open_dir(dir);
  Proc writer({"put", dir, "0", "30"}, dir + "/writer.log");
  ASSERT_TRUE(exited_ok(writer.wait_for(60))) << slurp(dir + "/writer.log");
  Proc holder({"hold", dir}, dir + "/holder.log");
  ASSERT_EQ(count_present(s, 0, 30), 30u);
  Proc clearer({"clear", dir}, dir + "/clear.log");
  ASSERT_TRUE(exited_ok(clearer.wait_for(60))) << slurp(dir + "/clear.log");
  EXPECT_EQ(exists_run(s, 0, 30), 0);
  EXPECT_EQ(count_present(s, 0, 30), 0u);
  EXPECT_EQ(file_stat(s, "keys"), 0u);
  EXPECT_EQ(file_stat(s, "bytes"), 0u);
  // The namespace keeps working for everyone after it.
  Proc again({"put", dir, "5", "10"}, dir + "/again.log");
  ASSERT_TRUE(exited_ok(again.wait_for(60))) << slurp(dir + "/again.log");
  EXPECT_EQ(count_present(s, 0, 30), 10u);
  kvtier_close(s);
}

TEST(FileShared, CapacityIsTheNamespacesNotEachProcesss) {
  const std::string dir = fresh("capacity");
  const std::string cap = "file_capacity=1MiB";
  kvtier_store_t* s = open_dir(dir, ";" + cap);
  // Three writers at once, 64 pages of 16-80 KiB each (about 9 MiB in all); the last one asks
  // for a larger capacity and gets the namespace's.
  Proc a({"put", dir, "0", "64", cap}, dir + "/a.log");
  Proc b({"put", dir, "64", "64", cap}, dir + "/b.log");
  Proc c({"put", dir, "128", "64", "file_capacity=64MiB"}, dir + "/c.log");
  for (Proc* p : {&a, &b, &c}) ASSERT_TRUE(exited_ok(p->wait_for(120))) << slurp(p->log);
  EXPECT_LE(file_stat(s, "bytes"), 1u << 20);
  EXPECT_EQ(file_stat(s, "capacity"), 1u << 20);
  EXPECT_GT(file_stat(s, "evictions"), 0u);
  const size_t present = count_present(s, 0, 192);
  EXPECT_GT(present, 5u);
  EXPECT_EQ(present, file_stat(s, "keys"));
  uint64_t bytes = 0;  // what the present pages' slots hold
  for (size_t k = 0; k < 192; ++k)
    if (exists_run(s, k, 1) == 1) bytes += (page_value(k).size() + 4095) / 4096 * 4096;
  EXPECT_LE(bytes, 1u << 20);
  EXPECT_EQ(bytes, file_stat(s, "bytes"));
  kvtier_close(s);
}

TEST(FileShared, DeathHoldingTheLockIsRecoveredByTheNextLocker) {
  const std::string dir = fresh("owner-dead");
  kvtier_store_t* s = open_dir(dir);
  Proc before({"put", dir, "0", "20"}, dir + "/before.log");
  ASSERT_TRUE(exited_ok(before.wait_for(60))) << slurp(before.log);
  // Its first commit kills it while it holds the namespace lock, halfway through a batch.
  Proc dies({"put", dir, "20", "20"}, dir + "/dies.log", "KVTIER_TEST_FILE_FAULTS=commit:3:kill");
  const int status = dies.wait_for(60);
  ASSERT_TRUE(status >= 0 && WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
      << status << " " << slurp(dies.log);
  // This process, open all along, takes the lock next: it rebuilds the index and goes on.
  EXPECT_EQ(exists_run(s, 0, 20), 20);
  EXPECT_EQ(count_present(s, 0, 20), 20u);
  count_present(s, 20, 20);  // whatever of the dead one's batch is there reads right
  Proc after({"put", dir, "40", "20"}, dir + "/after.log");
  ASSERT_TRUE(exited_ok(after.wait_for(60))) << slurp(after.log);
  EXPECT_EQ(count_present(s, 40, 20), 20u);
  kvtier_close(s);
  s = open_dir(dir);  // a fresh index from the records holds the same
  EXPECT_EQ(count_present(s, 0, 20), 20u);
  EXPECT_EQ(count_present(s, 40, 20), 20u);
  kvtier_close(s);
}

// Threads of this process (put, get, exists, remove, now and then a clear) beside another
// process writing the same keys: the in-process half of the sharing, for ThreadSanitizer.
TEST(FileShared, ThreadsAndAnotherProcessMixOnOneNamespace) {
  const std::string dir = fresh("threads");
  kvtier_store_t* s = open_dir(dir);
  Proc writer({"write", dir, "7"}, dir + "/writer.log");
  std::atomic<size_t> hits{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      std::mt19937_64 g(t);
      for (int round = 0; round < 150; ++round) {
        const size_t k = g() % kvtier_test::kUniverse;
        switch (g() % 6) {
          case 0: {
            const std::string key = page_key(k);
            const char* ck = key.c_str();
            int r = 0;
            kvtier_batch_remove(s, &ck, 1, &r);
            break;
          }
          case 1:
            exists_run(s, k, 4);
            break;
          case 2:
            if (t == 0 && round % 50 == 49) {
              EXPECT_EQ(kvtier_clear(s), KVTIER_OK);
            }
            break;
          case 3:
            kvtier_test::put_page(s, k);
            break;
          default:
            hits += count_present(s, k, 3);
        }
      }
    });
  for (auto& t : threads) t.join();
  EXPECT_GT(hits.load(), 0u) << "no read hit: the test checked no bytes";
  writer.kill_now();
  kvtier_close(s);
}

// Four processes of mixed put/get/exists/remove on one namespace, every read checked byte for
// byte, one of them SIGKILLed every KVTIER_TEST_SOAK_SECONDS / 24 seconds (24 kills) and
// restarted; some restarts kill themselves inside a commit, holding the lock. This process
// keeps the namespace open throughout, so no fresh open ever tidies up after the dead.
TEST(FileShared, FourProcessesUnderSigkillNeverReadWrongBytes) {
  const char* env = getenv("KVTIER_TEST_SOAK_SECONDS");
  const double seconds = env ? std::atof(env) : 20;  // the review asks for 60: set it so
  constexpr int kProcs = 4, kKills = 24;
  const std::string dir = fresh("soak");
  kvtier_store_t* s = open_dir(dir);
  timespec now{};
  clock_gettime(CLOCK_REALTIME, &now);
  const std::string until = std::to_string(now.tv_sec + static_cast<long>(seconds) + 2);
  std::mt19937_64 g(std::random_device{}());
  std::vector<std::unique_ptr<Proc>> procs(kProcs);
  int runs = 0;
  auto start = [&](int i) {
    const bool self_kill = runs % 3 == 2;
    const std::string log = dir + "/run-" + std::to_string(runs++) + ".log";
    procs[i] = std::make_unique<Proc>(
        std::vector<std::string>{"mixed", dir, std::to_string(g()), until}, log,
        self_kill ? "KVTIER_TEST_FILE_FAULTS=commit:" + std::to_string(20 + g() % 200) + ":kill"
                  : "");
  };
  for (int i = 0; i < kProcs; ++i) start(i);
  size_t verified = 0, parent_hits = 0;
  std::vector<std::string> logs;
  size_t recoveries = 0;  // index rebuilds after a death holding the lock
  auto reap = [&](Proc& p, int status) {
    verified += last_count(p.log, "verified");
    for (size_t at = 0; (at = slurp(p.log).find("rebuilding the index", at)) != std::string::npos;
         ++at)
      ++recoveries;
    const bool wrong = slurp(p.log).find("WRONG BYTES") != std::string::npos;
    EXPECT_FALSE(wrong) << slurp(p.log);
    EXPECT_TRUE(status >= 0 &&
                (WIFSIGNALED(status) ? WTERMSIG(status) == SIGKILL : WEXITSTATUS(status) == 0))
        << "status " << status << ": " << slurp(p.log);
  };
  for (int kill = 0; kill < kKills; ++kill) {
    std::this_thread::sleep_for(std::chrono::duration<double>(seconds / kKills));
    const int victim = static_cast<int>(g() % kProcs);
    reap(*procs[victim], procs[victim]->kill_now());
    start(victim);
    // Those that killed themselves in a commit start again too.
    for (int i = 0; i < kProcs; ++i) {
      int status = 0;
      if (waitpid(procs[i]->pid, &status, WNOHANG) == procs[i]->pid) {
        procs[i]->pid = -1;
        reap(*procs[i], status);
        start(i);
      }
    }
    parent_hits += count_present(s, 0, kvtier_test::kUniverse);
    if (HasFailure()) break;
  }
  for (auto& p : procs) {  // (the zombies of the others hold nothing up meanwhile)
    const int status = p->wait_for(seconds + 60);
    ASSERT_NE(status, -1) << "a process still runs long after its end: blocked? " << slurp(p->log);
    reap(*p, status);
  }
  EXPECT_GT(verified, 100u) << "the processes verified too few reads to mean anything";
  EXPECT_GT(parent_hits, 0u);
  count_present(s, 0, kvtier_test::kUniverse);
  kvtier_close(s);
  // A fresh open rebuilds from the records alone: every page there reads right.
  s = open_dir(dir);
  count_present(s, 0, kvtier_test::kUniverse);
  kvtier_close(s);
  std::printf("soak %.0f s: %d runs, %zu reads verified in the processes, %zu index rebuilds\n",
              seconds, runs, verified, recoveries);
}

}  // namespace
