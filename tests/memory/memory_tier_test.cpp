// The memory tier is the conformance suite's oracle, so it is checked here against a model of
// its own: a map of values and an LRU list, evicting from the tail to the byte budget. And its
// pins: pages copied out while other threads remove, evict and clear them.
#include <gtest/gtest.h>

#include <atomic>
#include <list>
#include <map>
#include <thread>

#include "backends/memory/memory_tier.h"
#include "tests/common/test_util.h"

namespace {

using namespace kvtier;

// What the tier must hold: values by key, most recently used first.
struct Model {
  uint64_t capacity = 0;
  uint64_t bytes = 0;
  uint64_t evictions = 0;
  std::map<size_t, std::vector<unsigned char>> values;
  std::list<size_t> lru;

  bool has(size_t k) const { return values.count(k) > 0; }
  void touch(size_t k) {
    lru.remove(k);
    lru.push_front(k);
  }
  void drop(size_t k) {
    bytes -= values[k].size();
    values.erase(k);
    lru.remove(k);
  }
  void insert(size_t k, const std::vector<unsigned char>& v) {
    values[k] = v;
    lru.push_front(k);
    bytes += v.size();
    while (bytes > capacity && !lru.empty()) {
      drop(lru.back());
      ++evictions;
    }
  }
};

KeyId id_of(size_t k) {
  return key_id(namespace_seed("memory-model"), kvtier_test::make_key("m", k));
}

// Sizes from 1 byte to 24 KiB, both block alignments (64 B and 4 KiB).
size_t random_size(std::mt19937_64& g) {
  static const size_t sizes[] = {1, 63, 1000, 1024, 4095, 4096, 9000, 24576};
  return sizes[g() % std::size(sizes)];
}

TEST(MemoryTier, MatchesAnLruModelThroughGrowthEvictionAndRemoval) {
  std::mt19937_64 g(kvtier_test::rng()());
  const uint64_t cap = 256 * 1024;
  MemoryTier tier(cap);
  Model model;
  model.capacity = cap;
  const size_t domain = 3000;  // enough live keys to grow the index several times
  std::map<size_t, std::vector<unsigned char>> written;  // a key's bytes, fixed once written
  for (int step = 0; step < 20000; ++step) {
    const int op = static_cast<int>(g() % 100);
    const size_t n = 1 + g() % 8;
    std::vector<size_t> keys;
    for (size_t i = 0; i < n; ++i) keys.push_back(g() % domain);
    std::vector<KeyId> ids;
    for (size_t k : keys) ids.push_back(id_of(k));
    if (op < 45) {  // put: present keys are touched first, then new ones go in, in order
      std::vector<std::vector<unsigned char>> vals;
      std::vector<Frag> frags;
      std::vector<PutOp> ops;
      for (size_t k : keys) {
        if (!written.count(k)) written[k] = kvtier_test::random_bytes(random_size(g));
        vals.push_back(written[k]);
      }
      for (size_t i = 0; i < n; ++i) frags.push_back({reinterpret_cast<std::byte*>(vals[i].data()), vals[i].size()});
      for (size_t i = 0; i < n; ++i) ops.push_back({ids[i], Frags(&frags[i], 1), vals[i].size()});
      tier.put(ops);
      std::vector<uint8_t> fresh(n);
      for (size_t i = 0; i < n; ++i) fresh[i] = !model.has(keys[i]);
      for (size_t i = 0; i < n; ++i)
        if (!fresh[i]) model.touch(keys[i]);
      for (size_t i = 0; i < n; ++i)
        if (fresh[i] && !model.has(keys[i])) model.insert(keys[i], vals[i]);
      for (size_t i = 0; i < n; ++i) ASSERT_EQ(ops[i].result, KVTIER_OK) << step;
    } else if (op < 80) {  // get, sometimes into a buffer of the wrong size
      for (size_t i = 0; i < n; ++i) {
        const size_t want = model.has(keys[i]) ? model.values[keys[i]].size() : 100;
        const size_t cap_i = g() % 5 == 0 ? want + 1 : want;
        const bool exact = g() % 2 == 0;
        std::vector<unsigned char> buf(cap_i);
        kvtier_test::fill_random(buf.data(), cap_i);
        Frag f{reinterpret_cast<std::byte*>(buf.data()), cap_i};
        GetOp get{ids[i], Frags(&f, 1), cap_i, exact ? Fit::kExact : Fit::kAtMost};
        tier.get(std::span<GetOp>(&get, 1));
        if (!model.has(keys[i])) {
          ASSERT_EQ(get.result, KVTIER_ERR_NOT_FOUND) << step;
          continue;
        }
        model.touch(keys[i]);
        if (exact && cap_i != want) {
          ASSERT_EQ(get.result, KVTIER_ERR_SIZE_MISMATCH) << step;
          continue;
        }
        ASSERT_EQ(get.result, static_cast<int64_t>(want)) << step;
        ASSERT_TRUE(std::equal(buf.begin(), buf.begin() + want, model.values[keys[i]].begin()));
      }
    } else if (op < 92) {
      std::vector<uint8_t> present(n);
      tier.exists(ids, present);
      for (size_t i = 0; i < n; ++i) ASSERT_EQ(present[i], model.has(keys[i]) ? 1 : 0) << step;
    } else if (op < 99) {  // remove, one at a time (a key may repeat in a batch)
      for (size_t i = 0; i < n; ++i) {
        int r = 0;
        tier.remove(std::span<const KeyId>(&ids[i], 1), std::span<int>(&r, 1));
        ASSERT_EQ(r, model.has(keys[i]) ? KVTIER_OK : KVTIER_ERR_NOT_FOUND) << step;
        if (model.has(keys[i])) model.drop(keys[i]);
      }
    } else {
      tier.clear();
      while (!model.lru.empty()) model.drop(model.lru.back());
    }
    const TierStats s = tier.stats();
    ASSERT_EQ(s.keys, model.values.size()) << step;
    ASSERT_EQ(s.bytes, model.bytes) << step;
    ASSERT_EQ(s.evictions, model.evictions) << step;
  }
  // Every key the model holds reads back exactly, and no other does.
  for (size_t k = 0; k < domain; ++k) {
    uint8_t present = 0;
    const KeyId id = id_of(k);
    tier.exists(std::span<const KeyId>(&id, 1), std::span<uint8_t>(&present, 1));
    ASSERT_EQ(present, model.has(k) ? 1 : 0) << k;
  }
}

// Readers copy pages out while other threads evict (by writing), remove and clear them: every
// hit is the key's own bytes, whole (a block freed or reused under a copy would show here, and
// under ASan/TSan as a use after free or a race).
TEST(MemoryTier, PagesBeingReadOutliveRemovalEvictionAndClear) {
  const size_t page = 16 * 1024;
  const size_t domain = 64;
  MemoryTier tier(24 * page);  // fewer slots than keys: writers evict all the time
  std::vector<std::vector<unsigned char>> values;
  for (size_t k = 0; k < domain; ++k) values.push_back(kvtier_test::random_bytes(page));
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> hits{0};
  std::atomic<int> bad{0};
  auto writer = [&] {
    std::mt19937_64 g(kvtier_test::rng()());
    while (!stop) {
      const size_t k = g() % domain;
      Frag f{reinterpret_cast<std::byte*>(values[k].data()), page};
      PutOp op{id_of(k), Frags(&f, 1), page};
      tier.put(std::span<PutOp>(&op, 1));
      if (op.result != KVTIER_OK) ++bad;
    }
  };
  auto reader = [&] {
    std::mt19937_64 g(kvtier_test::rng()());
    std::vector<unsigned char> buf(page);
    while (!stop) {
      const size_t k = g() % domain;
      Frag f{reinterpret_cast<std::byte*>(buf.data()), page};
      GetOp op{id_of(k), Frags(&f, 1), page, Fit::kExact};
      tier.get(std::span<GetOp>(&op, 1));
      if (op.result == KVTIER_ERR_NOT_FOUND) continue;
      if (op.result != static_cast<int64_t>(page) || buf != values[k]) ++bad;
      ++hits;
    }
  };
  auto remover = [&] {
    std::mt19937_64 g(kvtier_test::rng()());
    for (int i = 0; !stop; ++i) {
      if (i % 200 == 199) {
        tier.clear();
        continue;
      }
      const KeyId id = id_of(g() % domain);
      int r = 0;
      tier.remove(std::span<const KeyId>(&id, 1), std::span<int>(&r, 1));
    }
  };
  std::vector<std::thread> threads;
  threads.emplace_back(writer);
  threads.emplace_back(writer);
  threads.emplace_back(reader);
  threads.emplace_back(reader);
  threads.emplace_back(remover);
  std::this_thread::sleep_for(std::chrono::seconds(2));
  stop = true;
  for (auto& t : threads) t.join();
  EXPECT_EQ(bad.load(), 0);
  EXPECT_GT(hits.load(), 100u);
  EXPECT_LE(tier.stats().bytes, 24 * page);
}

}  // namespace
