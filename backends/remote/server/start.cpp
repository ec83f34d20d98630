// kvtier-server's start and stop: its parts (arena.h, leases.h, disk.h) wired together, one fd
// budget for everything it opens, the listeners, and the event loops that serve its connections
// (serve/event_loop.h; this server is one serve::Service on them, the p2p endpoint the other).
#include <sys/resource.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <random>

#include "src/log.h"
#include "backends/remote/wire/net.h"
#include "backends/remote/server/server.h"

namespace kvtier {

namespace {
uint64_t random_seed() {
  std::random_device rd;
  return (uint64_t{rd()} << 32) ^ rd();
}
}  // namespace

Server::Server(ServerOptions options)
    : opt_(std::move(options)),
      arena_(opt_.capacity, random_seed()),
      leases_(arena_, opt_.max_leases,
              [this](uint64_t client) {
                if (rdma_) rdma_->fence_client(client);
              }),
      boot_id_(random_seed()) {
  if (opt_.file) disk_ = std::make_unique<Disk>(opt_.file_dir, opt_.file_capacity, warnings_);
}

Server::~Server() {
  stop();
}

// One fd budget for everything the server opens: the soft fd limit is raised up to the hard
// one, then shared out. Besides a reserve for its own (loops, listeners, logs): the metrics
// endpoint's connections, the file tiers of the namespaces open on disk (each its folder, index,
// lock, rings and two files per size class) and the clients' connections. Where the limit is
// too low, the disk's share and the connection caps are lowered, with a line saying so.
void Server::fit_fd_limit() {
  rlimit r{};
  if (getrlimit(RLIMIT_NOFILE, &r) == 0 && r.rlim_cur < r.rlim_max) {
    r.rlim_cur = r.rlim_max;
    setrlimit(RLIMIT_NOFILE, &r);
    getrlimit(RLIMIT_NOFILE, &r);
  }
  constexpr uint64_t kReserve = 64;
  const uint64_t limit = r.rlim_cur;
  uint64_t room = limit > kReserve + MetricsEndpoint::kMaxFds + 32
                      ? limit - kReserve - MetricsEndpoint::kMaxFds
                      : 32;
  uint64_t open_disks = 0;
  if (disk_) {  // at most a third of what is left, and one namespace at least
    open_disks = std::clamp<uint64_t>(room / 3 / Disk::kFdsPerNamespace, 1, 64);
    disk_->set_max_open(open_disks);
    room -= std::min(room - 16, open_disks * Disk::kFdsPerNamespace);
  }
  max_unauth_ = std::max(16u, opt_.max_connections / 4);
  if (opt_.max_connections + max_unauth_ > room) {
    opt_.max_connections = static_cast<unsigned>(std::max<uint64_t>(room * 4 / 5, 1));
    max_unauth_ = std::max<unsigned>(static_cast<unsigned>(room / 5), 1);
    log().warn("server: the fd limit ({}) allows {} connections (and {} before HELLO){}",
               static_cast<unsigned long long>(limit), opt_.max_connections, max_unauth_,
               disk_ ? ", " + std::to_string(open_disks) + " namespaces open on disk" : "");
  }
}

Status Server::start(uint16_t* port) {
  if (Status s = arena_.map(); !s.is_ok()) return s;
  if (disk_)
    if (Status s = disk_->open(); !s.is_ok()) return s;
  fit_fd_limit();
  int listen_fd = -1;
  Status s = net::listen_on(opt_.host, opt_.port, &listen_fd, port);
  if (!s.is_ok()) return s;
  if (opt_.rdma && rdma::available()) {
    const uint16_t rport = opt_.rdma_port ? opt_.rdma_port : static_cast<uint16_t>(*port + 1);
    s = rdma::Listener::start({opt_.host, rport, opt_.rdma_tos}, arena_.base(), arena_.capacity(),
                              &rdma_);
    if (s.is_ok())
      log().warn(
          "server: RDMA data plane on port {}: every client admitted to it can read and write the "
          "whole arena one-sided, whatever its namespace (docs/rdma.md: the RDMA trust model)",
          rdma_->port());
    else
      log().warn("server: no RDMA data plane ({}); clients move bytes over TCP", s.message());
  }
  unsigned workers = opt_.threads;
  if (workers == 0) workers = std::clamp(std::thread::hardware_concurrency(), 1u, 4u);
  const auto ms = [](unsigned n) { return std::chrono::milliseconds(n); };
  loops_ = std::make_unique<serve::Loops>(
      serve::Settings{.name = "server",
                      .max_connections = opt_.max_connections,
                      .max_unauthenticated = max_unauth_,
                      .workers = workers,
                      .hello_timeout = ms(opt_.idle_timeout_ms),
                      .idle_timeout = ms(opt_.idle_timeout_ms),
                      .frame_timeout = ms(opt_.idle_timeout_ms),
                      .bulk_timeout = ms(opt_.bulk_timeout_ms),
                      // deadlines and lease expiry
                      .tick = ms(std::clamp<unsigned>(opt_.lease_ms / 4, 5, 100))},
      static_cast<serve::Service*>(this));
  return loops_->start(listen_fd);
}

void Server::stop() {
  if (loops_) loops_->stop();  // closes every connection; their slots, pins and leases go back
  rdma_.reset();               // before the arena it registered goes
}

void Server::on_tick() {
  const auto now = Clock::now();
  std::lock_guard lock(mu_);
  leases_.expire(now);
}

}  // namespace kvtier
