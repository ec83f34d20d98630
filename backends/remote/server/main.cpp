// kvtier-server: run one per memory node.
//   kvtier-server --listen 127.0.0.1:7471 --capacity 4GiB [--token SECRET] [--log-level info]
#include <signal.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <iterator>
#include <memory>
#include <string>
#include <thread>

#include "cluster.h"
#include "config.h"
#include "log.h"
#include "metrics.h"
#include "net.h"
#include "server.h"

namespace {

const char* kHelp = R"(kvtier-server: the memory node of kvtier's remote tier.

usage: kvtier-server [--listen HOST:PORT] [--capacity SIZE] [--token TOKEN] [--rdma auto|off]
                     [--rdma-port PORT] [--rdma-tos TOS] [--lease-ms MS] [--idle-timeout-ms MS]
                     [--bulk-timeout-ms MS] [--max-connections N] [--max-leases N]
                     [--threads N] [--etcd HOST:PORT,... [--cluster NAME]
                     [--advertise HOST:PORT] [--etcd-ttl S]] [--metrics-port PORT]
                     [--tiers memory|memory,file --file-dir DIR [--file-capacity SIZE]]
                     [--log-level LEVEL]

  --listen HOST:PORT  address to serve on (default 127.0.0.1:7471; port 0 picks a free one);
                      RDMA needs the NIC's address (rdma_cm cannot serve on a loopback one)
                      env: KVTIER_SERVER_LISTEN
  --capacity SIZE     bytes of memory for pages, e.g. 64GiB (default 4GiB)
                      env: KVTIER_SERVER_CAPACITY
  --token TOKEN       every client must present it (default: none)
                      env: KVTIER_REMOTE_TOKEN
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
                      etcd endpoints: the server registers itself in the cluster there under
                      a lease it keeps alive; on SIGTERM it revokes it and answers one more
                      second while clients notice (default: none)
                      env: KVTIER_SERVER_ETCD
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
  --file-dir DIR      where, one folder per client namespace; the folder must be this user's
                      alone env: KVTIER_SERVER_FILE_DIR
  --file-capacity SIZE
                      bytes of pages on disk per client namespace (default 16GiB)
                      env: KVTIER_SERVER_FILE_CAPACITY
  --metrics-port PORT serve Prometheus' text format at http://HOST:PORT/metrics, HOST the
                      listen host (default: no metrics endpoint)
                      env: KVTIER_SERVER_METRICS_PORT
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

bool parse_number(const std::string& text, unsigned long max, unsigned long* out) {
  char* end = nullptr;
  errno = 0;
  *out = std::strtoul(text.c_str(), &end, 10);
  return !text.empty() && text[0] != '-' && *end == 0 && errno == 0 && *out <= max;
}

// Everything the flags and the environment set, checked.
struct Settings {
  kvtier::ServerOptions opt;
  std::string level = "info";
  std::vector<std::string> etcd;  // empty: no cluster
  std::string cluster = "default", advertise;
  unsigned etcd_ttl = 5;
  uint16_t metrics_port = 0;  // 0: no metrics endpoint
};

// Reads the environment, then the flags, into *out; returns -1 to go on, else the exit code.
int parse(int argc, char** argv, Settings* out) {
  kvtier::ServerOptions& opt = out->opt;
  std::string listen = "127.0.0.1:7471", capacity = "4GiB", rdma = "auto", rdma_port = "0",
              lease = "10000", tos, etcd, metrics_port, tiers = "memory", file_capacity;
  // The flags that take text: flag, environment variable, where it goes.
  struct Text {
    const char *flag, *env;
    std::string* value;
  } const texts[] = {
      {"--listen", "KVTIER_SERVER_LISTEN", &listen},
      {"--capacity", "KVTIER_SERVER_CAPACITY", &capacity},
      {"--token", "KVTIER_REMOTE_TOKEN", &opt.token},
      {"--log-level", "KVTIER_LOG_LEVEL", &out->level},
      {"--rdma", "KVTIER_SERVER_RDMA", &rdma},
      {"--rdma-port", "KVTIER_SERVER_RDMA_PORT", &rdma_port},
      {"--rdma-tos", "KVTIER_SERVER_RDMA_TOS", &tos},
      {"--lease-ms", "KVTIER_SERVER_LEASE_MS", &lease},
      {"--etcd", "KVTIER_SERVER_ETCD", &etcd},
      {"--cluster", "KVTIER_REMOTE_CLUSTER", &out->cluster},
      {"--advertise", "KVTIER_SERVER_ADVERTISE", &out->advertise},
      {"--metrics-port", "KVTIER_SERVER_METRICS_PORT", &metrics_port},
      {"--tiers", "KVTIER_SERVER_TIERS", &tiers},
      {"--file-dir", "KVTIER_SERVER_FILE_DIR", &opt.file_dir},
      {"--file-capacity", "KVTIER_SERVER_FILE_CAPACITY", &file_capacity},
  };
  // The numeric limits: flag, environment variable, range, field.
  struct Limit {
    const char *flag, *env;
    unsigned long min, max;
    unsigned* field;
    std::string text;
  } limits[] = {
      {"--idle-timeout-ms", "KVTIER_SERVER_IDLE_TIMEOUT_MS", 10, 3600000, &opt.idle_timeout_ms, ""},
      {"--bulk-timeout-ms", "KVTIER_SERVER_BULK_TIMEOUT_MS", 10, 3600000, &opt.bulk_timeout_ms, ""},
      {"--max-connections", "KVTIER_SERVER_MAX_CONNECTIONS", 1, 1000000, &opt.max_connections, ""},
      {"--max-leases", "KVTIER_SERVER_MAX_LEASES", 1, 1u << 24, &opt.max_leases, ""},
      {"--threads", "KVTIER_SERVER_THREADS", 0, 256, &opt.threads, ""},
      {"--etcd-ttl", "KVTIER_SERVER_ETCD_TTL", 2, 3600, &out->etcd_ttl, ""},
  };
  for (const Text& t : texts)
    if (const char* v = std::getenv(t.env)) *t.value = v;
  for (Limit& l : limits)
    if (const char* v = std::getenv(l.env)) l.text = v;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      std::fputs(kHelp, stdout);
      return 0;
    }
    if (i + 1 >= argc) return usage_error(a + " needs a value");
    std::string v = argv[++i];
    auto t = std::find_if(std::begin(texts), std::end(texts), [&](auto& x) { return a == x.flag; });
    auto l =
        std::find_if(std::begin(limits), std::end(limits), [&](auto& x) { return a == x.flag; });
    if (t != std::end(texts))
      *t->value = v;
    else if (l != std::end(limits))
      l->text = v;
    else
      return usage_error("unknown flag " + a);
  }
  if (!kvtier::net::split_host_port(listen, &opt.host, &opt.port).is_ok())
    return usage_error("--listen '" + listen + "' is not HOST:PORT");
  if (!kvtier::parse_size(capacity, &opt.capacity).is_ok() || opt.capacity < (1u << 20))
    return usage_error("--capacity '" + capacity + "' is not a size of 1MiB or more");
  if (rdma != "auto" && rdma != "off")
    return usage_error("--rdma '" + rdma + "' is not auto or off");
  opt.rdma = rdma == "auto";
  unsigned long n = 0;
  if (!parse_number(rdma_port, 65535, &n)) return usage_error("--rdma-port '" + rdma_port + "'");
  opt.rdma_port = static_cast<uint16_t>(n);
  if (!tos.empty() && !parse_number(tos, 255, &n)) return usage_error("--rdma-tos '" + tos + "'");
  if (!tos.empty()) opt.rdma_tos = static_cast<int>(n);
  if (!parse_number(lease, 3600000, &n) || n < 10)
    return usage_error("--lease-ms '" + lease + "' is not 10..3600000");
  opt.lease_ms = static_cast<unsigned>(n);
  for (const Limit& l : limits) {
    if (l.text.empty()) continue;
    if (!parse_number(l.text, l.max, &n) || n < l.min)
      return usage_error(std::string(l.flag) + " '" + l.text + "' is not " + std::to_string(l.min) +
                         ".." + std::to_string(l.max));
    *l.field = static_cast<unsigned>(n);
  }
  if (tiers != "memory" && tiers != "memory,file")
    return usage_error("--tiers '" + tiers + "' is not memory or memory,file");
  opt.file = tiers == "memory,file";
  if (opt.file && opt.file_dir.empty()) return usage_error("--tiers memory,file needs --file-dir");
  if (!file_capacity.empty() && (!kvtier::parse_size(file_capacity, &opt.file_capacity).is_ok() ||
                                 opt.file_capacity < (1u << 20)))
    return usage_error("--file-capacity '" + file_capacity + "' is not a size of 1MiB or more");
  if (!metrics_port.empty()) {
    if (!parse_number(metrics_port, 65535, &n) || n == 0)
      return usage_error("--metrics-port '" + metrics_port + "' is not 1..65535");
    out->metrics_port = static_cast<uint16_t>(n);
  }
  if (!etcd.empty() && !kvtier::parse_address_list(etcd, &out->etcd))
    return usage_error("--etcd '" + etcd + "' is not HOST:PORT,...");
  if (!kvtier::valid_cluster_name(out->cluster))
    return usage_error("--cluster '" + out->cluster + "' is not 1..64 of [A-Za-z0-9_.-]");
  std::string host;
  uint16_t port = 0;
  if (!out->advertise.empty() &&
      !kvtier::net::split_host_port(out->advertise, &host, &port).is_ok())
    return usage_error("--advertise '" + out->advertise + "' is not HOST:PORT");
  if (!etcd.empty() && out->advertise.empty() && opt.host == "0.0.0.0")
    return usage_error("--etcd with --listen on 0.0.0.0 needs --advertise");
  if (!kvtier::valid_log_level(out->level))
    return usage_error("--log-level '" + out->level + "' is unknown");
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
  const kvtier::ServerOptions& opt = set.opt;
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
    s = metrics.start(opt.host, set.metrics_port, [&server] { return server.metrics_text(); });
    if (!s.is_ok()) return fail(s);
  }
  // Registered last, once it answers; deregistered first, so clients stop sending here before
  // the server stops answering.
  std::unique_ptr<kvtier::Registration> registration;
  if (!set.etcd.empty()) {
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
