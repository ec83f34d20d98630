// The remote tier's settings (KVTIER_REMOTE_*), its section of the Config:
// config.section<RemoteOptions>(). Registered in remote_tier.cpp.
#pragma once

#include <string>
#include <vector>

namespace kvtier {

struct RemoteOptions {
  // KVTIER_REMOTE_SERVERS: kvtier-server addresses, host:port,... (keys spread by hashing).
  std::vector<std::string> servers{"127.0.0.1:7471"};
  // KVTIER_REMOTE_ETCD: etcd endpoints, host:port (http) or http(s)://host:port,... When set,
  // the servers are the live members of KVTIER_REMOTE_CLUSTER registered there, followed as
  // they join and leave, and KVTIER_REMOTE_SERVERS is not used.
  std::vector<std::string> etcd;
  // KVTIER_REMOTE_ETCD_USER, _PASSWORD: etcd's user authentication (empty: none).
  std::string etcd_user, etcd_password;
  // KVTIER_REMOTE_ETCD_CA_FILE: the CA an https:// etcd's certificate is checked against (empty:
  // the system's); KVTIER_REMOTE_ETCD_CERT_FILE, _KEY_FILE: a client certificate (PEM).
  std::string etcd_ca_file, etcd_cert_file, etcd_key_file;
  // KVTIER_REMOTE_CLUSTER: the cluster's name in etcd (1..64 of [A-Za-z0-9_.-]).
  std::string cluster = "default";
  // KVTIER_REMOTE_TRANSPORT: auto (RDMA when a device is present) | rdma | tcp.
  std::string transport = "auto";
  // KVTIER_REMOTE_TIMEOUT_MS: a call to a dead or hung server fails within this.
  unsigned timeout_ms = 2000;
  // KVTIER_REMOTE_TOKEN: presented to every server (which checks it when it has one).
  std::string token;
  // KVTIER_REMOTE_REPLICAS: servers each page is written to (reads take the first answer).
  unsigned replicas = 1;
  // KVTIER_REMOTE_RDMA_TOS: IP type of service (0..255) of RDMA connections (RoCE traffic
  // class, e.g. a lossless one); -1 (unset): the device's default.
  int rdma_tos = -1;
};

}  // namespace kvtier
