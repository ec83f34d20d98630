#include "cluster.h"

#include <algorithm>

#include "log.h"

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

Membership::Membership(std::vector<std::string> etcd, std::string cluster, unsigned retry_ms,
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

bool Membership::read(int64_t* revision) {
  std::vector<etcd::KeyValue> kvs;
  Status s = client_.range_prefix(prefix_, &kvs, revision);
  if (!s.is_ok()) {
    if (!down_) log().warn("remote tier: {}; keeping the last known servers", s.message());
    down_ = true;
    return false;
  }
  if (down_) log().info("remote tier: etcd answers again");
  down_ = false;
  std::vector<std::string> servers;
  for (const etcd::KeyValue& kv : kvs) servers.push_back(kv.key.substr(prefix_.size()));
  std::sort(servers.begin(), servers.end());
  if (read_ && servers == servers_) return true;
  read_ = true;
  servers_ = servers;
  on_change_(servers);
  return true;
}

Registration::Registration(std::vector<std::string> etcd, const std::string& cluster,
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
    if (!s.is_ok() || left > 0) return s;
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
