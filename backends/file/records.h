// The durable truth of the file tier: "pages-<bytes>.idx", one 64-byte record per slot of
// "pages-<bytes>.dat" (key id, length, checksum of the page, sequence number, the record's own
// checksum). All zero: the slot is free. Every index is rebuilt from these.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>

#include "src/keys.h"
#include "src/status.h"

namespace kvtier {

struct Record {
  uint32_t magic;
  uint16_t version;
  uint16_t flags;  // kCompressed, and the page's rotation in the slot (codec.h) << kRotationShift
  uint64_t key_hi, key_lo;
  uint64_t length;         // the page's bytes
  uint64_t checksum;       // XXH3-64 of the page bytes (before compression)
  uint64_t seq;            // later writes of a key win
  uint64_t stored;         // bytes in the slot: `length`, or the zstd frame's size
  uint64_t self_checksum;  // XXH3-64 of the fields above
};
static_assert(sizeof(Record) == 64);
constexpr uint16_t kCompressed = 1;
// A rotation is below 4096 (12 bits). Records written before rotations existed hold 0 there;
// a library that predates them finds a rotated page's record invalid, never its bytes wrong.
constexpr unsigned kRotationShift = 4;

Record make_record(KeyId id, uint64_t length, uint64_t checksum, uint64_t seq, uint64_t stored,
                   bool compressed, uint16_t rotation);
inline uint16_t rotation_of(const Record& r) {
  return static_cast<uint16_t>(r.flags >> kRotationShift);
}
// Whether a page of `length` bytes, `stored` in a slot of `slot_size` bytes (compressed or not,
// at `rotation`), is one the tier can have written: the rule for its record and for its entry
// in the shared index, which another process could have scribbled.
bool plausible_page(uint64_t length, uint64_t stored, bool compressed, uint16_t rotation,
                    uint64_t slot_size);
// Whether r is a whole, undamaged record of a page that fits a slot of `slot_size` bytes.
bool valid_record(const Record& r, uint64_t slot_size);
// Writes slot's record (Record{}: free); false with errno set on failure.
bool write_record(int idx_fd, uint64_t slot, const Record& r);
// The records of a batch, recs[i] to slot slots[i], in one pwrite per run of adjacent slots
// (a batch's pages usually get adjacent slots: a syscall per page cost a put of 16 pages of
// 256 KiB a fifth of its time). ok[i] = 0 where a write failed; returns that failure's errno
// (0 if none failed).
int write_records(int idx_fd, std::span<const uint64_t> slots, std::span<const Record> recs,
                  std::span<uint8_t> ok);
// Reads the records of slots 0..slots-1 in one sequential pass, 1 MiB at a time, and calls
// `each` for every valid one. A file shorter than that ends the pass (the rest is free).
Status read_records(int idx_fd, uint64_t slots, uint64_t slot_size,
                    const std::function<void(uint64_t slot, const Record&)>& each);

}  // namespace kvtier
