// libibverbs/librdmacm implementation of rdma.h.
#include "rdma.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <infiniband/verbs.h>
#include <netdb.h>
#include <poll.h>
#include <rdma/rdma_cma.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <shared_mutex>
#include <thread>

#include "log.h"

// Verbs attribute structs are filled with designated initialisers, the rest zero by the
// language; GCC 12 still warns about every member left out, which is the point here.
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"

namespace kvtier::rdma {

namespace {

using net::Clock;
using net::Deadline;

Status sys_error(const std::string& what) {
  return {KVTIER_ERR_UNAVAILABLE, "RDMA: " + what + ": " + std::strerror(errno)};
}

// Private data of the connection handshake.
struct ConnectData {  // client -> server
  uint64_t ticket;
};
struct AcceptData {  // server -> client
  uint64_t arena_addr;
  uint64_t arena_bytes;
  uint32_t rkey;
  uint32_t max_msg_sz;  // of the server's port (0 from servers before it was sent)
};

// Access flags as a plain int: ibv_reg_mr is a macro that ANDs them with a flag of another enum
// type, which clang rejects for enum operands.
constexpr int kArenaAccess =
    IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ;
static_assert(IBV_ACCESS_LOCAL_WRITE == 1 && IBV_ACCESS_REMOTE_WRITE == 2,
              "sink_access (rdma_plan.cpp) spells these values out");

// What the device (and `port` of it, when non-zero) allows.
Status query_caps(ibv_context* ctx, uint8_t port, DeviceCaps* caps) {
  ibv_device_attr a{};
  if (ibv_query_device(ctx, &a) != 0) return sys_error("ibv_query_device");
  *caps = {.max_sge = a.max_sge,
           .max_sge_rd = a.max_sge_rd,
           .max_qp_rd_atom = a.max_qp_rd_atom,
           .max_qp_init_rd_atom = a.max_qp_init_rd_atom,
           .max_msg_sz = 0,
           .iwarp = ctx->device->transport_type == IBV_TRANSPORT_IWARP};
  ibv_port_attr pa{};
  if (port && ibv_query_port(ctx, port, &pa) == 0) caps->max_msg_sz = pa.max_msg_sz;
  return {};
}

// Fork after registration corrupts registered memory on kernels before 5.13 (copy-on-write
// moves the parent's pages away from the NIC); ibv_fork_init marks registered memory
// MADV_DONTFORK. It must come before the process's first registration: when something else
// registered first it fails, and RDMAV_FORK_SAFE=1 in the environment is the way.
void fork_safety() {
  static std::once_flag once;
  std::call_once(once, [] {
    if (const int e = ibv_fork_init(); e != 0)
      log().warn("RDMA: ibv_fork_init: {}; set RDMAV_FORK_SAFE=1 if this process forks",
                 std::strerror(e));
  });
}

// RDMA_OPTION_ID_TOS on an id (before it resolves a route, or before it listens).
Status set_tos(rdma_cm_id* id, int tos) {
  if (tos < 0) return {};
  uint8_t t = static_cast<uint8_t>(tos);
  if (rdma_set_option(id, RDMA_OPTION_ID, RDMA_OPTION_ID_TOS, &t, sizeof t) != 0)
    return sys_error("rdma_set_option(TOS " + std::to_string(tos) + ")");
  return {};
}

// Moves a QP to the error state: what is queued is flushed and nothing more executes, in
// either direction (a responder in error answers no incoming WRITE or READ).
void to_error(ibv_qp* qp) {
  ibv_qp_attr a{.qp_state = IBV_QPS_ERR};
  if (ibv_modify_qp(qp, &a, IBV_QP_STATE) != 0)
    log().error("RDMA: moving a QP to the error state failed: {}", std::strerror(errno));
}

int ms_left(Deadline dl) {
  if (dl == Deadline::max()) return -1;
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(dl - Clock::now());
  return static_cast<int>(std::clamp<int64_t>(left.count(), 0, 1 << 30));
}

Status resolve(const std::string& host, uint16_t port, sockaddr_in* out) {
  addrinfo hints{}, *res = nullptr;
  hints.ai_family = AF_INET;
  if (getaddrinfo(host.c_str(), nullptr, &hints, &res) != 0 || !res)
    return {KVTIER_ERR_UNAVAILABLE, "RDMA: cannot resolve " + host};
  *out = *reinterpret_cast<sockaddr_in*>(res->ai_addr);
  out->sin_port = htons(port);
  freeaddrinfo(res);
  return {};
}

// Waits for the next event on `ec` and checks it is `want`; copies its private data.
Status wait_event(rdma_event_channel* ec, rdma_cm_event_type want, Deadline dl,
                  std::vector<uint8_t>* private_data = nullptr) {
  for (;;) {
    pollfd p{ec->fd, POLLIN, 0};
    const int r = ::poll(&p, 1, ms_left(dl));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return sys_error("poll");
    if (r == 0) return {KVTIER_ERR_TIMEOUT, "RDMA: connection setup timed out"};
    rdma_cm_event* ev = nullptr;
    if (rdma_get_cm_event(ec, &ev) != 0) {
      if (errno == EAGAIN) continue;
      return sys_error("rdma_get_cm_event");
    }
    const rdma_cm_event_type type = ev->event;
    const int status = ev->status;
    if (private_data && ev->param.conn.private_data)
      private_data->assign(static_cast<const uint8_t*>(ev->param.conn.private_data),
                           static_cast<const uint8_t*>(ev->param.conn.private_data) +
                               ev->param.conn.private_data_len);
    rdma_ack_cm_event(ev);
    if (type == want) return {};
    return {KVTIER_ERR_UNAVAILABLE, std::string("RDMA: ") + rdma_event_str(type) + " (status " +
                                        std::to_string(status) + ")"};
  }
}

// Ends a connection: disconnect (a no-op if it never connected), then its QP and id.
void close_id(rdma_cm_id* id) {
  rdma_disconnect(id);
  if (id->qp) rdma_destroy_qp(id);
  rdma_destroy_id(id);
}

rdma_event_channel* make_event_channel() {
  rdma_event_channel* ec = rdma_create_event_channel();
  if (ec) fcntl(ec->fd, F_SETFL, fcntl(ec->fd, F_GETFL) | O_NONBLOCK);
  return ec;
}

// ---- Registry ----

class RegistryImpl final : public Registry {
 public:
  ~RegistryImpl() override {
    for (auto& [ctx, dev] : devs_) {
      for (auto& [start, mr] : dev.mrs) ibv_dereg_mr(mr);
      ibv_dealloc_pd(dev.pd);
    }
  }

