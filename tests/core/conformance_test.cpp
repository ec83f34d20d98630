// The conformance suite: every tier, driven through the Tier interface by the same random
// operations as the memory tier (the oracle), must give the same results and the same bytes.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>

#include "backends/memory/memory_tier.h"
#include "tests/common/server_process.h"
#include "tests/common/test_util.h"
#include "src/tier.h"

namespace {

using namespace kvtier;

struct TierParam {
  const char* label;         // the test's name
  const char* name;          // the tier
  const char* config;        // settings for this tier, roomy enough to never evict
  const char* small_config;  // settings with a small byte budget, for the eviction test
};

void PrintTo(const TierParam& p, std::ostream* os) {
  *os << p.label;
}

class Conformance : public ::testing::TestWithParam<TierParam> {
 protected:
  void SetUp() override { open(GetParam().config); }
  void open(const char* config) {
    tier_.reset();
    Config c;
    std::string text = kvtier_test::with_test_dir(config);
    for (auto [mark, server] : {std::pair{"{server}", &kvtier_test::shared_server},
                                std::pair{"{small_server}", &kvtier_test::shared_small_server}})
      if (size_t p = text.find(mark); p != std::string::npos)
        text.replace(p, strlen(mark), server().address());
    Status s = load_config(text.c_str(), &c);
    ASSERT_TRUE(s.is_ok()) << s.message();
    s = make_tier(GetParam().name, c, &tier_);
    if (s.code() == KVTIER_ERR_UNSUPPORTED) GTEST_SKIP() << s.message();
    if (std::string(GetParam().label) == "remote_rdma" && !std::getenv("KVTIER_TEST_RDMA_ADDR"))
      GTEST_SKIP() << "set KVTIER_TEST_RDMA_ADDR to an IP address of this host's RDMA NIC to run "
                      "the RDMA conformance (the server cannot serve RDMA on loopback)";
    ASSERT_TRUE(s.is_ok()) << s.message();
    tier_->clear();
  }
  std::unique_ptr<Tier> tier_;
};

// Splits [p, p+len) into 1..4 fragments at random points.
std::vector<Frag> split(std::byte* p, size_t len, std::mt19937_64& g) {
  std::vector<size_t> cuts{0, len};
  size_t n = g() % 4;
  for (size_t i = 0; i < n && len > 1; ++i) cuts.push_back(1 + g() % (len - 1));
  std::sort(cuts.begin(), cuts.end());
  cuts.erase(std::unique(cuts.begin(), cuts.end()), cuts.end());
  std::vector<Frag> f;
  for (size_t i = 0; i + 1 < cuts.size(); ++i) f.push_back({p + cuts[i], cuts[i + 1] - cuts[i]});
  return f;
}

TEST_P(Conformance, RandomOperationsMatchTheMemoryOracle) {
  MemoryTier oracle(1ull << 30);
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 g(seed);
  constexpr size_t kKeys = 48;
  std::vector<KeyId> ids;
  std::vector<std::vector<unsigned char>> values;
  for (size_t k = 0; k < kKeys; ++k) {
    ids.push_back(key_id(namespace_seed("conformance"), kvtier_test::make_key("c", k)));
    size_t size = 1 + g() % (k % 3 == 0 ? 300000 : 20000);
    values.push_back(kvtier_test::random_bytes(size));
    if (k % 2) kvtier_test::make_kv_like(values.back().data(), size);  // compressible
  }
  auto pick = [&](size_t n) {
    std::vector<size_t> ks;
    for (size_t i = 0; i < n; ++i) ks.push_back(g() % kKeys);
    return ks;
  };
  for (int step = 0; step < 300; ++step) {
    const int op = static_cast<int>(g() % 100);
    auto ks = pick(1 + g() % 12);
    if (op < 40) {  // put
      std::vector<std::vector<Frag>> frags;
      for (size_t k : ks)
        frags.push_back(split(reinterpret_cast<std::byte*>(values[k].data()), values[k].size(), g));
      std::vector<PutOp> a, b;
      for (size_t i = 0; i < ks.size(); ++i) {
        PutOp p{ids[ks[i]], frags[i], values[ks[i]].size(),
                checksum(values[ks[i]].data(), values[ks[i]].size())};
        a.push_back(p);
        b.push_back(p);
      }
      tier_->put(a);
      oracle.put(b);
      for (size_t i = 0; i < ks.size(); ++i) ASSERT_EQ(a[i].result, b[i].result) << step;
    } else if (op < 75) {  // get
      std::vector<std::vector<std::byte>> bufs_a, bufs_b;
      std::vector<std::vector<Frag>> fa, fb;
      std::vector<GetOp> a, b;
      for (size_t k : ks) {
        const size_t size = values[k].size();
        const int shape = static_cast<int>(g() % 4);  // exact, roomy, too small, exact-but-wrong
        size_t cap = shape == 1 ? size + 1 + g() % 100 : shape == 2 ? size - 1 : size;
        if (shape == 3) cap = size + 4096;
        bufs_a.emplace_back(cap + 1, std::byte{0x11});
        bufs_b.emplace_back(cap + 1, std::byte{0x11});
      }
      for (size_t i = 0; i < ks.size(); ++i) {
        const size_t cap = bufs_a[i].size() - 1;
        fa.push_back(cap ? split(bufs_a[i].data(), cap, g) : std::vector<Frag>{});
        fb.push_back({{bufs_b[i].data(), cap}});
      }
      for (size_t i = 0; i < ks.size(); ++i) {
        const size_t cap = bufs_a[i].size() - 1;
        const Fit fit = cap == values[ks[i]].size() || cap == values[ks[i]].size() + 4096
                            ? Fit::kExact
                            : Fit::kAtMost;
        a.push_back({ids[ks[i]], fa[i], cap, fit});
        b.push_back({ids[ks[i]], fb[i], cap, fit});
      }
      tier_->get(a);
      oracle.get(b);
      for (size_t i = 0; i < ks.size(); ++i) {
        ASSERT_EQ(a[i].result, b[i].result) << "step " << step << " key " << ks[i];
        if (a[i].result > 0) {
          ASSERT_EQ(0, memcmp(bufs_a[i].data(), values[ks[i]].data(), values[ks[i]].size()));
          ASSERT_EQ(a[i].checksum, b[i].checksum);
        }
        if (a[i].result < 0 && a[i].result != KVTIER_ERR_NOT_FOUND) {
          for (std::byte c : bufs_a[i]) ASSERT_EQ(c, std::byte{0x11}) << "wrote on a failed get";
        }
        ASSERT_EQ(bufs_a[i].back(), std::byte{0x11}) << "wrote past the buffer";
      }
    } else if (op < 90) {  // exists
      std::vector<KeyId> q;
      for (size_t k : ks) q.push_back(ids[k]);
      std::vector<uint8_t> pa(q.size()), pb(q.size());
      tier_->exists(q, pa);
      oracle.exists(q, pb);
      ASSERT_EQ(pa, pb) << step;
    } else if (op < 99) {  // remove
      std::sort(ks.begin(), ks.end());
      ks.erase(std::unique(ks.begin(), ks.end()), ks.end());
      std::vector<KeyId> q;
      for (size_t k : ks) q.push_back(ids[k]);
      std::vector<int> ra(q.size()), rb(q.size());
      tier_->remove(q, ra);
      oracle.remove(q, rb);
      ASSERT_EQ(ra, rb) << step;
    } else {
      tier_->clear();
      oracle.clear();
    }
  }
  EXPECT_EQ(tier_->stats().keys, oracle.stats().keys);
}

TEST_P(Conformance, EvictionKeepsTheBudgetAndTheBytes) {
  open(GetParam().small_config);
  if (tier_->stats().capacity == 0) GTEST_SKIP() << GetParam().name << " has no byte budget";
  const uint64_t cap = tier_->stats().capacity;
  const size_t page = 64 * 1024;
  const size_t n = static_cast<size_t>(cap / page) * 2 + 3;
  ASSERT_LE(n, 4096u) << "use a small capacity for this tier in the suite";
  std::vector<std::vector<unsigned char>> values;
  std::vector<KeyId> ids;
  for (size_t i = 0; i < n; ++i) {
    values.push_back(kvtier_test::random_bytes(page));
    ids.push_back(key_id(namespace_seed("evict"), kvtier_test::make_key("e", i)));
    Frag f{reinterpret_cast<std::byte*>(values[i].data()), page};
    PutOp op{ids[i], Frags(&f, 1), page, checksum(values[i].data(), page)};
    tier_->put(std::span<PutOp>(&op, 1));
    ASSERT_EQ(op.result, KVTIER_OK) << i;
    ASSERT_LE(tier_->stats().bytes, cap);
  }
  EXPECT_GT(tier_->stats().evictions, 0u);
  std::vector<uint8_t> present(n);
  tier_->exists(ids, present);
  EXPECT_EQ(present.back(), 1) << "the newest page stays";
  EXPECT_EQ(present.front(), 0) << "the oldest page goes";
  std::vector<unsigned char> buf(page);
  for (size_t i = 0; i < n; ++i) {
    if (!present[i]) continue;
    Frag f{reinterpret_cast<std::byte*>(buf.data()), page};
    GetOp op{ids[i], Frags(&f, 1), page, Fit::kExact};
    tier_->get(std::span<GetOp>(&op, 1));
    ASSERT_EQ(op.result, static_cast<int64_t>(page));
    ASSERT_EQ(buf, values[i]);
  }
}

// A tier that can tear must itself refuse bytes that do not match the checksum they were
// stored with (the store does not check behind it): here the checksum given at put is wrong.
TEST_P(Conformance, TierThatCanTearRefusesBytesThatFailTheirChecksum) {
  if (!tier_->caps().can_tear) GTEST_SKIP() << GetParam().name << " cannot tear";
  const size_t page = 70000;
  auto value = kvtier_test::random_bytes(page);
  const KeyId id = key_id(namespace_seed("inline"), kvtier_test::make_key("bad-sum", 0));
  Frag f{reinterpret_cast<std::byte*>(value.data()), page};
  PutOp op{id, Frags(&f, 1), page, checksum(value.data(), page) ^ 1};
  op.has_checksum = true;
  tier_->put(std::span<PutOp>(&op, 1));
  ASSERT_EQ(op.result, KVTIER_OK);
  std::vector<unsigned char> buf(page);
  Frag g{reinterpret_cast<std::byte*>(buf.data()), page};
  GetOp get{id, Frags(&g, 1), page, Fit::kExact};
  tier_->get(std::span<GetOp>(&get, 1));
  EXPECT_EQ(get.result, KVTIER_ERR_CORRUPT);
  // With no checksum given, the tier computes the right one and the bytes come back.
  const KeyId id2 = key_id(namespace_seed("inline"), kvtier_test::make_key("no-sum", 0));
  PutOp op2{id2, Frags(&f, 1), page, 0};
  tier_->put(std::span<PutOp>(&op2, 1));
  ASSERT_EQ(op2.result, KVTIER_OK);
  GetOp get2{id2, Frags(&g, 1), page, Fit::kExact};
  tier_->get(std::span<GetOp>(&get2, 1));
  EXPECT_EQ(get2.result, static_cast<int64_t>(page));
  EXPECT_EQ(buf, value);
}

INSTANTIATE_TEST_SUITE_P(
    Tiers, Conformance,
    ::testing::Values(
        TierParam{"memory", "memory", "", "memory_capacity=1MiB"},
        TierParam{"test_rot", "test_rot", "", ""},
        TierParam{"file", "file", "file_dir={dir}/conformance",
                  "file_dir={dir}/conformance-small;file_capacity=1MiB"},
        TierParam{"file_zstd", "file", "file_dir={dir}/conformance-zstd;file_compression=zstd:3",
                  "file_dir={dir}/conformance-zstd-small;"
                  "file_capacity=1MiB;file_compression=zstd"},
        TierParam{"remote_tcp", "remote", "remote_transport=tcp;remote_servers={server}",
                  "remote_transport=tcp;remote_servers={small_server}"},
        // Skips, saying why, on hosts without an RDMA device.
        TierParam{"remote_rdma", "remote", "remote_transport=rdma;remote_servers={server}",
                  "remote_transport=rdma;remote_servers={small_server}"}),
    [](const auto& info) { return std::string(info.param.label); });

}  // namespace
