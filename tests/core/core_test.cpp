// Unit tests of the core: config parsing, key ids, layout validation, regions, and the tier
// chain's logic (checksums, promotion, write-back demotion) with a test double below memory.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "src/config.h"
#include "src/keys.h"
#include "src/layout.h"
#include "src/regions.h"
#include "src/store.h"
#include "tests/core/test_tier.h"
#include "tests/common/test_util.h"

namespace {

using namespace kvtier;
using kvtier_test::RotTier;

TEST(Config, Sizes) {
  uint64_t b = 0;
  ASSERT_TRUE(parse_size("4GiB", &b).is_ok());
  EXPECT_EQ(b, 4ull << 30);
  ASSERT_TRUE(parse_size(" 512 MiB ", &b).is_ok());
  EXPECT_EQ(b, 512ull << 20);
  ASSERT_TRUE(parse_size("64k", &b).is_ok());
  EXPECT_EQ(b, 64ull << 10);
  ASSERT_TRUE(parse_size("3GB", &b).is_ok());
  EXPECT_EQ(b, 3000000000ull);
  ASSERT_TRUE(parse_size("12345", &b).is_ok());
  EXPECT_EQ(b, 12345u);
  for (const char* bad :
       {"", "GiB", "-1", "4 parsecs", "1.5GiB", "99999999999999999999", "17179869184TiB"})
    EXPECT_EQ(parse_size(bad, &b).code(), KVTIER_ERR_CONFIG) << bad;
}

TEST(Config, DefaultsOverridesAndErrors) {
  unsetenv("KVTIER_TIERS");
  Config c;
  ASSERT_TRUE(load_config(nullptr, &c).is_ok());
  EXPECT_EQ(c.tiers, std::vector<std::string>{"memory"});
  EXPECT_EQ(c.write_policy, WritePolicy::kWriteThrough);
  ASSERT_TRUE(
      load_config(" KVTIER_TIERS = memory , test_rot ;\nwrite_policy=WRITE_BACK\n", &c).is_ok());
  EXPECT_EQ(c.tiers, (std::vector<std::string>{"memory", "test_rot"}));
  EXPECT_EQ(c.write_policy, WritePolicy::kWriteBack);

  setenv("KVTIER_NAMESPACE", "model-a", 1);
  setenv("KVTIER_LOG_LEVEL", "info", 1);
  ASSERT_TRUE(load_config("namespace=model-b", &c).is_ok());
  EXPECT_EQ(c.ns, "model-b") << "the config string overrides the environment";
  EXPECT_EQ(c.log_level, "info");
  unsetenv("KVTIER_NAMESPACE");
  unsetenv("KVTIER_LOG_LEVEL");

  struct Bad {
    const char* text;
    const char* names;
  };
  for (Bad b :
       {Bad{"tiers=memory,,file", "KVTIER_TIERS"}, Bad{"tiers=memory,memory", "KVTIER_TIERS"},
        Bad{"log_level=loud", "KVTIER_LOG_LEVEL"},
        Bad{"memory_capacity=0", "KVTIER_MEMORY_CAPACITY"},
        Bad{"write_policy=", "KVTIER_WRITE_POLICY"}, Bad{"colour=blue", "COLOUR"}}) {
    Status s = load_config(b.text, &c);
    EXPECT_EQ(s.code(), KVTIER_ERR_CONFIG) << b.text;
    EXPECT_NE(s.message().find(b.names), std::string::npos) << s.message();
  }
}

TEST(Keys, NamespacesSeparateIds) {
  EXPECT_EQ(key_id(namespace_seed("a"), "k"), key_id(namespace_seed("a"), "k"));
  EXPECT_NE(key_id(namespace_seed("a"), "k"), key_id(namespace_seed("b"), "k"));
  EXPECT_NE(key_id(namespace_seed("a"), "k1"), key_id(namespace_seed("a"), "k2"));
}

TEST(Keys, ChecksumOverFragmentsEqualsFlat) {
  auto v = kvtier_test::random_bytes(10000);
  auto* p = reinterpret_cast<std::byte*>(v.data());
  Frag parts[3] = {{p, 1}, {p + 1, 4999}, {p + 5000, 5000}};
  EXPECT_EQ(checksum(parts), checksum(v.data(), v.size()));
  std::vector<std::byte> flat(10000);
  gather(parts, flat.data());
  EXPECT_EQ(0, memcmp(flat.data(), v.data(), v.size()));
}

// The fused copy + checksum must move the same bytes and hash them the same as the two passes
// it replaces, for fragments small (ordinary stores) and large (streamed, split into pieces),
// at odd offsets, and for a scatter of fewer bytes than the fragments hold.
TEST(Keys, CopyWithChecksumEqualsCopyThenChecksum) {
  const size_t sizes[] = {1, 63, 4096, (64 << 10) - 1, 64 << 10, (300 << 10) + 17};
  auto v = kvtier_test::random_bytes(2 * ((300 << 10) + 17) + 4096);
  auto* p = reinterpret_cast<std::byte*>(v.data());
  const auto* u = v.data();
  for (size_t a : sizes) {
    for (size_t b : sizes) {
      Frag parts[2] = {{p + 3, a}, {p + 3 + a + 5, b}};
      const std::vector<unsigned char> want = [&] {
        std::vector<unsigned char> w(u + 3, u + 3 + a);
        w.insert(w.end(), u + 8 + a, u + 8 + a + b);
        return w;
      }();
      std::vector<std::byte> flat(a + b + 1);
      EXPECT_EQ(gather_checksum(parts, flat.data() + 1), checksum(want.data(), want.size()));
      ASSERT_EQ(0, memcmp(flat.data() + 1, want.data(), want.size())) << a << " " << b;
      std::vector<std::byte> back(a + b + 64);
      Frag out[2] = {{back.data() + 7, a}, {back.data() + 7 + a + 9, b + 20}};
      for (size_t len : {a + b, a, a + b / 2}) {
        std::memset(back.data(), 0x5A, back.size());
        EXPECT_EQ(scatter_checksum(flat.data() + 1, len, out), checksum(want.data(), len));
        ASSERT_EQ(0, memcmp(back.data() + 7, want.data(), std::min(len, a)));
        if (len > a) {
          ASSERT_EQ(0, memcmp(back.data() + 16 + a, want.data() + a, len - a));
        }
      }
    }
  }
}

TEST(Regions, ContainmentAndOverlap) {
  Regions r;
  std::vector<std::byte> mem(1000);
  ASSERT_TRUE(r.add(mem.data() + 100, 500).is_ok());
  EXPECT_TRUE(r.contains(mem.data() + 100, 500));
  EXPECT_FALSE(r.contains(mem.data() + 99, 2));
  EXPECT_FALSE(r.contains(mem.data() + 599, 2));
  EXPECT_EQ(r.add(mem.data() + 599, 10).code(), KVTIER_ERR_INVALID_ARG);
  EXPECT_EQ(r.add(mem.data() + 50, 51).code(), KVTIER_ERR_INVALID_ARG);
  EXPECT_TRUE(r.add(mem.data() + 600, 10).is_ok()) << "adjacent is fine";
  Frag bad[2] = {{mem.data() + 100, 10}, {mem.data() + 605, 10}};
  Status s = r.check(bad);
  EXPECT_EQ(s.code(), KVTIER_ERR_NOT_REGISTERED);
  EXPECT_NE(s.message().find("fragment 1"), std::string::npos);
  EXPECT_EQ(r.remove(mem.data() + 101).code(), KVTIER_ERR_NOT_FOUND);
  EXPECT_TRUE(r.remove(mem.data() + 100).is_ok());
  EXPECT_FALSE(r.contains(mem.data() + 100, 1));
}

TEST(Layout, Validation) {
  std::byte b;
  PoolLayout l{&b,       PoolKind::kMHA, PoolOrder::kLayerFirst, 64, 28, 8, 128, 0, 2,
               64 * 100, "bfloat16"};
  EXPECT_TRUE(l.validate().is_ok());
  // The format names everything that orders or sizes a page's bytes, not where the pool is.
  EXPECT_EQ(l.describe(), "mha/layer_first/dtype=bfloat16/E=2/P=64/L=28/H=8/D=128");
  auto moved = l;
  moved.base = nullptr;
  moved.pool_tokens *= 2;
  EXPECT_EQ(moved.describe(), l.describe());
  for (auto change :
       {+[](PoolLayout& x) { x.dtype_name = "float16"; },
        +[](PoolLayout& x) { x.order = PoolOrder::kPageFirst; },
        +[](PoolLayout& x) { x.page_size = 32; }, +[](PoolLayout& x) { x.layer_num = 27; },
        +[](PoolLayout& x) { x.head_num = 4; }, +[](PoolLayout& x) { x.head_dim = 64; },
        +[](PoolLayout& x) { x.dtype_size = 1; },
        +[](PoolLayout& x) { x.kind = PoolKind::kMLA; }}) {
    auto other = l;
    change(other);
    EXPECT_NE(other.describe(), l.describe());
    EXPECT_NE(format_hash(other.describe()), format_hash(l.describe()));
  }
  EXPECT_EQ(format_hash(""), 0u);
  EXPECT_NE(format_seed(7, format_hash("x")), 7u);
  EXPECT_EQ(format_seed(7, 0), 7u);
  EXPECT_EQ(l.frags_per_page(), 56u);
  EXPECT_EQ(l.page_bytes(), 2ull * 28 * 64 * 8 * 128 * 2);
  auto bad = l;
  bad.pool_tokens = 6401;
  EXPECT_EQ(bad.validate().code(), KVTIER_ERR_INVALID_ARG);
  bad = l;
  bad.head_num = 0;
  EXPECT_EQ(bad.validate().code(), KVTIER_ERR_INVALID_ARG);
  bad = l;
  bad.head_dim = 1ull << 40;
  EXPECT_EQ(bad.validate().code(), KVTIER_ERR_INVALID_ARG);
  bad = l;
  bad.kind = PoolKind::kMLA;  // MLA needs kv_cache_dim
  EXPECT_EQ(bad.validate().code(), KVTIER_ERR_INVALID_ARG);
}

// ---- the chain ----------------------------------------------------------------------------

std::unique_ptr<Store> open_store(const char* text) {
  Config c;
  EXPECT_TRUE(load_config(text, &c).is_ok());
  std::unique_ptr<Store> s;
  Status st = Store::open(c, &s);
  EXPECT_TRUE(st.is_ok()) << st.message();
  return s;
}

struct Pages {
  std::vector<std::string> keys;
  std::vector<const char*> ck;
  std::vector<std::vector<unsigned char>> values;
  std::vector<Frag> frags;
  Pages(const char* prefix, size_t n, size_t size) {
    for (size_t i = 0; i < n; ++i) {
      keys.push_back(kvtier_test::make_key(prefix, i));
      values.push_back(kvtier_test::random_bytes(size));
    }
    for (size_t i = 0; i < n; ++i) {
      ck.push_back(keys[i].c_str());
      frags.push_back({reinterpret_cast<std::byte*>(values[i].data()), size});
    }
  }
};

void put_all(Store& s, Pages& p) {
  std::vector<int64_t> r(p.keys.size(), 0);
  ASSERT_TRUE(s.put({.keys = p.ck, .frags = p.frags, .per_key = 1, .results = r}).is_ok());
  for (int64_t x : r) ASSERT_EQ(x, KVTIER_OK);
}

// Reads every page into a scratch buffer; returns per-key results and checks bytes of hits.
std::vector<int64_t> get_all(Store& s, Pages& p) {
  const size_t size = p.values[0].size();
  std::vector<unsigned char> buf(p.keys.size() * size);
  std::vector<Frag> dst;
  for (size_t i = 0; i < p.keys.size(); ++i)
    dst.push_back({reinterpret_cast<std::byte*>(buf.data() + i * size), size});
  std::vector<int64_t> r(p.keys.size(), 0);
  s.get({.keys = p.ck, .frags = dst, .per_key = 1, .fit = Fit::kExact, .results = r});
  for (size_t i = 0; i < p.keys.size(); ++i)
    if (r[i] >= 0) {
      EXPECT_EQ(0, memcmp(buf.data() + i * size, p.values[i].data(), size)) << i;
    }
  return r;
}

TEST(Chain, RottenBytesAreAMissNeverWrongBytes) {
  auto s = open_store("tiers=test_rot");
  Pages p("rot", 8, 4096);
  put_all(*s, p);
  RotTier::last->rot_all();
  for (int64_t r : get_all(*s, p)) EXPECT_EQ(r, KVTIER_ERR_NOT_FOUND);
  EXPECT_EQ(RotTier::last->size(), 0u) << "a page that failed its checksum is dropped";
  EXPECT_NE(s->stats_json().find("\"errors\":8"), std::string::npos) << s->stats_json();
}

TEST(Chain, ReadPromotesIntoUpperTiers) {
  auto s = open_store("tiers=memory,test_rot");
  Pages p("promote", 6, 8192);
  // The pages are only in the lower tier.
  RotTier* lower = RotTier::last;
  std::vector<PutOp> ops;
  for (size_t i = 0; i < 6; ++i)
    ops.push_back({key_id(namespace_seed(""), p.keys[i]), Frags(&p.frags[i], 1), 8192,
                   checksum(p.values[i].data(), 8192)});
  lower->put(ops);
  for (int64_t x : get_all(*s, p)) EXPECT_EQ(x, 8192);
  std::string js = s->stats_json();
  EXPECT_NE(js.find("\"name\":\"memory\",\"keys\":6"), std::string::npos) << js;
  EXPECT_NE(js.find("\"name\":\"test_rot\",\"keys\":6,\"bytes\":0,\"capacity\":0,\"hits\":6"),
            std::string::npos)
      << js;
  lower->clear();
  for (int64_t x : get_all(*s, p)) EXPECT_EQ(x, 8192) << "served by memory after promotion";
}

TEST(Chain, WriteBackDemotesEvictedPages) {
  auto s = open_store("tiers=memory,test_rot;write_policy=write_back;memory_capacity=64KiB");
  Pages p("demote", 32, 8192);  // 256 KiB through a 64 KiB memory tier
  put_all(*s, p);
  RotTier* lower = RotTier::last;
  EXPECT_GE(lower->size(), 24u) << "evicted pages went down";
  EXPECT_LE(lower->size(), 32u);
  std::string js = s->stats_json();
  EXPECT_NE(js.find("\"name\":\"memory\",\"keys\":8,\"bytes\":65536"), std::string::npos) << js;
  EXPECT_NE(js.find("\"evictions\":24"), std::string::npos) << js;
  for (int64_t x : get_all(*s, p)) EXPECT_EQ(x, 8192);
  size_t hits = 0;
  ASSERT_TRUE(s->exists(p.ck, &hits).is_ok());
  EXPECT_EQ(hits, 32u);
}

TEST(Chain, WriteThroughWritesEveryTier) {
  auto s = open_store("tiers=memory,test_rot");
  Pages p("wt", 5, 1000);
  put_all(*s, p);
  EXPECT_EQ(RotTier::last->size(), 5u);
}

}  // namespace
