#include "file_tier.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <unordered_set>

#include <zstd.h>

#include "log.h"
#include "safe_dir.h"
#include "size_class.h"

namespace kvtier {

namespace {

constexpr uint64_t kBlock = 4096;        // O_DIRECT alignment of offsets and sizes
constexpr uint32_t kMagic = 0x4958564b;  // "KVXI"
constexpr uint16_t kVersion = 2;
constexpr uint64_t kGrowBytes = 64ull << 20;  // files grow by fallocate in steps of this
constexpr size_t kMaxIov = 1024;              // IOV_MAX

// A slot's record in the .idx file; all zero: the slot is free.
struct Record {
  uint32_t magic;
  uint16_t version;
  uint16_t flags;  // kCompressed
  uint64_t key_hi, key_lo;
  uint64_t length;         // the page's bytes
  uint64_t checksum;       // XXH3-64 of the page bytes (before compression)
  uint64_t seq;            // later writes of a key win
  uint64_t stored;         // bytes in the slot: `length`, or the zstd frame's size
  uint64_t self_checksum;  // XXH3-64 of the fields above
};
static_assert(sizeof(Record) == 64);
constexpr uint16_t kCompressed = 1;

// A page is kept compressed only when that saves at least this fraction of it.
constexpr uint64_t kMinSavingDiv = 8;  // 1/8 = 12.5%

struct ZstdDeleter {
  void operator()(ZSTD_CCtx* c) const { ZSTD_freeCCtx(c); }
  void operator()(ZSTD_DCtx* d) const { ZSTD_freeDCtx(d); }
};

// Compresses the fragments into dst (capacity cap); 0 if it fails or does not fit.
size_t compress_frags(Frags frags, std::byte* dst, size_t cap, int level) {
  thread_local std::unique_ptr<ZSTD_CCtx, ZstdDeleter> cctx(ZSTD_createCCtx());
  if (!cctx) return 0;
  ZSTD_CCtx_reset(cctx.get(), ZSTD_reset_session_only);
  ZSTD_CCtx_setParameter(cctx.get(), ZSTD_c_compressionLevel, level);
  ZSTD_CCtx_setPledgedSrcSize(cctx.get(), total_len(frags));
  ZSTD_outBuffer out{dst, cap, 0};
  for (size_t i = 0; i < frags.size(); ++i) {
    ZSTD_inBuffer in{frags[i].ptr, frags[i].len, 0};
    const bool last = i + 1 == frags.size();
    size_t rc;
    do {
      rc = ZSTD_compressStream2(cctx.get(), &out, &in, last ? ZSTD_e_end : ZSTD_e_continue);
      if (ZSTD_isError(rc) || (out.pos == cap && rc != 0)) return 0;
    } while (last ? rc != 0 : in.pos < in.size);
  }
  return out.pos;
}

// Decompresses a frame into the fragments; true if it produced exactly `length` bytes.
bool decompress_frags(const std::byte* src, size_t n, Frags frags, size_t length) {
  thread_local std::unique_ptr<ZSTD_DCtx, ZstdDeleter> dctx(ZSTD_createDCtx());
  if (!dctx) return false;
  ZSTD_DCtx_reset(dctx.get(), ZSTD_reset_session_only);
  ZSTD_inBuffer in{src, n, 0};
  size_t produced = 0, rc = 1;
  for (const Frag& f : frags) {
    if (produced >= length) break;
    ZSTD_outBuffer out{f.ptr, std::min(f.len, length - produced), 0};
    while (out.pos < out.size) {
      rc = ZSTD_decompressStream(dctx.get(), &out, &in);
      if (ZSTD_isError(rc) || (rc != 0 && in.pos == in.size && out.pos < out.size)) return false;
      if (rc == 0) break;
    }
    produced += out.pos;
    if (out.pos < out.size) return false;
  }
  return produced == length && rc == 0;
}
uint64_t record_sum(const Record& r) {
  return checksum(&r, offsetof(Record, self_checksum));
}

uint64_t round_block(uint64_t n) {
  return (n + kBlock - 1) & ~(kBlock - 1);
}

// Whether O_DIRECT can move the fragments as they are: each one's address a multiple of the
// device's DMA alignment, each one's length a multiple of the I/O alignment.
bool aligned(Frags frags, uint64_t mem_align, uint64_t len_align) {
  if (frags.size() > kMaxIov) return false;
  for (const Frag& f : frags)
    if (reinterpret_cast<uintptr_t>(f.ptr) % mem_align || f.len % len_align) return false;
  return true;
}

int io_code(int neg_errno) {
  return neg_errno == -ENOSPC || neg_errno == -EDQUOT || neg_errno == -EFBIG ? KVTIER_ERR_NO_SPACE
                                                                             : KVTIER_ERR_IO;
}

std::string dir_name(const std::string& ns) {
  std::string s;
  for (char c : ns.substr(0, 64))
    s +=
        (std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' || c == '_') ? c : '_';
  char hash[24];
  std::snprintf(hash, sizeof hash, "%016llx", static_cast<unsigned long long>(namespace_seed(ns)));
  return (s.empty() ? "default" : s) + "-" + hash;
}

// Aligned, pre-touched buffers reused across calls: fresh memory costs a page fault per 4 KiB.
class BouncePool {
 public:
  ~BouncePool() {
    for (auto& [size, bufs] : free_)
      for (std::byte* b : bufs) std::free(b);
  }
  std::byte* get(size_t size) {
    {
      std::lock_guard lock(mu_);
      auto& list = free_[size];
      if (!list.empty()) {
        std::byte* b = list.back();
        list.pop_back();
        return b;
      }
    }
    auto* b = static_cast<std::byte*>(std::aligned_alloc(kBlock, size));
    if (b) std::memset(b, 0, size);
    return b;
  }
  void put(std::byte* b, size_t size) {
    if (!b) return;
    std::lock_guard lock(mu_);
    free_[size].push_back(b);
  }

 private:
  std::mutex mu_;
  std::unordered_map<size_t, std::vector<std::byte*>> free_;
};

}  // namespace

class PageFiles {
 public:
  ~PageFiles();
  static Status open(const Config& config, const std::string& path,
                     std::shared_ptr<PageFiles>* out);
  void put(std::span<PutOp> ops);
  void get(std::span<GetOp> ops);
  void exists(std::span<const KeyId> ids, std::span<uint8_t> present);
  void remove(std::span<const KeyId> ids, std::span<int> results);
  void clear();
  TierStats stats() const;

