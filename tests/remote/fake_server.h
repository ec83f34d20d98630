// kvtier-servers in name only, for the tests of what a server may make a client do: a child
// process that proves the token (or not) and answers every GET with values claimed longer than
// their bytes.
#pragma once

#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <string>
#include <thread>
#include <vector>

#include "tests/common/loopback.h"
#include "tests/common/raw_client.h"

namespace kvtier_test {

// A kvtier-server in name, a child listening on loopback (its port in *port): it answers the
// HELLO handshake proving `token`, every GET with each value found and claimed `claim` bytes long
// (bytes that never come), a PUT or a REMOVE with success (after a PUT it cuts the line). Returns
// its pid, -1 if it cannot listen.
inline pid_t fake_server(const std::string& token, uint64_t claim, uint16_t* port) {
  const int lfd = listen_loopback(port, 64);
  if (lfd < 0) return -1;
  const pid_t pid = fork();
  if (pid != 0) {
    close(lfd);
    return pid;
  }
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  for (;;) {
    const int fd = accept(lfd, nullptr, nullptr);
    if (fd < 0) _exit(1);
    std::thread([fd, token, claim] {
      std::vector<uint8_t> client_nonce, server_nonce(32, 0x5A);
      for (;;) {
        uint8_t h[16];
        if (recv_all(fd, h, 16) != 16) break;
        const auto type = static_cast<uint16_t>(Ctl::get({h, h + 16}, 6, 2));
        const uint64_t length = Ctl::get({h, h + 16}, 8, 4);
        if (length > (1u << 20)) break;
        std::vector<uint8_t> payload(length);
        if (length && recv_all(fd, payload.data(), length) != static_cast<ssize_t>(length)) break;
        std::vector<uint8_t> reply;
        if (type == 1 && client_nonce.empty()) {  // HELLO: a nonce, an id, a proof
          client_nonce = payload;
          reply = server_nonce;
          std::vector<uint8_t> id;
          Ctl::put(id, 0x0dd, 8);
          reply.insert(reply.end(), id.begin(), id.end());
          const auto proof = hello_proof(token, "kvtier server", client_nonce, server_nonce, id);
          reply.insert(reply.end(), proof.begin(), proof.end());
        } else if (type == 4) {  // GET: every key found, `claim` bytes long
          const uint64_t n = Ctl::get(payload, 0, 4);
          Ctl::put(reply, n, 4);
          for (uint64_t i = 0; i < n; ++i) {
            Ctl::put(reply, 0, 4);
            Ctl::put(reply, claim, 8);
            Ctl::put(reply, 0, 8);
          }
        } else if (type == 3 || type == 5) {  // PUT, REMOVE: a code per key, all fine
          const uint64_t n = Ctl::get(payload, 0, 4);
          Ctl::put(reply, n, 4);
          for (uint64_t i = 0; i < n; ++i) Ctl::put(reply, 0, 4);
          if (type == 3) break;  // the values' bytes would follow: not read, the line is cut
        }
        const auto f = Ctl::frame(static_cast<uint16_t>(type | 0x80), reply);
        if (send(fd, f.data(), f.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(f.size())) break;
      }
      close(fd);
    }).detach();
  }
}

}  // namespace kvtier_test
