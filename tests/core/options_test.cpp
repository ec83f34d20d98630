// The option tables: each backend registers its own settings beside its factory, and
// kvtier-server's flags and variables go through the same parser as the library's.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <map>
#include <string>
#include <vector>

#include "src/config.h"
#include "backends/file/file_options.h"
#include "backends/memory/memory_tier.h"
#include "backends/remote/p2p/p2p.h"
#include "backends/remote/client/remote_options.h"
#include "tests/common/server_process.h"
#include "tests/common/test_util.h"

namespace {

using namespace kvtier;

uint64_t random_in(uint64_t lo, uint64_t hi) {
  return lo + kvtier_test::rng()() % (hi - lo + 1);
}

TEST(Options, EachOwnerRegistersItsOwn) {
  const std::map<std::string, std::string> expected = {
      {"TIERS", "core"},
      {"WRITE_POLICY", "core"},
      {"NAMESPACE", "core"},
      {"LOG_LEVEL", "core"},
      {"ASYNC_THREADS", "core"},
      {"ASYNC_DEPTH", "core"},
      {"MEMORY_CAPACITY", "memory"},
      {"FILE_DIR", "file"},
      {"FILE_CAPACITY", "file"},
      {"FILE_QUEUE_DEPTH", "file"},
      {"FILE_DIRECT", "file"},
      {"FILE_COMPRESSION", "file"},
      {"FILE_SYNC", "file"},
      {"FILE_LOCK_TIMEOUT_MS", "file"},
      {"REMOTE_SERVERS", "remote"},
      {"REMOTE_ETCD", "remote"},
      {"REMOTE_ETCD_USER", "remote"},
      {"REMOTE_ETCD_PASSWORD", "remote"},
      {"REMOTE_ETCD_CA_FILE", "remote"},
      {"REMOTE_ETCD_CERT_FILE", "remote"},
      {"REMOTE_ETCD_KEY_FILE", "remote"},
      {"REMOTE_CLUSTER", "remote"},
      {"REMOTE_TRANSPORT", "remote"},
      {"REMOTE_TIMEOUT_MS", "remote"},
      {"REMOTE_TOKEN", "remote"},
      {"REMOTE_REPLICAS", "remote"},
      {"REMOTE_RDMA_TOS", "remote"},
      {"P2P_LISTEN", "p2p"},
      {"P2P_TOKEN", "p2p"},
      {"P2P_TRANSPORT", "p2p"},
      {"P2P_TIMEOUT_MS", "p2p"},
      {"P2P_IDLE_TIMEOUT_MS", "p2p"},
      {"P2P_MAX_PEERS", "p2p"},
      {"P2P_ALLOW_NO_TOKEN", "p2p"},
      {"PROBE_DEPTH", "probe"},  // this file's own owner (ProbeOptions, below)
      {"PROBE_WORD", "probe"},
  };
  std::map<std::string, std::string> got;
  for (const auto& [name, owner] : registered_options())
    EXPECT_TRUE(got.emplace(name, owner).second) << name << " registered twice";
  EXPECT_EQ(got, expected);
}

// An owner the core has never heard of, as a new tier would be: its section and its options are
// declared here, beside their user, and registered with the core's table; nothing in src/ names
// them.
struct ProbeOptions {
  unsigned depth = 7;
  std::string word = "unset";
};
bool short_word(const std::string& v) {
  return !v.empty() && v.size() <= 16;
}
KVTIER_REGISTER_OPTIONS(probe, {integer_option<ProbeOptions>("PROBE_DEPTH", "",
                                                             &ProbeOptions::depth, 1, 1000),
                                text_option<ProbeOptions>("PROBE_WORD", "", &ProbeOptions::word,
                                                          "1..16 bytes", short_word)});

// The tiers' settings are their sections' fields, not Config's: a tier's option reaches its
// tier only through config.section<Its>().
template <class C>
concept HoldsTierFields = requires(C c) { c.memory_capacity; } || requires(C c) { c.file_dir; } ||
                          requires(C c) { c.remote_servers; } || requires(C c) { c.p2p_listen; };
static_assert(!HoldsTierFields<Config>);

TEST(Options, ANewOwnerRegistersItsOwnSection) {
  const unsigned env_depth = random_in(1, 1000), depth = random_in(1, 1000);
  const std::string word = "w" + std::to_string(random_in(0, 999999999));
  Config c;
  EXPECT_EQ(c.section<ProbeOptions>().depth, 7u) << "a Config starts with every section's defaults";
  setenv("KVTIER_PROBE_DEPTH", std::to_string(env_depth).c_str(), 1);
  Status s = load_config(("probe_word=" + word).c_str(), &c);
  ASSERT_TRUE(s.is_ok()) << s.message();
  EXPECT_EQ(c.section<ProbeOptions>().depth, env_depth) << "from the environment";
  EXPECT_EQ(c.section<ProbeOptions>().word, word) << "from the config string";
  s = load_config(("KVTIER_PROBE_DEPTH=" + std::to_string(depth)).c_str(), &c);
  unsetenv("KVTIER_PROBE_DEPTH");
  ASSERT_TRUE(s.is_ok()) << s.message();
  EXPECT_EQ(c.section<ProbeOptions>().depth, depth) << "the config string overrides";
  EXPECT_EQ(c.section<ProbeOptions>().word, "unset") << "each load starts from the defaults";
  EXPECT_EQ(c.section<FileOptions>().queue_depth, FileOptions{}.queue_depth)
      << "one owner's options leave the other sections alone";

  // A bad value is refused in the words of every option, naming its variable.
  EXPECT_EQ(load_config("probe_depth=0", &c).message(),
            "KVTIER_PROBE_DEPTH='0' (config string) is invalid: expected an integer from 1 to "
            "1000");
  EXPECT_EQ(load_config(("probe_word=" + std::string(17, 'x')).c_str(), &c).code(),
            KVTIER_ERR_CONFIG);

  // A copy of a Config holds its own sections.
  ASSERT_TRUE(load_config("probe_depth=9;file_queue_depth=5", &c).is_ok());
  Config copy = c;
  copy.section<ProbeOptions>().depth = 10;
  copy.section<FileOptions>().queue_depth = 6;
  EXPECT_EQ(c.section<ProbeOptions>().depth, 9u);
  EXPECT_EQ(c.section<FileOptions>().queue_depth, 5u);
  EXPECT_EQ(copy.section<FileOptions>().queue_depth, 6u);
}

// Every backend-owned name parses, from the config string and from the environment, into the
// field its tier reads.
TEST(Options, BackendOwnedNamesParse) {
  const uint64_t mem_mib = random_in(1, 1 << 20), file_mib = random_in(1, 1 << 20);
  const unsigned depth = random_in(1, 4096), level = random_in(1, 19), timeout = random_in(1, 9999),
                 replicas = random_in(1, 16), tos = random_in(0, 255), p2p_ms = random_in(1, 9999),
                 peers = random_in(1, 65536);
  const std::string token = std::to_string(kvtier_test::rng()());
  const std::string text =
      "memory_capacity=" + std::to_string(mem_mib) + "MiB;file_dir=/tmp/kvtier-options;" +
      "file_capacity=" + std::to_string(file_mib) +
      "MiB;file_queue_depth=" + std::to_string(depth) +
      ";file_direct=off;file_compression=zstd:" + std::to_string(level) +
      ";file_sync=off;remote_servers=h1:1, h2:2;remote_etcd=e:2379;remote_cluster=c-1;" +
      "remote_transport=TCP;remote_timeout_ms=" + std::to_string(timeout) +
      ";remote_token=" + token + ";remote_replicas=" + std::to_string(replicas) +
      ";remote_rdma_tos=" + std::to_string(tos) + ";p2p_listen=127.0.0.1:5;p2p_token=" + token +
      "x;p2p_transport=rdma;p2p_timeout_ms=" + std::to_string(p2p_ms) +
      ";p2p_max_peers=" + std::to_string(peers) + ";p2p_idle_timeout_ms=" + std::to_string(timeout);
  Config c;
  Status s = load_config(text.c_str(), &c);
  ASSERT_TRUE(s.is_ok()) << s.message();
  const auto& file = c.section<FileOptions>();
  const auto& remote = c.section<RemoteOptions>();
  const auto& endpoint = c.section<p2p::Options>();
  EXPECT_EQ(c.section<MemoryOptions>().capacity, mem_mib << 20);
  EXPECT_EQ(file.dir, "/tmp/kvtier-options");
  EXPECT_EQ(file.capacity, file_mib << 20);
  EXPECT_EQ(file.queue_depth, depth);
  EXPECT_FALSE(file.direct);
  EXPECT_EQ(file.zstd_level, static_cast<int>(level));
  EXPECT_FALSE(file.sync);
  EXPECT_EQ(remote.servers, (std::vector<std::string>{"h1:1", "h2:2"}));
  EXPECT_EQ(remote.etcd, std::vector<std::string>{"e:2379"});
  EXPECT_EQ(remote.cluster, "c-1");
  EXPECT_EQ(remote.transport, "tcp");
  EXPECT_EQ(remote.timeout_ms, timeout);
  EXPECT_EQ(remote.token, token);
  EXPECT_EQ(remote.replicas, replicas);
  EXPECT_EQ(remote.rdma_tos, static_cast<int>(tos));
  EXPECT_EQ(endpoint.listen, "127.0.0.1:5");
  EXPECT_EQ(endpoint.token, token + "x");
  EXPECT_EQ(endpoint.transport, "rdma");
  EXPECT_EQ(endpoint.timeout_ms, p2p_ms);
  EXPECT_EQ(endpoint.max_peers, peers);
  EXPECT_EQ(endpoint.idle_timeout_ms, timeout);

  setenv("KVTIER_FILE_QUEUE_DEPTH", std::to_string(depth).c_str(), 1);
  setenv("KVTIER_REMOTE_REPLICAS", std::to_string(replicas).c_str(), 1);
  setenv("KVTIER_NOT_A_SETTING", "x", 1);  // unknown: a warning, as before
  s = load_config(nullptr, &c);
  unsetenv("KVTIER_FILE_QUEUE_DEPTH");
  unsetenv("KVTIER_REMOTE_REPLICAS");
  unsetenv("KVTIER_NOT_A_SETTING");
  ASSERT_TRUE(s.is_ok()) << s.message();
  EXPECT_EQ(c.section<FileOptions>().queue_depth, depth);
  EXPECT_EQ(c.section<RemoteOptions>().replicas, replicas);

  s = load_config("file_queue_depth=0", &c);
  EXPECT_EQ(s.code(), KVTIER_ERR_CONFIG);
  EXPECT_EQ(s.message(),
            "KVTIER_FILE_QUEUE_DEPTH='0' (config string) is invalid: expected an integer from 1 "
            "to 4096");
}

// A kvtier-server run: its exit status (-1: still running, then killed) and its first line of
// output (stdout and stderr together).
struct ServerRun {
  int status = -1;
  std::string line;
};

ServerRun run_server(const std::vector<std::pair<std::string, std::string>>& env,
                     std::vector<std::string> args) {
  int fds[2];
  if (pipe(fds) != 0) return {};
  const pid_t pid = fork();
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    dup2(fds[1], 1);
    dup2(fds[1], 2);
    close(fds[0]);
    for (const auto& [name, value] : env) setenv(name.c_str(), value.c_str(), 1);
    kvtier_test::exec_server(std::move(args));
  }
  close(fds[1]);
  // The first line of its own (log lines, which start with '[', are skipped).
  ServerRun run;
  for (std::string line;; line.clear()) {
    char ch = 0;
    while (read(fds[0], &ch, 1) == 1 && ch != '\n') line.push_back(ch);
    if (line.empty() || line[0] != '[') {
      run.line = line;
      break;
    }
  }
  close(fds[0]);
  const bool serving = run.line.rfind("kvtier-server listening", 0) == 0;
  if (serving) kill(pid, SIGKILL);
  int st = 0;
  waitpid(pid, &st, 0);
  if (!serving && WIFEXITED(st)) run.status = WEXITSTATUS(st);
  return run;
}

