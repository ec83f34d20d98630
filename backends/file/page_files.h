// One process's handle on a namespace's page files. What every process on the namespace shares
// (which key is in which slot, the LRU, the free slots, the capacity) is the SharedIndex, which
// alone moves a slot through its states; what stays per process is here, the I/O: the file
// descriptors, the rings, the bounce buffers, the codec and the records.
//
// A put is plan (reserve a slot per new key under one lock) -> run (the ring writes the slots)
// -> commit (fdatasync, the records, then the keys become live under one lock). A get looks its
// keys up under the lock, reads without it and checks the checksum the index recorded, so a slot
// another process evicted and rewrote mid-read is a miss, never wrong bytes.
#pragma once

#include <unistd.h>

#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "backends/file/codec.h"
#include "backends/file/faults.h"
#include "backends/file/group_sync.h"
#include "backends/file/shared_index.h"
#include "src/tier.h"
#include "backends/file/uring.h"

namespace kvtier {

int io_code(int neg_errno);  // KVTIER_ERR_NO_SPACE for a full disk or quota, else KVTIER_ERR_IO
// A wait for another writer (of this or another process) to finish: short at first.
void pause_for_others(unsigned round);

class PageFiles : private SlotFiles {
 public:
  ~PageFiles() override;
  // `path`: the namespace's folder in `root` (the file tier's folder).
  static Status open(const Config& config, const std::string& root, const std::string& path,
                     std::shared_ptr<PageFiles>* out);
  void put(std::span<PutOp> ops);
  void get(std::span<GetOp> ops);
  void exists(std::span<const KeyId> ids, std::span<uint8_t> present);
  void remove(std::span<const KeyId> ids, std::span<int> results);
  Status clear();
  TierStats stats() const;

 private:
  struct ClassFiles {
    int fd = -1;      // pages-<size>.dat: the slots
    int idx_fd = -1;  // pages-<size>.idx: a Record per slot
  };
  // One page a put() writes itself.
  struct Writing {
    size_t op;
    uint64_t seq = 0;
    uint64_t slot = 0, slot_size = 0;
    ClassFiles files;
    std::byte* buf = nullptr;  // bounce buffer: a copy of the page, or its zstd frame
    size_t buf_size = 0;
    uint64_t stored = 0;  // bytes in the slot
    bool compressed = false;
    uint16_t rotation = 0;  // of the page in the slot (codec.h)
    int result = KVTIER_ERR_IO;
  };
  // One page a get() reads.
  struct Reading {
    size_t op;
    int fd;
    uint64_t offset, length, checksum, stored, seq;
    bool compressed;
    uint16_t rotation;
    std::byte* buf = nullptr;
    size_t buf_size = 0;
    bool no_memory = false;  // no bounce buffer: the page is fine, this read is not
    bool damaged = false;    // its index entry does not fit the page (SlotMap::ok): not read
  };
  using Guard = SharedIndex::Guard;

  PageFiles() = default;
  int open_file(const std::string& name);  // in the namespace folder, never through a link
  // The files of a size class, opened on first use; thread-safe.
  Status files_of(uint64_t slot_size, ClassFiles* out);
  ClassFiles files_of_class(uint32_t cls);  // REQUIRES Guard; fds of -1 if they cannot open

  // SlotFiles: what the index asks of the files when a slot changes hands.
  bool clear_record(uint64_t slot_size, uint64_t slot) override;
  int extend(uint64_t slot_size, uint64_t file_slots, uint64_t bytes, uint64_t* added) override;

  // get(), in its steps (get.cpp).
  void lookup(std::span<GetOp> ops, std::vector<Reading>* pending);
  void read_pages(std::span<GetOp> ops, std::vector<Reading>& pending,
                  std::vector<Reading>* unreadable);
  void drop_unreadable(std::span<GetOp> ops, const std::vector<Reading>& unreadable);

  // put(), in its steps (put.cpp).
  void encode(std::span<PutOp> ops, std::vector<Writing>& todo);
  void plan(std::span<PutOp> ops, std::vector<Writing>& todo, std::vector<Writing>* mine,
            std::vector<Writing>* waiting);
  void run(std::span<PutOp> ops, std::vector<Writing>& mine);
  // The error for an io left unqueued (fd -1), as run_ios wants it.
  int prepare_write(PutOp& op, Writing& w, Io& io);
  // A page off O_DIRECT's alignment, rotated so that its middle goes straight (codec.h); false
  // when no block of it would.
  bool prepare_rotated(PutOp& op, Writing& w, Io& io);
  void sync_and_record(std::span<PutOp> ops, std::vector<Writing>& mine);
  void commit(std::span<PutOp> ops, std::vector<Writing>& mine);
  void release_orphans();  // REQUIRES Guard; the slots of commits that timed out
  int sync_fd(int fd);     // 0 or -errno

  // Rebuilding the index from the records (rebuild.cpp); REQUIRES Guard or a fresh index.
  // With keep_writes, slots reserved by live writers stay theirs.
  Status rebuild(bool keep_writes);
  Status list_classes(std::vector<uint64_t>* sizes);
  Status scan_class(uint64_t slot_size, bool cut, std::vector<FoundSlot>* found, uint64_t* slots);

  std::string dir_;
  int dir_fd_ = -1;  // the namespace folder: every file is opened relative to it
  int32_t pid_ = ::getpid();
  uint64_t start_ = process_start(pid_);  // with pid_: this process, never a later one
  bool direct_ = true;
  // O_DIRECT's alignment of memory and of lengths (statx STATX_DIOALIGN): 4 bytes and 512 on
  // NVMe, so an engine pool that is not 4 KiB-aligned still moves with no copy there.
  uint64_t mem_align_ = kBlock, io_align_ = kBlock;
  bool sync_ = true;
  int zstd_level_ = 0;  // 0: no compression
  std::unique_ptr<SharedIndex> index_;
  std::unique_ptr<Faults> faults_;  // test-only (KVTIER_TEST_FILE_FAULTS); before rings_
  RingPool rings_;
  BouncePool bounce_;
  GroupSync syncs_;  // one fdatasync for the puts that finish at once
  std::mutex orphans_mu_;
  std::vector<std::pair<KeyId, uint64_t>> orphans_;  // key and seq of commits that timed out
  std::mutex files_mu_;
  std::map<uint64_t, ClassFiles> files_;  // by slot size
};

}  // namespace kvtier
