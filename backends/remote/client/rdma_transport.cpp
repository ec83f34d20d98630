// The RDMA transport: the control frames on a pooled connection, the bytes one-sided over the
// server's channel (rdma.h), which is made on first use and backed off while it keeps failing.
#include <algorithm>

#include "src/log.h"
#include "backends/remote/client/transport.h"

namespace kvtier::remote {

namespace {

class RdmaTransportImpl final : public RdmaTransport {
 public:
  RdmaTransportImpl(const Pool& pool, std::atomic<uint64_t>& errors, bool required, int tos)
      : pool_(pool), errors_(errors), required_(required), tos_(tos) {}

  void register_memory(const void* addr, size_t len) override { registry_->add(addr, len); }
  void unregister_memory(const void* addr) override { registry_->remove(addr); }

  bool ready(ServerRef& s, Status* err) override {
    const int64_t now = Clock::now().time_since_epoch().count();
    {
      // Held for a whole batch by the thread using the channel: wait no longer than a call may.
      std::unique_lock lock(s.rdma.mu, std::defer_lock);
      if (!lock.try_lock_until(pool_.deadline())) return true;  // in use, so up: run times out
      if (s.rdma.channel) return true;
      if (s.rdma.tcp_only) return false;
      if (now < s.rdma.retry_at) {
        if (required_) *err = {KVTIER_ERR_UNAVAILABLE, "RDMA to " + s.name + " is down"};
        return false;
      }
    }
    // Not under rdma.mu: the exchange takes a connection's lock, and put takes the two in the
    // other order.
    std::unique_ptr<rdma::Channel> ch;
    Status st = open_channel(s, &ch);
    std::lock_guard lock(s.rdma.mu);
    if (s.rdma.channel) return true;  // another thread got there first
    if (st.is_ok()) {
      s.rdma.channel = std::move(ch);
      s.rdma.backoff_s = 0;
      log().info("remote tier: {}: RDMA data plane up ({} QPs)", s.name, rdma::kQps);
      return true;
    }
    if (!required_ && st.code() == KVTIER_ERR_UNSUPPORTED) {
      s.rdma.tcp_only = true;
    } else {
      // Each try can cost a connect timeout in the caller's thread: try less and less often.
      s.rdma.backoff_s = std::clamp<int64_t>(s.rdma.backoff_s * 2, 5, 300);
      s.rdma.retry_at =
          now + std::chrono::nanoseconds(std::chrono::seconds(s.rdma.backoff_s)).count();
    }
    log().warn("remote tier: {}: {}{}", s.name, st.message(),
               required_ ? "" : "; its bytes go over TCP");
    if (required_) *err = st;
    return false;
  }

  // ALLOC, one-sided writes, COMMIT: all on one control connection (the server ties the
  // reserved slots to it, and gives them back if it drops).
  void put(ServerRef& s, std::span<PutOp> ops, std::span<const size_t> idx,
           PutOutcome& out) override {
    Status st = pool_.with_conn(s, [&](int fd, Deadline dl) {
      Leases l(idx.size());
      Status a = alloc(fd, dl, ops, idx, l);
      if (!a.is_ok()) return a;
      std::vector<rdma::Transfer> transfers;
      for (size_t k = 0; k < idx.size(); ++k) {
        if (l.codes[k] == KVTIER_OK)
          transfers.push_back({ops[idx[k]].frags, l.offsets[k], ops[idx[k]].size});
        else if (l.codes[k] == wire::kPresent)
          out.stored[idx[k]] = 1;
        else
          out.best[idx[k]] = l.codes[k] < 0 ? l.codes[k] : KVTIER_ERR_INTERNAL;
      }
      if (transfers.empty()) return Status{};
      const Status moved = run(s, true, transfers, dl);
      return commit(fd, dl, idx, l, transfers.size(), moved, out);
    });
    if (!st.is_ok())
      for (size_t i : idx)
        if (!out.stored[i]) out.best[i] = st.code();
  }

  // LOOKUP (pins the pages), one-sided reads into the fragments, RELEASE.
  void get(ServerRef& s, std::span<GetOp> ops, std::span<const size_t> idx,
           std::vector<uint8_t>& done) override {
    Status st = pool_.with_conn(s, [&](int fd, Deadline dl) {
      Found f;
      Status a = lookup(fd, dl, ops, idx, done, f);
      if (!a.is_ok()) return a;
      Status moved = run(s, false, f.transfers, dl);
      for (size_t k : f.moving) {
        if (moved.is_ok()) {
          verify(ops[idx[k]]);
        } else {
          ops[idx[k]].result = moved.code();  // the next replica may still answer
          done[idx[k]] = 0;
        }
      }
      if (!f.n_leases) return Status{};
      wire::Writer rel;
      rel.u32(f.n_leases);
      rel.bytes(f.leases.data().data(), f.leases.data().size());
      // A failure here ends the connection, and the leases with it.
      return roundtrip(fd, wire::kRelease, rel.data(), dl,
                       [](int, wire::Reader&) { return Status{}; });
    });
    if (!st.is_ok()) {
      for (size_t i : idx) {
        if (done[i] && ops[i].result >= 0) continue;  // read before the control plane failed
        ops[i].result = st.code();
        done[i] = 0;
      }
      errors_.fetch_add(idx.size(), std::memory_order_relaxed);
    }
  }

 private:
  struct Leases {  // ALLOC's reply, per key of the batch
    explicit Leases(size_t n) : codes(n), offsets(n), leases(n) {}
    std::vector<int32_t> codes;
    std::vector<uint64_t> offsets, leases;
  };

