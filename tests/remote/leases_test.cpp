// kvtier-server's leases alone (no sockets), over a real arena: each lease ends exactly once
// (COMMIT, RELEASE, its connection's end, or its time), gives back what it held then, fences an
// ALLOC slot's client before its slot goes back, and a connection holds at most its cap.
#include "backends/remote/server/leases.h"

#include <gtest/gtest.h>

#include <map>
#include <random>
#include <set>
#include <vector>

namespace kvtier {
namespace {

using Clock = Leases::Clock;
using std::chrono::milliseconds;

Arena::Key key(uint64_t ns, uint64_t id) {
  return {ns, KeyId{0, id}};
}

struct ServerLeases : ::testing::Test {
  void SetUp() override { ASSERT_TRUE(arena.map().is_ok()); }
  // An ALLOC: a slot from the arena under a lease of `conn`'s, client `client`.
  uint64_t alloc(uint64_t conn, uint64_t id, uint64_t client, Clock::time_point expiry) {
    uint64_t offset = 0, slot = 0;
    EXPECT_TRUE(arena.allocate(4096, &offset, &slot));
    return leases.grant_alloc(conn, {key(1, id), offset, slot, 4096, 0, client}, expiry);
  }
  uint32_t publish(uint64_t id) {
    uint64_t offset = 0, slot = 0;
    EXPECT_TRUE(arena.allocate(4096, &offset, &slot));
    arena.publish(key(1, id), offset, slot, 4096, 0);
    return arena.find(key(1, id));
  }

