// The TCP transport: PUT frames carry the values, GET replies bring them back, both pipelined a
// chunk ahead.
#include <algorithm>

#include "backends/remote/client/transport.h"

namespace kvtier::remote {

namespace {

// Keys go in frames of about kChunk bytes, pipelined: a key's checksum is computed (put) or
// verified (get) just before or after its bytes cross the socket, while they are in cache,
// instead of in a separate pass over the whole batch.
constexpr size_t kChunk = 256u << 10;
constexpr size_t kChunkKeys = 1024;     // so a request frame stays small (16 KiB of ids)
constexpr uint64_t kDrain = 64u << 10;  // scratch for the bytes of values that do not fit

using Ranges = std::vector<std::pair<size_t, size_t>>;

// [begin, end) ranges of 0..n-1, each up to kChunk bytes and kChunkKeys keys (at least one key).
template <class SizeOf>
Ranges chunks(size_t n, SizeOf size_of) {
  Ranges out;
  for (size_t b = 0; b < n;) {
    size_t e = b, bytes = 0;
    while (e < n && (e == b || (bytes + size_of(e) <= kChunk && e - b < kChunkKeys)))
      bytes += size_of(e++);
    out.push_back({b, e});
    b = e;
  }
  return out;
}

// Appends iovecs for the first `len` bytes of the fragments.
void add_iov(Frags frags, size_t len, std::vector<iovec>* iov) {
  for (const Frag& f : frags) {
    if (!len) break;
    const size_t n = std::min(len, f.len);
    iov->push_back({f.ptr, n});
    len -= n;
  }
}

class TcpTransport final : public Transport {
 public:
  TcpTransport(const Pool& pool, std::atomic<uint64_t>& errors) : pool_(pool), errors_(errors) {}

  // PUT frames with the bytes in them, one chunk in flight while the previous one's reply
  // comes back.
  void put(ServerRef& s, std::span<PutOp> ops, std::span<const size_t> idx,
           PutOutcome& out) override {
    const auto parts = chunks(idx.size(), [&](size_t k) { return ops[idx[k]].size; });
    Status st = pool_.with_conn(s, [&](int fd, Deadline dl) {
      wire::Writer w;
      std::vector<iovec> bulk;
      for (size_t c = 0; c < parts.size(); ++c) {
        w.data().clear();
        bulk.clear();
        w.u32(static_cast<uint32_t>(parts[c].second - parts[c].first));
        for (size_t k = parts[c].first; k < parts[c].second; ++k) {
          PutOp& op = ops[idx[k]];
          ensure_checksum(op);
          w.id(op.id);
          w.u64(op.size);
          w.u64(op.checksum);
          add_iov(op.frags, op.size, &bulk);
        }
        Status x = wire::send_frame(fd, wire::kPut, w.data(), bulk, dl);
        if (x.is_ok() && c > 0) x = put_reply(fd, dl, idx, parts[c - 1], out);
        if (!x.is_ok()) return x;
      }
      return put_reply(fd, dl, idx, parts.back(), out);
    });
    if (!st.is_ok())
      for (size_t i : idx)
        if (!out.stored[i]) out.best[i] = st.code();
  }

  // GET frames, the next one always on its way while a reply is read (so the server never
  // waits for a request, and never has more than one unread); each value is verified right
  // after its bytes arrive.
  void get(ServerRef& s, std::span<GetOp> ops, std::span<const size_t> idx,
           std::vector<uint8_t>& done) override {
    const auto parts = chunks(idx.size(), [&](size_t k) { return ops[idx[k]].capacity; });
    std::vector<uint8_t> scratch;
    Status st = pool_.with_conn(s, [&](int fd, Deadline dl) {
      auto request = [&](size_t c) {
        wire::Writer w;
        w.data().reserve(4 + 16 * (parts[c].second - parts[c].first));
        w.u32(static_cast<uint32_t>(parts[c].second - parts[c].first));
        for (size_t k = parts[c].first; k < parts[c].second; ++k) w.id(ops[idx[k]].id);
        return wire::send_frame(fd, wire::kGet, w.data(), {}, dl);
      };
      Status x = request(0);
      for (size_t c = 0; c < parts.size() && x.is_ok(); ++c) {
        if (c + 1 < parts.size()) x = request(c + 1);
        if (!x.is_ok()) break;
        const auto keys = idx.subspan(parts[c].first, parts[c].second - parts[c].first);
        x = read_reply(fd, wire::kGet, dl, [&](int, wire::Reader& rd) {
          return read_values(fd, rd, ops, keys, done, scratch, dl);
        });
      }
      return x;
    });
    if (!st.is_ok()) {
      for (size_t i : idx) {
        ops[i].result = st.code();  // the next replica may still answer
        done[i] = 0;
      }
      errors_.fetch_add(idx.size(), std::memory_order_relaxed);
    }
  }

