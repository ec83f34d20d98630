#include "backends/file/records.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstring>
#include <vector>

namespace kvtier {

namespace {
constexpr uint32_t kMagic = 0x4958564b;  // "KVXI"
constexpr uint16_t kVersion = 2;

uint64_t record_sum(const Record& r) {
  return checksum(&r, offsetof(Record, self_checksum));
}
}  // namespace

Record make_record(KeyId id, uint64_t length, uint64_t checksum, uint64_t seq, uint64_t stored,
                   bool compressed, uint16_t rotation) {
  const auto flags =
      static_cast<uint16_t>((compressed ? kCompressed : 0) | rotation << kRotationShift);
  Record r{kMagic, kVersion, flags, id.hi, id.lo, length, checksum, seq, stored, 0};
  r.self_checksum = record_sum(r);
  return r;
}

bool plausible_page(uint64_t length, uint64_t stored, bool compressed, uint16_t rotation,
                    uint64_t slot_size) {
  return length != 0 && stored != 0 && stored <= slot_size && (compressed || stored == length) &&
         rotation <= 0xfff && (rotation == 0 || (!compressed && rotation < length));
}

bool valid_record(const Record& r, uint64_t slot_size) {
  return r.magic == kMagic && r.version == kVersion && r.self_checksum == record_sum(r) &&
         !(r.flags & ~(kCompressed | 0xfff << kRotationShift)) &&
         plausible_page(r.length, r.stored, r.flags & kCompressed, rotation_of(r), slot_size);
}

bool write_record(int idx_fd, uint64_t slot, const Record& r) {
  const auto off = static_cast<off_t>(slot * sizeof r);
  return ::pwrite(idx_fd, &r, sizeof r, off) == static_cast<ssize_t>(sizeof r);
}

int write_records(int idx_fd, std::span<const uint64_t> slots, std::span<const Record> recs,
                  std::span<uint8_t> ok) {
  int err = 0;
  std::vector<size_t> order(slots.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return slots[a] < slots[b]; });
  std::vector<Record> run;
  for (size_t b = 0; b < order.size();) {
    size_t e = b + 1;
    while (e < order.size() && slots[order[e]] == slots[order[e - 1]] + 1) ++e;
    run.clear();
    for (size_t k = b; k < e; ++k) run.push_back(recs[order[k]]);
    const size_t bytes = run.size() * sizeof(Record);
    const ssize_t got =
        ::pwrite(idx_fd, run.data(), bytes, static_cast<off_t>(slots[order[b]] * sizeof(Record)));
    const bool written = got == static_cast<ssize_t>(bytes);
    if (!written) err = got < 0 ? errno : EIO;  // a short write sets no errno
    for (size_t k = b; k < e; ++k) ok[order[k]] = written ? 1 : 0;
    b = e;
  }
  return err;
}

Status read_records(int idx_fd, uint64_t slots, uint64_t slot_size,
                    const std::function<void(uint64_t slot, const Record&)>& each) {
  std::vector<Record> recs(std::min<uint64_t>(16384, slots));
  for (uint64_t first = 0; first < slots; first += recs.size()) {
    const uint64_t want = std::min<uint64_t>(recs.size(), slots - first);
    const ssize_t got = ::pread(idx_fd, recs.data(), want * sizeof(Record),
                                static_cast<off_t>(first * sizeof(Record)));
    if (got < 0)
      return {KVTIER_ERR_IO, std::string("cannot read an index file: ") + std::strerror(errno)};
    const uint64_t n = static_cast<uint64_t>(got) / sizeof(Record);
    for (uint64_t k = 0; k < n; ++k)
      if (valid_record(recs[k], slot_size)) each(first + k, recs[k]);
    if (n < want) break;
  }
  return {};
}

}  // namespace kvtier
