// Blocking TCP with deadlines: every call gives up at its deadline instead of hanging.
#pragma once

#include <sys/uio.h>

#include <chrono>
#include <string>

#include "status.h"

namespace kvtier::net {

using Clock = std::chrono::steady_clock;
using Deadline = Clock::time_point;  // Deadline::max(): wait forever

// "host:port" -> host, port. Only numeric or resolvable IPv4 hosts.
Status split_host_port(const std::string& text, std::string* host, uint16_t* port);
Status connect_to(const std::string& host, uint16_t port, Deadline deadline, int* fd);
Status listen_on(const std::string& host, uint16_t port, int* fd, uint16_t* bound_port);
// TCP_NODELAY, on both ends of every connection (connect_to sets it; an acceptor calls it):
// requests and replies are frames that must go at once, not wait behind Nagle for an ACK the
// peer delays (a stall of 40 ms, seen on p2p reads when the accepting end lacked it).
void no_delay(int fd);

// Move exactly `len` bytes (or the iovecs' total), or fail: UNAVAILABLE when the peer is gone,
// TIMEOUT at the deadline. writev_all/readv_all modify the iovec array.
Status write_all(int fd, const void* buf, size_t len, Deadline deadline);
Status read_all(int fd, void* buf, size_t len, Deadline deadline);
Status writev_all(int fd, iovec* iov, size_t n, Deadline deadline);
Status readv_all(int fd, iovec* iov, size_t n, Deadline deadline);
// Whether the peer has closed an idle connection (its FIN or RST is waiting): a pooled connection
// the server timed out is reconnected before use instead of failing the call.
bool peer_closed(int fd);

}  // namespace kvtier::net
