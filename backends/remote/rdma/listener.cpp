// The server's RDMA listener: admits ticketed connections to its registered arena (rdma.h).
#include <fcntl.h>
#include <poll.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <thread>

#include "src/log.h"
#include "backends/remote/rdma/verbs.h"

namespace kvtier::rdma {

namespace {

using net::Clock;
using net::Deadline;
using namespace verbs;

class ListenerImpl final : public Listener {
 public:
  ListenerImpl(std::byte* arena, size_t bytes) : arena_(arena), bytes_(bytes) {}

  ~ListenerImpl() override {
    if (thread_.joinable()) {
      const char c = 0;
      if (::write(wake_[1], &c, 1) < 0) log().warn("RDMA: cannot wake the listener");
      thread_.join();
    }
    std::lock_guard lock(mu_);
    for (auto& [id, conn] : conns_) destroy(id, conn);
    if (listen_id_) rdma_destroy_id(listen_id_);
    for (auto& [ctx, dev] : devs_) release(dev);
    if (devices_) rdma_free_devices(devices_);
    if (ec_) rdma_destroy_event_channel(ec_);
    for (int fd : wake_)
      if (fd >= 0) ::close(fd);
  }

  Status start(const ListenOptions& o) {
    sockaddr_in addr{};
    Status s = resolve(o.host, o.port, &addr);
    if (!s.is_ok()) return s;
    if (loopback_address(o.host))
      log().warn(
          "RDMA: listening on {}, a loopback address: rdma_cm serves no RDMA there; "
          "listen on the NIC's address (kvtier-server --listen, KVTIER_P2P_LISTEN)",
          o.host);
    fork_safety();  // before the arena is registered
    if (::pipe2(wake_, O_CLOEXEC) != 0) return sys_error("pipe");
    if (!(ec_ = make_event_channel())) return sys_error("rdma_create_event_channel");
    if (rdma_create_id(ec_, &listen_id_, nullptr, RDMA_PS_TCP) != 0)
      return sys_error("rdma_create_id");
    if (s = set_tos(listen_id_, o.tos); !s.is_ok()) return s;
    if (rdma_bind_addr(listen_id_, reinterpret_cast<sockaddr*>(&addr)) != 0)
      return sys_error("rdma_bind_addr " + o.host + ":" + std::to_string(o.port));
    if (s = register_arena(); !s.is_ok()) return s;
    if (rdma_listen(listen_id_, 64) != 0) return sys_error("rdma_listen");
    port_ = ntohs(rdma_get_src_port(listen_id_));
    serving_ = true;
    thread_ = std::thread([this] { loop(); });
    return {};
  }

  uint16_t port() const override { return port_; }
  bool serving() const override { return serving_; }

  uint64_t issue_ticket(Owner owner) override { return tickets_.issue(owner, Clock::now()); }

  size_t fence_session(uint64_t session) override {
    tickets_.end_session(session);
    return fence([&](const Owner& o) { return o.session == session; });
  }
  size_t fence_client(uint64_t client) override {
    return fence([&](const Owner& o) { return o.client == client; });
  }

 private:
  struct Dev {
    ibv_pd* pd = nullptr;
    ibv_mr* mr = nullptr;  // the whole arena
    DeviceCaps caps;
  };
  struct Conn {
    ibv_cq* cq;
    Owner owner;
    Clock::time_point fenced{};  // when it was moved to error; epoch: not fenced
  };
  static constexpr auto kFencedLinger = std::chrono::seconds(5);  // then destroyed regardless

