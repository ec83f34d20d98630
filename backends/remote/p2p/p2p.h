// Prefill -> decode with no store in between: an endpoint owns one engine host pool and listens;
// a peer connection writes pages straight into the other endpoint's pool, or reads them from it,
// addressed by page (block) ids, whole or one layer at a time (layer-by-layer streaming while
// prefill still runs). Both pools must have the same page format (kind, order, dtype, dims);
// they may differ in size and address.
//
// Transports: RDMA one-sided WRITE/READ between the two registered pools where both hosts have a
// device (the remote tier's Listener and Channel: memory registered once, chains of work
// requests, several QPs); TCP otherwise, where the receiving side reads the socket straight into
// its pool's fragments (no staging copy).
//
//   P2P_HELLO  nonce (32), format hash u64, protocol u32 (3)
//                                                          -> nonce (32), endpoint id u64
//                                                             (random at each open), proof (32)
//   P2P_HELLO  proof (32)                                  -> pages u64, rdma port u32, ticket
//                                                             u64 (or ERROR: DENIED)
//              kvtier-server's handshake (wire/auth.h): the endpoint proves it holds the token
//              first and the peer checks that before it sends its own proof, so nothing goes
//              to an endpoint without the token and the token never crosses the wire. A peer
//              of protocol 1 or 2 (which sent the token itself) is refused, told why.
//   P2P_WRITE  layer i32, n u32, n x page u64, then the pages' bytes -> n x code i32 (staged)
//   P2P_COMMIT (empty)                                      -> n x code i32 (in the pool)
//   P2P_READ   layer i32, n u32, n x page u64  -> n x code i32, then the bytes of the pages
//                                                 whose code is 0
// The side that serves checks every page id against its pool and the layer against its layers;
// a peer touches only the pool the endpoint registered, and only after the token check. It is
// served as kvtier-server's clients are, by the remote backend's event loops (serve/), not a
// thread per connection: before HELLO a connection costs a HELLO-sized buffer and one timeout
// (at most max_peers of them, the oldest closed first), a frame once begun and each bulk
// transfer must move within the timeout, and a connection with no request for the idle timeout
// is closed (the peer connects again at its next call).
// A write lands in two steps so that no byte of it reaches the pool after the writer was told it
// failed: the receiver stages the bytes and says so, the writer (still in its call) sends COMMIT,
// and the receiver copies them into its pool only if COMMIT came within half the timeout of its
// answer and the writer has not hung up (the writer's own wait for that answer is the full
// timeout). Pages land whole or not at all.
#pragma once

#include <memory>
#include <span>
#include <string>

#include "src/layout.h"
#include "src/status.h"

namespace kvtier::p2p {

// The endpoint's settings (KVTIER_P2P_*), its section of the Config:
// config.section<p2p::Options>(), read by kvtier_endpoint_open. Registered in p2p_options.cpp.
struct Options {
  // KVTIER_P2P_LISTEN: host:port the endpoint listens on (port 0: a free one).
  std::string listen = "127.0.0.1:0";
  // KVTIER_P2P_TOKEN: peers present it to each other; both sides set the same (HELLO proves
  // each holds it).
  std::string token;
  // KVTIER_P2P_TRANSPORT: auto (RDMA when both hosts have a device) | rdma | tcp.
  std::string transport = "auto";
  // KVTIER_P2P_TIMEOUT_MS: a transfer to a dead or silent peer fails after this long without
  // progress (a healthy transfer may last longer).
  unsigned timeout_ms = 5000;
  // KVTIER_P2P_IDLE_TIMEOUT_MS: a peer's connection with no request for this long is closed
  // (the peer connects again at its next call).
  unsigned idle_timeout_ms = 60000;
  // KVTIER_P2P_MAX_PEERS: connections an endpoint serves at once, and connections it holds
  // before their HELLO (past that the oldest of those goes); past it a new peer is refused
  // (BUSY).
  unsigned max_peers = 1024;
  // KVTIER_P2P_ALLOW_NO_TOKEN: on lets an endpoint with no token listen beyond loopback (said
  // in the log); off (the default) refuses to open it.
  bool allow_no_token = false;
};

class Peer;
struct Shared;

class Endpoint {
 public:
  // `pool` must stay valid until the endpoint is closed. Starts listening at once. CONFIG: a
  // listen address beyond loopback with no token (unless allow_no_token).
  static Status open(const Options& options, const PoolLayout& pool,
                     std::unique_ptr<Endpoint>* out);
  // Stops listening, closes every connection, joins its threads; ends the calls in flight of
  // peers made from it and waits for them: after it, those peers refuse every call (CLOSED)
  // and the pool is never touched again.
  ~Endpoint();
  Endpoint(const Endpoint&) = delete;
  Endpoint& operator=(const Endpoint&) = delete;

  const std::string& address() const;  // host:port it listens on
  // The layers of each page that peers have written into this pool whole since it opened (a
  // whole-page write counts layer_num, a one-layer write 1): a page whose count rose by
  // layer_num since a transfer began has all its bytes here. Counts TCP writes (an RDMA write
  // is one-sided: its writer's results say). OUT_OF_RANGE: an id outside the pool.
  Status landed(std::span<const int64_t> pages, std::span<uint64_t> layers) const;
  // Connects to the endpoint at `address` (token and format checked on both sides).
  Status connect(const std::string& address, std::unique_ptr<Peer>* out);

 private:
  explicit Endpoint(std::shared_ptr<Shared> shared) : shared_(std::move(shared)) {}
  std::shared_ptr<Shared> shared_;
};

// One connection to a remote endpoint. Calls are thread-safe (one transfer at a time per peer);
// a failed connection is dropped and the next call connects again.
class Peer {
 public:
  ~Peer();
  // local[i] -> remote[i] (write) or remote[i] -> local[i] (read): page ids in each pool.
  // layer < 0: whole pages; else only that layer of each page. results[i]: 0 or a code
  // (OUT_OF_RANGE: an id outside its pool or a layer past the last, nothing moved for it;
  // UNAVAILABLE, TIMEOUT: the peer; CLOSED: this peer or its endpoint is closed). When a call
  // returns, nothing of it is still in flight: no byte lands in either pool afterwards.
  Status write_pages(std::span<const int64_t> local, std::span<const int64_t> remote, int32_t layer,
                     std::span<int> results);
  Status read_pages(std::span<const int64_t> local, std::span<const int64_t> remote, int32_t layer,
                    std::span<int> results);
  bool connected() const;
  const std::string& address() const;
  // Ends the call in flight (it fails with CLOSED) and refuses later ones: for a close that
  // waits for the calls on this peer to leave before it frees it.
  void cancel();

 private:
  friend class Endpoint;
  struct Impl;
  explicit Peer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvtier::p2p
