// The store's one request type, Batch: what each of its fields asks of put, get, exists_each and
// remove, on a real memory tier with random pages split into fragments of random sizes.
#include <gtest/gtest.h>

#include <cstring>

#include "src/store.h"
#include "tests/common/test_util.h"

namespace {

using namespace kvtier;

constexpr size_t kKeys = 8;
constexpr size_t kPerKey = 3;  // fragments per key

class BatchTest : public ::testing::Test {
 protected:
  void SetUp() override {
    Config c;
    ASSERT_TRUE(load_config("tiers=memory;memory_capacity=64MiB", &c).is_ok());
    ASSERT_TRUE(Store::open(c, &store_).is_ok());
    for (size_t i = 0; i < kKeys; ++i) names_.push_back(kvtier_test::make_key("batch", i));
    keys_ = kvtier_test::c_keys(names_);
    size_t total = 0;
    for (size_t f = 0; f < kKeys * kPerKey; ++f) {
      frag_len_.push_back(1 + kvtier_test::rng()() % 3000);
      total += frag_len_.back();
    }
    pages_ = kvtier_test::random_bytes(total);
  }

  // Fragments over `buf` laid out as pages_: every key's fragments back to back.
  std::vector<Frag> frags_over(std::vector<unsigned char>& buf) const {
    std::vector<Frag> out;
    size_t off = 0;
    for (size_t len : frag_len_) {
      out.push_back({reinterpret_cast<std::byte*>(buf.data() + off), len});
      off += len;
    }
    return out;
  }
  size_t offset(size_t key) const {
    size_t off = 0;
    for (size_t f = 0; f < key * kPerKey; ++f) off += frag_len_[f];
    return off;
  }
  size_t value_len(size_t key) const { return offset(key + 1) - offset(key); }
  bool same_value(const std::vector<unsigned char>& buf, size_t key) const {
    return std::memcmp(buf.data() + offset(key), pages_.data() + offset(key), value_len(key)) == 0;
  }

  Status put_all(std::span<int64_t> results, Memory memory = Memory::kAny) {
    std::vector<Frag> src = frags_over(pages_);
    return store_->put(
        {.keys = keys_, .frags = src, .per_key = kPerKey, .memory = memory, .results = results});
  }
  // exists_each's results for every key.
  std::vector<int64_t> present() {
    std::vector<int64_t> r(kKeys, KVTIER_OK);
    EXPECT_TRUE(store_->exists_each({.keys = keys_, .results = r}).is_ok());
    return r;
  }

