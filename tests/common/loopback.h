// TCP on loopback for the tests that play a peer, a relay or a rogue server themselves: connect,
// listen, and the port of an "ip:port" address.
#pragma once

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <string>

namespace kvtier_test {

inline sockaddr_in loopback(uint16_t port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return a;
}

// A TCP socket whose send and receive buffers are `buffers` bytes (0: the system's), as a slow
// link's are in effect.
inline int tcp_socket(int flags = 0, int buffers = 0) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | flags, 0);
  if (fd >= 0 && buffers > 0) {
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buffers, sizeof buffers);
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &buffers, sizeof buffers);
  }
  return fd;
}

// A socket connected to 127.0.0.1:port (the connect is checked).
inline int loopback_connect(uint16_t port, int buffers = 0) {
  const int fd = tcp_socket(0, buffers);
  const sockaddr_in to = loopback(port);
  EXPECT_EQ(connect(fd, reinterpret_cast<const sockaddr*>(&to), sizeof to), 0);
  return fd;
}

// A connection to 127.0.0.1:port, not waited for (the server may leave it in its listen queue).
inline int connect_nowait(uint16_t port) {
  const int fd = tcp_socket(SOCK_NONBLOCK);
  const sockaddr_in to = loopback(port);
  connect(fd, reinterpret_cast<const sockaddr*>(&to), sizeof to);
  return fd;
}

// A socket listening on a free loopback port, its port in *port; -1 if it cannot listen. The
// connections it accepts have buffers of `buffers` bytes (0: the system's).
inline int listen_loopback(uint16_t* port, int backlog = 16, int buffers = 0) {
  const int fd = tcp_socket(0, buffers);
  sockaddr_in a = loopback(0);
  socklen_t len = sizeof a;
  if (fd < 0 || bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
      listen(fd, backlog) != 0 || getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    if (fd >= 0) close(fd);
    return -1;
  }
  *port = ntohs(a.sin_port);
  return fd;
}

// The port of an "ip:port" address.
inline uint16_t port_of(const std::string& addr) {
  return static_cast<uint16_t>(std::stoi(addr.substr(addr.rfind(':') + 1)));
}

inline std::string loopback_address(uint16_t port) {
  return "127.0.0.1:" + std::to_string(port);
}

}  // namespace kvtier_test
