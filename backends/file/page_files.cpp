// PageFiles: opening a namespace's files, and the calls other than put (put.cpp) and get
// (get.cpp). The I/O the shared index asks for when a slot changes hands is here too.
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "backends/file/file_options.h"
#include "src/log.h"
#include "backends/file/page_files.h"
#include "backends/file/records.h"
#include "backends/file/safe_dir.h"

namespace kvtier {

namespace {

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
  const FileOptions& o = config.section<FileOptions>();
  pf->dir_ = path;
  pf->direct_ = o.direct;
  pf->sync_ = o.sync;
  pf->zstd_level_ = o.zstd_level;
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
  s = pf->rings_.init(2, o.queue_depth, pf->faults_.get());
  if (!s.is_ok()) return s;
  bool fresh = false;
  s = SharedIndex::open(pf->dir_fd_, path, o.capacity, o.lock_timeout_ms, &fresh, &pf->index_);
  if (!s.is_ok()) return s;
  struct statx sx {};  // of a file on the folder's filesystem
  if (::statx(pf->dir_fd_, "INDEX", AT_SYMLINK_NOFOLLOW, STATX_DIOALIGN, &sx) == 0 &&
      (sx.stx_mask & STATX_DIOALIGN) && sx.stx_dio_mem_align && sx.stx_dio_offset_align &&
      kBlock % sx.stx_dio_offset_align == 0 && kBlock % sx.stx_dio_mem_align == 0) {
    pf->mem_align_ = sx.stx_dio_mem_align;
    pf->io_align_ = sx.stx_dio_offset_align;
  }
  pf->index_->set_files(pf.get());
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

PageFiles::ClassFiles PageFiles::files_of_class(uint32_t cls) {
  ClassFiles f;
  Status s = files_of(index_->slot_size(cls), &f);
  if (!s.is_ok()) log().warn("file tier: {}", s.message());
  return f;
}

bool PageFiles::clear_record(uint64_t slot_size, uint64_t slot) {
  ClassFiles f;
  Status s = files_of(slot_size, &f);
  if (!s.is_ok()) {
    log().warn("file tier: {}", s.message());
    errno = EBADF;
    return false;
  }
  return write_record(f.idx_fd, slot, Record{});
}

int PageFiles::extend(uint64_t slot_size, uint64_t file_slots, uint64_t bytes, uint64_t* added) {
  ClassFiles f;
  Status s = files_of(slot_size, &f);
  if (!s.is_ok()) {
    log().warn("file tier: {}", s.message());
    return EBADF;
  }
  // A slice of the disk's free space at most, and one slot at a time on a nearly full disk.
  struct statvfs vfs {};
  if (::fstatvfs(f.fd, &vfs) == 0)
    bytes = std::min<uint64_t>(bytes, uint64_t{vfs.f_bavail} * vfs.f_frsize / 8);
  uint64_t grow = std::max<uint64_t>(1, bytes / slot_size);
  auto extend_by = [&] {
    // The records first: a slot never exists without room for its record.
    const auto rec = static_cast<off_t>(sizeof(Record));
    int rc = ::fallocate(f.idx_fd, 0, static_cast<off_t>(file_slots) * rec,
                         static_cast<off_t>(grow) * rec);
    if (rc != 0 && errno == EOPNOTSUPP)
      rc = ::ftruncate(f.idx_fd, static_cast<off_t>(file_slots + grow) * rec);
    if (rc != 0) return rc;
    rc = ::fallocate(f.fd, 0, static_cast<off_t>(file_slots * slot_size),
                     static_cast<off_t>(grow * slot_size));
    if (rc != 0 && errno == EOPNOTSUPP)
      rc = ::ftruncate(f.fd, static_cast<off_t>((file_slots + grow) * slot_size));
    return rc;
  };
  int rc = extend_by();
  if (rc != 0 && errno == ENOSPC && grow > 1) {
    grow = 1;
    rc = extend_by();
  }
  if (rc != 0) return errno;
  *added = grow;
  return 0;
}

// ---- exists, remove, clear, stats ----------------------------------------------------------

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
    index_->release(n);  // zeroes the record: a restart keeps it gone
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
    const bool late = std::chrono::steady_clock::now() > deadline;
    if (!index_->begin_clear(pid_, start_)) {
      if (!late) continue;
      return {KVTIER_ERR_TIMEOUT, "file tier: another process is clearing " + dir_};
    }
    if (round > 10) index_->reclaim_dead(pid_);
    if (index_->reserved() && late) {
      index_->end_clear();  // the puts held back go on
      return {KVTIER_ERR_TIMEOUT,
              "file tier: writes in flight in " + dir_ + " did not end within the lock timeout"};
    }
    if (index_->reserved()) continue;
    for (uint32_t cls = 0; cls < index_->classes(); ++cls) {
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
  return index_->stats();
}

}  // namespace kvtier
