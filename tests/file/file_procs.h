// The file suites' other processes: file_writer started as a real second (third, ...) process,
// and the checks every suite on a shared folder makes. Every page's bytes follow from its key
// (file_pages.h), so any process can tell right bytes from wrong ones.
#pragma once

#include <fcntl.h>
#include <gtest/gtest.h>
#include <kvtier/kvtier.h>
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "tests/file/file_pages.h"
#include "tests/common/test_util.h"

namespace kvtier_test {

// What a Proc's child exits with where it may not make a pid namespace (not root).
constexpr int kNoPidNamespace = 77;

// A file_writer process; its stdout and stderr go to `log`. With `own_pid_ns`, it runs as the
// first process of a new pid namespace with its own /proc (as in a container): the child forked
// here makes the namespaces (pid and mount), closes what it inherited from the test (its locks)
// and waits for file_writer, exiting with its status (kNoPidNamespace if it may not make them).
struct Proc {
  pid_t pid = -1;
  std::string log;
  Proc(const std::vector<std::string>& args, const std::string& log_path,
       const std::string& env = "", bool own_pid_ns = false)
      : log(log_path) {
    pid = fork();
    if (pid == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlive a test that crashed
      const int fd = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
      dup2(fd, 1);
      dup2(fd, 2);
      if (!env.empty()) putenv(const_cast<char*>(env.c_str()));
      if (own_pid_ns) enter_own_pid_ns();
      std::vector<std::string> a = args;
      std::vector<char*> argv{const_cast<char*>(KVTIER_FILE_WRITER)};
      for (auto& x : a) argv.push_back(x.data());
      argv.push_back(nullptr);
      execv(KVTIER_FILE_WRITER, argv.data());
      _exit(127);
    }
  }
  // The wait status, or -1 if it is still running after `seconds`.
  int wait_for(double seconds) {
    const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
    int status = 0;
    while (waitpid(pid, &status, WNOHANG) == 0) {
      if (std::chrono::steady_clock::now() > end) return -1;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    pid = -1;
    return status;
  }
  // In the child: from here on, this is file_writer in a new pid namespace (or never returns).
  static void enter_own_pid_ns() {
    close_range(3, ~0u, 0);
    if (unshare(CLONE_NEWPID | CLONE_NEWNS) != 0) _exit(kNoPidNamespace);
    // Mounts made private first, so the /proc below is this namespace's alone.
    if (mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) _exit(kNoPidNamespace);
    const pid_t init = fork();  // pid 1 of the new namespace
    if (init == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr) != 0)
        _exit(kNoPidNamespace);
      return;
    }
    int status = 0;
    while (init > 0 && waitpid(init, &status, 0) < 0 && errno == EINTR) {
    }
    _exit(init < 0 ? 126 : WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
  }
  int kill_now() {
    ::kill(pid, SIGKILL);
    return wait_for(30);
  }
  ~Proc() {
    if (pid > 0) kill_now();
  }
};

inline std::string slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The last number after `word` in the file (0 if none).
inline size_t last_count(const std::string& path, const std::string& word) {
  const std::string text = slurp(path);
  const size_t at = text.rfind(word + " ");
  return at == std::string::npos ? 0
                                 : std::strtoull(text.c_str() + at + word.size() + 1, nullptr, 10);
}

inline bool exited_ok(int status) {
  return status >= 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

inline std::string fresh(const std::string& name) {
  const std::string d = kvtier_test::test_dir() + "/" + name;
  std::filesystem::remove_all(d);
  std::filesystem::create_directories(d);
  return d;
}

inline kvtier_store_t* open_dir(const std::string& dir, const std::string& extra = "") {
  kvtier_store_t* s = nullptr;
  EXPECT_EQ(kvtier_open(("tiers=file;file_dir=" + dir + extra).c_str(), &s), KVTIER_OK)
      << kvtier_last_error();
  return s;
}

// How many of pages first..first+count-1 read back; every hit byte for byte.
inline size_t count_present(kvtier_store_t* s, size_t first, size_t count) {
  size_t hits = 0;
  std::vector<unsigned char> buf;
  for (size_t k = first; k < first + count; ++k) {
    const auto want = page_value(k);
    const int64_t r = kvtier_test::get_page(s, k, &buf);
    if (r == KVTIER_ERR_NOT_FOUND) continue;
    EXPECT_EQ(r, static_cast<int64_t>(want.size())) << kvtier_error_name(static_cast<int>(r));
    EXPECT_EQ(0, memcmp(buf.data(), want.data(), want.size())) << "WRONG BYTES for page " << k;
    ++hits;
  }
  return hits;
}

inline int exists_run(kvtier_store_t* s, size_t first, size_t count) {
  std::vector<std::string> keys;
  std::vector<const char*> ck;
  for (size_t k = first; k < first + count; ++k) keys.push_back(page_key(k));
  for (auto& k : keys) ck.push_back(k.c_str());
  size_t run = 0;
  EXPECT_EQ(kvtier_batch_exists(s, ck.data(), ck.size(), &run), KVTIER_OK);
  return static_cast<int>(run);
}

inline uint64_t file_stat(kvtier_store_t* s, const std::string& field) {
  char* j = nullptr;
  EXPECT_EQ(kvtier_stats_json(s, &j), KVTIER_OK);
  const std::string text(j ? j : "");
  kvtier_free(j);
  const size_t tier = text.find("\"name\":\"file\"");
  const size_t at = text.find("\"" + field + "\":", tier);
  EXPECT_NE(at, std::string::npos) << text;
  return at == std::string::npos ? 0
                                 : std::strtoull(text.c_str() + at + field.size() + 3, nullptr, 10);
}

}  // namespace kvtier_test
