// The frame parser's fuzz entry: a header, then the payload decoded as each request kind.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "protocol.h"

namespace kvtier_test {

inline void parse_frame(const uint8_t* data, size_t size) {
  using namespace kvtier;
  if (size >= wire::kHeaderSize) {
    wire::Header h;
    (void)wire::decode_header(data, &h);
  }
  std::span<const uint8_t> payload(data, size);
  std::vector<wire::PutEntry> entries;
  std::vector<KeyId> ids;
  std::vector<wire::CommitEntry> commits;
  std::vector<uint64_t> leases;
  std::string token;
  uint64_t bulk = 0, seed = 0;
  (void)wire::decode_put(payload, &entries, &bulk);  // PUT and ALLOC
  (void)wire::decode_ids(payload, &ids);             // EXISTS, GET, LOOKUP, REMOVE
  (void)wire::decode_hello(payload, &token, &seed);
  (void)wire::decode_commit(payload, &commits);
  (void)wire::decode_u64s(payload, &leases);  // RELEASE
}

}  // namespace kvtier_test
