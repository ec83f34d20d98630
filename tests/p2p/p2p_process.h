// The other side of the p2p tests: a process (kvtier_p2p_peer) with its own pool filled from a
// seed, behind an endpoint; the test can dump its pool, stop, continue or kill it. And the two
// sides connected.
#pragma once

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include "tests/common/loopback.h"
#include "tests/common/test_util.h"
#include "tests/p2p/p2p_local.h"
#include "tests/p2p/p2p_pool.h"

namespace kvtier_test {

// The peer: a process with its own pool filled from `seed`, behind an endpoint.
class PeerProcess {
 public:
  PeerProcess(const P2pShape& shape, uint64_t seed, std::string config)
      : shape_(shape), seed_(seed), config_(std::move(config)) {
    start();
  }
  ~PeerProcess() { kill_now(SIGKILL); }

  void start() {
    int in[2], out[2];
    ASSERT_EQ(pipe(in), 0);
    ASSERT_EQ(pipe(out), 0);
    pid_ = fork();
    if (pid_ == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      dup2(in[0], 0);
      dup2(out[1], 1);
      close(in[1]);
      close(out[0]);
      std::string cmd = std::string(KVTIER_P2P_PEER) + " " + shape_.args() + " " +
                        std::to_string(seed_) + " '" + config_ + "'";
      execl("/bin/sh", "sh", "-c", ("exec " + cmd).c_str(), nullptr);
      _exit(127);
    }
    close(in[0]);
    close(out[1]);
    to_ = fdopen(in[1], "w");
    from_ = fdopen(out[0], "r");
    char line[256] = {};
    ASSERT_TRUE(fgets(line, sizeof line, from_));
    ASSERT_EQ(strncmp(line, "ADDR ", 5), 0) << line;
    address_ = std::string(line + 5, strcspn(line + 5, "\n"));
  }
  std::vector<unsigned char> dump() {
    const std::string path = kvtier_test::test_dir() + "/peer-dump";
    fprintf(to_, "dump %s\n", path.c_str());
    fflush(to_);
    char line[16] = {};
    EXPECT_TRUE(fgets(line, sizeof line, from_));
    std::ifstream f(path, std::ios::binary | std::ios::ate);
    std::vector<unsigned char> bytes(static_cast<size_t>(f.tellg()));
    f.seekg(0);
    f.read(reinterpret_cast<char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
    return bytes;
  }
  void kill_now(int sig) {
    if (pid_ <= 0) return;
    ::kill(pid_, sig);
    if (sig == SIGSTOP) {  // stopped for sure before the test goes on
      int st = 0;
      waitpid(pid_, &st, WUNTRACED);
    }
    if (sig == SIGKILL) {
      waitpid(pid_, nullptr, 0);
      pid_ = -1;
      fclose(to_);
      fclose(from_);
    }
  }
  const std::string& address() const { return address_; }
  uint16_t port() const { return port_of(address_); }
  pid_t pid() const { return pid_; }

 private:
  P2pShape shape_;
  uint64_t seed_;
  std::string config_, address_;
  pid_t pid_ = -1;
  FILE *to_ = nullptr, *from_ = nullptr;
};

// A decode process (its pool from kPeerSeed) and this side's endpoint (kLocalSeed), both of
// `shape` under `config`, connected: the setup most p2p tests share. peer is null (and the test
// has failed) where the connect did not succeed; the test closes it.
struct Connected {
  PeerProcess decode;
  Local local;
  kvtier_peer_t* peer = nullptr;
  explicit Connected(const P2pShape& shape, const std::string& config = kConfig)
      : decode(shape, kPeerSeed, config), local(shape, kLocalSeed, config.c_str()) {
    EXPECT_EQ(kvtier_endpoint_connect(local.ep, decode.address().c_str(), &peer), KVTIER_OK)
        << kvtier_last_error();
  }
};

}  // namespace kvtier_test
