// The remote tier: pages on kvtier-servers, spread by rendezvous hashing (placement.h),
// optionally replicated. The control plane is TCP frames (protocol.h) on pooled connections
// (pool.h); the bytes move by the transport chosen per server (transport.h): RDMA when both
// ends have a device, else in the frames.
#include <algorithm>
#include <atomic>
#include <memory>
#include <system_error>
#include <thread>

#include "src/config.h"
#include "src/log.h"
#include "backends/remote/client/placement.h"
#include "backends/remote/client/pool.h"
#include "backends/remote/client/remote_options.h"
#include "src/tier.h"
#include "backends/remote/client/transport.h"

namespace kvtier {

namespace {

using remote::Groups;
using remote::Placement;
using remote::ServerRef;
using remote::Servers;
using remote::Transport;

class RemoteTier final : public Tier {
 public:
  RemoteTier(const RemoteOptions& o, const std::string& ns, bool rdma, bool rdma_required)
      : pool_(o.timeout_ms, o.token, namespace_seed(ns)), placement_(o) {
    if (rdma) rdma_ = remote::make_rdma_transport(pool_, errors_, rdma_required, o.rdma_tos);
  }

  Status init(const RemoteOptions& o) {
    return placement_.init(o, [this](ServerRef& s) {
      return pool_.with_conn(s, [](int, remote::Deadline) { return Status{}; });
    });
  }

  std::string_view name() const override { return "remote"; }
  Caps caps() const override { return {.can_tear = true}; }

  void register_memory(const void* addr, size_t len) override {
    if (rdma_) rdma_->register_memory(addr, len);
  }
  void unregister_memory(const void* addr) override {
    if (rdma_) rdma_->unregister_memory(addr);
  }

  void put(std::span<PutOp> ops) override {
    remote::PutOutcome out{std::vector<int>(ops.size(), KVTIER_ERR_UNAVAILABLE),
                           std::vector<uint8_t>(ops.size(), 0)};
    // A value no server takes is refused here, before it is sent: a server drops a
    // connection that carries one.
    std::vector<uint8_t> fits(ops.size(), 1);
    for (size_t i = 0; i < ops.size(); ++i) {
      if (ops[i].size <= wire::kMaxValue) continue;
      fits[i] = 0;
      out.best[i] = KVTIER_ERR_NO_SPACE;
      log().warn("remote tier: a value of {} bytes is larger than a server takes ({} bytes)",
                 ops[i].size, wire::kMaxValue);
    }
    const auto servers = placement_.live();
    for (unsigned r = 0; r < placement_.replicas(*servers); ++r) {
      each_server(by_server(*servers, ops, r), bytes_of(ops), [&](ServerRef& srv, auto& all) {
        std::vector<size_t> idx;
        for (size_t i : all)
          if (fits[i]) idx.push_back(i);
        skip_held(srv, ops, idx, out);
        on_server(
            srv, std::move(idx), [&](Transport& t, auto keys) { t.put(srv, ops, keys, out); },
            [&](size_t i, int code) { out.best[i] = code; },
            [&](size_t i) { return out.stored[i] != 0; });
      });
    }
    for (size_t i = 0; i < ops.size(); ++i) {
      ops[i].result = out.stored[i] ? KVTIER_OK : out.best[i];
      if (!out.stored[i]) errors_.fetch_add(1, std::memory_order_relaxed);
    }
  }

  void get(std::span<GetOp> ops) override {
    for (GetOp& op : ops) op.result = KVTIER_ERR_NOT_FOUND;
    std::vector<uint8_t> done(ops.size(), 0);
    const auto servers = placement_.live();
    for (unsigned r = 0; r < placement_.read_choices(*servers); ++r) {
      each_server(by_server(*servers, ops, r), bytes_of(ops), [&](ServerRef& srv, auto& all) {
        std::vector<size_t> idx;
        for (size_t i : all)
          if (!done[i]) idx.push_back(i);
        on_server(
            srv, std::move(idx), [&](Transport& t, auto keys) { t.get(srv, ops, keys, done); },
            [&](size_t i, int code) { ops[i].result = code; },
            [&](size_t i) { return done[i] != 0; });
      });
    }
  }

