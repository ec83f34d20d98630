// The few etcd v3 calls cluster membership needs, through etcd's JSON gateway (libcurl +
// nlohmann::json): range over and watch a prefix, put under a lease, grant / keep alive /
// revoke a lease.
// Keys and values are plain strings here; the gateway's base64 stays inside.
#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

#include "status.h"

namespace kvtier::etcd {

struct KeyValue {
  std::string key, value;
};

// One client per thread that uses it (it keeps no handle between calls, so it is cheap).
// Every call tries the endpoints in turn, starting with the last that answered, and gives
// up after `timeout_ms` per endpoint: UNAVAILABLE when none answers, INTERNAL when etcd
// answers with an error (its message included).
class Client {
 public:
  // endpoints: "host:port" of etcd's client URLs (http).
  Client(std::vector<std::string> endpoints, unsigned timeout_ms);

  // Every key that starts with `prefix`; *revision (when given): the store revision read.
  Status range_prefix(const std::string& prefix, std::vector<KeyValue>* out,
                      int64_t* revision = nullptr);
  // Watches the keys under `prefix` from revision `from` on (etcd's watch stream) and returns
  // once one of them changed: OK. UNAVAILABLE when no endpoint takes the watch or the stream
  // breaks (etcd stopped), INTERNAL when etcd cancels it (e.g. `from` was compacted). No
  // timeout: it also returns, OK, once wake() is called (from any thread).
  Status watch_prefix(const std::string& prefix, int64_t from);
  void wake();
  // A lease of `ttl_s` seconds (etcd may raise a short TTL to its minimum).
  Status grant(int64_t ttl_s, int64_t* lease);
  // Renews the lease; *ttl_s is what is left after renewal, 0 when the lease no longer exists.
  Status keep_alive(int64_t lease, int64_t* ttl_s);
  // lease 0: a key without a lease.
  Status put(const std::string& key, const std::string& value, int64_t lease);
  // Revoking a lease deletes the keys put under it.
  Status revoke(int64_t lease);

 private:
  // POSTs `body` to path on an endpoint; the reply's JSON text in *reply.
  Status post(const char* path, const std::string& body, std::string* reply);
  // post() with JSON both ways; an error etcd answers becomes INTERNAL with its message.
  Status call(const char* path, const nlohmann::json& request, nlohmann::json* reply);

  // One endpoint's watch stream until a change, a break or wake().
  Status watch_at(const std::string& url, const std::string& body);

  std::vector<std::string> endpoints_;
  unsigned timeout_ms_;
  size_t current_ = 0;  // the endpoint that answered last

  std::mutex wake_mu_;  // guards watching_ against wake()
  void* watching_ = nullptr;  // the CURLM handle of the watch in progress
  std::atomic<bool> woken_{false};
};

}  // namespace kvtier::etcd
