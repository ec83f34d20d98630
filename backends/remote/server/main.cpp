// kvtier-server: run one per memory node.
//   KVTIER_REMOTE_TOKEN="$SECRET" kvtier-server --listen 127.0.0.1:7471 --capacity 4GiB
//   The token is a variable only: a command line is visible to every local user.
#include <signal.h>

#include <algorithm>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "backends/remote/cluster/cluster.h"
#include "src/log.h"
#include "backends/remote/server/metrics.h"
#include "backends/remote/wire/net.h"
#include "src/options.h"
#include "backends/remote/server/server.h"

namespace {

const char* kHelp = R"(kvtier-server: the memory node of kvtier's remote tier.

usage: kvtier-server [--listen HOST:PORT] [--capacity SIZE] [--rdma auto|off]
                     [--rdma-port PORT] [--rdma-tos TOS] [--lease-ms MS] [--idle-timeout-ms MS]
                     [--bulk-timeout-ms MS] [--max-connections N] [--max-leases N]
                     [--threads N] [--etcd HOST:PORT,... [--cluster NAME]
                     [--advertise HOST:PORT] [--etcd-ttl S] [--etcd-user USER]
                     [--etcd-ca-file FILE] [--etcd-cert-file FILE --etcd-key-file FILE]] [--metrics-port PORT [--metrics-listen HOST]]
                     [--tiers memory|memory,file --file-dir DIR [--file-capacity SIZE]]
                     [--log-level LEVEL]

