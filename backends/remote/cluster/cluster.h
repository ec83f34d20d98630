// Cluster membership through etcd. A kvtier-server registers its address under
// /kvtier/<cluster>/servers/<host:port> with a lease it keeps alive (Registration); clients
// read that prefix and follow its changes (Membership). A server that stops (SIGTERM revokes
// the lease) or dies (the lease expires after its TTL) drops out of every client's set; one
// whose key vanished while it lives puts it back. A member record is only a claim: the client
// makes each member prove it holds the cluster's token before it uses it (placement.h).
#pragma once

#include <condition_variable>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "backends/remote/cluster/etcd.h"

namespace kvtier {

// The prefix a cluster's servers register under.
std::string cluster_prefix(const std::string& cluster);

// A thread that waits on a condition variable between rounds and stops promptly.
class Ticker {
 public:
  ~Ticker() { stop(); }
  void start(std::function<void()> round, unsigned interval_ms);
  void stop();

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  std::thread thread_;
};

// The client's side: reads the cluster's prefix, then watches it (etcd's watch stream) and
// reads it again after every change, calling on_change with the sorted addresses when the set
// changed: a change reaches the calls as soon as etcd reports it. etcd unreachable (or the
// watch broken): the set is read again every retry_ms and the last set stays meanwhile, with
// one log line when that starts and one when etcd answers again; on_change is never called
// with a set etcd did not give.
//
// The prefix is read by key alone (values are never read), a page of keys at a time, within
// limits: at most kMaxMembers members from at most kMaxScanned keys; a key that is not
// <prefix><host:port> of at most kMaxMemberKey bytes is skipped with a log line, never the set.
class Membership {
 public:
  static constexpr size_t kMaxMembers = 1024, kMaxScanned = 16384, kMaxMemberKey = 300;
  using OnChange = std::function<void(const std::vector<std::string>& servers)>;
  Membership(etcd::Settings etcd, std::string cluster, unsigned retry_ms, OnChange on_change);
  ~Membership() { stop(); }

  // Reads the set once before it returns (so the first calls have servers), then follows it.
  // Not reaching etcd here is not an error: the set starts empty and the log says so.
  void start();
  void stop();

 private:
  bool read(int64_t* revision);  // false: etcd did not answer
  // The member keys at one revision, page by page; *skipped: keys left out.
  Status list(std::vector<etcd::KeyValue>* members, int64_t* revision, size_t* skipped);
  void follow();                 // the thread: watch, read again, ...

  etcd::Client client_;  // used by start, then only by the thread
  const std::string prefix_;
  const unsigned retry_ms_;
  OnChange on_change_;
  bool read_ = false;                 // the set has been read once
  // As last read: each member's address and the revision its key was made at (a key put
  // again, e.g. by a server that restarted, counts as a change: its server is asked again).
  std::vector<std::pair<std::string, int64_t>> servers_;
  bool down_ = false;
  int64_t revision_ = 0;  // of the last read

  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  std::thread thread_;
};

// The server's side: registers `address` under a lease of ttl_s seconds and renews it every
// ttl_s/3. A lease that etcd lost (etcd down longer than the TTL, or its data wiped) is
// replaced and the key put again; a key deleted (or put by someone else) while the lease
// lives is put again at the next renewal. stop() revokes the lease, which removes the key.
class Registration {
 public:
  Registration(etcd::Settings etcd, const std::string& cluster, std::string address,
               unsigned ttl_s);
  ~Registration() { stop(); }

  // Registers once before it returns (an error is returned but the thread keeps trying).
  Status start();
  void stop();

 private:
  Status renew();

  etcd::Client client_;
  const std::string key_, address_;
  const unsigned ttl_s_;
  int64_t lease_ = 0;  // 0: not registered
  bool down_ = false;
  std::mutex mu_;  // renew against stop's revoke
  Ticker ticker_;
};

}  // namespace kvtier
