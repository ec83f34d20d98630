// The remote tier: pages on kvtier-servers, spread by rendezvous hashing, optionally replicated.
// The control plane is TCP frames (protocol.h). The data plane is RDMA when both ends have a
// device (rdma.h: ALLOC, one-sided WRITEs, COMMIT; LOOKUP, one-sided READs, RELEASE), else the
// values travel in the frames with writev/readv straight from and into the caller's fragments.
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <memory>
#include <mutex>

#include "cluster.h"
#include "log.h"
#include "net.h"
#include "protocol.h"
#include "rdma.h"
#include "tier.h"

namespace kvtier {

namespace {

using net::Clock;
using net::Deadline;

uint64_t mix(uint64_t x) {  // splitmix64
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

struct Conn {
  bool busy = false;  // a call holds it; guarded by ServerRef::pool_mu
  int fd = -1;        // used only by the call that holds it
  uint64_t boot = 0;  // the server start it was made to
  void drop() {
    if (fd >= 0) ::close(fd);
    fd = -1;
  }
};

struct ServerRef {
  std::string name, host;
  uint16_t port = 0;
  uint64_t seed = 0;  // for rendezvous hashing
  std::vector<std::unique_ptr<Conn>> conns;
  // A call waits for a free connection with its deadline: a hung server holds them all.
  // (A condition variable, not timed mutexes: ThreadSanitizer cannot see clock-locked mutexes.)
  std::mutex pool_mu;
  std::condition_variable pool_cv;
  std::atomic<size_t> next{0};
  std::atomic<int64_t> down_until{0};  // steady-clock ns: fail fast while a server is down
  // RDMA data plane, when the transport allows it.
  kvtier::DeadlineLock rdma_mu;  // timed: a batch waits for the channel only until its deadline
  std::unique_ptr<rdma::Channel> channel;  // guarded by rdma_mu
  bool tcp_only = false;                   // auto: the server has no RDMA
  int64_t rdma_retry_at = 0;               // steady-clock ns: no new channel before
  int64_t rdma_backoff_s = 0;              // grows 5 s, 10 s, ... 5 min while RDMA keeps failing
  std::atomic<uint64_t> boot_id{0};        // the server start the channel was made with
  ~ServerRef() {
    for (auto& c : conns) c->drop();
  }
};

// The live set of servers. A call takes a snapshot and keeps it to its end, so a server that
// leaves meanwhile (and its connections) lives until the calls using it are done.
using Servers = std::vector<std::shared_ptr<ServerRef>>;

// Reply frames this thread has begun to read: a call that saw none failed before any reply,
// so it can run again on another connection without anything having happened twice.
thread_local uint64_t t_replies = 0;

// Appends iovecs for the first `len` bytes of the fragments.
void add_iov(Frags frags, size_t len, std::vector<iovec>* iov) {
  for (const Frag& f : frags) {
    if (!len) break;
    const size_t n = std::min(len, f.len);
    iov->push_back({f.ptr, n});
    len -= n;
  }
}

class RemoteTier final : public Tier {
 public:
  RemoteTier(const Config& c, bool rdma, bool rdma_required)
      : rdma_(rdma),
        rdma_required_(rdma_required),
        timeout_ms_(c.remote_timeout_ms),
        rdma_tos_(c.remote_rdma_tos),
        replicas_(c.remote_replicas),
        from_etcd_(!c.remote_etcd.empty()),
        token_(c.remote_token),
        ns_(namespace_seed(c.ns)) {}
  ~RemoteTier() override { membership_.reset(); }  // its thread calls set_servers

  Status init(const Config& c) {
    if (c.remote_etcd.empty()) return set_servers(c.remote_servers, "KVTIER_REMOTE_SERVERS");
    membership_ = std::make_unique<Membership>(
        c.remote_etcd, c.remote_cluster, kMembershipRetryMs,
        [this](const std::vector<std::string>& addrs) { set_servers(addrs, "etcd"); });
    membership_->start();
    return {};
  }

  std::string_view name() const override { return "remote"; }
  Caps caps() const override { return {.can_tear = true}; }

  void register_memory(const void* addr, size_t len) override {
    if (rdma_) registry_->add(addr, len);
  }
  void unregister_memory(const void* addr) override {
    if (rdma_) registry_->remove(addr);
  }

  void put(std::span<PutOp> ops) override {
    std::vector<int> best(ops.size(), KVTIER_ERR_UNAVAILABLE);
    std::vector<uint8_t> stored(ops.size(), 0);
    // A value no server takes is refused here, before it is sent: a server drops a
    // connection that carries one.
    std::vector<uint8_t> fits(ops.size(), 1);
    for (size_t i = 0; i < ops.size(); ++i) {
      if (ops[i].size <= wire::kMaxValue) continue;
      fits[i] = 0;
      best[i] = KVTIER_ERR_NO_SPACE;
      log().warn("remote tier: a value of {} bytes is larger than a server takes ({} bytes)",
                 ops[i].size, wire::kMaxValue);
    }
    const auto servers = live();
    for (unsigned r = 0; r < replicas(*servers); ++r) {
      for (auto& grp : group(
               *servers, ops.size(), [&](size_t i) { return ops[i].id; }, r)) {
        ServerRef* srv = grp.first;  // not a binding: lambdas below capture it
        std::vector<size_t> idx;
        for (size_t i : grp.second)
          if (fits[i]) idx.push_back(i);
        // A restart of the server seen during the call (a new boot id) left its channel and
        // connections stale: the keys that failed get one more try on fresh ones.
        for (int attempt = 0; attempt < 2 && !idx.empty(); ++attempt) {
          const uint64_t boot = srv->boot_id.load();
          Status path;
          if (use_rdma(*srv, &path)) {
            put_rdma(*srv, ops, idx, best, stored);
          } else if (path.is_ok()) {
            put_tcp(*srv, ops, idx, best, stored);
          } else {
            for (size_t i : idx) best[i] = path.code();
          }
          if (boot == 0 || srv->boot_id.load() == boot) break;
          std::erase_if(idx, [&](size_t i) { return stored[i] != 0; });
        }
      }
    }
    for (size_t i = 0; i < ops.size(); ++i) {
      ops[i].result = stored[i] ? KVTIER_OK : best[i];
      if (!stored[i]) errors_.fetch_add(1, std::memory_order_relaxed);
    }
  }

  void get(std::span<GetOp> ops) override {
    for (GetOp& op : ops) op.result = KVTIER_ERR_NOT_FOUND;
    std::vector<uint8_t> done(ops.size(), 0);
    const auto servers = live();
    for (unsigned r = 0; r < read_choices(*servers); ++r) {
      for (auto& grp : group(
               *servers, ops.size(), [&](size_t i) { return ops[i].id; }, r)) {
        ServerRef* srv = grp.first;  // not a binding: lambdas below capture it
        auto& all = grp.second;
        std::vector<size_t> idx;
        for (size_t i : all)
          if (!done[i]) idx.push_back(i);
        for (int attempt = 0; attempt < 2 && !idx.empty(); ++attempt) {  // as in put
          const uint64_t boot = srv->boot_id.load();
          Status path;
          if (use_rdma(*srv, &path)) {
            get_rdma(*srv, ops, idx, done);
          } else if (path.is_ok()) {
            get_tcp(*srv, ops, idx, done);
          } else {
            for (size_t i : idx) ops[i].result = path.code();
          }
          if (boot == 0 || srv->boot_id.load() == boot) break;
          std::erase_if(idx, [&](size_t i) { return done[i] != 0; });
        }
      }
    }
  }

  void exists(std::span<const KeyId> ids, std::span<uint8_t> present) override {
    std::fill(present.begin(), present.end(), 0);
    const auto servers = live();
    for (unsigned r = 0; r < read_choices(*servers); ++r) {
      for (auto& grp : group(
               *servers, ids.size(), [&](size_t i) { return ids[i]; }, r)) {
        ServerRef* srv = grp.first;  // not a binding: lambdas below capture it
        auto& all = grp.second;
        std::vector<size_t> idx;
        for (size_t i : all)
          if (!present[i]) idx.push_back(i);
        if (idx.empty()) continue;
        wire::Writer w;
        // One allocation up front (which also spares GCC 12 a false -Wnonnull in Release).
        w.data().reserve(4 + 16 * idx.size());
        w.u32(static_cast<uint32_t>(idx.size()));
        for (size_t i : idx) w.id(ids[i]);
        exchange(*srv, wire::kExists, w.data(), {}, [&](int, wire::Reader& rd) {
          if (rd.count(1) != idx.size()) return Status{KVTIER_ERR_INVALID_ARG, "bad reply"};
          for (size_t i : idx) present[i] = rd.u8() ? 1 : 0;
          return Status{};
        });
      }
    }
  }

  void remove(std::span<const KeyId> ids, std::span<int> results) override {
    std::fill(results.begin(), results.end(), KVTIER_ERR_NOT_FOUND);
    const auto servers = live();
    for (unsigned r = 0; r < read_choices(*servers); ++r) {  // wherever a read would find it
      for (auto& grp : group(
               *servers, ids.size(), [&](size_t i) { return ids[i]; }, r)) {
        ServerRef* srv = grp.first;  // not a binding: lambdas below capture it
        auto& idx = grp.second;
        wire::Writer w;
        // One allocation up front (which also spares GCC 12 a false -Wnonnull in Release).
        w.data().reserve(4 + 16 * idx.size());
        w.u32(static_cast<uint32_t>(idx.size()));
        for (size_t i : idx) w.id(ids[i]);
        exchange(*srv, wire::kRemove, w.data(), {}, [&](int, wire::Reader& rd) {
          if (rd.count(4) != idx.size()) return Status{KVTIER_ERR_INVALID_ARG, "bad reply"};
          for (size_t i : idx)
            if (rd.i32() == KVTIER_OK) results[i] = KVTIER_OK;
          return Status{};
        });
      }
    }
  }

  void clear() override {
    for (auto& s : *live())
      exchange(*s, wire::kClear, {}, {}, [](int, wire::Reader&) { return Status{}; });
  }

  TierStats stats() const override {
    TierStats t;
    const auto servers = live();
    t.servers = static_cast<int64_t>(servers->size());
    for (auto& s : *servers) {
      const_cast<RemoteTier*>(this)->exchange(*s, wire::kStats, {}, {}, [&](int, wire::Reader& rd) {
        t.keys += rd.u64();
        t.bytes += rd.u64();
        t.capacity += rd.u64();
        t.evictions += rd.u64();
        t.errors += rd.u64();
        rd.u64();                             // leases that expired
        if (rd.left() < 32) return Status{};  // a server from before these
        t.server_hits += rd.u64();
        t.server_misses += rd.u64();
        t.leases += rd.u64();
        t.connections += rd.u64();
        return Status{};
      });
    }
    t.errors += errors_.load();
    return t;
  }

 private:
  // Keys go in frames of about kChunk bytes, pipelined: a key's checksum is computed (put) or
  // verified (get) just before or after its bytes cross the socket, while they are in cache,
  // instead of in a separate pass over the whole batch.
  static constexpr size_t kChunk = 256u << 10;
  static constexpr size_t kChunkKeys = 1024;  // so a request frame stays small (16 KiB of ids)
  // How often the live set is read again while etcd does not answer (it is watched otherwise).
  static constexpr unsigned kMembershipRetryMs = 250;

  // [begin, end) ranges of idx, each up to kChunk bytes and kChunkKeys keys (at least one key).
  template <class SizeOf>
  static std::vector<std::pair<size_t, size_t>> chunks(size_t n, SizeOf size_of) {
    std::vector<std::pair<size_t, size_t>> out;
    for (size_t b = 0; b < n;) {
      size_t e = b, bytes = 0;
      while (e < n && (e == b || (bytes + size_of(e) <= kChunk && e - b < kChunkKeys)))
        bytes += size_of(e++);
      out.push_back({b, e});
      b = e;
    }
    return out;
  }

  // PUT frames with the bytes in them, one chunk in flight while the previous one's reply
  // comes back.
  void put_tcp(ServerRef& s, std::span<PutOp> ops, const std::vector<size_t>& idx,
               std::vector<int>& best, std::vector<uint8_t>& stored) {
    const auto parts = chunks(idx.size(), [&](size_t k) { return ops[idx[k]].size; });
    Status st = with_conn(s, [&](int fd, Deadline dl) {
      auto read_reply = [&](size_t c) {
        const size_t b = parts[c].first, e = parts[c].second;
        return read_reply_frame(fd, wire::kPut, dl, [&](int, wire::Reader& rd) {
          if (rd.count(4) != e - b) return Status{KVTIER_ERR_INVALID_ARG, "bad PUT reply"};
          for (size_t k = b; k < e; ++k) {
            const int code = rd.i32();
            if (code == KVTIER_OK)
              stored[idx[k]] = 1;
            else
              best[idx[k]] = code;
          }
          return rd.done() ? Status{} : Status{KVTIER_ERR_INVALID_ARG, "bad PUT reply"};
        });
      };
      wire::Writer w;
      std::vector<iovec> bulk;
      for (size_t c = 0; c < parts.size(); ++c) {
        const size_t b = parts[c].first, e = parts[c].second;
        w.data().clear();
        bulk.clear();
        w.u32(static_cast<uint32_t>(e - b));
        for (size_t k = b; k < e; ++k) {
          PutOp& op = ops[idx[k]];
          ensure_checksum(op);
          w.id(op.id);
          w.u64(op.size);
          w.u64(op.checksum);
          add_iov(op.frags, op.size, &bulk);
        }
        Status x = send_frame(fd, wire::kPut, w.data(), bulk, dl);
        if (x.is_ok() && c > 0) x = read_reply(c - 1);
        if (!x.is_ok()) return x;
      }
      return read_reply(parts.size() - 1);
    });
    if (!st.is_ok())
      for (size_t k = 0; k < idx.size(); ++k)
        if (!stored[idx[k]]) best[idx[k]] = st.code();
  }

  // GET frames, the next one always on its way while a reply is read (so the server never
  // waits for a request, and never has more than one unread); each value is verified right
  // after its bytes arrive.
  void get_tcp(ServerRef& s, std::span<GetOp> ops, const std::vector<size_t>& idx,
               std::vector<uint8_t>& done) {
    const auto parts = chunks(idx.size(), [&](size_t k) { return ops[idx[k]].capacity; });
    std::vector<uint8_t> scratch;
    Status st = with_conn(s, [&](int fd, Deadline dl) {
      auto request = [&](size_t c) {
        wire::Writer w;
        w.data().reserve(4 + 16 * (parts[c].second - parts[c].first));
        w.u32(static_cast<uint32_t>(parts[c].second - parts[c].first));
        for (size_t k = parts[c].first; k < parts[c].second; ++k) w.id(ops[idx[k]].id);
        return send_frame(fd, wire::kGet, w.data(), {}, dl);
      };
      Status x = request(0);
      for (size_t c = 0; c < parts.size() && x.is_ok(); ++c) {
        if (c + 1 < parts.size()) x = request(c + 1);
        if (!x.is_ok()) break;
        const size_t b = parts[c].first, e = parts[c].second;
        x = read_reply_frame(fd, wire::kGet, dl, [&](int, wire::Reader& rd) {
          return read_values(fd, rd, ops, std::span(idx).subspan(b, e - b), done, scratch, dl);
        });
      }
      return x;
    });
    if (!st.is_ok()) {
      for (size_t i : idx) {
        ops[i].result = st.code();  // the next replica may still answer
        done[i] = 0;
      }
      errors_.fetch_add(idx.size(), std::memory_order_relaxed);
    }
  }

  // A stored value of `len` bytes found for op: whether it fits its fragments (the result is
  // then its length, else the size error).
  static bool take_hit(GetOp& op, uint64_t len, uint64_t sum) {
    if (const int fit = fits(op, len); fit != KVTIER_OK) {
      op.result = fit;
      return false;
    }
    op.result = static_cast<int64_t>(len);
    op.checksum = sum;
    return true;
  }

  // A GET reply: the metadata in `rd`, then the found values' bytes on the socket, read
  // straight into each key's fragments when they fit (into `scratch` when not).
  Status read_values(int fd, wire::Reader& rd, std::span<GetOp> ops, std::span<const size_t> idx,
                     std::vector<uint8_t>& done, std::vector<uint8_t>& scratch, Deadline dl) {
    if (rd.count(20) != idx.size()) return {KVTIER_ERR_INVALID_ARG, "bad GET reply"};
    struct Meta {
      int code;
      uint64_t len, sum;
    };
    std::vector<Meta> meta;
    uint64_t drain = 0;
    for (size_t k = 0; k < idx.size(); ++k) {
      Meta m{rd.i32(), rd.u64(), rd.u64()};
      if (m.code == KVTIER_OK && (m.len == 0 || m.len > wire::kMaxValue))
        return {KVTIER_ERR_INVALID_ARG, "bad GET length"};
      if (m.code == KVTIER_OK) drain = std::max(drain, m.len);
      meta.push_back(m);
    }
    if (!rd.done()) return {KVTIER_ERR_INVALID_ARG, "bad GET reply"};
    std::vector<iovec> iov;
    for (size_t k = 0; k < idx.size(); ++k) {
      if (meta[k].code != KVTIER_OK) continue;
      GetOp& op = ops[idx[k]];
      done[idx[k]] = 1;
      if (take_hit(op, meta[k].len, meta[k].sum)) {
        add_iov(op.frags, meta[k].len, &iov);
      } else {
        if (scratch.size() < drain) scratch.resize(drain);  // sized once: iovecs point into it
        iov.push_back({scratch.data(), meta[k].len});
      }
    }
    Status x = net::readv_all(fd, iov.data(), iov.size(), dl);
    if (!x.is_ok()) return x;
    for (size_t k = 0; k < idx.size(); ++k)
      if (meta[k].code == KVTIER_OK) verify(ops[idx[k]]);
    return {};
  }

  // Whether to move `s`'s bytes over RDMA, making the channel on first use. False with *err OK:
  // use TCP. False with an error: RDMA is required (KVTIER_REMOTE_TRANSPORT=rdma) and failed.
  bool use_rdma(ServerRef& s, Status* err) {
    if (!rdma_) return false;
    const int64_t now = Clock::now().time_since_epoch().count();
    {
      // Held for a whole batch by the thread using the channel: wait no longer than a call may.
      std::unique_lock lock(s.rdma_mu, std::defer_lock);
      if (!lock.try_lock_until(deadline())) return true;  // in use, so up: rdma_run times out
      if (s.channel) return true;
      if (s.tcp_only) return false;
      if (now < s.rdma_retry_at) {
        if (rdma_required_) *err = {KVTIER_ERR_UNAVAILABLE, "RDMA to " + s.name + " is down"};
        return false;
      }
    }
    // Not under rdma_mu: the exchange takes a connection's lock, and put_rdma takes the two
    // in the other order.
    int32_t code = KVTIER_ERR_UNAVAILABLE;
    uint32_t port = 0;
    uint64_t ticket = 0;
    Status st = exchange(s, wire::kRdmaInfo, {}, {}, [&](int, wire::Reader& rd) {
      code = rd.i32();
      port = rd.u32();
      ticket = rd.u64();
      return Status{};
    });
    std::unique_ptr<rdma::Channel> ch;
    if (st.is_ok() && code == KVTIER_ERR_UNSUPPORTED) {
      st = {KVTIER_ERR_UNSUPPORTED, "server " + s.name + " has no RDMA data plane"};
    } else if (st.is_ok() && (code != KVTIER_OK || port == 0 || port > 65535)) {
      st = {KVTIER_ERR_INVALID_ARG, "bad RDMA_INFO reply from " + s.name};
    } else if (st.is_ok()) {
      st = rdma::Channel::connect(s.host, static_cast<uint16_t>(port), ticket, rdma_tos_, registry_,
                                  deadline(), &ch);
    }
    std::lock_guard lock(s.rdma_mu);
    if (s.channel) return true;  // another thread got there first
    if (st.is_ok()) {
      s.channel = std::move(ch);
      s.rdma_backoff_s = 0;
      log().info("remote tier: {}: RDMA data plane up ({} QPs)", s.name, rdma::kQps);
      return true;
    }
    if (!rdma_required_ && st.code() == KVTIER_ERR_UNSUPPORTED) {
      s.tcp_only = true;
    } else {
      // Each try can cost a connect timeout in the caller's thread: try less and less often.
      s.rdma_backoff_s = std::clamp<int64_t>(s.rdma_backoff_s * 2, 5, 300);
      s.rdma_retry_at =
          now + std::chrono::nanoseconds(std::chrono::seconds(s.rdma_backoff_s)).count();
    }
    log().warn("remote tier: {}: {}{}", s.name, st.message(),
               rdma_required_ ? "" : "; its bytes go over TCP");
    if (rdma_required_) *err = st;
    return false;
  }

  // The RDMA channel's run, or UNAVAILABLE; a channel that failed is dropped (the next call
  // makes a new one).
  Status rdma_run(ServerRef& s, bool write, std::span<const rdma::Transfer> t, Deadline dl) {
    bool lost = false;
    Status st = rdma::run_locked(s.rdma_mu, s.channel, write, t, dl, &lost);
    if (lost) log().warn("remote tier: {}: RDMA channel lost: {}", s.name, st.message());
    return st;
  }

  // ALLOC, one-sided writes, COMMIT: all on one control connection (the server ties the
  // reserved slots to it, and gives them back if it drops).
  void put_rdma(ServerRef& s, std::span<PutOp> ops, const std::vector<size_t>& idx,
                std::vector<int>& best, std::vector<uint8_t>& stored) {
    Status st = with_conn(s, [&](int fd, Deadline dl) {
      wire::Writer w;
      w.u32(static_cast<uint32_t>(idx.size()));
      for (size_t i : idx) {
        ensure_checksum(ops[i]);
        w.id(ops[i].id);
        w.u64(ops[i].size);
        w.u64(ops[i].checksum);
      }
      std::vector<int32_t> codes(idx.size());
      std::vector<uint64_t> offsets(idx.size()), leases(idx.size());
      Status a = roundtrip(fd, wire::kAlloc, w.data(), {}, dl, [&](int, wire::Reader& rd) {
        if (rd.count(20) != idx.size()) return Status{KVTIER_ERR_INVALID_ARG, "bad ALLOC reply"};
        for (size_t k = 0; k < idx.size(); ++k) {
          codes[k] = rd.i32();
          offsets[k] = rd.u64();
          leases[k] = rd.u64();
        }
        return Status{};
      });
      if (!a.is_ok()) return a;
      std::vector<rdma::Transfer> transfers;
      for (size_t k = 0; k < idx.size(); ++k) {
        if (codes[k] == KVTIER_OK)
          transfers.push_back({ops[idx[k]].frags, offsets[k], ops[idx[k]].size});
        else if (codes[k] == wire::kPresent)
          stored[idx[k]] = 1;
        else
          best[idx[k]] = codes[k] < 0 ? codes[k] : KVTIER_ERR_INTERNAL;
      }
      if (transfers.empty()) return Status{};
      const Status moved = rdma_run(s, true, transfers, dl);
      wire::Writer c;
      c.u32(static_cast<uint32_t>(transfers.size()));
      for (size_t k = 0; k < idx.size(); ++k) {
        if (codes[k] != KVTIER_OK) continue;
        c.u64(leases[k]);
        c.u8(moved.is_ok() ? 1 : 0);
      }
      Status done = roundtrip(fd, wire::kCommit, c.data(), {}, dl, [&](int, wire::Reader& rd) {
        if (rd.count(4) != transfers.size())
          return Status{KVTIER_ERR_INVALID_ARG, "bad COMMIT reply"};
        for (size_t k = 0; k < idx.size(); ++k) {
          if (codes[k] != KVTIER_OK) continue;
          const int32_t code = rd.i32();
          if (!moved.is_ok())
            best[idx[k]] = moved.code();
          else if (code == KVTIER_OK)
            stored[idx[k]] = 1;
          else
            best[idx[k]] = code;
        }
        return Status{};
      });
      return done;
    });
    if (!st.is_ok())
      for (size_t i : idx)
        if (!stored[i]) best[i] = st.code();
  }

  // LOOKUP (pins the pages), one-sided reads into the fragments, RELEASE.
  void get_rdma(ServerRef& s, std::span<GetOp> ops, const std::vector<size_t>& idx,
                std::vector<uint8_t>& done) {
    Status st = with_conn(s, [&](int fd, Deadline dl) {
      wire::Writer w;
      w.u32(static_cast<uint32_t>(idx.size()));
      for (size_t i : idx) w.id(ops[i].id);
      std::vector<rdma::Transfer> transfers;
      std::vector<size_t> moving;
      wire::Writer leases;
      uint32_t n_leases = 0;
      Status a = roundtrip(fd, wire::kLookup, w.data(), {}, dl, [&](int, wire::Reader& rd) {
        if (rd.count(36) != idx.size()) return Status{KVTIER_ERR_INVALID_ARG, "bad LOOKUP reply"};
        for (size_t k = 0; k < idx.size(); ++k) {
          const int32_t code = rd.i32();
          const uint64_t offset = rd.u64(), len = rd.u64(), sum = rd.u64(), lease = rd.u64();
          if (code != KVTIER_OK) continue;
          leases.u64(lease);
          ++n_leases;
          GetOp& op = ops[idx[k]];
          if (len == 0 || len > wire::kMaxValue)
            return Status{KVTIER_ERR_INVALID_ARG, "bad LOOKUP length"};
          done[idx[k]] = 1;
          if (!take_hit(op, len, sum)) continue;
          transfers.push_back({op.frags, offset, len});
          moving.push_back(k);
        }
        return Status{};
      });
      if (!a.is_ok()) return a;
      Status moved = rdma_run(s, false, transfers, dl);
      for (size_t k : moving) {
        if (moved.is_ok()) {
          verify(ops[idx[k]]);
        } else {
          ops[idx[k]].result = moved.code();  // the next replica may still answer
          done[idx[k]] = 0;
        }
      }
      if (n_leases) {
        wire::Writer rel;
        rel.u32(n_leases);
        rel.bytes(leases.data().data(), leases.data().size());
        Status r = roundtrip(fd, wire::kRelease, rel.data(), {}, dl,
                             [](int, wire::Reader&) { return Status{}; });
        if (!r.is_ok()) return r;  // the leases end with the connection
      }
      return Status{};
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

  Deadline deadline() const { return Clock::now() + std::chrono::milliseconds(timeout_ms_); }

  // Replaces the live set with `addrs`, keeping the servers (and their connections) that stay.
  // source names where the list came from, for messages.
  Status set_servers(const std::vector<std::string>& addrs, const char* source) {
    auto next = std::make_shared<Servers>();
    const auto prev = live();
    bool next_has_new = false;
    for (const std::string& addr : addrs) {
      auto same =
          std::find_if(prev->begin(), prev->end(), [&](auto& s) { return s->name == addr; });
      if (same != prev->end()) {
        next->push_back(*same);
        continue;
      }
      auto s = std::make_shared<ServerRef>();
      Status st = net::split_host_port(addr, &s->host, &s->port);
      if (!st.is_ok()) {
        log().warn("remote tier: {}: server {} left out: {}", source, addr, st.message());
        if (from_etcd_) continue;  // one bad entry in etcd does not empty the set
        return {KVTIER_ERR_CONFIG, std::string(source) + ": " + st.message()};
      }
      s->name = addr;
      s->seed = mix(namespace_seed(addr));
      for (int i = 0; i < 4; ++i) s->conns.push_back(std::make_unique<Conn>());
      next->push_back(std::move(s));
      next_has_new = true;
    }
    if (from_etcd_) log().info("remote tier: {} servers from {}", next->size(), source);
    if (from_etcd_ && !first_set_ && next_has_new) joined_ = true;
    first_set_ = false;
    std::lock_guard lock(live_mu_);
    live_ = std::move(next);
    return {};
  }

  std::shared_ptr<const Servers> live() const {
    std::lock_guard lock(live_mu_);
    return live_;
  }

  unsigned replicas(const Servers& servers) const {
    return std::min<unsigned>(replicas_, static_cast<unsigned>(servers.size()));
  }

  // The choices a read asks, in rank order, until each key is found. A server that joins takes
  // the first rank of the keys it wins, which puts their previous holder one rank down: once
  // one has joined, reads ask that one more choice, so a join costs no pages.
  unsigned read_choices(const Servers& servers) const {
    const unsigned n = static_cast<unsigned>(servers.size());
    return std::min(n, replicas(servers) + (joined_.load(std::memory_order_relaxed) ? 1u : 0u));
  }

  // The r-th choice of server for a key among `servers`: highest rendezvous score first.
  static ServerRef* pick(const Servers& servers, const KeyId& id, unsigned r) {
    if (servers.size() == 1) return servers[0].get();
    std::vector<std::pair<uint64_t, ServerRef*>> scored;
    for (auto& s : servers) scored.push_back({mix(id.hi ^ mix(id.lo ^ s->seed)), s.get()});
    std::nth_element(scored.begin(), scored.begin() + r, scored.end(),
                     [](auto& a, auto& b) { return a.first > b.first; });
    return scored[r].second;
  }

  // Indices 0..n-1 grouped by the r-th server of key_of(i).
  template <class KeyOf>
  static std::vector<std::pair<ServerRef*, std::vector<size_t>>> group(const Servers& servers,
                                                                       size_t n, KeyOf key_of,
                                                                       unsigned r) {
    std::vector<std::pair<ServerRef*, std::vector<size_t>>> out;
    for (size_t i = 0; i < n; ++i) {
      ServerRef* s = pick(servers, key_of(i), r);
      auto it = std::find_if(out.begin(), out.end(), [s](auto& g) { return g.first == s; });
      if (it == out.end()) {
        out.push_back({s, {i}});
      } else {
        it->second.push_back(i);
      }
    }
    return out;
  }

  Status connect(ServerRef& s, Conn& c, Deadline dl) {
    const int64_t now = Clock::now().time_since_epoch().count();
    if (now < s.down_until.load())
      return {KVTIER_ERR_UNAVAILABLE, "server " + s.name + " was unreachable moments ago"};
    Status st = net::connect_to(s.host, s.port, dl, &c.fd);
    if (st.is_ok()) {
      wire::Writer w;
      w.u32(static_cast<uint32_t>(token_.size()));
      w.bytes(token_.data(), token_.size());
      w.u64(ns_);
      uint64_t boot = 0;
      st = roundtrip(c.fd, wire::kHello, w.data(), {}, dl, [&](int, wire::Reader& rd) {
        if (rd.left() >= 8) boot = rd.u64();
        return Status{};
      });
      c.boot = boot;
      // A server that started again has a new arena: an RDMA channel to the old one is stale,
      // and so are the other connections to it (with_conn drops them before use).
      if (st.is_ok() && s.boot_id.exchange(boot) != boot) {
        std::lock_guard lock(s.rdma_mu);
        s.channel.reset();
        s.tcp_only = false;
        s.rdma_retry_at = s.rdma_backoff_s = 0;
      }
    }
    if (!st.is_ok()) {
      c.drop();
      // Fail fast for a short while instead of paying a connect per call to a dead server.
      s.down_until = now + std::chrono::nanoseconds(
                               std::chrono::milliseconds(std::min<unsigned>(timeout_ms_, 250)))
                               .count();
      log().warn("remote tier: server {}: {}", s.name, st.message());
    }
    return st;
  }

  static Status send_frame(int fd, uint16_t type, const std::vector<uint8_t>& payload,
                           const std::vector<iovec>& bulk, Deadline dl) {
    uint8_t head[wire::kHeaderSize];
    wire::Header h;
    h.type = type;
    h.length = static_cast<uint32_t>(payload.size());
    wire::encode_header(h, head);
    std::vector<iovec> iov{{head, sizeof head},
                           {const_cast<uint8_t*>(payload.data()), payload.size()}};
    iov.insert(iov.end(), bulk.begin(), bulk.end());
    return net::writev_all(fd, iov.data(), iov.size(), dl);
  }

  // Reads the reply to a request of `type`; an ERROR reply becomes its code.
  template <class OnReply>
  static Status read_reply_frame(int fd, uint16_t type, Deadline dl, OnReply&& on_reply) {
    uint8_t head[wire::kHeaderSize];
    wire::Header h;
    Status s = net::read_all(fd, head, sizeof head, dl);
    if (!s.is_ok()) return s;
    ++t_replies;
    s = wire::decode_header(head, &h);
    if (!s.is_ok()) return s;
    std::vector<uint8_t> reply(h.length);
    s = net::read_all(fd, reply.data(), reply.size(), dl);
    if (!s.is_ok()) return s;
    wire::Reader rd(reply);
    if (h.type == (wire::kError | wire::kReply)) {
      int code = rd.i32();
      std::string msg = rd.str(rd.left());
      return {code < 0 ? code : KVTIER_ERR_INTERNAL, "server: " + msg};
    }
    if (h.type != (type | wire::kReply)) return {KVTIER_ERR_INVALID_ARG, "unexpected reply"};
    s = on_reply(fd, rd);
    if (s.is_ok() && !rd.ok()) s = {KVTIER_ERR_INVALID_ARG, "truncated reply"};
    return s;
  }

  template <class OnReply>
  static Status roundtrip(int fd, uint16_t type, const std::vector<uint8_t>& payload,
                          const std::vector<iovec>& bulk, Deadline dl, OnReply&& on_reply) {
    Status s = send_frame(fd, type, payload, bulk, dl);
    return s.is_ok() ? read_reply_frame(fd, type, dl, on_reply) : s;
  }

  // Runs f(fd, deadline) on a connection of `s` (connecting it first); a failed connection is
  // closed, since whatever the stream held is lost; the next call reconnects. The deadline
  // covers the wait for a connection too. A pooled connection that fails before any reply
  // (the server restarted since it was made) is replaced once, within the same deadline.
  template <class F>
  Status with_conn(ServerRef& s, F&& f) {
    const Deadline dl = deadline();
    Conn* conn = take_conn(s, dl);
    if (!conn)
      return {KVTIER_ERR_TIMEOUT, "server " + s.name + ": no connection free before the deadline"};
    struct Held {  // given back however the call ends
      ServerRef& s;
      Conn* conn;
      ~Held() { give_back(s, conn); }
    } held{s, conn};
    Status st;
    for (int attempt = 0; attempt < 2; ++attempt) {
      if (conn->fd >= 0 && conn->boot != s.boot_id.load()) conn->drop();  // to an earlier start
      if (conn->fd >= 0 && net::peer_closed(conn->fd)) conn->drop();  // the server's idle timeout
      const bool pooled = conn->fd >= 0;
      if (!pooled) st = connect(s, *conn, dl);
      const uint64_t replies = t_replies;
      if (st.is_ok()) st = f(conn->fd, dl);
      if (st.is_ok()) break;
      conn->drop();
      log().debug("remote tier: {}: {}", s.name, st.message());
      if (!pooled || st.code() != KVTIER_ERR_UNAVAILABLE || t_replies != replies) break;
    }
    return st;
  }

  // A free connection of `s`, marked busy, waiting for one until the deadline; NULL if none.
  static Conn* take_conn(ServerRef& s, Deadline dl) {
    const size_t n = s.conns.size();
    const size_t start = s.next.fetch_add(1, std::memory_order_relaxed);
    Conn* got = nullptr;
    std::unique_lock lock(s.pool_mu);
    s.pool_cv.wait_until(lock, dl, [&] {
      for (size_t k = 0; k < n && !got; ++k)
        if (!s.conns[(start + k) % n]->busy) got = s.conns[(start + k) % n].get();
      return got != nullptr;
    });
    if (got) got->busy = true;
    return got;
  }

  static void give_back(ServerRef& s, Conn* conn) {
    {
      std::lock_guard lock(s.pool_mu);
      conn->busy = false;
    }
    s.pool_cv.notify_one();
  }

  // One request and its reply on a connection of `s`.
  template <class OnReply>
  Status exchange(ServerRef& s, uint16_t type, const std::vector<uint8_t>& payload,
                  const std::vector<iovec>& bulk, OnReply&& on_reply) {
    return with_conn(
        s, [&](int fd, Deadline dl) { return roundtrip(fd, type, payload, bulk, dl, on_reply); });
  }

  const bool rdma_;           // RDMA data plane wanted (transport rdma, or auto with a device)
  const bool rdma_required_;  // transport rdma: no TCP fallback
  std::shared_ptr<rdma::Registry> registry_ = rdma::Registry::create();
  const unsigned timeout_ms_;
  const int rdma_tos_;
  const unsigned replicas_;  // wanted; a call uses at most as many as there are servers
  const bool from_etcd_;     // the live set follows etcd (else it is KVTIER_REMOTE_SERVERS)
  const std::string token_;
  const uint64_t ns_;
  mutable std::mutex live_mu_;  // held only to copy or swap the pointer: never across etcd
  std::shared_ptr<const Servers> live_ = std::make_shared<Servers>();
  bool first_set_ = true;                   // set_servers has not run yet (its caller's only)
  std::atomic<bool> joined_{false};         // a server joined after the first set
  std::unique_ptr<Membership> membership_;  // with KVTIER_REMOTE_ETCD
  mutable std::atomic<uint64_t> errors_{0};
};

Status make_remote_tier(const Config& config, std::unique_ptr<Tier>* out) {
  const std::string& t = config.remote_transport;
  const bool device = t != "tcp" && rdma::available();
  if (t == "rdma" && !device)
    return {KVTIER_ERR_UNSUPPORTED,
            "KVTIER_REMOTE_TRANSPORT=rdma: no RDMA device on this host (or this build has no "
            "RDMA); use tcp or auto"};
  auto tier = std::make_unique<RemoteTier>(config, device, t == "rdma");
  Status s = tier->init(config);
  if (!s.is_ok()) return s;
  *out = std::move(tier);
  return {};
}

}  // namespace

KVTIER_REGISTER_TIER("remote", make_remote_tier);

}  // namespace kvtier
