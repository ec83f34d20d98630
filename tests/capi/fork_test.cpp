// fork() after kvtier_open, as engines that spawn workers do: the child must not use or tear
// down what the parent's handle holds (io_uring rings, the folder's lock, sockets, threads),
// and the parent must not notice. Real processes; each round checks every byte on both sides.
#include <gtest/gtest.h>
#include <kvtier/kvtier.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <string>
#include <vector>

#include "tests/common/test_util.h"

namespace {

constexpr size_t kPage = 64 * 1024;

struct Pages {
  std::vector<std::string> keys;
  std::vector<std::vector<unsigned char>> values;
  std::vector<const char*> ks() const { return kvtier_test::c_keys(keys); }
};

Pages make_pages(const std::string& prefix, size_t n) {
  Pages p;
  for (size_t i = 0; i < n; ++i) {
    p.keys.push_back(kvtier_test::make_key(prefix, i));
    p.values.push_back(kvtier_test::random_bytes(kPage));
  }
  return p;
}

int put(kvtier_store_t* s, const Pages& p) {
  auto ks = p.ks();
  std::vector<const void*> v;
  for (const auto& x : p.values) v.push_back(x.data());
  std::vector<size_t> sizes(p.keys.size(), kPage);
  std::vector<int> r(p.keys.size());
  int rc = kvtier_batch_set(s, ks.data(), ks.size(), v.data(), sizes.data(), r.data());
  for (int x : r) rc = rc ? rc : x;
  return rc;
}

// 0 if every page reads back exact, else the first failing code (or 1 for wrong bytes).
int check(kvtier_store_t* s, const Pages& p) {
  auto ks = p.ks();
  std::vector<std::vector<unsigned char>> got(p.keys.size(), std::vector<unsigned char>(kPage));
  std::vector<void*> g;
  for (auto& x : got) g.push_back(x.data());
  std::vector<size_t> caps(p.keys.size(), kPage);
  std::vector<int64_t> r(p.keys.size());
  if (int rc = kvtier_batch_get(s, ks.data(), ks.size(), g.data(), caps.data(), r.data())) return rc;
  for (size_t i = 0; i < r.size(); ++i) {
    if (r[i] != static_cast<int64_t>(kPage)) return r[i] < 0 ? static_cast<int>(r[i]) : 1;
    if (got[i] != p.values[i]) return 1;
  }
  return 0;
}

// The child's side: the inherited handle is refused (every result too), a store of its own on
// the same folder reads the parent's pages and stores its own. The exit status says what failed.
[[noreturn]] void child(kvtier_store_t* inherited, const std::string& config, const Pages& parents,
                        const Pages& mine) {
  auto ks = parents.ks();
  std::vector<int> r(ks.size(), 0);
  std::vector<unsigned char> buf(kPage);
  std::vector<void*> g(ks.size(), buf.data());
  std::vector<size_t> caps(ks.size(), kPage);
  std::vector<int64_t> gr(ks.size(), 0);
  if (kvtier_batch_get(inherited, ks.data(), ks.size(), g.data(), caps.data(), gr.data()) !=
      KVTIER_ERR_CLOSED)
    _exit(10);
  for (int64_t x : gr)
    if (x != KVTIER_ERR_CLOSED) _exit(11);
  if (std::string(kvtier_last_error()).find("fork") == std::string::npos) _exit(12);
  kvtier_close(inherited);  // forgets it; must not touch the parent's rings or lock
  kvtier_store_t* own = nullptr;
  if (kvtier_open(config.c_str(), &own) != KVTIER_OK) _exit(13);
  if (check(own, parents) != 0) _exit(14);
  if (put(own, mine) != 0) _exit(15);
  if (check(own, mine) != 0) _exit(16);
  kvtier_close(own);
  _exit(0);
}

TEST(Fork, AChildIsRefusedItsInheritedHandleAndTheParentIsUnaffected) {
  const std::string config = kvtier_test::with_test_dir(
      "tiers=memory,file;memory_capacity=8MiB;file_dir={dir}/fork;file_capacity=64MiB");
  kvtier_store_t* s = nullptr;
  const int rc = kvtier_open(config.c_str(), &s);
  if (rc == KVTIER_ERR_UNSUPPORTED) GTEST_SKIP() << kvtier_last_error();  // no file tier built
  ASSERT_EQ(rc, KVTIER_OK) << kvtier_last_error();
  const Pages parents = make_pages("parent", 24);
  ASSERT_EQ(put(s, parents), KVTIER_OK);
  for (int round = 0; round < 3; ++round) {  // the failure this guards against came 2 in 3
    const Pages mine = make_pages("child" + std::to_string(round), 8);
    const Pages more = make_pages("more" + std::to_string(round), 8);
    const pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) child(s, config, parents, mine);
    // The parent goes on using its handle while the child runs.
    ASSERT_EQ(put(s, more), KVTIER_OK);
    int status = 0;
    while (waitpid(pid, &status, WNOHANG) == 0) {
      ASSERT_EQ(check(s, parents), 0) << kvtier_last_error();
      ASSERT_EQ(check(s, more), 0) << kvtier_last_error();
    }
    ASSERT_TRUE(WIFEXITED(status)) << "the child died of signal " << WTERMSIG(status);
    ASSERT_EQ(WEXITSTATUS(status), 0) << "the child's check that failed (see child())";
    // The child's pages are on the shared folder; the parent's handle still works.
    EXPECT_EQ(check(s, parents), 0);
    EXPECT_EQ(check(s, more), 0);
    EXPECT_EQ(check(s, mine), 0) << kvtier_last_error();
  }
  kvtier_close(s);
}

}  // namespace
