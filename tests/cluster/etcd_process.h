// Starts and stops a real etcd (Debian's etcd-server) for a test: its own data folder, loopback
// ports picked free. Tests skip where etcd is not installed; etcdctl answers their questions.
#pragma once

#include <arpa/inet.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "tests/common/loopback.h"

namespace kvtier_test {

inline bool etcd_installed() {
  return access("/usr/bin/etcd", X_OK) == 0 && access("/usr/bin/etcdctl", X_OK) == 0;
}

// A loopback port no one listens on right now.
inline uint16_t free_port() {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a = loopback(0);
  socklen_t len = sizeof a;
  uint16_t port = 0;
  if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0)
    port = ntohs(a.sin_port);
  close(fd);
  return port;
}

// Puts a value of `bytes` bytes under `key` in the etcd at `endpoint` (etcdctl reads it from its
// standard input); `ctl_flags` as EtcdProcess's.
inline void etcd_put(const std::string& endpoint, const std::string& key, size_t bytes,
                     const std::string& ctl_flags = "") {
  const std::string cmd =
      "ETCDCTL_API=3 /usr/bin/etcdctl --dial-timeout=1s --command-timeout=2s --endpoints=" +
      endpoint + " " + ctl_flags + " put '" + key + "' >/dev/null 2>&1";
  if (FILE* p = popen(cmd.c_str(), "w")) {
    const std::string v(bytes, 'v');
    fwrite(v.data(), 1, v.size(), p);
    pclose(p);
  }
}

class EtcdProcess {
 public:
  // dir: a folder of the test's own (made if it is not there); the data folder and the log go
  // there.
  // extra: more flags for etcd (TLS files, --auth-token-ttl); https: clients speak TLS;
  // ctl_flags: what etcdctl needs then (--cacert, --cert, --key, --user).
  explicit EtcdProcess(std::string dir, std::vector<std::string> extra = {}, bool https = false,
                       std::string ctl_flags = "")
      : dir_(std::move(dir)),
        client_port_(free_port()),
        peer_port_(free_port()),
        extra_(std::move(extra)),
        https_(https),
        ctl_flags_(std::move(ctl_flags)) {
    mkdir(dir_.c_str(), 0700);
  }
  ~EtcdProcess() { stop(SIGKILL); }
  EtcdProcess(const EtcdProcess&) = delete;
  EtcdProcess& operator=(const EtcdProcess&) = delete;

  // Starts etcd (on the same data folder and ports when started again) and waits until it
  // answers; false if it does not within 20 s.
  bool start() {
    const std::string client = url(),
                      peer = "http://127.0.0.1:" + std::to_string(peer_port_);
    pid_ = fork();
    if (pid_ == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      int log = open((dir_ + "/etcd.log").c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
      if (log >= 0) {
        dup2(log, 1);
        dup2(log, 2);
      }
      std::vector<std::string> args{"/usr/bin/etcd",
                                    "--name",
                                    "kvtier-test",
                                    "--data-dir",
                                    dir_ + "/etcd-data",
                                    "--listen-client-urls",
                                    client,
                                    "--advertise-client-urls",
                                    client,
                                    "--listen-peer-urls",
                                    peer,
                                    "--initial-advertise-peer-urls",
                                    peer,
                                    "--initial-cluster",
                                    "kvtier-test=" + peer};
      args.insert(args.end(), extra_.begin(), extra_.end());
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(argv[0], argv.data());
      _exit(127);
    }
    for (int i = 0; i < 200; ++i) {
      if (ctl("endpoint health").find("is healthy") != std::string::npos) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return false;
  }
  void stop(int sig = SIGTERM) {
    if (pid_ <= 0) return;
    kill(pid_, sig);
    waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }

  // "127.0.0.1:PORT": what KVTIER_REMOTE_ETCD and --etcd take.
  std::string endpoint() const { return "127.0.0.1:" + std::to_string(client_port_); }
  std::string url() const { return (https_ ? "https://" : "http://") + endpoint(); }
  void set_ctl_flags(std::string flags) { ctl_flags_ = std::move(flags); }

  // kvtier-server's flags to register in `cluster` here with a lease of `ttl` seconds.
  std::vector<std::string> registration(const std::string& cluster,
                                        const std::string& ttl = "2") const {
    return {"--etcd", https_ ? url() : endpoint(), "--cluster", cluster, "--etcd-ttl", ttl};
  }

  // Runs `etcdctl <args>` against this etcd; its standard output.
  std::string ctl(const std::string& args) const {
    const std::string cmd =
        "ETCDCTL_API=3 /usr/bin/etcdctl --dial-timeout=1s --command-timeout=2s --endpoints=" +
        url() + " " + ctl_flags_ + " " + args + " 2>&1";
    std::string out;
    if (FILE* p = popen(cmd.c_str(), "r")) {
      char buf[4096];
      for (size_t n; (n = fread(buf, 1, sizeof buf, p)) > 0;) out.append(buf, n);
      pclose(p);
    }
    return out;
  }

  void put(const std::string& key, size_t value_bytes) const {
    etcd_put(url(), key, value_bytes, ctl_flags_);
  }

  // The keys under prefix, one per element.
  std::vector<std::string> keys(const std::string& prefix) const {
    std::vector<std::string> out;
    const std::string text = ctl("get --prefix --keys-only " + prefix);
    size_t b = 0;
    for (size_t e; (e = text.find('\n', b)) != std::string::npos; b = e + 1)
      if (text.compare(b, prefix.size(), prefix) == 0) out.push_back(text.substr(b, e - b));
    return out;
  }
  // Waits (up to 20 s) until the keys under prefix are exactly `want`.
  bool lists(const std::string& prefix, const std::vector<std::string>& want) const {
    const std::set<std::string> wanted(want.begin(), want.end());
    for (int i = 0; i < 200; ++i) {
      const auto now = keys(prefix);
      if (std::set<std::string>(now.begin(), now.end()) == wanted) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return false;
  }

 private:
  std::string dir_;
  uint16_t client_port_, peer_port_;
  std::vector<std::string> extra_;
  bool https_;
  std::string ctl_flags_;
  pid_t pid_ = -1;
};

}  // namespace kvtier_test
