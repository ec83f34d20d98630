// Which server holds a key: rendezvous (highest random weight) hashing over the live set, the
// set given by KVTIER_REMOTE_SERVERS or followed in etcd (cluster.h). A join or a leave moves
// only the keys the changed server wins or held.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "backends/remote/cluster/cluster.h"
#include "src/keys.h"
#include "backends/remote/client/pool.h"
#include "backends/remote/client/remote_options.h"

namespace kvtier::remote {

// The live set of servers. A call takes a snapshot and keeps it to its end, so a server that
// leaves meanwhile (and its connections) lives until the calls using it are done.
using Servers = std::vector<std::shared_ptr<ServerRef>>;

// Keys (by index 0..n-1) grouped by the server that holds them.
using Groups = std::vector<std::pair<ServerRef*, std::vector<size_t>>>;

class Placement {
 public:
  explicit Placement(const RemoteOptions& o);
  ~Placement();  // stops the membership thread first: it calls set_servers
  // Asks a server to prove itself (the HELLO handshake): OK and its id in s.boot_id, DENIED
  // when it cannot prove it holds the token, else it did not answer.
  using Prove = std::function<Status(ServerRef& s)>;
  // The static list, or the first poll of etcd started; prove: asked of every new member.
  Status init(const RemoteOptions& o, Prove prove);

  std::shared_ptr<const Servers> live() const;
  // Copies a write goes to: KVTIER_REMOTE_REPLICAS, at most the servers there are.
  unsigned replicas(const Servers& servers) const;
  // The choices a read asks, in rank order, until each key is found. A server that joins takes
  // the first rank of the keys it wins, which puts their previous holder one rank down: once
  // one has joined, reads ask that one more choice, so a join costs no pages.
  unsigned read_choices(const Servers& servers) const;
  // Indices 0..n-1 grouped by the r-th choice of server for key_of(i) (highest score first).
  static Groups group(const Servers& servers, size_t n, const std::function<KeyId(size_t)>& key_of,
                      unsigned r);

 private:
  // Replaces the live set with `addrs`, keeping the servers (and their connections) that stay.
  // source names where the list came from, for messages. Each new member is asked to prove
  // itself first, and members that prove the same server id are one server under several names
  // (127.0.0.1:P, localhost:P, [::ffff:127.0.0.1]:P), counted once. From etcd, a member record
  // is a claim: one that cannot prove itself is left out (and asked again when the set
  // changes).
  Status set_servers(const std::vector<std::string>& addrs, const char* source);
  // Asks each of `fresh` to prove itself; from etcd, drops those that cannot.
  void prove_all(Servers& fresh, const char* source);

  // How often the live set is read again while etcd does not answer (it is watched otherwise).
  static constexpr unsigned kMembershipRetryMs = 250;
  const unsigned replicas_;     // wanted; a call uses at most as many as there are servers
  const bool from_etcd_;        // the live set follows etcd (else it is KVTIER_REMOTE_SERVERS)
  mutable std::mutex live_mu_;  // held only to copy or swap the pointer: never across etcd
  std::shared_ptr<const Servers> live_ = std::make_shared<Servers>();
  bool first_set_ = true;                   // set_servers has not run yet (its caller's only)
  std::atomic<bool> joined_{false};         // a server joined after the first set
  std::unique_ptr<Membership> membership_;  // with KVTIER_REMOTE_ETCD
  Prove prove_;
};

}  // namespace kvtier::remote