  void add(const void* addr, size_t len) override {
    std::unique_lock lock(mu_);
    regions_[reinterpret_cast<uintptr_t>(addr)] = len;
    for (auto& [ctx, dev] : devs_) reg(dev, addr, len);
  }

  void remove(const void* addr) override {
    std::unique_lock lock(mu_);
    const auto start = reinterpret_cast<uintptr_t>(addr);
    regions_.erase(start);
    for (auto& [ctx, dev] : devs_) {
      auto it = dev.mrs.find(start);
      if (it == dev.mrs.end()) continue;
      ibv_dereg_mr(it->second);
      dev.mrs.erase(it);
    }
  }

  // The protection domain for a device, made (and every region registered there) on first use.
  ibv_pd* pd_for(ibv_context* ctx) {
    std::unique_lock lock(mu_);
    auto it = devs_.find(ctx);
    if (it != devs_.end()) return it->second.pd;
    fork_safety();  // before this process's first registration
    Dev dev{ibv_alloc_pd(ctx), sink_access(ctx->device->transport_type == IBV_TRANSPORT_IWARP), {}};
    if (!dev.pd) return nullptr;
    for (auto& [start, len] : regions_) reg(dev, reinterpret_cast<void*>(start), len);
    return devs_.emplace(ctx, std::move(dev)).first->second.pd;
  }

  bool lkey(ibv_context* ctx, const std::byte* p, size_t len, uint32_t* out) const {
    std::shared_lock lock(mu_);
    auto d = devs_.find(ctx);
    if (d == devs_.end()) return false;
    const auto a = reinterpret_cast<uintptr_t>(p);
    auto it = d->second.mrs.upper_bound(a);
    if (it == d->second.mrs.begin()) return false;
    --it;
    if (a + len > it->first + it->second->length) return false;
    *out = it->second->lkey;
    return true;
  }