  // Registers the arena with the device the listener is bound to, or with every device for a
  // wildcard address: here at start, never in the event thread at a client's first connect
  // (pinning a large arena takes minutes and would stall every connect meanwhile).
  Status register_arena() {
    std::vector<ibv_context*> ctxs;
    if (listen_id_->verbs) {
      ctxs.push_back(listen_id_->verbs);
    } else {
      int n = 0;
      devices_ = rdma_get_devices(&n);
      for (int i = 0; devices_ && i < n; ++i) ctxs.push_back(devices_[i]);
    }
    rlimit rl{};
    if (getrlimit(RLIMIT_MEMLOCK, &rl) == 0) {
      const uint64_t limit = rl.rlim_cur == RLIM_INFINITY ? UINT64_MAX : rl.rlim_cur;
      if (std::string w = memlock_warning(limit, uint64_t{bytes_} * ctxs.size()); !w.empty())
        log().warn("RDMA: {}", w);
    }
    std::lock_guard lock(mu_);
    for (ibv_context* ctx : ctxs) {
      Dev d;
      Status s = query_caps(ctx, 0, &d.caps);
      if (s.is_ok() && !(d.pd = ibv_alloc_pd(ctx))) s = sys_error("ibv_alloc_pd");
      if (s.is_ok() && !(d.mr = ibv_reg_mr(d.pd, arena_, bytes_, kArenaAccess)))
        s = sys_error("registering the arena (RLIMIT_MEMLOCK?)");
      if (!s.is_ok()) {
        release(d);
        log().warn("{} on {}: no RDMA there", s.message(), ibv_get_device_name(ctx->device));
        continue;
      }
      devs_.emplace(ctx, d);
    }
    if (devs_.empty())
      return {KVTIER_ERR_UNAVAILABLE, "RDMA: the arena could not be registered with any device"};
    return {};
  }

  static void release(Dev& d) {
    if (d.mr) ibv_dereg_mr(d.mr);
    if (d.pd) ibv_dealloc_pd(d.pd);
  }

  static void destroy(rdma_cm_id* id, const Conn& c) {
    close_id(id);
    ibv_destroy_cq(c.cq);
  }

  template <class Match>
  size_t fence(Match match) {
    std::lock_guard lock(mu_);
    size_t n = 0;
    for (auto& [id, conn] : conns_) {
      if (!match(conn.owner) || conn.fenced != Clock::time_point{}) continue;
      to_error(id->qp);
      rdma_disconnect(id);  // the CM then reports DISCONNECTED, which destroys it
      conn.fenced = Clock::now();
      ++n;
    }
    return n;
  }

  // A CM event's fields, copied out so the event can be acked first.
  struct Event {
    rdma_cm_id* id;
    rdma_cm_event_type type;
    bool has_ticket;
    ConnectData cd;
    Depths requested;  // as the CM delivers them: swapped to this side's point of view
  };

  void loop() {
    for (;;) {
      pollfd p[2] = {{ec_->fd, POLLIN, 0}, {wake_[0], POLLIN, 0}};
      const int r = ::poll(p, 2, 1000);  // wakes now and then to reap fenced connections
      if (r < 0 && errno != EINTR) return;
      if (p[1].revents) return;
      reap_fenced();
      if (r <= 0 || !(p[0].revents & POLLIN)) continue;
      rdma_cm_event* ev = nullptr;
      if (rdma_get_cm_event(ec_, &ev) != 0) continue;
      Event e{ev->id, ev->event, false, {}, {}};
      e.has_ticket = ev->param.conn.private_data && ev->param.conn.private_data_len >= sizeof e.cd;
      if (e.has_ticket) std::memcpy(&e.cd, ev->param.conn.private_data, sizeof e.cd);
      e.requested = {ev->param.conn.initiator_depth, ev->param.conn.responder_resources};
      rdma_ack_cm_event(ev);  // before the id may be destroyed below
      handle(e);
    }
  }

  void handle(const Event& e) {
    switch (e.type) {
      case RDMA_CM_EVENT_CONNECT_REQUEST: {
        Owner owner;
        const bool allowed = e.has_ticket && tickets_.redeem(e.cd.ticket, Clock::now(), &owner);
        on_connect(e.id, allowed, owner, e.requested);
        break;
      }
      case RDMA_CM_EVENT_DISCONNECTED:
      case RDMA_CM_EVENT_TIMEWAIT_EXIT:
      case RDMA_CM_EVENT_CONNECT_ERROR:
      case RDMA_CM_EVENT_UNREACHABLE:
      case RDMA_CM_EVENT_REJECTED:
        close_conn(e.id);  // accepted, then gone (or never established)
        break;
      case RDMA_CM_EVENT_DEVICE_REMOVAL:
        on_device_removal(e.id);
        break;
      default:
        break;
    }
  }

