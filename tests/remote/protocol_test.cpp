// The frame parser on hostile input: random and mutated frames must be rejected or parsed,
// never read out of bounds (run under ASan by the test command). fuzz_frames.cpp feeds the
// same entry point to libFuzzer where clang is available.
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <random>

#include "tests/remote/frame_fuzz.h"
#include "backends/remote/wire/protocol.h"
#include "backends/remote/rdma/rdma.h"

namespace {

using namespace kvtier;

TEST(Protocol, HeaderChecks) {
  uint8_t b[wire::kHeaderSize];
  wire::Header h;
  h.type = wire::kGet;
  h.length = 100;
  wire::encode_header(h, b);
  wire::Header d;
  ASSERT_TRUE(wire::decode_header(b, &d).is_ok());
  EXPECT_EQ(d.type, wire::kGet);
  EXPECT_EQ(d.length, 100u);
  h.length = wire::kMaxPayload + 1;
  wire::encode_header(h, b);
  EXPECT_EQ(wire::decode_header(b, &d).code(), KVTIER_ERR_INVALID_ARG);
  h.length = 1;
  h.version = 9;
  wire::encode_header(h, b);
  EXPECT_EQ(wire::decode_header(b, &d).code(), KVTIER_ERR_DENIED);
  b[0] ^= 1;
  EXPECT_EQ(wire::decode_header(b, &d).code(), KVTIER_ERR_INVALID_ARG);
}

// A frame of another wire version is named as such, from the reader's side: a server reading a
// request names the client's version and its own, a client reading a reply the server's and its
// own (not a short reply or a token refused).
TEST(Protocol, AnotherWireVersionIsNamedOnBothSides) {
  uint8_t b[wire::kHeaderSize];
  wire::Header h;
  h.version = wire::kVersion - 1;
  h.type = wire::kHello;
  wire::encode_header(h, b);
  wire::Header d;
  const std::string older = std::to_string(wire::kVersion - 1),
                    ours = std::to_string(wire::kVersion);
  Status s = wire::decode_header(b, &d);
  EXPECT_EQ(s.code(), KVTIER_ERR_DENIED);
  EXPECT_EQ(s.message(), "the client speaks wire version " + older + ", this server " + ours);
  EXPECT_EQ(d.version, wire::kVersion - 1);  // what a server answers in

  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
  h.type = wire::kError | wire::kReply;  // an older server's refusal, in its own version
  h.length = 4;
  wire::encode_header(h, b);
  const int32_t code = KVTIER_ERR_DENIED;
  ASSERT_EQ(write(sv[1], b, sizeof b), static_cast<ssize_t>(sizeof b));
  ASSERT_EQ(write(sv[1], &code, 4), 4);
  std::vector<uint8_t> payload;
  s = wire::read_frame(sv[0], wire::kHello | wire::kReply,
                       net::Clock::now() + std::chrono::seconds(2), &payload);
  EXPECT_EQ(s.code(), KVTIER_ERR_DENIED);
  EXPECT_EQ(s.message(), "the server speaks wire version " + older + ", this client " + ours);
  close(sv[0]);
  close(sv[1]);
}

TEST(Protocol, PutEntriesAreBoundsChecked) {
  wire::Writer w;
  w.u32(2);
  w.id({1, 2});
  w.u64(4096);
  w.u64(7);
  w.id({3, 4});
  w.u64(wire::kMaxValue + 1);  // too long
  w.u64(8);
  std::vector<wire::PutEntry> e;
  uint64_t bulk;
  EXPECT_EQ(wire::decode_put(w.data(), &e, &bulk).code(), KVTIER_ERR_INVALID_ARG);
  wire::Writer lie;  // claims more entries than it carries
  lie.u32(1000);
  lie.id({1, 2});
  EXPECT_EQ(wire::decode_put(lie.data(), &e, &bulk).code(), KVTIER_ERR_INVALID_ARG);
  wire::Writer ok;
  ok.u32(1);
  ok.id({5, 6});
  ok.u64(123);
  ok.u64(9);
  ASSERT_TRUE(wire::decode_put(ok.data(), &e, &bulk).is_ok());
  EXPECT_EQ(bulk, 123u);
  EXPECT_EQ(e[0].id, (KeyId{5, 6}));
}

TEST(Protocol, RandomAndMutatedFramesNeverCrashTheParser) {
  std::mt19937_64 g(std::random_device{}());
  std::vector<uint8_t> buf;
  for (int i = 0; i < 200000; ++i) {
    buf.resize(g() % 200);
    for (auto& c : buf) c = static_cast<uint8_t>(g());
    if (i % 2 && buf.size() >= 4) {  // plausible counts reach deeper into the parsers
      uint32_t n = static_cast<uint32_t>(g() % 8);
      std::memcpy(buf.data(), &n, 4);
    }
    kvtier_test::parse_frame(buf.data(), buf.size());
  }
}

// Streams of well-formed headers with random payloads: every frame type, before and after HELLO.
TEST(Protocol, RandomFrameStreamsNeverCrashTheParser) {
  std::mt19937_64 g(std::random_device{}());
  std::vector<uint8_t> buf;
  for (int i = 0; i < 50000; ++i) {
    buf.clear();
    for (int f = 0; f < 3; ++f) {
      wire::Header h;
      h.type = static_cast<uint16_t>(1 + g() % 13);
      const size_t len = g() % 64;
      h.length = static_cast<uint32_t>(g() % 16 ? len : g());  // sometimes a lie
      uint8_t head[wire::kHeaderSize];
      wire::encode_header(h, head);
      buf.insert(buf.end(), head, head + sizeof head);
      for (size_t k = 0; k < len; ++k) buf.push_back(static_cast<uint8_t>(g() % 4 ? g() % 3 : g()));
    }
    kvtier_test::parse_frame(buf.data(), buf.size());
  }
}

TEST(Protocol, BeforeHelloOnlyASmallHelloPasses) {
  wire::Header h;
  h.type = wire::kHello;
  h.length = wire::kMaxHelloPayload;
  EXPECT_TRUE(wire::check_first_frame(h).is_ok());
  h.length = wire::kMaxHelloPayload + 1;
  EXPECT_EQ(wire::check_first_frame(h).code(), KVTIER_ERR_DENIED);
  h.length = 0;
  for (uint16_t t = wire::kExists; t <= wire::kSizes; ++t) {
    h.type = t;
    EXPECT_EQ(wire::check_first_frame(h).code(), KVTIER_ERR_DENIED) << "type " << t;
  }
}

}  // namespace