 private:
  struct Dev {
    ibv_pd* pd;
    int access;                        // sink_access for the device's transport
    std::map<uintptr_t, ibv_mr*> mrs;  // region start -> MR
  };
  static void reg(Dev& dev, const void* addr, size_t len) {
    ibv_mr* mr = ibv_reg_mr(dev.pd, const_cast<void*>(addr), len, dev.access);
    if (!mr) {  // its fragments take the staging path instead
      log().warn("RDMA: cannot register {} bytes at {} ({}; RLIMIT_MEMLOCK?); they will be staged",
                 len, addr, std::strerror(errno));
      return;
    }
    dev.mrs[reinterpret_cast<uintptr_t>(addr)] = mr;
  }

  mutable std::shared_mutex mu_;
  std::map<uintptr_t, size_t> regions_;
  std::map<ibv_context*, Dev> devs_;
};

// ---- Client channel ----

class ChannelImpl final : public Channel {
 public:
  explicit ChannelImpl(std::shared_ptr<RegistryImpl> reg) : reg_(std::move(reg)) {}

  ~ChannelImpl() override {
    for (rdma_cm_id* id : ids_) close_id(id);
    if (cq_) ibv_destroy_cq(cq_);
    if (staging_mr_) ibv_dereg_mr(staging_mr_);
    std::free(staging_);
    if (ec_) rdma_destroy_event_channel(ec_);
  }

  Status connect(const std::string& host, uint16_t port, uint64_t ticket, int tos, Deadline dl) {
    sockaddr_in dst{};
    Status s = resolve(host, port, &dst);
    if (!s.is_ok()) return s;
    if (!(ec_ = make_event_channel())) return sys_error("rdma_create_event_channel");
    const int ms = std::max(ms_left(dl), 1);
    for (uint32_t q = 0; q < kQps; ++q) {
      rdma_cm_id* id = nullptr;
      if (rdma_create_id(ec_, &id, nullptr, RDMA_PS_TCP) != 0) return sys_error("rdma_create_id");
      ids_.push_back(id);
      if (s = set_tos(id, tos); !s.is_ok()) return s;  // before the route is resolved
      if (rdma_resolve_addr(id, nullptr, reinterpret_cast<sockaddr*>(&dst), ms) != 0)
        return sys_error("rdma_resolve_addr");
      if (s = wait_event(ec_, RDMA_CM_EVENT_ADDR_RESOLVED, dl); !s.is_ok()) return s;
      if (rdma_resolve_route(id, ms) != 0) return sys_error("rdma_resolve_route");
      if (s = wait_event(ec_, RDMA_CM_EVENT_ROUTE_RESOLVED, dl); !s.is_ok()) return s;
      if (q == 0) {
        if (s = open_device(id->verbs, id->port_num); !s.is_ok()) return s;
      } else if (id->verbs != ctx_) {
        return {KVTIER_ERR_UNAVAILABLE, "RDMA: the QPs to one server resolved to two devices"};
      }
      if (s = connect_qp(id, ticket, dl); !s.is_ok()) return s;
    }
    return {};
  }

  bool dead() const override { return dead_; }

  Status run(bool write, std::span<const Transfer> transfers, Deadline dl) override {
    if (dead_) return {KVTIER_ERR_UNAVAILABLE, "RDMA: channel is down"};
    // Transfers of registered memory go as they are; the rest passes through the staging buffer
    // in rounds (a page larger than the buffer in pieces).
    round_.clear();
    copies_.clear();
    stage_frags_.clear();
    size_t used = 0;
    Status s;
    for (const Transfer& t : transfers) {
      if (!in_arena(t.remote, t.len, arena_bytes_))
        return {KVTIER_ERR_INVALID_ARG, "RDMA: transfer beyond the server's arena"};
      if (registered(t)) {
        round_.push_back(t);
        continue;
      }
      for (size_t off = 0; off < t.len;) {
        if (used == kStaging) {
          if (s = flush(write, dl); !s.is_ok()) return s;
          used = 0;
        }
        const size_t n = std::min(kStaging - used, t.len - off);
        std::byte* stage = staging_ + used;
        if (write) copy_range(t.local, off, n, stage, true);
        stage_frags_.push_back({stage, n});
        round_.push_back({{&stage_frags_.back(), 1}, t.remote + off, n});
        copies_.push_back({t.local, off, n, stage});
        used += n;
        off += n;
      }
    }
    return flush(write, dl);
  }

