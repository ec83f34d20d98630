// The remote tier's wire protocol, shared by kvtier-server and the client tier. Little-endian,
// versioned, length-prefixed frames; every count, length and offset is checked on decode.
//
//   frame   = header (16 bytes) + payload (<= kMaxPayload) [+ bulk bytes, for PUT requests and
//             GET replies: the values, back to back, sizes given by the payload]
//   header  = magic u32 | version u16 | type u16 | payload length u32 | reserved u32
//
//   HELLO   client nonce (32)                          -> server nonce (32), server id u64
//                                                         (random, new at each server start),
//                                                         server proof (32)
//   HELLO   client proof (32), namespace seed u64      -> (empty), or ERROR DENIED
//           The handshake (auth.h): the client checks the server's proof before it sends its
//           own, so nothing of value goes to a server that does not hold the token; the token
//           itself never crosses the wire.
//   EXISTS  n u32, n x id(16)                          -> n u32, n x present u8
//   SIZES   n u32, n x id                              -> n u32, n x size i64 (the stored
//                                                         value's bytes, arena or disk, or
//                                                         NOT_FOUND): a size without its value
//           (a server older than SIZES answers ERROR INVALID_ARG, an unknown frame type; the
//           client then asks it with a GET of no room, as before)
//   PUT     n u32, n x {id, length u64, checksum u64}  -> n u32, n x code i32
//           followed by the n values' bytes
//   GET     n u32, n x id                              -> n u32, n x {code i32, length u64,
//                                                          checksum u64}, then the found bytes
//   REMOVE  n u32, n x id                              -> n u32, n x code i32
//   CLEAR   (empty): drops the caller's namespace       -> (empty)
//   STATS   (empty)                                    -> 10 x u64, in this order: pages
//                                                         stored, bytes of their slots, arena
//                                                         capacity (bytes), evictions, errors
//                                                         (requests refused, commits failed),
//                                                         leases expired, hits, misses (keys of
//                                                         GET and LOOKUP), leases held,
//                                                         authenticated connections; every
//                                                         server of this wire version sends all
//                                                         ten (all namespaces together)
//   ERROR   code i32, message                          (a reply to anything; the server then
//                                                         closes the connection)
//   Before HELLO only a HELLO of at most kMaxHelloPayload bytes is read.
//
// The RDMA data plane moves the bytes one-sided; these frames are its control plane:
//   RDMA_INFO (empty)                                  -> code i32, rdma_cm port u32, ticket u64
//             (the ticket, presented when the RDMA connection is made, ties it to this
//             authenticated control connection; code UNSUPPORTED: the server has no RDMA)
//   ALLOC   n u32, n x {id, length u64, checksum u64}  -> n u32, n x {code i32, offset u64,
//                                                         lease u64}
//           reserves arena slots under a lease; code kPresent: the key is stored already
//   COMMIT  n u32, n x {lease u64, commit u8}          -> n u32, n x code i32
//           commit 1: the written slot becomes visible; 0: the slot is given back. A lease that
//           ran out (or a dropped control connection) has given the slot back already.
//   LOOKUP  n u32, n x id                              -> n u32, n x {code i32, offset u64,
//                                                         length u64, checksum u64, lease u64}
//           pins found pages until RELEASE, the lease's end or the connection's end
//   RELEASE n u32, n x lease u64                       -> (empty)
#pragma once

#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "src/keys.h"
#include "backends/remote/wire/net.h"
#include "src/options.h"
#include "src/status.h"

namespace kvtier::wire {

constexpr uint32_t kMagic = 0x5254564b;  // "KVTR"
// 2: the HELLO proves the token both ways (auth.h); 1 sent the token itself. An ERROR frame has
// the same layout in every version, so a frame of another version is answered with an ERROR in
// that version: either end then reads "the server speaks wire version X, this client Y".
constexpr uint16_t kVersion = 2;
constexpr size_t kHeaderSize = 16;
constexpr uint32_t kMaxPayload = 4u << 20;         // control part of a frame
constexpr uint64_t kMaxValue = uint64_t{1} << 30;  // one page
constexpr uint32_t kMaxKeys = 65536;               // per frame
constexpr size_t kMaxToken = kMaxTokenBytes;       // options.h: the settings check it too
constexpr int32_t kPresent = 1;  // ALLOC: the key is stored already, nothing to write
// HELLO's largest payload (a proof and the namespace seed): before the handshake is done a
// server takes no bigger frame, so an unauthenticated peer cannot make it hold more.
constexpr uint32_t kMaxHelloPayload = 32 + 8;
// ERROR's largest payload: the code and at most 1024 bytes of message.
constexpr uint32_t kMaxErrorPayload = 4 + 1024;

enum Type : uint16_t {
  kHello = 1,
  kExists = 2,
  kPut = 3,
  kGet = 4,
  kRemove = 5,
  kClear = 6,
  kStats = 7,
  kRdmaInfo = 8,
  kAlloc = 9,
  kCommit = 10,
  kLookup = 11,
  kRelease = 12,
  kSizes = 13,
  kP2pHello = 32,  // prefill -> decode transfer endpoints (p2p.h)
  kP2pWrite = 33,
  kP2pRead = 34,
  kP2pCommit = 35,
  kError = 100,
  kReply = 0x80,  // ORed into the request's type
};

struct Header {
  uint32_t magic = kMagic;
  uint16_t version = kVersion;
  uint16_t type = 0;
  uint32_t length = 0;
  uint32_t reserved = 0;
};

void encode_header(const Header& h, uint8_t out[kHeaderSize]);
// Checks magic, version and the payload cap. A frame of another version is DENIED with a
// message naming both versions, from the side of the end that reads it (from_server: a reply
// a client reads, else a request a server reads); *h holds the header's fields either way.
Status decode_header(const uint8_t in[kHeaderSize], Header* h, bool from_server = false);
// A connection's frames until the handshake is done must be HELLOs (of type `hello`: the
// server's, or P2P_HELLO) of at most `max` bytes.
Status check_first_frame(const Header& h, uint16_t hello = kHello,
                         uint32_t max = kMaxHelloPayload);

// Appends little-endian values to a payload.
class Writer {
 public:
  void u8(uint8_t v) { buf_.push_back(v); }
  void u32(uint32_t v) { put(&v, 4); }
  void i32(int32_t v) { put(&v, 4); }
  void i64(int64_t v) { put(&v, 8); }
  void u64(uint64_t v) { put(&v, 8); }
  void id(const KeyId& k) {
    u64(k.hi);
    u64(k.lo);
  }
  void bytes(const void* p, size_t n) { put(p, n); }
  std::vector<uint8_t>& data() { return buf_; }