 private:
  struct SizeClass {
    uint64_t slot_size = 0;
    int fd = -1;              // pages-<size>.dat: the slots
    int idx_fd = -1;          // pages-<size>.idx: a Record per slot
    uint64_t file_slots = 0;  // slots the file has room for
    uint64_t used_slots = 0;  // high-water mark
    std::vector<uint64_t> free;
  };
  struct Entry {
    uint32_t cls;
    uint64_t slot;
    uint64_t length;
    uint64_t checksum;
    uint64_t seq;
    uint64_t stored;  // bytes on disk after the header
    bool compressed;
    std::list<KeyId>::iterator lru;
  };

  // One page a put() writes itself.
  struct Writing {
    size_t op;
    uint64_t seq;
    bool reserved = false;  // cls and slot hold a reservation
    uint32_t cls = 0;
    int fd = -1, idx_fd = -1;
    uint64_t slot = 0, slot_size = 0;
    std::byte* buf = nullptr;  // bounce buffer: a copy of the page, or its zstd frame
    size_t buf_size = 0;
    uint64_t stored = 0;  // bytes in the slot
    bool compressed = false;
    int result = KVTIER_ERR_IO;
  };
  // A page a get() found unreadable (I/O error, checksum): dropped unless rewritten meanwhile.
  struct Unreadable {
    KeyId id;
    uint64_t seq;
  };

  PageFiles() = default;
  Status open_class(uint64_t slot_size, uint32_t* cls);  // REQUIRES mu_
  int reserve(uint32_t cls, uint64_t* slot);             // REQUIRES mu_; 0 or a code
  // Frees a slot and zeroes its record, so no restart brings back what was there.
  void release(uint32_t cls, uint64_t slot);  // REQUIRES mu_
  void evict_one();                           // REQUIRES mu_
  bool evict_from_class(uint32_t cls);        // REQUIRES mu_
  void claim(std::span<PutOp> ops, std::vector<Writing>* mine, std::vector<size_t>* waiting);
  void write_pages(std::span<PutOp> ops, std::vector<Writing>& mine);
  void prepare_write(PutOp& op, Writing& w, Io& io);
  void sync_and_record(std::span<PutOp> ops, std::vector<Writing>& mine);
  void publish(std::span<PutOp> ops, std::vector<Writing>& mine);
  void put_after_others(std::span<PutOp> ops, const std::vector<size_t>& waiting);
  void drop(const std::vector<Unreadable>& pages);
  int sync_fd(int fd);  // 0 or -errno
  // A valid record found on open.
  struct Found {
    KeyId id;
    uint32_t cls;
    uint64_t slot, length, checksum, seq, stored;
    bool compressed;
  };
  Status rebuild();
  Status scan_class(uint64_t size, std::vector<Found>* found, uint64_t* scanned);
  int open_file(const std::string& name);  // in the namespace folder, never through a link
  // Writes slot's record (all zero: free); false with errno set on failure.
  static bool write_record(int idx_fd, uint64_t slot, const Record& r);

  std::string dir_;
  int dir_fd_ = -1;  // the namespace folder: every file is opened relative to it
  uint64_t capacity_ = 0;
  bool direct_ = true;
  // O_DIRECT's alignment of memory and of lengths (statx STATX_DIOALIGN): 4 bytes and 512 on
  // NVMe, so an engine pool that is not 4 KiB-aligned still moves with no copy there.
  uint64_t mem_align_ = kBlock, io_align_ = kBlock;
  bool sync_ = true;
  int zstd_level_ = 0;  // 0: no compression
  int lock_fd_ = -1;
  std::unique_ptr<Faults> faults_;  // test-only (KVTIER_TEST_FILE_FAULTS); before rings_
  RingPool rings_;
  BouncePool bounce_;