  // RDMA_INFO for a ticket and port, then the channel.
  Status open_channel(ServerRef& s, std::unique_ptr<rdma::Channel>* ch) {
    int32_t code = KVTIER_ERR_UNAVAILABLE;
    uint32_t port = 0;
    uint64_t ticket = 0;
    Status st = pool_.exchange(s, wire::kRdmaInfo, {}, [&](int, wire::Reader& rd) {
      code = rd.i32();
      port = rd.u32();
      ticket = rd.u64();
      return Status{};
    });
    if (!st.is_ok()) return st;
    if (code == KVTIER_ERR_UNSUPPORTED)
      return {KVTIER_ERR_UNSUPPORTED, "server " + s.name + " has no RDMA data plane"};
    if (code != KVTIER_OK || port == 0 || port > 65535)
      return {KVTIER_ERR_INVALID_ARG, "bad RDMA_INFO reply from " + s.name};
    return rdma::Channel::connect(s.host, static_cast<uint16_t>(port), ticket, tos_, registry_,
                                  pool_.deadline(), ch);
  }

  // The channel's run, or UNAVAILABLE; a channel that failed is dropped (the next call makes a
  // new one).
  Status run(ServerRef& s, bool write, std::span<const rdma::Transfer> t, Deadline dl) {
    bool lost = false;
    Status st = rdma::run_locked(s.rdma.mu, s.rdma.channel, write, t, dl, &lost);
    if (lost) log().warn("remote tier: {}: RDMA channel lost: {}", s.name, st.message());
    return st;
  }

  static Status alloc(int fd, Deadline dl, std::span<PutOp> ops, std::span<const size_t> idx,
                      Leases& l) {
    wire::Writer w;
    w.u32(static_cast<uint32_t>(idx.size()));
    for (size_t i : idx) {
      ensure_checksum(ops[i]);
      w.id(ops[i].id);
      w.u64(ops[i].size);
      w.u64(ops[i].checksum);
    }
    return roundtrip(fd, wire::kAlloc, w.data(), dl, [&](int, wire::Reader& rd) {
      if (rd.count(20) != idx.size()) return Status{KVTIER_ERR_INVALID_ARG, "bad ALLOC reply"};
      for (size_t k = 0; k < idx.size(); ++k) {
        l.codes[k] = rd.i32();
        l.offsets[k] = rd.u64();
        l.leases[k] = rd.u64();
      }
      return Status{};
    });
  }

  // COMMIT of the `n` slots ALLOC gave: kept when the bytes moved, else given back.
  static Status commit(int fd, Deadline dl, std::span<const size_t> idx, const Leases& l, size_t n,
                       const Status& moved, PutOutcome& out) {
    wire::Writer c;
    c.u32(static_cast<uint32_t>(n));
    for (size_t k = 0; k < idx.size(); ++k) {
      if (l.codes[k] != KVTIER_OK) continue;
      c.u64(l.leases[k]);
      c.u8(moved.is_ok() ? 1 : 0);
    }
    return roundtrip(fd, wire::kCommit, c.data(), dl, [&](int, wire::Reader& rd) {
      if (rd.count(4) != n) return Status{KVTIER_ERR_INVALID_ARG, "bad COMMIT reply"};
      for (size_t k = 0; k < idx.size(); ++k) {
        if (l.codes[k] != KVTIER_OK) continue;
        const int32_t code = rd.i32();
        if (!moved.is_ok())
          out.best[idx[k]] = moved.code();
        else if (code == KVTIER_OK)
          out.stored[idx[k]] = 1;
        else
          out.best[idx[k]] = code;
      }
      return Status{};
    });
  }

  struct Found {                            // LOOKUP's reply
    std::vector<rdma::Transfer> transfers;  // the found keys that fit
    std::vector<size_t> moving;             // their positions in idx
    wire::Writer leases;                    // every found key's lease, for RELEASE
    uint32_t n_leases = 0;
  };

  static Status lookup(int fd, Deadline dl, std::span<GetOp> ops, std::span<const size_t> idx,
                       std::vector<uint8_t>& done, Found& f) {
    wire::Writer w;
    w.u32(static_cast<uint32_t>(idx.size()));
    for (size_t i : idx) w.id(ops[i].id);
    return roundtrip(fd, wire::kLookup, w.data(), dl, [&](int, wire::Reader& rd) {
      if (rd.count(36) != idx.size()) return Status{KVTIER_ERR_INVALID_ARG, "bad LOOKUP reply"};
      for (size_t k = 0; k < idx.size(); ++k) {
        const int32_t code = rd.i32();
        const uint64_t offset = rd.u64(), len = rd.u64(), sum = rd.u64(), lease = rd.u64();
        if (code != KVTIER_OK) continue;
        f.leases.u64(lease);
        ++f.n_leases;
        GetOp& op = ops[idx[k]];
        if (len == 0 || len > wire::kMaxValue)
          return Status{KVTIER_ERR_INVALID_ARG, "bad LOOKUP length"};
        done[idx[k]] = 1;
        if (!take_hit(op, len, sum)) continue;
        f.transfers.push_back({op.frags, offset, len});
        f.moving.push_back(k);
      }
      return Status{};
    });
  }

  const Pool& pool_;
  std::atomic<uint64_t>& errors_;
  const bool required_;
  const int tos_;
  std::shared_ptr<rdma::Registry> registry_ = rdma::Registry::create();
};

}  // namespace

std::unique_ptr<RdmaTransport> make_rdma_transport(const Pool& pool, std::atomic<uint64_t>& errors,
                                                   bool required, int tos) {
  return std::make_unique<RdmaTransportImpl>(pool, errors, required, tos);
}

}  // namespace kvtier::remote
