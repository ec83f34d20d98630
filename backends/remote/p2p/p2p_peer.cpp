// The p2p endpoint's calling side: a Peer connects to a remote endpoint and moves pages
// between the two pools, by RDMA where both hosts have it and by TCP otherwise.
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <vector>

#include "backends/remote/wire/auth.h"
#include "src/deadline_lock.h"
#include "src/log.h"
#include "backends/remote/wire/net.h"
#include "backends/remote/p2p/p2p_internal.h"
#include "backends/remote/wire/protocol.h"
#include "backends/remote/rdma/rdma.h"

namespace kvtier::p2p {

struct Peer::Impl {
  std::shared_ptr<Shared> local;
  std::string address, host;
  uint16_t port = 0;
  DeadlineLock mu;  // one transfer at a time on the connection; waiters give up at the deadline
  int fd = -1;      // set and closed by the call holding mu, under local->fds_mu (Shared::adopt_fd)
  std::atomic<bool> up{false};
  std::atomic<bool> cancelled{false};
  uint64_t remote_pages = 0;
  std::unique_ptr<rdma::Channel> channel;

  ~Impl() { drop(); }
  void drop() {
    local->close_fd(&fd);
    up = false;
    channel.reset();
  }
  // Why a call may not go on, if it may not: the peer or its endpoint closed.
  Status closed() const {
    if (cancelled) return {KVTIER_ERR_CLOSED, "the peer is closed"};
    if (local->calls.closing())
      return {KVTIER_ERR_CLOSED, "the endpoint this peer was made from is closed"};
    return {};
  }
  Status run_open(bool write, std::span<const int64_t> local_pages, std::span<const int64_t> remote,
                  int32_t layer, std::span<int> results);
  Status connect(Deadline dl);
  Status run(bool write, std::span<const int64_t> local_pages, std::span<const int64_t> remote,
             int32_t layer, std::span<int> results);
  Status tcp_chunk(bool write, const std::vector<size_t>& idx, const Request& req,
                   const std::vector<std::vector<Frag>>& local_frags, std::span<int> results,
                   net::Bound dl);
  Status rdma_batch(bool write, const std::vector<size_t>& idx, const Request& req,
                    const std::vector<std::vector<Frag>>& local_frags, Deadline dl);
};

Status Peer::Impl::connect(Deadline dl) {
  int made = -1;
  Status s = net::connect_to(host, port, dl, &made);
  if (!s.is_ok()) return s;
  local->adopt_fd(&fd, made);
  // The handshake (p2p.h, auth.h): the endpoint proves it holds the token before this side
  // sends its own proof or anything else.
  const wire::Nonce mine = wire::make_nonce();
  wire::Writer w;
  w.bytes(mine.data(), mine.size());
  w.u64(local->format);
  w.u32(kProtocol);
  std::vector<uint8_t> reply;
  s = wire::send_frame(fd, wire::kP2pHello, w.data(), {}, dl);
  if (s.is_ok())
    s = wire::read_frame(fd, wire::kP2pHello | wire::kReply, dl, &reply, nullptr,
                         wire::kNonceSize + 8 + wire::kProofSize);
  wire::Reader challenge(reply);
  wire::Nonce theirs{};
  wire::Proof proof{};
  const std::string nonce = challenge.str(theirs.size());
  const uint64_t endpoint_id = challenge.u64();
  const std::string proved = challenge.str(proof.size());
  if (s.is_ok() && !challenge.done()) s = {KVTIER_ERR_INVALID_ARG, "malformed HELLO reply"};
  if (s.is_ok()) {
    std::memcpy(theirs.data(), nonce.data(), theirs.size());
    std::memcpy(proof.data(), proved.data(), proof.size());
    if (!wire::same_proof(proof, wire::server_proof(local->opt.token, mine, theirs, endpoint_id)))
      s = {KVTIER_ERR_DENIED, "the endpoint at " + address + " did not prove it holds the token"};
  }
  if (s.is_ok()) {
    const wire::Proof ours = wire::client_proof(local->opt.token, mine, theirs);
    wire::Writer second;
    second.bytes(ours.data(), ours.size());
    s = wire::send_frame(fd, wire::kP2pHello, second.data(), {}, dl);
  }
  if (s.is_ok())
    s = wire::read_frame(fd, wire::kP2pHello | wire::kReply, dl, &reply, nullptr, 8 + 4 + 8);
  wire::Reader rd(reply);
  remote_pages = rd.u64();
  const uint32_t rdma_port = rd.u32();
  const uint64_t ticket = rd.u64();
  if (s.is_ok() && !rd.done()) s = {KVTIER_ERR_INVALID_ARG, "malformed HELLO reply"};
  if (s.is_ok() && rdma_port && local->rdma_registry && local->opt.transport != "tcp") {
    Status r = rdma::Channel::connect(host, static_cast<uint16_t>(rdma_port), ticket, -1,
                                      local->rdma_registry, dl, &channel);
    if (!r.is_ok() && local->opt.transport == "rdma") s = r;
    if (!r.is_ok())
      log().warn("p2p peer {}: RDMA connect failed, TCP instead: {}", address, r.message());
  }
  if (!s.is_ok()) drop();
  up = s.is_ok();
  return s;
}

Status Peer::Impl::tcp_chunk(bool write, const std::vector<size_t>& idx, const Request& req,
                             const std::vector<std::vector<Frag>>& local_frags,
                             std::span<int> results, net::Bound dl) {
  wire::Writer w;
  w.i32(req.layer);
  w.u32(static_cast<uint32_t>(req.pages.size()));
  for (uint64_t p : req.pages) w.u64(p);
  std::vector<iovec> iov;
  for (size_t i : idx) append_iov(local_frags[i], &iov);
  const uint16_t type = write ? wire::kP2pWrite : wire::kP2pRead;
  const uint32_t codes = static_cast<uint32_t>(4 * idx.size());
  Status s = wire::send_frame(fd, type, w.data(),
                              write ? std::span<const iovec>(iov) : std::span<const iovec>(), dl);
  std::vector<uint8_t> reply;
  if (s.is_ok()) s = wire::read_frame(fd, type | wire::kReply, dl, &reply, nullptr, codes);
  // A write: the peer has staged the bytes; they go into its pool only on COMMIT, sent while
  // this call still runs (p2p.h), and its answer says which pages did.
  if (s.is_ok() && write) s = closed();
  if (s.is_ok() && write) s = wire::send_frame(fd, wire::kP2pCommit, {}, {}, dl);
  if (s.is_ok() && write)
    s = wire::read_frame(fd, wire::kP2pCommit | wire::kReply, dl, &reply, nullptr, codes);
  if (!s.is_ok()) return s;
  wire::Reader rd(reply);
  std::vector<iovec> sink;  // a read: the pages the peer sends, straight into ours
  for (size_t i : idx) {
    results[i] = rd.i32();
    if (!write && results[i] == KVTIER_OK) append_iov(local_frags[i], &sink);
  }
  if (!rd.done()) return {KVTIER_ERR_INVALID_ARG, "malformed reply"};
  return write ? Status() : net::readv_all(fd, sink.data(), sink.size(), dl);
}

Status Peer::Impl::rdma_batch(bool write, const std::vector<size_t>& idx, const Request& req,
                              const std::vector<std::vector<Frag>>& local_frags, Deadline dl) {
  // Both pools have one format, so the i-th fragment of a page here has the size of the i-th
  // there; the remote side is addressed by offsets into the peer's pool.
  PoolLayout remote_pool = local->pool;
  remote_pool.base = nullptr;
  remote_pool.pool_tokens = remote_pages * remote_pool.page_size;
  std::vector<rdma::Transfer> transfers;
  std::vector<Frag> theirs;
  for (size_t k = 0; k < idx.size(); ++k) {
    theirs.clear();
    if (Status s = frags_of(remote_pool, static_cast<int64_t>(req.pages[k]), req.layer, &theirs);
        !s.is_ok())
      return s;
    const auto& mine = local_frags[idx[k]];
    for (size_t f = 0; f < theirs.size(); ++f)
      transfers.push_back(
          {Frags(&mine[f], 1), reinterpret_cast<uint64_t>(theirs[f].ptr), theirs[f].len});
  }
  return channel->run(write, transfers, dl);
}

Status Peer::Impl::run(bool write, std::span<const int64_t> local_pages,
                       std::span<const int64_t> remote, int32_t layer, std::span<int> results) {
  // The endpoint's pool is used only inside its gate: its close waits for this call.
  if (!local->calls.enter()) {
    std::fill(results.begin(), results.end(), KVTIER_ERR_CLOSED);
    return closed();
  }
  Status s = run_open(write, local_pages, remote, layer, results);
  local->calls.leave();
  return s;
}

Status Peer::Impl::run_open(bool write, std::span<const int64_t> local_pages,
                            std::span<const int64_t> remote, int32_t layer,
                            std::span<int> results) {
  const Deadline dl = local->deadline();
  std::unique_lock lock(mu, std::defer_lock);
  if (!lock.try_lock_until(dl)) {
    std::fill(results.begin(), results.end(), KVTIER_ERR_TIMEOUT);
    return {KVTIER_ERR_TIMEOUT, "the peer connection stayed busy past the deadline"};
  }
  Status gone = closed();
  // The endpoint closes a connection idle past its idle timeout: this call connects again.
  if (gone.is_ok() && fd >= 0 && net::peer_closed(fd)) drop();
  if (gone.is_ok() && fd < 0) gone = connect(dl);
  if (!gone.is_ok()) {
    std::fill(results.begin(), results.end(), gone.code());
    return gone;
  }
  // Every id checked on both pools first: a bad one fails its page alone, nothing moves for it.
  Status first;
  std::vector<std::vector<Frag>> local_frags(local_pages.size());
  std::vector<size_t> ok;
  PoolLayout remote_pool = local->pool;
  remote_pool.base = nullptr;
  remote_pool.pool_tokens = remote_pages * remote_pool.page_size;
  std::vector<Frag> scratch;
  for (size_t i = 0; i < local_pages.size(); ++i) {
    scratch.clear();
    Status s = frags_of(local->pool, local_pages[i], layer, &local_frags[i]);
    if (s.is_ok()) s = frags_of(remote_pool, remote[i], layer, &scratch);
    results[i] = s.code();
    if (s.is_ok()) {
      ok.push_back(i);
    } else if (first.is_ok()) {
      first = {s.code(), "page " + std::to_string(i) + ": " + s.message()};
    }
  }
  for (size_t at = 0; at < ok.size();) {
    // Up to kChunk pages and kChunkBytes (at least one page) per frame.
    std::vector<size_t> idx;
    for (size_t bytes = 0; at + idx.size() < ok.size() && idx.size() < kChunk;) {
      size_t page = 0;
      for (const Frag& f : local_frags[ok[at + idx.size()]]) page += f.len;
      if (!idx.empty() && bytes + page > kChunkBytes) break;
      bytes += page;
      idx.push_back(ok[at + idx.size()]);
    }
    Request req{layer, {}};
    for (size_t i : idx) req.pages.push_back(static_cast<uint64_t>(remote[i]));
    Status s = closed();
    // TCP waits bound silence (a long healthy transfer goes on); RDMA's wait is for the chunk.
    if (s.is_ok())
      s = channel ? rdma_batch(write, idx, req, local_frags, local->deadline())
                  : tcp_chunk(write, idx, req, local_frags, results, local->quiet());
    if (!s.is_ok()) {
      // The connection's state is unknown: drop it (an RDMA channel drains before it returns,
      // a TCP read stops here), fail what did not finish, reconnect on the next call.
      drop();
      if (Status c = closed(); !c.is_ok()) s = c;  // ended by a close, not by the peer
      for (size_t k = at; k < ok.size(); ++k) results[ok[k]] = s.code();
      return first.is_ok() ? s : first;
    }
    for (size_t i : idx) {
      if (channel) results[i] = KVTIER_OK;
      if (results[i] != KVTIER_OK && first.is_ok())
        first = {results[i],
                 "page " + std::to_string(i) +
                     (write ? ": not taken by the peer in time" : ": refused by the peer")};
    }
    at += idx.size();
  }
  return first;
}

Peer::Peer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Peer::~Peer() = default;

Status Peer::write_pages(std::span<const int64_t> local, std::span<const int64_t> remote,
                         int32_t layer, std::span<int> results) {
  return impl_->run(true, local, remote, layer, results);
}

Status Peer::read_pages(std::span<const int64_t> local, std::span<const int64_t> remote,
                        int32_t layer, std::span<int> results) {
  return impl_->run(false, local, remote, layer, results);
}

bool Peer::connected() const {
  return impl_->up && impl_->closed().is_ok();
}

void Peer::cancel() {
  impl_->cancelled = true;
  impl_->local->shut_fd(&impl_->fd);
}

const std::string& Peer::address() const {
  return impl_->address;
}

Status Endpoint::connect(const std::string& address, std::unique_ptr<Peer>* out) {
  auto impl = std::make_unique<Peer::Impl>();
  impl->local = shared_;
  impl->address = address;
  if (Status s = net::split_host_port(address, &impl->host, &impl->port); !s.is_ok()) return s;
  if (Status s = impl->connect(shared_->deadline()); !s.is_ok()) return s;
  out->reset(new Peer(std::move(impl)));
  return {};
}

}  // namespace kvtier::p2p
