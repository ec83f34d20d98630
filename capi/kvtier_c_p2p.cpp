// The C ABI's p2p calls: endpoints, peers and background page transfers between pools.
#include <kvtier/kvtier.h>

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "src/call_gate.h"
#include "src/config.h"
#include "capi/kvtier_c.h"
#include "src/layout.h"
#include "backends/remote/p2p/p2p.h"

struct kvtier_endpoint {
  std::unique_ptr<kvtier::p2p::Endpoint> rep;
};
struct kvtier_peer {
  std::unique_ptr<kvtier::p2p::Peer> rep;
  kvtier::CallGate calls;  // kvtier_peer_close waits for these (a background transfer's too)
};
// A transfer in the background: its own thread, an eventfd that turns readable at the end.
struct kvtier_transfer {
  std::vector<int64_t> local, remote;
  int status = 0;
  int fd = -1;
  std::atomic<bool> done{false};
  std::thread thread;
};

namespace {

using kvtier::Status;
using namespace kvtier::capi;

// REQUIRES: the caller has entered peer->calls.
int move_entered(bool write, kvtier_peer_t* peer, const int64_t* local, const int64_t* remote,
                 size_t n, int32_t layer, int* results) {
  std::fill(results, results + n, KVTIER_OK);
  auto& p = *peer->rep;
  Status s = write ? p.write_pages({local, n}, {remote, n}, layer, {results, n})
                   : p.read_pages({local, n}, {remote, n}, layer, {results, n});
  return s.is_ok() ? KVTIER_OK : fail(s);
}

Status check_move(kvtier_peer_t* peer, const int64_t* local, const int64_t* remote, size_t n,
                  const int* results) {
  if (!peer) return {KVTIER_ERR_INVALID_ARG, "peer is NULL"};
  if (!local || !remote || !results || n == 0 || n > kMaxBatch)
    return {KVTIER_ERR_INVALID_ARG,
            "page arrays or results NULL, or n is 0 or over " + std::to_string(kMaxBatch)};
  if (!peer->calls.enter()) return {KVTIER_ERR_CLOSED, "the peer is being closed"};
  return {};
}

int move_pages(bool write, kvtier_peer_t* peer, const int64_t* local, const int64_t* remote,
               size_t n, int32_t layer, int* results) {
  if (Status s = check_move(peer, local, remote, n, results); !s.is_ok())
    return refuse(results, n, s.code(), s.message());
  const int rc = move_entered(write, peer, local, remote, n, layer, results);
  peer->calls.leave();
  return rc;
}

int start_async(bool write, kvtier_peer_t* peer, const int64_t* local, const int64_t* remote,
                size_t n, int32_t layer, int* results, kvtier_transfer_t** out) {
  if (!out) return fail(KVTIER_ERR_INVALID_ARG, "out is NULL");
  *out = nullptr;
  // Entered here, left by the transfer's thread: a close meanwhile waits for it.
  if (Status s = check_move(peer, local, remote, n, results); !s.is_ok())
    return refuse(results, n, s.code(), s.message());
  auto t = std::make_unique<kvtier_transfer>();
  t->local.assign(local, local + n);
  t->remote.assign(remote, remote + n);
  t->fd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (t->fd < 0) {
    peer->calls.leave();
    return fail(KVTIER_ERR_NO_MEMORY, "eventfd failed");
  }
  kvtier_transfer* raw = t.get();
  raw->thread = std::thread([raw, write, peer, layer, results] {
    raw->status = guarded("kvtier_transfer", [&] {
      return move_entered(write, peer, raw->local.data(), raw->remote.data(), raw->local.size(),
                          layer, results);
    });
    // Done before leaving: a kvtier_peer_close that returns has every transfer seen done.
    raw->done.store(true, std::memory_order_release);
    const uint64_t one = 1;
    [[maybe_unused]] ssize_t w = ::write(raw->fd, &one, sizeof one);
    peer->calls.leave();
  });
  *out = t.release();
  return KVTIER_OK;
}

}  // namespace