  void exists(std::span<const KeyId> ids, std::span<uint8_t> present) override {
    std::fill(present.begin(), present.end(), 0);
    const auto servers = placement_.live();
    for (unsigned r = 0; r < placement_.read_choices(*servers); ++r) {
      for (auto& [srv, all] : by_server(*servers, ids, r)) {
        std::vector<size_t> idx;
        for (size_t i : all)
          if (!present[i]) idx.push_back(i);
        if (idx.empty()) continue;
        pool_.exchange(*srv, wire::kExists, id_list(idx, [&](size_t i) { return ids[i]; }),
                       [&](int, wire::Reader& rd) {
                         if (rd.count(1) != idx.size())
                           return Status{KVTIER_ERR_INVALID_ARG, "bad reply"};
                         for (size_t i : idx) present[i] = rd.u8() ? 1 : 0;
                         return Status{};
                       });
      }
    }
  }

  // A size costs each server a lookup, where a GET of no room would move the value to check
  // it (over TCP). A key still unanswered (a miss, a failure) is asked at its next read choice;
  // a miss there does not hide a failure here.
  void sizes(std::span<const KeyId> ids, std::span<int64_t> sizes) override {
    std::fill(sizes.begin(), sizes.end(), KVTIER_ERR_NOT_FOUND);
    const auto servers = placement_.live();
    for (unsigned r = 0; r < placement_.read_choices(*servers); ++r) {
      for (auto& [srv, all] : by_server(*servers, ids, r)) {
        std::vector<size_t> idx;
        for (size_t i : all)
          if (sizes[i] < 0) idx.push_back(i);
        if (idx.empty()) continue;
        std::vector<int64_t> got(idx.size(), KVTIER_ERR_NOT_FOUND);
        server_sizes(*srv, ids, idx, got);
        for (size_t k = 0; k < idx.size(); ++k)
          if (got[k] != KVTIER_ERR_NOT_FOUND) sizes[idx[k]] = got[k];
      }
    }
  }

  void remove(std::span<const KeyId> ids, std::span<int> results) override {
    std::fill(results.begin(), results.end(), KVTIER_ERR_NOT_FOUND);
    const auto servers = placement_.live();
    // Wherever a read would find it.
    for (unsigned r = 0; r < placement_.read_choices(*servers); ++r) {
      for (auto& [srv, idx] : by_server(*servers, ids, r)) {
        pool_.exchange(*srv, wire::kRemove, id_list(idx, [&](size_t i) { return ids[i]; }),
                       [&](int, wire::Reader& rd) {
                         if (rd.count(4) != idx.size())
                           return Status{KVTIER_ERR_INVALID_ARG, "bad reply"};
                         for (size_t i : idx)
                           if (rd.i32() == KVTIER_OK) results[i] = KVTIER_OK;
                         return Status{};
                       });
      }
    }
  }

  Status clear() override {
    for (auto& s : *placement_.live())
      pool_.exchange(*s, wire::kClear, {}, [](int, wire::Reader&) { return Status{}; });
    return {};
  }

  TierStats stats() const override {
    TierStats t;
    const auto servers = placement_.live();
    t.servers = static_cast<int64_t>(servers->size());
    for (auto& s : *servers)
      pool_.exchange(*s, wire::kStats, {},
                     [&](int, wire::Reader& rd) { return add_server_stats(rd, &t); });
    t.errors += errors_.load();
    return t;
  }

 private:
  // Keys (by index) grouped by their r-th server; `items` are ops or ids.
  template <class Items>
  static Groups by_server(const Servers& servers, const Items& items, unsigned r) {
    return Placement::group(
        servers, items.size(),
        [&](size_t i) {
          if constexpr (std::is_same_v<typename Items::value_type, KeyId>)
            return items[i];
          else
            return items[i].id;
        },
        r);
  }

  // Below this many bytes a batch is not worth a thread per server, nor a put the round trip
  // that asks which keys the server has (a loopback round trip is what one stream moves of
  // about 150 KiB; an engine's page is a few MiB).
  static constexpr uint64_t kWorthRoundTrip = 1 << 20;

  template <class Ops>
  static uint64_t bytes_of(const Ops& ops) {
    uint64_t n = 0;
    for (const auto& op : ops) {
      if constexpr (std::is_same_v<typename Ops::value_type, PutOp>)
        n += op.size;
      else
        n += op.capacity;
    }
    return n;
  }

