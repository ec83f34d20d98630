// The client's RDMA channel to one server: kQps QPs, planned and chained posts (rdma.h).
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

}  // namespace

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
