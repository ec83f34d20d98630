// The RDMA data plane's logic, checked without a device (no machine here has one): requests
// split at the ports' max_msg_sz, READ limits, the CM's read depths, the arena bounds, tickets,
// the channel lock's deadline, the ToS settings, and a server restart seen by the client.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <climits>
#include <cstdlib>
#include <thread>

#include "src/config.h"
#include "backends/remote/rdma/rdma.h"
#include "backends/remote/client/remote_options.h"
#include "tests/common/server_process.h"
#include "tests/common/test_util.h"
#include "src/tier.h"

namespace {

using namespace kvtier;
using Clock = std::chrono::steady_clock;

// ---- Plans split at max_msg_sz ----

// Checks what every plan must be: the requests of each transfer, in order, cover its remote
// range contiguously and its fragments' bytes once each, in order; no request exceeds the
// limits; every request is in exactly one chain.
void check_plan(std::span<const rdma::Transfer> transfers, const rdma::Plan& plan,
                rdma::PlanLimits lim) {
  size_t w = 0;
  for (const rdma::Transfer& t : transfers) {
    size_t frag = 0, in_frag = 0;  // where the next SGE must start, in t.local
    uint64_t done = 0;
    while (done < t.len) {
      ASSERT_LT(w, plan.wrs.size()) << "a transfer is not fully covered";
      const rdma::Wr& wr = plan.wrs[w++];
      ASSERT_EQ(wr.remote, t.remote + done) << "remote offsets must be contiguous";
      ASSERT_GE(wr.num_sge, 1u);
      ASSERT_LE(wr.num_sge, lim.max_sge);
      ASSERT_LE(wr.len, lim.max_msg) << "a request larger than the port's max_msg_sz";
      uint64_t len = 0;
      for (uint32_t k = 0; k < wr.num_sge; ++k) {
        const rdma::Sge& s = plan.sges[wr.first_sge + k];
        ASSERT_GT(s.length, 0u);
        while (in_frag == t.local[frag].len) ++frag, in_frag = 0;
        ASSERT_EQ(s.addr, reinterpret_cast<uint64_t>(t.local[frag].ptr + in_frag))
            << "an SGE must continue exactly where the previous one ended";
        ASSERT_LE(in_frag + s.length, t.local[frag].len) << "an SGE runs past its fragment";
        in_frag += s.length;
        len += s.length;
      }
      ASSERT_EQ(len, wr.len);
      done += len;
    }
    ASSERT_EQ(done, t.len) << "every byte exactly once";
  }
  ASSERT_EQ(w, plan.wrs.size());
  std::vector<int> seen(plan.wrs.size(), 0);
  for (const rdma::Chain& c : plan.chains)
    for (uint32_t k = 0; k < c.count; ++k) ++seen[c.first_wr + k];
  for (int v : seen) ASSERT_EQ(v, 1);
}

// Fragments are never dereferenced by the planner: far-away fake addresses stand for pages
// that could not be allocated here (a 1 GiB page, a 5 GiB region).
std::byte* fake(uint64_t at) {
  return reinterpret_cast<std::byte*>(uintptr_t{1} << 44 | at);
}
auto any_lkey = [](const std::byte*, size_t, uint32_t* k) {
  *k = 7;
  return true;
};

TEST(RdmaPlan, StagedRoundSplitsAtSoftRoceMaxMsgSize) {
  // A full 16 MiB staging round at soft-RoCE's 8 MiB limit: two requests, not one.
  std::vector<Frag> f{{fake(0), rdma::kStaging}};
  rdma::Transfer t{f, 4096, rdma::kStaging};
  rdma::Plan plan;
  const rdma::PlanLimits lim{16, 8u << 20};
  ASSERT_TRUE(rdma::make_plan({&t, 1}, lim, 4, 32, any_lkey, &plan).is_ok());
  ASSERT_EQ(plan.wrs.size(), 2u);
  EXPECT_EQ(plan.wrs[0].len, 8u << 20);
  EXPECT_EQ(plan.wrs[1].remote, 4096u + (8u << 20));
  check_plan({&t, 1}, plan, lim);
}

TEST(RdmaPlan, GibPageSplitsIntoRequestsOfAtMostMaxMsgSize) {
  const uint64_t gib = 1ull << 30;
  for (uint32_t max_msg : {1u << 20, 8u << 20, 1000003u, 1u << 31}) {
    // One 1 GiB fragment, and the same page in 3 uneven fragments.
    std::vector<Frag> one{{fake(0), gib}};
    std::vector<Frag> three{
        {fake(0), 5}, {fake(1ull << 32), gib - 4096 - 5}, {fake(3ull << 32), 4096}};
    for (auto* frags : {&one, &three}) {
      rdma::Transfer t{*frags, 123, gib};
      rdma::Plan plan;
      const rdma::PlanLimits lim{3, max_msg};
      ASSERT_TRUE(rdma::make_plan({&t, 1}, lim, 4, 32, any_lkey, &plan).is_ok());
      EXPECT_GE(plan.wrs.size(), (gib + max_msg - 1) / max_msg);
      check_plan({&t, 1}, plan, lim);
    }
  }
}

TEST(RdmaPlan, FragmentOverFourGibStillFitsSgeLengths) {
  // An SGE's length is 32 bits: a 5 GiB registered region's fragment must still split.
  const uint64_t len = 5ull << 30;
  std::vector<Frag> f{{fake(0), len}};
  rdma::Transfer t{f, 0, len};
  rdma::Plan plan;
  const rdma::PlanLimits lim{16, 1u << 31};
  ASSERT_TRUE(rdma::make_plan({&t, 1}, lim, 4, 32, any_lkey, &plan).is_ok());
  EXPECT_EQ(plan.wrs.size(), 3u);
  check_plan({&t, 1}, plan, lim);
}

TEST(RdmaPlan, RandomTransfersAtRandomLimits) {
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 g(seed);
  for (int round = 0; round < 200; ++round) {
    // Tiny message limits with small fragments, large ones with pages of up to 3 MiB.
    const bool tiny = g() % 2;
    const rdma::PlanLimits lim{static_cast<uint32_t>(1 + g() % 16),
                               static_cast<uint32_t>(1 + g() % (tiny ? 64 : 1 << 20))};
    std::vector<std::vector<Frag>> frags(1 + g() % 20);
    std::vector<rdma::Transfer> transfers;
    uint64_t remote = 0, at = 0;
    for (auto& f : frags) {
      size_t total = 0;
      for (size_t k = 0, n = 1 + g() % 6; k < n; ++k) {
        const size_t len = 1 + g() % (tiny || g() % 4 ? 5000 : 3 << 20);
        f.push_back({fake(at), len});
        at += len + g() % 100;
        total += len;
      }
      const size_t len = total - g() % std::min<size_t>(total, 3);  // may stop short of the end
      transfers.push_back({f, remote, len});
      remote += len + g() % 8192;
    }
    rdma::Plan plan;
    ASSERT_TRUE(
        rdma::make_plan(transfers, lim, 1 + g() % 4, 1 + g() % 32, any_lkey, &plan).is_ok());
    check_plan(transfers, plan, lim);
    if (HasFatalFailure()) return;
  }
}

TEST(RdmaPlan, ZeroLimitIsRefused) {
  rdma::Plan plan;
  EXPECT_EQ(rdma::make_plan({}, {1, 0}, 4, 32, any_lkey, &plan).code(), KVTIER_ERR_INVALID_ARG);
  EXPECT_EQ(rdma::make_plan({}, {0, 64}, 4, 32, any_lkey, &plan).code(), KVTIER_ERR_INVALID_ARG);
}

// ---- Limits ----

TEST(RdmaLimits, ReadsUseTheSmallerOfMaxSgeAndMaxSgeRd) {
  rdma::DeviceCaps iwarp{.max_sge = 4, .max_sge_rd = 1, .iwarp = true};
  EXPECT_EQ(rdma::sge_limit(iwarp, true), 4u);
  EXPECT_EQ(rdma::sge_limit(iwarp, false), 1u);
  rdma::DeviceCaps cx{.max_sge = 30, .max_sge_rd = 30};
  EXPECT_EQ(rdma::sge_limit(cx, true), rdma::kMaxSge);
  EXPECT_EQ(rdma::sge_limit(cx, false), rdma::kMaxSge);
  rdma::DeviceCaps unsaid{.max_sge = 8, .max_sge_rd = 0};  // not reported: 1 is always safe
  EXPECT_EQ(rdma::sge_limit(unsaid, false), 1u);
  rdma::DeviceCaps none{.max_sge = 0};
  EXPECT_EQ(rdma::sge_limit(none, true), 1u);
}

TEST(RdmaLimits, MessageLimitIsTheSmallerPort) {
  EXPECT_EQ(rdma::msg_limit(8u << 20, 1u << 30), 8u << 20);
  EXPECT_EQ(rdma::msg_limit(1u << 30, 8u << 20), 8u << 20);
  EXPECT_EQ(rdma::msg_limit(0, 4096), 4096u) << "0: not reported";
  EXPECT_EQ(rdma::msg_limit(0, 0), 1u << 31);
  EXPECT_EQ(rdma::msg_limit(UINT32_MAX, 0), 1u << 31) << "never above what an SGE can say";
}

TEST(RdmaLimits, ReadSinkNeedsRemoteWriteOnIwarpOnly) {
  constexpr int kLocalWrite = 1, kRemoteWrite = 2;  // IBV_ACCESS_* (checked in rdma/verbs.h)
  EXPECT_EQ(rdma::sink_access(true), kLocalWrite | kRemoteWrite);
  EXPECT_EQ(rdma::sink_access(false), kLocalWrite) << "no remote write into the engine's memory";
}

TEST(RdmaLimits, ArenaBoundsDoNotWrap) {
  const uint64_t bytes = 1ull << 30;
  EXPECT_TRUE(rdma::in_arena(0, bytes, bytes));
  EXPECT_TRUE(rdma::in_arena(bytes - 10, 10, bytes));
  EXPECT_FALSE(rdma::in_arena(bytes - 10, 11, bytes));
  EXPECT_FALSE(rdma::in_arena(0, bytes + 1, bytes));
  EXPECT_TRUE(rdma::in_arena(bytes, 0, bytes));
  // remote + len wraps to a small number: the old check (remote + len > bytes) let it through.
  EXPECT_FALSE(rdma::in_arena(UINT64_MAX - 10, 100, bytes));
  EXPECT_FALSE(rdma::in_arena(100, UINT64_MAX - 10, bytes));
  EXPECT_FALSE(rdma::in_arena(UINT64_MAX, 1, UINT64_MAX));
  EXPECT_TRUE(rdma::in_arena(UINT64_MAX - 1, 1, UINT64_MAX));
}

// ---- Connection parameters (librdmacm's ucma_valid_param and the CM's swap) ----

struct Profile {
  const char* name;
  rdma::DeviceCaps caps;
};
const Profile kProfiles[] = {
    {"ConnectX-3", {.max_sge = 32, .max_qp_rd_atom = 16, .max_qp_init_rd_atom = 128}},
    {"ConnectX-6", {.max_sge = 30, .max_qp_rd_atom = 16, .max_qp_init_rd_atom = 16}},
    {"soft-RoCE", {.max_sge = 32, .max_qp_rd_atom = 128, .max_qp_init_rd_atom = 128}},
    {"iWARP", {.max_sge = 4, .max_qp_rd_atom = 8, .max_qp_init_rd_atom = 8, .iwarp = true}},
    {"huge", {.max_sge = 32, .max_qp_rd_atom = 1000, .max_qp_init_rd_atom = 1000}},
};

TEST(RdmaConnParams, ClientStaysWithinWhatLibrdmacmAccepts) {
  for (const Profile& p : kProfiles) {
    SCOPED_TRACE(p.name);
    const rdma::Depths d = rdma::client_depths(p.caps);
    // rdma_connect fails with EINVAL above either limit (ConnectX-3: 128 > 16 did).
    EXPECT_LE(d.responder_resources, p.caps.max_qp_rd_atom);
    EXPECT_LE(d.initiator_depth, p.caps.max_qp_init_rd_atom);
    EXPECT_EQ(d.responder_resources, 0) << "nobody READs the client";
    EXPECT_EQ(d.initiator_depth, std::min(p.caps.max_qp_init_rd_atom, 255));
  }
}

TEST(RdmaConnParams, ServerAnswersTheClientsReadsAsTheCmSwapsThem) {
  for (const Profile& client : kProfiles) {
    for (const Profile& server : kProfiles) {
      SCOPED_TRACE(std::string(client.name) + " -> " + server.name);
      const rdma::Depths c = rdma::client_depths(client.caps);
      // The CONNECT_REQUEST event, as the CM delivers it to the server: swapped.
      const rdma::Depths event{c.responder_resources, c.initiator_depth};
      const rdma::Depths s = rdma::server_depths(event, server.caps);
      EXPECT_EQ(s.responder_resources,
                std::min<int>(c.initiator_depth, std::min(server.caps.max_qp_rd_atom, 255)))
          << "the server must answer as many READs as the client has in flight, up to its limit";
      EXPECT_LE(s.responder_resources, server.caps.max_qp_rd_atom);
      EXPECT_LE(s.initiator_depth, server.caps.max_qp_init_rd_atom);
      EXPECT_EQ(s.initiator_depth, 0) << "the client answers no READs, the server sends none";
    }
  }
  // A swap bug shows: fields with different values must not trade places.
  const rdma::Depths s =
      rdma::server_depths({3, 9}, {.max_qp_rd_atom = 16, .max_qp_init_rd_atom = 16});
  EXPECT_EQ(s.initiator_depth, 3);
  EXPECT_EQ(s.responder_resources, 9);
}

// ---- Addresses and limits the server warns about ----

TEST(RdmaSetup, LoopbackAddressesAreRecognised) {
  EXPECT_TRUE(rdma::loopback_address("127.0.0.1"));
  EXPECT_TRUE(rdma::loopback_address("127.3.2.1"));
  EXPECT_TRUE(rdma::loopback_address("localhost"));
  EXPECT_TRUE(rdma::loopback_address("::1"));
  EXPECT_FALSE(rdma::loopback_address("10.0.0.5"));
  EXPECT_FALSE(rdma::loopback_address("0.0.0.0"));
  EXPECT_FALSE(rdma::loopback_address("192.168.1.20"));
}

TEST(RdmaSetup, MemlockWarningOnlyWhenTooLow) {
  EXPECT_EQ(rdma::memlock_warning(UINT64_MAX, 256ull << 30), "");
  EXPECT_EQ(rdma::memlock_warning(8ull << 30, 8ull << 30), "");
  const std::string w = rdma::memlock_warning(8 << 20, 4ull << 30);
  EXPECT_NE(w.find("RLIMIT_MEMLOCK"), std::string::npos);
  EXPECT_NE(w.find("8192 KiB"), std::string::npos) << w;
  EXPECT_NE(w.find("ulimit -l"), std::string::npos) << w;
}

// ---- Tickets ----

TEST(RdmaTickets, ATicketAdmitsOneChannelThenIsGone) {
  rdma::TicketBook book(std::chrono::seconds(30), rdma::kQps);
  const auto now = Clock::now();
  const uint64_t t = book.issue({5, 77}, now);
  EXPECT_NE(t, 0u);
  rdma::Owner o;
  for (uint32_t q = 0; q < rdma::kQps; ++q) {
    ASSERT_TRUE(book.redeem(t, now, &o)) << "QP " << q << " of the channel";
    EXPECT_EQ(o.session, 5);
    EXPECT_EQ(o.client, 77u);
  }
  EXPECT_FALSE(book.redeem(t, now, &o)) << "a used ticket admitted another connection";
  EXPECT_EQ(book.size(), 0u);
  EXPECT_FALSE(book.redeem(t + 1, now, &o));
  EXPECT_FALSE(book.redeem(0, now, &o));
}

TEST(RdmaTickets, UnusedTicketsExpireAndEndWithTheirSession) {
  rdma::TicketBook book(std::chrono::milliseconds(100), 4);
  const auto t0 = Clock::now();
  const uint64_t a = book.issue({1, 1}, t0), b = book.issue({2, 2}, t0);
  const uint64_t c = book.issue({2, 2}, t0 + std::chrono::milliseconds(80));
  EXPECT_NE(a, b);
  EXPECT_NE(b, c);
  rdma::Owner o;
  EXPECT_FALSE(book.redeem(a, t0 + std::chrono::milliseconds(100), &o)) << "expired";
  EXPECT_TRUE(book.redeem(c, t0 + std::chrono::milliseconds(150), &o)) << "not yet";
  book.end_session(2);
  EXPECT_FALSE(book.redeem(c, t0 + std::chrono::milliseconds(150), &o))
      << "a ticket outlived its control connection";
  EXPECT_EQ(book.size(), 0u);
  const uint64_t d = book.issue({3, 3}, t0);
  book.end_session(4);
  EXPECT_TRUE(book.redeem(d, t0, &o)) << "another session's end took this one's ticket";
}

// ---- The channel lock: lock until the deadline, then TIMEOUT, channel kept ----

class FakeChannel final : public rdma::Channel {
 public:
  Status run(bool, std::span<const rdma::Transfer>, net::Deadline) override {
    ++runs;
    if (fail) dead_ = true;
    return fail ? Status{KVTIER_ERR_UNAVAILABLE, "fake failure"} : Status{};
  }
  bool dead() const override { return dead_; }
  std::atomic<int> runs{0};
  bool fail = false;

