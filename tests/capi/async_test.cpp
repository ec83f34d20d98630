// The asynchronous batch calls (kvtier_submit_*, kvtier_async_fd, kvtier_drain, kvtier_cancel):
// byte-exact round trips woken through poll() on the fd; submits that return while a stopped
// kvtier-server (SIGSTOP, a real process) holds the request; cancellation, close and unregister
// with requests in flight, and what the caller's memory sees after a request is reported done
// (nothing: the buffer is made inaccessible, the server resumed, and the timeout waited out);
// fork; many threads submitting at once (run under ThreadSanitizer: label "concurrency").
#include <gtest/gtest.h>
#include <kvtier/kvtier.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "tests/common/server_process.h"
#include "tests/common/store.h"
#include "tests/common/test_util.h"

namespace {

using Clock = std::chrono::steady_clock;
using kvtier_test::ServerProcess;

constexpr size_t kPage = 16 * 1024;

using kvtier_test::open_store;

// Page-aligned memory of its own mapping, so a test can take it away with mprotect.
struct Mapping {
  explicit Mapping(size_t len) : len(len) {
    void* p = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    base = p == MAP_FAILED ? nullptr : static_cast<unsigned char*>(p);
  }
  ~Mapping() {
    if (base) munmap(base, len);
  }
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  unsigned char* base;
  size_t len;
};

// n keys with random values, and the fragments (two per key, split unevenly) of a page each in
// a registered region.
struct Pages {
  std::vector<std::string> keys;
  std::vector<std::vector<unsigned char>> values;
  std::vector<const char*> ks() const { return kvtier_test::c_keys(keys); }

