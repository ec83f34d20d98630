// The event loops (event_loop.h): epoll instead of a thread per connection. The front loop owns
// the listening socket and every connection until it is authenticated (capped, oldest closed
// first when full); then a worker loop serves it. Every step has a deadline, so that neither
// silent nor slow peers keep anything.
#include "backends/remote/serve/event_loop.h"

#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <map>
#include <mutex>

#include "backends/remote/wire/net.h"

namespace kvtier::serve {

using Phase = Conn::Phase;

void reply(Conn& c, uint16_t type, const std::vector<uint8_t>& payload,
           const std::vector<iovec>& bulk, uint16_t version) {
  wire::Header h;
  h.version = version;
  h.type = type;
  h.length = static_cast<uint32_t>(payload.size());
  c.reply.resize(wire::kHeaderSize);
  wire::encode_header(h, c.reply.data());
  c.reply.insert(c.reply.end(), payload.begin(), payload.end());
  c.out.clear();
  c.out.push_back({c.reply.data(), c.reply.size()});
  c.out.insert(c.out.end(), bulk.begin(), bulk.end());
  c.out_at = 0;
  c.phase = Phase::kReply;
  c.moved = Clock::now();
  c.bulk_end = Clock::time_point::max();
  c.unacked = 0;
}

void reply_error(Conn& c, const Status& s) {
  wire::Writer w;
  w.i32(s.code());
  w.bytes(s.message().data(), std::min<size_t>(s.message().size(), 1024));
  // In the version the peer spoke (ERROR's layout is the same in all): a peer of another
  // version can read why it is refused.
  const bool ours = c.h.magic != wire::kMagic || c.h.version == wire::kVersion;
  reply(c, wire::kError | wire::kReply, w.data(), {}, ours ? wire::kVersion : c.h.version);
  c.close_after = true;
}

void expect_bulk(Conn& c, std::vector<iovec> bulk, Clock::time_point end) {
  c.bulk = std::move(bulk);
  c.bulk_at = c.ready = 0;
  c.phase = Phase::kBulkIn;
  c.moved = Clock::now();
  c.bulk_end = end;
}

class Loops::Loop {
 public:
  Loop(Loops* loops, bool front) : s_(loops), front_(front), sink_(64 << 10) {}
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
    const auto tick = s_->opt_.tick;
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
        s_->warn(s_->opt_.name + ": accept: " + std::strerror(errno));
        listen(false);
        return;
      }
      net::no_delay(fd);
      // Full of connections not yet authenticated: the oldest goes (it had the most time).
      if (conns_.size() >= s_->opt_.max_unauthenticated)
        close_conn(*conns_.begin()->second, "no HELLO in time");
      std::unique_ptr<Conn> c = s_->service_->make_conn();
      c->id = s_->next_conn_++;
      c->fd = fd;
      c->deadline = Clock::now() + s_->opt_.hello_timeout;
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
  // busy peer cannot keep the loop from the others.
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
    if (c.got == 0 && n > 0)  // a frame begun: the rest of it comes within the frame timeout
      c.deadline = std::min(c.deadline, Clock::now() + s_->opt_.frame_timeout);
    c.got += n;
    if (c.got < wire::kHeaderSize) return nullptr;
    c.got = 0;
    c.started = Clock::now();
    const Settings& o = s_->opt_;
    Status st = wire::decode_header(c.head, &c.h);
    if (st.is_ok() && !c.hello)  // before authentication, a HELLO-sized HELLO only
      st = wire::check_first_frame(c.h, o.hello_type, o.max_hello);
    if (st.is_ok() && c.h.length > o.max_payload)
      st = {KVTIER_ERR_INVALID_ARG, "a frame of " + std::to_string(c.h.length) +
                                        " bytes is over the cap of " +
                                        std::to_string(o.max_payload)};
    if (!st.is_ok()) {
      s_->service_->on_refused(c, st);
      reply_error(c, st);
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
    s_->service_->on_frame(c);
    if (c.payload.capacity() > (64 << 10)) std::vector<uint8_t>().swap(c.payload);
    if (c.phase == Phase::kBulkIn && c.bulk.empty()) s_->service_->on_bulk_done(c);
    return nullptr;
  }

