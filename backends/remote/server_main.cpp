// kvtier-server: run one per memory node.
//   kvtier-server --listen 127.0.0.1:7471 --capacity 4GiB [--token SECRET] [--log-level info]
#include <signal.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "config.h"
#include "log.h"
#include "net.h"
#include "server.h"

namespace {

const char* kHelp = R"(kvtier-server: the memory node of kvtier's remote tier.

usage: kvtier-server [--listen HOST:PORT] [--capacity SIZE] [--token TOKEN] [--rdma auto|off]
                     [--rdma-port PORT] [--rdma-tos TOS] [--lease-ms MS] [--log-level LEVEL]

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
                      given back after this long without COMMIT or RELEASE (default 10000);
                      keep it above the clients' KVTIER_REMOTE_TIMEOUT_MS + 5000
                      env: KVTIER_SERVER_LEASE_MS
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

}  // namespace

int main(int argc, char** argv) {
  kvtier::ServerOptions opt;
  std::string listen = "127.0.0.1:7471", capacity = "4GiB", level = "info", rdma = "auto",
              rdma_port = "0", lease = "10000", tos;
  if (const char* v = std::getenv("KVTIER_SERVER_LISTEN")) listen = v;
  if (const char* v = std::getenv("KVTIER_SERVER_RDMA")) rdma = v;
  if (const char* v = std::getenv("KVTIER_SERVER_RDMA_PORT")) rdma_port = v;
  if (const char* v = std::getenv("KVTIER_SERVER_LEASE_MS")) lease = v;
  if (const char* v = std::getenv("KVTIER_SERVER_RDMA_TOS")) tos = v;
  if (const char* v = std::getenv("KVTIER_SERVER_CAPACITY")) capacity = v;
  if (const char* v = std::getenv("KVTIER_REMOTE_TOKEN")) opt.token = v;
  if (const char* v = std::getenv("KVTIER_LOG_LEVEL")) level = v;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      std::fputs(kHelp, stdout);
      return 0;
    }
    if (i + 1 >= argc) return usage_error(a + " needs a value");
    std::string v = argv[++i];
    if (a == "--listen")
      listen = v;
    else if (a == "--capacity")
      capacity = v;
    else if (a == "--token")
      opt.token = v;
    else if (a == "--log-level")
      level = v;
    else if (a == "--rdma")
      rdma = v;
    else if (a == "--rdma-port")
      rdma_port = v;
    else if (a == "--lease-ms")
      lease = v;
    else if (a == "--rdma-tos")
      tos = v;
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
  if (!kvtier::valid_log_level(level)) return usage_error("--log-level '" + level + "' is unknown");
  kvtier::set_log_level(level);

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
  if (!s.is_ok()) {
    std::fprintf(stderr, "kvtier-server: %s\n", s.message().c_str());
    return 1;
  }
  std::printf("kvtier-server listening on %s:%u capacity %llu\n", opt.host.c_str(), port,
              static_cast<unsigned long long>(opt.capacity));
  std::fflush(stdout);
  int sig = 0;
  sigwait(&stop, &sig);
  kvtier::log().info("server: signal {}, stopping", sig);
  server.stop();
  return 0;
}