  Pages(const std::string& prefix, size_t n) {
    for (size_t i = 0; i < n; ++i) {
      keys.push_back(kvtier_test::make_key(prefix, i));
      values.push_back(kvtier_test::random_bytes(kPage));
    }
  }
  // Fragments of page i at region + i * kPage.
  static void frags(unsigned char* region, size_t n, std::vector<void*>* ptrs,
                    std::vector<size_t>* sizes) {
    ptrs->clear();
    sizes->clear();
    for (size_t i = 0; i < n; ++i) {
      ptrs->push_back(region + i * kPage);
      sizes->push_back(1000);
      ptrs->push_back(region + i * kPage + 1000);
      sizes->push_back(kPage - 1000);
    }
  }
  void copy_to(unsigned char* region) const {
    for (size_t i = 0; i < keys.size(); ++i)
      std::memcpy(region + i * kPage, values[i].data(), kPage);
  }
  bool equal(const unsigned char* region, size_t i) const {
    return std::memcmp(region + i * kPage, values[i].data(), kPage) == 0;
  }
};

// Waits (poll() on the handle's fd, up to timeout_ms) for one completion and drains it.
bool wait_one(kvtier_store_t* s, kvtier_completion_t* c, int timeout_ms = 10000) {
  int fd = -1;
  if (kvtier_async_fd(s, &fd) != KVTIER_OK) return false;
  pollfd p{.fd = fd, .events = POLLIN, .revents = 0};
  if (poll(&p, 1, timeout_ms) != 1 || !(p.revents & POLLIN)) return false;
  size_t n = 0;
  return kvtier_drain(s, c, 1, 0, &n) == KVTIER_OK && n == 1;
}

bool fd_readable(kvtier_store_t* s) {
  int fd = -1;
  if (kvtier_async_fd(s, &fd) != KVTIER_OK) return false;
  pollfd p{.fd = fd, .events = POLLIN, .revents = 0};
  return poll(&p, 1, 0) == 1;
}

size_t pending_completions(kvtier_store_t* s) {
  kvtier_completion_t c[16];
  size_t n = 0;
  EXPECT_EQ(kvtier_drain(s, c, 16, 0, &n), KVTIER_OK);
  return n;
}

TEST(Async, V1RoundTripIsByteExactAndWakesPoll) {
  kvtier_store_t* s = open_store("tiers=memory;memory_capacity=64MiB");
  constexpr size_t kN = 24;
  Pages p("async-v1", kN);
  Mapping src(kN * kPage), dst(kN * kPage);
  ASSERT_EQ(kvtier_register_buffer(s, src.base, src.len), KVTIER_OK);
  ASSERT_EQ(kvtier_register_buffer(s, dst.base, dst.len), KVTIER_OK);
  p.copy_to(src.base);
  auto ks = p.ks();
  std::vector<void*> ptrs;
  std::vector<size_t> sizes;
  Pages::frags(src.base, kN, &ptrs, &sizes);
  std::vector<int> set_res(kN, 99);
  uint64_t set_id = 0;
  ASSERT_EQ(kvtier_submit_set_v1(s, ks.data(), kN, ptrs.data(), sizes.data(), ptrs.size(),
                                 set_res.data(), 7, &set_id),
            KVTIER_OK)
      << kvtier_last_error();
  EXPECT_NE(set_id, 0u);
  // The arrays were copied: scribbling on them after the submit changes nothing.
  std::fill(ptrs.begin(), ptrs.end(), nullptr);
  std::fill(ks.begin(), ks.end(), nullptr);
  kvtier_completion_t c{};
  ASSERT_TRUE(wait_one(s, &c));
  EXPECT_EQ(c.id, set_id);
  EXPECT_EQ(c.user_data, 7u);
  EXPECT_EQ(c.op, KVTIER_OP_SET_V1);
  EXPECT_EQ(c.status, KVTIER_OK);
  for (int r : set_res) EXPECT_EQ(r, KVTIER_OK);
  EXPECT_FALSE(fd_readable(s)) << "the fd stays readable with no completion left";

  ks = p.ks();
  Pages::frags(dst.base, kN, &ptrs, &sizes);
  std::vector<int> get_res(kN, 99);
  uint64_t get_id = 0;
  ASSERT_EQ(kvtier_submit_get_v1(s, ks.data(), kN, ptrs.data(), sizes.data(), ptrs.size(),
                                 get_res.data(), 8, &get_id),
            KVTIER_OK);
  ASSERT_TRUE(wait_one(s, &c));
  EXPECT_EQ(c.id, get_id);
  EXPECT_EQ(c.op, KVTIER_OP_GET_V1);
  EXPECT_EQ(c.status, KVTIER_OK);
  for (size_t i = 0; i < kN; ++i) {
    EXPECT_EQ(get_res[i], KVTIER_OK);
    EXPECT_TRUE(p.equal(dst.base, i)) << "page " << i;
  }

  // exists: per key, a miss is NOT_FOUND and a bad key its own code.
  std::vector<const char*> probe = {ks[0], "async-missing", "", ks[kN - 1]};
  std::vector<int> present(probe.size(), 99);
  uint64_t ex_id = 0;
  ASSERT_EQ(kvtier_submit_exists(s, probe.data(), probe.size(), present.data(), 9, &ex_id),
            KVTIER_OK);
  ASSERT_TRUE(wait_one(s, &c));
  EXPECT_EQ(c.op, KVTIER_OP_EXISTS);
  EXPECT_EQ(present, (std::vector<int>{KVTIER_OK, KVTIER_ERR_NOT_FOUND, KVTIER_ERR_KEY_TOO_LONG,
                                       KVTIER_OK}));
  EXPECT_EQ(kvtier_cancel(s, ex_id), KVTIER_ERR_NOT_FOUND) << "a completed request";
  kvtier_close(s);
}

TEST(Async, SlotsRoundTripIsByteExact) {
  kvtier_store_t* s = open_store("tiers=memory;memory_capacity=64MiB");
  // MHA layer_first: 2 * L fragments per page.
  constexpr uint32_t P = 4, L = 3, H = 2, D = 16, E = 2;
  constexpr uint64_t S = 64;
  const size_t pool_bytes = 2ull * L * S * H * D * E;
  Mapping pool(pool_bytes);
  kvtier_test::fill_random(pool.base, pool_bytes);
  ASSERT_EQ(kvtier_register_buffer(s, pool.base, pool_bytes), KVTIER_OK);
  kvtier_pool_layout_t layout{.struct_size = sizeof(kvtier_pool_layout_t),
                              .base = pool.base,
                              .pool_kind = KVTIER_POOL_MHA,
                              .layout = KVTIER_LAYOUT_LAYER_FIRST,
                              .page_size = P,
                              .layer_num = L,
                              .head_num = H,
                              .head_dim = D,
                              .kv_cache_dim = 0,
                              .dtype_size = E,
                              .pool_tokens = S,
                              .dtype_name = "bfloat16"};
  ASSERT_EQ(kvtier_register_layout(s, &layout), KVTIER_OK) << kvtier_last_error();
  constexpr size_t kN = 5;
  std::vector<std::string> keys;
  for (size_t i = 0; i < kN; ++i) keys.push_back(kvtier_test::make_key("async-slots", i));
  auto ks = kvtier_test::c_keys(keys);
  std::vector<int64_t> from, to;
  for (size_t i = 0; i < kN; ++i)
    for (uint32_t t = 0; t < P; ++t) {
      from.push_back(static_cast<int64_t>(i * 2 * P + t));      // pages 0, 2, 4, ...
      to.push_back(static_cast<int64_t>((i * 2 + 1) * P + t));  // pages 1, 3, 5, ...
    }
  std::vector<int> res(kN, 99);
  uint64_t id = 0;
  ASSERT_EQ(
      kvtier_submit_set_v1_slots(s, ks.data(), kN, from.data(), from.size(), res.data(), 1, &id),
      KVTIER_OK);
  kvtier_completion_t c{};
  ASSERT_TRUE(wait_one(s, &c));
  EXPECT_EQ(c.status, KVTIER_OK);
  for (int r : res) EXPECT_EQ(r, KVTIER_OK);
  ASSERT_EQ(kvtier_submit_get_v1_slots(s, ks.data(), kN, to.data(), to.size(), res.data(), 2, &id),
            KVTIER_OK);
  ASSERT_TRUE(wait_one(s, &c));
  EXPECT_EQ(c.op, KVTIER_OP_GET_V1_SLOTS);
  for (int r : res) EXPECT_EQ(r, KVTIER_OK);
  // Every fragment of each destination page holds its source page's bytes.
  size_t per = 0;
  ASSERT_EQ(kvtier_page_fragments(s, &per), KVTIER_OK);
  std::vector<void*> fp(kN * per), tp(kN * per);
  std::vector<size_t> fs(kN * per), ts(kN * per);
  ASSERT_EQ(
      kvtier_get_page_buffer_meta(s, from.data(), from.size(), fp.data(), fs.data(), fp.size()),
      KVTIER_OK);
  ASSERT_EQ(kvtier_get_page_buffer_meta(s, to.data(), to.size(), tp.data(), ts.data(), tp.size()),
            KVTIER_OK);
  for (size_t f = 0; f < fp.size(); ++f) {
    ASSERT_EQ(fs[f], ts[f]);
    EXPECT_EQ(std::memcmp(fp[f], tp[f], fs[f]), 0) << "fragment " << f;
  }
  // A slot count that does not split over the keys is refused at submit, in every result.
  std::fill(res.begin(), res.end(), 0);
  EXPECT_EQ(
      kvtier_submit_get_v1_slots(s, ks.data(), kN, to.data(), to.size() - 1, res.data(), 3, &id),
      KVTIER_ERR_INVALID_ARG);
  for (int r : res) EXPECT_EQ(r, KVTIER_ERR_INVALID_ARG);
  // One that splits but is not page_size per key fails when it runs, in the completion.
  ASSERT_EQ(kvtier_submit_get_v1_slots(s, ks.data(), kN, to.data(), kN * 2, res.data(), 4, &id),
            KVTIER_OK);
  ASSERT_TRUE(wait_one(s, &c));
  EXPECT_EQ(c.status, KVTIER_ERR_INVALID_ARG);
  for (int r : res) EXPECT_EQ(r, KVTIER_ERR_INVALID_ARG);
  kvtier_close(s);
}

TEST(Async, BadArgumentsAndAFullQueueAreRefusedAtSubmit) {
  kvtier_store_t* s = open_store("tiers=memory;memory_capacity=16MiB;async_depth=2");
  Pages p("async-busy", 1);
  Mapping m(kPage);
  ASSERT_EQ(kvtier_register_buffer(s, m.base, m.len), KVTIER_OK);
  auto ks = p.ks();
  void* ptr = m.base;
  size_t size = kPage;
  int r[3] = {1, 1, 1};
  uint64_t id = 0;
  EXPECT_EQ(kvtier_submit_get_v1(nullptr, ks.data(), 1, &ptr, &size, 1, r, 0, &id),
            KVTIER_ERR_INVALID_ARG);
  EXPECT_EQ(kvtier_submit_get_v1(s, ks.data(), 1, &ptr, &size, 1, r, 0, nullptr),
            KVTIER_ERR_INVALID_ARG);
  EXPECT_EQ(r[0], KVTIER_ERR_INVALID_ARG);
  EXPECT_EQ(kvtier_submit_get_v1(s, ks.data(), 0, &ptr, &size, 1, r, 0, &id),
            KVTIER_ERR_INVALID_ARG);
  EXPECT_EQ(kvtier_submit_exists(s, nullptr, 1, r, 0, &id), KVTIER_ERR_INVALID_ARG);
  kvtier_completion_t c[4];
  size_t n = 0;
  EXPECT_EQ(kvtier_drain(s, c, 0, 0, &n), KVTIER_ERR_INVALID_ARG);
  EXPECT_EQ(kvtier_drain(s, c, 4, -1, &n), KVTIER_ERR_INVALID_ARG);
  // Depth 2 counts requests until they are drained, completed or not.
  ASSERT_EQ(kvtier_submit_exists(s, ks.data(), 1, &r[0], 0, &id), KVTIER_OK);
  ASSERT_EQ(kvtier_submit_exists(s, ks.data(), 1, &r[1], 0, &id), KVTIER_OK);
  EXPECT_EQ(kvtier_submit_exists(s, ks.data(), 1, &r[2], 0, &id), KVTIER_ERR_BUSY);
  EXPECT_EQ(r[2], KVTIER_ERR_BUSY);
  size_t drained = 0;
  for (auto t0 = Clock::now(); drained < 2 && Clock::now() - t0 < std::chrono::seconds(10);) {
    ASSERT_EQ(kvtier_drain(s, c, 4, 100, &n), KVTIER_OK);
    drained += n;
  }
  EXPECT_EQ(drained, 2u);
  EXPECT_EQ(kvtier_submit_exists(s, ks.data(), 1, &r[2], 0, &id), KVTIER_OK);
  ASSERT_TRUE(wait_one(s, c));
  EXPECT_EQ(r[2], KVTIER_ERR_NOT_FOUND);
  kvtier_close(s);
  EXPECT_EQ(kvtier_submit_exists(s, ks.data(), 1, &r[0], 0, &id), KVTIER_ERR_CLOSED);
  EXPECT_EQ(kvtier_drain(s, c, 4, 0, &n), KVTIER_ERR_CLOSED);
  EXPECT_EQ(kvtier_cancel(s, id), KVTIER_ERR_CLOSED);
}

// A drained request's failed key is named: kvtier_last_error() after kvtier_drain gives the
// detail of the first handed-out request that has one (here a fragment outside registered
// memory, and a size that does not match), with the request's id; "" when none has.
TEST(Async, DrainHandsOnTheDetailOfAFailedKey) {
  kvtier_store_t* s = open_store("tiers=memory;memory_capacity=16MiB;async_threads=1");
  Pages p("async-detail", 2);
  Mapping m(2 * kPage);
  ASSERT_EQ(kvtier_register_buffer(s, m.base, m.len), KVTIER_OK);
  auto ks = p.ks();
  p.copy_to(m.base);
  std::vector<void*> ptrs;
  std::vector<size_t> sizes;
  Pages::frags(m.base, 2, &ptrs, &sizes);
  int set[2] = {1, 1};
  uint64_t ok_id = 0, bad_id = 0, small_id = 0;
  ASSERT_EQ(kvtier_submit_set_v1(s, ks.data(), 2, ptrs.data(), sizes.data(), ptrs.size(), set, 0,
                                 &ok_id),
            KVTIER_OK);
  kvtier_completion_t c[4];
  ASSERT_TRUE(wait_one(s, c));
  EXPECT_EQ(c[0].status, KVTIER_OK);
  EXPECT_STREQ(kvtier_last_error(), "") << "a request with no failure has no detail";
  // Key 1's first fragment lies outside every registered region.
  std::vector<unsigned char> elsewhere(kPage);
  std::vector<void*> bad = ptrs;
  bad[2] = elsewhere.data();
  int got[2] = {1, 1}, small[1] = {1};
  ASSERT_EQ(kvtier_submit_get_v1(s, ks.data(), 2, bad.data(), sizes.data(), bad.size(), got, 0,
                                 &bad_id),
            KVTIER_OK);
  size_t half = kPage / 2;
  ASSERT_EQ(kvtier_submit_get_v1(s, ks.data(), 1, ptrs.data(), &half, 1, small, 0, &small_id),
            KVTIER_OK);
  size_t n = 0, drained = 0;
  std::string detail;
  for (auto t0 = Clock::now(); drained < 2 && Clock::now() - t0 < std::chrono::seconds(10);) {
    ASSERT_EQ(kvtier_drain(s, c + drained, 2 - drained, 100, &n), KVTIER_OK);
    if (n && detail.empty()) detail = kvtier_last_error();
    drained += n;
  }
  ASSERT_EQ(drained, 2u);
  EXPECT_EQ(got[0], KVTIER_OK);
  EXPECT_EQ(got[1], KVTIER_ERR_NOT_REGISTERED);
  EXPECT_EQ(small[0], KVTIER_ERR_SIZE_MISMATCH);
  EXPECT_EQ(detail.rfind("request " + std::to_string(bad_id) + ": KVTIER_ERR_NOT_REGISTERED", 0),
            0u)
      << detail;
  // Drained alone, the other request's detail is its own.
  ASSERT_EQ(kvtier_submit_get_v1(s, ks.data(), 1, ptrs.data(), &half, 1, small, 0, &small_id),
            KVTIER_OK);
  ASSERT_TRUE(wait_one(s, c));
  EXPECT_EQ(std::string(kvtier_last_error())
                .rfind("request " + std::to_string(small_id) + ": KVTIER_ERR_SIZE_MISMATCH", 0),
            0u)
      << kvtier_last_error();
  EXPECT_EQ(pending_completions(s), 0u);
  EXPECT_STREQ(kvtier_last_error(), "") << "an empty drain leaves no detail";
  kvtier_close(s);
}

// A remote tier whose only server is stopped: the first request on it waits out the timeout.
struct StoppedServer {
  static constexpr int kTimeoutMs = 1500;
  ServerProcess server;
  kvtier_store_t* s = nullptr;
  Pages pages{"async-stopped", 4};