  std::unique_ptr<Store> store_;
  std::vector<std::string> names_;
  std::vector<const char*> keys_;
  std::vector<size_t> frag_len_;  // kKeys * kPerKey fragment sizes
  std::vector<unsigned char> pages_;
};

TEST_F(BatchTest, PutThenGetRoundTripsEveryKeyByteForByte) {
  std::vector<int64_t> r(kKeys, KVTIER_OK);
  ASSERT_TRUE(put_all(r).is_ok());
  for (int64_t x : r) EXPECT_EQ(x, KVTIER_OK);
  std::vector<unsigned char> dst = kvtier_test::random_bytes(pages_.size());
  std::vector<Frag> df = frags_over(dst);
  std::fill(r.begin(), r.end(), KVTIER_OK);
  ASSERT_TRUE(
      store_
          ->get({.keys = keys_, .frags = df, .per_key = kPerKey, .fit = Fit::kExact, .results = r})
          .is_ok());
  for (size_t i = 0; i < kKeys; ++i) EXPECT_EQ(r[i], static_cast<int64_t>(value_len(i))) << i;
  EXPECT_EQ(dst, pages_);
  size_t hits = 0;
  ASSERT_TRUE(store_->exists(keys_, &hits).is_ok());
  EXPECT_EQ(hits, kKeys);
}

TEST_F(BatchTest, FitDecidesWhatAValueOfAnotherSizeGets) {
  std::vector<int64_t> r(kKeys, KVTIER_OK);
  ASSERT_TRUE(put_all(r).is_ok());
  struct Case {
    Fit fit;
    int extra;     // the buffer's size minus the value's
    int64_t want;  // KVTIER_OK: the value's size
  };
  for (Case c : {Case{Fit::kAtMost, 1, KVTIER_OK}, Case{Fit::kAtMost, 0, KVTIER_OK},
                 Case{Fit::kAtMost, -1, KVTIER_ERR_BUFFER_TOO_SMALL},
                 Case{Fit::kExact, 1, KVTIER_ERR_SIZE_MISMATCH}, Case{Fit::kExact, 0, KVTIER_OK},
                 Case{Fit::kExact, -1, KVTIER_ERR_SIZE_MISMATCH}}) {
    std::vector<std::vector<unsigned char>> bufs, before;
    std::vector<Frag> df;  // one flat buffer per key
    for (size_t i = 0; i < kKeys; ++i) {
      bufs.push_back(kvtier_test::random_bytes(value_len(i) + c.extra));
      df.push_back({reinterpret_cast<std::byte*>(bufs[i].data()), bufs[i].size()});
    }
    before = bufs;
    std::fill(r.begin(), r.end(), KVTIER_OK);
    Status s = store_->get({.keys = keys_, .frags = df, .per_key = 1, .fit = c.fit, .results = r});
    EXPECT_EQ(s.code(), static_cast<int>(c.want)) << s.message();
    for (size_t i = 0; i < kKeys; ++i) {
      SCOPED_TRACE("key " + std::to_string(i) + ", extra " + std::to_string(c.extra));
      if (c.want != KVTIER_OK) {
        EXPECT_EQ(r[i], c.want);
        EXPECT_EQ(bufs[i], before[i]) << "a value that does not fit is not copied at all";
        continue;
      }
      EXPECT_EQ(r[i], static_cast<int64_t>(value_len(i)));
      EXPECT_EQ(0, std::memcmp(bufs[i].data(), pages_.data() + offset(i), value_len(i)));
    }
  }
}

TEST_F(BatchTest, RegisteredMemoryIsCheckedKeyByKey) {
  const size_t half = kKeys / 2;
  ASSERT_TRUE(store_->register_buffer(pages_.data(), offset(half)).is_ok());
  std::vector<int64_t> r(kKeys, KVTIER_OK);
  Status s = put_all(r, Memory::kRegistered);
  EXPECT_EQ(s.code(), KVTIER_ERR_NOT_REGISTERED);
  EXPECT_NE(s.message().find("key " + std::to_string(half)), std::string::npos) << s.message();
  std::vector<int64_t> p = present();
  for (size_t i = 0; i < kKeys; ++i) {
    EXPECT_EQ(r[i], i < half ? KVTIER_OK : KVTIER_ERR_NOT_REGISTERED) << i;
    EXPECT_EQ(p[i], i < half ? KVTIER_OK : KVTIER_ERR_NOT_FOUND) << "nothing stored for " << i;
  }
  // The copying calls take any memory.
  std::fill(r.begin(), r.end(), KVTIER_OK);
  ASSERT_TRUE(put_all(r, Memory::kAny).is_ok());
  for (int64_t x : present()) EXPECT_EQ(x, KVTIER_OK);
  // A zero-copy read into memory that is not registered touches nothing.
  std::vector<unsigned char> dst = kvtier_test::random_bytes(pages_.size());
  const std::vector<unsigned char> before = dst;
  std::vector<Frag> df = frags_over(dst);
  std::fill(r.begin(), r.end(), KVTIER_OK);
  s = store_->get({.keys = keys_,
                   .frags = df,
                   .per_key = kPerKey,
                   .memory = Memory::kRegistered,
                   .fit = Fit::kExact,
                   .results = r});
  EXPECT_EQ(s.code(), KVTIER_ERR_NOT_REGISTERED);
  for (int64_t x : r) EXPECT_EQ(x, KVTIER_ERR_NOT_REGISTERED);
  EXPECT_EQ(dst, before);
  EXPECT_TRUE(store_->unregister_buffer(pages_.data()).is_ok());
}

TEST_F(BatchTest, KeysThatFailedUpstreamAreSkippedAndKeepTheirCode) {
  constexpr int64_t kUpstream = KVTIER_ERR_OUT_OF_RANGE;  // as a bad token slot leaves it
  std::vector<int64_t> r(kKeys, KVTIER_OK);
  r[2] = kUpstream;
  ASSERT_TRUE(put_all(r).is_ok());
  for (size_t i = 0; i < kKeys; ++i) EXPECT_EQ(r[i], i == 2 ? kUpstream : KVTIER_OK) << i;
  EXPECT_EQ(present()[2], KVTIER_ERR_NOT_FOUND) << "key 2 was skipped, not stored";
  std::fill(r.begin(), r.end(), KVTIER_OK);
  ASSERT_TRUE(put_all(r).is_ok());

  std::vector<unsigned char> dst = kvtier_test::random_bytes(pages_.size());
  const std::vector<unsigned char> before = dst;
  std::vector<Frag> df = frags_over(dst);
  std::fill(r.begin(), r.end(), KVTIER_OK);
  r[5] = kUpstream;
  ASSERT_TRUE(store_->get({.keys = keys_, .frags = df, .per_key = kPerKey, .results = r}).is_ok());
  for (size_t i = 0; i < kKeys; ++i) {
    if (i == 5) {
      EXPECT_EQ(r[i], kUpstream);
      EXPECT_EQ(0, std::memcmp(dst.data() + offset(i), before.data() + offset(i), value_len(i)));
    } else {
      EXPECT_EQ(r[i], static_cast<int64_t>(value_len(i))) << i;
      EXPECT_TRUE(same_value(dst, i)) << i;
    }
  }

  std::fill(r.begin(), r.end(), KVTIER_OK);
  r[5] = kUpstream;
  ASSERT_TRUE(store_->exists_each({.keys = keys_, .results = r}).is_ok());
  for (size_t i = 0; i < kKeys; ++i) EXPECT_EQ(r[i], i == 5 ? kUpstream : KVTIER_OK) << i;
  ASSERT_TRUE(store_->remove({.keys = keys_, .results = r}).is_ok());
  for (size_t i = 0; i < kKeys; ++i) EXPECT_EQ(r[i], i == 5 ? kUpstream : KVTIER_OK) << i;
  std::vector<int64_t> p = present();
  for (size_t i = 0; i < kKeys; ++i)
    EXPECT_EQ(p[i], i == 5 ? KVTIER_OK : KVTIER_ERR_NOT_FOUND) << "only key 5 was kept";
}

TEST_F(BatchTest, BadKeysFailAloneInEveryCall) {
  const std::string too_long(KVTIER_MAX_KEY_LEN + 1, 'k');
  keys_[1] = nullptr;
  keys_[3] = "";
  keys_[6] = too_long.c_str();
  // good: what the keys with good names get.
  auto expect_codes = [](std::span<const int64_t> r, int64_t good, const Status& s) {
    EXPECT_EQ(s.code(), KVTIER_ERR_INVALID_ARG);
    EXPECT_NE(s.message().find("key 1"), std::string::npos) << s.message();
    for (size_t i = 0; i < kKeys; ++i) {
      const int64_t want = i == 1             ? KVTIER_ERR_INVALID_ARG
                           : i == 3 || i == 6 ? KVTIER_ERR_KEY_TOO_LONG
                                              : good;
      EXPECT_EQ(r[i], want) << i;
    }
  };
  std::vector<int64_t> r(kKeys, KVTIER_OK);
  expect_codes(r, KVTIER_OK, put_all(r));
  std::fill(r.begin(), r.end(), KVTIER_OK);
  expect_codes(r, KVTIER_OK, store_->exists_each({.keys = keys_, .results = r}));
  std::fill(r.begin(), r.end(), KVTIER_OK);
  expect_codes(r, KVTIER_OK, store_->remove({.keys = keys_, .results = r}));
  std::fill(r.begin(), r.end(), KVTIER_OK);
  std::vector<unsigned char> dst = kvtier_test::random_bytes(pages_.size());
  std::vector<Frag> df = frags_over(dst);
  expect_codes(r, KVTIER_ERR_NOT_FOUND,
               store_->get({.keys = keys_, .frags = df, .per_key = kPerKey, .results = r}));
}

TEST_F(BatchTest, ArraysThatDoNotMatchRunNoKey) {
  std::vector<Frag> src = frags_over(pages_);
  std::vector<int64_t> r(kKeys, KVTIER_OK);
  Status s = store_->put({.keys = keys_,
                          .frags = std::span(src).first(src.size() - 1),
                          .per_key = kPerKey,
                          .results = r});
  EXPECT_EQ(s.code(), KVTIER_ERR_INVALID_ARG);
  for (int64_t x : r) EXPECT_EQ(x, KVTIER_ERR_INVALID_ARG);
  std::fill(r.begin(), r.end(), KVTIER_OK);
  EXPECT_EQ(store_->put({.keys = keys_, .results = r}).code(), KVTIER_ERR_INVALID_ARG)
      << "a put without fragments";
  for (int64_t x : r) EXPECT_EQ(x, KVTIER_ERR_INVALID_ARG);
  std::fill(r.begin(), r.end(), KVTIER_OK);
  s = store_->get(
      {.keys = keys_, .frags = src, .per_key = kPerKey, .results = std::span(r).first(kKeys - 1)});
  EXPECT_EQ(s.code(), KVTIER_ERR_INVALID_ARG);
  for (size_t i = 0; i + 1 < kKeys; ++i) EXPECT_EQ(r[i], KVTIER_ERR_INVALID_ARG) << i;
  for (int64_t x : present()) EXPECT_EQ(x, KVTIER_ERR_NOT_FOUND) << "nothing was stored";
}

}  // namespace
