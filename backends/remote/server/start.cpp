// kvtier-server's start and stop: the arena, one fd budget for everything it opens, the
// listeners, and the event loops that serve its connections (serve/event_loop.h; this server is
// one serve::Service on them, the p2p endpoint the other).
#include <sys/mman.h>
#include <sys/resource.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <random>

#include "log.h"
#include "net.h"
#include "server.h"

namespace kvtier {

namespace {
uint64_t random_seed() {
  std::random_device rd;
  return (uint64_t{rd()} << 32) ^ rd();
}
}  // namespace

Server::Server(ServerOptions options)
    : opt_(std::move(options)),
      hash_seed_(random_seed()),
      pages_(Ids{hash_seed_}),
      ns_pages_(16, Ids{hash_seed_}),
      free_(opt_.capacity),
      boot_id_(random_seed()) {}

Server::~Server() {
  stop();
  if (arena_) munmap(arena_, opt_.capacity);
  if (disk_root_ >= 0) ::close(disk_root_);
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
  constexpr uint64_t kFdsPerDisk = 5 + 2 * 64;  // the file tier's kMaxClasses size classes
  const uint64_t limit = r.rlim_cur;
  uint64_t room = limit > kReserve + MetricsEndpoint::kMaxFds + 32
                      ? limit - kReserve - MetricsEndpoint::kMaxFds
                      : 32;
  if (opt_.file) {  // at most a third of what is left, and one namespace at least
    max_open_disks_ = std::clamp<uint64_t>(room / 3 / kFdsPerDisk, 1, 64);
    room -= std::min(room - 16, max_open_disks_ * kFdsPerDisk);
  }
  max_unauth_ = std::max(16u, opt_.max_connections / 4);
  if (opt_.max_connections + max_unauth_ > room) {
    opt_.max_connections = static_cast<unsigned>(std::max<uint64_t>(room * 4 / 5, 1));
    max_unauth_ = std::max<unsigned>(static_cast<unsigned>(room / 5), 1);
    log().warn(
        "server: the fd limit ({}) allows {} connections (and {} before HELLO){}",
        static_cast<unsigned long long>(limit), opt_.max_connections, max_unauth_,
        opt_.file ? ", " + std::to_string(max_open_disks_) + " namespaces open on disk" : "");
  }
}

Status Server::start(uint16_t* port) {
  // Reserved, not touched: pages of the arena are backed as they are first written.
  void* p = mmap(nullptr, opt_.capacity, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED)
    return {KVTIER_ERR_NO_MEMORY, "cannot map an arena of " + std::to_string(opt_.capacity) +
                                      " bytes: " + std::strerror(errno)};
  arena_ = static_cast<std::byte*>(p);
  Status disk = open_disk();
  if (!disk.is_ok()) return disk;
  fit_fd_limit();
  int listen_fd = -1;
  Status s = net::listen_on(opt_.host, opt_.port, &listen_fd, port);
  if (!s.is_ok()) return s;
  if (opt_.rdma && rdma::available()) {
    const uint16_t rport = opt_.rdma_port ? opt_.rdma_port : static_cast<uint16_t>(*port + 1);
    s = rdma::Listener::start({opt_.host, rport, opt_.rdma_tos}, arena_, opt_.capacity, &rdma_);
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
  reap(now);
}

}  // namespace kvtier