const std::vector<std::string> kListen = {"--listen", "127.0.0.1:0", "--rdma", "off"};

std::vector<std::string> with(std::vector<std::string> extra) {
  extra.insert(extra.begin(), kListen.begin(), kListen.end());
  return extra;
}

// A bad value gets the same words through a flag, its KVTIER_SERVER_* variable and the
// library's own option of that kind.
TEST(ServerOptions, FlagAndVariableShareTheParser) {
  const std::string tail = " is invalid: expected a size of 1MiB or more";
  ServerRun flag = run_server({}, with({"--capacity", "1K"}));
  EXPECT_EQ(flag.status, 2);
  EXPECT_EQ(flag.line, "kvtier-server: --capacity '1K'" + tail + " (see --help)");
  ServerRun env = run_server({{"KVTIER_SERVER_CAPACITY", "1K"}}, kListen);
  EXPECT_EQ(env.status, 2);
  EXPECT_EQ(env.line,
            "kvtier-server: KVTIER_SERVER_CAPACITY='1K' (environment)" + tail + " (see --help)");
  Config c;
  EXPECT_EQ(load_config("file_capacity=1K", &c).message(),
            "KVTIER_FILE_CAPACITY='1K' (config string)" + tail);

  flag = run_server({}, with({"--lease-ms", "9"}));
  EXPECT_EQ(flag.status, 2);
  EXPECT_EQ(flag.line,
            "kvtier-server: --lease-ms '9' is invalid: expected milliseconds from 10 to 3600000 "
            "(see --help)");

  // The variables clients and servers share read the same in both.
  for (const auto& [name, bad] : std::vector<std::pair<std::string, std::string>>{
           {"KVTIER_REMOTE_CLUSTER", "no spaces"},
           {"KVTIER_REMOTE_TOKEN", std::string(300, 't')},
           {"KVTIER_LOG_LEVEL", "loud"}}) {
    setenv(name.c_str(), bad.c_str(), 1);
    const Status lib = load_config(nullptr, &c);
    unsetenv(name.c_str());
    EXPECT_EQ(lib.code(), KVTIER_ERR_CONFIG) << name;
    EXPECT_NE(lib.message().find(name + "='"), std::string::npos) << lib.message();
    env = run_server({{name, bad}}, kListen);
    EXPECT_EQ(env.status, 2) << name;
    EXPECT_EQ(env.line, "kvtier-server: " + lib.message() + " (see --help)");
  }
}

