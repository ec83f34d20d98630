// The verbs helpers the client's channel (channel.cpp), the server's listener (listener.cpp)
// and the registry (registry.cpp) share: the handshake's private data, device queries, rdma_cm
// events and teardown. Internal to rdma/; the interface is rdma.h.
#pragma once

#include <infiniband/verbs.h>
#include <netinet/in.h>
#include <rdma/rdma_cma.h>

#include <map>
#include <memory>
#include <shared_mutex>
#include <string>
#include <vector>

#include "backends/remote/rdma/rdma.h"

// Verbs attribute structs are filled with designated initialisers, the rest zero by the
// language; GCC 12 still warns about every member left out, which is the point here.
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"

namespace kvtier::rdma::verbs {

Status sys_error(const std::string& what);

// Private data of the connection handshake.
struct ConnectData {  // client -> server
  uint64_t ticket;
};
struct AcceptData {  // server -> client
  uint64_t arena_addr;
  uint64_t arena_bytes;
  uint32_t rkey;
  uint32_t max_msg_sz;  // of the server's port (0 from servers before it was sent)
};

// Access flags as a plain int: ibv_reg_mr is a macro that ANDs them with a flag of another enum
// type, which clang rejects for enum operands.
constexpr int kArenaAccess =
    IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ;
static_assert(IBV_ACCESS_LOCAL_WRITE == 1 && IBV_ACCESS_REMOTE_WRITE == 2,
              "sink_access (rdma_plan.cpp) spells these values out");

// What the device (and `port` of it, when non-zero) allows.
Status query_caps(ibv_context* ctx, uint8_t port, DeviceCaps* caps);
// ibv_fork_init once, before the process's first registration (verbs.cpp says why).
void fork_safety();
// RDMA_OPTION_ID_TOS on an id (before it resolves a route, or before it listens); -1: none.
Status set_tos(rdma_cm_id* id, int tos);
// Moves a QP to the error state: what is queued is flushed and nothing more executes, in
// either direction (a responder in error answers no incoming WRITE or READ).
void to_error(ibv_qp* qp);
// Milliseconds to the deadline for poll(): -1 for Deadline::max(), else 0..2^30.
int ms_left(net::Deadline dl);
Status resolve(const std::string& host, uint16_t port, sockaddr_in* out);
// Waits for the next event on `ec` and checks it is `want`; copies its private data.
Status wait_event(rdma_event_channel* ec, rdma_cm_event_type want, net::Deadline dl,
                  std::vector<uint8_t>* private_data = nullptr);
// Ends a connection: disconnect (a no-op if it never connected), then its QP and id.
void close_id(rdma_cm_id* id);
// A non-blocking event channel, or NULL.
rdma_event_channel* make_event_channel();

// The caller's memory registered with every device a channel uses: a protection domain per
// device, made on first use, with every region registered there. Thread-safe.
class RegistryImpl final : public Registry {
 public:
  ~RegistryImpl() override;
  void add(const void* addr, size_t len) override;
  void remove(const void* addr) override;
  // The protection domain for a device (NULL if none can be made).
  ibv_pd* pd_for(ibv_context* ctx);
  // The lkey of the region holding [p, p + len) on that device; false if none does.
  bool lkey(ibv_context* ctx, const std::byte* p, size_t len, uint32_t* out) const;

 private:
  struct Dev {
    ibv_pd* pd;
    int access;                        // sink_access for the device's transport
    std::map<uintptr_t, ibv_mr*> mrs;  // region start -> MR
  };
  static void reg(Dev& dev, const void* addr, size_t len);

  mutable std::shared_mutex mu_;
  std::map<uintptr_t, size_t> regions_;
  std::map<ibv_context*, Dev> devs_;
};

}  // namespace kvtier::rdma::verbs
