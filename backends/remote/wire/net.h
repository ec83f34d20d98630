// Blocking TCP with deadlines: every call gives up at its deadline instead of hanging.
#pragma once

#include <sys/uio.h>

#include <chrono>
#include <string>

#include "src/status.h"

namespace kvtier::net {

using Clock = std::chrono::steady_clock;
using Deadline = Clock::time_point;  // Deadline::max(): wait forever

// How long a move of bytes may wait: until a deadline, or (quiet set) while the peer is silent:
// each call then ends `quiet` after its last progress, however long a healthy transfer lasts.
struct Bound {
  Deadline at;
  Clock::duration quiet{};
  Bound(Deadline deadline) : at(deadline) {}  // NOLINT: a deadline is a bound
  static Bound silence(Clock::duration quiet) {
    Bound b(Clock::now() + quiet);
    b.quiet = quiet;
    return b;
  }
};

// "host:port" -> host, port. Only numeric or resolvable IPv4 hosts.
Status split_host_port(const std::string& text, std::string* host, uint16_t* port);
Status connect_to(const std::string& host, uint16_t port, Deadline deadline, int* fd);
Status listen_on(const std::string& host, uint16_t port, int* fd, uint16_t* bound_port);
// TCP_NODELAY, on both ends of every connection (connect_to sets it; an acceptor calls it):
// requests and replies are frames that must go at once, not wait behind Nagle for an ACK the
// peer delays (a stall of 40 ms, seen on p2p reads when the accepting end lacked it).
void no_delay(int fd);

// Move exactly `len` bytes (or the iovecs' total), or fail: UNAVAILABLE when the peer is gone,
// TIMEOUT at the bound. writev_all/readv_all modify the iovec array.
Status write_all(int fd, const void* buf, size_t len, Bound bound);
Status read_all(int fd, void* buf, size_t len, Bound bound);
Status writev_all(int fd, iovec* iov, size_t n, Bound bound);
Status readv_all(int fd, iovec* iov, size_t n, Bound bound);
// Whether `host` (numeric or resolvable IPv4) is a loopback address (127.0.0.0/8).
bool is_loopback(const std::string& host);
// Bytes this end sent that the peer has not acknowledged yet (SIOCOUTQ): their fall is
// progress too, while a send buffer of megabytes drains slowly before it takes more.
int unacked(int fd);
// Whether the peer has closed an idle connection (its FIN or RST is waiting): a pooled connection
// the server timed out is reconnected before use instead of failing the call.
bool peer_closed(int fd);

}  // namespace kvtier::net