  // Runs fn(server, its keys) for every group, the groups of a batch worth it at once, each
  // but the first on a thread of its own: a batch spread over servers moves at the speed of
  // the slowest server, not the sum of them. Each key is in one group, so the groups write
  // disjoint results.
  template <class Fn>
  static void each_server(Groups groups, uint64_t bytes, Fn fn) {
    std::vector<std::thread> helpers;
    if (groups.size() > 1 && bytes >= kWorthRoundTrip) {
      helpers.reserve(groups.size() - 1);
      for (size_t g = 1; g < groups.size(); ++g) {
        try {
          helpers.emplace_back([&, g] { fn(*groups[g].first, groups[g].second); });
        } catch (const std::system_error&) {  // no thread to be had: this one runs it
          fn(*groups[g].first, groups[g].second);
        }
      }
      fn(*groups[0].first, groups[0].second);
    } else {
      for (auto& [srv, idx] : groups) fn(*srv, idx);
    }
    for (std::thread& t : helpers) t.join();
  }

  // A key the server holds already keeps its first value (a second put changes nothing), so
  // it counts as written without its bytes crossing: engines back up every page of a
  // finished request, the prefix pages they read from this store included. Asked only when
  // the bytes are worth the round trip; a server that does not answer is left to the put.
  void skip_held(ServerRef& s, std::span<PutOp> ops, std::vector<size_t>& idx,
                 remote::PutOutcome& out) {
    uint64_t bytes = 0;
    for (size_t i : idx) bytes += ops[i].size;
    if (bytes < kWorthRoundTrip) return;
    std::vector<uint8_t> held(idx.size(), 0);
    const Status s_ok =
        pool_.exchange(s, wire::kExists, id_list(idx, [&](size_t i) { return ops[i].id; }),
                       [&](int, wire::Reader& rd) {
                         if (rd.count(1) != held.size())
                           return Status{KVTIER_ERR_INVALID_ARG, "bad reply"};
                         for (uint8_t& h : held) h = rd.u8() ? 1 : 0;
                         return Status{};
                       });
    if (!s_ok.is_ok()) return;
    size_t kept = 0;
    for (size_t k = 0; k < idx.size(); ++k) {
      if (held[k])
        out.stored[idx[k]] = 1;
      else
        idx[kept++] = idx[k];
    }
    idx.resize(kept);
  }

  // got[k]: the size of ids[idx[k]] on `s`, NOT_FOUND, or why it is not known.
  void server_sizes(ServerRef& s, std::span<const KeyId> ids, const std::vector<size_t>& idx,
                    std::vector<int64_t>& got) {
    if (const uint64_t boot = s.boot_id.load(); boot == 0 || s.no_sizes.load() != boot) {
      const Status st =
          pool_.exchange(s, wire::kSizes, id_list(idx, [&](size_t i) { return ids[i]; }),
                         [&](int, wire::Reader& rd) { return read_sizes(rd, got); });
      if (st.code() != KVTIER_ERR_INVALID_ARG) {
        if (!st.is_ok()) std::fill(got.begin(), got.end(), st.code());
        return;
      }
      // A server older than SIZES refuses the frame type (and drops that connection): it is
      // asked the old way, from now until it restarts.
      s.no_sizes = s.boot_id.load();
    }
    std::byte none{};
    const Frag no_room{&none, 0};
    std::vector<GetOp> ops(idx.size());
    std::vector<size_t> all(idx.size());
    for (size_t k = 0; k < idx.size(); ++k) {
      ops[k] = {.id = ids[idx[k]], .frags = Frags(&no_room, 1), .result = KVTIER_ERR_NOT_FOUND};
      all[k] = k;
    }
    std::vector<uint8_t> done(ops.size(), 0);
    on_server(
        s, std::move(all), [&](Transport& t, auto keys) { t.get(s, ops, keys, done); },
        [&](size_t k, int code) { ops[k].result = code; }, [&](size_t k) { return done[k] != 0; });
    for (size_t k = 0; k < ops.size(); ++k) got[k] = size_found(ops[k]);
  }

  // A SIZES reply into got (one size per key asked).
  static Status read_sizes(wire::Reader& rd, std::vector<int64_t>& got) {
    const Status bad{KVTIER_ERR_INVALID_ARG, "bad SIZES reply"};
    if (rd.count(8) != got.size()) return bad;
    for (int64_t& size : got) {
      size = rd.i64();
      // A size is 1 byte to a page, a code an int.
      if (size == 0 || size > static_cast<int64_t>(wire::kMaxValue) || size < INT32_MIN)
        return bad;
    }
    return rd.done() ? Status{} : bad;
  }

  // The transport for `s`'s bytes, or NULL with *err when RDMA is required and down.
  Transport* transport(ServerRef& s, Status* err) {
    if (rdma_ && rdma_->ready(s, err)) return rdma_.get();
    return err->is_ok() ? tcp_.get() : nullptr;
  }

