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
  std::string token;
  uint64_t bulk = 0, seed = 0;
  (void)wire::decode_put(payload, &entries, &bulk);
  (void)wire::decode_ids(payload, &ids);
  (void)wire::decode_hello(payload, &token, &seed);
}

}  // namespace kvtier_test
