// kvtier-server's connections: epoll event loops instead of a thread per connection. The front
// loop owns the listening socket and every connection until its HELLO (capped, oldest closed
// first when full); then a worker loop serves it. Every step has a deadline: HELLO and each
// next request within the idle timeout, each bulk transfer within the bulk timeout of its last
// progress (and a floor on its rate), so that neither silent nor slow clients keep anything.
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <map>
#include <random>

#include "log.h"
#include "net.h"
#include "server.h"

namespace kvtier {

using Conn = Server::Conn;
using Phase = Conn::Phase;

namespace {
uint64_t random_seed() {
  std::random_device rd;
  return (uint64_t{rd()} << 32) ^ rd();
}
}  // namespace

class Server::Loop {
 public:
  Loop(Server* server, bool front) : s_(server), front_(front), sink_(64 << 10) {}
  ~Loop() {
    while (!conns_.empty()) close_conn(*conns_.begin()->second, nullptr);
    for (auto& c : incoming_) close_conn(*c, nullptr);
    if (wake_fd_ >= 0) ::close(wake_fd_);
    if (ep_ >= 0) ::close(ep_);
  }

  Status init() {
    ep_ = epoll_create1(EPOLL_CLOEXEC);
    wake_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (ep_ < 0 || wake_fd_ < 0)
      return {KVTIER_ERR_INTERNAL, std::string("epoll: ") + std::strerror(errno)};
    epoll_event ev{EPOLLIN, {.u64 = kWake}};
    epoll_ctl(ep_, EPOLL_CTL_ADD, wake_fd_, &ev);
    if (front_) listen(true);
    return {};
  }

  void run() {
    epoll_event events[64];
    const auto tick = std::chrono::milliseconds(
        std::clamp<unsigned>(s_->opt_.lease_ms / 4, 5, 100));  // deadlines and lease expiry
    auto next_tick = Clock::now() + tick;
    while (!s_->stopping_) {
      const auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(next_tick - Clock::now());
      const int n = epoll_wait(ep_, events, 64, static_cast<int>(std::max<long>(left.count(), 0)));
      for (int i = 0; i < n; ++i) {
        const uint64_t tag = events[i].data.u64;
        if (tag == kWake) {
          take_incoming();
        } else if (tag == kListen) {
          accept_some();
        } else if (auto it = conns_.find(tag); it != conns_.end()) {
          serve(*it->second);
        }
      }
      if (Clock::now() >= next_tick) {
        on_tick();
        next_tick = Clock::now() + tick;
      }
    }
  }

  // From another thread: this loop takes over an authenticated connection.
  void adopt(std::unique_ptr<Conn> c) {
    {
      std::lock_guard lock(mu_);
      incoming_.push_back(std::move(c));
    }
    wake();
  }
  void wake() {
    const uint64_t one = 1;
    ssize_t n = ::write(wake_fd_, &one, sizeof one);
    (void)n;
  }

 private:
  static constexpr uint64_t kWake = 0, kListen = 1;  // epoll tags; connection ids start at 2

  void listen(bool on) {
    if (listening_ == on) return;
    epoll_event ev{EPOLLIN, {.u64 = kListen}};
    epoll_ctl(ep_, on ? EPOLL_CTL_ADD : EPOLL_CTL_DEL, s_->listen_fd_, &ev);
    listening_ = on;
  }

  void take_incoming() {
    uint64_t n;
    while (::read(wake_fd_, &n, sizeof n) > 0) {
    }
    std::vector<std::unique_ptr<Conn>> got;
    {
      std::lock_guard lock(mu_);
      got.swap(incoming_);
    }
    for (auto& c : got) {
      Conn& ref = *c;
      ref.events = 0;
      conns_.emplace(ref.id, std::move(c));
      watch(ref);
      serve(ref);  // bytes of its first request may be waiting already
    }
  }