  mutable std::mutex mu_;
  std::condition_variable cv_;  // a key's write ended, or a clear() began or ended
  std::vector<SizeClass> classes_;
  std::map<uint64_t, uint32_t> class_of_size_;
  std::unordered_map<KeyId, Entry, KeyIdHash> map_;
  std::list<KeyId> lru_;     // front = most recent
  uint64_t live_bytes_ = 0;  // slots held by pages, and reserved for writes in flight
  uint64_t seq_ = 1;
  // Keys some put() is writing: one write per key at a time, so a key never has two records.
  std::unordered_set<KeyId, KeyIdHash> writing_;
  size_t active_puts_ = 0;  // puts past claim(); clear() waits for them to end
  bool clearing_ = false;   // new puts wait until the clear() is done
  uint64_t evictions_ = 0;
  uint64_t errors_ = 0;
};

PageFiles::~PageFiles() {
  for (auto& c : classes_) {
    if (c.fd >= 0) ::close(c.fd);
    if (c.idx_fd >= 0) {
      if (sync_ && ::fdatasync(c.idx_fd) != 0)
        log().warn("file tier: cannot sync an index file in {}: {}", dir_, std::strerror(errno));
      ::close(c.idx_fd);
    }
  }
  if (lock_fd_ >= 0) ::close(lock_fd_);  // releases the flock
  if (dir_fd_ >= 0) ::close(dir_fd_);
}

int PageFiles::open_file(const std::string& name) {
  if (direct_) {
    int fd = open_private_file(dir_fd_, name, O_RDWR | O_DIRECT);
    if (fd >= 0 || errno != EINVAL) return fd;
    log().info("file tier: {} refuses O_DIRECT; using the page cache", dir_);
    direct_ = false;
  }
  return open_private_file(dir_fd_, name, O_RDWR);
}

Status PageFiles::open(const Config& config, const std::string& path,
                       std::shared_ptr<PageFiles>* out) {
  std::shared_ptr<PageFiles> pf(new PageFiles());
  pf->dir_ = path;
  pf->capacity_ = config.file_capacity;
  pf->direct_ = config.file_direct;
  pf->sync_ = config.file_sync;
  pf->zstd_level_ = config.file_zstd_level;
  // The folders are the caller's alone, or refused: another user must not be able to plant a
  // link that makes this process write over someone else's file, or read its pages.
  int root = -1;
  Status safe = open_private_dir(config.file_dir, &root);
  if (safe.is_ok()) {
    safe = open_private_subdir(root, config.file_dir, path.substr(config.file_dir.size() + 1),
                               &pf->dir_fd_);
    ::close(root);
  }
  if (!safe.is_ok()) return {safe.code(), "KVTIER_FILE_DIR: " + safe.message()};
  // One process per namespace: a second one gets a clear error instead of a corrupt index.
  pf->lock_fd_ = open_private_file(pf->dir_fd_, "LOCK", O_RDWR);
  if (pf->lock_fd_ < 0)
    return {KVTIER_ERR_IO, "cannot open " + path + "/LOCK: " + std::strerror(errno)};
  if (::flock(pf->lock_fd_, LOCK_EX | LOCK_NB) != 0) {
    char pid[32] = {};
    ssize_t n = ::pread(pf->lock_fd_, pid, sizeof pid - 1, 0);
    (void)n;
    return {KVTIER_ERR_BUSY, "namespace folder " + path + " is open in another process (pid " +
                                 std::string(pid) + ")"};
  }
  std::string me = std::to_string(::getpid());
  if (::ftruncate(pf->lock_fd_, 0) != 0 || ::pwrite(pf->lock_fd_, me.data(), me.size(), 0) < 0)
    log().warn("file tier: cannot record the pid in {}/LOCK", path);
  struct statx sx {};
  if (::statx(pf->lock_fd_, "", AT_EMPTY_PATH, STATX_DIOALIGN, &sx) == 0 &&
      (sx.stx_mask & STATX_DIOALIGN) && sx.stx_dio_mem_align && sx.stx_dio_offset_align &&
      kBlock % sx.stx_dio_offset_align == 0 && kBlock % sx.stx_dio_mem_align == 0) {
    pf->mem_align_ = sx.stx_dio_mem_align;
    pf->io_align_ = sx.stx_dio_offset_align;
  }
  Status s = Faults::parse(std::getenv("KVTIER_TEST_FILE_FAULTS"), &pf->faults_);
  if (!s.is_ok()) return s;
  if (pf->faults_) log().warn("file tier: injecting I/O faults (KVTIER_TEST_FILE_FAULTS)");
  s = pf->rings_.init(2, config.file_queue_depth, pf->faults_.get());
  if (!s.is_ok()) return s;
  s = pf->rebuild();
  if (!s.is_ok()) return s;
  *out = std::move(pf);
  return {};
}

Status PageFiles::open_class(uint64_t slot_size, uint32_t* cls) {
  auto it = class_of_size_.find(slot_size);
  if (it != class_of_size_.end()) {
    *cls = it->second;
    return {};
  }
  const std::string name = "pages-" + std::to_string(slot_size);
  const std::string base = dir_ + "/" + name;
  int fd = open_file(name + ".dat");
  if (fd < 0) return {KVTIER_ERR_IO, "cannot open " + base + ".dat: " + std::strerror(errno)};
  // Records go through the page cache: small writes, read back in one sequential pass.
  int idx = open_private_file(dir_fd_, name + ".idx", O_RDWR);
  if (idx < 0) {
    const int err = errno;
    ::close(fd);
    return {KVTIER_ERR_IO, "cannot open " + base + ".idx: " + std::strerror(err)};
  }
  SizeClass c;
  c.slot_size = slot_size;
  c.fd = fd;
  c.idx_fd = idx;
  classes_.push_back(std::move(c));
  *cls = static_cast<uint32_t>(classes_.size() - 1);
  class_of_size_[slot_size] = *cls;
  return {};
}

void PageFiles::release(uint32_t cls, uint64_t slot) {
  // Under mu_, before the slot can be handed out again: a stale record left behind would bring
  // back an evicted, removed or overwritten page after a restart.
  if (!write_record(classes_[cls].idx_fd, slot, Record{}))
    log().warn("file tier: cannot clear a record in {}: {}", dir_, std::strerror(errno));
  classes_[cls].free.push_back(slot);
  live_bytes_ -= classes_[cls].slot_size;
}

void PageFiles::evict_one() {
  auto it = map_.find(lru_.back());
  release(it->second.cls, it->second.slot);
  map_.erase(it);
  lru_.pop_back();
  ++evictions_;
}

bool PageFiles::evict_from_class(uint32_t cls) {
  for (auto l = lru_.rbegin(); l != lru_.rend(); ++l) {
    auto it = map_.find(*l);
    if (it->second.cls != cls) continue;
    release(cls, it->second.slot);
    lru_.erase(std::next(l).base());
    map_.erase(it);
    ++evictions_;
    return true;
  }
  return false;
}

int PageFiles::reserve(uint32_t cls, uint64_t* slot) {
  SizeClass& c = classes_[cls];
  if (c.slot_size > capacity_) return KVTIER_ERR_NO_SPACE;
  while (live_bytes_ + c.slot_size > capacity_ && !lru_.empty()) evict_one();
  if (live_bytes_ + c.slot_size > capacity_) return KVTIER_ERR_NO_SPACE;  // all in flight
  if (c.free.empty() && c.used_slots == c.file_slots) {
    // Grow in big steps (fewer extents), but never take more than a slice of the budget or of
    // what the filesystem has left, so other size classes still find room.
    uint64_t step = std::min(kGrowBytes, capacity_ / 16);
    struct statvfs vfs {};
    if (::fstatvfs(c.fd, &vfs) == 0)
      step = std::min<uint64_t>(step, uint64_t{vfs.f_bavail} * vfs.f_frsize / 8);
    uint64_t grow = std::max<uint64_t>(1, step / c.slot_size);
    auto extend = [&] {
      // The records first: a slot never exists without room for its record.
      const auto rec = static_cast<off_t>(sizeof(Record));
      int rc = ::fallocate(c.idx_fd, 0, static_cast<off_t>(c.file_slots) * rec,
                           static_cast<off_t>(grow) * rec);
      if (rc != 0 && errno == EOPNOTSUPP)
        rc = ::ftruncate(c.idx_fd, static_cast<off_t>(c.file_slots + grow) * rec);
      if (rc != 0) return rc;
      rc = ::fallocate(c.fd, 0, static_cast<off_t>(c.file_slots * c.slot_size),
                       static_cast<off_t>(grow * c.slot_size));
      if (rc != 0 && errno == EOPNOTSUPP)
        rc = ::ftruncate(c.fd, static_cast<off_t>((c.file_slots + grow) * c.slot_size));
      return rc;
    };
    int rc = extend();
    if (rc != 0 && errno == ENOSPC && grow > 1) {  // a nearly full disk: one slot at a time
      grow = 1;
      rc = extend();
    }
    if (rc == 0) {
      c.file_slots += grow;
    } else {
      const int err = errno;
      // The disk is full: reuse the slot of this size class's least recently used page.
      if (!evict_from_class(cls)) {
        log().warn("file tier: cannot grow {}/pages-{}.dat: {}", dir_, c.slot_size,
                   std::strerror(err));
        return err == ENOSPC || err == EDQUOT || err == EFBIG ? KVTIER_ERR_NO_SPACE : KVTIER_ERR_IO;
      }
    }
  }
  if (!c.free.empty()) {
    *slot = c.free.back();
    c.free.pop_back();
  } else {
    *slot = c.used_slots++;
  }
  live_bytes_ += c.slot_size;
  return KVTIER_OK;
}

bool PageFiles::write_record(int idx_fd, uint64_t slot, const Record& r) {
  const auto off = static_cast<off_t>(slot * sizeof r);
  return ::pwrite(idx_fd, &r, sizeof r, off) == static_cast<ssize_t>(sizeof r);
}

void PageFiles::put(std::span<PutOp> ops) {
  std::vector<Writing> mine;
  std::vector<size_t> waiting;
  claim(ops, &mine, &waiting);
  if (!mine.empty()) {
    write_pages(ops, mine);
    sync_and_record(ops, mine);
  }
  publish(ops, mine);
  if (!waiting.empty()) put_after_others(ops, waiting);
}

// A key already stored is done (it keeps its value); a key another write holds, this batch's
// own or another thread's, waits for it; the rest this call writes. So a key never has two
// records on disk, and a restart cannot pick a later value over the first.
void PageFiles::claim(std::span<PutOp> ops, std::vector<Writing>* mine,
                      std::vector<size_t>* waiting) {
  std::unique_lock lock(mu_);
  cv_.wait(lock, [&] { return !clearing_; });
  ++active_puts_;
  for (size_t i = 0; i < ops.size(); ++i) {
    auto it = map_.find(ops[i].id);
    if (it != map_.end()) {
      lru_.splice(lru_.begin(), lru_, it->second.lru);
      ops[i].result = KVTIER_OK;
    } else if (!writing_.insert(ops[i].id).second) {
      waiting->push_back(i);
    } else {
      mine->push_back({i, seq_++});
    }
  }
}

// Ops whose key another write held: once that write is over, the key is stored (OK) or free
// again (this call writes it).
void PageFiles::put_after_others(std::span<PutOp> ops, const std::vector<size_t>& waiting) {
  std::vector<PutOp> again;
  for (size_t i : waiting) again.push_back(ops[i]);
  {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] {
      return std::none_of(again.begin(), again.end(),
                          [&](const PutOp& op) { return writing_.count(op.id) != 0; });
    });
  }
  put(again);
  for (size_t k = 0; k < waiting.size(); ++k) ops[waiting[k]].result = again[k].result;
}