// A flag wins over its variable, which wins over the default; an empty value is the default.
TEST(ServerOptions, FlagOverVariable) {
  const uint64_t env_mib = random_in(2, 64), flag_mib = random_in(65, 128);
  const std::string env_size = std::to_string(env_mib) + "MiB";
  ServerRun run = run_server({{"KVTIER_SERVER_CAPACITY", env_size}}, kListen);
  EXPECT_EQ(run.status, -1) << run.line;
  EXPECT_NE(run.line.find(" capacity " + std::to_string(env_mib << 20)), std::string::npos)
      << run.line;
  run = run_server({{"KVTIER_SERVER_CAPACITY", "1K"}},
                   with({"--capacity", std::to_string(flag_mib) + "MiB"}));
  EXPECT_EQ(run.status, -1) << "the flag hides a bad variable: " << run.line;
  EXPECT_NE(run.line.find(" capacity " + std::to_string(flag_mib << 20)), std::string::npos)
      << run.line;
  run = run_server({{"KVTIER_SERVER_MAX_LEASES", ""}, {"KVTIER_SERVER_ETCD", ""}}, kListen);
  EXPECT_EQ(run.status, -1) << run.line;
  run = run_server({}, with({"--flag-nobody-knows", "1"}));
  EXPECT_EQ(run.status, 2);
  EXPECT_EQ(run.line, "kvtier-server: unknown flag --flag-nobody-knows (see --help)");
}

