// Helper process for the file-tier tests (a real second process, as a TP rank or a crashing
// engine would be). Every page's bytes follow from its key (file_pages.h), so any process can
// tell right bytes from wrong ones.
//   file_writer write DIR SEED          writes, re-writes and removes pages forever (killed)
//   file_writer hold DIR                opens the namespace and sleeps until killed
//   file_writer mixed DIR SEED UNTIL [CONFIG [CHILD_LOG]]  put/get/exists/remove, every read
//                                       verified, until the CLOCK_REALTIME second UNTIL; prints
//                                       "verified N" and "slowest_ms N" (its longest call) as it
//                                       goes; exits 4 on wrong bytes. With CHILD_LOG it forks a
//                                       third of the way: the child checks that the inherited
//                                       handle is closed to it (exits 6 if not), opens its own
//                                       and does the same, printing to CHILD_LOG
//   file_writer put DIR FIRST COUNT [CONFIG]  stores pages FIRST.. (8 a batch), then exits
//   file_writer count DIR FIRST COUNT   prints how many of those pages read back (verified)
//   file_writer clear DIR               clears the namespace
#include <fcntl.h>
#include <kvtier/kvtier.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "tests/file/file_pages.h"

namespace {

using kvtier_test::page_key;
using kvtier_test::page_value;

struct Batch {
  std::vector<std::string> keys;
  std::vector<std::vector<unsigned char>> values;
  std::vector<const char*> ck;
  std::vector<void*> ptrs;
  std::vector<size_t> sizes;
  explicit Batch(const std::vector<size_t>& ks) {
    for (size_t k : ks) {
      keys.push_back(page_key(k));
      values.push_back(page_value(k));
    }
    for (size_t i = 0; i < ks.size(); ++i) {
      ck.push_back(keys[i].c_str());
      ptrs.push_back(values[i].data());
      sizes.push_back(values[i].size());
    }
  }
};

// Reads the pages and checks each hit byte for byte; exits 4 on wrong bytes. Returns the hits.
size_t read_checked(kvtier_store_t* s, const std::vector<size_t>& ks) {
  Batch b(ks);
  std::vector<std::vector<unsigned char>> got;
  std::vector<size_t> caps;
  for (auto& v : b.values) got.emplace_back(v.size() + 4096, 0xCC);
  for (size_t i = 0; i < ks.size(); ++i) {
    b.ptrs[i] = got[i].data();
    caps.push_back(got[i].size());
  }
  std::vector<int64_t> res(ks.size());
  kvtier_batch_get(s, b.ck.data(), ks.size(), b.ptrs.data(), caps.data(), res.data());
  size_t hits = 0;
  for (size_t i = 0; i < ks.size(); ++i) {
    if (res[i] == KVTIER_ERR_NOT_FOUND) continue;
    if (res[i] != static_cast<int64_t>(b.values[i].size()) ||
        std::memcmp(got[i].data(), b.values[i].data(), b.values[i].size()) != 0) {
      std::fprintf(stderr, "file_writer %d: WRONG BYTES for page %zu (result %lld)\n", getpid(),
                   ks[i], static_cast<long long>(res[i]));
      std::exit(4);
    }
    ++hits;
  }
  return hits;
}

void put(kvtier_store_t* s, const std::vector<size_t>& ks, std::vector<int>* res) {
  Batch b(ks);
  res->assign(ks.size(), 0);
  std::vector<const void*> cptrs(b.ptrs.begin(), b.ptrs.end());
  kvtier_batch_set(s, b.ck.data(), ks.size(), cptrs.data(), b.sizes.data(), res->data());
}

// A forked child's first calls: on the handle it inherited they fail with KVTIER_ERR_CLOSED
// (else it exits 6); then, writing to `log`, it opens a store of its own (exits 3 if it cannot).
kvtier_store_t* forked_child(kvtier_store_t* inherited, const std::string& config,
                             const char* log) {
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  const int fd = ::open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  if (fd < 0 || dup2(fd, 1) < 0 || dup2(fd, 2) < 0) _exit(3);
  Batch b({0, 1});
  int res[2] = {0, 0};
  size_t run = 0;
  const int get = kvtier_batch_exists(inherited, b.ck.data(), 2, &run);
  std::vector<const void*> values(b.ptrs.begin(), b.ptrs.end());
  const int put = kvtier_batch_set(inherited, b.ck.data(), 2, values.data(), b.sizes.data(), res);
  std::printf("inherited handle: %s %s\n", kvtier_error_name(get), kvtier_error_name(put));
  std::fflush(stdout);
  if (get != KVTIER_ERR_CLOSED || put != KVTIER_ERR_CLOSED) _exit(6);
  kvtier_close(inherited);  // forgets it; the parent's store is the parent's
  kvtier_store_t* own = nullptr;
  if (kvtier_open(config.c_str(), &own) != KVTIER_OK) {
    std::fprintf(stderr, "file_writer: open after fork: %s\n", kvtier_last_error());
    _exit(3);
  }
  return own;
}

// Mixed calls until the CLOCK_REALTIME second `until`, then closes s; the exit status. With
// `child_log`, it forks a third of the way there and both go on, the child with a store of its
// own (forked_child); the parent then ends with the child's status if that is not 0.
int mixed(kvtier_store_t* s, uint64_t seed, long until, const std::string& config,
          const char* child_log) {
  std::mt19937_64 g(seed);
  size_t verified = 0;
  int64_t slowest_ms = 0;
  timespec now{};
  clock_gettime(CLOCK_REALTIME, &now);
  long fork_at = child_log ? now.tv_sec + std::max(1l, (until - now.tv_sec) / 3) : 0;
  pid_t child = -1;
  for (uint64_t round = 0;; ++round) {
    clock_gettime(CLOCK_REALTIME, &now);
    if (now.tv_sec >= until) break;
    if (fork_at && now.tv_sec >= fork_at) {
      fork_at = 0;
      child = fork();
      if (child == 0) {
        s = forked_child(s, config, child_log);
        g.seed(seed ^ 0x5eed);
        verified = 0;
        slowest_ms = 0;
      }
    }
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<size_t> ks(1 + g() % 16);
    for (size_t& k : ks) k = g() % kvtier_test::kUniverse;
    std::vector<int> res(ks.size());
    Batch b(ks);
    switch (g() % 8) {
      case 0:
        kvtier_batch_remove(s, b.ck.data(), ks.size(), res.data());
        break;
      case 1:
      case 2: {
        size_t run = 0;
        kvtier_batch_exists(s, b.ck.data(), ks.size(), &run);
      } break;
      case 3:
      case 4:
      case 5:
        verified += read_checked(s, ks);
        break;
      default:
        put(s, ks, &res);
    }
    slowest_ms = std::max<int64_t>(
        slowest_ms,
        std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0)
            .count());
    if (round % 64 == 0) {
      std::printf("verified %zu\nslowest_ms %lld\n", verified, static_cast<long long>(slowest_ms));
      std::fflush(stdout);
    }
  }
  std::printf("verified %zu\nslowest_ms %lld\ndone\n", verified,
              static_cast<long long>(slowest_ms));
  std::fflush(stdout);
  kvtier_close(s);
  int status = 0;
  if (child > 0 && waitpid(child, &status, 0) == child && status != 0) {
    std::printf("forked child: status %d\n", status);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) return 2;
  const std::string mode = argv[1];
  std::string config = "tiers=file;file_dir=" + std::string(argv[2]);
  if ((mode == "put" || mode == "mixed") && argc > 5) config += ";" + std::string(argv[5]);
  kvtier_store_t* s = nullptr;
  int rc = kvtier_open(config.c_str(), &s);
  if (rc != KVTIER_OK) {
    std::fprintf(stderr, "file_writer: open: %s: %s\n", kvtier_error_name(rc), kvtier_last_error());
    return 3;
  }
  std::printf("ready\n");
  std::fflush(stdout);
  if (mode == "hold") {
    for (;;) pause();
  }
  if (mode == "clear") {
    rc = kvtier_clear(s);
    kvtier_close(s);
    return rc == KVTIER_OK ? 0 : 5;
  }
  if (mode == "mixed" && argc > 4)
    return mixed(s, std::strtoull(argv[3], nullptr, 10), std::strtol(argv[4], nullptr, 10), config,
                 argc > 6 ? argv[6] : nullptr);
  if ((mode == "put" || mode == "count") && argc > 4) {
    std::vector<size_t> ks;
    for (size_t k = std::strtoull(argv[3], nullptr, 10), n = std::strtoull(argv[4], nullptr, 10); n;
         --n, ++k)
      ks.push_back(k);
    std::vector<int> res;
    if (mode == "put") {
      for (size_t at = 0; at < ks.size(); at += 8) {  // batches of 8, as an engine's backups
        const std::vector<size_t> part(ks.begin() + at, ks.begin() + std::min(at + 8, ks.size()));
        put(s, part, &res);
        for (size_t i = 0; i < part.size(); ++i)
          if (res[i] != KVTIER_OK)
            std::printf("failed %zu %s\n", part[i], kvtier_error_name(res[i]));
      }
    } else {
      std::printf("present %zu\n", read_checked(s, ks));
    }
    kvtier_close(s);
    return 0;
  }
  std::mt19937_64 g(std::strtoull(argv[3], nullptr, 10));
  for (;;) {
    std::vector<size_t> ks(1 + g() % 16);
    for (size_t& k : ks) k = g() % kvtier_test::kUniverse;
    std::vector<int> res;
    if (g() % 8 == 0) {
      Batch b(ks);
      res.resize(ks.size());
      kvtier_batch_remove(s, b.ck.data(), ks.size(), res.data());
    } else {
      put(s, ks, &res);
    }
  }
}