 private:
  struct Copy {  // staged bytes of a read, copied out once the round completes
    Frags frags;
    size_t off, n;
    std::byte* stage;
  };

  Status open_device(ibv_context* ctx, uint8_t port) {
    ctx_ = ctx;
    if (!(pd_ = reg_->pd_for(ctx))) return sys_error("ibv_alloc_pd");
    if (Status s = query_caps(ctx, port, &caps_); !s.is_ok()) return s;
    if (client_depths(caps_).initiator_depth == 0)
      return {KVTIER_ERR_UNSUPPORTED, "RDMA: the device allows no RDMA READ in flight"};
    // Room for every request's completion: flushed requests may complete even unsignalled.
    if (!(cq_ = ibv_create_cq(ctx, kQps * kDepth + 16, nullptr, nullptr, 0)))
      return sys_error("ibv_create_cq");
    staging_ = static_cast<std::byte*>(std::aligned_alloc(4096, kStaging));
    if (!staging_) return {KVTIER_ERR_NO_MEMORY, "RDMA: no memory for the staging buffer"};
    std::memset(staging_, 0, kStaging);  // touched once, not on the data path
    if (!(staging_mr_ = ibv_reg_mr(pd_, staging_, kStaging, sink_access(caps_.iwarp))))
      return sys_error("ibv_reg_mr (staging)");
    return {};
  }

  // One QP on a route-resolved id, connected with the ticket; learns the arena from the accept.
  Status connect_qp(rdma_cm_id* id, uint64_t ticket, Deadline dl) {
    ibv_qp_init_attr qa{.send_cq = cq_,
                        .recv_cq = cq_,
                        .cap = {.max_send_wr = kDepth,
                                .max_recv_wr = 1,
                                .max_send_sge = sge_limit(caps_, true),  // READs use no more
                                .max_recv_sge = 1},
                        .qp_type = IBV_QPT_RC,
                        .sq_sig_all = 0};  // selective signalling: a chain's last request only
    if (rdma_create_qp(id, pd_, &qa) != 0) return sys_error("rdma_create_qp");
    ConnectData cd{ticket};
    const Depths d = client_depths(caps_);
    rdma_conn_param cp{.private_data = &cd,
                       .private_data_len = sizeof cd,
                       .responder_resources = d.responder_resources,
                       .initiator_depth = d.initiator_depth,  // READs in flight per QP
                       .retry_count = 7,
                       .rnr_retry_count = 7};
    if (rdma_connect(id, &cp) != 0) return sys_error("rdma_connect");
    std::vector<uint8_t> priv;
    if (Status s = wait_event(ec_, RDMA_CM_EVENT_ESTABLISHED, dl, &priv); !s.is_ok()) return s;
    AcceptData ad{};
    if (priv.size() < sizeof ad)
      return {KVTIER_ERR_UNAVAILABLE, "RDMA: the server's accept carries no arena"};
    std::memcpy(&ad, priv.data(), sizeof ad);
    arena_addr_ = ad.arena_addr;
    arena_bytes_ = ad.arena_bytes;
    rkey_ = ad.rkey;
    const uint32_t msg = msg_limit(caps_.max_msg_sz, ad.max_msg_sz);
    write_limits_ = {sge_limit(caps_, true), msg};
    read_limits_ = {sge_limit(caps_, false), msg};
    return {};
  }

  bool lkey_of(const std::byte* p, size_t len, uint32_t* lkey) const {
    if (p >= staging_ && p + len <= staging_ + kStaging) {
      *lkey = staging_mr_->lkey;
      return true;
    }
    return reg_->lkey(ctx_, p, len, lkey);
  }

