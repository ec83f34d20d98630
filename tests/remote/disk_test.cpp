// kvtier-server's disk alone (no sockets), in a temp folder: only a write makes a namespace's
// folder, the fd budget closes the least recently used file tiers (never one in use), and the
// capacity deletes the least recently used other namespaces whole.
#include "backends/remote/server/disk.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cinttypes>
#include <cstring>
#include <filesystem>
#include <vector>

#include "tests/common/test_util.h"

namespace kvtier {
namespace {

namespace fs = std::filesystem;

// Random pages of `len` bytes, ids from `first`.
struct Pages {
  Pages(size_t n, size_t len, uint64_t first) : bytes(n, std::vector<std::byte>(len)) {
    for (size_t i = 0; i < n; ++i) {
      kvtier_test::fill_random(bytes[i].data(), len);
      pages.push_back({KeyId{0, first + i}, bytes[i].data(), len, checksum(bytes[i].data(), len)});
      ids.push_back(pages.back().id);
    }
  }
  std::vector<std::vector<std::byte>> bytes;
  std::vector<Disk::Page> pages;
  std::vector<KeyId> ids;
};

class ServerDisk : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!KVTIER_TEST_FILE_TIER) GTEST_SKIP() << "this build has no file tier";
    dir = kvtier_test::test_dir() + "/" +
          ::testing::UnitTest::GetInstance()->current_test_info()->name();
    fs::create_directories(dir);
    ::chmod(dir.c_str(), 0700);
  }
  std::unique_ptr<Disk> open(uint64_t capacity) {
    auto d = std::make_unique<Disk>(dir, capacity, warnings);
    Status s = d->open();
    EXPECT_TRUE(s.is_ok()) << s.message();
    return s.is_ok() ? std::move(d) : nullptr;
  }
  bool folder(uint64_t ns) const {
    char name[32];
    std::snprintf(name, sizeof name, "ns-%016" PRIx64, ns);
    return fs::exists(dir + "/" + name);
  }
  // Writes the pages, each must be durable.
  void write(Disk& d, uint64_t ns, const Pages& p) {
    std::vector<int32_t> results(p.pages.size(), -1);
    d.write(ns, p.pages, results);
    for (int32_t r : results) ASSERT_EQ(r, 0);
  }
  // Reads them back: byte for byte what was written.
  void expect_on_disk(Disk& d, uint64_t ns, const Pages& p) {
    std::shared_ptr<Tier> t = d.tier(ns, false);
    ASSERT_TRUE(t);
    for (size_t i = 0; i < p.pages.size(); ++i) {
      std::vector<std::byte> out(p.bytes[i].size());
      Frag f{out.data(), out.size()};
      GetOp op;
      op.id = p.ids[i];
      op.frags = Frags(&f, 1);
      op.capacity = out.size();
      t->get({&op, 1});
      ASSERT_EQ(op.result, static_cast<int64_t>(out.size()));
      ASSERT_EQ(std::memcmp(out.data(), p.bytes[i].data(), out.size()), 0);
    }
  }

  std::string dir;
  LimitedWarnings warnings;
};

TEST_F(ServerDisk, OnlyAWriteMakesANamespaceFolder) {
  auto d = open(1ull << 30);
  ASSERT_TRUE(d);
  Pages p(4, 20000, 1);
  std::vector<uint8_t> present(4, 0);
  std::vector<int32_t> removed(4, KVTIER_ERR_NOT_FOUND);
  d->exists(7, p.ids, present);
  d->remove(7, p.ids, removed);
  d->clear(7);
  EXPECT_FALSE(d->tier(7, false));
  EXPECT_FALSE(folder(7));  // reads, REMOVE and CLEAR made nothing
  EXPECT_EQ(present, std::vector<uint8_t>(4, 0));
  EXPECT_EQ(removed, std::vector<int32_t>(4, KVTIER_ERR_NOT_FOUND));

  write(*d, 7, p);
  EXPECT_TRUE(folder(7));
  EXPECT_GT(d->bytes(), 4u * 20000);
  expect_on_disk(*d, 7, p);
  d->exists(7, p.ids, present);
  EXPECT_EQ(present, std::vector<uint8_t>(4, 1));
  d->exists(8, p.ids, present = std::vector<uint8_t>(4, 0));  // another namespace's: none
  EXPECT_EQ(present, std::vector<uint8_t>(4, 0));
  d->remove(7, std::span(p.ids).first(1), removed);
  EXPECT_EQ(removed[0], KVTIER_OK);
  d->exists(7, p.ids, present);
  EXPECT_EQ(present, (std::vector<uint8_t>{0, 1, 1, 1}));
  d->clear(7);
  d->exists(7, p.ids, present = std::vector<uint8_t>(4, 0));
  EXPECT_EQ(present, std::vector<uint8_t>(4, 0));
}

TEST_F(ServerDisk, TheFdBudgetClosesTheLeastRecentlyUsedTierNeverOneInUse) {
  auto d = open(1ull << 30);
  ASSERT_TRUE(d);
  d->set_max_open(1);
  Pages a(2, 10000, 1), b(2, 10000, 100);
  write(*d, 1, a);
  write(*d, 2, b);           // closes namespace 1's tier to open its own
  expect_on_disk(*d, 1, a);  // reopened, its pages intact
  {
    std::shared_ptr<Tier> in_use = d->tier(1, false);
    ASSERT_TRUE(in_use);
    EXPECT_FALSE(d->tier(2, false));  // the one open tier is in use: refused, not closed
    std::vector<int32_t> results(2, 0);
    d->write(2, b.pages, results);
    EXPECT_EQ(results, std::vector<int32_t>(2, KVTIER_ERR_BUSY));
    EXPECT_EQ(d->tier(1, false), in_use);  // still the one open tier, not closed under its user
  }
  expect_on_disk(*d, 2, b);  // no longer in use: closed for namespace 2
  expect_on_disk(*d, 1, a);
}

TEST_F(ServerDisk, CapacityDeletesTheLeastRecentlyUsedNamespacesWhole) {
  Pages a(8, 60000, 1), b(8, 60000, 100), c(8, 60000, 200);
  uint64_t one = 0;  // what one namespace of these pages takes on disk
  {
    auto d = open(1ull << 30);
    ASSERT_TRUE(d);
    write(*d, 1, a);
    one = d->bytes();
    write(*d, 2, b);
  }
  // Reopened with room for two of them: the namespaces on disk are found again, namespace 1
  // (written first) the least recently used.
  const uint64_t capacity = 2 * one + 100000;  // less than one more write of these pages
  auto d = open(capacity);
  ASSERT_TRUE(d);
  EXPECT_GT(d->bytes(), one + one / 2);  // both found (to a block or so: files grow by blocks)
  EXPECT_LT(d->bytes(), capacity);
  write(*d, 3, c);
  EXPECT_FALSE(folder(1));  // deleted whole to make room
  EXPECT_TRUE(folder(2));
  EXPECT_TRUE(folder(3));
  EXPECT_LE(d->bytes(), capacity);
  std::vector<uint8_t> present(8, 0);
  d->exists(1, a.ids, present);
  EXPECT_EQ(present, std::vector<uint8_t>(8, 0));
  expect_on_disk(*d, 3, c);

  // Namespace 3 is the least recently used now, but in use: namespace 2 goes instead.
  std::shared_ptr<Tier> in_use = d->tier(3, false);
  expect_on_disk(*d, 2, b);
  write(*d, 1, a);
  EXPECT_TRUE(folder(3));
  EXPECT_FALSE(folder(2));
  expect_on_disk(*d, 1, a);
}

}  // namespace
}  // namespace kvtier