namespace {

// The RDMA work-request plan, checked without a device: every byte of every transfer is in
// exactly one request, a request gathers at most max_sge fragments into one contiguous remote
// range, and each QP's requests are chains whose count is the signalling interval.
TEST(RdmaPlan, RequestsCoverEveryByteInSignalledChains) {
  std::mt19937_64 g(7);
  std::vector<std::byte> mem(1 << 20);
  for (uint32_t max_sge : {1u, 3u, 16u}) {
    for (size_t n_transfers : {size_t{1}, size_t{5}, size_t{200}}) {
      std::vector<std::vector<Frag>> frags(n_transfers);
      std::vector<rdma::Transfer> transfers;
      uint64_t remote = 0;
      for (auto& f : frags) {
        const size_t pieces = 1 + g() % 40, len = 64 + g() % 4096;
        size_t total = 0;
        for (size_t k = 0; k < pieces; ++k) {
          f.push_back({mem.data() + g() % (mem.size() - len), len});
          total += len;
        }
        transfers.push_back({f, remote, total});
        remote += total + 4096;
      }
      rdma::Plan plan;
      auto lkey = [&](const std::byte* p, size_t len, uint32_t* k) {
        *k = 42;
        return p >= mem.data() && p + len <= mem.data() + mem.size();
      };
      ASSERT_TRUE(rdma::make_plan(transfers, {max_sge}, 4, 32, lkey, &plan).is_ok());
      // Requests, in order, tile each transfer's remote range and its local fragments.
      size_t w = 0, sge = 0;
      for (size_t t = 0; t < transfers.size(); ++t) {
        uint64_t at = transfers[t].remote, bytes = 0;
        while (bytes < transfers[t].len) {
          ASSERT_LT(w, plan.wrs.size());
          const rdma::Wr& wr = plan.wrs[w++];
          EXPECT_EQ(wr.remote, at);
          EXPECT_EQ(wr.first_sge, sge);
          EXPECT_GE(wr.num_sge, 1u);
          EXPECT_LE(wr.num_sge, max_sge);
          uint64_t len = 0;
          for (uint32_t k = 0; k < wr.num_sge; ++k) {
            const rdma::Sge& s = plan.sges[sge + k];
            const Frag& f = frags[t][(bytes + len) / frags[t][0].len];  // pieces of one size
            EXPECT_EQ(s.addr, reinterpret_cast<uint64_t>(f.ptr));
            EXPECT_EQ(s.lkey, 42u);
            len += s.length;
          }
          EXPECT_EQ(len, wr.len);
          sge += wr.num_sge;
          at += len;
          bytes += len;
        }
        EXPECT_EQ(bytes, transfers[t].len);
      }
      EXPECT_EQ(w, plan.wrs.size());
      // Chains: each request in exactly one, at most 32 long, each QP's chains contiguous.
      std::vector<int> seen(plan.wrs.size(), 0);
      for (const rdma::Chain& c : plan.chains) {
        EXPECT_LT(c.qp, 4u);
        EXPECT_GE(c.count, 1u);
        EXPECT_LE(c.count, 32u);
        for (uint32_t k = 0; k < c.count; ++k) ++seen[c.first_wr + k];
      }
      for (int v : seen) EXPECT_EQ(v, 1);
      size_t full = 0;
      for (const rdma::Chain& c : plan.chains) full += c.count == 32;
      EXPECT_GE(full + 4, plan.chains.size()) << "only a QP's last chain may be short";
    }
  }
}

TEST(RdmaPlan, UnregisteredFragmentIsRefused) {
  std::vector<std::byte> a(4096), b(4096);
  std::vector<Frag> f{{a.data(), 4096}, {b.data(), 4096}};
  rdma::Transfer t{f, 0, 8192};
  rdma::Plan plan;
  auto lkey = [&](const std::byte* p, size_t, uint32_t* k) {
    *k = 1;
    return p == a.data();
  };
  EXPECT_EQ(rdma::make_plan({&t, 1}, {4}, 2, 8, lkey, &plan).code(), KVTIER_ERR_NOT_REGISTERED);
}

}  // namespace