 private:
  // The reply to the PUT frame of idx[part.first, part.second).
  static Status put_reply(int fd, Deadline dl, std::span<const size_t> idx,
                          std::pair<size_t, size_t> part, PutOutcome& out) {
    const auto [b, e] = part;
    return read_reply(fd, wire::kPut, dl, [&](int, wire::Reader& rd) {
      if (rd.count(4) != e - b) return Status{KVTIER_ERR_INVALID_ARG, "bad PUT reply"};
      for (size_t k = b; k < e; ++k) {
        const int code = rd.i32();
        if (code == KVTIER_OK)
          out.stored[idx[k]] = 1;
        else
          out.best[idx[k]] = code;
      }
      return rd.done() ? Status{} : Status{KVTIER_ERR_INVALID_ARG, "bad PUT reply"};
    });
  }

  // A GET reply: the metadata in `rd`, then the found values' bytes on the socket, read
  // straight into each key's fragments when they fit (into `scratch` when not).
  static Status read_values(int fd, wire::Reader& rd, std::span<GetOp> ops,
                            std::span<const size_t> idx, std::vector<uint8_t>& done,
                            std::vector<uint8_t>& scratch, Deadline dl) {
    if (rd.count(20) != idx.size()) return {KVTIER_ERR_INVALID_ARG, "bad GET reply"};
    struct Meta {
      int code;
      uint64_t len, sum;
    };
    std::vector<Meta> meta;
    for (size_t k = 0; k < idx.size(); ++k) {
      Meta m{rd.i32(), rd.u64(), rd.u64()};
      if (m.code == KVTIER_OK && (m.len == 0 || m.len > wire::kMaxValue))
        return {KVTIER_ERR_INVALID_ARG, "bad GET length"};
      meta.push_back(m);
    }
    if (!rd.done()) return {KVTIER_ERR_INVALID_ARG, "bad GET reply"};
    // Values that fit go straight into their fragments. One that does not (a size error,
    // which writes nothing there) is read piece by piece into a small scratch buffer and
    // dropped: memory follows the bytes that arrive, never the length a reply claims.
    std::vector<iovec> iov;
    Status x;
    for (size_t k = 0; k < idx.size() && x.is_ok(); ++k) {
      if (meta[k].code != KVTIER_OK) continue;
      GetOp& op = ops[idx[k]];
      done[idx[k]] = 1;
      if (take_hit(op, meta[k].len, meta[k].sum)) {
        add_iov(op.frags, meta[k].len, &iov);
        continue;
      }
      x = net::readv_all(fd, iov.data(), iov.size(), dl);
      iov.clear();
      scratch.resize(kDrain);
      for (uint64_t left = meta[k].len; left > 0 && x.is_ok(); left -= std::min(left, kDrain))
        x = net::read_all(fd, scratch.data(), std::min(left, kDrain), dl);
    }
    if (x.is_ok()) x = net::readv_all(fd, iov.data(), iov.size(), dl);
    if (!x.is_ok()) return x;
    for (size_t k = 0; k < idx.size(); ++k)
      if (meta[k].code == KVTIER_OK) verify(ops[idx[k]]);
    return {};
  }

  const Pool& pool_;
  std::atomic<uint64_t>& errors_;
};

}  // namespace

std::unique_ptr<Transport> make_tcp_transport(const Pool& pool, std::atomic<uint64_t>& errors) {
  return std::make_unique<TcpTransport>(pool, errors);
}

}  // namespace kvtier::remote
