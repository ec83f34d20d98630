#include "backends/remote/client/placement.h"

#include <algorithm>
#include <thread>

#include "src/log.h"

namespace kvtier::remote {

namespace {

uint64_t mix(uint64_t x) {  // splitmix64
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// The r-th choice of server for a key among `servers`: highest rendezvous score first.
ServerRef* pick(const Servers& servers, const KeyId& id, unsigned r) {
  if (servers.size() == 1) return servers[0].get();
  std::vector<std::pair<uint64_t, ServerRef*>> scored;
  for (auto& s : servers) scored.push_back({mix(id.hi ^ mix(id.lo ^ s->seed)), s.get()});
  std::nth_element(scored.begin(), scored.begin() + r, scored.end(),
                   [](auto& a, auto& b) { return a.first > b.first; });
  return scored[r].second;
}

etcd::Settings etcd_settings(const RemoteOptions& o) {
  return {o.etcd, o.etcd_user, o.etcd_password, o.etcd_ca_file, o.etcd_cert_file, o.etcd_key_file};
}

}  // namespace

Placement::Placement(const RemoteOptions& o) : replicas_(o.replicas), from_etcd_(!o.etcd.empty()) {}

Placement::~Placement() {
  membership_.reset();
}

Status Placement::init(const RemoteOptions& o, Prove prove) {
  prove_ = std::move(prove);
  if (o.etcd.empty()) return set_servers(o.servers, "KVTIER_REMOTE_SERVERS");
  membership_ = std::make_unique<Membership>(
      etcd_settings(o), o.cluster, kMembershipRetryMs,
      [this](const std::vector<std::string>& addrs) { set_servers(addrs, "etcd"); });
  membership_->start();
  return {};
}

std::shared_ptr<const Servers> Placement::live() const {
  std::lock_guard lock(live_mu_);
  return live_;
}

unsigned Placement::replicas(const Servers& servers) const {
  return std::min<unsigned>(replicas_, static_cast<unsigned>(servers.size()));
}

unsigned Placement::read_choices(const Servers& servers) const {
  const unsigned n = static_cast<unsigned>(servers.size());
  return std::min(n, replicas(servers) + (joined_.load(std::memory_order_relaxed) ? 1u : 0u));
}

Groups Placement::group(const Servers& servers, size_t n,
                        const std::function<KeyId(size_t)>& key_of, unsigned r) {
  Groups out;
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

Status Placement::set_servers(const std::vector<std::string>& addrs, const char* source) {
  const auto prev = live();
  Servers kept, fresh;
  for (const std::string& addr : addrs) {
    auto same = std::find_if(prev->begin(), prev->end(), [&](auto& s) { return s->name == addr; });
    if (same != prev->end()) {
      kept.push_back(*same);
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
    for (int i = 0; i < Pool::kConnsPerServer; ++i) s->conns.push_back(std::make_unique<Conn>());
    fresh.push_back(std::move(s));
  }
  if (prove_) prove_all(fresh, source);
  // One server under several names counts once: the member already live keeps it.
  auto next = std::make_shared<Servers>();
  bool next_has_new = false;
  for (Servers* part : {&kept, &fresh}) {
    for (auto& s : *part) {
      const uint64_t id = s->boot_id.load();
      auto twin = std::find_if(next->begin(), next->end(),
                               [&](auto& o) { return id != 0 && o->boot_id.load() == id; });
      if (twin != next->end()) {
        log().info("remote tier: {}: server {} is {} under another name: counted once", source,
                   s->name, (*twin)->name);
        continue;
      }
      next_has_new |= part == &fresh;
      next->push_back(s);
    }
  }
  if (from_etcd_) log().info("remote tier: {} servers from {}", next->size(), source);
  if (from_etcd_ && !first_set_ && next_has_new) joined_ = true;
  first_set_ = false;
  std::lock_guard lock(live_mu_);
  live_ = std::move(next);
  return {};
}

void Placement::prove_all(Servers& fresh, const char* source) {
  // In parallel, a few dozen at a time: a silent member costs one timeout, not one each.
  constexpr size_t kAtOnce = 32;
  std::vector<Status> got(fresh.size());
  for (size_t b = 0; b < fresh.size(); b += kAtOnce) {
    std::vector<std::thread> th;
    for (size_t i = b; i < std::min(fresh.size(), b + kAtOnce); ++i)
      th.emplace_back([&, i] { got[i] = prove_(*fresh[i]); });
    for (auto& t : th) t.join();
  }
  size_t k = 0;
  for (size_t i = 0; i < fresh.size(); ++i) {
    // A record anyone who can write to etcd could have made: nothing goes to it. (One the
    // user listed stays, and its calls say why they are refused.)
    if (got[i].code() == KVTIER_ERR_DENIED && from_etcd_) {
      log().warn("remote tier: {}: member {} left out: {}", source, fresh[i]->name,
                 got[i].message());
      continue;
    }
    // One that did not answer stays (its keys fail fast until it does); every connection to
    // it must still pass the handshake before anything is sent.
    fresh[k++] = fresh[i];
  }
  fresh.resize(k);
}

}  // namespace kvtier::remote