  // Bulk bytes, straight into their destinations; drained ones into the sink.
  const char* read_bulk(Conn& c, bool* blocked) {
    s_->service_->on_bulk_more(c);
    if (c.ready <= c.bulk_at) return "";  // the service gave nowhere to put them
    iovec iov[64];
    size_t k = 0;
    for (size_t i = c.bulk_at; i < c.ready && k < 64; ++i) {
      iov[k++] = c.bulk[i];
      if (iov[k - 1].iov_base) continue;
      iov[k - 1] = {sink_.data(), std::min(c.bulk[i].iov_len, sink_.size())};
      if (c.bulk[i].iov_len > sink_.size()) break;  // the rest of it next time, not the next one
    }
    msghdr msg{};
    msg.msg_iov = iov;
    msg.msg_iovlen = k;
    const ssize_t got = ::recvmsg(c.fd, &msg, 0);
    if (got < 0 && (errno == EAGAIN || errno == EINTR)) return *blocked = true, nullptr;
    if (got <= 0) return "";
    c.moved = Clock::now();
    advance(c.bulk, &c.bulk_at, static_cast<size_t>(got));
    if (c.bulk_at == c.bulk.size()) s_->service_->on_bulk_done(c);
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
    c.deadline = Clock::now() + s_->opt_.idle_timeout;
    s_->service_->on_reply_sent(c);
    if (c.close_after) return "";
    if (c.reply.capacity() > (64 << 10)) std::vector<uint8_t>().swap(c.reply);
    c.out.clear();
    c.out_at = 0;
    c.phase = Phase::kHeader;
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

  // The front loop hands a connection that was just authenticated to a worker loop.
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
    const auto bulk = s_->opt_.bulk_timeout;
    std::vector<std::pair<Conn*, const char*>> late;
    for (auto& [id, c] : conns_) {
      const bool waiting = c->phase == Phase::kHeader || c->phase == Phase::kPayload;
      if (c->phase == Phase::kReply) {  // the peer taking what was sent is progress too
        const int q = net::unacked(c->fd);
        if (q < c->unacked) c->moved = now;
        c->unacked = q;
      }
      if (waiting && now >= c->deadline)
        late.push_back({c.get(), c->hello ? "idle for too long" : "no HELLO in time"});
      else if (!waiting && (now >= c->moved + bulk || now >= c->bulk_end))
        late.push_back({c.get(), c->phase == Phase::kBulkIn ? "its bytes stopped arriving"
                                                            : "the peer stopped reading"});
    }
    for (auto& [c, why] : late) close_conn(*c, why);
    if (front_) {
      s_->service_->on_tick();
      listen(true);
    }
  }

  void close_conn(Conn& c, const char* why) {
    if (why) log().debug("{}: closing connection {}: {}", s_->opt_.name, c.id, why);
    s_->service_->on_close(c);
    if (c.hello) s_->authed_.fetch_sub(1);
    ::close(c.fd);  // also takes it out of the epoll set
    conns_.erase(c.id);
  }

  Loops* s_;
  const bool front_;
  int ep_ = -1, wake_fd_ = -1;
  bool listening_ = false;
  size_t next_worker_ = 0;
  std::map<uint64_t, std::unique_ptr<Conn>> conns_;  // by id: the oldest first
  std::vector<uint8_t> sink_;
  std::mutex mu_;
  std::vector<std::unique_ptr<Conn>> incoming_;  // guarded by mu_
};

Loops::Loops(Settings settings, Service* service)
    : opt_(std::move(settings)), service_(service) {}

Loops::~Loops() {
  stop();
}

Status Loops::start(int listen_fd) {
  listen_fd_ = listen_fd;
  fcntl(listen_fd_, F_SETFL, fcntl(listen_fd_, F_GETFL) | O_NONBLOCK);
  for (unsigned i = 0; i <= std::max(opt_.workers, 1u); ++i) {
    loops_.push_back(std::make_unique<Loop>(this, i == 0));
    if (Status s = loops_.back()->init(); !s.is_ok()) return s;
  }
  for (auto& loop : loops_) threads_.emplace_back([l = loop.get()] { l->run(); });
  return {};
}

void Loops::stop() {
  if (stopping_.exchange(true)) return;
  for (auto& loop : loops_) loop->wake();
  for (auto& t : threads_) t.join();
  threads_.clear();
  loops_.clear();  // closes every connection; what they hold goes back (Service::on_close)
  if (listen_fd_ >= 0) ::close(listen_fd_);
  listen_fd_ = -1;
}

Status Loops::admit(Conn& c) {
  if (authed_.fetch_add(1) >= opt_.max_connections) {
    authed_.fetch_sub(1);
    return {KVTIER_ERR_BUSY, "the " + opt_.name + " is at its limit of " +
                                 std::to_string(opt_.max_connections) + " connections"};
  }
  c.hello = true;
  return {};
}

}  // namespace kvtier::serve
