// The few etcd v3 calls cluster membership needs, through etcd's JSON gateway (libcurl +
// nlohmann::json), over http or https, with etcd's user authentication or a client
// certificate: range over the keys of and watch a prefix, put under a lease, grant / keep alive /
// revoke a lease.
// Keys and values are plain strings here; the gateway's base64 stays inside.
#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

#include "src/status.h"

namespace kvtier::etcd {

struct KeyValue {
  std::string key, value;
  int64_t create_revision = 0, lease = 0;
};

// Where etcd is and how to prove who we are to it.
struct Settings {
  // host:port (http), http://host:port or https://host:port of etcd's client URLs.
  std::vector<std::string> endpoints;
  // etcd's user authentication: /v3/auth/authenticate gives a token sent with every call
  // (empty user: none).
  std::string user, password;
  // https: the CA etcd's certificate is checked against (empty: the system's), and a client
  // certificate and key (PEM) for etcd's --client-cert-auth.
  std::string ca_file, cert_file, key_file;
};

// A reply larger than this is cut off and its call fails: a record someone wrote to etcd
// cannot make a call read and parse more (4 MiB: one key at etcd's 1.5 MiB request limit fits).
constexpr size_t kMaxReplyBytes = 4u << 20;

// The first key after every key that starts with prefix (etcd's range_end for a prefix).
std::string prefix_end(std::string prefix);

// One client per thread that uses it (it keeps no handle between calls, so it is cheap).
// Every call tries the endpoints in turn, starting with the last that answered, and gives
// up after `timeout_ms` per endpoint: UNAVAILABLE when none answers, INTERNAL when etcd
// answers with an error (its message included).
class Client {
 public:
  Client(Settings settings, unsigned timeout_ms);

  // Keys (no values) in [from, end), at most `limit` of them, in key order, at store
  // `revision` (0: the latest); *more: keys are left after these; *read_at: the revision read.
  // A reply over kMaxReplyBytes fails (INVALID_ARG).
  Status range_keys(const std::string& from, const std::string& end, int64_t limit,
                    int64_t revision, std::vector<KeyValue>* out, bool* more, int64_t* read_at);
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
  // post() with JSON both ways; an error etcd answers becomes INTERNAL with its message. With
  // a user, authenticates first, and again once when etcd says the token ran out.
  Status call(const char* path, const nlohmann::json& request, nlohmann::json* reply);
  Status call_once(const char* path, const nlohmann::json& request, nlohmann::json* reply);
  Status authenticate();
  // The URL of endpoint e's path; the options every request shares (TLS, the auth token).
  std::string url(size_t e, const char* path) const;
  void setup(void* curl, void* headers) const;

  // One endpoint's watch stream until a change, a break or wake().
  Status watch_at(const std::string& to, const std::string& body);

  Settings settings_;
  unsigned timeout_ms_;
  std::string token_;  // etcd's auth token (with a user), empty until authenticated
  size_t current_ = 0;  // the endpoint that answered last

  std::mutex wake_mu_;  // guards watching_ against wake()
  void* watching_ = nullptr;  // the CURLM handle of the watch in progress
  std::atomic<bool> woken_{false};
};

}  // namespace kvtier::etcd