  bool registered(const Transfer& t) const {
    size_t left = t.len;
    uint32_t k;
    for (const Frag& f : t.local) {
      if (!left) break;
      const size_t n = std::min(left, f.len);
      if (!lkey_of(f.ptr, n, &k)) return false;
      left -= n;
    }
    return true;
  }

  // Copies bytes [off, off+n) of the fragments to (to_stage) or from `stage`.
  static void copy_range(Frags frags, size_t off, size_t n, std::byte* stage, bool to_stage) {
    for (const Frag& f : frags) {
      if (!n) break;
      if (off >= f.len) {
        off -= f.len;
        continue;
      }
      const size_t k = std::min(n, f.len - off);
      if (to_stage)
        std::memcpy(stage, f.ptr + off, k);
      else
        std::memcpy(f.ptr + off, stage, k);
      stage += k;
      n -= k;
      off = 0;
    }
  }

  Status flush(bool write, Deadline dl) {
    Status s = execute(write, dl);
    if (s.is_ok() && !write)
      for (const Copy& c : copies_) copy_range(c.frags, c.off, c.n, c.stage, false);
    round_.clear();
    copies_.clear();
    stage_frags_.clear();
    return s;
  }

  // Posts the round's plan, chains of requests per QP, and waits for every chain.
  Status execute(bool write, Deadline dl) {
    if (round_.empty()) return {};
    // Nothing is in flight yet: a missed deadline fails the call, not the channel.
    if (Clock::now() >= dl)
      return {KVTIER_ERR_TIMEOUT, "RDMA: the deadline passed before the batch was posted"};
    Status s = make_plan(
        round_, write ? write_limits_ : read_limits_, kQps, kSignalEvery,
        [this](const std::byte* p, size_t n, uint32_t* k) { return lkey_of(p, n, k); }, &plan_);
    if (!s.is_ok()) return s;
    sges_.resize(plan_.sges.size());
    for (size_t i = 0; i < plan_.sges.size(); ++i)
      sges_[i] = {plan_.sges[i].addr, plan_.sges[i].length, plan_.sges[i].lkey};
    wrs_.assign(plan_.wrs.size(), ibv_send_wr{});
    for (size_t c = 0; c < plan_.chains.size(); ++c) {
      const Chain& ch = plan_.chains[c];
      for (uint32_t k = 0; k < ch.count; ++k) {
        const Wr& w = plan_.wrs[ch.first_wr + k];
        ibv_send_wr& v = wrs_[ch.first_wr + k];
        const bool last = k + 1 == ch.count;
        v.wr_id = (c << 1) | (last ? 1 : 0);
        v.sg_list = &sges_[w.first_sge];
        v.num_sge = static_cast<int>(w.num_sge);
        v.opcode = write ? IBV_WR_RDMA_WRITE : IBV_WR_RDMA_READ;
        v.send_flags = last ? IBV_SEND_SIGNALED : 0;
        v.wr.rdma.remote_addr = arena_addr_ + w.remote;
        v.wr.rdma.rkey = rkey_;
        v.next = last ? nullptr : &wrs_[ch.first_wr + k + 1];
      }
    }
    // Per QP: its chains in order, at most kDepth / kSignalEvery of them in flight.
    constexpr uint32_t kInFlight = kDepth / kSignalEvery;
    std::vector<size_t> next(kQps, 0), in_flight(kQps, 0);
    std::vector<std::vector<uint32_t>> queue(kQps);
    for (uint32_t c = 0; c < plan_.chains.size(); ++c) queue[plan_.chains[c].qp].push_back(c);
    size_t done = 0, posted = 0;
    std::string failure;
    auto post_more = [&] {
      for (uint32_t q = 0; q < kQps && failure.empty(); ++q) {
        while (in_flight[q] < kInFlight && next[q] < queue[q].size()) {
          const Chain& ch = plan_.chains[queue[q][next[q]]];
          ibv_send_wr* bad = nullptr;
          if (const int e = ibv_post_send(ids_[q]->qp, &wrs_[ch.first_wr], &bad); e != 0) {
            failure = std::string("ibv_post_send: ") + std::strerror(e);
            return;
          }
          ++next[q];
          ++in_flight[q];
          ++posted;
        }
      }
    };
    post_more();
    ibv_wc wc[32];
    int code = KVTIER_ERR_UNAVAILABLE;  // of a failure
    unsigned idle = 0;
    while (done < posted) {
      const int n = ibv_poll_cq(cq_, 32, wc);
      if (n < 0) {
        failure = "ibv_poll_cq failed";
        break;
      }
      for (int i = 0; i < n; ++i) {
        if (wc[i].status != IBV_WC_SUCCESS && failure.empty())
          failure = std::string("work request failed: ") + ibv_wc_status_str(wc[i].status);
        if (!(wc[i].wr_id & 1)) continue;  // a flushed unsignalled request
        --in_flight[plan_.chains[wc[i].wr_id >> 1].qp];
        ++done;
      }
      if (!failure.empty()) break;
      if (n > 0) {
        post_more();
        idle = 0;
      } else if (++idle % 1024 == 0 && Clock::now() > dl) {
        failure = "timed out waiting for completions";
        code = KVTIER_ERR_TIMEOUT;
        break;
      }
    }
    if (failure.empty()) return {};
    kill_and_drain(posted - done);
    return {code, "RDMA: " + failure};
  }