  --listen HOST:PORT  address to serve on (default 127.0.0.1:7471; port 0 picks a free one);
                      RDMA needs the NIC's address (rdma_cm cannot serve on a loopback one)
                      env: KVTIER_SERVER_LISTEN
  --capacity SIZE     bytes of memory for pages, e.g. 64GiB (default 4GiB)
                      env: KVTIER_SERVER_CAPACITY
  KVTIER_REMOTE_TOKEN the cluster's secret: the server and each client prove to each other
                      that they hold it (HMAC-SHA256 challenges; it never crosses the wire)
                      (default: none). A variable only, never a flag: a command line is
                      visible to every local user (/proc/PID/cmdline)
  --rdma auto|off     auto: serve the RDMA data plane when the host has an RDMA device
                      (the arena is then registered, so pinned, at start) (default auto)
                      env: KVTIER_SERVER_RDMA
  --rdma-port PORT    rdma_cm port of the RDMA data plane (default: the TCP port + 1)
                      env: KVTIER_SERVER_RDMA_PORT
  --rdma-tos TOS      IP type of service (0..255) of the RDMA listener, for RoCE traffic
                      classes (default: the device's) env: KVTIER_SERVER_RDMA_TOS
  --lease-ms MS       a slot reserved for an RDMA put, or a page pinned for an RDMA read, is
                      given back after this long without COMMIT or RELEASE (default 10000)
                      env: KVTIER_SERVER_LEASE_MS
  --idle-timeout-ms MS
                      a connection that has not completed HELLO, or sends no whole request,
                      for this long is closed (default 10000)
                      env: KVTIER_SERVER_IDLE_TIMEOUT_MS
  --bulk-timeout-ms MS
                      a PUT whose bytes stop arriving, or a reply the client stops reading,
                      for this long cuts the connection and frees its slots (default 10000)
                      env: KVTIER_SERVER_BULK_TIMEOUT_MS
  --max-connections N authenticated connections served at once; more are refused at HELLO
                      (KVTIER_ERR_BUSY); connections before HELLO are capped at N/4 (at least
                      16), the oldest closed first (default 1024)
                      env: KVTIER_SERVER_MAX_CONNECTIONS
  --max-leases N      ALLOC and LOOKUP leases one connection may hold; more keys get
                      KVTIER_ERR_BUSY (default 8192)
                      env: KVTIER_SERVER_MAX_LEASES
  --threads N         worker event loops serving connections, besides the one that accepts
                      (default: the number of cores, at most 4)
                      env: KVTIER_SERVER_THREADS
  --etcd HOST:PORT,...
                      etcd endpoints (host:port, http://host:port or https://host:port): the
                      server registers itself in the cluster there under a lease it keeps
                      alive (and puts its key back if it vanishes); on SIGTERM it revokes it
                      and answers one more second while clients notice (default: none)
                      env: KVTIER_SERVER_ETCD
  --etcd-user USER    etcd user to authenticate as; its password in KVTIER_SERVER_ETCD_PASSWORD
                      (never a flag) env: KVTIER_SERVER_ETCD_USER
  --etcd-ca-file FILE CA to check an https:// etcd against (default: the system's)
                      env: KVTIER_SERVER_ETCD_CA_FILE
  --etcd-cert-file FILE, --etcd-key-file FILE
                      client certificate and key (PEM) for etcd's --client-cert-auth
                      env: KVTIER_SERVER_ETCD_CERT_FILE, KVTIER_SERVER_ETCD_KEY_FILE
  --cluster NAME      the cluster to join (default "default"; clients' KVTIER_REMOTE_CLUSTER)
                      env: KVTIER_REMOTE_CLUSTER
  --advertise HOST:PORT
                      the address clients reach this server at (default: the listen address
                      with the port it got; needed when listening on 0.0.0.0)
                      env: KVTIER_SERVER_ADVERTISE
  --etcd-ttl S        seconds the registration outlives a server that died without stopping
                      (2..3600, default 5) env: KVTIER_SERVER_ETCD_TTL
  --tiers memory,file pages are also written through to disk (the library's file tier), so
                      they outlive evictions from memory and a restart; a page only on disk
                      is read back into memory before it is served (default memory)
                      env: KVTIER_SERVER_TIERS
  --file-dir DIR      where, one folder per client namespace, made by its first write; the
                      folder must be this user's alone env: KVTIER_SERVER_FILE_DIR
  --file-capacity SIZE
                      bytes of disk all namespaces' files take together; past it, the least
                      recently used namespaces are deleted from disk whole (default 16GiB)
                      env: KVTIER_SERVER_FILE_CAPACITY
  --metrics-port PORT serve Prometheus' text format at http://HOST:PORT/metrics (default:
                      no metrics endpoint); GET only, one request per connection, a few
                      at once, each cut after a second of silence
                      env: KVTIER_SERVER_METRICS_PORT
  --metrics-listen HOST
                      the address the metrics endpoint binds (default 127.0.0.1: a scraper
                      elsewhere needs it set, e.g. 0.0.0.0)
                      env: KVTIER_SERVER_METRICS_LISTEN
  --log-level LEVEL   trace, debug, info, warn, error, critical, off (default info)
                      env: KVTIER_LOG_LEVEL
  --help              this text

Prints "kvtier-server listening on HOST:PORT" once it accepts connections; stops cleanly on
SIGTERM or SIGINT.
)";

int usage_error(const std::string& msg) {
  std::fprintf(stderr, "kvtier-server: %s (see --help)\n", msg.c_str());
  return 2;
}

// Everything the flags and the environment set, checked: the server's own options, and what
// main does with the rest (log level, cluster registration, metrics endpoint).
struct Settings : kvtier::ServerOptions {
  std::string level = "info";
  kvtier::etcd::Settings etcd;  // no endpoints: no cluster
  std::string cluster = "default", advertise;
  unsigned etcd_ttl = 5;
  uint16_t metrics_port = 0;  // 0: no metrics endpoint
  std::string metrics_host = "127.0.0.1";
};

using ServerOption = kvtier::Option<Settings>;

// An empty value leaves the default, as an unset one does.
ServerOption or_empty(ServerOption o) {
  o.set = [set = std::move(o.set)](Settings& s, const std::string& v) {
    return v.empty() || set(s, v);
  };
  return o;
}

// Every flag with its variable: KVTIER_SERVER_*, or the library's KVTIER_* where clients set
// the same (token, cluster, log level). Parsed by the library's option parser (options.h).
const std::vector<ServerOption>& server_options() {
  using namespace kvtier;
  using S = Settings;
  static const std::vector<ServerOption> kOptions = {
      {"SERVER_LISTEN", "--listen", "HOST:PORT",
       [](S& s, const std::string& v) {
         return valid_host_port(v) && net::split_host_port(v, &s.host, &s.port).is_ok();
       }},
      size_option<S>("SERVER_CAPACITY", "--capacity", &S::capacity, 1ull << 20),
      // Not a flag: a command line is visible to every local user.
      token_option<S>("REMOTE_TOKEN", "", &S::token),
      log_level_option<S>("LOG_LEVEL", "--log-level", &S::level),
      switch_option<S>("SERVER_RDMA", "--rdma", &S::rdma, "auto", "off"),
      integer_option<S>("SERVER_RDMA_PORT", "--rdma-port", &S::rdma_port, 0, 65535),
      or_empty(integer_option<S>("SERVER_RDMA_TOS", "--rdma-tos", &S::rdma_tos, 0, 255)),
      millis_option<S>("SERVER_LEASE_MS", "--lease-ms", &S::lease_ms, 10),
      or_empty(
          millis_option<S>("SERVER_IDLE_TIMEOUT_MS", "--idle-timeout-ms", &S::idle_timeout_ms, 10)),
      or_empty(
          millis_option<S>("SERVER_BULK_TIMEOUT_MS", "--bulk-timeout-ms", &S::bulk_timeout_ms, 10)),
      or_empty(integer_option<S>("SERVER_MAX_CONNECTIONS", "--max-connections", &S::max_connections,
                                 1, 1000000)),
      or_empty(integer_option<S>("SERVER_MAX_LEASES", "--max-leases", &S::max_leases, 1, 1u << 24)),
      or_empty(integer_option<S>("SERVER_THREADS", "--threads", &S::threads, 0, 256)),
      {"SERVER_ETCD", "--etcd", "a comma list of host:port, http:// or https://",
       [](S& s, const std::string& v) {
         return v.empty() || parse_url_list(v, &s.etcd.endpoints);
       }},
      {"SERVER_ETCD_USER", "--etcd-user", "a user name",
       [](S& s, const std::string& v) { return s.etcd.user = v, true; }},
      // Not a flag: a command line is visible to every local user.
      {"SERVER_ETCD_PASSWORD", "", "a password",
       [](S& s, const std::string& v) { return s.etcd.password = v, true; }},
      {"SERVER_ETCD_CA_FILE", "--etcd-ca-file", "a file",
       [](S& s, const std::string& v) { return s.etcd.ca_file = v, true; }},
      {"SERVER_ETCD_CERT_FILE", "--etcd-cert-file", "a file",
       [](S& s, const std::string& v) { return s.etcd.cert_file = v, true; }},
      {"SERVER_ETCD_KEY_FILE", "--etcd-key-file", "a file",
       [](S& s, const std::string& v) { return s.etcd.key_file = v, true; }},
      cluster_option<S>("REMOTE_CLUSTER", "--cluster", &S::cluster),
      or_empty(host_port_option<S>("SERVER_ADVERTISE", "--advertise", &S::advertise)),
      or_empty(integer_option<S>("SERVER_ETCD_TTL", "--etcd-ttl", &S::etcd_ttl, 2, 3600)),
      or_empty(
          integer_option<S>("SERVER_METRICS_PORT", "--metrics-port", &S::metrics_port, 1, 65535)),
      or_empty(text_option<S>("SERVER_METRICS_LISTEN", "--metrics-listen", &S::metrics_host,
                              "a host address",
                              [](const std::string& v) { return valid_host_port(v + ":1"); })),
      {"SERVER_TIERS", "--tiers", "memory or memory,file",
       [](S& s, const std::string& v) {
         if (v != "memory" && v != "memory,file") return false;
         s.file = v == "memory,file";
         return true;
       }},
      text_option<S>("SERVER_FILE_DIR", "--file-dir", &S::file_dir, "a folder",
                     [](const std::string&) { return true; }),
      or_empty(
          size_option<S>("SERVER_FILE_CAPACITY", "--file-capacity", &S::file_capacity, 1ull << 20)),
  };
  return kOptions;
}

// Reads the flags, and for those not given their variables, into *out; returns -1 to go on,
// else the exit code.
int parse(int argc, char** argv, Settings* out) {
  const std::vector<ServerOption>& options = server_options();
  std::vector<const char*> flags(options.size(), nullptr);  // the value each flag was given
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      std::fputs(kHelp, stdout);
      return 0;
    }
    // Refused, not ignored: a server that came up without the token the caller meant to give
    // it would serve the cluster's pages to anyone.
    if (a == "--token" || a.rfind("--token=", 0) == 0)
      return usage_error(
          "--token is not a flag: a command line is visible to every local user "
          "(/proc/PID/cmdline); set KVTIER_REMOTE_TOKEN in kvtier-server's environment instead");
    if (i + 1 >= argc) return usage_error(a + " needs a value");
    // Variables without a flag (flag "") are never matched by an argument, not even "".
    auto o = std::find_if(options.begin(), options.end(),
                          [&](auto& x) { return !x.flag.empty() && a == x.flag; });
    if (o == options.end()) return usage_error("unknown flag " + a);
    flags[o - options.begin()] = argv[++i];
  }
  for (size_t k = 0; k < options.size(); ++k) {
    const char* flag = flags[k];
    const char* env = flag ? nullptr : kvtier::environment_value(options[k].name);
    if (!flag && !env) continue;
    kvtier::Status s = kvtier::apply(options[k], *out, flag ? flag : env,
                                     flag ? kvtier::Source::kFlag : kvtier::Source::kEnvironment);
    if (!s.is_ok()) return usage_error(s.message());
  }
  if (out->file && out->file_dir.empty())
    return usage_error("--tiers memory,file needs --file-dir");
  if (!out->etcd.endpoints.empty() && out->advertise.empty() && out->host == "0.0.0.0")
    return usage_error("--etcd with --listen on 0.0.0.0 needs --advertise");
  return -1;
}

int fail(const kvtier::Status& s) {
  std::fprintf(stderr, "kvtier-server: %s\n", s.message().c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  Settings set;
  if (int code = parse(argc, argv, &set); code >= 0) return code;
  const kvtier::ServerOptions& opt = set;
  kvtier::set_log_level(set.level);

  // Signals go to sigwait below, not to whichever thread happens to run.
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGTERM);
  sigaddset(&stop, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop, nullptr);
  signal(SIGPIPE, SIG_IGN);

  kvtier::Server server(opt);
  uint16_t port = 0;
  kvtier::Status s = server.start(&port);
  if (!s.is_ok()) return fail(s);
  std::printf("kvtier-server listening on %s:%u capacity %llu\n", opt.host.c_str(), port,
              static_cast<unsigned long long>(opt.capacity));
  std::fflush(stdout);
  kvtier::MetricsEndpoint metrics;
  if (set.metrics_port) {
    s = metrics.start(set.metrics_host, set.metrics_port,
                      [&server] { return server.metrics_text(); });
    if (!s.is_ok()) return fail(s);
  }
  // Registered last, once it answers; deregistered first, so clients stop sending here before
  // the server stops answering.
  std::unique_ptr<kvtier::Registration> registration;
  if (!set.etcd.endpoints.empty()) {
    const std::string self =
        set.advertise.empty() ? opt.host + ":" + std::to_string(port) : set.advertise;
    registration =
        std::make_unique<kvtier::Registration>(set.etcd, set.cluster, self, set.etcd_ttl);
    s = registration->start();
    if (!s.is_ok()) kvtier::log().warn("server: etcd: {}; registration retried", s.message());
  }
  int sig = 0;
  sigwait(&stop, &sig);
  kvtier::log().info("server: signal {}, stopping", sig);
  if (registration) {
    registration.reset();
    // Clients read the cluster every 250 ms: answering a moment longer lets the calls they
    // send before they notice succeed instead of failing on a closed port.
    std::this_thread::sleep_for(std::chrono::seconds(1));
  }
  server.stop();
  return 0;
}