void PageFiles::prepare_write(PutOp& op, Writing& w, Io& io) {
  io.error = -ECANCELED;  // io.fd stays -1 when a step fails; w.result says why
  w.result = KVTIER_ERR_NO_MEMORY;
  // Compress first (when asked): the slot is sized for what will be stored. The checksum is
  // of the page itself, taken just before (the compressor then reads the page from cache).
  if (zstd_level_) {
    ensure_checksum(op);
    w.buf_size = round_block(ZSTD_compressBound(op.size));
    if (!(w.buf = bounce_.get(w.buf_size))) return;
    const size_t n = compress_frags(op.frags, w.buf, w.buf_size, zstd_level_);
    w.compressed = n > 0 && n <= op.size - op.size / kMinSavingDiv;
    if (w.compressed) w.stored = n;
  }
  if (!w.compressed) w.stored = op.size;
  // Straight from the engine's pool when O_DIRECT allows it, else a bounce copy.
  const bool direct = !w.compressed && (!direct_ || aligned(op.frags, mem_align_, io_align_));
  const size_t end = direct_ ? round_block(w.stored) : w.stored;
  if (!direct && (!w.buf || w.buf_size < end)) {
    bounce_.put(w.buf, w.buf_size);
    w.buf_size = round_block(end);
    if (!(w.buf = bounce_.get(w.buf_size))) return;
  }
  if (direct) {
    ensure_checksum(op);  // the only pass over the bytes: the disk reads them itself
  } else if (!w.compressed) {
    // Copy into the bounce buffer (while the I/O already queued runs), then take the
    // checksum of the copy while it is in cache.
    gather(op.frags, w.buf);
    if (!op.has_checksum) {
      op.checksum = checksum(w.buf, w.stored);
      op.has_checksum = true;
    }
  }
  {
    std::lock_guard lock(mu_);
    Status s = open_class(slot_size_for(w.stored), &w.cls);
    w.result = s.is_ok() ? reserve(w.cls, &w.slot) : s.code();
    if (w.result != KVTIER_OK) return;
    w.reserved = true;
    w.fd = classes_[w.cls].fd;
    w.idx_fd = classes_[w.cls].idx_fd;
    w.slot_size = classes_[w.cls].slot_size;
  }
  io.fd = w.fd;
  io.write = true;
  io.offset = w.slot * w.slot_size;
  if (direct) {
    for (const Frag& f : op.frags) io.iov.push_back({f.ptr, f.len});
  } else {
    std::memset(w.buf + w.stored, 0, end - w.stored);
    io.iov.push_back({w.buf, end});
  }
}