  // Moves every QP to the error state, so what is still queued is flushed, and reaps those
  // completions: after this no request can touch the caller's memory.
  void kill_and_drain(size_t outstanding) {
    dead_ = true;
    for (rdma_cm_id* id : ids_) to_error(id->qp);
    ibv_wc wc[32];
    const auto until = Clock::now() + std::chrono::seconds(5);
    while (outstanding && Clock::now() < until) {
      const int n = ibv_poll_cq(cq_, 32, wc);
      if (n < 0) break;
      for (int i = 0; i < n; ++i)
        if (wc[i].wr_id & 1) --outstanding;
      if (n == 0) std::this_thread::yield();
    }
    if (outstanding)
      log().error("RDMA: {} chains never completed after the QPs were moved to error", outstanding);
  }

  std::shared_ptr<RegistryImpl> reg_;
  rdma_event_channel* ec_ = nullptr;
  std::vector<rdma_cm_id*> ids_;
  ibv_context* ctx_ = nullptr;
  ibv_pd* pd_ = nullptr;
  ibv_cq* cq_ = nullptr;
  DeviceCaps caps_;
  PlanLimits write_limits_, read_limits_;
  uint64_t arena_addr_ = 0, arena_bytes_ = 0;
  uint32_t rkey_ = 0;
  std::byte* staging_ = nullptr;
  ibv_mr* staging_mr_ = nullptr;
  bool dead_ = false;
  // Reused across batches: nothing is allocated per call once they have grown.
  std::vector<Transfer> round_;
  std::vector<Copy> copies_;
  std::deque<Frag> stage_frags_;  // stable addresses: round_ points into it
  Plan plan_;
  std::vector<ibv_sge> sges_;
  std::vector<ibv_send_wr> wrs_;
};

// ---- Server listener ----

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

bool available() {
  int n = 0;
  ibv_device** list = ibv_get_device_list(&n);
  if (list) ibv_free_device_list(list);
  return n > 0;
}

std::shared_ptr<Registry> Registry::create() {
  return std::make_shared<RegistryImpl>();
}

Status Listener::start(const ListenOptions& options, std::byte* arena, size_t bytes,
                       std::unique_ptr<Listener>* out) {
  auto l = std::make_unique<ListenerImpl>(arena, bytes);
  Status s = l->start(options);
  if (!s.is_ok()) return s;
  *out = std::move(l);
  return {};
}

Status Channel::connect(const std::string& host, uint16_t port, uint64_t ticket, int tos,
                        std::shared_ptr<Registry> registry, Deadline deadline,
                        std::unique_ptr<Channel>* out) {
  auto c = std::make_unique<ChannelImpl>(std::static_pointer_cast<RegistryImpl>(registry));
  Status s = c->connect(host, port, ticket, tos, deadline);
  if (!s.is_ok()) return s;
  *out = std::move(c);
  return {};
}

}  // namespace kvtier::rdma