 private:
  void put(const void* p, size_t n) {
    const auto* b = static_cast<const uint8_t*>(p);
    buf_.insert(buf_.end(), b, b + n);
  }
  std::vector<uint8_t> buf_;
};

// Reads a payload; every read is bounds-checked and a short payload sets ok() false.
class Reader {
 public:
  explicit Reader(std::span<const uint8_t> in) : in_(in) {}
  bool ok() const { return ok_; }
  bool done() const { return ok_ && pos_ == in_.size(); }
  size_t left() const { return in_.size() - pos_; }
  uint8_t u8() { return get<uint8_t>(); }
  uint32_t u32() { return get<uint32_t>(); }
  int32_t i32() { return get<int32_t>(); }
  int64_t i64() { return get<int64_t>(); }
  uint64_t u64() { return get<uint64_t>(); }
  KeyId id() {
    KeyId k;
    k.hi = u64();
    k.lo = u64();
    return k;
  }
  std::string str(size_t n) {
    if (n > left()) {
      ok_ = false;
      return {};
    }
    std::string s(reinterpret_cast<const char*>(in_.data() + pos_), n);
    pos_ += n;
    return s;
  }
  // A count of items of `item_size` bytes each that must fit in what is left and the cap.
  uint32_t count(size_t item_size) {
    uint32_t n = u32();
    if (!ok_ || n > kMaxKeys || n * item_size > left()) {
      ok_ = false;
      return 0;
    }
    return n;
  }

 private:
  template <class T>
  T get() {
    T v{};
    if (!ok_ || left() < sizeof v) {
      ok_ = false;
      return v;
    }
    std::memcpy(&v, in_.data() + pos_, sizeof v);
    pos_ += sizeof v;
    return v;
  }
  std::span<const uint8_t> in_;
  size_t pos_ = 0;
  bool ok_ = true;
};

// A PUT request's entries, decoded and checked (lengths within kMaxValue, total bulk bounded).
struct PutEntry {
  KeyId id;
  uint64_t length;
  uint64_t checksum;
};
Status decode_put(std::span<const uint8_t> payload, std::vector<PutEntry>* out, uint64_t* bulk);
Status decode_ids(std::span<const uint8_t> payload, std::vector<KeyId>* out);
// COMMIT's entries and RELEASE's leases.
struct CommitEntry {
  uint64_t lease;
  bool commit;
};
Status decode_commit(std::span<const uint8_t> payload, std::vector<CommitEntry>* out);
Status decode_u64s(std::span<const uint8_t> payload, std::vector<uint64_t>* out);

// One frame out: header, payload, then `bulk` (page bytes) straight from the caller's memory.
Status send_frame(int fd, uint16_t type, const std::vector<uint8_t>& payload,
                  std::span<const iovec> bulk, net::Bound bound);
// One frame in, header and payload (the bulk that follows is the caller's to read). An ERROR
// frame becomes its code; a frame of another type than `type`, or a payload over `max_payload`
// bytes (an ERROR: over kMaxErrorPayload), is INVALID_ARG, refused before anything is allocated
// for it. *begun (when given) is set once a header has arrived: a call that failed before one
// can be run again.
// The one reader and writer of blocking peers (the client tier, p2p's calling side); the event
// loops that serve (serve/event_loop.h: kvtier-server, the p2p endpoint) decode the same header
// with decode_header as its bytes arrive.
Status read_frame(int fd, uint16_t type, net::Bound bound, std::vector<uint8_t>* payload,
                  bool* begun = nullptr, uint32_t max_payload = kMaxPayload);

}  // namespace kvtier::wire
