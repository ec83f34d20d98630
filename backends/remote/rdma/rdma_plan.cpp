// The RDMA data plane's logic that needs no device: work-request planning, connection
// parameters, limits, tickets and the channel lock. Built with and without RDMA.
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>

#include <algorithm>
#include <climits>

#include "backends/remote/rdma/rdma.h"

namespace kvtier::rdma {

uint32_t sge_limit(const DeviceCaps& caps, bool write) {
  int n = caps.max_sge;
  // 0 means the driver did not say: one SGE per READ is what every NIC can do.
  if (!write) n = std::min(n, caps.max_sge_rd > 0 ? caps.max_sge_rd : 1);
  return static_cast<uint32_t>(std::clamp<int>(n, 1, kMaxSge));
}

uint32_t msg_limit(uint32_t local_max_msg_sz, uint32_t remote_max_msg_sz) {
  uint32_t n = 1u << 31;  // the verbs message size limit
  for (uint32_t m : {local_max_msg_sz, remote_max_msg_sz})
    if (m) n = std::min(n, m);
  return n;
}

int sink_access(bool iwarp) {
  // Values of IBV_ACCESS_LOCAL_WRITE and IBV_ACCESS_REMOTE_WRITE (verbs.h, fixed by the ABI),
  // so this file builds without libibverbs.
  constexpr int kLocalWrite = 1, kRemoteWrite = 2;
  return iwarp ? kLocalWrite | kRemoteWrite : kLocalWrite;
}

namespace {
uint8_t depth(int v) {
  return static_cast<uint8_t>(std::clamp(v, 0, 255));
}
}  // namespace

Depths client_depths(const DeviceCaps& local) {
  return {depth(local.max_qp_init_rd_atom), 0};
}

Depths server_depths(Depths requested, const DeviceCaps& local) {
  // requested.responder_resources is the client's initiator_depth: the READs it will have in
  // flight towards this server, which this side must be able to answer.
  return {std::min(requested.initiator_depth, depth(local.max_qp_init_rd_atom)),
          std::min(requested.responder_resources, depth(local.max_qp_rd_atom))};
}

bool loopback_address(const std::string& host) {
  addrinfo hints{}, *res = nullptr;
  hints.ai_family = AF_UNSPEC;
  if (getaddrinfo(host.c_str(), nullptr, &hints, &res) != 0 || !res) return false;
  bool loop = false;
  for (addrinfo* a = res; a && !loop; a = a->ai_next) {
    if (a->ai_family == AF_INET)
      loop = (ntohl(reinterpret_cast<sockaddr_in*>(a->ai_addr)->sin_addr.s_addr) >> 24) == 127;
    else if (a->ai_family == AF_INET6)
      loop = IN6_IS_ADDR_LOOPBACK(&reinterpret_cast<sockaddr_in6*>(a->ai_addr)->sin6_addr);
  }
  freeaddrinfo(res);
  return loop;
}

std::string memlock_warning(uint64_t limit, uint64_t need) {
  if (limit >= need) return {};
  return "RLIMIT_MEMLOCK is " + std::to_string(limit >> 10) + " KiB but RDMA pins " +
         std::to_string(need >> 10) +
         " KiB; registration will fail unless the process has CAP_IPC_LOCK: raise it (ulimit -l "
         "unlimited, LimitMEMLOCK=infinity for systemd, --ulimit memlock=-1 for docker)";
}

// ---- Tickets ----

TicketBook::TicketBook(Clock::duration ttl, uint32_t uses)
    : ttl_(ttl), uses_(std::max<uint32_t>(uses, 1)), rng_(std::random_device{}()) {}

void TicketBook::expire(Clock::time_point now) {
  std::erase_if(live_, [&](const auto& t) { return t.second.expiry <= now; });
}

uint64_t TicketBook::issue(Owner owner, Clock::time_point now) {
  std::lock_guard lock(mu_);
  expire(now);
  uint64_t t = 0;
  while (t == 0 || live_.count(t)) t = rng_();
  live_[t] = {owner, now + ttl_, uses_};
  return t;
}

bool TicketBook::redeem(uint64_t ticket, Clock::time_point now, Owner* owner) {
  std::lock_guard lock(mu_);
  expire(now);
  auto it = live_.find(ticket);
  if (it == live_.end()) return false;
  *owner = it->second.owner;
  if (--it->second.uses_left == 0) live_.erase(it);
  return true;
}

void TicketBook::end_session(uint64_t session) {
  std::lock_guard lock(mu_);
  std::erase_if(live_, [&](const auto& t) { return t.second.owner.session == session; });
}

size_t TicketBook::size() const {
  std::lock_guard lock(mu_);
  return live_.size();
}

// ---- The channel lock ----

Status run_locked(kvtier::DeadlineLock& mu, std::unique_ptr<Channel>& channel, bool write,
                  std::span<const Transfer> transfers, net::Deadline deadline, bool* lost) {
  *lost = false;
  std::unique_lock lock(mu, std::defer_lock);
  if (!lock.try_lock_until(deadline))
    return {KVTIER_ERR_TIMEOUT, "RDMA: the channel was busy until the deadline"};
  if (!channel) return {KVTIER_ERR_UNAVAILABLE, "RDMA: no channel"};
  if (net::Clock::now() >= deadline)
    return {KVTIER_ERR_TIMEOUT, "RDMA: the deadline passed before the batch was posted"};
  Status st = channel->run(write, transfers, deadline);
  if (channel->dead()) {
    channel.reset();
    *lost = true;
  }
  return st;
}

// ---- Planning ----

namespace {
// Appends one request's worth of a transfer; splits fragments across requests as needed.
class Planner {
 public:
  Planner(PlanLimits limits, Plan* plan) : lim_(limits), plan_(plan) {}
  void begin(uint64_t remote) { wr_ = {static_cast<uint32_t>(plan_->sges.size()), 0, remote, 0}; }
  void add(const std::byte* p, size_t n, uint32_t lkey) {
    while (n) {
      if (wr_.num_sge == lim_.max_sge || wr_.len == lim_.max_msg) next();
      const size_t k = std::min<uint64_t>(n, lim_.max_msg - wr_.len);
      plan_->sges.push_back({reinterpret_cast<uint64_t>(p), static_cast<uint32_t>(k), lkey});
      ++wr_.num_sge;
      wr_.len += k;
      p += k;
      n -= k;
    }
  }
  void end() {
    if (wr_.num_sge) plan_->wrs.push_back(wr_);
  }