// The cluster's token is a variable only: a command line is visible to every local user in
// /proc/PID/cmdline. --token is refused with a message that says what to do, not ignored (a
// server up without the token its operator meant would serve anyone); so is an empty argument,
// which must not reach the variables that have no flag (the token, the etcd password).
TEST(ServerOptions, TokenIsNotAFlag) {
  const std::string token = "t" + std::to_string(random_in(1000000, 9999999));
  for (const auto& args : std::vector<std::vector<std::string>>{
           with({"--token", token}), with({"--token=" + token}), with({"--token"})}) {
    ServerRun run = run_server({}, args);
    EXPECT_EQ(run.status, 2) << run.line;
    EXPECT_EQ(run.line,
              "kvtier-server: --token is not a flag: a command line is visible to every local "
              "user (/proc/PID/cmdline); set KVTIER_REMOTE_TOKEN in kvtier-server's environment "
              "instead (see --help)");
  }
  ServerRun run = run_server({}, with({"", token}));
  EXPECT_EQ(run.status, 2) << run.line;
  EXPECT_EQ(run.line, "kvtier-server: unknown flag  (see --help)");
  run = run_server({{"KVTIER_REMOTE_TOKEN", token}}, kListen);
  EXPECT_EQ(run.status, -1) << run.line;
}

}  // namespace
