// The C ABI through the public header only: round trips, both interfaces reading each other's
// writes, page layouts, and every kind of bad input getting its code with nothing changed.
#include <gtest/gtest.h>
#include <kvtier/kvtier.h>

#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "tests/common/server_process.h"
#include "tests/common/test_util.h"
#include "tests/p2p/p2p_pool.h"

using kvtier_test::c_keys;
using kvtier_test::fill_random;
using kvtier_test::make_key;
using kvtier_test::random_bytes;

namespace {

class Store {
 public:
  explicit Store(const char* config = "tiers=memory;memory_capacity=256MiB") {
    EXPECT_EQ(kvtier_open(config, &s_), KVTIER_OK) << kvtier_last_error();
  }
  ~Store() { kvtier_close(s_); }
  operator kvtier_store_t*() const { return s_; }

 private:
  kvtier_store_t* s_ = nullptr;
};

std::vector<std::string> keys_for(const char* prefix, size_t n) {
  std::vector<std::string> k;
  for (size_t i = 0; i < n; ++i) k.push_back(make_key(prefix, i));
  return k;
}

void set_all(kvtier_store_t* s, const std::vector<std::string>& keys,
             const std::vector<std::vector<unsigned char>>& values) {
  auto ck = c_keys(keys);
  std::vector<const void*> ptrs;
  std::vector<size_t> sizes;
  for (const auto& v : values) {
    ptrs.push_back(v.data());
    sizes.push_back(v.size());
  }
  std::vector<int> res(keys.size(), 99);
  ASSERT_EQ(kvtier_batch_set(s, ck.data(), ck.size(), ptrs.data(), sizes.data(), res.data()),
            KVTIER_OK);
  for (int r : res) ASSERT_EQ(r, KVTIER_OK) << kvtier_last_error();
}

size_t exists(kvtier_store_t* s, const std::vector<std::string>& keys) {
  auto ck = c_keys(keys);
  size_t hits = 999;
  EXPECT_EQ(kvtier_batch_exists(s, ck.data(), ck.size(), &hits), KVTIER_OK);
  return hits;
}

TEST(CApi, VersionMatchesHeader) {
  EXPECT_EQ(kvtier_version_number(), unsigned{KVTIER_VERSION_NUMBER});
  EXPECT_EQ(std::string(kvtier_version_string()), std::to_string(KVTIER_VERSION_MAJOR) + "." +
                                                      std::to_string(KVTIER_VERSION_MINOR) + "." +
                                                      std::to_string(KVTIER_VERSION_PATCH));
}

TEST(CApi, CodesHaveNames) {
  for (int c = KVTIER_OK; c >= KVTIER_ERR_CLOSED; --c) {
    EXPECT_EQ(std::string(kvtier_error_name(c)).rfind("KVTIER_", 0), 0u) << c;
    EXPECT_STRNE(kvtier_strerror(c), "unknown code") << c;
  }
  EXPECT_STREQ(kvtier_error_name(KVTIER_ERR_NOT_FOUND), "KVTIER_ERR_NOT_FOUND");
  EXPECT_STREQ(kvtier_error_name(-12345), "KVTIER_ERR_UNKNOWN");
}

TEST(CApi, RoundTripCopying) {
  Store s;
  auto keys = keys_for("rt", 37);
  std::vector<std::vector<unsigned char>> values;
  for (size_t i = 0; i < keys.size(); ++i) values.push_back(random_bytes(1 + i * 977));
  set_all(s, keys, values);
  EXPECT_EQ(exists(s, keys), keys.size());

  auto ck = c_keys(keys);
  std::vector<std::vector<unsigned char>> out(keys.size());
  std::vector<void*> bufs;
  std::vector<size_t> caps;
  for (size_t i = 0; i < keys.size(); ++i) {
    out[i].assign(values[i].size() + 100, 0xEE);  // larger than the value is fine
    bufs.push_back(out[i].data());
    caps.push_back(out[i].size());
  }
  std::vector<int64_t> res(keys.size());
  ASSERT_EQ(kvtier_batch_get(s, ck.data(), ck.size(), bufs.data(), caps.data(), res.data()),
            KVTIER_OK);
  for (size_t i = 0; i < keys.size(); ++i) {
    ASSERT_EQ(res[i], static_cast<int64_t>(values[i].size()));
    EXPECT_EQ(0, memcmp(out[i].data(), values[i].data(), values[i].size())) << i;
    EXPECT_EQ(out[i][values[i].size()], 0xEE) << "wrote past the value";
  }
}

TEST(CApi, MissIsNotFoundAndExistsCountsLeadingRun) {
  Store s;
  auto keys = keys_for("lead", 8);
  std::vector<std::vector<unsigned char>> values;
  for (size_t i = 0; i < 8; ++i) values.push_back(random_bytes(4096));
  // Store keys 0..4 and 6, not 5 and 7: the leading run is 5.
  std::vector<std::string> some(keys.begin(), keys.begin() + 5);
  some.push_back(keys[6]);
  std::vector<std::vector<unsigned char>> some_v(values.begin(), values.begin() + 5);
  some_v.push_back(values[6]);
  set_all(s, some, some_v);
  EXPECT_EQ(exists(s, keys), 5u);
  EXPECT_EQ(exists(s, {keys[5], keys[0]}), 0u);

  auto ck = c_keys(keys);
  std::vector<unsigned char> buf(4096);
  void* b = buf.data();
  size_t cap = buf.size();
  int64_t r = 0;
  ASSERT_EQ(kvtier_batch_get(s, &ck[5], 1, &b, &cap, &r), KVTIER_OK);
  EXPECT_EQ(r, KVTIER_ERR_NOT_FOUND);
}

TEST(CApi, ExistingKeyCountsAsWrittenAndKeepsItsValue) {
  Store s;
  auto keys = keys_for("dup", 1);
  auto first = random_bytes(8192), second = random_bytes(8192);
  set_all(s, keys, {first});
  set_all(s, keys, {second});  // reported as written
  auto ck = c_keys(keys);
  std::vector<unsigned char> buf(8192);
  void* b = buf.data();
  size_t cap = buf.size();
  int64_t r = 0;
  ASSERT_EQ(kvtier_batch_get(s, ck.data(), 1, &b, &cap, &r), KVTIER_OK);
  ASSERT_EQ(r, 8192);
  EXPECT_EQ(buf, first);
}

TEST(CApi, BufferTooSmallWritesNothing) {
  Store s;
  auto keys = keys_for("small", 1);
  auto v = random_bytes(10000);
  set_all(s, keys, {v});
  auto ck = c_keys(keys);
  std::vector<unsigned char> buf(10000, 0xAB);
  void* b = buf.data();
  size_t cap = 9999;
  int64_t r = 0;
  ASSERT_EQ(kvtier_batch_get(s, ck.data(), 1, &b, &cap, &r), KVTIER_OK);
  EXPECT_EQ(r, KVTIER_ERR_BUFFER_TOO_SMALL);
  for (unsigned char c : buf) ASSERT_EQ(c, 0xAB);
  EXPECT_NE(std::string(kvtier_last_error()).find("KVTIER_ERR_BUFFER_TOO_SMALL"),
            std::string::npos);
}

TEST(CApi, RemoveAndClear) {
  Store s;
  auto keys = keys_for("rm", 4);
  std::vector<std::vector<unsigned char>> values(4, random_bytes(512));
  set_all(s, keys, values);
  auto ck = c_keys(keys);
  int r[2] = {9, 9};
  ASSERT_EQ(kvtier_batch_remove(s, ck.data(), 1, r), KVTIER_OK);
  EXPECT_EQ(r[0], KVTIER_OK);
  ASSERT_EQ(kvtier_batch_remove(s, ck.data(), 1, r), KVTIER_OK);
  EXPECT_EQ(r[0], KVTIER_ERR_NOT_FOUND);
  EXPECT_EQ(exists(s, keys), 0u);
  EXPECT_EQ(exists(s, {keys[1], keys[2], keys[3]}), 3u);
  ASSERT_EQ(kvtier_clear(s), KVTIER_OK);
  EXPECT_EQ(exists(s, {keys[1]}), 0u);
}

TEST(CApi, StatsJson) {
  Store s;
  auto keys = keys_for("st", 3);
  std::vector<std::vector<unsigned char>> values(3, random_bytes(1000));
  set_all(s, keys, values);
  auto ck = c_keys(keys);
  std::vector<unsigned char> buf(1000);
  void* b = buf.data();
  size_t cap = 1000;
  int64_t r;
  ASSERT_EQ(kvtier_batch_get(s, ck.data(), 1, &b, &cap, &r), KVTIER_OK);
  auto miss = make_key("st-miss", 0);
  const char* mk = miss.c_str();
  ASSERT_EQ(kvtier_batch_get(s, &mk, 1, &b, &cap, &r), KVTIER_OK);
  char* json = nullptr;
  ASSERT_EQ(kvtier_stats_json(s, &json), KVTIER_OK);
  std::string j(json);
  kvtier_free(json);
  EXPECT_NE(j.find("\"name\":\"memory\",\"keys\":3,\"bytes\":3000"), std::string::npos) << j;
  EXPECT_NE(j.find("\"hits\":1,\"misses\":1"), std::string::npos) << j;
  EXPECT_NE(j.find("\"evictions\":0,\"errors\":0"), std::string::npos) << j;
  kvtier_free(nullptr);
}

TEST(CApi, MemoryCapacityEvictsLeastRecentlyUsed) {
  Store s("tiers=memory;memory_capacity=1MiB");
  auto keys = keys_for("lru", 40);
  std::vector<std::vector<unsigned char>> values;
  for (size_t i = 0; i < 40; ++i) values.push_back(random_bytes(64 * 1024));
  set_all(s, {keys[0]}, {values[0]});
  for (size_t i = 1; i < 40; ++i) {
    set_all(s, {keys[i]}, {values[i]});
    std::vector<unsigned char> buf(64 * 1024);  // touch key 0 so it stays recent
    void* b = buf.data();
    size_t cap = buf.size();
    int64_t r;
    const char* k0 = keys[0].c_str();
    ASSERT_EQ(kvtier_batch_get(s, &k0, 1, &b, &cap, &r), KVTIER_OK);
    ASSERT_EQ(r, 64 * 1024) << "key 0 was used last and must not be evicted (step " << i << ")";
    ASSERT_EQ(buf, values[0]);
  }
  EXPECT_EQ(exists(s, {keys[39]}), 1u);
  EXPECT_EQ(exists(s, {keys[1]}), 0u) << "the least recently used key should be gone";
  char* json = nullptr;
  ASSERT_EQ(kvtier_stats_json(s, &json), KVTIER_OK);
  std::string j(json);
  kvtier_free(json);
  EXPECT_EQ(j.find("\"evictions\":0"), std::string::npos) << j;

  // A value larger than the whole tier is refused, per key.
  auto big = random_bytes(2 << 20);
  const char* bk = keys[0].c_str();
  auto other = make_key("lru-big", 0);
  const char* ks[2] = {other.c_str(), bk};
  const void* vals[2] = {big.data(), values[0].data()};
  size_t sizes[2] = {big.size(), values[0].size()};
  int res[2];
  ASSERT_EQ(kvtier_batch_set(s, ks, 2, vals, sizes, res), KVTIER_OK);
  EXPECT_EQ(res[0], KVTIER_ERR_NO_SPACE);
  EXPECT_EQ(res[1], KVTIER_OK);
}

// ---- bad input --------------------------------------------------------------------------

TEST(CApiBadInput, WholeCallRefusals) {
  Store s;
  auto keys = keys_for("bad", 2);
  auto ck = c_keys(keys);
  auto v = random_bytes(100);
  const void* vals[2] = {v.data(), v.data()};
  size_t sizes[2] = {100, 100};
  int res[2] = {7, 7};
  EXPECT_EQ(kvtier_batch_set(nullptr, ck.data(), 2, vals, sizes, res), KVTIER_ERR_INVALID_ARG);
  EXPECT_EQ(res[0], KVTIER_ERR_INVALID_ARG);
  EXPECT_EQ(kvtier_batch_set(s, nullptr, 2, vals, sizes, res), KVTIER_ERR_INVALID_ARG);
  EXPECT_EQ(kvtier_batch_set(s, ck.data(), 0, vals, sizes, res), KVTIER_ERR_INVALID_ARG);
  EXPECT_EQ(kvtier_batch_set(s, ck.data(), 2, nullptr, sizes, res), KVTIER_ERR_INVALID_ARG);
  EXPECT_EQ(kvtier_batch_set(s, ck.data(), 2, vals, nullptr, res), KVTIER_ERR_INVALID_ARG);
  EXPECT_EQ(kvtier_batch_set(s, ck.data(), 2, vals, sizes, nullptr), KVTIER_ERR_INVALID_ARG);
  EXPECT_NE(std::string(kvtier_last_error()).find("results is NULL"), std::string::npos);
  size_t hits;
  EXPECT_EQ(kvtier_batch_exists(s, ck.data(), 0, &hits), KVTIER_ERR_INVALID_ARG);
  EXPECT_EQ(kvtier_batch_exists(s, ck.data(), 2, nullptr), KVTIER_ERR_INVALID_ARG);
  int64_t gres[2];
  void* bufs[2] = {nullptr, nullptr};
  EXPECT_EQ(kvtier_batch_get(s, ck.data(), 2, bufs, nullptr, gres), KVTIER_ERR_INVALID_ARG);
  EXPECT_EQ(kvtier_clear(nullptr), KVTIER_ERR_INVALID_ARG);
  EXPECT_EQ(kvtier_stats_json(s, nullptr), KVTIER_ERR_INVALID_ARG);
  EXPECT_EQ(kvtier_open(nullptr, nullptr), KVTIER_ERR_INVALID_ARG);
  kvtier_close(nullptr);
  // Nothing was stored by any refused call.
  EXPECT_EQ(exists(s, keys), 0u);
}

TEST(CApiBadInput, PerKeyFailuresLeaveOtherKeysAlone) {
  Store s;
  std::string good = make_key("pk", 0), good2 = make_key("pk", 1);
  std::string too_long(KVTIER_MAX_KEY_LEN + 1, 'a');
  std::string max_len(KVTIER_MAX_KEY_LEN, 'b');
  auto v = random_bytes(300);
  const char* ks[6] = {good.c_str(), nullptr, too_long.c_str(), "", max_len.c_str(), good2.c_str()};
  const void* vals[6] = {v.data(), v.data(), v.data(), v.data(), v.data(), nullptr};
  size_t sizes[6] = {300, 300, 300, 300, 300, 300};
  int res[6];
  ASSERT_EQ(kvtier_batch_set(s, ks, 6, vals, sizes, res), KVTIER_OK);
  EXPECT_EQ(res[0], KVTIER_OK);
  EXPECT_EQ(res[1], KVTIER_ERR_INVALID_ARG);
  EXPECT_EQ(res[2], KVTIER_ERR_KEY_TOO_LONG);
  EXPECT_EQ(res[3], KVTIER_ERR_KEY_TOO_LONG);
  EXPECT_EQ(res[4], KVTIER_OK);
  EXPECT_EQ(res[5], KVTIER_ERR_INVALID_ARG);  // NULL value
  EXPECT_NE(std::string(kvtier_last_error()).find("key 1"), std::string::npos)
      << kvtier_last_error();
  // A zero-length value is refused too.
  size_t zero = 0;
  const void* vp = v.data();
  const char* k2 = good2.c_str();
  ASSERT_EQ(kvtier_batch_set(s, &k2, 1, &vp, &zero, res), KVTIER_OK);
  EXPECT_EQ(res[0], KVTIER_ERR_INVALID_ARG);
  EXPECT_EQ(exists(s, {good, max_len}), 2u);
  EXPECT_EQ(exists(s, {good2}), 0u);
}

TEST(CApiBadInput, ConfigErrorsNameTheVariable) {
  kvtier_store_t* st = reinterpret_cast<kvtier_store_t*>(1);
  EXPECT_EQ(kvtier_open("memory_capacity=lots", &st), KVTIER_ERR_CONFIG);
  EXPECT_EQ(st, nullptr);
  std::string e = kvtier_last_error();
  EXPECT_NE(e.find("KVTIER_MEMORY_CAPACITY"), std::string::npos) << e;
  EXPECT_NE(e.find("lots"), std::string::npos) << e;
  EXPECT_EQ(kvtier_open("tiers=memory,tape", &st), KVTIER_ERR_CONFIG);
  EXPECT_NE(std::string(kvtier_last_error()).find("tape"), std::string::npos);
  EXPECT_EQ(kvtier_open("no_such_setting=1", &st), KVTIER_ERR_CONFIG);
  EXPECT_EQ(kvtier_open("tiers", &st), KVTIER_ERR_CONFIG);

  setenv("KVTIER_WRITE_POLICY", "sometimes", 1);
  EXPECT_EQ(kvtier_open(nullptr, &st), KVTIER_ERR_CONFIG);
  e = kvtier_last_error();
  EXPECT_NE(e.find("KVTIER_WRITE_POLICY='sometimes'"), std::string::npos) << e;
  // The config string overrides the environment? No: a bad environment is still an error.
  setenv("KVTIER_WRITE_POLICY", "write_back", 1);
  setenv("KVTIER_MEMORY_CAPACITY", "2MiB", 1);
  ASSERT_EQ(kvtier_open(nullptr, &st), KVTIER_OK) << kvtier_last_error();
  char* json;
  ASSERT_EQ(kvtier_stats_json(st, &json), KVTIER_OK);
  std::string j(json);
  kvtier_free(json);
  kvtier_close(st);
  EXPECT_NE(j.find("\"write_policy\":\"write_back\""), std::string::npos) << j;
  EXPECT_NE(j.find("\"capacity\":2097152"), std::string::npos) << j;
  unsetenv("KVTIER_WRITE_POLICY");
  unsetenv("KVTIER_MEMORY_CAPACITY");
}

// ---- zero-copy --------------------------------------------------------------------------

TEST(CApiV1, FragmentsRoundTripAndReadTheCopyingInterface) {
  Store s;
  const size_t kKeys = 5, kFrags = 4, kFrag = 3000;
  std::vector<unsigned char> pool(kKeys * kFrags * kFrag + 64);
  fill_random(pool.data(), pool.size());
  ASSERT_EQ(kvtier_register_buffer(s, pool.data(), pool.size()), KVTIER_OK);
  auto keys = keys_for("v1", kKeys);
  auto ck = c_keys(keys);
  // Key i takes fragments scattered over the pool (reversed order, to prove order matters).
  std::vector<void*> ptrs;
  std::vector<size_t> sizes;
  for (size_t i = 0; i < kKeys; ++i)
    for (size_t f = 0; f < kFrags; ++f) {
      ptrs.push_back(pool.data() + 7 + ((kKeys - 1 - i) * kFrags + (kFrags - 1 - f)) * kFrag);
      sizes.push_back(kFrag);
    }
  std::vector<int> res(kKeys, 9);
  ASSERT_EQ(
      kvtier_batch_set_v1(s, ck.data(), kKeys, ptrs.data(), sizes.data(), ptrs.size(), res.data()),
      KVTIER_OK);
  for (int r : res) ASSERT_EQ(r, KVTIER_OK) << kvtier_last_error();

  // The copying interface sees each value as its fragments concatenated.
  for (size_t i = 0; i < kKeys; ++i) {
    std::vector<unsigned char> flat(kFrags * kFrag), expect;
    for (size_t f = 0; f < kFrags; ++f) {
      auto* p = static_cast<unsigned char*>(ptrs[i * kFrags + f]);
      expect.insert(expect.end(), p, p + kFrag);
    }
    void* b = flat.data();
    size_t cap = flat.size();
    int64_t r;
    ASSERT_EQ(kvtier_batch_get(s, &ck[i], 1, &b, &cap, &r), KVTIER_OK);
    ASSERT_EQ(r, static_cast<int64_t>(flat.size()));
    EXPECT_EQ(flat, expect) << i;
  }

  // And v1 reads what the copying interface wrote, into other fragments.
  auto other = make_key("v1-flat", 0);
  auto flat = random_bytes(kFrags * kFrag);
  set_all(s, {other}, {flat});
  std::vector<unsigned char> dst(kFrags * kFrag + 2 * kFrags, 0);
  std::vector<unsigned char> dst_pool = dst;
  ASSERT_EQ(kvtier_register_buffer(s, dst_pool.data(), dst_pool.size()), KVTIER_OK);
  std::vector<void*> dp;
  std::vector<size_t> ds;
  for (size_t f = 0; f < kFrags; ++f) {
    dp.push_back(dst_pool.data() + f * (kFrag + 2));  // gaps of 2 bytes stay untouched
    ds.push_back(kFrag);
  }
  const char* ok = other.c_str();
  int r1;
  ASSERT_EQ(kvtier_batch_get_v1(s, &ok, 1, dp.data(), ds.data(), kFrags, &r1), KVTIER_OK);
  ASSERT_EQ(r1, KVTIER_OK);
  for (size_t f = 0; f < kFrags; ++f) {
    EXPECT_EQ(0, memcmp(dst_pool.data() + f * (kFrag + 2), flat.data() + f * kFrag, kFrag));
    EXPECT_EQ(dst_pool[f * (kFrag + 2) + kFrag], 0);
  }
  EXPECT_EQ(kvtier_unregister_buffer(s, dst_pool.data()), KVTIER_OK);
  EXPECT_EQ(kvtier_unregister_buffer(s, dst_pool.data()), KVTIER_ERR_NOT_FOUND);
}

TEST(CApiV1, UnregisteredFragmentsFailTheirKeyAndTouchNothing) {
  Store s;
  std::vector<unsigned char> reg(8192), unreg(8192);
  fill_random(reg.data(), reg.size());
  fill_random(unreg.data(), unreg.size());
  ASSERT_EQ(kvtier_register_buffer(s, reg.data(), reg.size()), KVTIER_OK);
  EXPECT_EQ(kvtier_register_buffer(s, reg.data() + 100, 10), KVTIER_ERR_INVALID_ARG)
      << "overlapping regions";
  EXPECT_EQ(kvtier_register_buffer(s, nullptr, 10), KVTIER_ERR_INVALID_ARG);
  auto keys = keys_for("unreg", 3);
  auto ck = c_keys(keys);
  // key 0: fine; key 1: one fragment outside; key 2: runs one byte past the region's end.
  void* ptrs[6] = {reg.data(),   reg.data() + 1000, reg.data() + 2000,
                   unreg.data(), reg.data() + 4000, reg.data() + 8192 - 1000};
  size_t sizes[6] = {1000, 1000, 1000, 1000, 1000, 1001};
  int res[3];
  ASSERT_EQ(kvtier_batch_set_v1(s, ck.data(), 3, ptrs, sizes, 6, res), KVTIER_OK);
  EXPECT_EQ(res[0], KVTIER_OK);
  EXPECT_EQ(res[1], KVTIER_ERR_NOT_REGISTERED);
  EXPECT_EQ(res[2], KVTIER_ERR_NOT_REGISTERED);
  EXPECT_EQ(exists(s, keys), 1u);
  EXPECT_EQ(exists(s, {keys[1]}), 0u);
  EXPECT_EQ(exists(s, {keys[2]}), 0u);

  // A get into unregistered memory writes nothing.
  auto snapshot = unreg;
  void* gp[2] = {unreg.data(), unreg.data() + 1000};
  size_t gs[2] = {1000, 1000};
  ASSERT_EQ(kvtier_batch_get_v1(s, ck.data(), 1, gp, gs, 2, res), KVTIER_OK);
  EXPECT_EQ(res[0], KVTIER_ERR_NOT_REGISTERED);
  EXPECT_EQ(unreg, snapshot);

  // Fragment counts that do not split over the keys refuse the call.
  EXPECT_EQ(kvtier_batch_set_v1(s, ck.data(), 3, ptrs, sizes, 5, res), KVTIER_ERR_INVALID_ARG);
  EXPECT_EQ(kvtier_batch_set_v1(s, ck.data(), 3, nullptr, sizes, 6, res), KVTIER_ERR_INVALID_ARG);

  // Wrong page size on v1 get: SIZE_MISMATCH, nothing written.
  std::vector<unsigned char> big(8192, 0x5A);
  ASSERT_EQ(kvtier_register_buffer(s, big.data(), big.size()), KVTIER_OK);
  void* bp[2] = {big.data(), big.data() + 1000};
  size_t bs[2] = {1000, 1001};
  ASSERT_EQ(kvtier_batch_get_v1(s, ck.data(), 1, bp, bs, 2, res), KVTIER_OK);
  EXPECT_EQ(res[0], KVTIER_ERR_SIZE_MISMATCH);
  for (unsigned char c : big) ASSERT_EQ(c, 0x5A);

  // After unregistering, the same fragments are refused.
  ASSERT_EQ(kvtier_unregister_buffer(s, reg.data()), KVTIER_OK);
  ASSERT_EQ(kvtier_batch_get_v1(s, ck.data(), 1, ptrs, sizes, 2, res), KVTIER_OK);
  EXPECT_EQ(res[0], KVTIER_ERR_NOT_REGISTERED);
}

// ---- page layouts -----------------------------------------------------------------------

struct Shape {
  int kind, layout;
  uint32_t P, L, H, D, C, E;
  uint64_t S;
};

void PrintTo(const Shape& s, std::ostream* os) {
  *os << (s.kind == KVTIER_POOL_MHA ? "MHA" : "MLA") << " layout " << s.layout;
}

class CApiLayout : public ::testing::TestWithParam<Shape> {};

// The offset of element (kv, layer, token) in the pool, written from the buffer shapes
// independently of the library: a page's value must be exactly these runs, in this order.
std::vector<std::pair<size_t, size_t>> expected_runs(const Shape& sh, uint64_t s) {
  const uint64_t tb =
      sh.kind == KVTIER_POOL_MHA ? uint64_t{sh.H} * sh.D * sh.E : uint64_t{sh.C} * sh.E;
  std::vector<std::pair<size_t, size_t>> runs;
  auto elem = [&](uint64_t kv, uint64_t l, uint64_t t) -> uint64_t {
    if (sh.layout == KVTIER_LAYOUT_LAYER_FIRST)  // (2,) L, S
      return ((kv * sh.L + l) * sh.S + t) * tb;
    if (sh.layout == KVTIER_LAYOUT_PAGE_FIRST)  // (2,) S, L
      return ((kv * sh.S + t) * sh.L + l) * tb;
    // page_first_direct: (2,) S/P, L, P
    return (((kv * (sh.S / sh.P) + t / sh.P) * sh.L + l) * sh.P + t % sh.P) * tb;
  };
  const uint64_t kvs = sh.kind == KVTIER_POOL_MHA ? 2 : 1;
  if (sh.layout == KVTIER_LAYOUT_LAYER_FIRST) {
    for (uint64_t l = 0; l < sh.L; ++l)
      for (uint64_t kv = 0; kv < kvs; ++kv) runs.push_back({elem(kv, l, s), sh.P * tb});
  } else {
    for (uint64_t kv = 0; kv < kvs; ++kv) runs.push_back({elem(kv, 0, s), sh.L * sh.P * tb});
  }
  return runs;
}

TEST_P(CApiLayout, SlotsMatchTheShapeAndRoundTrip) {
  const Shape sh = GetParam();
  Store s;
  kvtier_pool_layout_t layout = {};
  layout.struct_size = sizeof layout;
  layout.pool_kind = sh.kind;
  layout.layout = sh.layout;
  layout.page_size = sh.P;
  layout.layer_num = sh.L;
  layout.head_num = sh.H;
  layout.head_dim = sh.D;
  layout.kv_cache_dim = sh.C;
  layout.dtype_size = sh.E;
  layout.pool_tokens = sh.S;
  const uint64_t tb =
      sh.kind == KVTIER_POOL_MHA ? uint64_t{sh.H} * sh.D * sh.E : uint64_t{sh.C} * sh.E;
  const size_t pool_bytes = (sh.kind == KVTIER_POOL_MHA ? 2 : 1) * sh.L * sh.S * tb;
  // 64 bytes past a page boundary, as the engine's pinned pools often are.
  std::vector<unsigned char> mem(pool_bytes + 4096 + 64);
  unsigned char* base = mem.data() + (4096 - reinterpret_cast<uintptr_t>(mem.data()) % 4096) + 64;
  fill_random(base, pool_bytes);
  layout.base = base;

  size_t per = 0;
  int64_t one_page[1] = {0};
  EXPECT_EQ(kvtier_page_fragments(s, &per), KVTIER_ERR_NO_LAYOUT);
  const char* k0 = "k0";
  int r0;
  EXPECT_EQ(kvtier_batch_set_v1_slots(s, &k0, 1, one_page, 1, &r0), KVTIER_ERR_NO_LAYOUT);
  EXPECT_EQ(r0, KVTIER_ERR_NO_LAYOUT);
  EXPECT_EQ(kvtier_register_layout(s, &layout), KVTIER_ERR_NOT_REGISTERED);
  ASSERT_EQ(kvtier_register_buffer(s, base, pool_bytes), KVTIER_OK);
  kvtier_pool_layout_t bad = layout;
  bad.struct_size = 8;
  EXPECT_EQ(kvtier_register_layout(s, &bad), KVTIER_ERR_INVALID_ARG);
  bad = layout;
  bad.page_size = 0;
  EXPECT_EQ(kvtier_register_layout(s, &bad), KVTIER_ERR_INVALID_ARG);
  bad = layout;
  bad.layout = 7;
  EXPECT_EQ(kvtier_register_layout(s, &bad), KVTIER_ERR_INVALID_ARG);
  ASSERT_EQ(kvtier_register_layout(s, &layout), KVTIER_OK) << kvtier_last_error();
  ASSERT_EQ(kvtier_page_fragments(s, &per), KVTIER_OK);
  EXPECT_EQ(per, expected_runs(sh, 0).size());

  // Pages 1 and 3 go out under two keys; read back into pages 0 and 2.
  const size_t pages = sh.S / sh.P;
  ASSERT_GE(pages, 4u);
  auto slots_for = [&](std::vector<uint64_t> page_ids) {
    std::vector<int64_t> slots;
    for (uint64_t p : page_ids)
      for (uint64_t t = 0; t < sh.P; ++t) slots.push_back(static_cast<int64_t>(p * sh.P + t));
    return slots;
  };
  auto src = slots_for({1, 3});
  std::vector<void*> ptrs(2 * per);
  std::vector<size_t> sizes(2 * per);
  ASSERT_EQ(kvtier_get_page_buffer_meta(s, src.data(), src.size(), ptrs.data(), sizes.data(),
                                        ptrs.size()),
            KVTIER_OK);
  EXPECT_EQ(kvtier_get_page_buffer_meta(s, src.data(), src.size(), ptrs.data(), sizes.data(),
                                        ptrs.size() - 1),
            KVTIER_ERR_BUFFER_TOO_SMALL);
  for (size_t i = 0; i < 2; ++i) {
    auto runs = expected_runs(sh, (i ? 3 : 1) * sh.P);
    for (size_t f = 0; f < per; ++f) {
      EXPECT_EQ(static_cast<unsigned char*>(ptrs[i * per + f]), base + runs[f].first) << f;
      EXPECT_EQ(sizes[i * per + f], runs[f].second) << f;
    }
  }
  auto keys = keys_for("layout", 2);
  auto ck = c_keys(keys);
  int res[2];
  ASSERT_EQ(kvtier_batch_set_v1_slots(s, ck.data(), 2, src.data(), src.size(), res), KVTIER_OK);
  ASSERT_EQ(res[0], KVTIER_OK) << kvtier_last_error();
  ASSERT_EQ(res[1], KVTIER_OK);
  auto dst = slots_for({0, 2});
  ASSERT_EQ(kvtier_batch_get_v1_slots(s, ck.data(), 2, dst.data(), dst.size(), res), KVTIER_OK);
  ASSERT_EQ(res[0], KVTIER_OK) << kvtier_last_error();
  ASSERT_EQ(res[1], KVTIER_OK);
  for (size_t i = 0; i < 2; ++i) {
    auto from = expected_runs(sh, (i ? 3 : 1) * sh.P), to = expected_runs(sh, (i ? 2 : 0) * sh.P);
    for (size_t f = 0; f < per; ++f)
      ASSERT_EQ(0, memcmp(base + from[f].first, base + to[f].first, from[f].second)) << f;
  }
  // The flat value equals the engine's flat page: its runs concatenated.
  std::vector<unsigned char> flat(2 * pool_bytes / sh.S * sh.P), expect;
  for (auto [off, len] : expected_runs(sh, 1 * sh.P))
    expect.insert(expect.end(), base + off, base + off + len);
  void* fb = flat.data();
  size_t fc = flat.size();
  int64_t fr;
  ASSERT_EQ(kvtier_batch_get(s, ck.data(), 1, &fb, &fc, &fr), KVTIER_OK);
  ASSERT_EQ(fr, static_cast<int64_t>(expect.size()));
  flat.resize(expect.size());
  EXPECT_EQ(flat, expect);

  // Bad slots: off a page boundary, or past the pool, fail their key; others go through.
  std::vector<int64_t> odd = slots_for({1, 2});
  odd[0] = 1;
  auto fresh = keys_for("layout-odd", 2);
  auto fk = c_keys(fresh);
  ASSERT_EQ(kvtier_batch_set_v1_slots(s, fk.data(), 2, odd.data(), odd.size(), res), KVTIER_OK);
  EXPECT_EQ(res[0], KVTIER_ERR_OUT_OF_RANGE);
  EXPECT_EQ(res[1], KVTIER_OK);
  odd = slots_for({1, 2});
  odd[sh.P] = static_cast<int64_t>(sh.S);
  ASSERT_EQ(kvtier_batch_get_v1_slots(s, ck.data(), 2, odd.data(), odd.size(), res), KVTIER_OK);
  EXPECT_EQ(res[0], KVTIER_OK);
  EXPECT_EQ(res[1], KVTIER_ERR_OUT_OF_RANGE);
  odd[sh.P] = -static_cast<int64_t>(sh.P);
  ASSERT_EQ(kvtier_batch_get_v1_slots(s, ck.data(), 2, odd.data(), odd.size(), res), KVTIER_OK);
  EXPECT_EQ(res[1], KVTIER_ERR_OUT_OF_RANGE);
  // Slot count that is not keys * page_size refuses the call.
  EXPECT_EQ(kvtier_batch_get_v1_slots(s, ck.data(), 2, odd.data(), odd.size() - 1, res),
            KVTIER_ERR_INVALID_ARG);
  EXPECT_EQ(res[0], KVTIER_ERR_INVALID_ARG);
}

// ---- page identity: one format per handle ------------------------------------------------

// An MHA page_first pool of S tokens with random bytes; `dtype` names its element type.
struct FormatPool {
  static constexpr uint32_t P = 4, L = 2, H = 2, D = 8, E = 2, S = 64;
  std::vector<unsigned char> bytes = random_bytes(size_t{2} * S * L * H * D * E);
  kvtier_pool_layout_t layout(const char* dtype, int order = KVTIER_LAYOUT_PAGE_FIRST) {
    return kvtier_test::P2pShape{KVTIER_POOL_MHA, order, P, L, H, D, 0, E, S}.layout(bytes.data(),
                                                                                     dtype);
  }
  std::vector<int64_t> slots(std::initializer_list<int> pages) const {
    std::vector<int64_t> out;
    for (int p : pages)
      for (uint32_t t = 0; t < P; ++t) out.push_back(int64_t{p} * P + t);
    return out;
  }
};

int slots_call(decltype(&kvtier_batch_set_v1_slots) call, kvtier_store_t* s,
               const std::vector<std::string>& keys, const std::vector<int64_t>& slots,
               std::vector<int>* res) {
  auto ck = c_keys(keys);
  res->assign(keys.size(), 99);
  return call(s, ck.data(), ck.size(), slots.data(), slots.size(), res->data());
}

TEST(CApiIdentity, ViewsWithOtherFormatsNeverReadEachOthersPages) {
  Store s;
  FormatPool pool;
  ASSERT_EQ(kvtier_register_buffer(s, pool.bytes.data(), pool.bytes.size()), KVTIER_OK);
  kvtier_store_t *bf16 = nullptr, *fp16 = nullptr, *layer = nullptr;
  ASSERT_EQ(kvtier_open_view(s, &bf16), KVTIER_OK);
  ASSERT_EQ(kvtier_open_view(s, &fp16), KVTIER_OK);
  ASSERT_EQ(kvtier_open_view(s, &layer), KVTIER_OK);
  auto l = pool.layout("bfloat16");
  ASSERT_EQ(kvtier_register_layout(bf16, &l), KVTIER_OK) << kvtier_last_error();
  l = pool.layout("float16");
  ASSERT_EQ(kvtier_register_layout(fp16, &l), KVTIER_OK);
  l = pool.layout("bfloat16", KVTIER_LAYOUT_LAYER_FIRST);
  ASSERT_EQ(kvtier_register_layout(layer, &l), KVTIER_OK);
  auto keys = keys_for("ident", 2);
  std::vector<int> res;
  ASSERT_EQ(slots_call(kvtier_batch_set_v1_slots, bf16, keys, pool.slots({1, 2}), &res), 0);
  EXPECT_EQ(res, (std::vector<int>{KVTIER_OK, KVTIER_OK}));
  EXPECT_EQ(exists(bf16, keys), 2u);
  const auto before = pool.bytes;
  EXPECT_EQ(exists(s, keys), 0u);  // no format is a format of its own too
  for (kvtier_store_t* other : {fp16, layer}) {
    EXPECT_EQ(exists(other, keys), 0u);
    ASSERT_EQ(slots_call(kvtier_batch_get_v1_slots, other, keys, pool.slots({5, 6}), &res), 0);
    EXPECT_EQ(res, (std::vector<int>{KVTIER_ERR_NOT_FOUND, KVTIER_ERR_NOT_FOUND}));
  }
  EXPECT_EQ(pool.bytes, before);  // no miss wrote a byte
  // Each format keeps its own page under the same key.
  ASSERT_EQ(slots_call(kvtier_batch_set_v1_slots, fp16, keys, pool.slots({3, 4}), &res), 0);
  ASSERT_EQ(slots_call(kvtier_batch_get_v1_slots, bf16, keys, pool.slots({7, 8}), &res), 0);
  EXPECT_EQ(res, (std::vector<int>{KVTIER_OK, KVTIER_OK}));
  const size_t page = size_t{FormatPool::L} * FormatPool::P * FormatPool::H * FormatPool::D * 2;
  EXPECT_EQ(0, memcmp(&pool.bytes[7 * page], &pool.bytes[1 * page], page));
  // A handle's own format, by name: the same name reads the same pages.
  kvtier_store_t* named = nullptr;
  ASSERT_EQ(kvtier_open_view(s, &named), KVTIER_OK);
  ASSERT_EQ(kvtier_set_page_format(named, "state/96"), KVTIER_OK);
  set_all(named, keys, {random_bytes(96), random_bytes(96)});
  EXPECT_EQ(exists(named, keys), 2u);
  ASSERT_EQ(kvtier_set_page_format(named, "state/97"), KVTIER_OK);
  EXPECT_EQ(exists(named, keys), 0u);
  ASSERT_EQ(kvtier_set_page_format(named, nullptr), KVTIER_OK);  // no format: s's pages
  EXPECT_EQ(exists(named, keys), 0u);
  std::string huge(5000, 'f');
  EXPECT_EQ(kvtier_set_page_format(named, huge.c_str()), KVTIER_ERR_INVALID_ARG);
  kvtier_close(named);
  kvtier_store_t* none = s;
  EXPECT_EQ(kvtier_open_view(nullptr, &none), KVTIER_ERR_INVALID_ARG);
  EXPECT_EQ(none, nullptr);
  for (kvtier_store_t* v : {bf16, fp16, layer}) kvtier_close(v);
}

TEST(CApiIdentity, ViewsOutliveTheFirstHandleAndShareItsTiers) {
  kvtier_store_t* s = nullptr;
  ASSERT_EQ(kvtier_open("tiers=memory", &s), KVTIER_OK);
  kvtier_store_t* v = nullptr;
  ASSERT_EQ(kvtier_open_view(s, &v), KVTIER_OK);
  auto keys = keys_for("outlive", 3);
  auto values = std::vector<std::vector<unsigned char>>{random_bytes(100), random_bytes(200),
                                                        random_bytes(300)};
  set_all(s, keys, values);
  EXPECT_EQ(exists(v, keys), 3u);  // no format on either: the same pages
  kvtier_close(s);
  EXPECT_EQ(exists(v, keys), 3u);
  auto ck = c_keys(keys);
  std::vector<std::vector<unsigned char>> out(3, std::vector<unsigned char>(300));
  std::vector<void*> bufs{out[0].data(), out[1].data(), out[2].data()};
  std::vector<size_t> caps(3, 300);
  std::vector<int64_t> got(3);
  ASSERT_EQ(kvtier_batch_get(v, ck.data(), 3, bufs.data(), caps.data(), got.data()), KVTIER_OK);
  for (size_t i = 0; i < 3; ++i) {
    ASSERT_EQ(got[i], static_cast<int64_t>(values[i].size()));
    EXPECT_TRUE(std::equal(values[i].begin(), values[i].end(), out[i].begin()));
  }
  kvtier_close(v);
}

TEST(CApiIdentity, AFileTierReopenedWithAnotherDtypeMisses) {
  const std::string cfg = kvtier_test::with_test_dir("tiers=file;file_dir={dir}/ident");
  FormatPool pool;
  auto keys = keys_for("reopen", 2);
  std::vector<int> res;
  int reads = 0;
  for (const char* dtype : {"bfloat16", "float16", "bfloat16"}) {
    kvtier_store_t* s = nullptr;
    const int rc = kvtier_open(cfg.c_str(), &s);
    if (rc == KVTIER_ERR_UNSUPPORTED) GTEST_SKIP() << kvtier_last_error();  // no file tier built
    ASSERT_EQ(rc, KVTIER_OK) << kvtier_last_error();
    ASSERT_EQ(kvtier_register_buffer(s, pool.bytes.data(), pool.bytes.size()), KVTIER_OK);
    auto l = pool.layout(dtype);
    ASSERT_EQ(kvtier_register_layout(s, &l), KVTIER_OK);
    if (std::string(dtype) == "float16") {  // the second run: another dtype, same shape
      EXPECT_EQ(exists(s, keys), 0u);
      ASSERT_EQ(slots_call(kvtier_batch_get_v1_slots, s, keys, pool.slots({9, 10}), &res), 0);
      EXPECT_EQ(res, (std::vector<int>{KVTIER_ERR_NOT_FOUND, KVTIER_ERR_NOT_FOUND}));
    } else if (exists(s, keys) == 0) {  // the first run writes
      ASSERT_EQ(slots_call(kvtier_batch_set_v1_slots, s, keys, pool.slots({1, 2}), &res), 0);
      EXPECT_EQ(res, (std::vector<int>{KVTIER_OK, KVTIER_OK}));
    } else {
      ++reads;  // the third run, bf16 again, reads what the first wrote
      ASSERT_EQ(slots_call(kvtier_batch_get_v1_slots, s, keys, pool.slots({11, 12}), &res), 0);
      EXPECT_EQ(res, (std::vector<int>{KVTIER_OK, KVTIER_OK}));
      const size_t page = size_t{2} * FormatPool::P * FormatPool::H * FormatPool::D * 2;
      EXPECT_EQ(0, memcmp(&pool.bytes[11 * page], &pool.bytes[1 * page], page));
    }
    kvtier_close(s);
  }
  EXPECT_EQ(reads, 1);
}

TEST(CApiIdentity, ALayoutStructOfRelease01IsAccepted) {
  Store s;
  FormatPool pool;
  ASSERT_EQ(kvtier_register_buffer(s, pool.bytes.data(), pool.bytes.size()), KVTIER_OK);
  auto l = pool.layout("ignored");
  l.struct_size = offsetof(kvtier_pool_layout_t, dtype_name);  // 0.1's struct ends here
  EXPECT_EQ(kvtier_register_layout(s, &l), KVTIER_OK) << kvtier_last_error();
  l.struct_size = offsetof(kvtier_pool_layout_t, pool_tokens);
  EXPECT_EQ(kvtier_register_layout(s, &l), KVTIER_ERR_INVALID_ARG);
}

TEST(CApiIdentity, ExistsEachAnswersEveryKey) {
  Store s;
  auto keys = keys_for("each", 3);
  set_all(s, {keys[0], keys[2]}, {random_bytes(10), random_bytes(10)});
  std::string long_key(KVTIER_MAX_KEY_LEN + 1, 'k');
  std::vector<const char*> ck{keys[0].c_str(),  keys[1].c_str(), "",
                              long_key.c_str(), keys[2].c_str(), nullptr};
  std::vector<int> present(ck.size(), 99);
  ASSERT_EQ(kvtier_batch_exists_each(s, ck.data(), ck.size(), present.data()), KVTIER_OK);
  EXPECT_EQ(present,
            (std::vector<int>{KVTIER_OK, KVTIER_ERR_NOT_FOUND, KVTIER_ERR_KEY_TOO_LONG,
                              KVTIER_ERR_KEY_TOO_LONG, KVTIER_OK, KVTIER_ERR_INVALID_ARG}));
  size_t hits = 99;  // the run stops at the miss; a bad key would stop it too
  ASSERT_EQ(kvtier_batch_exists(s, ck.data(), ck.size(), &hits), KVTIER_OK);
  EXPECT_EQ(hits, 1u);
  std::vector<const char*> bad_second{keys[0].c_str(), ""};
  ASSERT_EQ(kvtier_batch_exists(s, bad_second.data(), 2, &hits), KVTIER_OK);
  EXPECT_EQ(hits, 1u);
  EXPECT_NE(std::string(kvtier_last_error()).find("key 1"), std::string::npos);
  EXPECT_EQ(kvtier_batch_exists_each(s, ck.data(), 0, present.data()), KVTIER_ERR_INVALID_ARG);
}

// kvtier_batch_size_each: each tier (memory, file, a real kvtier-server over TCP) answers a
// stored value's size, of any size; a miss, a bad key and an empty batch get their codes; the
// caller's memory is not touched (there is none to touch) and the value then reads back whole
// into a buffer of exactly that size.
TEST(CApiSize, EveryTierAnswersAStoredValuesSize) {
  kvtier_test::ServerProcess server;
  const std::vector<std::string> configs = {
      "tiers=memory;memory_capacity=64MiB",
      kvtier_test::with_test_dir("tiers=file;file_dir={dir}/sizes"),
      "tiers=remote;remote_transport=tcp;remote_servers=" + server.address()};
  const std::vector<size_t> sizes = {1, 4095, 4096, 300 * 1024 + 7, 5 * 1024 * 1024 + 1};
  for (const std::string& cfg : configs) {
    SCOPED_TRACE(cfg);
    kvtier_store_t* s = nullptr;
    const int rc = kvtier_open(cfg.c_str(), &s);
    if (rc == KVTIER_ERR_UNSUPPORTED && cfg.find("file") != std::string::npos) continue;
    ASSERT_EQ(rc, KVTIER_OK) << kvtier_last_error();
    auto keys = keys_for("sizes", sizes.size());
    std::vector<std::vector<unsigned char>> values;
    for (size_t n : sizes) values.push_back(random_bytes(n));
    set_all(s, keys, values);
    std::string long_key(KVTIER_MAX_KEY_LEN + 1, 'k');
    auto ck = c_keys(keys);
    ck.push_back("sizes-missing");
    ck.push_back(long_key.c_str());
    std::vector<int64_t> got(ck.size(), 99);
    ASSERT_EQ(kvtier_batch_size_each(s, ck.data(), ck.size(), got.data()), KVTIER_OK);
    for (size_t i = 0; i < sizes.size(); ++i) EXPECT_EQ(got[i], int64_t(sizes[i])) << i;
    EXPECT_EQ(got[sizes.size()], KVTIER_ERR_NOT_FOUND);
    EXPECT_EQ(got[sizes.size() + 1], KVTIER_ERR_KEY_TOO_LONG);
    EXPECT_EQ(kvtier_batch_size_each(s, ck.data(), 0, got.data()), KVTIER_ERR_INVALID_ARG);
    EXPECT_EQ(kvtier_batch_size_each(s, nullptr, 1, got.data()), KVTIER_ERR_INVALID_ARG);
    EXPECT_EQ(got[0], KVTIER_ERR_INVALID_ARG);
    // The largest, read into a buffer of the size the call gave.
    const size_t last = sizes.size() - 1;
    std::vector<unsigned char> out(sizes[last]);
    void* buf = out.data();
    size_t cap = out.size();
    int64_t r = 0;
    const char* k = keys[last].c_str();
    ASSERT_EQ(kvtier_batch_get(s, &k, 1, &buf, &cap, &r), KVTIER_OK);
    EXPECT_EQ(r, int64_t(cap));
    EXPECT_TRUE(out == values[last]);
    kvtier_close(s);
  }
}

std::string shape_name(const ::testing::TestParamInfo<Shape>& info) {
  const char* kinds[] = {"MHA", "MLA"};
  const char* orders[] = {"layer_first", "page_first", "page_first_direct"};
  return std::string(kinds[info.param.kind]) + "_" + orders[info.param.layout];
}

INSTANTIATE_TEST_SUITE_P(
    AllRows, CApiLayout,
    ::testing::Values(Shape{KVTIER_POOL_MHA, KVTIER_LAYOUT_LAYER_FIRST, 4, 3, 2, 8, 0, 2, 32},
                      Shape{KVTIER_POOL_MHA, KVTIER_LAYOUT_PAGE_FIRST, 4, 3, 2, 8, 0, 2, 32},
                      Shape{KVTIER_POOL_MHA, KVTIER_LAYOUT_PAGE_FIRST_DIRECT, 4, 3, 2, 8, 0, 2, 32},
                      Shape{KVTIER_POOL_MLA, KVTIER_LAYOUT_LAYER_FIRST, 8, 5, 0, 0, 24, 2, 64},
                      Shape{KVTIER_POOL_MLA, KVTIER_LAYOUT_PAGE_FIRST, 8, 5, 0, 0, 24, 2, 64},
                      Shape{KVTIER_POOL_MLA, KVTIER_LAYOUT_PAGE_FIRST_DIRECT, 8, 5, 0, 0, 24, 2,
                            64}),
    shape_name);

}  // namespace
