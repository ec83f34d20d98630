#include "backends/remote/cluster/cluster.h"

#include <algorithm>

#include "src/log.h"
#include "src/options.h"

namespace kvtier {

namespace {
constexpr unsigned kEtcdTimeoutMs = 1000;  // per call and endpoint: a stop never waits longer
}

std::string cluster_prefix(const std::string& cluster) {
  return "/kvtier/" + cluster + "/servers/";
}

void Ticker::start(std::function<void()> round, unsigned interval_ms) {
  thread_ = std::thread([this, round = std::move(round), interval_ms] {
    std::unique_lock lock(mu_);
    while (!cv_.wait_for(lock, std::chrono::milliseconds(interval_ms), [&] { return stopping_; })) {
      lock.unlock();
      round();
      lock.lock();
    }
  });
}

void Ticker::stop() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

Membership::Membership(etcd::Settings etcd, std::string cluster, unsigned retry_ms,
                       OnChange on_change)
    : client_(std::move(etcd), kEtcdTimeoutMs),
      prefix_(cluster_prefix(cluster)),
      retry_ms_(retry_ms),
      on_change_(std::move(on_change)) {}

void Membership::start() {
  if (!read(&revision_))
    log().warn("remote tier: etcd unreachable at start: no servers until it answers");
  thread_ = std::thread([this] { follow(); });
}

void Membership::stop() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  client_.wake();
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void Membership::follow() {
  bool have = read_;
  for (;;) {
    Status watched;
    if (have) {
      // From the revision after the one read: a change made between the read and the watch's
      // start is reported too, so none is missed.
      watched = client_.watch_prefix(prefix_, revision_ + 1);
      if (!watched.is_ok())
        log().debug("remote tier: etcd watch: {}; reading again", watched.message());
    }
    std::unique_lock lock(mu_);
    if (!have || !watched.is_ok())  // etcd down or the watch broken: not a busy loop
      cv_.wait_for(lock, std::chrono::milliseconds(retry_ms_), [&] { return stopping_; });
    if (stopping_) return;
    lock.unlock();
    have = read(&revision_);
  }
}

Status Membership::list(std::vector<etcd::KeyValue>* members, int64_t* revision,
                        size_t* skipped) {
  constexpr int64_t kPage = 64;
  const std::string end = etcd::prefix_end(prefix_);
  std::string from = prefix_;
  int64_t at = 0;  // every page at the first page's revision: one consistent set
  size_t scanned = 0;
  *skipped = 0;
  members->clear();
  for (int64_t limit = kPage;;) {
    std::vector<etcd::KeyValue> page;
    bool more = false;
    int64_t read_at = 0;
    Status s = client_.range_keys(from, end, limit, at, &page, &more, &read_at);
    if (s.code() == KVTIER_ERR_INVALID_ARG && limit > 1) {  // long keys: one at a time
      limit = 1;
      continue;
    }
    if (!s.is_ok()) return s;
    if (!at) *revision = at = read_at;
    const std::string last = page.empty() ? std::string() : page.back().key;
    for (etcd::KeyValue& kv : page) {
      const std::string addr = kv.key.substr(std::min(prefix_.size(), kv.key.size()));
      if (kv.key.size() > kMaxMemberKey || !valid_host_port(addr)) {
        ++*skipped;
      } else if (members->size() < kMaxMembers) {
        kv.key = addr;
        members->push_back(std::move(kv));
      } else {
        ++*skipped;
      }
    }
    scanned += page.size();
    if (!more || page.empty()) return {};
    if (scanned >= kMaxScanned) {
      *skipped += 1;  // and what is past it, uncounted
      return {};
    }
    from = last + '\0';  // the next page starts after this one's last key
    limit = kPage;
  }
}

bool Membership::read(int64_t* revision) {
  std::vector<etcd::KeyValue> kvs;
  size_t skipped = 0;
  Status s = list(&kvs, revision, &skipped);
  if (!s.is_ok()) {
    if (!down_) log().warn("remote tier: {}; keeping the last known servers", s.message());
    down_ = true;
    return false;
  }
  if (down_) log().info("remote tier: etcd answers again");
  down_ = false;
  std::vector<std::pair<std::string, int64_t>> servers;
  for (const etcd::KeyValue& kv : kvs) servers.push_back({kv.key, kv.create_revision});
  std::sort(servers.begin(), servers.end());
  if (read_ && servers == servers_) return true;
  if (skipped)
    log().warn("remote tier: etcd: {} keys under {} are not member records (or past {} "
               "members): skipped",
               skipped, prefix_, kMaxMembers);
  read_ = true;
  servers_ = servers;
  std::vector<std::string> addrs;
  for (auto& [addr, rev] : servers) addrs.push_back(addr);
  on_change_(addrs);
  return true;
}

Registration::Registration(etcd::Settings etcd, const std::string& cluster,
                           std::string address, unsigned ttl_s)
    : client_(std::move(etcd), kEtcdTimeoutMs),
      key_(cluster_prefix(cluster) + address),
      address_(std::move(address)),
      ttl_s_(ttl_s) {}

Status Registration::start() {
  Status s = renew();
  ticker_.start(
      [this] {
        Status st = renew();
        if (!st.is_ok() && !down_)
          log().warn("server: etcd: {}; registration retried", st.message());
        if (st.is_ok() && down_) log().info("server: registered in etcd again as {}", key_);
        down_ = !st.is_ok();
      },
      std::max(1u, ttl_s_) * 1000 / 3);
  return s;
}

Status Registration::renew() {
  std::lock_guard lock(mu_);
  if (lease_) {
    int64_t left = 0;
    Status s = client_.keep_alive(lease_, &left);
    if (s.is_ok() && left > 0) {
      // The key may be gone (deleted by someone who can write to etcd) or replaced: it must
      // name this server under its lease, or the cluster has lost it for good.
      std::vector<etcd::KeyValue> mine;
      bool more = false;
      int64_t at = 0;
      s = client_.range_keys(key_, key_ + '\0', 1, 0, &mine, &more, &at);
      if (!s.is_ok() || (mine.size() == 1 && mine[0].lease == lease_)) return s;
      log().warn("server: its key {} vanished from etcd (or is not under its lease): put again",
                 key_);
      return client_.put(key_, address_, lease_);
    }
    if (!s.is_ok()) return s;
    lease_ = 0;  // expired while etcd or this server could not renew it: register anew
  }
  int64_t lease = 0;
  Status s = client_.grant(ttl_s_, &lease);
  if (s.is_ok()) s = client_.put(key_, address_, lease);
  if (!s.is_ok()) return s;
  lease_ = lease;
  log().info("server: registered in etcd as {} (lease ttl {} s)", key_, ttl_s_);
  return {};
}

void Registration::stop() {
  ticker_.stop();
  std::lock_guard lock(mu_);
  if (!lease_) return;
  Status s = client_.revoke(lease_);
  if (!s.is_ok()) log().warn("server: deregistering from etcd: {}", s.message());
  lease_ = 0;
}

}  // namespace kvtier
