// The shared index's slot life-cycle (free -> reserved -> live -> free, eviction, dead-writer
// reclaim, the rebuild's placement) driven with no disk: an index of this process in memory,
// page files in memory (MemFiles), and random sequences checked step by step against a model.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <list>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <utility>
#include <vector>

#include "backends/file/shared_index.h"

namespace {

using kvtier::FoundSlot;
using kvtier::KeyId;
using kvtier::kNil;
using kvtier::Node;
using kvtier::SharedIndex;
using Key = std::pair<uint64_t, uint64_t>;
using SlotId = std::pair<uint64_t, uint64_t>;  // slot size, slot

constexpr uint64_t kPage = 4096;

KeyId id_of(Key k) {
  return {k.first, k.second};
}

// Page files in memory: how many slots each class's files have, a disk of `disk_left` bytes,
// and every record zeroed, in order.
class MemFiles final : public kvtier::SlotFiles {
 public:
  bool clear_record(uint64_t slot_size, uint64_t slot) override {
    EXPECT_LT(slot, file_slots[slot_size]) << "a record past the files";
    cleared.push_back({slot_size, slot});
    return true;
  }
  int extend(uint64_t slot_size, uint64_t slots, uint64_t bytes, uint64_t* added) override {
    EXPECT_EQ(slots, file_slots[slot_size]) << "the index and the files disagree on their size";
    if (slot_size > disk_left) return ENOSPC;
    uint64_t grow = std::max<uint64_t>(1, bytes / slot_size);
    if (grow * slot_size > disk_left) grow = 1;
    disk_left -= grow * slot_size;
    file_slots[slot_size] += grow;
    *added = grow;
    return 0;
  }
  uint64_t disk_left = UINT64_MAX;
  std::map<uint64_t, uint64_t> file_slots;
  std::vector<SlotId> cleared;
};

// A pid that is gone (a child, reaped): what a writer killed mid-write leaves as owner.
int32_t dead_pid() {
  const pid_t child = ::fork();
  if (child == 0) ::_exit(0);
  ::waitpid(child, nullptr, 0);
  return child;
}

// What the index should hold: each key's state, slot and owner, and the LRU order.
struct Model {
  struct Entry {
    bool live = false;
    uint64_t slot_size = 0, slot = 0, seq = 0;
    int32_t owner = 0;
    bool dead = false;  // its owner is gone
  };
  std::map<Key, Entry> keys;
  std::list<Key> lru;  // front: most recently used
  uint64_t evictions = 0, errors = 0;