  explicit StoppedServer(const std::string& extra = "") {
    s = open_store("tiers=remote;remote_transport=tcp;remote_timeout_ms=" +
                   std::to_string(kTimeoutMs) + ";remote_servers=" + server.address() + extra);
    auto ks = pages.ks();
    std::vector<const void*> v;
    for (auto& x : pages.values) v.push_back(x.data());
    std::vector<size_t> sizes(ks.size(), kPage);
    std::vector<int> r(ks.size());
    EXPECT_EQ(kvtier_batch_set(s, ks.data(), ks.size(), v.data(), sizes.data(), r.data()),
              KVTIER_OK);
    for (int x : r) EXPECT_EQ(x, KVTIER_OK);
    server.kill_now(SIGSTOP);
  }
  ~StoppedServer() {
    server.kill_now(SIGCONT);
    kvtier_close(s);
  }
  // Submits a get of pages [first, first + n) into region (page i at region + (i - first) * kPage).
  uint64_t get(unsigned char* region, size_t first, size_t n, int* results, uint64_t tag) {
    auto ks = pages.ks();
    std::vector<void*> ptrs;
    std::vector<size_t> sizes;
    Pages::frags(region, n, &ptrs, &sizes);
    uint64_t id = 0;
    EXPECT_EQ(kvtier_submit_get_v1(s, ks.data() + first, n, ptrs.data(), sizes.data(), ptrs.size(),
                                   results, tag, &id),
              KVTIER_OK)
        << kvtier_last_error();
    return id;
  }
};

// A get stuck on a stopped server: the submit returns while it is pending; cancelling a queued
// request completes it at once and touches nothing; cancelling the running one completes it
// only once its I/O has stopped, and from then on its memory is never written: one page of it
// is made inaccessible, the other is watched, the server resumed and the timeout waited out.
TEST(Async, CancelOfARequestStuckOnAStoppedServer) {
  StoppedServer st(";async_threads=1");
  Mapping stuck(2 * kPage), queued(kPage);
  ASSERT_EQ(kvtier_register_buffer(st.s, stuck.base, stuck.len), KVTIER_OK);
  ASSERT_EQ(kvtier_register_buffer(st.s, queued.base, queued.len), KVTIER_OK);
  std::memset(stuck.base, 0xA5, stuck.len);
  std::memset(queued.base, 0x5A, queued.len);
  int stuck_res[2] = {99, 99}, queued_res[1] = {99};
  const uint64_t a = st.get(stuck.base, 0, 2, stuck_res, 1);
  ASSERT_NE(a, 0u);
  // The submit came back while the request is pending: nothing has completed.
  EXPECT_EQ(pending_completions(st.s), 0u) << "the submit waited for the stopped server";
  const uint64_t b = st.get(queued.base, 2, 1, queued_res, 2);  // behind a: one worker
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // a is in its worker now
  ASSERT_EQ(kvtier_cancel(st.s, b), KVTIER_OK);
  kvtier_completion_t c{};
  ASSERT_TRUE(wait_one(st.s, &c, 100)) << "a queued request's cancel completes at once";
  EXPECT_EQ(c.id, b);
  EXPECT_EQ(c.status, KVTIER_ERR_CANCELLED);
  EXPECT_EQ(queued_res[0], KVTIER_ERR_CANCELLED);
  for (size_t i = 0; i < queued.len; ++i) ASSERT_EQ(queued.base[i], 0x5A) << "byte " << i;

  ASSERT_EQ(kvtier_cancel(st.s, a), KVTIER_OK);
  ASSERT_TRUE(wait_one(st.s, &c, 10 * StoppedServer::kTimeoutMs));
  EXPECT_EQ(c.id, a);
  EXPECT_EQ(c.status, KVTIER_ERR_CANCELLED);
  for (int r : stuck_res) EXPECT_LT(r, 0) << "a key of a request cut off by its cancel";
  EXPECT_EQ(kvtier_cancel(st.s, a), KVTIER_ERR_NOT_FOUND);
  // Reported done: page 1 goes away entirely, page 0 is watched.
  ASSERT_EQ(mprotect(stuck.base + kPage, kPage, PROT_NONE), 0);
  std::vector<unsigned char> before(stuck.base, stuck.base + kPage);
  st.server.kill_now(SIGCONT);
  std::this_thread::sleep_for(std::chrono::milliseconds(StoppedServer::kTimeoutMs + 700));
  EXPECT_EQ(std::memcmp(before.data(), stuck.base, kPage), 0)
      << "bytes landed in a request's buffer after it was reported cancelled";
  ASSERT_EQ(mprotect(stuck.base + kPage, kPage, PROT_READ | PROT_WRITE), 0);
  for (size_t i = kPage; i < stuck.len; ++i) ASSERT_EQ(stuck.base[i], 0xA5) << "byte " << i;

  // The handle serves again once the server answers (a probe after the breaker's wait).
  bool served = false;
  for (auto t0 = Clock::now(); !served && Clock::now() - t0 < std::chrono::seconds(10);) {
    int res[4] = {99, 99, 99, 99};
    Mapping dst(4 * kPage);
    ASSERT_EQ(kvtier_register_buffer(st.s, dst.base, dst.len), KVTIER_OK);
    st.get(dst.base, 0, 4, res, 3);
    ASSERT_TRUE(wait_one(st.s, &c, 10 * StoppedServer::kTimeoutMs));
    served = c.status == KVTIER_OK && res[0] == 0 && res[1] == 0 && res[2] == 0 && res[3] == 0;
    for (size_t i = 0; served && i < 4; ++i) EXPECT_TRUE(st.pages.equal(dst.base, i));
    ASSERT_EQ(kvtier_unregister_buffer(st.s, dst.base), KVTIER_OK);
    if (!served) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_TRUE(served);
}

// kvtier_close with a request running on a stopped server and others queued: it returns once
// the running one has stopped, the queued ones say CLOSED, and nothing is written afterwards.
TEST(Async, CloseWithRequestsInFlight) {
  auto st = std::make_unique<StoppedServer>(";async_threads=1");
  Mapping m(4 * kPage);
  ASSERT_EQ(kvtier_register_buffer(st->s, m.base, m.len), KVTIER_OK);
  std::memset(m.base, 0x3C, m.len);
  int res[4] = {99, 99, 99, 99};
  st->get(m.base, 0, 2, res, 1);
  st->get(m.base + 2 * kPage, 2, 1, res + 2, 2);
  st->get(m.base + 3 * kPage, 3, 1, res + 3, 3);
  kvtier_store_t* s = st->s;
  kvtier_close(s);  // waits for the running request (one timeout)
  EXPECT_LT(res[0], 0);
  EXPECT_LT(res[1], 0);
  EXPECT_EQ(res[2], KVTIER_ERR_CLOSED);
  EXPECT_EQ(res[3], KVTIER_ERR_CLOSED);
  ASSERT_EQ(mprotect(m.base, m.len, PROT_NONE), 0);
  st->server.kill_now(SIGCONT);
  std::this_thread::sleep_for(std::chrono::milliseconds(StoppedServer::kTimeoutMs + 700));
  ASSERT_EQ(mprotect(m.base, m.len, PROT_READ), 0);
  for (size_t i = 2 * kPage; i < m.len; ++i) ASSERT_EQ(m.base[i], 0x3C);
  int fd = -1;
  EXPECT_EQ(kvtier_async_fd(s, &fd), KVTIER_ERR_CLOSED);
  st.reset();  // a second close: a no-op
}

// kvtier_unregister_buffer returns only once the request moving bytes in the region has ended;
// a request that starts after it fails that region's keys without touching them.
TEST(Async, UnregisterWaitsForTheRequestUsingTheRegion) {
  StoppedServer st(";async_threads=1");
  Mapping m(2 * kPage);
  ASSERT_EQ(kvtier_register_buffer(st.s, m.base, m.len), KVTIER_OK);
  int res[2] = {99, 99};
  st.get(m.base, 0, 1, res, 1);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // running
  ASSERT_EQ(kvtier_unregister_buffer(st.s, m.base), KVTIER_OK);
  // The request has ended by now (its completion follows at once); had unregister not waited,
  // it would be stuck on the stopped server for most of a timeout still.
  kvtier_completion_t c{};
  ASSERT_TRUE(wait_one(st.s, &c, 500)) << "unregister returned while a request used the region";
  std::memset(m.base, 0x77, m.len);
  st.server.kill_now(SIGCONT);
  st.get(m.base + kPage, 1, 1, res + 1, 2);
  ASSERT_TRUE(wait_one(st.s, &c));
  EXPECT_EQ(res[1], KVTIER_ERR_NOT_REGISTERED);
  for (size_t i = 0; i < m.len; ++i) ASSERT_EQ(m.base[i], 0x77);
}

// After fork(), the child's submits on an inherited handle (whose workers are the parent's) are
// refused; the parent's requests go on.
TEST(Async, ForkedChildIsRefusedTheParentsHandle) {
  kvtier_store_t* s = open_store("tiers=memory;memory_capacity=16MiB");
  Pages p("async-fork", 2);
  Mapping m(2 * kPage);
  ASSERT_EQ(kvtier_register_buffer(s, m.base, m.len), KVTIER_OK);
  p.copy_to(m.base);
  auto ks = p.ks();
  std::vector<void*> ptrs;
  std::vector<size_t> sizes;
  Pages::frags(m.base, 2, &ptrs, &sizes);
  int res[2];
  uint64_t id = 0;
  ASSERT_EQ(
      kvtier_submit_set_v1(s, ks.data(), 2, ptrs.data(), sizes.data(), ptrs.size(), res, 0, &id),
      KVTIER_OK);  // the workers run now
  const pid_t pid = fork();
  if (pid == 0) {
    int r[2] = {0, 0};
    uint64_t cid = 0;
    kvtier_completion_t c;
    size_t n = 0;
    int fd = -1;
    const bool ok =
        kvtier_submit_get_v1(s, ks.data(), 2, ptrs.data(), sizes.data(), ptrs.size(), r, 0, &cid) ==
            KVTIER_ERR_CLOSED &&
        r[0] == KVTIER_ERR_CLOSED && kvtier_drain(s, &c, 1, 0, &n) == KVTIER_ERR_CLOSED &&
        kvtier_async_fd(s, &fd) == KVTIER_ERR_CLOSED && kvtier_cancel(s, id) == KVTIER_ERR_CLOSED;
    kvtier_close(s);  // forgets it
    _exit(ok ? 0 : 1);
  }
  ASSERT_GT(pid, 0);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "status " << status;
  kvtier_completion_t c{};
  ASSERT_TRUE(wait_one(s, &c));
  EXPECT_EQ(c.status, KVTIER_OK);
  std::memset(m.base, 0, m.len);
  ASSERT_EQ(
      kvtier_submit_get_v1(s, ks.data(), 2, ptrs.data(), sizes.data(), ptrs.size(), res, 0, &id),
      KVTIER_OK);
  ASSERT_TRUE(wait_one(s, &c));
  EXPECT_TRUE(p.equal(m.base, 0) && p.equal(m.base, 1));
  kvtier_close(s);
}

// Many threads submit sets, gets, exists and cancels on one handle while one thread polls the fd
// and drains; every get that completed reads exact bytes, every request completes once.
TEST(AsyncConcurrency, ManyThreadsSubmitOneDrains) {
  kvtier_store_t* s = open_store("tiers=memory;memory_capacity=256MiB;async_threads=3");
  constexpr int kThreads = 6, kRounds = 40;
  constexpr size_t kKeys = 4;
  Mapping m(kThreads * 2 * kKeys * kPage);
  ASSERT_EQ(kvtier_register_buffer(s, m.base, m.len), KVTIER_OK);
  std::mutex mu;
  std::map<uint64_t, int> done;  // id -> status
  std::atomic<bool> stop{false};
  std::atomic<size_t> completions{0};
  std::thread drainer([&] {
    int fd = -1;
    ASSERT_EQ(kvtier_async_fd(s, &fd), KVTIER_OK);
    kvtier_completion_t c[32];
    while (!stop.load()) {
      pollfd p{.fd = fd, .events = POLLIN, .revents = 0};
      if (poll(&p, 1, 50) != 1) continue;
      size_t n = 0;
      ASSERT_EQ(kvtier_drain(s, c, 32, 0, &n), KVTIER_OK);
      std::lock_guard l(mu);
      for (size_t i = 0; i < n; ++i) EXPECT_TRUE(done.emplace(c[i].id, c[i].status).second);
      completions += n;
    }
  });
  auto wait_for = [&](uint64_t id) {
    for (auto t0 = Clock::now(); Clock::now() - t0 < std::chrono::seconds(30);) {
      {
        std::lock_guard l(mu);
        if (auto it = done.find(id); it != done.end()) return it->second;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    return 1;  // never completed
  };
  std::atomic<size_t> verified{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      unsigned char* src = m.base + t * 2 * kKeys * kPage;
      unsigned char* dst = src + kKeys * kPage;
      for (int round = 0; round < kRounds; ++round) {
        Pages p("async-conc-" + std::to_string(t) + "-" + std::to_string(round), kKeys);
        p.copy_to(src);
        auto ks = p.ks();
        std::vector<void*> ptrs;
        std::vector<size_t> sizes;
        Pages::frags(src, kKeys, &ptrs, &sizes);
        int res[kKeys];
        uint64_t id = 0;
        int rc;
        while ((rc = kvtier_submit_set_v1(s, ks.data(), kKeys, ptrs.data(), sizes.data(),
                                          ptrs.size(), res, t, &id)) == KVTIER_ERR_BUSY)
          std::this_thread::yield();
        ASSERT_EQ(rc, KVTIER_OK);
        ASSERT_EQ(wait_for(id), KVTIER_OK);
        Pages::frags(dst, kKeys, &ptrs, &sizes);
        ASSERT_EQ(kvtier_submit_get_v1(s, ks.data(), kKeys, ptrs.data(), sizes.data(), ptrs.size(),
                                       res, t, &id),
                  KVTIER_OK);
        if (round % 4 == 3) kvtier_cancel(s, id);  // completes cancelled, or already done
        const int status = wait_for(id);
        if (status == KVTIER_OK) {
          for (size_t i = 0; i < kKeys; ++i) {
            ASSERT_EQ(res[i], KVTIER_OK);
            ASSERT_TRUE(p.equal(dst, i)) << "thread " << t << " round " << round;
          }
          ++verified;
        } else {
          ASSERT_EQ(status, KVTIER_ERR_CANCELLED);
        }
        int present[kKeys];
        ASSERT_EQ(kvtier_submit_exists(s, ks.data(), kKeys, present, t, &id), KVTIER_OK);
        ASSERT_EQ(wait_for(id), KVTIER_OK);
        for (int x : present) ASSERT_EQ(x, KVTIER_OK);
      }
    });
  }
  for (auto& th : threads) th.join();
  stop = true;
  drainer.join();
  EXPECT_EQ(completions.load(), size_t{kThreads} * kRounds * 3);
  EXPECT_GT(verified.load(), size_t{kThreads} * kRounds / 2);
  kvtier_close(s);
}

// Threads submitting while another closes the handle: every submit either is refused CLOSED or
// its request is done when close returns (results set); nothing hangs or touches freed memory.
TEST(AsyncConcurrency, CloseWhileThreadsSubmit) {
  for (int attempt = 0; attempt < 3; ++attempt) {
    kvtier_store_t* s = open_store("tiers=memory;memory_capacity=64MiB;async_threads=2");
    constexpr int kThreads = 4;
    Mapping m(kThreads * kPage);
    ASSERT_EQ(kvtier_register_buffer(s, m.base, m.len), KVTIER_OK);
    struct Slot {
      int res[1] = {99};
      bool accepted = false;
    };
    std::vector<std::vector<Slot>> slots(kThreads, std::vector<Slot>(2000));
    std::atomic<bool> go{false};
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] {
        const std::string key = kvtier_test::make_key("async-close", t);
        const char* k = key.c_str();
        void* ptr = m.base + t * kPage;
        size_t size = kPage;
        while (!go.load()) std::this_thread::yield();
        for (Slot& slot : slots[t]) {
          uint64_t id = 0;
          const int rc = kvtier_submit_set_v1(s, &k, 1, &ptr, &size, 1, slot.res, 0, &id);
          if (rc == KVTIER_ERR_CLOSED) break;
          if (rc == KVTIER_ERR_BUSY) continue;
          ASSERT_EQ(rc, KVTIER_OK);
          slot.accepted = true;
        }
      });
    }
    go = true;
    std::this_thread::sleep_for(std::chrono::milliseconds(5 + attempt * 10));
    kvtier_close(s);
    for (auto& th : threads) th.join();
    // Every accepted request ran or was abandoned by close: none still says 99, and none is
    // written after this (ThreadSanitizer would see it).
    for (int t = 0; t < kThreads; ++t)
      for (const Slot& slot : slots[t]) {
        if (slot.accepted)
          EXPECT_TRUE(slot.res[0] == KVTIER_OK || slot.res[0] == KVTIER_ERR_CLOSED) << slot.res[0];
        else
          EXPECT_TRUE(slot.res[0] == 99 || slot.res[0] == KVTIER_ERR_CLOSED ||
                      slot.res[0] == KVTIER_ERR_BUSY)
              << slot.res[0];
      }
  }
}

}  // namespace