 private:
  bool dead_ = false;
};

TEST(RdmaChannelLock, BusyChannelTimesOutAtTheDeadlineWithoutPostingOrDying) {
  kvtier::DeadlineLock mu;
  std::unique_ptr<rdma::Channel> ch = std::make_unique<FakeChannel>();
  auto* fake_ch = static_cast<FakeChannel*>(ch.get());
  std::atomic<bool> held{false}, release{false};
  std::thread other([&] {  // another batch holds the channel for long
    std::lock_guard lock(mu);
    held = true;
    while (!release) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  });
  while (!held) std::this_thread::yield();
  bool lost = true;
  const auto t0 = Clock::now();
  Status s = rdma::run_locked(mu, ch, true, {}, t0 + std::chrono::milliseconds(150), &lost);
  const auto waited = Clock::now() - t0;
  release = true;
  other.join();
  EXPECT_EQ(s.code(), KVTIER_ERR_TIMEOUT) << s.message();
  EXPECT_GE(waited, std::chrono::milliseconds(140));
  EXPECT_LT(waited, std::chrono::seconds(2)) << "waited on the lock past the deadline";
  EXPECT_EQ(fake_ch->runs, 0) << "posted after the deadline";
  EXPECT_TRUE(ch) << "a busy channel is not a dead one";
  EXPECT_FALSE(lost);
  // Once free, the same channel serves the next batch.
  s = rdma::run_locked(mu, ch, false, {}, Clock::now() + std::chrono::seconds(1), &lost);
  EXPECT_TRUE(s.is_ok()) << s.message();
  EXPECT_EQ(fake_ch->runs, 1);
}

TEST(RdmaChannelLock, PassedDeadlineRefusesBeforePosting) {
  kvtier::DeadlineLock mu;
  std::unique_ptr<rdma::Channel> ch = std::make_unique<FakeChannel>();
  bool lost = true;
  Status s = rdma::run_locked(mu, ch, true, {}, Clock::now() - std::chrono::milliseconds(1), &lost);
  EXPECT_EQ(s.code(), KVTIER_ERR_TIMEOUT);
  EXPECT_EQ(static_cast<FakeChannel*>(ch.get())->runs, 0);
  EXPECT_FALSE(lost);
  EXPECT_TRUE(mu.try_lock()) << "the lock must be released";
  mu.unlock();
}

TEST(RdmaChannelLock, DeadChannelIsDroppedAndMissingOneIsUnavailable) {
  kvtier::DeadlineLock mu;
  auto fake_ch = std::make_unique<FakeChannel>();
  fake_ch->fail = true;
  std::unique_ptr<rdma::Channel> ch = std::move(fake_ch);
  bool lost = false;
  Status s = rdma::run_locked(mu, ch, true, {}, Clock::now() + std::chrono::seconds(1), &lost);
  EXPECT_EQ(s.code(), KVTIER_ERR_UNAVAILABLE);
  EXPECT_TRUE(lost);
  EXPECT_FALSE(ch) << "a dead channel must be dropped so the next call makes a new one";
  s = rdma::run_locked(mu, ch, true, {}, Clock::now() + std::chrono::seconds(1), &lost);
  EXPECT_EQ(s.code(), KVTIER_ERR_UNAVAILABLE);
  EXPECT_FALSE(lost);
}

// ---- ToS settings ----

TEST(RdmaConfig, RemoteRdmaTosIsValidated) {
  Config c;
  ASSERT_TRUE(load_config("", &c).is_ok());
  EXPECT_EQ(c.section<RemoteOptions>().rdma_tos, -1) << "unset: the device's default";
  ASSERT_TRUE(load_config("remote_rdma_tos=106", &c).is_ok());
  EXPECT_EQ(c.section<RemoteOptions>().rdma_tos, 106);
  ASSERT_TRUE(load_config("KVTIER_REMOTE_RDMA_TOS=0", &c).is_ok());
  EXPECT_EQ(c.section<RemoteOptions>().rdma_tos, 0);
  for (const char* bad : {"remote_rdma_tos=256", "remote_rdma_tos=-1", "remote_rdma_tos=ef",
                          "remote_rdma_tos=1k", "remote_rdma_tos="}) {
    Status s = load_config(bad, &c);
    EXPECT_EQ(s.code(), KVTIER_ERR_CONFIG) << bad;
    EXPECT_NE(s.message().find("KVTIER_REMOTE_RDMA_TOS"), std::string::npos) << s.message();
  }
}

int run_server(const std::string& args) {
  const int rc =
      std::system((std::string(KVTIER_SERVER_BIN) + " " + args + " >/dev/null 2>&1").c_str());
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

TEST(RdmaConfig, ServerRdmaTosIsValidated) {
  EXPECT_EQ(run_server("--rdma-tos 256"), 2);
  EXPECT_EQ(run_server("--rdma-tos x"), 2);
  EXPECT_EQ(run_server("--rdma-tos -3"), 2);
  EXPECT_EQ(std::system(("KVTIER_SERVER_RDMA_TOS=999 " + std::string(KVTIER_SERVER_BIN) +
                         " >/dev/null 2>&1")
                            .c_str()) >>
                8,
            2);
  // A valid ToS starts a server (here without RDMA: the flag is accepted, not applied).
  kvtier_test::ServerProcess srv("16MiB", "", 0, {"--rdma-tos", "106", "--rdma", "off"});
  EXPECT_NE(srv.port(), 0);
}

// ---- A server restart seen by the client (finding 5), over TCP ----

struct Page {
  KeyId id;
  std::vector<unsigned char> bytes;
  Frag frag;
};

int put_page(Tier& tier, Page& p) {
  PutOp op{p.id, Frags(&p.frag, 1), p.bytes.size(), 0};
  tier.put(std::span<PutOp>(&op, 1));
  return op.result;
}

TEST(RemoteBootId, ConnectionsToAnEarlierServerStartAreNotUsedAfterARestart) {
  kvtier_test::ServerProcess srv("64MiB");
  Config c;
  ASSERT_TRUE(
      load_config(("remote_transport=tcp;remote_servers=" + srv.address()).c_str(), &c).is_ok());
  std::unique_ptr<Tier> tier;
  ASSERT_TRUE(make_tier("remote", c, &tier).is_ok());
  std::vector<Page> pages(12);
  for (size_t i = 0; i < pages.size(); ++i) {
    pages[i].id = key_id(namespace_seed("boot"), kvtier_test::make_key("boot", i));
    pages[i].bytes = kvtier_test::random_bytes(5000 + i);
    pages[i].frag = {reinterpret_cast<std::byte*>(pages[i].bytes.data()), pages[i].bytes.size()};
  }
  // One call before the restart: one pooled connection to the first start.
  ASSERT_EQ(put_page(*tier, pages[0]), KVTIER_OK);
  srv.kill_now(SIGKILL);
  ASSERT_TRUE(srv.restart());
  // The next calls meet the new start on fresh connections (a new boot id); from then on the
  // connection made to the earlier start must be dropped, not used and failed.
  for (size_t i = 1; i < pages.size(); ++i)
    EXPECT_EQ(put_page(*tier, pages[i]), KVTIER_OK) << "call " << i << " after the restart";
  for (size_t i = 1; i < pages.size(); ++i) {
    std::vector<unsigned char> back(pages[i].bytes.size());
    Frag f{reinterpret_cast<std::byte*>(back.data()), back.size()};
    GetOp op{pages[i].id, Frags(&f, 1), back.size(), Fit::kExact};
    tier->get(std::span<GetOp>(&op, 1));
    EXPECT_EQ(op.result, static_cast<int64_t>(back.size())) << "page " << i;
    EXPECT_EQ(back, pages[i].bytes);
  }
}

}  // namespace