  // Runs run(transport, keys) for the keys idx of one server. A restart of the server seen
  // during the call (a new boot id) left its channel and connections stale: the keys not
  // done(i) get one more try on fresh ones. fail(i, code): no transport for key i.
  template <class Run, class Fail, class Done>
  void on_server(ServerRef& s, std::vector<size_t> idx, Run run, Fail fail, Done done) {
    for (int attempt = 0; attempt < 2 && !idx.empty(); ++attempt) {
      const uint64_t boot = s.boot_id.load();
      Status path;
      if (Transport* t = transport(s, &path)) {
        run(*t, std::span<const size_t>(idx));
      } else {
        for (size_t i : idx) fail(i, path.code());
      }
      if (boot == 0 || s.boot_id.load() == boot) break;
      std::erase_if(idx, done);
    }
  }

  // An EXISTS or REMOVE request: id_of(i) for each i of idx.
  template <class IdOf>
  static std::vector<uint8_t> id_list(const std::vector<size_t>& idx, IdOf id_of) {
    wire::Writer w;
    // One allocation up front (which also spares GCC 12 a false -Wnonnull in Release).
    w.data().reserve(4 + 16 * idx.size());
    w.u32(static_cast<uint32_t>(idx.size()));
    for (size_t i : idx) w.id(id_of(i));
    return std::move(w.data());
  }

  // A STATS reply added to *t.
  static Status add_server_stats(wire::Reader& rd, TierStats* t) {
    t->keys += rd.u64();
    t->bytes += rd.u64();
    t->capacity += rd.u64();
    t->evictions += rd.u64();
    t->errors += rd.u64();
    rd.u64();  // leases that expired
    t->server_hits += rd.u64();
    t->server_misses += rd.u64();
    t->leases += rd.u64();
    t->connections += rd.u64();
    // Every server past HELLO speaks wire version 2, which sends all ten (protocol.h).
    return rd.ok() ? Status{} : Status{KVTIER_ERR_INVALID_ARG, "bad reply"};
  }

  mutable std::atomic<uint64_t> errors_{0};
  const remote::Pool pool_;
  Placement placement_;  // its destructor stops the membership thread
  std::unique_ptr<Transport> tcp_ = remote::make_tcp_transport(pool_, errors_);
  std::unique_ptr<remote::RdmaTransport>
      rdma_;  // RDMA wanted (transport rdma, or auto and a device)
};

Status make_remote_tier(const Config& config, std::unique_ptr<Tier>* out) {
  const RemoteOptions& o = config.section<RemoteOptions>();
  const std::string& t = o.transport;
  const bool device = t != "tcp" && rdma::available();
  if (t == "rdma" && !device)
    return {KVTIER_ERR_UNSUPPORTED,
            "KVTIER_REMOTE_TRANSPORT=rdma: no RDMA device on this host (or this build has no "
            "RDMA); use tcp or auto"};
  auto tier = std::make_unique<RemoteTier>(o, config.ns, device, t == "rdma");
  Status s = tier->init(o);
  if (!s.is_ok()) return s;
  *out = std::move(tier);
  return {};
}

bool any_text(const std::string&) {
  return true;
}

using O = RemoteOptions;

}  // namespace

KVTIER_REGISTER_TIER("remote", make_remote_tier);
KVTIER_REGISTER_OPTIONS(
    remote, {address_list_option<O>("REMOTE_SERVERS", "", &O::servers),
             url_list_option<O>("REMOTE_ETCD", "", &O::etcd),
             text_option<O>("REMOTE_ETCD_USER", "", &O::etcd_user, "a user name", any_text),
             text_option<O>("REMOTE_ETCD_PASSWORD", "", &O::etcd_password, "a password", any_text),
             text_option<O>("REMOTE_ETCD_CA_FILE", "", &O::etcd_ca_file, "a file", any_text),
             text_option<O>("REMOTE_ETCD_CERT_FILE", "", &O::etcd_cert_file, "a file", any_text),
             text_option<O>("REMOTE_ETCD_KEY_FILE", "", &O::etcd_key_file, "a file", any_text),
             cluster_option<O>("REMOTE_CLUSTER", "", &O::cluster),
             transport_option<O>("REMOTE_TRANSPORT", "", &O::transport),
             millis_option<O>("REMOTE_TIMEOUT_MS", "", &O::timeout_ms),
             token_option<O>("REMOTE_TOKEN", "", &O::token),
             integer_option<O>("REMOTE_REPLICAS", "", &O::replicas, 1, 16),
             integer_option<O>("REMOTE_RDMA_TOS", "", &O::rdma_tos, 0, 255)});

}  // namespace kvtier
