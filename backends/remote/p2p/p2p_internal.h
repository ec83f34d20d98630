// The p2p endpoint's state (Shared), its request and the page-fragment helpers that both the
// serving side (p2p_endpoint.cpp) and the calling side (p2p_peer.cpp) use.
#pragma once

#include <sys/uio.h>

#include <atomic>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "backends/remote/wire/auth.h"
#include "src/call_gate.h"
#include "backends/remote/serve/event_loop.h"
#include "backends/remote/wire/net.h"
#include "backends/remote/p2p/p2p.h"
#include "backends/remote/wire/protocol.h"
#include "backends/remote/rdma/rdma.h"

namespace kvtier::p2p {

using net::Clock;
using net::Deadline;

constexpr size_t kChunk = 1024;  // pages per frame
// Bytes per frame (one page may be more): a receiver stages a write's bytes before they go into
// its pool, so this bounds what one connection holds.
constexpr size_t kChunkBytes = size_t{16} << 20;
// The p2p protocol's version, sent in HELLO: 2 added COMMIT, 3 the handshake that proves the
// token both ways (p2p.h); a peer of another one is refused, never half understood (a
// protocol-1 writer would take the staged answer for done).
constexpr uint32_t kProtocol = 3;
// The first HELLO's payload: nonce, format hash, version.
constexpr uint32_t kHelloSize = wire::kNonceSize + 8 + 4;
// HELLO's largest payload read: an earlier protocol's (token length, token, format hash,
// version), so that its peer is told why it is refused.
constexpr uint32_t kMaxHello = 4 + wire::kMaxToken + 8 + 4;
// A request's largest payload: layer, count, kChunk page ids.
constexpr uint32_t kMaxRequest = 4 + 4 + 8 * kChunk;

// The fragments of page `page` (a page id, not a token slot) of `pool`: the whole page, or one
// layer of it. OUT_OF_RANGE for an id outside the pool or a layer past the last.
inline Status frags_of(const PoolLayout& pool, int64_t page, int32_t layer,
                       std::vector<Frag>* out) {
  const uint64_t pages = pool.pool_tokens / pool.page_size;
  if (page < 0 || static_cast<uint64_t>(page) >= pages)
    return {KVTIER_ERR_OUT_OF_RANGE,
            "page " + std::to_string(page) + " of a pool of " + std::to_string(pages) + " pages"};
  const int64_t slot = page * static_cast<int64_t>(pool.page_size);
  if (layer >= 0) return pool.layer_frags(slot, static_cast<uint64_t>(layer), out);
  const size_t at = out->size();
  out->resize(at + pool.frags_per_page());
  return pool.page_frags(slot, out->data() + at);
}

inline void append_iov(const std::vector<Frag>& frags, std::vector<iovec>* iov) {
  for (const Frag& f : frags) iov->push_back({f.ptr, f.len});
}

// A request's layer and page ids.
struct Request {
  int32_t layer = -1;
  std::vector<uint64_t> pages;
};

// The endpoint's state, shared with the peers made from it (which may outlive it).
struct Shared {
  Options opt;
  PoolLayout pool;
  uint64_t format = 0;
  uint64_t id = 0;  // random, new at each open: what the endpoint's HELLO proof is over
  std::string address;
  std::unique_ptr<rdma::Listener> rdma_listener;
  std::shared_ptr<rdma::Registry> rdma_registry;
  // The serving side: the remote backend's event loops (serve/event_loop.h) with the endpoint's
  // service on them (p2p_endpoint.cpp); both end with the endpoint.
  std::unique_ptr<serve::Service> service;
  std::unique_ptr<serve::Loops> loops;
  // The calls of peers made from this endpoint (they move bytes into or out of its pool): the
  // endpoint's close refuses new ones and waits for those in flight, after which no peer
  // touches the pool again.
  CallGate calls;
  // The connections those peers made, shut down by the endpoint's close to end their calls
  // at once. A peer opens and closes its fd only under fds_mu, so a shutdown never hits a
  // number already reused for something else.
  std::mutex fds_mu;
  std::set<int> peer_fds;
  // Per page of the pool: the layers peers have written into it whole (a whole page counts
  // layer_num), raised with release order once the bytes are in the pool (Endpoint::landed).
  std::unique_ptr<std::atomic<uint64_t>[]> landed;

  Deadline deadline() const { return Clock::now() + std::chrono::milliseconds(opt.timeout_ms); }
  // A transfer's bound: the timeout ends silence, not a transfer that keeps moving.
  net::Bound quiet() const {
    return net::Bound::silence(std::chrono::milliseconds(opt.timeout_ms));
  }
  // A peer's fd: set (*fd = from), closed (*fd = -1), shut down to end a call on it.
  void adopt_fd(int* fd, int from);
  void close_fd(int* fd);
  void shut_fd(const int* fd);
};

}  // namespace kvtier::p2p