  uint64_t bytes() const {
    uint64_t b = 0;
    for (const auto& [k, e] : keys) b += e.slot_size;
    return b;
  }
  uint64_t count(bool live) const {
    return static_cast<uint64_t>(std::count_if(
        keys.begin(), keys.end(), [&](const auto& kv) { return kv.second.live == live; }));
  }
  // Drops a key; its record must be zeroed.
  void drop(Key k, std::multiset<SlotId>* expect_cleared) {
    const Entry& e = keys.at(k);
    expect_cleared->insert({e.slot_size, e.slot});
    if (e.live) lru.remove(k);
    keys.erase(k);
  }
};

class SharedIndexTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const uint32_t seed = std::random_device{}();
    rng_.seed(seed);
    RecordProperty("seed", static_cast<int>(seed));
    std::printf("seed %u\n", seed);
    self_ = ::getpid();
    start_ = kvtier::process_start(self_);
    dead_ = dead_pid();
  }
  void open(uint64_t capacity) {
    ASSERT_TRUE(SharedIndex::open_private(capacity, 1000, &ix_).is_ok());
    ix_->set_files(&files_);
  }
  Key new_key() {
    for (;;) {
      const Key k{rng_(), rng_()};
      if (!used_.count(k)) {
        used_.insert(k);
        return k;
      }
    }
  }
  template <class C>
  auto pick(const C& c) {
    auto it = c.begin();
    std::advance(it, std::uniform_int_distribution<size_t>(0, c.size() - 1)(rng_));
    return it;
  }

  // Everything the model says holds in the index, and the bounds; then the records zeroed since
  // the last check are exactly the ones expected.
  void check(const Model& m, std::multiset<SlotId>* expect_cleared, size_t* cleared_seen) {
    SharedIndex::Guard g(*ix_);
    ASSERT_TRUE(g.ok());
    EXPECT_EQ(ix_->keys(), m.count(true));
    EXPECT_EQ(ix_->reserved(), m.count(false));
    EXPECT_EQ(ix_->live_bytes(), m.bytes());
    EXPECT_LE(ix_->live_bytes(), ix_->capacity());
    EXPECT_EQ(ix_->stats().evictions, m.evictions);
    EXPECT_EQ(ix_->stats().errors, m.errors);
    std::set<SlotId> held;
    for (const auto& [k, e] : m.keys) {
      const uint32_t n = ix_->find(id_of(k));
      ASSERT_NE(n, kNil) << "a key the model holds is gone";
      const Node& x = ix_->node(n);
      EXPECT_EQ(x.state, e.live ? kvtier::kLive : kvtier::kReserved);
      EXPECT_EQ(x.slot, e.slot);
      EXPECT_EQ(x.seq, e.seq);
      EXPECT_EQ(ix_->slot_size(x.cls), e.slot_size);
      EXPECT_LT(x.slot, files_.file_slots[e.slot_size]) << "a slot past the files";
      EXPECT_TRUE(held.insert({e.slot_size, e.slot}).second) << "two keys in one slot";
    }
    std::multiset<SlotId> cleared(files_.cleared.begin() + static_cast<long>(*cleared_seen),
                                  files_.cleared.end());
    EXPECT_EQ(cleared, *expect_cleared) << "records zeroed other than the slots freed";
    *cleared_seen = files_.cleared.size();
    expect_cleared->clear();
  }

  // A new key's reservation by `pid`, and what the model predicts of it: LRU pages evicted
  // while the capacity is short, then dead writers' slots (not the reserver's own) reclaimed.
  void reserve(Model& m, std::multiset<SlotId>* cleared, uint64_t slot_size, bool dead_writer) {
    const Key k = new_key();
    const int32_t pid = dead_writer ? dead_ : self_;
    const uint64_t cap = ix_->capacity();
    while (m.bytes() + slot_size > cap && !m.lru.empty()) {
      m.drop(m.lru.back(), cleared);
      ++m.evictions;
    }
    if (m.bytes() + slot_size > cap) {
      std::vector<Key> gone;
      for (const auto& [key, e] : m.keys)
        if (!e.live && e.dead && e.owner != pid) gone.push_back(key);
      for (const Key& key : gone) m.drop(key, cleared);
    }
    const bool fits = m.bytes() + slot_size <= cap;
    SharedIndex::Guard g(*ix_);
    ASSERT_TRUE(g.ok());
    uint32_t n = kNil;
    const int rc = ix_->reserve(id_of(k), slot_size, pid, dead_writer ? 1 : start_, &n);
    if (!fits) {
      EXPECT_EQ(rc, KVTIER_ERR_NO_SPACE);
      ++m.errors;
      return;
    }
    ASSERT_EQ(rc, KVTIER_OK);
    const Node& x = ix_->node(n);
    EXPECT_GT(x.seq, last_seq_) << "sequence numbers only grow";
    last_seq_ = x.seq;
    m.keys[k] = {false, slot_size, x.slot, x.seq, pid, dead_writer};
  }

  std::mt19937_64 rng_;
  std::set<Key> used_;
  int32_t self_ = 0, dead_ = 0;
  uint64_t start_ = 0, last_seq_ = 0;
  MemFiles files_;
  std::unique_ptr<SharedIndex> ix_;
};