 private:
  void next() {
    plan_->wrs.push_back(wr_);
    begin(wr_.remote + wr_.len);
  }
  const PlanLimits lim_;
  Plan* plan_;
  Wr wr_{};
};
}  // namespace

Status make_plan(std::span<const Transfer> transfers, PlanLimits limits, uint32_t qps,
                 uint32_t signal_every, const LkeyOf& lkey_of, Plan* plan) {
  plan->sges.clear();
  plan->wrs.clear();
  plan->chains.clear();
  if (limits.max_sge == 0 || limits.max_msg == 0 || qps == 0 || signal_every == 0)
    return {KVTIER_ERR_INVALID_ARG, "RDMA plan: zero limit"};
  Planner planner(limits, plan);
  for (size_t t = 0; t < transfers.size(); ++t) {
    const Transfer& tr = transfers[t];
    size_t left = tr.len;
    planner.begin(tr.remote);
    for (const Frag& f : tr.local) {
      if (!left) break;
      const size_t n = std::min(left, f.len);
      uint32_t lkey = 0;
      if (!lkey_of(f.ptr, n, &lkey))
        return {KVTIER_ERR_NOT_REGISTERED, "RDMA: transfer " + std::to_string(t) +
                                               " has a fragment outside registered memory"};
      planner.add(f.ptr, n, lkey);
      left -= n;
    }
    if (left) return {KVTIER_ERR_INVALID_ARG, "RDMA: fragments shorter than the transfer"};
    planner.end();
  }
  // Each QP takes a contiguous share of the requests, posted in chains of signal_every.
  const size_t n = plan->wrs.size();
  for (uint32_t q = 0; q < qps; ++q) {
    const size_t begin = n * q / qps, end = n * (q + 1) / qps;
    for (size_t i = begin; i < end; i += signal_every)
      plan->chains.push_back({q, static_cast<uint32_t>(i),
                              static_cast<uint32_t>(std::min<size_t>(signal_every, end - i))});
  }
  return {};
}

}  // namespace kvtier::rdma
