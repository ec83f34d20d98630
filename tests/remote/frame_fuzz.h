// The frame parser's fuzz entry: the bytes decoded as every request kind, and read as a stream of
// frames the way kvtier-server reads a connection (the first one under the rules before HELLO,
// each later one decoded by its own type).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "backends/remote/wire/auth.h"
#include "backends/remote/wire/protocol.h"

namespace kvtier_test {

// Decodes a payload as the request `type` says; false if the server would refuse it.
inline bool decode_request(uint16_t type, std::span<const uint8_t> payload) {
  using namespace kvtier;
  std::vector<wire::PutEntry> entries;
  std::vector<KeyId> ids;
  std::vector<wire::CommitEntry> commits;
  std::vector<uint64_t> leases;
  uint64_t bulk = 0;
  switch (type) {
    case wire::kHello:  // a nonce, or a proof and the namespace seed
      return payload.size() == wire::kNonceSize || payload.size() == wire::kProofSize + 8;
    case wire::kPut:
    case wire::kAlloc:
      return wire::decode_put(payload, &entries, &bulk).is_ok();
    case wire::kExists:
    case wire::kGet:
    case wire::kRemove:
    case wire::kLookup:
    case wire::kSizes:
      return wire::decode_ids(payload, &ids).is_ok();
    case wire::kCommit:
      return wire::decode_commit(payload, &commits).is_ok();
    case wire::kRelease:
      return wire::decode_u64s(payload, &leases).is_ok();
    case wire::kClear:
    case wire::kStats:
    case wire::kRdmaInfo:
      return payload.empty();
    default:
      return false;
  }
}

inline void parse_frame(const uint8_t* data, size_t size) {
  using namespace kvtier;
  std::span<const uint8_t> all(data, size);
  for (uint16_t type = wire::kHello; type <= wire::kSizes; ++type)
    (void)decode_request(type, all);
  // As a connection: frames back to back until one is refused or the bytes run out.
  bool hello = false;
  for (size_t at = 0; at + wire::kHeaderSize <= size;) {
    wire::Header h;
    if (!wire::decode_header(data + at, &h).is_ok()) return;
    if (!hello && !wire::check_first_frame(h).is_ok()) return;
    at += wire::kHeaderSize;
    if (h.length > size - at) return;  // the rest has not arrived
    if (!decode_request(h.type, all.subspan(at, h.length))) return;
    at += h.length;
    hello = true;
  }
}

}  // namespace kvtier_test
