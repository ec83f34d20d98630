// placement: the keys a join or a leave of a server moves (remote3).
#include <memory>
#include <string>
#include <vector>

#include "bench/bench.h"

namespace kvtier_bench {

// ---- placement: the keys a join or a leave moves --------------------------------------------

// Which of `servers` holds each key, asked of each server alone; -1 for none.
std::vector<int> owners(const std::vector<std::string>& servers,
                        const std::vector<const char*>& ck) {
  std::vector<int> owner(ck.size(), -1);
  for (size_t s = 0; s < servers.size(); ++s) {
    kvtier_store_t* one = nullptr;
    check_rc(kvtier_open(("tiers=remote;remote_transport=tcp;remote_servers=" + servers[s]).c_str(),
                         &one),
             "open");
    std::vector<int> present(ck.size());
    check_rc(kvtier_batch_exists_each(one, ck.data(), ck.size(), present.data()), "exists");
    for (size_t i = 0; i < ck.size(); ++i)
      if (present[i] == KVTIER_OK) owner[i] = static_cast<int>(s);
    kvtier_close(one);
  }
  return owner;
}

// Keys written over three servers, then over four (a join) and over two (a leave), each time
// on real servers, and where each key landed: the fraction that moved, against rendezvous
// hashing's 1/N (the keys the joining server takes, or the leaving one held).
void run_placement() {
  constexpr size_t kKeys = 20000, kValue = 256;
  progress("placement: 20000 keys over 2, 3 and 4 servers");
  std::vector<std::unique_ptr<ServerChild>> children;
  std::vector<std::string> all;
  for (int i = 0; i < 4; ++i) {
    children.push_back(std::make_unique<ServerChild>(size_t{64} << 20));
    all.push_back(children.back()->address);
  }
  const auto keys = make_keys("placement", kKeys);
  const auto ck = c_keys(keys);
  std::vector<unsigned char> value(kValue, 0x5A);
  std::vector<const void*> ptrs(kKeys, value.data());
  std::vector<size_t> sizes(kKeys, kValue);
  std::vector<int> res(kKeys);
  auto place = [&](size_t n) {  // written over the first n servers; where each key is
    const std::vector<std::string> set(all.begin(), all.begin() + static_cast<ptrdiff_t>(n));
    std::string list;
    for (const auto& a : set) list += (list.empty() ? "" : ",") + a;
    kvtier_store_t* s = nullptr;
    check_rc(kvtier_open(("tiers=remote;remote_transport=tcp;remote_servers=" + list).c_str(), &s),
             "open");
    check_rc(kvtier_batch_set(s, ck.data(), kKeys, ptrs.data(), sizes.data(), res.data()), "set");
    for (int r : res)
      if (r != KVTIER_OK) die(std::string("placement set: ") + kvtier_error_name(r));
    auto owner = owners(all, ck);
    check_rc(kvtier_clear(s), "clear");
    kvtier_close(s);
    return owner;
  };
  const auto two = place(2), three = place(3), four = place(4);
  auto push = [&](const char* op, const std::vector<int>& before, const std::vector<int>& after,
                  int changed, double target) {
    size_t moved = 0, needless = 0;  // needless: moved between two servers that both stayed
    for (size_t i = 0; i < kKeys; ++i) {
      if (before[i] < 0 || after[i] < 0) die("placement: a key on no server");
      if (before[i] == after[i]) continue;
      ++moved;
      needless += before[i] != changed && after[i] != changed;
    }
    Row row;
    row.kind = "placement";
    row.op = op;
    row.batch = kKeys;
    row.fig.gbps = static_cast<double>(moved) / kKeys;
    row.speedup = static_cast<double>(needless) / kKeys;
    row.limit_gbps = target;
    row.limit_name = "1/N";
    g_rows.push_back(row);
  };
  push("join 3->4", three, four, 3, 1.0 / 4);
  push("leave 3->2", three, two, 2, 1.0 / 3);
}

}  // namespace kvtier_bench