void PageFiles::write_pages(std::span<PutOp> ops, std::vector<Writing>& mine) {
  rings_.with_ring([&](Ring& ring) {
    ring.run(
        mine.size(), [&](size_t i, Io& io) { prepare_write(ops[mine[i].op], mine[i], io); },
        [&](size_t i, int res) {
          Writing& w = mine[i];
          if (w.reserved) {
            w.result = res < 0 ? io_code(res) : KVTIER_OK;
            if (res < 0)
              log().warn("file tier: write of slot {} in {} failed: {}", w.slot, dir_,
                         std::strerror(-res));
          }
          bounce_.put(w.buf, w.buf_size);
          w.buf = nullptr;
        });
  });
}

int PageFiles::sync_fd(int fd) {
  if (faults_)
    if (const int injected = faults_->on_sync()) return injected;
  return ::fdatasync(fd) == 0 ? 0 : -errno;
}

void PageFiles::sync_and_record(std::span<PutOp> ops, std::vector<Writing>& mine) {
  // Durable before visible: one fdatasync per file the batch wrote.
  if (sync_) {
    std::vector<int> fds;
    for (const Writing& w : mine)
      if (w.result == KVTIER_OK && std::find(fds.begin(), fds.end(), w.fd) == fds.end())
        fds.push_back(w.fd);
    for (int fd : fds) {
      const int rc = sync_fd(fd);
      if (rc == 0) continue;
      log().warn("file tier: fdatasync in {} failed: {}", dir_, std::strerror(-rc));
      for (Writing& w : mine)
        if (w.fd == fd && w.result == KVTIER_OK) w.result = io_code(rc);
    }
  }
  // Then the records, through the page cache (see file_tier.h).
  for (Writing& w : mine) {
    if (w.result != KVTIER_OK) continue;
    const PutOp& op = ops[w.op];
    Record r{kMagic,
             kVersion,
             w.compressed ? kCompressed : uint16_t{0},
             op.id.hi,
             op.id.lo,
             op.size,
             op.checksum,
             w.seq,
             w.stored,
             0};
    r.self_checksum = record_sum(r);
    if (!write_record(w.idx_fd, w.slot, r)) {
      w.result = io_code(-errno);
      log().warn("file tier: cannot write a record in {}: {}", dir_, std::strerror(errno));
    }
  }
}