  Arena arena{1 << 20, 7};
  std::vector<uint64_t> fenced;
  Leases leases{arena, 3, [this](uint64_t client) { fenced.push_back(client); }};
  const Clock::time_point t0 = Clock::now();
};

TEST_F(ServerLeases, AllocLeaseIsTakenByItsOwnConnectionOnly) {
  const uint64_t id = alloc(1, 10, 100, t0 + milliseconds(10));
  EXPECT_NE(id, 0u);
  EXPECT_EQ(leases.size(), 1u);
  Leases::Alloc slot{};
  EXPECT_FALSE(leases.take(2, id, &slot));  // another connection's lease
  EXPECT_FALSE(leases.release(1, id));      // RELEASE ends LOOKUP leases only
  ASSERT_TRUE(leases.take(1, id, &slot));
  EXPECT_EQ(slot.key, key(1, 10));
  EXPECT_EQ(slot.client, 100u);
  EXPECT_FALSE(leases.take(1, id, &slot));  // once
  EXPECT_EQ(leases.size(), 0u);
  EXPECT_EQ(arena.used(), slot.slot_size);  // the slot is the taker's now, not freed
  leases.expire(t0 + milliseconds(20));     // its queued end finds nothing to end
  EXPECT_EQ(leases.expired(), 0u);
  EXPECT_TRUE(fenced.empty());  // COMMIT does not fence: the client is done writing
  arena.free_slot(slot.offset, slot.slot_size);
  EXPECT_EQ(arena.used(), 0u);
}

TEST_F(ServerLeases, LeasesRunOutInOrderAndGiveBackWhatTheyHeld) {
  const uint32_t page = publish(1);
  const uint64_t used_by_page = arena.used();
  alloc(1, 10, 100, t0 + milliseconds(10));
  const uint64_t lookup = leases.grant_lookup(1, page, t0 + milliseconds(20));
  alloc(2, 11, 200, t0 + milliseconds(30));
  arena.drop(page);  // REMOVE while leased: the pin keeps its slot
  EXPECT_FALSE(arena.has_page(key(1, 1)));
  EXPECT_EQ(arena.used(), used_by_page + 2 * 4096);

  leases.expire(t0 + milliseconds(5));
  EXPECT_EQ(leases.size(), 3u);
  leases.expire(t0 + milliseconds(10));  // the first ALLOC: fenced, then freed
  EXPECT_EQ(leases.expired(), 1u);
  EXPECT_EQ(fenced, std::vector<uint64_t>{100});
  EXPECT_EQ(arena.used(), used_by_page + 4096);
  EXPECT_FALSE(leases.release(2, lookup));  // not connection 2's
  leases.expire(t0 + milliseconds(25));     // the LOOKUP: unpinned, the dropped page's slot goes
  EXPECT_EQ(leases.expired(), 2u);
  EXPECT_EQ(arena.used(), 4096u);
  EXPECT_FALSE(leases.release(1, lookup));  // ran out already
  leases.expire(t0 + milliseconds(1000));
  EXPECT_EQ(leases.expired(), 3u);
  EXPECT_EQ(fenced, (std::vector<uint64_t>{100, 200}));
  EXPECT_EQ(leases.size(), 0u);
  EXPECT_EQ(arena.used(), 0u);
}

TEST_F(ServerLeases, ReleaseAndConnectionEndEndOnlyTheirOwn) {
  const uint32_t page = publish(1);
  const uint64_t mine = leases.grant_lookup(1, page, t0 + milliseconds(10));
  const uint64_t theirs = leases.grant_lookup(2, page, t0 + milliseconds(10));
  alloc(2, 20, 200, t0 + milliseconds(10));
  arena.drop(page);
  const uint64_t held = arena.used();
  EXPECT_TRUE(leases.release(1, mine));
  EXPECT_FALSE(leases.release(1, mine));
  EXPECT_EQ(arena.used(), held);  // connection 2 still pins it
  leases.end_connection(1);       // holds nothing now: nothing changes
  EXPECT_EQ(leases.size(), 2u);
  leases.end_connection(2);
  EXPECT_EQ(leases.size(), 0u);
  EXPECT_EQ(arena.used(), 0u);
  EXPECT_EQ(fenced, std::vector<uint64_t>{200});
  EXPECT_FALSE(leases.release(2, theirs));
  leases.expire(t0 + milliseconds(100));  // ended early: none of them counts as run out
  EXPECT_EQ(leases.expired(), 0u);
}

TEST_F(ServerLeases, AConnectionHoldsAtMostItsCap) {
  const uint32_t page = publish(1);
  std::vector<uint64_t> ids;
  for (int i = 0; i < 3; ++i) {
    EXPECT_FALSE(leases.full(1));
    ids.push_back(i % 2 ? leases.grant_lookup(1, page, t0 + milliseconds(10))
                        : alloc(1, 30 + i, 100, t0 + milliseconds(10)));
  }
  EXPECT_TRUE(leases.full(1));
  EXPECT_FALSE(leases.full(2));                                      // the cap is per connection
  EXPECT_EQ(std::set<uint64_t>(ids.begin(), ids.end()).size(), 3u);  // ids are unique
  EXPECT_TRUE(leases.release(1, ids[1]));
  EXPECT_FALSE(leases.full(1));  // ending one makes room
  Leases::Alloc slot{};
  ASSERT_TRUE(leases.take(1, ids[0], &slot));
  arena.free_slot(slot.offset, slot.slot_size);
  leases.end_connection(1);
  EXPECT_FALSE(leases.full(1));
  EXPECT_EQ(leases.size(), 0u);
}

// Random grants and ends against a model: every lease ends once, and the arena gets back every
// slot and pin (used() returns to the published pages' slots).
TEST_F(ServerLeases, RandomLifeCyclesGiveBackEverything) {
  const uint32_t page = publish(1);
  const uint64_t base = arena.used();
  std::mt19937_64 rng(99);
  struct Held {
    uint64_t conn;
    bool alloc;
    int64_t end_ms;
  };
  std::map<uint64_t, Held> model;
  int64_t now_ms = 0;
  uint64_t expired = 0;
  for (int step = 0; step < 5000; ++step) {
    const uint64_t conn = 1 + rng() % 4;
    switch (rng() % 6) {
      case 0:
      case 1:
        if (leases.full(conn)) break;
        if (rng() % 2)
          model[alloc(conn, step, conn * 10, t0 + milliseconds(now_ms + 50))] = {conn, true,
                                                                                 now_ms + 50};
        else
          model[leases.grant_lookup(conn, page, t0 + milliseconds(now_ms + 50))] = {conn, false,
                                                                                    now_ms + 50};
        break;
      case 2: {  // COMMIT or RELEASE of a random lease, by a random connection
        if (model.empty()) break;
        auto it = std::next(model.begin(), static_cast<ptrdiff_t>(rng() % model.size()));
        Leases::Alloc slot{};
        const bool ok = it->second.alloc ? leases.take(conn, it->first, &slot)
                                         : leases.release(conn, it->first);
        ASSERT_EQ(ok, conn == it->second.conn);
        if (!ok) break;
        if (it->second.alloc) arena.free_slot(slot.offset, slot.slot_size);
        model.erase(it);
        break;
      }
      case 3:
        if (rng() % 16) break;
        leases.end_connection(conn);
        std::erase_if(model, [&](const auto& e) { return e.second.conn == conn; });
        break;
      default:
        now_ms += static_cast<int64_t>(rng() % 10);
        leases.expire(t0 + milliseconds(now_ms));
        expired += std::erase_if(model, [&](const auto& e) { return e.second.end_ms <= now_ms; });
        break;
    }
    ASSERT_EQ(leases.size(), model.size()) << "step " << step;
    ASSERT_EQ(leases.expired(), expired) << "step " << step;
  }
  for (uint64_t conn = 1; conn <= 4; ++conn) leases.end_connection(conn);
  EXPECT_EQ(leases.size(), 0u);
  EXPECT_EQ(arena.used(), base);
  arena.drop(page);
  EXPECT_EQ(arena.used(), 0u);  // no pin was left behind
}

}  // namespace
}  // namespace kvtier
