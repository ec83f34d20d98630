// Verbs helpers shared by the channel, the listener and the registry (verbs.h).
#include "backends/remote/rdma/verbs.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <mutex>

#include "src/log.h"

namespace kvtier::rdma {

bool available() {
  int n = 0;
  ibv_device** list = ibv_get_device_list(&n);
  if (list) ibv_free_device_list(list);
  return n > 0;
}

namespace verbs {

using net::Clock;
using net::Deadline;

Status sys_error(const std::string& what) {
  return {KVTIER_ERR_UNAVAILABLE, "RDMA: " + what + ": " + std::strerror(errno)};
}

// What the device (and `port` of it, when non-zero) allows.
Status query_caps(ibv_context* ctx, uint8_t port, DeviceCaps* caps) {
  ibv_device_attr a{};
  if (ibv_query_device(ctx, &a) != 0) return sys_error("ibv_query_device");
  *caps = {.max_sge = a.max_sge,
           .max_sge_rd = a.max_sge_rd,
           .max_qp_rd_atom = a.max_qp_rd_atom,
           .max_qp_init_rd_atom = a.max_qp_init_rd_atom,
           .max_msg_sz = 0,
           .iwarp = ctx->device->transport_type == IBV_TRANSPORT_IWARP};
  ibv_port_attr pa{};
  if (port && ibv_query_port(ctx, port, &pa) == 0) caps->max_msg_sz = pa.max_msg_sz;
  return {};
}

// Fork after registration corrupts registered memory on kernels before 5.13 (copy-on-write
// moves the parent's pages away from the NIC); ibv_fork_init marks registered memory
// MADV_DONTFORK. It must come before the process's first registration: when something else
// registered first it fails, and RDMAV_FORK_SAFE=1 in the environment is the way.
void fork_safety() {
  static std::once_flag once;
  std::call_once(once, [] {
    if (const int e = ibv_fork_init(); e != 0)
      log().warn("RDMA: ibv_fork_init: {}; set RDMAV_FORK_SAFE=1 if this process forks",
                 std::strerror(e));
  });
}

// RDMA_OPTION_ID_TOS on an id (before it resolves a route, or before it listens).
Status set_tos(rdma_cm_id* id, int tos) {
  if (tos < 0) return {};
  uint8_t t = static_cast<uint8_t>(tos);
  if (rdma_set_option(id, RDMA_OPTION_ID, RDMA_OPTION_ID_TOS, &t, sizeof t) != 0)
    return sys_error("rdma_set_option(TOS " + std::to_string(tos) + ")");
  return {};
}

// Moves a QP to the error state: what is queued is flushed and nothing more executes, in
// either direction (a responder in error answers no incoming WRITE or READ).
void to_error(ibv_qp* qp) {
  ibv_qp_attr a{.qp_state = IBV_QPS_ERR};
  if (ibv_modify_qp(qp, &a, IBV_QP_STATE) != 0)
    log().error("RDMA: moving a QP to the error state failed: {}", std::strerror(errno));
}

int ms_left(Deadline dl) {
  if (dl == Deadline::max()) return -1;
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(dl - Clock::now());
  return static_cast<int>(std::clamp<int64_t>(left.count(), 0, 1 << 30));
}

Status resolve(const std::string& host, uint16_t port, sockaddr_in* out) {
  addrinfo hints{}, *res = nullptr;
  hints.ai_family = AF_INET;
  if (getaddrinfo(host.c_str(), nullptr, &hints, &res) != 0 || !res)
    return {KVTIER_ERR_UNAVAILABLE, "RDMA: cannot resolve " + host};
  *out = *reinterpret_cast<sockaddr_in*>(res->ai_addr);
  out->sin_port = htons(port);
  freeaddrinfo(res);
  return {};
}

// Waits for the next event on `ec` and checks it is `want`; copies its private data.
Status wait_event(rdma_event_channel* ec, rdma_cm_event_type want, Deadline dl,
                  std::vector<uint8_t>* private_data) {
  for (;;) {
    pollfd p{ec->fd, POLLIN, 0};
    const int r = ::poll(&p, 1, ms_left(dl));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return sys_error("poll");
    if (r == 0) return {KVTIER_ERR_TIMEOUT, "RDMA: connection setup timed out"};
    rdma_cm_event* ev = nullptr;
    if (rdma_get_cm_event(ec, &ev) != 0) {
      if (errno == EAGAIN) continue;
      return sys_error("rdma_get_cm_event");
    }
    const rdma_cm_event_type type = ev->event;
    const int status = ev->status;
    if (private_data && ev->param.conn.private_data)
      private_data->assign(static_cast<const uint8_t*>(ev->param.conn.private_data),
                           static_cast<const uint8_t*>(ev->param.conn.private_data) +
                               ev->param.conn.private_data_len);
    rdma_ack_cm_event(ev);
    if (type == want) return {};
    return {KVTIER_ERR_UNAVAILABLE, std::string("RDMA: ") + rdma_event_str(type) + " (status " +
                                        std::to_string(status) + ")"};
  }
}

// Ends a connection: disconnect (a no-op if it never connected), then its QP and id.
void close_id(rdma_cm_id* id) {
  rdma_disconnect(id);
  if (id->qp) rdma_destroy_qp(id);
  rdma_destroy_id(id);
}

rdma_event_channel* make_event_channel() {
  rdma_event_channel* ec = rdma_create_event_channel();
  if (ec) fcntl(ec->fd, F_SETFL, fcntl(ec->fd, F_GETFL) | O_NONBLOCK);
  return ec;
}

}  // namespace verbs
}  // namespace kvtier::rdma
