// Every KVTIER_* setting, in one struct, read by one parser (config.cpp). Each setting is
// declared (name, what it expects, setter: options.h) by its owner: the core's own in
// config.cpp, a backend's beside its factory (backends/memory, file, remote/client, remote/p2p).
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "options.h"
#include "status.h"

namespace kvtier {

enum class WritePolicy { kWriteThrough, kWriteBack };

// The file tier's folder when KVTIER_FILE_DIR is unset: one that is the user's own, not a
// world-writable one another user could prepare: $XDG_CACHE_HOME/kvtier, else
// $HOME/.cache/kvtier, else /var/tmp/kvtier-<uid> (refused if someone else made it).
std::string default_file_dir();

struct Config {
  // The core's (config.cpp).
  // KVTIER_TIERS: the tier chain, top first, e.g. "memory" or "memory,file".
  std::vector<std::string> tiers{"memory"};
  // KVTIER_WRITE_POLICY: write_through (every tier on write) | write_back (top tier; lower
  // tiers receive pages as the tier above evicts them).
  WritePolicy write_policy = WritePolicy::kWriteThrough;
  // KVTIER_NAMESPACE: keys of different namespaces never collide (model, TP rank, ...).
  std::string ns;
  // KVTIER_LOG_LEVEL: trace | debug | info | warn | error | critical | off.
  std::string log_level = "warn";
  // KVTIER_ASYNC_THREADS: worker threads of a handle's asynchronous requests (kvtier_submit_*),
  // started at its first submit.
  unsigned async_threads = 4;
  // KVTIER_ASYNC_DEPTH: requests a handle holds between their submit and their drain; past it
  // a submit answers KVTIER_ERR_BUSY.
  unsigned async_depth = 1024;
  // The memory tier's (backends/memory/memory_tier.cpp).
  // KVTIER_MEMORY_CAPACITY: bytes the memory tier may hold, e.g. 4GiB.
  uint64_t memory_capacity = 4ull << 30;
  // The file tier's (backends/file/options.cpp).
  // KVTIER_FILE_DIR: where the file tier keeps its page files (one folder per namespace).
  std::string file_dir = default_file_dir();
  // KVTIER_FILE_CAPACITY: bytes of pages the file tier may hold before it evicts.
  uint64_t file_capacity = 16ull << 30;
  // KVTIER_FILE_QUEUE_DEPTH: I/Os in flight per io_uring (1..4096).
  unsigned file_queue_depth = 32;
  // KVTIER_FILE_DIRECT: auto (O_DIRECT unless the filesystem refuses it) | off (page cache).
  bool file_direct = true;
  // KVTIER_FILE_COMPRESSION: none | zstd[:level] (level -7..19, default 1). A page is stored
  // compressed only when that saves at least 1/8 of it. 0 here means none.
  int file_zstd_level = 0;
  // KVTIER_FILE_SYNC: on (a page is visible only once fdatasync says it is durable) | off.
  bool file_sync = true;
  // KVTIER_FILE_LOCK_TIMEOUT_MS: the longest a call waits for another process on the folder
  // (its lock, a key it is writing, a clear); then the call fails with KVTIER_ERR_TIMEOUT.
  unsigned file_lock_timeout_ms = 2000;
  // The remote tier's (backends/remote/client/remote_tier.cpp).
  // KVTIER_REMOTE_SERVERS: kvtier-server addresses, host:port,... (keys spread by hashing).
  std::vector<std::string> remote_servers{"127.0.0.1:7471"};
  // KVTIER_REMOTE_ETCD: etcd endpoints, host:port (http) or http(s)://host:port,... When set, the servers are the live members
  // of KVTIER_REMOTE_CLUSTER registered there, followed as they join and leave, and
  // KVTIER_REMOTE_SERVERS is not used.
  std::vector<std::string> remote_etcd;
  // KVTIER_REMOTE_ETCD_USER, _PASSWORD: etcd's user authentication (empty: none).
  std::string remote_etcd_user, remote_etcd_password;
  // KVTIER_REMOTE_ETCD_CA_FILE: the CA an https:// etcd's certificate is checked against (empty:
  // the system's); KVTIER_REMOTE_ETCD_CERT_FILE, _KEY_FILE: a client certificate (PEM).
  std::string remote_etcd_ca_file, remote_etcd_cert_file, remote_etcd_key_file;
  // KVTIER_REMOTE_CLUSTER: the cluster's name in etcd (1..64 of [A-Za-z0-9_.-]).
  std::string remote_cluster = "default";
  // KVTIER_REMOTE_TRANSPORT: auto (RDMA when a device is present) | rdma | tcp.
  std::string remote_transport = "auto";
  // KVTIER_REMOTE_TIMEOUT_MS: a call to a dead or hung server fails within this.
  unsigned remote_timeout_ms = 2000;
  // KVTIER_REMOTE_TOKEN: presented to every server (which checks it when it has one).
  std::string remote_token;
  // KVTIER_REMOTE_REPLICAS: servers each page is written to (reads take the first answer).
  unsigned remote_replicas = 1;
  // KVTIER_REMOTE_RDMA_TOS: IP type of service (0..255) of RDMA connections (RoCE traffic
  // class, e.g. a lossless one); -1 (unset): the device's default.
  int remote_rdma_tos = -1;
  // The transfer endpoints' (backends/remote/p2p/p2p_options.cpp; kvtier_endpoint_open):
  // prefill -> decode straight between host pools.
  // KVTIER_P2P_LISTEN: host:port the endpoint listens on (port 0: a free one).
  std::string p2p_listen = "127.0.0.1:0";
  // KVTIER_P2P_TOKEN: peers present it to each other; both sides set the same.
  std::string p2p_token;
  // KVTIER_P2P_TRANSPORT: auto (RDMA when both hosts have a device) | rdma | tcp.
  std::string p2p_transport = "auto";
  // KVTIER_P2P_TIMEOUT_MS: a transfer to a dead or silent peer fails after this long without
  // progress (a healthy transfer may last longer).
  unsigned p2p_timeout_ms = 5000;
  // KVTIER_P2P_IDLE_TIMEOUT_MS: a peer's connection with no request for this long is closed
  // (the peer connects again at its next call).
  unsigned p2p_idle_timeout_ms = 60000;
  // KVTIER_P2P_MAX_PEERS: connections an endpoint serves at once, and connections it holds
  // before their HELLO (past that the oldest of those goes); past it a new peer is refused.
  unsigned p2p_max_peers = 1024;
  // KVTIER_P2P_ALLOW_NO_TOKEN: on lets an endpoint with no token listen beyond loopback (said
  // in the log); off (the default) refuses to open it.
  bool p2p_allow_no_token = false;
};

// Builds the config from the environment, then applies `overrides` ("NAME=value" pairs split by
// ';' or newlines; NAME with or without KVTIER_, any case; NULL for none). A set but invalid
// value fails with KVTIER_ERR_CONFIG naming the variable and the value. An unknown KVTIER_
// variable is a warning; an unknown name in `overrides` fails.
Status load_config(const char* overrides, Config* out);

// The library's options, registered once per owner at static initialisation (before any
// load_config): KVTIER_REGISTER_OPTIONS(memory, {...}) beside a tier's KVTIER_REGISTER_TIER.
bool register_options(const char* owner, std::vector<Option<Config>> options);
// Every registered option's name (without KVTIER_) and owner ("core", "memory", "file",
// "remote", "p2p"), in registration order.
std::vector<std::pair<std::string, std::string>> registered_options();

#define KVTIER_REGISTER_OPTIONS(owner, ...) \
  static const bool kvtier_options_##owner = ::kvtier::register_options(#owner, __VA_ARGS__)

}  // namespace kvtier