// One size class and room on the disk: every eviction is of the least recently used page, so
// the model predicts each step exactly.
TEST_F(SharedIndexTest, LifeCycleFollowsTheModel) {
  open(64 * kPage);
  Model m;
  std::multiset<SlotId> cleared;
  size_t seen = 0;
  for (int step = 0; step < 4000; ++step) {
    SCOPED_TRACE(step);
    const int what = std::uniform_int_distribution<int>(0, 9)(rng_);
    std::vector<Key> reserved, live;
    for (const auto& [k, e] : m.keys) (e.live ? live : reserved).push_back(k);
    if (what <= 3 || m.keys.empty()) {
      reserve(m, &cleared, kPage, what == 0);
    } else if (what <= 5 && !reserved.empty()) {  // commit: reserved -> live
      const Key k = *pick(reserved);
      if (m.keys[k].dead) continue;  // a dead writer commits nothing
      SharedIndex::Guard g(*ix_);
      const uint32_t n = ix_->find(id_of(k));
      ix_->commit(n, 1000, 42, 1000, false);
      ix_->commit(n, 2000, 43, 2000, true);  // a second commit changes nothing
      EXPECT_EQ(ix_->node(n).length, 1000u);
      m.keys[k].live = true;
      m.lru.push_front(k);
    } else if (what == 6 && !m.keys.empty()) {  // remove or a failed write: -> free
      const Key k = pick(m.keys)->first;
      SharedIndex::Guard g(*ix_);
      ix_->release(ix_->find(id_of(k)));
      m.drop(k, &cleared);
    } else if (what == 7 && !live.empty()) {  // a get: the most recently used
      const Key k = *pick(live);
      SharedIndex::Guard g(*ix_);
      ix_->touch(ix_->find(id_of(k)));
      m.lru.remove(k);
      m.lru.push_front(k);
    } else if (what == 8) {  // dead writers' slots go back; live ones' stay
      SharedIndex::Guard g(*ix_);
      ix_->reclaim_dead(self_);
      std::vector<Key> gone;
      for (const auto& [k, e] : m.keys)
        if (!e.live && e.dead) gone.push_back(k);
      for (const Key& k : gone) m.drop(k, &cleared);
    } else {  // a key never stored is not found
      SharedIndex::Guard g(*ix_);
      EXPECT_EQ(ix_->find(id_of(new_key())), kNil);
    }
    check(m, &cleared, &seen);
    if (HasFailure()) return;
  }
  EXPECT_GT(m.evictions, 0u) << "the sequence never filled the capacity";
}

// Several size classes on a small disk: growth stops at the disk, and a full disk takes the
// slot of the class's least recently used page (or refuses). The model cannot tell which class
// gives way, so each key the index dropped is checked to be one it may drop: a live page
// (an eviction) or a dead writer's reservation, with its record zeroed.
TEST_F(SharedIndexTest, FullDiskEvictsWithinTheClass) {
  open(256 * kPage);
  files_.disk_left = 96 * kPage;
  const uint64_t sizes[] = {kPage, 2 * kPage, 4 * kPage};
  Model m;
  size_t seen = 0;
  for (int step = 0; step < 3000; ++step) {
    SCOPED_TRACE(step);
    const uint64_t size = sizes[std::uniform_int_distribution<int>(0, 2)(rng_)];
    const bool dead = std::uniform_int_distribution<int>(0, 5)(rng_) == 0;
    const Key k = new_key();
    SharedIndex::Guard g(*ix_);
    ASSERT_TRUE(g.ok());
    const uint64_t evictions = ix_->stats().evictions;
    uint32_t n = kNil;
    const int rc = ix_->reserve(id_of(k), size, dead ? dead_ : self_, dead ? 1 : start_, &n);
    // What it dropped.
    std::multiset<SlotId> dropped;
    uint64_t pages_dropped = 0;
    for (auto it = m.keys.begin(); it != m.keys.end();) {
      if (ix_->find(id_of(it->first)) != kNil) {
        ++it;
        continue;
      }
      EXPECT_TRUE(it->second.live || (it->second.dead && !dead))
          << "a live writer's reservation was taken";
      pages_dropped += it->second.live;
      dropped.insert({it->second.slot_size, it->second.slot});
      if (it->second.live) m.lru.remove(it->first);
      it = m.keys.erase(it);
    }
    EXPECT_EQ(ix_->stats().evictions - evictions, pages_dropped);
    m.evictions += pages_dropped;
    std::multiset<SlotId> cleared(files_.cleared.begin() + static_cast<long>(seen),
                                  files_.cleared.end());
    EXPECT_EQ(cleared, dropped);
    seen = files_.cleared.size();
    if (rc == KVTIER_OK) {
      const Node& x = ix_->node(n);
      m.keys[k] = {!dead, size, x.slot, x.seq, dead ? dead_ : self_, dead};
      if (!dead) {  // a live writer's page is written and committed
        ix_->commit(n, size, 7, size, false);
        m.lru.push_front(k);
      }
    } else {
      EXPECT_EQ(rc, KVTIER_ERR_NO_SPACE);
      ++m.errors;
    }
    uint64_t file_bytes = 0;
    for (const auto& [slot_size, slots] : files_.file_slots) file_bytes += slot_size * slots;
    EXPECT_LE(file_bytes, 96 * kPage) << "grown past the disk";
    if (HasFailure()) return;
  }
  std::multiset<SlotId> none;
  check(m, &none, &seen);
  EXPECT_LT(files_.disk_left, kPage) << "the sequence never filled the disk";
  EXPECT_GT(m.evictions, 0u) << "a full disk never took a page's slot";
}