  void accept_some() {
    for (int k = 0; k < 64; ++k) {
      int fd = ::accept4(s_->listen_fd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
      if (fd < 0) {
        if (errno == EAGAIN || errno == EINTR || errno == ECONNABORTED) return;
        // Out of fds (or memory): stop taking connections until the next tick instead of
        // spinning on a listening socket that stays readable.
        s_->warn_limited(std::string("server: accept: ") + std::strerror(errno));
        listen(false);
        return;
      }
      net::no_delay(fd);
      // Full of connections that have not said HELLO: the oldest goes (it had the most time).
      if (conns_.size() >= s_->max_unauth_) close_conn(*conns_.begin()->second, "no HELLO in time");
      auto c = std::make_unique<Conn>();
      c->id = s_->next_conn_++;
      c->fd = fd;
      c->deadline = Clock::now() + std::chrono::milliseconds(s_->opt_.idle_timeout_ms);
      Conn& ref = *c;
      conns_.emplace(ref.id, std::move(c));
      watch(ref);
    }
  }

  void watch(Conn& c) {
    const uint32_t want = c.phase == Phase::kReply ? EPOLLOUT : EPOLLIN;
    if (c.events == want) return;
    epoll_event ev{want, {.u64 = c.id}};
    epoll_ctl(ep_, c.events ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, c.fd, &ev);
    c.events = want;
  }

  // Moves a connection as far as its socket allows, a bounded number of steps so that one
  // busy client cannot keep the loop from the others.
  void serve(Conn& c) {
    const char* why = nullptr;
    bool blocked = false;
    for (int steps = 0; steps < 32 && !why && !blocked; ++steps) {
      const Phase before = c.phase;
      why = step(c, &blocked);
      if (!why && before == Phase::kReply && c.phase == Phase::kHeader && handed_off(c)) return;
    }
    if (why) return close_conn(c, *why ? why : nullptr);
    watch(c);
  }

  // One step: nullptr to go on (*blocked: the socket has nothing more for now), "" to close
  // quietly (the peer is gone), or why to close.
  const char* step(Conn& c, bool* blocked) {
    switch (c.phase) {
      case Phase::kHeader:
        return read_header(c, blocked);
      case Phase::kPayload:
        return read_payload(c, blocked);
      case Phase::kBulkIn:
        return read_bulk(c, blocked);
      case Phase::kReply:
        return write_reply(c, blocked);
    }
    return "";
  }

  // recv into buf: false when the connection ended; *blocked when nothing came.
  static bool receive(int fd, void* buf, size_t len, size_t* n, bool* blocked) {
    const ssize_t got = ::recv(fd, buf, len, 0);
    *n = got > 0 ? static_cast<size_t>(got) : 0;
    if (got > 0) return true;
    *blocked = got < 0 && (errno == EAGAIN || errno == EINTR);
    return *blocked;
  }

  const char* read_header(Conn& c, bool* blocked) {
    size_t n;
    if (!receive(c.fd, c.head + c.got, wire::kHeaderSize - c.got, &n, blocked)) return "";
    c.got += n;
    if (c.got < wire::kHeaderSize) return nullptr;
    c.got = 0;
    c.started = Clock::now();
    Status st = wire::decode_header(c.head, &c.h);
    if (st.is_ok() && !c.hello) st = wire::check_first_frame(c.h);
    if (!st.is_ok()) {
      s_->reply_error(c, st);
      return nullptr;
    }
    c.payload.clear();
    c.phase = Phase::kPayload;
    return c.h.length ? nullptr : frame_in(c);
  }

  // The payload grows as its bytes arrive: a frame that only claims a length costs nothing.
  const char* read_payload(Conn& c, bool* blocked) {
    const size_t want = std::min<size_t>(c.h.length - c.got, 64 << 10);
    if (c.payload.size() < c.got + want) c.payload.resize(c.got + want);
    size_t n;
    if (!receive(c.fd, c.payload.data() + c.got, want, &n, blocked)) return "";
    c.got += n;
    if (c.got < c.h.length) return nullptr;
    c.got = 0;
    c.payload.resize(c.h.length);
    return frame_in(c);
  }

  const char* frame_in(Conn& c) {
    s_->on_frame(c);
    if (c.payload.capacity() > (64 << 10)) std::vector<uint8_t>().swap(c.payload);
    return nullptr;
  }

  // A PUT's values, straight into their slots; drained ones into the sink.
  const char* read_bulk(Conn& c, bool* blocked) {
    s_->reserve_ahead(c);
    iovec iov[64];
    size_t k = 0;
    for (size_t i = c.bulk_at; i < c.decided && k < 64; ++i) {
      iov[k++] = c.bulk[i];
      if (iov[k - 1].iov_base) continue;
      iov[k - 1] = {sink_.data(), std::min(c.bulk[i].iov_len, sink_.size())};
      if (c.bulk[i].iov_len > sink_.size()) break;  // the rest of it next time, not the next value
    }
    msghdr msg{};
    msg.msg_iov = iov;
    msg.msg_iovlen = k;
    const ssize_t got = ::recvmsg(c.fd, &msg, 0);
    if (got < 0 && (errno == EAGAIN || errno == EINTR)) return *blocked = true, nullptr;
    if (got <= 0) return "";
    c.moved = Clock::now();
    advance(c.bulk, &c.bulk_at, static_cast<size_t>(got));
    if (c.bulk_at == c.bulk.size()) s_->on_put_bytes(c);
    return nullptr;
  }

  const char* write_reply(Conn& c, bool* blocked) {
    msghdr msg{};
    msg.msg_iov = c.out.data() + c.out_at;
    msg.msg_iovlen = std::min<size_t>(c.out.size() - c.out_at, IOV_MAX);
    const ssize_t sent = ::sendmsg(c.fd, &msg, MSG_NOSIGNAL);
    if (sent < 0 && (errno == EAGAIN || errno == EINTR)) return *blocked = true, nullptr;
    if (sent < 0) return "";
    c.moved = Clock::now();
    advance(c.out, &c.out_at, static_cast<size_t>(sent));
    if (c.out_at < c.out.size()) return nullptr;
    s_->on_reply_sent(c);
    if (c.close_after) return "";
    if (c.reply.capacity() > (64 << 10)) std::vector<uint8_t>().swap(c.reply);
    c.out.clear();
    c.out_at = 0;
    c.phase = Phase::kHeader;
    c.deadline = Clock::now() + std::chrono::milliseconds(s_->opt_.idle_timeout_ms);
    return nullptr;
  }

  // Drops `n` bytes from the front of iov[*at...] (a drained entry counts its full length even
  // though each pass reads at most the sink's size of it).
  static void advance(std::vector<iovec>& iov, size_t* at, size_t n) {
    while (n > 0 && *at < iov.size()) {
      iovec& v = iov[*at];
      const size_t take = std::min(n, v.iov_len);
      if (v.iov_base) v.iov_base = static_cast<char*>(v.iov_base) + take;
      v.iov_len -= take;
      n -= take;
      if (v.iov_len == 0) ++*at;
    }
  }

  // The front loop hands a connection that just completed HELLO to a worker loop.
  bool handed_off(Conn& c) {
    if (!front_ || !c.hello) return false;
    auto it = conns_.find(c.id);
    epoll_ctl(ep_, EPOLL_CTL_DEL, c.fd, nullptr);
    std::unique_ptr<Conn> owned = std::move(it->second);
    conns_.erase(it);
    const size_t workers = s_->loops_.size() - 1;
    s_->loops_[1 + next_worker_++ % workers]->adopt(std::move(owned));
    return true;
  }

  void on_tick() {
    const auto now = Clock::now();
    const auto bulk = std::chrono::milliseconds(s_->opt_.bulk_timeout_ms);
    std::vector<std::pair<Conn*, const char*>> late;
    for (auto& [id, c] : conns_) {
      const bool waiting = c->phase == Phase::kHeader || c->phase == Phase::kPayload;
      if (waiting && now >= c->deadline)
        late.push_back({c.get(), c->hello ? "idle for too long" : "no HELLO in time"});
      else if (!waiting && (now >= c->moved + bulk || now >= c->bulk_end))
        late.push_back({c.get(), c->phase == Phase::kBulkIn ? "a PUT's bytes stopped arriving"
                                                            : "the client stopped reading"});
    }
    for (auto& [c, why] : late) close_conn(*c, why);
    if (front_) {
      s_->reap_leases();
      listen(true);
    }
  }

  void close_conn(Conn& c, const char* why) {
    if (why) log().debug("server: closing connection {}: {}", c.id, why);
    s_->on_close(c);
    if (c.hello) s_->authed_.fetch_sub(1);
    ::close(c.fd);  // also takes it out of the epoll set
    conns_.erase(c.id);
  }

  Server* s_;
  const bool front_;
  int ep_ = -1, wake_fd_ = -1;
  bool listening_ = false;
  size_t next_worker_ = 0;
  std::map<uint64_t, std::unique_ptr<Conn>> conns_;  // by id: the oldest first
  std::vector<uint8_t> sink_;
  std::mutex mu_;
  std::vector<std::unique_ptr<Conn>> incoming_;  // guarded by mu_
};

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
  Status s = net::listen_on(opt_.host, opt_.port, &listen_fd_, port);
  if (!s.is_ok()) return s;
  fcntl(listen_fd_, F_SETFL, fcntl(listen_fd_, F_GETFL) | O_NONBLOCK);
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
  for (unsigned i = 0; i <= workers; ++i) {
    loops_.push_back(std::make_unique<Loop>(this, i == 0));
    s = loops_.back()->init();
    if (!s.is_ok()) return s;
  }
  for (auto& loop : loops_) threads_.emplace_back([l = loop.get()] { l->run(); });
  return {};
}

void Server::stop() {
  if (stopping_.exchange(true)) return;
  for (auto& loop : loops_) loop->wake();
  for (auto& t : threads_) t.join();
  threads_.clear();
  loops_.clear();  // closes every connection; their slots, pins and leases go back
  if (listen_fd_ >= 0) ::close(listen_fd_);
  listen_fd_ = -1;
  rdma_.reset();  // before the arena it registered goes
}

void Server::reap_leases() {
  const auto now = Clock::now();
  std::lock_guard lock(mu_);
  reap(now);
}

}  // namespace kvtier
