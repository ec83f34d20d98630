#include "file_tier.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "log.h"
#include "page_files.h"
#include "process.h"
#include "safe_dir.h"

namespace kvtier {

namespace {

// A namespace's folder is named by a hash of its name, which stays inside (NAME): the names of
// the folders show no tenant or model to whoever lists the parent.
std::string dir_name(const std::string& ns) {
  const KeyId id = key_id(0x6b76646972 /* "kvdir" */, ns);
  char name[40];
  std::snprintf(name, sizeof name, "ns-%016llx%016llx", static_cast<unsigned long long>(id.hi),
                static_cast<unsigned long long>(id.lo));
  return name;
}

// The folder the file tier uses: KVTIER_FILE_DIR, or when that is left to its default and
// another user took the default (made it first, or left it open), the first of default-1 ..
// default-8 that is the caller's or that it can make, so every process of the user finds the
// same one. A KVTIER_FILE_DIR that was set is used as it is, or refused.
std::string usable_dir(const std::string& dir) {
  if (dir != default_file_dir()) return dir;
  for (int k = 0; k <= 8; ++k) {
    const std::string candidate = k ? dir + "-" + std::to_string(k) : dir;
    int fd = -1;
    Status s = open_private_dir(candidate, &fd);
    if (s.is_ok()) {
      ::close(fd);
      return candidate;
    }
    if (s.code() != KVTIER_ERR_DENIED) return dir;  // not another user's doing: said at open
    log().warn("file tier: the default folder is not usable ({}); trying the next one",
               s.message());
  }
  return dir;
}

// NAME in a namespace folder: the namespace it holds, checked at every open.
Status check_name(int dir_fd, const std::string& path, const std::string& ns) {
  const int fd = open_private_file(dir_fd, "NAME", O_RDWR);
  if (fd < 0) return {KVTIER_ERR_IO, "cannot open " + path + "/NAME: " + std::strerror(errno)};
  std::string held(256, '\0');
  const ssize_t n = ::pread(fd, held.data(), held.size(), 0);
  held.resize(n > 0 ? static_cast<size_t>(n) : 0);
  Status s;
  if (held.empty()) {
    if (::pwrite(fd, ns.data(), ns.size(), 0) != static_cast<ssize_t>(ns.size()))
      s = {KVTIER_ERR_IO, "cannot write " + path + "/NAME: " + std::strerror(errno)};
  } else if (held != ns) {
    s = {KVTIER_ERR_DENIED, "file tier: " + path + " holds the pages of another namespace"};
  }
  ::close(fd);
  return s;
}

}  // namespace

int io_code(int neg_errno) {
  return neg_errno == -ENOSPC || neg_errno == -EDQUOT || neg_errno == -EFBIG ? KVTIER_ERR_NO_SPACE
                                                                             : KVTIER_ERR_IO;
}

void pause_for_others(unsigned round) {
  std::this_thread::sleep_for(std::chrono::microseconds(round < 50 ? 50 : 1000));
}

PageFiles::~PageFiles() {
  for (auto& [size, f] : files_) {
    if (f.fd >= 0) ::close(f.fd);
    if (f.idx_fd >= 0) {
      if (sync_ && ::fdatasync(f.idx_fd) != 0)
        log().warn("file tier: cannot sync an index file in {}: {}", dir_, std::strerror(errno));
      ::close(f.idx_fd);
    }
  }
  index_.reset();  // drops the namespace's shared flock
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

Status PageFiles::files_of(uint64_t slot_size, ClassFiles* out) {
  std::lock_guard lock(files_mu_);
  auto it = files_.find(slot_size);
  if (it != files_.end()) {
    *out = it->second;
    return {};
  }
  const std::string name = "pages-" + std::to_string(slot_size);
  const std::string base = dir_ + "/" + name;
  ClassFiles f;
  f.fd = open_file(name + ".dat");
  if (f.fd < 0) return {KVTIER_ERR_IO, "cannot open " + base + ".dat: " + std::strerror(errno)};
  // Records go through the page cache: small writes, read back in one sequential pass.
  f.idx_fd = open_private_file(dir_fd_, name + ".idx", O_RDWR);
  if (f.idx_fd < 0) {
    const int err = errno;
    ::close(f.fd);
    return {KVTIER_ERR_IO, "cannot open " + base + ".idx: " + std::strerror(err)};
  }
  files_[slot_size] = f;
  *out = f;
  return {};
}

Status PageFiles::open(const Config& config, const std::string& root_dir, const std::string& path,
                       std::shared_ptr<PageFiles>* out) {
  std::shared_ptr<PageFiles> pf(new PageFiles());
  pf->dir_ = path;
  pf->direct_ = config.file_direct;
  pf->sync_ = config.file_sync;
  pf->zstd_level_ = config.file_zstd_level;
  // The folders are the caller's alone, or refused: another user must not be able to plant a
  // link that makes this process write over someone else's file, or read its pages.
  int root = -1;
  Status safe = open_private_dir(root_dir, &root);
  if (safe.is_ok()) {
    safe = open_private_subdir(root, root_dir, path.substr(root_dir.size() + 1), &pf->dir_fd_);
    ::close(root);
  }
  if (safe.is_ok()) safe = check_name(pf->dir_fd_, path, config.ns);
  if (!safe.is_ok()) return {safe.code(), "KVTIER_FILE_DIR: " + safe.message()};
  Status s = Faults::parse(std::getenv("KVTIER_TEST_FILE_FAULTS"), &pf->faults_);
  if (!s.is_ok()) return s;
  if (pf->faults_) log().warn("file tier: injecting I/O faults (KVTIER_TEST_FILE_FAULTS)");
  s = pf->rings_.init(2, config.file_queue_depth, pf->faults_.get());
  if (!s.is_ok()) return s;
  bool fresh = false;
  s = SharedIndex::open(pf->dir_fd_, path, config.file_capacity, config.file_lock_timeout_ms,
                        &fresh, &pf->index_);
  if (!s.is_ok()) return s;
  struct statx sx {};  // of a file on the folder's filesystem
  if (::statx(pf->dir_fd_, "INDEX", AT_SYMLINK_NOFOLLOW, STATX_DIOALIGN, &sx) == 0 &&
      (sx.stx_mask & STATX_DIOALIGN) && sx.stx_dio_mem_align && sx.stx_dio_offset_align &&
      kBlock % sx.stx_dio_offset_align == 0 && kBlock % sx.stx_dio_mem_align == 0) {
    pf->mem_align_ = sx.stx_dio_mem_align;
    pf->io_align_ = sx.stx_dio_offset_align;
  }
  if (fresh && !(s = pf->rebuild(false)).is_ok()) return s;
  PageFiles* self = pf.get();
  pf->index_->set_recovery([self](bool keep_writes) {
    Status r = self->rebuild(keep_writes);
    if (!r.is_ok()) log().error("file tier: rebuilding {} failed: {}", self->dir_, r.message());
  });
  pf->index_->opened();
  *out = std::move(pf);
  return {};
}

// ---- get, exists, remove, clear ------------------------------------------------------------

void PageFiles::get(std::span<GetOp> ops) {
  std::vector<Reading> pending;
  lookup(ops, &pending);
  if (pending.empty()) return;
  std::vector<Reading> unreadable;
  read_pages(ops, pending, &unreadable);
  if (!unreadable.empty()) drop_unreadable(ops, unreadable);
}

// Under the lock: where each key's page is, as of now.
void PageFiles::lookup(std::span<GetOp> ops, std::vector<Reading>* pending) {
  Guard g(*index_);
  if (!g.ok()) {  // another process holds the lock: a miss, not a wait
    for (GetOp& op : ops) op.result = KVTIER_ERR_NOT_FOUND;
    return;
  }
  for (size_t i = 0; i < ops.size(); ++i) {
    GetOp& op = ops[i];
    const uint32_t n = index_->find(op.id);
    if (n == kNil || index_->node(n).state != kLive) {
      op.result = KVTIER_ERR_NOT_FOUND;
      continue;
    }
    const Node& x = index_->node(n);
    if (const int fit = fits(op, x.length); fit != KVTIER_OK) {
      op.result = fit;
      continue;
    }
    index_->touch(n);
    const ClassFiles f = files_of_class(x.cls);
    pending->push_back({i, f.fd, x.slot * index_->klass(x.cls).slot_size, x.length, x.checksum,
                        x.stored, x.seq, x.compressed != 0});
  }
}

// Without the lock: the reads, straight into the engine's fragments when O_DIRECT allows it,
// each checked against the checksum the index recorded.
void PageFiles::read_pages(std::span<GetOp> ops, std::vector<Reading>& pending,
                           std::vector<Reading>* unreadable) {
  rings_.with_ring([&](Ring& ring) {
    run_ios(
        ring, pending.size(),
        [&](size_t i, Io& io) {
          Reading& p = pending[i];
          const GetOp& op = ops[p.op];
          io.fd = p.fd;  // -1 when this process cannot open the class's file: -EIO
          io.offset = p.offset;
          if (!p.compressed && p.length == op.capacity &&
              (!direct_ ||
               (aligned(op.frags, mem_align_, io_align_) && p.length % io_align_ == 0))) {
            for (const Frag& f : op.frags) io.iov.push_back({f.ptr, f.len});
            return -EIO;
          }
          p.buf_size = round_block(p.stored);
          p.buf = bounce_.get(p.buf_size);
          if (!p.buf) {
            io.fd = -1;
            p.no_memory = true;
            return -ENOMEM;
          }
          io.iov.push_back({p.buf, direct_ ? p.buf_size : p.stored});
          return -EIO;
        },
        [&](size_t i, int res) {
          Reading& p = pending[i];
          GetOp& op = ops[p.op];
          if (p.no_memory) {
            op.result = KVTIER_ERR_NO_MEMORY;
          } else if (res < 0) {
            op.result = io_code(res);
          } else if (p.compressed && !decompress_frags(p.buf, p.stored, op.frags, p.length)) {
            op.result = KVTIER_ERR_CORRUPT;  // a damaged frame: a miss, like a bad checksum
          } else {
            op.result = static_cast<int64_t>(p.length);
            op.checksum = p.checksum;
            // Copies out of the bounce buffer overlap the reads still queued, and check the
            // bytes as they go (one pass); a page read in place is checked where it landed.
            if (!p.buf || p.compressed)
              verify(op);
            else if (scatter_checksum(p.buf, p.length, op.frags) != p.checksum)
              op.result = KVTIER_ERR_CORRUPT;
          }
          bounce_.put(p.buf, p.buf_size);
          p.buf = nullptr;
          if (op.result == KVTIER_ERR_IO || op.result == KVTIER_ERR_CORRUPT)
            unreadable->push_back(p);
        });
  });
}

// A page that cannot be read goes: kept, it would count as present and block the engine's next
// set of the key, which would store it again. But a slot that was evicted and rewritten
// meanwhile (by any process) was only read too late: that is a miss, and nothing to drop.
void PageFiles::drop_unreadable(std::span<GetOp> ops, const std::vector<Reading>& unreadable) {
  Guard g(*index_);
  for (const Reading& p : unreadable) {
    GetOp& op = ops[p.op];
    if (!g.ok()) {  // dropped by the next reader that finds it so
      op.result = KVTIER_ERR_NOT_FOUND;
      continue;
    }
    const uint32_t n = index_->find(op.id);
    if (n == kNil || index_->node(n).seq != p.seq || index_->node(n).state != kLive) {
      op.result = KVTIER_ERR_NOT_FOUND;
      continue;
    }
    log().warn("file tier: a page in {} is unreadable ({}); it is dropped", dir_,
               op.result == KVTIER_ERR_IO ? "I/O error" : "checksum");
    release(n);
  }
}

void PageFiles::exists(std::span<const KeyId> ids, std::span<uint8_t> present) {
  Guard g(*index_);
  for (size_t i = 0; i < ids.size(); ++i) {
    const uint32_t n = g.ok() ? index_->find(ids[i]) : kNil;  // no lock: absent
    present[i] = n != kNil && index_->node(n).state == kLive;
  }
}

void PageFiles::remove(std::span<const KeyId> ids, std::span<int> results) {
  Guard g(*index_);
  for (size_t i = 0; i < ids.size(); ++i) {
    if (!g.ok()) {
      results[i] = KVTIER_ERR_TIMEOUT;
      continue;
    }
    const uint32_t n = index_->find(ids[i]);
    if (n == kNil || index_->node(n).state != kLive) {
      results[i] = KVTIER_ERR_NOT_FOUND;
      continue;
    }
    release(n);  // zeroes the record: a restart keeps it gone
    results[i] = KVTIER_OK;
  }
}

Status PageFiles::clear() {
  // Alone: new writes (of every process) wait, and the ones in flight finish first, so nothing
  // a put was writing while the files were cut can land in them (and come back after a restart).
  // Writers that died or stopped are not waited for (their slots go back), live ones and
  // another clear no longer than the lock's timeout.
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::nanoseconds(index_->timeout_ns());
  for (unsigned round = 0;; ++round) {
    if (round) pause_for_others(round);
    Guard g(*index_);
    if (!g.ok()) return {KVTIER_ERR_TIMEOUT, "file tier: another process holds " + dir_};
    IndexHeader& h = index_->h();
    const bool late = std::chrono::steady_clock::now() > deadline;
    if (h.clearing && h.clearing != pid_ && !process_stalled(h.clearing, h.clearing_start)) {
      if (!late) continue;
      return {KVTIER_ERR_TIMEOUT, "file tier: another process is clearing " + dir_};
    }
    h.clearing = pid_;
    h.clearing_start = start_;
    if (round > 10) reclaim_dead();
    if (h.reserved && late) {
      h.clearing = 0;  // the puts held back go on
      return {KVTIER_ERR_TIMEOUT,
              "file tier: writes in flight in " + dir_ + " did not end within the lock timeout"};
    }
    if (h.reserved) continue;
    for (uint32_t cls = 0; cls < h.nclasses; ++cls) {
      const ClassFiles f = files_of_class(cls);
      if (f.fd < 0 || ::ftruncate(f.idx_fd, 0) != 0 || ::ftruncate(f.fd, 0) != 0)
        log().warn("file tier: cannot truncate a page file in {}: {}", dir_, std::strerror(errno));
    }
    index_->reset(true);
    return {};
  }
}

TierStats PageFiles::stats() const {
  Guard g(*index_);
  if (!g.ok()) return {};
  const IndexHeader& h = index_->h();
  return {h.keys, h.live_bytes, h.capacity, h.evictions, h.errors};
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
Status FileTier::clear() {
  return files_->clear();
}
TierStats FileTier::stats() const {
  return files_->stats();
}

Status open_page_files(const Config& config, std::shared_ptr<PageFiles>* out) {
  // Stores of one process on the same namespace share one PageFiles (one shared flock). A forked
  // child opens its own: the parent's (rings, flock, pid) are not the child's.
  static std::mutex mu;
  static std::map<std::pair<std::string, uint64_t>, std::weak_ptr<PageFiles>> open;
  std::lock_guard lock(mu);
  const std::string root = usable_dir(config.file_dir);
  const std::string path = root + "/" + dir_name(config.ns);
  const auto key = std::make_pair(path, fork_generation());
  if (auto existing = open[key].lock()) {
    *out = std::move(existing);
    return {};
  }
  Status s = PageFiles::open(config, root, path, out);
  if (s.is_ok()) open[key] = *out;
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