// The rebuild's placement: writes in flight keep their slots, the first written copy of a key
// is served and the other's record zeroed, slots past the files are skipped, the free slots
// are handed out next, sequence numbers go on past those found, and past the capacity the
// oldest pages are evicted.
TEST_F(SharedIndexTest, PlaceRebuildsFromWhatWasFound) {
  open(10 * kPage);
  auto page = [](Key k, uint64_t slot, uint64_t seq) {
    Node x{};
    x.key_hi = k.first;
    x.key_lo = k.second;
    x.slot = slot;
    x.seq = seq;
    x.state = kvtier::kLive;
    return x;
  };
  const Key a = new_key(), b = new_key(), c = new_key(), d = new_key(), e = new_key();
  files_.file_slots[kPage] = 8;
  files_.file_slots[2 * kPage] = 4;
  SharedIndex::Guard g(*ix_);
  ASSERT_TRUE(g.ok());
  ix_->reset(false);
  ASSERT_EQ(ix_->add_class(kPage, 8), 0u);
  ASSERT_EQ(ix_->add_class(2 * kPage, 4), 1u);
  Node w = page(b, 2, 20);
  w.state = kvtier::kReserved;
  w.owner = self_;
  w.owner_start = start_;
  std::vector<FoundSlot> found = {
      {page(a, 1, 9), kPage, false},              // a's later copy: its record goes
      {page(a, 0, 5), kPage, false},              // a, first written: served
      {w, kPage, true},                           // b: a write in flight
      {page(c, 0, 3), 2 * kPage, false},          // c
      {page(d, 10, 4), kPage, false},             // past the files: skipped
      {page(e, 5, 1), kPage, false},              // e, the oldest page
      {page(new_key(), 3, 2), 3 * kPage, false},  // a class the index does not have
  };
  ix_->place(found);
  EXPECT_EQ(ix_->keys(), 3u);
  EXPECT_EQ(ix_->reserved(), 1u);
  EXPECT_EQ(ix_->live_bytes(), 5 * kPage);
  EXPECT_EQ(files_.cleared, (std::vector<SlotId>{{kPage, 1}}));
  EXPECT_EQ(ix_->node(ix_->find(id_of(a))).slot, 0u);
  EXPECT_EQ(ix_->node(ix_->find(id_of(a))).seq, 5u);
  EXPECT_EQ(ix_->node(ix_->find(id_of(b))).state, kvtier::kReserved);
  EXPECT_EQ(ix_->find(id_of(d)), kNil);
  // The free slots of the 4 KiB class are those no page holds; new writes get them, with
  // sequence numbers past every one found.
  std::set<uint64_t> slots;
  for (int i = 0; i < 5; ++i) {
    uint32_t n = kNil;
    ASSERT_EQ(ix_->reserve(id_of(new_key()), kPage, self_, start_, &n), KVTIER_OK);
    EXPECT_GT(ix_->node(n).seq, 20u);
    slots.insert(ix_->node(n).slot);
    ix_->commit(n, kPage, 1, kPage, false);
  }
  EXPECT_EQ(slots, (std::set<uint64_t>{1, 3, 4, 6, 7}));
  // The capacity (10 pages) is full: the next write evicts the oldest page, e.
  EXPECT_EQ(ix_->live_bytes(), 10 * kPage);
  uint32_t n = kNil;
  ASSERT_EQ(ix_->reserve(id_of(new_key()), kPage, self_, start_, &n), KVTIER_OK);
  EXPECT_EQ(ix_->find(id_of(e)), kNil);
  EXPECT_EQ(ix_->node(n).slot, 5u);
  EXPECT_EQ(ix_->stats().evictions, 1u);
}

