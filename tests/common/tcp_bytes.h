// Bytes this process moved over its TCP connections to some ports, from the kernel's own counts
// (TCP_INFO): what a test asserts a call did not send or receive.
#pragma once

#include <arpa/inet.h>
#include <linux/tcp.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <set>

namespace kvtier_test {

// Bytes sent and acknowledged, bytes received, and the sockets (by inode) they were counted on:
// two counts compare while no socket has closed (a closed one takes its count with it).
struct Traffic {
  uint64_t sent = 0, received = 0;
  std::set<ino_t> sockets;
  // Whether every socket of `before` is still here, so that this minus `before` is what moved.
  bool continues(const Traffic& before) const {
    for (ino_t s : before.sockets)
      if (!sockets.count(s)) return false;
    return true;
  }
};

inline Traffic traffic_to(const std::set<uint16_t>& ports) {
  Traffic out;
  for (const auto& e : std::filesystem::directory_iterator("/proc/self/fd")) {
    const int fd = std::atoi(e.path().filename().c_str());
    sockaddr_storage peer{};
    socklen_t len = sizeof peer;
    if (getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &len) != 0) continue;
    uint16_t port = 0;
    if (peer.ss_family == AF_INET) port = ntohs(reinterpret_cast<sockaddr_in*>(&peer)->sin_port);
    if (peer.ss_family == AF_INET6) port = ntohs(reinterpret_cast<sockaddr_in6*>(&peer)->sin6_port);
    if (!ports.count(port)) continue;
    tcp_info info{};
    socklen_t ilen = sizeof info;
    struct stat st{};
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &ilen) != 0 || fstat(fd, &st) != 0) continue;
    out.sent += info.tcpi_bytes_acked;
    out.received += info.tcpi_bytes_received;
    out.sockets.insert(st.st_ino);
  }
  return out;
}

}  // namespace kvtier_test
