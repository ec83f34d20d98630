// Starts and stops a real kvtier-server process for a test.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

namespace kvtier_test {

// The address test servers listen on: KVTIER_TEST_RDMA_ADDR (an address of this host's RDMA
// NIC; rdma_cm serves no RDMA on loopback), else 127.0.0.1. The RDMA tests skip without it.
inline std::string test_host() {
  const char* a = getenv("KVTIER_TEST_RDMA_ADDR");
  return a && *a ? a : "127.0.0.1";
}

// In a forked child: becomes kvtier-server with `args` (exit status 127 if it cannot).
[[noreturn]] inline void exec_server(std::vector<std::string> args) {
  args.insert(args.begin(), KVTIER_SERVER_BIN);
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  execv(KVTIER_SERVER_BIN, argv.data());
  _exit(127);
}

class ServerProcess {
 public:
  // port 0: an ephemeral port, reported by the server's first line.
  // log_path: the server's stderr (its log) goes there instead of the test's.
  // fd_limit: the server's RLIMIT_NOFILE, soft and hard (0: the test's).
  explicit ServerProcess(std::string capacity = "256MiB", std::string token = "", uint16_t port = 0,
                         std::vector<std::string> extra = {}, std::string log_path = "",
                         rlim_t fd_limit = 0)
      : capacity_(std::move(capacity)),
        token_(std::move(token)),
        extra_(std::move(extra)),
        log_path_(std::move(log_path)),
        fd_limit_(fd_limit) {
    start(port);
  }
  ~ServerProcess() { kill_now(SIGKILL); }
  ServerProcess(const ServerProcess&) = delete;
  ServerProcess& operator=(const ServerProcess&) = delete;

  bool start(uint16_t port) {
    int fds[2];
    if (pipe(fds) != 0) return false;
    pid_ = fork();
    if (pid_ == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlive a test that crashed
      dup2(fds[1], 1);
      close(fds[0]);
      if (!log_path_.empty()) {
        int log = open(log_path_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
        if (log >= 0) dup2(log, 2);
      }
      if (fd_limit_) {
        const rlimit r{fd_limit_, fd_limit_};
        setrlimit(RLIMIT_NOFILE, &r);
      }
      // The token through the environment: kvtier-server refuses it as a flag (a command line
      // is visible to every local user).
      if (!token_.empty()) setenv("KVTIER_REMOTE_TOKEN", token_.c_str(), 1);
      std::string listen = test_host() + ":" + std::to_string(port);
      std::vector<std::string> args{"--listen", listen,        "--capacity",
                                    capacity_,  "--log-level", "warn"};
      args.insert(args.end(), extra_.begin(), extra_.end());
      exec_server(std::move(args));
    }
    close(fds[1]);
    char line[256] = {};
    size_t got = 0;
    while (got < sizeof line - 1) {  // read the first line
      ssize_t n = read(fds[0], line + got, 1);
      if (n <= 0 || line[got] == '\n') break;
      ++got;
    }
    close(fds[0]);
    unsigned p = 0;
    const char* colon = strrchr(line, ':');
    if (!colon || sscanf(colon + 1, "%u", &p) != 1) return false;
    port_ = static_cast<uint16_t>(p);
    return true;
  }
  void kill_now(int sig) {
    if (pid_ <= 0) return;
    ::kill(pid_, sig);
    if (sig == SIGKILL || sig == SIGTERM) {
      waitpid(pid_, &status_, 0);
      pid_ = -1;
    } else if (sig == SIGSTOP) {  // stopped for sure before the test goes on: a loop that is
      int st = 0;                 // mid-request would otherwise still answer it
      waitpid(pid_, &st, WUNTRACED);
    }
  }
  bool restart() { return start(port_); }
  int exit_status() const { return status_; }
  uint16_t port() const { return port_; }
  pid_t pid() const { return pid_; }
  std::string address() const { return test_host() + ":" + std::to_string(port_); }

 private:
  std::string capacity_, token_;
  std::vector<std::string> extra_;
  std::string log_path_;
  rlim_t fd_limit_ = 0;
  pid_t pid_ = -1;
  uint16_t port_ = 0;
  int status_ = 0;
};

// One server per test process for suites that only need "a server".
inline ServerProcess& shared_server() {
  static ServerProcess s("512MiB");
  return s;
}
inline ServerProcess& shared_small_server() {
  static ServerProcess s("1MiB");
  return s;
}

}  // namespace kvtier_test
