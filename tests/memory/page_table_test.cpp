// The page table against a model (a map and a list), under a hash that puts every key in one of
// eight homes, so probe runs are long and deletion must shift entries back across them.
#include <gtest/gtest.h>

#include <algorithm>
#include <list>
#include <map>
#include <random>

#include "src/page_table.h"

namespace kvtier {
namespace {

struct EightHomes {
  size_t operator()(uint64_t k) const { return k % 8; }
};
using Table = PageTable<uint64_t, uint64_t, EightHomes>;

TEST(PageTable, MatchesAModelThroughCollisionsPinsAndReuse) {
  Table t;
  std::map<uint64_t, uint32_t> live;  // key -> entry
  std::list<uint64_t> lru;            // front = most recent
  std::map<uint32_t, int> pins;       // entry -> pins, unlinked ones included
  std::mt19937_64 rng(7);
  auto forget = [&](uint64_t k) { lru.remove(k); };
  for (int step = 0; step < 40000; ++step) {
    const uint64_t k = rng() % 3000;
    const uint32_t e = t.find(k);
    ASSERT_EQ(e, live.count(k) ? live[k] : Table::kNone) << "step " << step;
    switch (rng() % 5) {
      case 0:
      case 1:  // insert or touch
        if (e == Table::kNone) {
          const uint32_t n = t.insert(k, k * 3 + 1);
          ASSERT_EQ(t.page(n), k * 3 + 1);
          live[k] = n;
        } else {
          t.touch(e);
          forget(k);
        }
        lru.push_front(k);
        break;
      case 2:  // pin
        if (e != Table::kNone) t.pin(e), ++pins[e];
        break;
      case 3: {  // unlink (remove); freed at once unless pinned
        if (e == Table::kNone) break;
        t.pin(e);
        t.unlink(e);
        live.erase(k);
        forget(k);
        if (t.unpin(e)) {
          ASSERT_EQ(pins[e], 0);
          t.release(e);
        }
        break;
      }
      default: {  // unpin something pinned
        auto p = std::find_if(pins.begin(), pins.end(), [](auto& x) { return x.second > 0; });
        if (p == pins.end()) break;
        const bool linked =
            std::any_of(live.begin(), live.end(), [&](auto& x) { return x.second == p->first; });
        --p->second;
        const bool freed = t.unpin(p->first);
        ASSERT_EQ(freed, p->second == 0 && !linked);
        if (freed) t.release(p->first);
      }
    }
    ASSERT_EQ(t.size(), live.size());
  }
  // The LRU order, least recent first.
  std::vector<uint64_t> order;
  for (uint32_t e = t.lru_tail(); e != Table::kNone; e = t.more_recent(e))
    order.push_back(t.key(e));
  EXPECT_EQ(order, std::vector<uint64_t>(lru.rbegin(), lru.rend()));
  EXPECT_GT(live.size(), 500u) << "too few pages to have exercised long probe runs";
}

}  // namespace
}  // namespace kvtier