void PageFiles::publish(std::span<PutOp> ops, std::vector<Writing>& mine) {
  std::lock_guard lock(mu_);
  for (Writing& w : mine) {
    PutOp& op = ops[w.op];
    op.result = w.result;
    writing_.erase(op.id);
    if (w.result != KVTIER_OK) ++errors_;
    if (!w.reserved) continue;
    if (w.result != KVTIER_OK) {
      release(w.cls, w.slot);
      continue;
    }
    lru_.push_front(op.id);
    map_.emplace(op.id, Entry{w.cls, w.slot, op.size, op.checksum, w.seq, w.stored, w.compressed,
                              lru_.begin()});
  }
  --active_puts_;
  cv_.notify_all();
}

void PageFiles::get(std::span<GetOp> ops) {
  struct Pending {
    size_t op;
    int fd;
    uint64_t offset, length, checksum, stored, seq;
    bool compressed;
    std::byte* buf = nullptr;
    size_t buf_size = 0;
    bool no_memory = false;  // no bounce buffer: the page is fine, this read is not
  };
  std::vector<Pending> pending;
  {
    std::lock_guard lock(mu_);
    for (size_t i = 0; i < ops.size(); ++i) {
      GetOp& op = ops[i];
      auto it = map_.find(op.id);
      if (it == map_.end()) {
        op.result = KVTIER_ERR_NOT_FOUND;
        continue;
      }
      const Entry& e = it->second;
      if (op.exact ? e.length != op.capacity : e.length > op.capacity) {
        op.result = op.exact ? KVTIER_ERR_SIZE_MISMATCH : KVTIER_ERR_BUFFER_TOO_SMALL;
        continue;
      }
      lru_.splice(lru_.begin(), lru_, e.lru);
      const SizeClass& c = classes_[e.cls];
      pending.push_back(
          {i, c.fd, e.slot * c.slot_size, e.length, e.checksum, e.stored, e.seq, e.compressed});
    }
  }
  if (pending.empty()) return;
  std::vector<Unreadable> unreadable;
  rings_.with_ring([&](Ring& ring) {
    ring.run(
        pending.size(),
        [&](size_t i, Io& io) {
          Pending& p = pending[i];
          const GetOp& op = ops[p.op];
          io.fd = p.fd;
          io.offset = p.offset;
          if (!p.compressed && p.length == op.capacity &&
              (!direct_ ||
               (aligned(op.frags, mem_align_, io_align_) && p.length % io_align_ == 0))) {
            for (const Frag& f : op.frags) io.iov.push_back({f.ptr, f.len});
            return;
          }
          p.buf_size = round_block(p.stored);
          p.buf = bounce_.get(p.buf_size);
          if (!p.buf) {
            io.fd = -1;
            io.error = -ENOMEM;
            p.no_memory = true;
            return;
          }
          io.iov.push_back({p.buf, direct_ ? p.buf_size : p.stored});
        },
        [&](size_t i, int res) {
          Pending& p = pending[i];
          GetOp& op = ops[p.op];
          if (p.no_memory) {
            op.result = KVTIER_ERR_NO_MEMORY;
          } else if (res < 0) {
            op.result = io_code(res);
            log().warn("file tier: read in {} failed: {}; the page is dropped", dir_,
                       std::strerror(-res));
          } else if (p.compressed && !decompress_frags(p.buf, p.stored, op.frags, p.length)) {
            op.result = KVTIER_ERR_CORRUPT;  // a damaged frame: a miss, like a bad checksum
          } else {
            // Copies out of the bounce buffer overlap the reads still queued; the check runs
            // on the copy while it is in cache.
            if (p.buf && !p.compressed) scatter(p.buf, p.length, op.frags);
            op.result = static_cast<int64_t>(p.length);
            op.checksum = p.checksum;
            verify(op);
          }
          if (op.result == KVTIER_ERR_IO || op.result == KVTIER_ERR_CORRUPT)
            unreadable.push_back({op.id, p.seq});
          bounce_.put(p.buf, p.buf_size);
          p.buf = nullptr;
        });
  });
  if (!unreadable.empty()) drop(unreadable);
}

