// The frame parser on hostile input: random and mutated frames must be rejected or parsed,
// never read out of bounds (run under ASan by the test command). fuzz_frames.cpp feeds the
// same entry point to libFuzzer where clang is available.
#include <gtest/gtest.h>

#include <random>

#include "frame_fuzz.h"
#include "protocol.h"

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
  EXPECT_EQ(wire::decode_header(b, &d).code(), KVTIER_ERR_UNSUPPORTED);
  b[0] ^= 1;
  EXPECT_EQ(wire::decode_header(b, &d).code(), KVTIER_ERR_INVALID_ARG);
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

}  // namespace
