#include "backends/remote/wire/protocol.h"

namespace kvtier::wire {

void encode_header(const Header& h, uint8_t out[kHeaderSize]) {
  std::memcpy(out, &h.magic, 4);
  std::memcpy(out + 4, &h.version, 2);
  std::memcpy(out + 6, &h.type, 2);
  std::memcpy(out + 8, &h.length, 4);
  std::memcpy(out + 12, &h.reserved, 4);
}

Status decode_header(const uint8_t in[kHeaderSize], Header* h, bool from_server) {
  std::memcpy(&h->magic, in, 4);
  std::memcpy(&h->version, in + 4, 2);
  std::memcpy(&h->type, in + 6, 2);
  std::memcpy(&h->length, in + 8, 4);
  std::memcpy(&h->reserved, in + 12, 4);
  if (h->magic != kMagic) return {KVTIER_ERR_INVALID_ARG, "not a kvtier frame (bad magic)"};
  if (h->version != kVersion)
    return {KVTIER_ERR_DENIED, std::string(from_server ? "the server" : "the client") +
                                   " speaks wire version " + std::to_string(h->version) +
                                   ", this " + (from_server ? "client " : "server ") +
                                   std::to_string(kVersion)};
  if (h->length > kMaxPayload)
    return {KVTIER_ERR_INVALID_ARG, "frame payload of " + std::to_string(h->length) +
                                        " bytes is over the cap of " + std::to_string(kMaxPayload)};
  return {};
}

Status check_first_frame(const Header& h, uint16_t hello, uint32_t max) {
  if (h.type != hello) return {KVTIER_ERR_DENIED, "the first frame must be HELLO"};
  if (h.length > max)
    return {KVTIER_ERR_DENIED, "HELLO of " + std::to_string(h.length) +
                                   " bytes is over the cap of " + std::to_string(max)};
  return {};
}

Status decode_put(std::span<const uint8_t> payload, std::vector<PutEntry>* out, uint64_t* bulk) {
  Reader r(payload);
  const uint32_t n = r.count(32);
  out->clear();
  *bulk = 0;
  for (uint32_t i = 0; i < n && r.ok(); ++i) {
    PutEntry e{r.id(), r.u64(), r.u64()};
    if (e.length == 0 || e.length > kMaxValue)
      return {KVTIER_ERR_INVALID_ARG,
              "PUT entry " + std::to_string(i) + " has length " + std::to_string(e.length)};
    *bulk += e.length;
    out->push_back(e);
  }
  if (!r.done()) return {KVTIER_ERR_INVALID_ARG, "malformed PUT payload"};
  return {};
}

Status decode_ids(std::span<const uint8_t> payload, std::vector<KeyId>* out) {
  Reader r(payload);
  const uint32_t n = r.count(16);
  out->clear();
  for (uint32_t i = 0; i < n && r.ok(); ++i) out->push_back(r.id());
  if (!r.done()) return {KVTIER_ERR_INVALID_ARG, "malformed key list"};
  return {};
}

Status decode_commit(std::span<const uint8_t> payload, std::vector<CommitEntry>* out) {
  Reader r(payload);
  const uint32_t n = r.count(9);
  out->clear();
  for (uint32_t i = 0; i < n && r.ok(); ++i) {
    const uint64_t lease = r.u64();
    const uint8_t flag = r.u8();
    if (flag > 1) return {KVTIER_ERR_INVALID_ARG, "COMMIT flag must be 0 or 1"};
    out->push_back({lease, flag == 1});
  }
  if (!r.done()) return {KVTIER_ERR_INVALID_ARG, "malformed COMMIT payload"};
  return {};
}

Status decode_u64s(std::span<const uint8_t> payload, std::vector<uint64_t>* out) {
  Reader r(payload);
  const uint32_t n = r.count(8);
  out->clear();
  for (uint32_t i = 0; i < n && r.ok(); ++i) out->push_back(r.u64());
  if (!r.done()) return {KVTIER_ERR_INVALID_ARG, "malformed lease list"};
  return {};
}

Status send_frame(int fd, uint16_t type, const std::vector<uint8_t>& payload,
                  std::span<const iovec> bulk, net::Bound bound) {
  uint8_t head[kHeaderSize];
  Header h;
  h.type = type;
  h.length = static_cast<uint32_t>(payload.size());
  encode_header(h, head);
  std::vector<iovec> iov{{head, sizeof head},
                         {const_cast<uint8_t*>(payload.data()), payload.size()}};
  iov.insert(iov.end(), bulk.begin(), bulk.end());
  return net::writev_all(fd, iov.data(), iov.size(), bound);
}

Status read_frame(int fd, uint16_t type, net::Bound bound, std::vector<uint8_t>* payload,
                  bool* begun, uint32_t max_payload) {
  uint8_t head[kHeaderSize];
  Header h;
  Status s = net::read_all(fd, head, sizeof head, bound);
  if (s.is_ok() && begun) *begun = true;
  // A caller that awaits a reply reads a server's frame.
  if (s.is_ok()) s = decode_header(head, &h, (type & kReply) != 0);
  if (!s.is_ok()) return s;
  const uint32_t cap = h.type == (kError | kReply) ? kMaxErrorPayload : max_payload;
  if (h.length > cap)
    return {KVTIER_ERR_INVALID_ARG, "frame of type " + std::to_string(h.type) + " claims " +
                                        std::to_string(h.length) + " bytes, over the " +
                                        std::to_string(cap) + " it may have"};
  // Grown as the bytes arrive: a header that only claims a length costs nothing.
  payload->clear();
  for (size_t got = 0; got < h.length && s.is_ok(); got = payload->size()) {
    payload->resize(got + std::min<size_t>(h.length - got, 64u << 10));
    s = net::read_all(fd, payload->data() + got, payload->size() - got, bound);
  }
  if (!s.is_ok()) return s;
  if (h.type == (kError | kReply)) {
    Reader rd(*payload);
    const int code = rd.i32();
    return {code < 0 ? code : KVTIER_ERR_INTERNAL, "peer: " + rd.str(rd.left())};
  }
  if (h.type != type)
    return {KVTIER_ERR_INVALID_ARG, "unexpected frame type " + std::to_string(h.type)};
  return {};
}

}  // namespace kvtier::wire
