// Bad input at the C ABI that once crashed or failed a whole call: bad keys in batch_exists,
// fragment counts and page-meta counts whose arrays cannot exist.
#include <gtest/gtest.h>
#include <kvtier/kvtier.h>

#include <string>
#include <vector>

#include "tests/common/test_util.h"

namespace {

struct Open {
  kvtier_store_t* s = nullptr;
  Open() { EXPECT_EQ(kvtier_open("tiers=memory;memory_capacity=64MiB", &s), KVTIER_OK); }
  ~Open() { kvtier_close(s); }
};

void put(kvtier_store_t* s, const std::vector<std::string>& keys) {
  auto ck = kvtier_test::c_keys(keys);
  std::vector<std::vector<unsigned char>> vals;
  std::vector<const void*> ptrs;
  std::vector<size_t> sizes;
  for (size_t i = 0; i < keys.size(); ++i) vals.push_back(kvtier_test::random_bytes(300 + i));
  for (auto& v : vals) {
    ptrs.push_back(v.data());
    sizes.push_back(v.size());
  }
  std::vector<int> res(keys.size(), 99);
  ASSERT_EQ(kvtier_batch_set(s, ck.data(), ck.size(), ptrs.data(), sizes.data(), res.data()),
            KVTIER_OK);
  for (int r : res) ASSERT_EQ(r, KVTIER_OK);
}

TEST(CApiInput, BadKeyInBatchExistsEndsTheRunThere) {
  Open o;
  put(o.s, {"good1", "good2", "good3"});
  const std::string long_key(KVTIER_MAX_KEY_LEN + 1, 'k');
  for (const char* bad : {"", long_key.c_str(), static_cast<const char*>(nullptr)}) {
    const char* keys[] = {"good1", "good2", bad, "good3"};
    size_t hits = 99;
    ASSERT_EQ(kvtier_batch_exists(o.s, keys, 4, &hits), KVTIER_OK) << kvtier_last_error();
    EXPECT_EQ(hits, 2u);
    EXPECT_NE(std::string(kvtier_last_error()).find("key 2"), std::string::npos)
        << kvtier_last_error();
  }
  const char* keys[] = {"good1", "good2", "", long_key.c_str()};  // the input
  size_t hits = 99;
  ASSERT_EQ(kvtier_batch_exists(o.s, keys, 4, &hits), KVTIER_OK);
  EXPECT_EQ(hits, 2u);
  const char* first_bad[] = {"", "good1"};
  ASSERT_EQ(kvtier_batch_exists(o.s, first_bad, 2, &hits), KVTIER_OK);
  EXPECT_EQ(hits, 0u);
}

TEST(CApiInput, FragmentCountTooLargeIsInvalidInEverySlot) {
  Open o;
  std::vector<unsigned char> mem = kvtier_test::random_bytes(8192);
  ASSERT_EQ(kvtier_register_buffer(o.s, mem.data(), mem.size()), KVTIER_OK);
  const char* keys[] = {"a", "b", "c", "d"};
  void* ptrs[4] = {mem.data(), mem.data() + 1024, mem.data() + 2048, mem.data() + 3072};
  size_t sizes[4] = {1024, 1024, 1024, 1024};
  for (size_t n_frags : {size_t{1} << 60, ~size_t{0} - 3, size_t{1} << 40}) {
    int res[4] = {7, 7, 7, 7};
    // The arrays hold 4 fragments: a refusal must come before any of them is read.
    EXPECT_EQ(kvtier_batch_set_v1(o.s, keys, 4, ptrs, sizes, n_frags, res), KVTIER_ERR_INVALID_ARG);
    for (int r : res) EXPECT_EQ(r, KVTIER_ERR_INVALID_ARG);
    int gres[4] = {7, 7, 7, 7};
    EXPECT_EQ(kvtier_batch_get_v1(o.s, keys, 4, ptrs, sizes, n_frags, gres),
              KVTIER_ERR_INVALID_ARG);
    for (int r : gres) EXPECT_EQ(r, KVTIER_ERR_INVALID_ARG);
  }
  size_t hits = 99;
  ASSERT_EQ(kvtier_batch_exists(o.s, keys, 4, &hits), KVTIER_OK);
  EXPECT_EQ(hits, 0u) << "a refused call stored something";
}

TEST(CApiInput, PageMetaCountThatOverflowsIsRefused) {
  Open o;
  // MLA layer_first, 8 layers, page of 1 token: 8 fragments per page.
  const size_t L = 8, tokens = 64, C = 16, E = 2;
  std::vector<unsigned char> pool = kvtier_test::random_bytes(L * tokens * C * E);
  ASSERT_EQ(kvtier_register_buffer(o.s, pool.data(), pool.size()), KVTIER_OK);
  kvtier_pool_layout_t layout = {};
  layout.struct_size = sizeof layout;
  layout.base = pool.data();
  layout.pool_kind = KVTIER_POOL_MLA;
  layout.layout = KVTIER_LAYOUT_LAYER_FIRST;
  layout.page_size = 1;
  layout.layer_num = L;
  layout.kv_cache_dim = C;
  layout.dtype_size = E;
  layout.pool_tokens = tokens;
  ASSERT_EQ(kvtier_register_layout(o.s, &layout), KVTIER_OK) << kvtier_last_error();
  int64_t slots[4] = {0, 1, 2, 3};
  void* ptrs[32];
  size_t sizes[32];
  // pages * 8 wraps to 0 (fits any capacity), wraps to a small count, or its bytes overflow.
  for (size_t n : {size_t{1} << 61, (size_t{1} << 61) + 2, size_t{1} << 60, size_t{1} << 40}) {
    EXPECT_EQ(kvtier_get_page_buffer_meta(o.s, slots, n, ptrs, sizes, 32), KVTIER_ERR_INVALID_ARG)
        << n;
    EXPECT_EQ(kvtier_get_page_buffer_meta(o.s, slots, n, ptrs, sizes, ~size_t{0}),
              KVTIER_ERR_INVALID_ARG)
        << n;
  }
  // A count that fits still works, and its fragments are the pool's.
  ASSERT_EQ(kvtier_get_page_buffer_meta(o.s, slots, 4, ptrs, sizes, 32), KVTIER_OK);
  EXPECT_EQ(ptrs[0], pool.data());
  EXPECT_EQ(sizes[0], C * E);
}

// A tier this build was made without is "not built in" (UNSUPPORTED, saying what is missing),
// so callers and tests can tell it from a misspelt name (CONFIG).
TEST(CApiInput, ATierNotBuiltInIsUnsupportedAndSaysWhy) {
  kvtier_store_t* s = nullptr;
  EXPECT_EQ(kvtier_open("tiers=fiel", &s), KVTIER_ERR_CONFIG);
  const std::string cfg = kvtier_test::with_test_dir("tiers=file;file_dir={dir}/built-in");
  const int rc = kvtier_open(cfg.c_str(), &s);
  const std::string why = kvtier_last_error();
  kvtier_close(s);
#if KVTIER_TEST_FILE_TIER
  EXPECT_EQ(rc, KVTIER_OK) << why;
#else
  EXPECT_EQ(rc, KVTIER_ERR_UNSUPPORTED);
  EXPECT_NE(why.find("no file tier (built without liburing)"), std::string::npos) << why;
  EXPECT_EQ(s, nullptr);
#endif
}

}  // namespace