extern "C" {

int kvtier_endpoint_open(const char* config, const kvtier_pool_layout_t* pool,
                         kvtier_endpoint_t** out) {
  return guarded("kvtier_endpoint_open", [&] {
    if (!out) return fail(KVTIER_ERR_INVALID_ARG, "out is NULL");
    *out = nullptr;
    if (!pool) return fail(KVTIER_ERR_INVALID_ARG, "pool is NULL");
    kvtier::Config cfg;
    if (Status s = kvtier::load_config(config, &cfg); !s.is_ok()) return fail(s);
    kvtier::PoolLayout l;
    if (Status s = to_layout(pool, &l); !s.is_ok()) return fail(s);
    auto ep = std::make_unique<kvtier_endpoint>();
    if (Status s = kvtier::p2p::Endpoint::open(cfg.section<kvtier::p2p::Options>(), l, &ep->rep);
        !s.is_ok())
      return fail(s);
    *out = ep.release();
    return KVTIER_OK;
  });
}

int kvtier_endpoint_address(const kvtier_endpoint_t* endpoint, char* buf, size_t capacity) {
  return guarded("kvtier_endpoint_address", [&] {
    if (!endpoint || !buf) return fail(KVTIER_ERR_INVALID_ARG, "endpoint or buf is NULL");
    const std::string& a = endpoint->rep->address();
    if (capacity < a.size() + 1)
      return fail(KVTIER_ERR_BUFFER_TOO_SMALL,
                  "the address needs " + std::to_string(a.size() + 1) + " bytes");
    std::memcpy(buf, a.c_str(), a.size() + 1);
    return KVTIER_OK;
  });
}

void kvtier_endpoint_close(kvtier_endpoint_t* endpoint) {
  guarded("kvtier_endpoint_close", [&] {
    delete endpoint;
    return KVTIER_OK;
  });
}

int kvtier_endpoint_layers_landed(const kvtier_endpoint_t* endpoint, const int64_t* pages, size_t n,
                                  uint64_t* layers) {
  return guarded("kvtier_endpoint_layers_landed", [&] {
    if (!endpoint || !pages || !layers || n == 0 || n > kMaxBatch)
      return fail(KVTIER_ERR_INVALID_ARG,
                  "NULL argument, or n is 0 or over " + std::to_string(kMaxBatch));
    Status s = endpoint->rep->landed({pages, n}, {layers, n});
    return s.is_ok() ? KVTIER_OK : fail(s);
  });
}

int kvtier_endpoint_connect(kvtier_endpoint_t* endpoint, const char* address, kvtier_peer_t** out) {
  return guarded("kvtier_endpoint_connect", [&] {
    if (!out) return fail(KVTIER_ERR_INVALID_ARG, "out is NULL");
    *out = nullptr;
    if (!endpoint || !address) return fail(KVTIER_ERR_INVALID_ARG, "endpoint or address is NULL");
    auto peer = std::make_unique<kvtier_peer>();
    if (Status s = endpoint->rep->connect(address, &peer->rep); !s.is_ok()) return fail(s);
    *out = peer.release();
    return KVTIER_OK;
  });
}

void kvtier_peer_close(kvtier_peer_t* peer) {
  guarded("kvtier_peer_close", [&] {
    if (!peer) return KVTIER_OK;
    // Calls in flight (blocking or in the background) end with CLOSED and are waited for.
    peer->calls.close([&] { peer->rep->cancel(); });
    delete peer;
    return KVTIER_OK;
  });
}

int kvtier_peer_connected(kvtier_peer_t* peer) {
  return peer && peer->rep->connected() ? 1 : 0;
}

int kvtier_peer_write_pages(kvtier_peer_t* peer, const int64_t* local_pages,
                            const int64_t* remote_pages, size_t n, int32_t layer, int* results) {
  return guarded("kvtier_peer_write_pages", [&] {
    return move_pages(true, peer, local_pages, remote_pages, n, layer, results);
  });
}

int kvtier_peer_read_pages(kvtier_peer_t* peer, const int64_t* local_pages,
                           const int64_t* remote_pages, size_t n, int32_t layer, int* results) {
  return guarded("kvtier_peer_read_pages", [&] {
    return move_pages(false, peer, local_pages, remote_pages, n, layer, results);
  });
}

int kvtier_peer_write_pages_async(kvtier_peer_t* peer, const int64_t* local_pages,
                                  const int64_t* remote_pages, size_t n, int32_t layer,
                                  int* results, kvtier_transfer_t** out) {
  return guarded("kvtier_peer_write_pages_async", [&] {
    return start_async(true, peer, local_pages, remote_pages, n, layer, results, out);
  });
}

int kvtier_peer_read_pages_async(kvtier_peer_t* peer, const int64_t* local_pages,
                                 const int64_t* remote_pages, size_t n, int32_t layer, int* results,
                                 kvtier_transfer_t** out) {
  return guarded("kvtier_peer_read_pages_async", [&] {
    return start_async(false, peer, local_pages, remote_pages, n, layer, results, out);
  });
}

int kvtier_transfer_fd(const kvtier_transfer_t* transfer) {
  return transfer ? transfer->fd : KVTIER_ERR_INVALID_ARG;
}

int kvtier_transfer_wait(kvtier_transfer_t* transfer, int timeout_ms, int* status) {
  return guarded("kvtier_transfer_wait", [&] {
    if (!transfer) return fail(KVTIER_ERR_INVALID_ARG, "transfer is NULL");
    pollfd p{transfer->fd, POLLIN, 0};
    while (!transfer->done.load(std::memory_order_acquire)) {
      int rc = ::poll(&p, 1, timeout_ms < 0 ? -1 : timeout_ms);
      if (rc == 0) return fail(KVTIER_ERR_TIMEOUT, "the transfer is still running");
      if (rc < 0 && errno != EINTR) return fail(KVTIER_ERR_INTERNAL, "poll on the transfer failed");
    }
    if (status) *status = transfer->status;
    return KVTIER_OK;
  });
}

void kvtier_transfer_free(kvtier_transfer_t* transfer) {
  guarded("kvtier_transfer_free", [&] {
    if (!transfer) return KVTIER_OK;
    if (transfer->thread.joinable()) transfer->thread.join();
    ::close(transfer->fd);
    delete transfer;
    return KVTIER_OK;
  });
}

}  // extern "C"