// More pages found than the capacity holds: the oldest go, their records zeroed.
TEST_F(SharedIndexTest, PlaceEvictsPastTheCapacity) {
  open(4 * kPage);
  files_.file_slots[kPage] = 6;
  SharedIndex::Guard g(*ix_);
  ASSERT_TRUE(g.ok());
  ix_->reset(false);
  ix_->add_class(kPage, 6);
  std::vector<Key> keys;
  std::vector<FoundSlot> found;
  for (uint64_t slot = 0; slot < 6; ++slot) {
    keys.push_back(new_key());
    Node x{};
    x.key_hi = keys.back().first;
    x.key_lo = keys.back().second;
    x.slot = slot;
    x.seq = 100 - slot;  // slot 5 is the oldest
    x.state = kvtier::kLive;
    found.push_back({x, kPage, false});
  }
  ix_->place(found);
  EXPECT_EQ(ix_->keys(), 4u);
  EXPECT_EQ(ix_->live_bytes(), 4 * kPage);
  EXPECT_EQ(ix_->stats().evictions, 2u);
  EXPECT_EQ(ix_->find(id_of(keys[5])), kNil);
  EXPECT_EQ(ix_->find(id_of(keys[4])), kNil);
  EXPECT_EQ(files_.cleared, (std::vector<SlotId>{{kPage, 5}, {kPage, 4}}));
}

// A write of a key another process is writing waits for it, unless that process died: then its
// slot goes back at once (its record zeroed) and the key is free to write.
TEST_F(SharedIndexTest, AWriteTakesOverTheKeyOfADeadWriterOnly) {
  open(16 * kPage);
  SharedIndex::Guard g(*ix_);
  ASSERT_TRUE(g.ok());
  const int32_t parent = ::getppid();
  const KeyId mine = id_of(new_key()), theirs = id_of(new_key()), dead = id_of(new_key());
  uint32_t n_mine = kNil, n_theirs = kNil, n_dead = kNil;
  ASSERT_EQ(ix_->reserve(mine, kPage, self_, start_, &n_mine), KVTIER_OK);
  ASSERT_EQ(ix_->reserve(theirs, kPage, parent, kvtier::process_start(parent), &n_theirs),
            KVTIER_OK);
  ASSERT_EQ(ix_->reserve(dead, kPage, dead_, 1, &n_dead), KVTIER_OK);
  const uint64_t dead_slot = ix_->node(n_dead).slot;
  EXPECT_EQ(ix_->find_for_write(mine, self_), n_mine);
  EXPECT_EQ(ix_->find_for_write(theirs, self_), n_theirs);
  EXPECT_EQ(ix_->find_for_write(dead, dead_), n_dead);  // its own
  EXPECT_EQ(files_.cleared.size(), 0u);
  EXPECT_EQ(ix_->find_for_write(dead, self_), kNil);
  EXPECT_EQ(ix_->find(dead), kNil);
  EXPECT_EQ(ix_->reserved(), 2u);
  EXPECT_EQ(ix_->live_bytes(), 2 * kPage);
  EXPECT_EQ(files_.cleared, (std::vector<SlotId>{{kPage, dead_slot}}));
}

// A clear holds new writes back while its process lives, and gives way to no other clear; a
// clear whose process died holds nothing.
TEST_F(SharedIndexTest, ClearHoldsWritesBackWhileItsProcessLives) {
  open(16 * kPage);
  SharedIndex::Guard g(*ix_);
  ASSERT_TRUE(g.ok());
  EXPECT_FALSE(ix_->writes_held(self_));
  ASSERT_TRUE(ix_->begin_clear(self_, start_));
  EXPECT_TRUE(ix_->writes_held(self_));
  EXPECT_TRUE(ix_->writes_held(dead_));
  EXPECT_FALSE(ix_->begin_clear(::getppid(), kvtier::process_start(::getppid())));
  ix_->end_clear();
  EXPECT_FALSE(ix_->writes_held(self_));
  ASSERT_TRUE(ix_->begin_clear(dead_, 1));  // then its process died
  EXPECT_FALSE(ix_->writes_held(self_));
  EXPECT_TRUE(ix_->begin_clear(self_, start_));
}

}  // namespace
