// kvtier-server's arena alone (no sockets) against a model: slots handed out never overlap and
// add up to used(), eviction takes the least recently used unpinned pages and nothing else, and
// a pinned page's bytes survive its drop and every allocation until its last unpin.
#include "backends/remote/server/arena.h"

#include <gtest/gtest.h>

#include <cstring>
#include <list>
#include <map>
#include <random>
#include <tuple>
#include <vector>

#include "src/size_class.h"

namespace kvtier {
namespace {

using Key = Arena::Key;

Key key(uint64_t ns, uint64_t id) {
  return {ns, KeyId{0, id}};
}
struct Less {
  bool operator()(const Key& a, const Key& b) const {
    return std::tie(a.first, a.second.lo) < std::tie(b.first, b.second.lo);
  }
};

// The bytes a slot holds: a pattern from `seed`, so a slot reused under a pin shows.
void fill(std::byte* p, uint64_t len, uint64_t seed) {
  std::mt19937_64 g(seed);
  for (uint64_t i = 0; i < len; i += 8) {
    const uint64_t v = g();
    std::memcpy(p + i, &v, std::min<uint64_t>(8, len - i));
  }
}
bool holds(const std::byte* p, uint64_t len, uint64_t seed) {
  std::vector<std::byte> want(len);
  fill(want.data(), len, seed);
  return std::memcmp(p, want.data(), len) == 0;
}

struct Slot {
  uint64_t offset, size, length, seed;
};

TEST(ServerArena, MatchesAModelThroughPinsDropsAndEviction) {
  constexpr uint64_t kCapacity = 1 << 20;
  Arena arena(kCapacity, 42);
  ASSERT_TRUE(arena.map().is_ok());

  struct ModelPage {
    Key key;
    Slot slot;
    int pins = 0;
    bool linked = true;
  };
  std::map<uint32_t, ModelPage> pages;  // by the arena's page: linked, or unlinked and pinned
  std::map<Key, uint32_t, Less> live;   // key -> its linked page
  std::list<Key> lru;                   // front: the most recent
  std::vector<uint32_t> pins;           // one entry per pin held
  std::vector<Slot> unpublished;        // allocated, neither published nor freed
  uint64_t evictions = 0, dropped_unpins = 0;
  std::mt19937_64 rng(1234);

  auto forget_unpinned = [&](uint32_t page) {  // the arena released it: so does the model
    if (!pages[page].linked && pages[page].pins == 0) pages.erase(page);
  };
  auto unlink = [&](const Key& k) {
    const uint32_t page = live.at(k);
    live.erase(k);
    lru.remove(k);
    pages[page].linked = false;
    forget_unpinned(page);
  };
  auto check = [&](int step) {
    ASSERT_EQ(arena.pages(), live.size()) << "step " << step;
    std::map<uint64_t, uint64_t> held;  // offset -> size
    uint64_t used = 0;
    auto hold = [&](const Slot& s) {
      ASSERT_LE(s.offset + s.size, kCapacity);
      ASSERT_TRUE(held.emplace(s.offset, s.size).second) << "step " << step;
      used += s.size;
    };
    for (auto& [page, p] : pages) hold(p.slot);
    for (const Slot& s : unpublished) hold(s);
    ASSERT_EQ(arena.used(), used) << "step " << step;
    uint64_t end = 0;
    for (auto [offset, size] : held) {
      ASSERT_GE(offset, end) << "slots overlap at step " << step;
      end = offset + size;
    }
    for (auto& [k, page] : live) {
      ASSERT_EQ(arena.find(k), page) << "step " << step;
      ASSERT_EQ(arena.page(page).offset, pages[page].slot.offset);
    }
    ASSERT_EQ(arena.evictions(), evictions);
  };

  for (int step = 0; step < 20000; ++step) {
    const Key k = key(1 + rng() % 3, rng() % 48);
    switch (rng() % 8) {
      case 0:
      case 1: {  // allocate, evicting what it must
        const uint64_t len = 1 + rng() % (rng() % 8 ? 40000 : 200000);
        std::list<Key> unpinned;  // oldest first: the order eviction must take them in
        for (auto it = lru.rbegin(); it != lru.rend(); ++it)
          if (pages[live[*it]].pins == 0) unpinned.push_back(*it);
        Slot s{0, 0, len, rng()};
        const bool ok = arena.allocate(len, &s.offset, &s.size);
        size_t evicted = 0;
        while (!unpinned.empty() && !arena.has_page(unpinned.front())) {
          unlink(unpinned.front());
          unpinned.pop_front();
          ++evicted;
        }
        evictions += evicted;
        for (auto& [key, page] : live) ASSERT_TRUE(arena.has_page(key)) << "evicted out of order";
        if (!ok) {  // only when nothing unpinned is left to evict
          ASSERT_TRUE(unpinned.empty()) << "step " << step;
          break;
        }
        ASSERT_EQ(s.size, slot_size_for(len));
        fill(arena.base() + s.offset, len, s.seed);
        unpublished.push_back(s);
        break;
      }
      case 2: {  // publish (or give back, if the key has a page)
        if (unpublished.empty()) break;
        const size_t i = rng() % unpublished.size();
        const Slot s = unpublished[i];
        unpublished.erase(unpublished.begin() + static_cast<ptrdiff_t>(i));
        arena.publish(k, s.offset, s.size, s.length, s.seed);
        if (live.count(k)) break;  // the slot went back
        const uint32_t page = arena.find(k);
        ASSERT_NE(page, Arena::kNone);
        ASSERT_FALSE(pages.count(page)) << "a page still held was reused";
        pages[page] = {k, s};
        live[k] = page;
        lru.push_front(k);
        break;
      }
      case 3: {  // free an unpublished slot
        if (unpublished.empty()) break;
        const size_t i = rng() % unpublished.size();
        arena.free_slot(unpublished[i].offset, unpublished[i].size);
        unpublished.erase(unpublished.begin() + static_cast<ptrdiff_t>(i));
        break;
      }
      case 4: {  // pin (a GET reply, a LOOKUP lease)
        if (!live.count(k)) break;
        const uint32_t page = live[k];
        const Arena::Page& p = arena.pin(page);
        ASSERT_EQ(p.checksum, pages[page].slot.seed);
        ++pages[page].pins;
        pins.push_back(page);
        lru.remove(k);
        lru.push_front(k);
        break;
      }
      case 5: {  // unpin: the bytes were this page's all along
        if (pins.empty()) break;
        const size_t i = rng() % pins.size();
        const uint32_t page = pins[i];
        pins.erase(pins.begin() + static_cast<ptrdiff_t>(i));
        const Slot& s = pages[page].slot;
        ASSERT_TRUE(holds(arena.base() + s.offset, s.length, s.seed)) << "step " << step;
        dropped_unpins += !pages[page].linked;
        arena.unpin(page);
        --pages[page].pins;
        forget_unpinned(page);
        break;
      }
      case 6: {  // REMOVE
        if (!live.count(k)) break;
        arena.drop(live[k]);
        unlink(k);
        break;
      }
      case 7: {  // CLEAR, now and then
        if (rng() % 8) break;
        for (uint32_t page; (page = arena.any_page(k.first)) != Arena::kNone;) {
          ASSERT_EQ(arena.page(page).checksum, pages[page].slot.seed);
          ASSERT_EQ(pages[page].key.first, k.first);
          const Key gone = pages[page].key;
          arena.drop(page);
          unlink(gone);
        }
        for (auto& [key, page] : live) ASSERT_NE(key.first, k.first);
        break;
      }
    }
    check(step);
    if (HasFatalFailure()) return;
  }
  EXPECT_GT(evictions, 100u);     // the model saw eviction, not just an arena with room
  EXPECT_GT(dropped_unpins, 0u);  // and pages dropped while pinned, unpinned later
}

TEST(ServerArena, RefusesWhatCannotFitAndRemembersTheLargestPage) {
  Arena arena(1 << 20, 1);
  ASSERT_TRUE(arena.map().is_ok());
  uint64_t offset = 0, slot = 0;
  EXPECT_FALSE(arena.allocate((1 << 20) + 1, &offset, &slot));
  EXPECT_EQ(arena.used(), 0u);
  ASSERT_TRUE(arena.allocate(300000, &offset, &slot));
  EXPECT_EQ(arena.largest_page(), (1u << 20) + 1);
  arena.publish(key(1, 1), offset, slot, 300000, 0);
  const uint32_t page = arena.find(key(1, 1));
  ASSERT_NE(page, Arena::kNone);
  arena.pin(page);
  // Pinned, it is not evicted: a page that needs its room is refused.
  EXPECT_FALSE(arena.allocate(900000, &offset, &slot));
  EXPECT_TRUE(arena.has_page(key(1, 1)));
  arena.unpin(page);
  ASSERT_TRUE(arena.allocate(900000, &offset, &slot));
  EXPECT_FALSE(arena.has_page(key(1, 1)));
  EXPECT_EQ(arena.evictions(), 1u);
  EXPECT_EQ(arena.pages(), 0u);
}

}  // namespace
}  // namespace kvtier
