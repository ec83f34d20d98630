// The client's registered memory (engine host pools), per device (verbs.h).
#include <cerrno>
#include <cstring>

#include "src/log.h"
#include "backends/remote/rdma/verbs.h"

namespace kvtier::rdma {

std::shared_ptr<Registry> Registry::create() {
  return std::make_shared<verbs::RegistryImpl>();
}

namespace verbs {

RegistryImpl::~RegistryImpl() {
  for (auto& [ctx, dev] : devs_) {
    for (auto& [start, mr] : dev.mrs) ibv_dereg_mr(mr);
    ibv_dealloc_pd(dev.pd);
  }
}

void RegistryImpl::add(const void* addr, size_t len) {
  std::unique_lock lock(mu_);
  regions_[reinterpret_cast<uintptr_t>(addr)] = len;
  for (auto& [ctx, dev] : devs_) reg(dev, addr, len);
}

void RegistryImpl::remove(const void* addr) {
  std::unique_lock lock(mu_);
  const auto start = reinterpret_cast<uintptr_t>(addr);
  regions_.erase(start);
  for (auto& [ctx, dev] : devs_) {
    auto it = dev.mrs.find(start);
    if (it == dev.mrs.end()) continue;
    ibv_dereg_mr(it->second);
    dev.mrs.erase(it);
  }
}

ibv_pd* RegistryImpl::pd_for(ibv_context* ctx) {
  std::unique_lock lock(mu_);
  auto it = devs_.find(ctx);
  if (it != devs_.end()) return it->second.pd;
  fork_safety();  // before this process's first registration
  Dev dev{ibv_alloc_pd(ctx), sink_access(ctx->device->transport_type == IBV_TRANSPORT_IWARP), {}};
  if (!dev.pd) return nullptr;
  for (auto& [start, len] : regions_) reg(dev, reinterpret_cast<void*>(start), len);
  return devs_.emplace(ctx, std::move(dev)).first->second.pd;
}

bool RegistryImpl::lkey(ibv_context* ctx, const std::byte* p, size_t len, uint32_t* out) const {
  std::shared_lock lock(mu_);
  auto d = devs_.find(ctx);
  if (d == devs_.end()) return false;
  const auto a = reinterpret_cast<uintptr_t>(p);
  auto it = d->second.mrs.upper_bound(a);
  if (it == d->second.mrs.begin()) return false;
  --it;
  if (a + len > it->first + it->second->length) return false;
  *out = it->second->lkey;
  return true;
}

void RegistryImpl::reg(Dev& dev, const void* addr, size_t len) {
  ibv_mr* mr = ibv_reg_mr(dev.pd, const_cast<void*>(addr), len, dev.access);
  if (!mr) {  // its fragments take the staging path instead
    log().warn("RDMA: cannot register {} bytes at {} ({}; RLIMIT_MEMLOCK?); they will be staged",
               len, addr, std::strerror(errno));
    return;
  }
  dev.mrs[reinterpret_cast<uintptr_t>(addr)] = mr;
}

}  // namespace verbs
}  // namespace kvtier::rdma