// A page that cannot be read goes, like one that fails its checksum: kept, it would count as
// present and block the engine's next set of the key, which would store it again.
void PageFiles::drop(const std::vector<Unreadable>& pages) {
  std::lock_guard lock(mu_);
  for (const Unreadable& u : pages) {
    auto it = map_.find(u.id);
    if (it == map_.end() || it->second.seq != u.seq) continue;  // removed or rewritten since
    release(it->second.cls, it->second.slot);
    lru_.erase(it->second.lru);
    map_.erase(it);
  }
}

void PageFiles::exists(std::span<const KeyId> ids, std::span<uint8_t> present) {
  std::lock_guard lock(mu_);
  for (size_t i = 0; i < ids.size(); ++i) present[i] = map_.count(ids[i]) ? 1 : 0;
}

void PageFiles::remove(std::span<const KeyId> ids, std::span<int> results) {
  std::lock_guard lock(mu_);
  for (size_t i = 0; i < ids.size(); ++i) {
    auto it = map_.find(ids[i]);
    if (it == map_.end()) {
      results[i] = KVTIER_ERR_NOT_FOUND;
      continue;
    }
    release(it->second.cls, it->second.slot);  // zeroes the record: a restart keeps it gone
    lru_.erase(it->second.lru);
    map_.erase(it);
    results[i] = KVTIER_OK;
  }
}

void PageFiles::clear() {
  // Alone: writes in flight finish first and new ones wait, so nothing a put was writing
  // while the files were cut can land in them (and come back after a restart).
  std::unique_lock lock(mu_);
  cv_.wait(lock, [&] { return !clearing_; });
  clearing_ = true;
  cv_.wait(lock, [&] { return active_puts_ == 0; });
  map_.clear();
  lru_.clear();
  for (SizeClass& c : classes_) {
    if (::ftruncate(c.idx_fd, 0) != 0 || ::ftruncate(c.fd, 0) != 0)
      log().warn("file tier: cannot truncate a page file in {}: {}", dir_, std::strerror(errno));
    c.file_slots = c.used_slots = 0;
    c.free.clear();
  }
  live_bytes_ = 0;
  clearing_ = false;
  cv_.notify_all();
}

TierStats PageFiles::stats() const {
  std::lock_guard lock(mu_);
  return {map_.size(), live_bytes_, capacity_, evictions_, errors_};
}

