#include <algorithm>

#include "rdma.h"

namespace kvtier::rdma {

Status make_plan(std::span<const Transfer> transfers, uint32_t max_sge, uint32_t qps,
                 uint32_t signal_every, const LkeyOf& lkey_of, Plan* plan) {
  plan->sges.clear();
  plan->wrs.clear();
  plan->chains.clear();
  if (max_sge == 0 || qps == 0 || signal_every == 0)
    return {KVTIER_ERR_INVALID_ARG, "RDMA plan: zero limit"};
  // One request per run of at most max_sge fragments; the remote side is contiguous.
  for (size_t t = 0; t < transfers.size(); ++t) {
    const Transfer& tr = transfers[t];
    size_t left = tr.len, done = 0;
    Wr wr{static_cast<uint32_t>(plan->sges.size()), 0, tr.remote, 0};
    for (const Frag& f : tr.local) {
      if (!left) break;
      const size_t n = std::min(left, f.len);
      uint32_t lkey = 0;
      if (!lkey_of(f.ptr, n, &lkey))
        return {KVTIER_ERR_NOT_REGISTERED, "RDMA: transfer " + std::to_string(t) +
                                               " has a fragment outside registered memory"};
      if (wr.num_sge == max_sge) {
        plan->wrs.push_back(wr);
        wr = {static_cast<uint32_t>(plan->sges.size()), 0, tr.remote + done, 0};
      }
      plan->sges.push_back({reinterpret_cast<uint64_t>(f.ptr), static_cast<uint32_t>(n), lkey});
      ++wr.num_sge;
      wr.len += n;
      done += n;
      left -= n;
    }
    if (left) return {KVTIER_ERR_INVALID_ARG, "RDMA: fragments shorter than the transfer"};
    if (wr.num_sge) plan->wrs.push_back(wr);
  }
  // Each QP takes a contiguous share of the requests, posted in chains of signal_every.
  const size_t n = plan->wrs.size();
  for (uint32_t q = 0; q < qps; ++q) {
    const size_t begin = n * q / qps, end = n * (q + 1) / qps;
    for (size_t i = begin; i < end; i += signal_every)
      plan->chains.push_back({q, static_cast<uint32_t>(i),
                              static_cast<uint32_t>(std::min<size_t>(signal_every, end - i))});
  }
  return {};
}

}  // namespace kvtier::rdma
