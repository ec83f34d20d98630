// rdma.h for builds without libibverbs/librdmacm: no device, every RDMA call says UNSUPPORTED.
#include "backends/remote/rdma/rdma.h"

namespace kvtier::rdma {

namespace {
class NoRegistry final : public Registry {
 public:
  void add(const void*, size_t) override {}
  void remove(const void*) override {}
};
const Status kOff{KVTIER_ERR_UNSUPPORTED, "this build of kvtier has no RDMA transport"};
}  // namespace

bool available() {
  return false;
}
std::shared_ptr<Registry> Registry::create() {
  return std::make_shared<NoRegistry>();
}
Status Listener::start(const ListenOptions&, std::byte*, size_t, std::unique_ptr<Listener>*) {
  return kOff;
}
Status Channel::connect(const std::string&, uint16_t, uint64_t, int, std::shared_ptr<Registry>,
                        net::Deadline, std::unique_ptr<Channel>*) {
  return kOff;
}

}  // namespace kvtier::rdma