  void on_connect(rdma_cm_id* id, bool allowed, Owner owner, Depths requested) {
    std::lock_guard lock(mu_);
    auto dev = allowed ? devs_.find(id->verbs) : devs_.end();
    if (!allowed) {
      log().warn("RDMA: refused a connection without a valid ticket");
    } else if (dev == devs_.end()) {
      log().warn("RDMA: refused a connection on a device that had no arena at start");
    } else if (ibv_cq* cq = ibv_create_cq(id->verbs, 4, nullptr, nullptr, 0)) {
      if (accept(id, dev->second, cq, requested)) {
        conns_[id] = {cq, owner};
        return;
      }
      log().warn("RDMA: accepting a connection failed: {}", std::strerror(errno));
      if (id->qp) rdma_destroy_qp(id);
      ibv_destroy_cq(cq);
    }
    rdma_reject(id, nullptr, 0);
    rdma_destroy_id(id);
  }

  bool accept(rdma_cm_id* id, const Dev& dev, ibv_cq* cq, Depths requested) {
    // One-sided traffic only: the server never posts; its QP just needs to exist.
    ibv_qp_init_attr qa{
        .send_cq = cq,
        .recv_cq = cq,
        .cap = {.max_send_wr = 1, .max_recv_wr = 1, .max_send_sge = 1, .max_recv_sge = 1},
        .qp_type = IBV_QPT_RC};
    DeviceCaps port = dev.caps;
    query_caps(id->verbs, id->port_num, &port);  // for the port's max_msg_sz
    AcceptData ad{reinterpret_cast<uint64_t>(arena_), bytes_, dev.mr->rkey, port.max_msg_sz};
    const Depths d = server_depths(requested, dev.caps);
    rdma_conn_param cp{.private_data = &ad,
                       .private_data_len = sizeof ad,
                       .responder_resources = d.responder_resources,
                       .initiator_depth = d.initiator_depth};
    return rdma_create_qp(id, dev.pd, &qa) == 0 && rdma_accept(id, &cp) == 0;
  }

  void close_conn(rdma_cm_id* id) {
    std::lock_guard lock(mu_);
    auto it = conns_.find(id);
    if (it == conns_.end()) return;
    destroy(id, it->second);
    conns_.erase(it);
  }

  // Fenced connections whose DISCONNECTED never came (a dead client host): destroyed anyway.
  void reap_fenced() {
    std::lock_guard lock(mu_);
    const auto now = Clock::now();
    std::erase_if(conns_, [&](auto& c) {
      if (c.second.fenced == Clock::time_point{} || now - c.second.fenced < kFencedLinger)
        return false;
      destroy(c.first, c.second);
      return true;
    });
  }

  // The device is going away: everything of it must be freed before the kernel can finish,
  // and no ticket is issued while no device is left.
  void on_device_removal(rdma_cm_id* id) {
    std::lock_guard lock(mu_);
    ibv_context* ctx = id->verbs;
    log().error("RDMA: device {} removed; its connections close",
                ctx ? ibv_get_device_name(ctx->device) : "?");
    std::erase_if(conns_, [&](auto& c) {
      if (c.first->verbs != ctx) return false;
      destroy(c.first, c.second);
      return true;
    });
    if (auto d = devs_.find(ctx); d != devs_.end()) {
      release(d->second);
      devs_.erase(d);
    }
    if (id == listen_id_) {  // bound to that device: the listener itself is gone
      rdma_destroy_id(listen_id_);
      listen_id_ = nullptr;
    }
    serving_ = listen_id_ && !devs_.empty();
    if (!serving_) log().error("RDMA: no device left; clients move their bytes over TCP");
  }

  std::byte* arena_;
  size_t bytes_;
  TicketBook tickets_;
  int wake_[2] = {-1, -1};
  rdma_event_channel* ec_ = nullptr;
  rdma_cm_id* listen_id_ = nullptr;  // listener thread only (after start)
  ibv_context** devices_ = nullptr;  // rdma_get_devices, for a wildcard listen
  uint16_t port_ = 0;
  std::atomic<bool> serving_{false};
  std::thread thread_;
  std::mutex mu_;                      // devs_ and conns_: the event thread and fences
  std::map<ibv_context*, Dev> devs_;   // every device the arena is registered with
  std::map<rdma_cm_id*, Conn> conns_;  // accepted connections
};

}  // namespace

Status Listener::start(const ListenOptions& options, std::byte* arena, size_t bytes,
                       std::unique_ptr<Listener>* out) {
  auto l = std::make_unique<ListenerImpl>(arena, bytes);
  Status s = l->start(options);
  if (!s.is_ok()) return s;
  *out = std::move(l);
  return {};
}

}  // namespace kvtier::rdma