Status PageFiles::rebuild() {
  const int list_fd = ::openat(dir_fd_, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  DIR* d = list_fd >= 0 ? ::fdopendir(list_fd) : nullptr;
  if (!d && list_fd >= 0) ::close(list_fd);
  if (!d) return {KVTIER_ERR_IO, "cannot list " + dir_ + ": " + std::strerror(errno)};
  std::vector<uint64_t> sizes;
  std::vector<std::string> stale;
  while (dirent* ent = ::readdir(d)) {
    unsigned long long size = 0;
    char tail[8] = {};
    const std::string name = ent->d_name;
    if (std::sscanf(name.c_str(), "pages-%llu.%4s", &size, tail) == 2 &&
        std::string(tail) == "dat" && size >= kBlock && size % kBlock == 0)
      sizes.push_back(size);
    else if (name.rfind("slots-", 0) == 0)  // the format before the .idx files
      stale.push_back(name);
  }
  ::closedir(d);
  for (const std::string& name : stale) {
    log().warn("file tier: {}/{} is in an older on-disk format; its pages are dropped", dir_, name);
    ::unlinkat(dir_fd_, name.c_str(), 0);
  }
  std::vector<Found> found;
  uint64_t scanned = 0;
  for (uint64_t size : sizes) {
    Status status = scan_class(size, &found, &scanned);
    if (!status.is_ok()) return status;
  }
  // Oldest first: the newest pages end at the LRU front.
  std::sort(found.begin(), found.end(),
            [](const Found& a, const Found& b) { return a.seq < b.seq; });
  for (const Found& f : found) {
    seq_ = std::max(seq_, f.seq + 1);
    if (map_.count(f.id)) {
      // A second copy of a key (earlier builds wrote them): the first one written is
      // the one that was served, so it stays; this one's record is zeroed.
      live_bytes_ += classes_[f.cls].slot_size;  // release() gives it back
      release(f.cls, f.slot);
      continue;
    }
    lru_.push_front(f.id);
    map_.emplace(f.id, Entry{f.cls, f.slot, f.length, f.checksum, f.seq, f.stored, f.compressed,
                             lru_.begin()});
    live_bytes_ += classes_[f.cls].slot_size;
  }
  while (live_bytes_ > capacity_ && !lru_.empty()) evict_one();
  log().info("file tier: {} opened with {} pages ({} slots scanned)", dir_, map_.size(), scanned);
  return {};
}

// Reads one size class's records. Slots past what the capacity could ever use are cut off the
// files, so a huge (or sparse) page file costs neither memory nor time on open.
Status PageFiles::scan_class(uint64_t size, std::vector<Found>* found, uint64_t* scanned) {
  uint32_t cls;
  Status status = open_class(size, &cls);
  if (!status.is_ok()) return status;
  SizeClass& c = classes_[cls];
  struct stat st {};
  if (::fstat(c.fd, &st) != 0)
    return {KVTIER_ERR_IO, std::string("fstat: ") + std::strerror(errno)};
  uint64_t slots = static_cast<uint64_t>(st.st_size) / size;
  // reserve() grows a file by at most kGrowBytes past the capacity.
  const uint64_t max_slots = (capacity_ + kGrowBytes) / size;
  if (slots > max_slots) {
    log().warn(
        "file tier: {}/pages-{}.dat holds {} slots, more than a capacity of {} bytes "
        "uses; cut to {}",
        dir_, size, slots, capacity_, max_slots);
    slots = max_slots;
    if (::ftruncate(c.fd, static_cast<off_t>(slots * size)) != 0 ||
        ::ftruncate(c.idx_fd, static_cast<off_t>(slots * sizeof(Record))) != 0)
      return {KVTIER_ERR_IO, "cannot shorten a page file in " + dir_ + ": " + std::strerror(errno)};
  }
  c.file_slots = c.used_slots = slots;
  std::vector<uint8_t> valid(slots, 0);
  std::vector<Record> recs(std::min<uint64_t>(16384, slots));  // 1 MiB of records at a time
  for (uint64_t first = 0; first < slots; first += recs.size()) {
    const uint64_t want = std::min<uint64_t>(recs.size(), slots - first);
    const ssize_t got = ::pread(c.idx_fd, recs.data(), want * sizeof(Record),
                                static_cast<off_t>(first * sizeof(Record)));
    if (got < 0)
      return {KVTIER_ERR_IO, "cannot read an index file in " + dir_ + ": " + std::strerror(errno)};
    const uint64_t n = static_cast<uint64_t>(got) / sizeof(Record);  // short: the rest is free
    for (uint64_t k = 0; k < n; ++k) {
      const Record& r = recs[k];
      if (r.magic != kMagic || r.version != kVersion || r.self_checksum != record_sum(r) ||
          r.length == 0 || r.stored == 0 || r.stored > size || (r.flags & ~kCompressed) ||
          (!(r.flags & kCompressed) && r.stored != r.length))
        continue;
      valid[first + k] = 1;
      found->push_back({{r.key_hi, r.key_lo},
                        cls,
                        first + k,
                        r.length,
                        r.checksum,
                        r.seq,
                        r.stored,
                        (r.flags & kCompressed) != 0});
    }
    *scanned += want;
    if (n < want) break;
  }
  for (uint64_t slot = 0; slot < slots; ++slot)
    if (!valid[slot]) c.free.push_back(slot);
  return {};
}

// ---- the tier, and the process-wide table of open namespaces ------------------------------

void FileTier::put(std::span<PutOp> ops) {
  files_->put(ops);
}
void FileTier::get(std::span<GetOp> ops) {
  files_->get(ops);
}
void FileTier::exists(std::span<const KeyId> ids, std::span<uint8_t> present) {
  files_->exists(ids, present);
}
void FileTier::remove(std::span<const KeyId> ids, std::span<int> results) {
  files_->remove(ids, results);
}
void FileTier::clear() {
  files_->clear();
}
TierStats FileTier::stats() const {
  return files_->stats();
}

Status open_page_files(const Config& config, std::shared_ptr<PageFiles>* out) {
  // Stores of one process on the same namespace share one PageFiles (the flock is per process).
  static std::mutex mu;
  static std::map<std::string, std::weak_ptr<PageFiles>> open;
  const std::string path = config.file_dir + "/" + dir_name(config.ns);
  std::lock_guard lock(mu);
  if (auto existing = open[path].lock()) {
    *out = std::move(existing);
    return {};
  }
  Status s = PageFiles::open(config, path, out);
  if (s.is_ok()) open[path] = *out;
  return s;
}

namespace {
Status make_file_tier(const Config& config, std::unique_ptr<Tier>* out) {
  std::shared_ptr<PageFiles> files;
  Status s = open_page_files(config, &files);
  if (!s.is_ok()) return s;
  *out = std::make_unique<FileTier>(std::move(files));
  return {};
}
}  // namespace

KVTIER_REGISTER_TIER("file", make_file_tier);

}  // namespace kvtier
